"""space_timesteps reproduces guided-diffusion's grids; timestep_pairs walks them with start/stop."""

from __future__ import annotations

import pytest

from facerestore.diffusion import space_timesteps, timestep_pairs
from facerestore.errors import UsageError


def test_ddim250_is_stride_4():
    grid = space_timesteps(1000, "ddim250")
    assert grid == tuple(range(0, 1000, 4))
    assert grid[100] == 400 and grid[99] == 396  # DifFace: q_sample at index 100, first call at 99


def test_ddim_search_takes_the_first_matching_stride():
    assert space_timesteps(1000, "ddim100") == tuple(range(0, 1000, 10))
    # len(range(0, 1000, i)) == 3 first for i = 334 (0, 334, 668), not 400 or 499
    assert space_timesteps(1000, "ddim3") == (0, 334, 668)
    with pytest.raises(UsageError, match="no integer stride"):
        space_timesteps(1000, "ddim1")  # strides 1..999 give at least 2 steps
    with pytest.raises(UsageError, match="no integer stride"):
        space_timesteps(1000, "ddim251")
    with pytest.raises(UsageError):
        space_timesteps(1000, "ddimX")


def test_250_fractional_stride():
    grid = space_timesteps(1000, "250")
    assert len(grid) == 250
    # stride 999/249 = 4.0120...; round(k * 4.012) by hand
    assert grid[:6] == (0, 4, 8, 12, 16, 20)
    assert grid[-4:] == (987, 991, 995, 999)
    assert grid[150] == 602 and grid[90] == 361 and grid[89] == 357  # DT-BFR K and L (ANCHORS 7.1)


def test_100_fractional_stride():
    grid = space_timesteps(1000, "100")
    assert len(grid) == 100
    # stride 999/99 = 10.0909...: round(k * 10.0909) = 0, 10, ..., 50, then 60.545 -> 61
    assert grid[:8] == (0, 10, 20, 30, 40, 50, 61, 71)
    assert grid[-3:] == (979, 989, 999)
    # DR2's presets (tau, variant omega) in original timesteps (ANCHORS 6.2)
    assert (grid[22], grid[42]) == (222, 424)
    assert (grid[35], grid[60], grid[65]) == (353, 605, 656)


def test_sections_10_15_20_of_300():
    """The example in guided-diffusion's docstring: three sections of 100 steps each.

    Golden list produced by guided-diffusion @22e0df8 `space_timesteps(300, "10,15,20")`. By hand:
    section 1 stride 99/9 = 11 exactly; section 2 stride 99/14, where k = 7 is an exact tie at 49.5
    in real arithmetic but the accumulated float is just below it, so upstream keeps 149 (not 150);
    section 3 stride 99/19.
    """
    grid = space_timesteps(300, "10,15,20")
    assert grid == (
        0, 11, 22, 33, 44, 55, 66, 77, 88, 99,
        100, 107, 114, 121, 128, 135, 142, 149, 157, 164, 171, 178, 185, 192, 199,
        200, 205, 210, 216, 221, 226, 231, 236, 242, 247, 252, 257, 263, 268, 273, 278, 283, 289, 294, 299,
    )  # fmt: skip
    assert space_timesteps(300, [10, 15, 20]) == grid


def test_uneven_sections_and_full_grid():
    # 1000 = 334 + 333 + 333: the first section is one step longer
    grid = space_timesteps(1000, "2,2,2")
    assert grid == (0, 333, 334, 666, 667, 999)
    assert space_timesteps(1000, "1000") == tuple(range(1000))
    assert space_timesteps(10, "1") == (0,)


def test_impossible_specs_are_usage_errors():
    with pytest.raises(UsageError, match="cannot divide"):
        space_timesteps(1000, "1001")
    with pytest.raises(UsageError, match="cannot divide"):
        space_timesteps(300, "10,101,20")
    with pytest.raises(UsageError):
        space_timesteps(1000, "ten")
    with pytest.raises(UsageError):
        space_timesteps(1000, "")
    with pytest.raises(UsageError):
        space_timesteps(1000, "-5")
    with pytest.raises(UsageError):
        space_timesteps(1000, "0")
    with pytest.raises(UsageError):
        space_timesteps(0, "10")


def test_pairs_run_down_to_clean_data():
    pairs = timestep_pairs((0, 4, 8, 12))
    assert pairs == [(12, 8), (8, 4), (4, 0), (0, -1)]


def test_pairs_start_and_stop_dr2_call_count():
    grid = space_timesteps(1000, "100")
    for tau, omega in ((22, 42), (35, 60), (35, 65)):
        pairs = timestep_pairs(grid, start=grid[omega], stop_at=grid[tau])
        assert len(pairs) == omega - tau + 1  # DR2: 21, 26, 31 UNet calls
        assert pairs[0] == (grid[omega], grid[omega - 1])
        assert pairs[-1] == (grid[tau], grid[tau - 1])


def test_pairs_difface_off_by_one():
    grid = space_timesteps(1000, "ddim250")
    pairs = timestep_pairs(grid, start=grid[99])
    assert len(pairs) == 100 and pairs[0] == (396, 392) and pairs[-1] == (0, -1)


def test_pairs_reject_bad_grids_and_bounds():
    with pytest.raises(UsageError, match="not one of the grid"):
        timestep_pairs((0, 4, 8), start=5)
    with pytest.raises(UsageError, match="above start"):
        timestep_pairs((0, 4, 8), start=4, stop_at=8)
    with pytest.raises(UsageError, match="strictly increasing"):
        timestep_pairs((8, 4, 0))
    with pytest.raises(UsageError):
        timestep_pairs(())
