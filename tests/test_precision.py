"""The segmenter's inference precision: ``auto`` picks bf16 only where the hardware computes it, bf16 runs
under autocast and gives the float32 masks, exported files stay float32, and bad choices are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spinenet.loading as loading
from spinenet.cli import main as cli_main
from spinenet.errors import ConfigError
from spinenet.loading import inference_precision, load_model
from spinenet.pipeline.diagnose import segment
from tests.test_diagnose import SEG_OVERRIDES, make_checkpoint


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("prec") / "seg.ckpt", SEG_OVERRIDES)


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_where_the_hardware_computes_it(monkeypatch, native):
    monkeypatch.setattr(loading, "native_bf16", lambda device: native)
    assert inference_precision("auto", "cpu") == ("bf16" if native else "32")
    assert inference_precision("32", "cpu") == "32" and inference_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match=r"--precision: choose one of auto, 32, bf16, got 'fp16'"):
        inference_precision("fp16", "cpu")


def test_bf16_segmenter_runs_in_bf16_and_gives_the_float32_masks(seg_ckpt):
    model, _ = load_model(seg_ckpt, precision="bf16")
    assert model.precision == "bf16"
    rng = np.random.default_rng(0)
    images = [rng.random((64, 64), dtype=np.float32) for _ in range(4)]
    x, _ = model.contract.preprocess(images)
    low = model(x)
    bf16_masks = segment(images, model)
    model.precision = "32"
    full = model(x)
    assert low.dtype == full.dtype == torch.float32
    assert not torch.equal(low, full)  # bf16 arithmetic did run
    assert torch.allclose(low, full, atol=0.05 * float(full.abs().max()))
    agreement = np.mean([(a == b).mean() for a, b in zip(bf16_masks, segment(images, model), strict=True)])
    assert agreement > 0.98


def test_a_checkpoint_loads_in_float32_unless_asked(seg_ckpt, monkeypatch):
    assert load_model(seg_ckpt)[0].precision == "32"
    monkeypatch.setattr(loading, "native_bf16", lambda device: True)
    assert load_model(seg_ckpt, precision="auto")[0].precision == "bf16"
    with pytest.raises(ConfigError, match="choose one of"):
        load_model(seg_ckpt, precision="16")


def test_onnxruntime_with_bf16_is_one_line_error(seg_ckpt, tmp_path, capsys):
    import cv2

    cv2.imwrite(str(tmp_path / "s.png"), np.zeros((64, 64), np.uint8))
    rc = cli_main(["diagnose", str(tmp_path / "s.png"), "--segmenter", str(seg_ckpt), "--classifier", str(seg_ckpt),
                   "--engine", "onnxruntime", "--precision", "bf16", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("--precision bf16 runs with --engine torch; ONNX Runtime runs the exported float32 model")
    assert not (tmp_path / "o").exists()
