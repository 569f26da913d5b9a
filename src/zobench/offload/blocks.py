"""The unit of offloading: the transformer blocks of a model, found generically.

A Hugging Face language model keeps its decoder (or encoder) layers in one ``nn.ModuleList`` of
identical modules (``model.layers`` in Llama, ``model.decoder.layers`` in OPT,
``roberta.encoder.layer``): the largest such list by parameter count is the block list. Everything
else (embeddings, positional embeddings, the final norm, the LM head) stays resident.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified name, module list)`` of the model's transformer blocks: the ``nn.ModuleList`` of
    two or more modules of one class holding the most parameters."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2 or len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size and (best is None or size > best[0]):
            best = (size, name, module)
    if best is None:
        raise ConfigError(
            f"offload: {type(model).__name__} has no list of transformer blocks (an nn.ModuleList of "
            "identical layers) to stream; use offload=none"
        )
    return best[1], best[2]


def block_parameters(block: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The block's parameters by name relative to the block (tied ones once)."""
    return list(block.named_parameters())


def check_private(model: nn.Module, blocks: nn.ModuleList) -> None:
    """Refuse a block parameter also used outside its block (a weight tied across blocks or to
    the embedding): streaming it would leave the other user with a released tensor."""
    owner: dict[int, int] = {}
    for index, block in enumerate(blocks):
        for _, p in block.named_parameters():
            owner[id(p)] = index
    block_ids = {id(m) for block in blocks for m in block.modules()}
    for name, module in model.named_modules():
        if id(module) in block_ids:
            continue
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in owner:
                raise ConfigError(
                    f"offload: {name}.{pname} is tied to a parameter of block {owner[id(p)]}; "
                    "tied weights cannot be streamed (use offload=none)"
                )
    seen: dict[int, int] = {}
    for index, block in enumerate(blocks):
        for name, p in block.named_parameters():
            if seen.setdefault(id(p), index) != index:
                raise ConfigError(
                    f"offload: block {index}'s {name} is shared with block {seen[id(p)]}; use offload=none"
                )
