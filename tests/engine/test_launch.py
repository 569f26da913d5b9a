"""Every Triton launch terminates and stays in range, for every weight of every conf/model config.

The launch plans (``zobench.engine.launch``) are what the kernels' launchers use, so checking them
over every shape checks the grids, index widths and streamed blocks the kernels get (no GPU, no
Triton, no model built: the shapes come from the configs' ``architecture`` or, for hub and GGUF
configs, from the table below, the models' published config.json).
"""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from zobench.engine import launch
from zobench.engine.torch_backend import STREAM_ELEMENTS

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
SMOLLM2_VOCAB = 49152  # the random configs' tokenizer (tokenizer_from: smollm2-135m)

# hub / GGUF configs: (model_type, vocab, hidden, ffn, q_dim, kv_dim, positions, proj_dim) from
# each model's config.json; q_dim = heads·head_dim (Gemma-3's 4·256 ≠ its hidden 640), kv_dim
# below it for grouped-query attention, proj_dim for OPT-350m's 512-wide embedding, positions the
# learned position table's rows (OPT's carry an offset of 2)
PUBLISHED = {
    "opt-125m": ("opt", 50272, 768, 3072, 768, 768, 2050, 768),
    "opt-350m": ("opt", 50272, 1024, 4096, 1024, 1024, 2050, 512),
    "opt-1.3b": ("opt", 50272, 2048, 8192, 2048, 2048, 2050, 2048),
    "opt-2.7b": ("opt", 50272, 2560, 10240, 2560, 2560, 2050, 2560),
    "opt-6.7b": ("opt", 50272, 4096, 16384, 4096, 4096, 2050, 4096),
    "opt-13b": ("opt", 50272, 5120, 20480, 5120, 5120, 2050, 5120),
    "opt-30b": ("opt", 50272, 7168, 28672, 7168, 7168, 2050, 7168),
    "opt-66b": ("opt", 50272, 9216, 36864, 9216, 9216, 2050, 9216),
    "llama-7b": ("llama", 32000, 4096, 11008, 4096, 4096, 0, 4096),
    "llama3-8b": ("llama", 128256, 4096, 14336, 4096, 1024, 0, 4096),
    "phi-2": ("phi", 51200, 2560, 10240, 2560, 2560, 0, 2560),
    "roberta-large": ("roberta", 50265, 1024, 4096, 1024, 1024, 514, 1024),
    "smollm2-135m": ("llama", 49152, 576, 1536, 576, 192, 0, 576),
    "gemma3-270m": ("gemma3", 262144, 640, 2048, 1024, 256, 0, 640),
}


def _architecture(cfg) -> tuple:
    """(model_type, vocab, hidden, ffn, q_dim, kv_dim, positions, proj_dim) of a config."""
    if "architecture" not in cfg:
        assert cfg.name in PUBLISHED, f"conf/model/{cfg.name}.yaml: add its shapes to PUBLISHED"
        return PUBLISHED[cfg.name]
    a = cfg.architecture
    hidden = a.hidden_size
    ffn = a.get("ffn_dim", a.get("intermediate_size"))
    heads = a.num_attention_heads
    kv = a.get("num_key_value_heads", heads) * (hidden // heads)
    positions = {"opt": a.get("max_position_embeddings", 0) + 2, "roberta": a.get("max_position_embeddings", 0)}.get(
        a.model_type, 0
    )
    return a.model_type, SMOLLM2_VOCAB, hidden, ffn, hidden, kv, positions, a.get("word_embed_proj_dim", hidden)


def weight_shapes(cfg) -> list[tuple[int, ...]]:
    """Every distinct parameter shape of a decoder layer, the embeddings and the LM head."""
    kind, vocab, hidden, ffn, q, kv, positions, proj = _architecture(cfg)
    shapes = {(vocab, proj), (q, hidden), (hidden, q), (kv, hidden), (ffn, hidden), (hidden, ffn), (hidden,), (ffn,)}
    if positions:
        shapes.add((positions, hidden))
    if proj != hidden:
        shapes |= {(hidden, proj), (proj, hidden)}  # OPT-350m's project_in / project_out
    if kind in ("llama", "gemma3"):
        shapes.add((kv,))
    return sorted(shapes)


CONFIGS = sorted(CONF.glob("*.yaml"))
SHAPES = sorted({(path.stem, shape) for path in CONFIGS for shape in weight_shapes(OmegaConf.load(path))})
# rows of x a fused GEMM sees: one logit row, a batch's tokens, the paired (2×) batch of 16
# examples at 2048 tokens, batched FZOO's 8 replicas of it
TOKENS = [1, 17, 16 * 256, 2 * 16 * 2048, 8 * 16 * 2048]


def test_every_config_has_shapes():
    assert {p.stem for p in CONFIGS} <= {p.stem for p in CONFIGS if "architecture" in OmegaConf.load(p)} | set(
        PUBLISHED
    )
    assert len(SHAPES) > 50


def _within(plan: launch.Launch) -> None:
    assert all(g >= 1 for g in plan.grid)
    assert plan.grid[0] <= launch.GRID_X_MAX and all(g <= launch.GRID_YZ_MAX for g in plan.grid[1:])
    assert plan.wide or plan.extent <= launch.INT32_EXTENT  # int32 indices never wrap


@pytest.mark.parametrize("name, shape", SHAPES)
def test_sweeps_and_streamed_blocks_stay_in_range(name, shape):
    numel = 1
    for d in shape:
        numel *= d
    _within(launch.sweep_launch(numel))
    if len(shape) != 2 or numel < STREAM_ELEMENTS:
        return
    rows, cols = shape
    blocks = launch.stream_blocks(rows, cols)
    assert blocks[0][0] == 0 and blocks[-1][1] == rows  # every row once, in order
    assert all(stop > first for first, stop in blocks) and all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    for first, stop in blocks:
        assert first * cols % launch.BLOCK == 0  # the block's z is the whole tensor's
        plan = launch.sweep_launch(stop * cols, first * cols)
        _within(plan)
        assert plan.grid[0] * launch.BLOCK >= (stop - first) * cols


@pytest.mark.parametrize("name, shape", [(n, s) for n, s in SHAPES if len(s) == 2])
def test_fused_gemms_and_gathers_stay_in_range(name, shape):
    n, k = shape
    for m in TOKENS:
        plan = launch.linear_launch(m, n, k)
        _within(plan)
        assert plan.grid[0] * launch.block_m(m) >= m and plan.grid[1] * launch.BLOCK_N >= n
        _within(launch.gather_launch(m, k))


# --- the boundaries ------------------------------------------------------------------------------


def test_the_index_width_switches_where_the_padded_last_block_passes_int32():
    """Offsets are program·BLOCK + lane, masked lanes of the last block included: int32 while
    the padded extent is ≤ 2³¹ (2³¹ is a multiple of BLOCK, so numel ≤ 2³¹ suffices from 0),
    int64 beyond, also for a streamed block that starts late."""
    assert not launch.sweep_launch(2**31).wide and launch.sweep_launch(2**31 + 1).wide
    assert launch.sweep_launch(2**31 + 1, 2**31 - launch.BLOCK).wide


def test_the_fused_gemm_width_counts_the_padded_weight_tile():
    """W's indices rn·k + k0 + lane reach (n_padded - 1)·k + k_padded - 1: with n·k just under
    2³¹ the masked lanes of the last tiles pass it, so the plan computes them in int64 (in int32
    they would wrap; masked, so harmless on the GPU, but nothing should rely on that)."""
    k = 1028
    n = (2**31 - 1) // k
    assert n * k < 2**31 and launch.linear_launch(16, n, k).wide


def test_grids_beyond_cuda_limits_are_refused_with_a_message():
    with pytest.raises(ValueError, match="grid"):
        launch.linear_launch(16, 65536 * launch.BLOCK_N + 1, 64)  # 65537 column blocks on grid y
    with pytest.raises(ValueError, match="grid"):
        launch.gather_launch(16, 65536 * launch.GATHER_COLS + 1)


@pytest.mark.parametrize("cols", [1, 3, 48, 1000, 2048, 7168, 2**24 + 1, 2**26])
def test_streamed_blocks_never_have_zero_rows(cols):
    assert launch.row_block(cols, launch.BLOCK, launch.STREAM_BLOCK_ELEMENTS) >= 1
    blocks = launch.stream_blocks(5, cols)
    assert blocks and all(stop > first for first, stop in blocks) and blocks[-1][1] == 5


def test_empty_launches_are_refused():
    with pytest.raises(ValueError):
        launch.sweep_launch(0)
    with pytest.raises(ValueError):
        launch.linear_launch(0, 4, 4)
