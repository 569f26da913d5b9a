"""Every Triton launch terminates and stays in range, for every weight of every conf/model config.

The launch plans (``zobench.engine.launch``) are what the kernels' launchers use, so checking them
over every shape checks the grids, index widths and streamed blocks the kernels get (no GPU, no
Triton, no model built: the shapes come from the configs' ``architecture`` or, for hub and GGUF
configs, from the table in tests/helpers.py, the models' published config.json).
"""

import pytest
from omegaconf import OmegaConf

from tests.helpers import CONFIGS, PUBLISHED, weight_shapes
from zobench.engine import launch
from zobench.engine.torch_backend import STREAM_ELEMENTS

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
