"""`spinenet export`: ONNX (torch.export based; TorchScript as the legacy option) reproduces the checkpoint
(atol 1e-4 + rtol 1e-4, float32), and `spinenet diagnose` runs from the exported files with the same findings."""

from __future__ import annotations

import copy
import json
import logging
import warnings

import cv2
import numpy as np
import pytest
import torch

from spinenet.cli import main as cli_main
from spinenet.errors import ConfigError
from spinenet.loading import Predictor, load_model
from spinenet.pipeline.export import ATOL, RTOL, export_model
from tests.test_diagnose import CLS_OVERRIDES, SEG_OVERRIDES, make_checkpoint

pytest.importorskip("onnxruntime", reason="ONNX numeric checks need onnxruntime (pip install '.[onnx]')")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpts = {"seg": make_checkpoint(root / "seg.ckpt", SEG_OVERRIDES),
             "cls": make_checkpoint(root / "cls.ckpt", CLS_OVERRIDES)}
    for key, ckpt in ckpts.items():
        # the legacy format no longer hides PyTorch's deprecation of torch.jit.trace
        with pytest.warns(FutureWarning, match="jit"):
            assert cli_main(["export", str(ckpt), "--out", str(root / f"{key}_export"),
                             "--format", "onnx", "torchscript"]) == 0
    return root, ckpts


@pytest.mark.parametrize("key,name", [("seg", "segmenter"), ("cls", "classifier")])
def test_exported_models_match_the_checkpoint(exported, key, name):
    root, ckpts = exported
    folder = root / f"{key}_export"
    side = json.loads((folder / f"{name}.json").read_text())
    assert side["format"] == "spinenet-export" and side["files"] == {"torchscript": f"{name}.pt",
                                                                     "onnx": f"{name}.onnx"}
    prep = side["contract"]
    assert prep["version"] == 1 and prep["input"]["image_size"] == [64, 64] and prep["input"]["in_channels"] == 1
    if key == "cls":
        assert prep["classes"] == ["healthy", "L4-L5", "L5-S1"]
        assert prep["crop"]["levels"] == ["L4-L5", "L5-S1"] and prep["crop"]["margin"] == 0.1
        assert prep["crop"]["clahe"] == {"clip": 2.0, "tiles": [4, 4]}
    else:
        assert prep["classes"] == ["background", "disc", "vertebra", "canal"]
    assert side["verification"]["onnx_checker"] == "passed"
    ref = load_model(ckpts[key])[0]
    # structured images, not only the random inputs the export checked, at a batch size not traced
    rng = np.random.default_rng(0)
    images = [cv2.GaussianBlur(rng.random((64, 64)).astype(np.float32), (7, 7), 2) for _ in range(5)]
    x, _ = ref.contract.preprocess(images)
    expected = ref(x)
    # checkpoints run channels-last (faster on CPU) and give what the plain layout gives
    plain = Predictor(copy.deepcopy(ref.net).to(memory_format=torch.contiguous_format), ref.contract, ref.source)
    assert ref.channels_last and not plain.channels_last
    torch.testing.assert_close(plain(x), expected, atol=ATOL, rtol=RTOL)
    for suffix in (".pt", ".onnx"):
        got = load_model(folder / f"{name}{suffix}", allow_torchscript=True)[0](x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    # the sidecar JSON opens the ONNX file (TorchScript is code: only when allowed, see test_model_trust.py)
    assert load_model(folder / f"{name}.json")[0].kind == "onnx"


def test_default_export_is_onnx_alone_with_a_named_batch_axis_and_no_warning(exported, tmp_path, caplog):
    import onnx

    _, ckpts = exported
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli_main(["export", str(ckpts["seg"]), "--out", str(out)]) == 0
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    # nor the exporter's INFO log of each graph pass
    assert [r.getMessage() for r in caplog.records if r.name.startswith(("onnxscript", "onnx_ir"))] == []
    assert sorted(p.name for p in out.iterdir() if p.name != ".spinenet-output") == ["segmenter.json", "segmenter.onnx"]
    side = json.loads((out / "segmenter.json").read_text())
    assert side["files"] == {"onnx": "segmenter.onnx"} and side["verification"]["onnx_max_abs_diff"] < ATOL
    model = onnx.load(str(out / "segmenter.onnx"))
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.input, *model.graph.output]}
    assert shapes == {"input": ["batch", 1, 64, 64], "logits": ["batch", 4, 64, 64]}
    assert load_model(out / "segmenter.json")[0].kind == "onnx"


def test_an_export_from_before_contracts_still_loads(exported, tmp_path):
    """Version-1 sidecars held a ``preprocessing`` record; they load with the same contract."""
    import shutil

    root, ckpts = exported
    folder = shutil.copytree(root / "cls_export", tmp_path / "old")
    side = json.loads((folder / "classifier.json").read_text())
    contract = side.pop("contract")
    side["version"] = 1
    side["preprocessing"] = {"task": contract["task"], "classes": contract["classes"], **contract["input"],
                             "crop": {**contract["crop"], "size": list(contract["crop"]["size"])},
                             "view": contract["view"], "level_offsets": contract["level_offsets"]}
    (folder / "classifier.json").write_text(json.dumps(side))
    old, old_contract = load_model(folder / "classifier.onnx")
    current = load_model(root / "cls_export" / "classifier.onnx")[1]
    # what a version-1 sidecar held (the data schema and training fingerprint came with contracts)
    assert old_contract.signature() == current.signature() and old_contract.crop == current.crop
    assert old_contract.heads[0].classes == current.classes and old_contract.training_data is None
    assert old_contract.crop.levels == ("L4-L5", "L5-S1") and old.kind == "onnx"


def test_missing_onnx_exporter_is_a_one_line_error(exported, tmp_path, monkeypatch, capsys):
    def no_onnxscript(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")

    monkeypatch.setattr(torch.onnx, "export", no_onnxscript)
    _, ckpts = exported
    assert cli_main(["export", str(ckpts["cls"]), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "ONNX export needs onnxscript: pip install 'spinenet-mri[onnx]'" in err and "Traceback" not in err


def test_diagnose_runs_from_exported_files(exported, tmp_path):
    from spinenet.data.phantom import generate_phantom

    root, ckpts = exported
    manifest = generate_phantom(tmp_path / "ph", view="sagittal", patients=2, seed=0, size=128,
                                slices_per_patient=1)
    images = manifest.parent / "images"
    runs = {}
    for tag, seg, cls, extra in (
        ("ckpt", ckpts["seg"], ckpts["cls"], []),
        ("onnx", root / "seg_export" / "segmenter.onnx", root / "cls_export" / "classifier.pt",
         ["--allow-torchscript"]),
        # checkpoints exported in memory and run by ONNX Runtime (the fast CPU path)
        ("engine", ckpts["seg"], ckpts["cls"], ["--engine", "onnxruntime"]),
    ):
        out = tmp_path / tag
        assert cli_main(["diagnose", str(images), "--segmenter", str(seg), "--classifier", str(cls),
                         "--out", str(out), "--batch-size", "2", "--no-progress", *extra]) == 0
        runs[tag] = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/findings.json")}
    assert len(runs["ckpt"]) == 2
    discs = 0
    for tag in ("onnx", "engine"):
        assert runs["ckpt"].keys() == runs[tag].keys(), tag
        for study, doc in runs["ckpt"].items():
            other = runs[tag][study]
            for a, b in zip(doc["images"], other["images"], strict=True):
                assert [d["box"] for d in a["discs"]] == [d["box"] for d in b["discs"]]
                for da, db in zip(a["discs"], b["discs"], strict=True):
                    if da["classified"]:
                        discs += 1
                        assert da["class"] == db["class"]
                        assert da["probability"] == pytest.approx(db["probability"], abs=1e-3)


def test_onnxruntime_engine_gives_the_masks_and_probabilities_of_pytorch(exported, tiny_phantom):
    """The random-weight segmenter finds no disc, so the comparison above may hold vacuously for the
    classifier: here its masks are compared pixel by pixel and the classifier runs on real disc crops."""
    from spinenet.data.io import read_image, read_mask
    from spinenet.pipeline.diagnose import classify_crops, segment
    from spinenet.pipeline.export import onnxruntime_predictor
    from spinenet.roi import crop_roi, disc_boxes, enlarge_box

    _, ckpts = exported
    manifest = tiny_phantom["sagittal"] / "manifest.csv"
    rows = [line.split(",") for line in manifest.read_text().splitlines()[1:4]]
    header = manifest.read_text().splitlines()[0].split(",")
    images = [read_image(manifest.parent / r[header.index("image")]) for r in rows]
    masks = [read_mask(manifest.parent / r[header.index("mask")], [0, 85, 170, 255]) for r in rows]
    seg = load_model(ckpts["seg"])[0]
    fast_seg = onnxruntime_predictor(seg)
    assert fast_seg.kind == "onnx" and seg.kind == "module"
    for a, b in zip(segment(images, seg), segment(images, fast_seg), strict=True):
        assert a.shape == b.shape and (a == b).mean() > 0.999  # arg-max ties may flip a pixel
    cls = load_model(ckpts["cls"])[0]
    crops = [crop_roi(img, enlarge_box(box, 0.1, img.shape), (64, 64))
             for img, mask in zip(images, masks, strict=True) for box in disc_boxes(mask, min_area=4)]
    assert len(crops) >= 6
    np.testing.assert_allclose(classify_crops(crops, onnxruntime_predictor(cls), 4),
                               classify_crops(crops, cls, 4), atol=1e-4)


def test_onnxruntime_engine_refuses_a_gpu(exported, tmp_path, capsys):
    root, ckpts = exported
    rc = cli_main(["diagnose", str(tmp_path), "--segmenter", str(ckpts["seg"]), "--classifier", str(ckpts["cls"]),
                   "--out", str(tmp_path / "out"), "--engine", "onnxruntime", "--device", "cuda"])
    assert rc == 2 and "--engine onnxruntime runs on the CPU" in capsys.readouterr().err


def test_an_ordinal_classifier_exports_its_class_probabilities(tmp_path):
    """CORN heads: the file must hold the step from the net's K-1 cumulative logits to class log-probabilities."""
    from tests.test_diagnose import CLS_OVERRIDES, make_checkpoint

    ckpt = make_checkpoint(tmp_path / "ord.ckpt", [*CLS_OVERRIDES, "model.head=ordinal", "model.net.num_classes=2"])
    sidecar = export_model(ckpt, tmp_path / "out")
    onnx_model, contract = load_model(sidecar.with_suffix(".onnx"))
    assert contract.heads[0].kind == "ordinal" and len(contract.classes) == 3
    ref, _ = load_model(ckpt)
    x = torch.rand(2, 1, 64, 64)
    got, expected = onnx_model(x), ref(x)
    assert got.shape == (2, 3)  # class log-probabilities, not the 2 CORN logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(contract.probabilities(got).sum(1), torch.ones(2))


def test_an_exported_segmenter_runs_as_exported_in_float32(exported):
    """``auto`` leaves an exported file in float32 (it runs as exported); asking it for bf16 names the file."""
    root, _ = exported
    onnx = root / "seg_export" / "segmenter.onnx"
    assert load_model(onnx, precision="auto")[0].precision == "32"
    with pytest.raises(ConfigError, match=r"segmenter.onnx: an exported onnx file runs in float32; --precision bf16"):
        load_model(onnx, precision="bf16")
