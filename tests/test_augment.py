"""data.augment: each key does what it says, unknown or out-of-range settings are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from spinenet.data.transforms import AUGMENT_KEYS, RandomIntensityCurve, build_transforms
from spinenet.errors import ConfigError


def _ramp(h: int = 32, w: int = 32) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))


def test_unknown_augment_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown keys \['zoom'\]; valid keys: .*'intensity_curve'.*'scale'"):
        build_transforms([32, 32], True, {"zoom": 0.2})


def test_intensity_curve_is_monotone_keeps_the_ends_and_changes_the_gray_levels():
    op = RandomIntensityCurve(jitter=1.0, p=1.0)
    op.set_random_seed(3)
    ramp = _ramp()
    changed = 0
    for _ in range(20):
        out = op(image=ramp)["image"]
        assert out.dtype == np.float32 and out.shape == ramp.shape
        assert np.all(np.diff(out[0]) >= -1e-6)  # monotone: the order of gray levels is kept
        assert out[0, 0] == pytest.approx(0.0) and out[0, -1] == pytest.approx(1.0)
        changed += float(np.abs(out - ramp).max()) > 0.02
    assert changed >= 15  # a curve, not the identity


def test_intensity_curve_draws_from_the_seeded_generator():
    def draw(seed: int) -> np.ndarray:
        op = RandomIntensityCurve(jitter=0.8, p=1.0)
        op.set_random_seed(seed)
        return op(image=_ramp())["image"]

    np.testing.assert_array_equal(draw(1), draw(1))
    assert not np.array_equal(draw(1), draw(2))


@pytest.mark.parametrize("setting", [{"gamma": 1.5}, {"intensity_curve": 2.0}, {"intensity_curve": -0.5}])
def test_out_of_range_photometric_settings_are_refused(setting):
    with pytest.raises(ConfigError, match=f"data.augment.{next(iter(setting))}"):
        build_transforms([32, 32], True, setting)


def test_zero_or_null_turns_a_key_off():
    off = {"hflip": None, "scale": None, "gamma": 0.0, "intensity_curve": 0.0, "blur": 0.0}
    ops = build_transforms([32, 32], True, off).transforms
    assert [type(op).__name__ for op in ops] == ["Resize"]


def test_scale_zooms_the_mask_with_the_image():
    mask = np.zeros((64, 64), np.uint8)
    mask[24:40, 24:40] = 1
    image = mask.astype(np.float32)
    areas = []
    for scale in (0.0, 0.5):
        t = build_transforms([64, 64], True, {"scale": scale, "rotate": 0, "shift": 0, "p_affine": 1.0})
        t.set_random_seed(0)
        got = [int(t(image=image, mask=mask)["mask"].sum()) for _ in range(30)]
        areas.append(got)
    assert set(areas[0]) == {256}  # no zoom: the square is untouched
    assert min(areas[1]) < 200 and max(areas[1]) > 320  # zoomed out and in, mask following


def test_photometric_keys_leave_the_mask_alone_and_move_the_image():
    mask = (np.arange(32 * 32).reshape(32, 32) % 4).astype(np.uint8)
    image = _ramp()
    t = build_transforms([32, 32], True, {"gamma": 0.5, "contrast": 0.4, "intensity_curve": 1.0, "blur": 2.0})
    t.set_random_seed(0)
    moved = 0
    for _ in range(10):
        out = t(image=image, mask=mask)
        np.testing.assert_array_equal(out["mask"], mask)
        moved += not np.allclose(out["image"], image, atol=1e-3)
    assert moved >= 5


def test_every_key_is_documented_in_the_base_data_config():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "conf" / "data" / "phantom_sagittal.yaml").read_text()
    for key in AUGMENT_KEYS:
        assert f"  {key}:" in text, key
