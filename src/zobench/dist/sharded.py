"""``dist.mode=sharded``: one model over several ranks, its parameters sharded with FSDP2 (the
mechanics; the recipe's strategy is ``sharded_strategy.Sharded``).

Each transformer block (the classes a Hugging Face model names in ``_no_split_modules``, else the
children of its ``ModuleList``s) and the root are wrapped by ``torch.distributed.fsdp.fully_shard``
(dim-0 shards, ``reshard_after_forward=True`` everywhere, the root included: a block's gathered
weights live only during its forward, so every forward gathers the shards as the engine left
them). Each rank holds 1/W of the weights and of the method's parameter-sized state (``ZOOptimizer.
_param_state``: local shards), and computes its shard of the global batch, reduced as in data
parallel (``data.ShardedObjective``: one float64 all-reduce per evaluation). The ZO step moves
only the local shards (``engine/sharded.py``: z by global element index, so a sharded run equals
a one-process in-place run bit for bit, whatever W).

Communication per evaluation: FSDP's all-gathers (each rank receives the (W-1)/W of every
parameter it does not hold, frozen ones included), and the scalar all-reduce; there is no
gradient reduce-scatter in ZO. ``summary`` reports both in ``comm_bytes_per_step``.

Evaluation runs every example on every rank: each forward is a collective (the all-gathers), so
the ranks must make the same forward calls, which the batch split of ``evaluation.py`` (batch c
on rank c mod W; generation of another length per rank) does not guarantee.
"""

from __future__ import annotations

from torch import nn

from ..config.schema import ROOT_PLACEMENTS
from ..engine.sharded import is_sharded
from ..errors import ConfigError


def blocks(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one, outermost first: instances of the classes any submodule
    lists in ``_no_split_modules`` (Hugging Face's transformer blocks, accelerate's and FSDP's
    wrapping unit), else the children of every ``nn.ModuleList``."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    found = [m for m in model.modules() if type(m).__name__ in names]
    if not found:
        found = [child for m in model.modules() if isinstance(m, nn.ModuleList) for child in m]
    inner = {id(sub) for m in found for sub in m.modules() if sub is not m}
    return [m for m in found if id(m) not in inner]


def shard_model(
    model: nn.Module, world_size: int, device: str | None = None, shard_size: int | None = None, root: str = "sharded"
) -> nn.Module:
    """``fully_shard`` every block and the root on a mesh of ``world_size`` ranks on ``device``
    (default: the model's device type; a model built on the meta device names the one its shards
    will be materialised on); returns the model, its parameters now DTensors. ``shard_size`` S
    (< W): a 2-D ``(replicate, shard)`` mesh of W/S × S (HSDP): ranks i·S .. i·S + S - 1 shard
    one copy of the model, and ranks with the same r mod S hold the same rows, so with S = GPUs
    per node a node shards the model and the nodes replicate it; the ZO update keeps the
    replicas identical as data parallel does (the same scalars, the same z).

    ``root`` (``dist.root``): where the root's own parameters (those of no block: the embeddings,
    a tied LM head, the final norm) live. ``sharded``: FSDP2's root unit, 1/W per rank; the unit
    is gathered for the whole forward (embeddings at its start, the head at its end), and the
    gather holds its all-gather output and the unsharded copy at once, so a rank's peak holds the
    root's 1/W + 2× its size. ``replicated``: left whole on every rank (FSDP2's
    ``ignored_params``), moved by every rank with the same z and scalars as data parallel does:
    the peak holds 1× and no forward gathers it; the method's state of those parameters is whole
    on every rank too (results/bench/distributed measures both)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if root not in ROOT_PLACEMENTS:
        raise ConfigError(f"dist.root={root}: expected one of {', '.join(ROOT_PLACEMENTS)}")
    first = next(model.parameters(), None)
    device = device or (first.device.type if first is not None else "cpu")
    size = world_size if shard_size is None else int(shard_size)
    if size < 1 or world_size % size:
        raise ConfigError(f"dist.shard_size={shard_size}: must divide the number of ranks ({world_size})")
    if size == world_size:
        mesh = init_device_mesh(device, (world_size,))
    else:
        mesh = init_device_mesh(device, (world_size // size, size), mesh_dim_names=("replicate", "shard"))
    units = blocks(model)
    for block in units:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    in_blocks = {id(p) for block in units for p in block.parameters()}
    own = {p for p in model.parameters() if id(p) not in in_blocks} if root == "replicated" else None
    # the root too: FSDP2's default keeps the root's weights gathered after a forward, and the next
    # forward would not see the engine's moves on the shards
    fully_shard(model, mesh=mesh, reshard_after_forward=True, ignored_params=own)
    return model


#: glibc's M_MMAP_THRESHOLD (malloc.h) and the size from which buffers are mapped and unmapped
M_MMAP_THRESHOLD, MAPPED_FROM = -3, 1 << 20


def return_freed_buffers() -> None:
    """Make glibc map every buffer of 1 MiB or more on its own, so that freeing it returns it to
    the OS. By default glibc raises its mapping threshold to the largest buffer freed so far, after
    which FSDP's per-block all-gather buffers come from the heap and stay in the process when
    freed: on CPU (Gloo) the RSS of a sharded SmolLM2-135M forward then rose by 1.1 GB (2x the
    model), with it by 0.3 GB. CUDA memory has its own allocator: called for CPU runs only."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MAPPED_FROM)
    except (OSError, AttributeError):  # not glibc: nothing to set
        pass


def gather_bytes(model: nn.Module, shard_size: int) -> int:
    """Bytes one rank receives in the all-gathers of one forward: the (S-1)/S of every sharded
    parameter (trained or frozen) that it does not hold (S ranks per shard group)."""
    total = 0
    for p in model.parameters():
        if is_sharded(p):  # dist.root=replicated: the root's own parameters are never gathered
            total += p.numel() * p.element_size()
    return total * (shard_size - 1) // shard_size


#: the methods (``optim/<name>.py``) that run on shards, each rank holding its rows of the weights
#: and of the parameter-sized state, bit for bit one in-place process's steps (tests/dist/
#: test_sharded.py checks each): elementwise z and updates on the local rows; low-rank z (lozo,
#: subzero, tezo) formed from the small factors, which every rank makes, one block of rows at a
#: time, only the blocks of its rows (``LowRankDirection.whole_blocks``); whole-tensor statistics
#: (sparse_mezo's magnitude quantile, dizo's distances to θ0) on the matrix gathered whole, one at a
#: time (``engine.sharded.gathered``); lezo's blocks by name (FSDP2 keeps the names); forward_gradient's
#: dual (θ, z) put on each module's gathered weights in its forward (``ShardedEngine.dual``)
METHODS = (
    "mezo",
    "hizoo",
    "fzoo",
    "zo_adam",
    "zo_sgd_momentum",
    "zo_sgd_sign",
    "zo_sgd_cons",
    "lozo",
    "subzero",
    "tezo",
    "lezo",
    "sparse_mezo",
    "dizo",
    "mezo_svrg",
    "forward_gradient",
)

#: the ZO methods that do not run on shards: name -> why, and what to run instead (none today;
#: forward_gradient's dual forward runs on FSDP2's gathered blocks, ``ShardedEngine.dual``)
REFUSED: dict[str, str] = {}
