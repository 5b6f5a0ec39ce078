"""The model contract: written into every checkpoint, ensemble file and export sidecar, read back by the one
loader, versioned, validated, and the one preprocessing that training, eval and inference share."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from spinenet.contract import CONTRACT_KEY, CONTRACT_VERSION, InputSpec, ModelContract, TaskKind
from spinenet.ensemble.artifact import save_artifact
from spinenet.ensemble.members import member_from_checkpoint
from spinenet.errors import ConfigError, DataError
from spinenet.loading import load_model
from tests.test_diagnose import CLS_OVERRIDES, SEG_OVERRIDES, make_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _saved(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_checkpoint_holds_a_versioned_contract_that_the_loader_returns(tmp_path):
    ckpt = make_checkpoint(tmp_path / "cls.ckpt", CLS_OVERRIDES)
    doc = _saved(ckpt)[CONTRACT_KEY]
    assert doc["version"] == CONTRACT_VERSION and doc["task"] == "classification"
    model, contract = load_model(ckpt)
    assert contract.task is TaskKind.CLASSIFICATION and model.contract is contract
    assert contract == ModelContract.from_dict(doc, ckpt)
    # what the classifier's training crops were: read by diagnose to crop alike
    assert contract.crop is not None and contract.crop.levels == ("L4-L5", "L5-S1")
    assert contract.heads[0].kind == "multiclass" and contract.heads[0].classes == contract.classes
    # JSON round trip (ensemble files and export sidecars hold it as JSON)
    assert ModelContract.from_dict(json.loads(json.dumps(contract.to_dict())), "x") == contract


def test_a_checkpoint_from_before_contracts_loads_with_the_same_contract(tmp_path):
    ckpt = make_checkpoint(tmp_path / "seg.ckpt", SEG_OVERRIDES)
    _, contract = load_model(ckpt)
    old = _saved(ckpt)
    del old[CONTRACT_KEY]
    torch.save(old, tmp_path / "old.ckpt")
    _, derived = load_model(tmp_path / "old.ckpt")
    assert derived == contract and derived.task is TaskKind.SEGMENTATION
    assert derived.input == InputSpec((64, 64), 1, "resize", None)


@pytest.mark.parametrize("change,message", [
    ({"version": CONTRACT_VERSION + 1}, "written by a newer spinenet (this one reads up to"),
    ({"version": None}, "has no valid version"),
    ({"task": "detection"}, "unknown task 'detection'; valid: ['segmentation', 'classification']"),
    ({"input": {"image_size": [4, 64]}}, "data.image_size: expected [height, width] with both >= 8"),
])
def test_a_contract_that_is_not_valid_is_refused_naming_the_file(tmp_path, change, message):
    ckpt = make_checkpoint(tmp_path / "seg.ckpt", SEG_OVERRIDES)
    saved = _saved(ckpt)
    saved[CONTRACT_KEY].update(change)
    torch.save(saved, ckpt)
    with pytest.raises(DataError) as err:
        load_model(ckpt)
    assert str(ckpt) in str(err.value) and message in str(err.value)


def test_training_and_inference_prepare_an_image_alike(tiny_phantom, compose_cfg):
    """The datamodule's evaluation samples and ``contract.preprocess`` are the same pixels (CLAHE, padding)."""
    import hydra

    from spinenet.config import to_plain_dict
    from spinenet.data.io import read_image
    from tests.conftest import tiny_train_overrides

    cfg = compose_cfg(tiny_train_overrides(tiny_phantom["sagittal"]) + [
        "data.resize_mode=pad", "data.image_size=[48,64]", "data.clahe={clip: 3.0, tiles: [2, 2]}"])
    dm = hydra.utils.instantiate(cfg.data, output_dir=str(cfg.paths.output_dir), check="off")
    dm.setup("test")
    dataset = dm.datasets["test"]
    sample = dataset[0]
    contract = ModelContract.from_run_config(to_plain_dict(cfg))
    image = read_image(dataset.rows.iloc[0]["image_path"])
    x, regions = contract.preprocess([image])
    assert contract.input.clahe == {"clip": 3.0, "tiles": [2, 2]} and contract.input.resize_mode == "pad"
    torch.testing.assert_close(x[0], sample["image"], rtol=0, atol=0)
    assert regions[0] != (0, 48, 0, 64)  # a 64x64 slice padded into 48x64: only part of the input is image


def test_ensemble_file_records_its_contract_and_refuses_members_that_no_longer_fit(tmp_path):
    a = member_from_checkpoint(make_checkpoint(tmp_path / "a.ckpt", SEG_OVERRIDES))
    b = member_from_checkpoint(make_checkpoint(tmp_path / "b.ckpt", SEG_OVERRIDES))
    path = save_artifact(tmp_path / "ensemble.json", [a, b], [0.5, 0.5])
    doc = json.loads(path.read_text())
    assert doc[CONTRACT_KEY]["classes"] == ["background", "disc", "vertebra", "canal"]
    _, contract = load_model(path)
    assert contract.signature() == a.contract.signature()
    doc[CONTRACT_KEY]["input"]["image_size"] = [128, 128]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="no longer match the contract it records"):
        load_model(path)


def test_task_kind_is_parsed_with_the_valid_choices():
    assert TaskKind.parse("segmentation").per_pixel and not TaskKind.CLASSIFICATION.per_pixel
    assert TaskKind.SEGMENTATION.names_key == "class_names" and TaskKind.CLASSIFICATION.first_reported_class == 0
    with pytest.raises(ConfigError, match=r"task: unknown task 'seg'; valid: \['segmentation', 'classification'\]"):
        TaskKind.parse("seg")


def _calls(name: str) -> list[str]:
    """Modules of the package that call ``name``."""
    found = []
    for path in sorted((REPO / "spinenet").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == name:
                found.append(str(path.relative_to(REPO)))
                break
    return found


def test_one_preprocessing_one_loader():
    """Whole-image CLAHE and evaluation transforms come from the contract alone; checkpoints are opened by
    the loaders below load_model alone (a second copy is how eval once scored a CLAHE model without CLAHE)."""
    assert _calls("apply_clahe") == ["spinenet/contract.py"]
    assert _calls("createCLAHE") == ["spinenet/data/transforms.py"]  # one CLAHE, for images and crops alike
    evaluation = [m for m in _calls("build_transforms") if m != "spinenet/data/datamodule.py"]
    assert evaluation == ["spinenet/contract.py"]
    assert _calls("load_run_model") == ["spinenet/ensemble/artifact.py", "spinenet/ensemble/members.py",
                                        "spinenet/loading.py"]
    assert _calls("load_checkpoint") == ["spinenet/checkpoints.py"]


def test_a_trained_checkpoint_records_its_training_data_without_patient_ids(tiny_phantom, compose_cfg):
    from spinenet.tasks.train import train
    from tests.conftest import tiny_train_overrides

    cfg = compose_cfg(tiny_train_overrides(tiny_phantom["sagittal"]) + ["trainer.max_epochs=1"])
    metrics = train(cfg)
    saved = _saved(Path(metrics["last_checkpoint"]))
    data = saved[CONTRACT_KEY]["training_data"]
    manifest = tiny_phantom["sagittal"] / "manifest.csv"
    import hashlib

    assert data["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert sum(s["patients"] for s in data["splits"].values()) == 10
    patients = json.loads((Path(cfg.paths.output_dir) / "splits.json").read_text())["splits"]["train"]
    assert not any(str(p) in json.dumps(data) for p in patients if len(str(p)) > 3)


def test_task_kind_is_read_from_new_and_old_run_configs():
    assert TaskKind.of_config({"task_kind": "classification"}) is TaskKind.CLASSIFICATION
    assert TaskKind.of_config({"task": "classification"}) is TaskKind.CLASSIFICATION  # saved before the rename
    assert TaskKind.of_config({}) is TaskKind.SEGMENTATION
    with pytest.raises(ConfigError, match="the setting is task_kind now"):
        TaskKind.of_config({"task_kind": "segmentation", "task": "classification"})


def test_masks_from_logits_take_numpys_arg_max_ties_infinities_and_nan_alike():
    """The masks come from a running maximum in OpenCV (20x faster): the class ids must be NumPy's arg-max's,
    the first class winning a tie, for padded regions, upsampled logits and one class as well."""
    import numpy as np

    from spinenet.contract import masks_from_logits

    rng = np.random.default_rng(5)
    logits = torch.from_numpy(np.round(rng.standard_normal((3, 5, 12, 10)), 1).astype(np.float32))  # many ties
    logits[0, 2, 0, :] = float("inf")
    logits[1, :, 3, :] = float("-inf")
    logits[1, 1, 3, 4] = 0.0
    logits[2, 3, 5, 5] = float("nan")  # NumPy calls the first NaN the maximum
    images = [np.zeros((12, 10)), np.zeros((12, 8)), np.zeros((24, 20))]
    regions = [(0, 12, 0, 10), (0, 12, 1, 9), (0, 12, 0, 10)]  # a padded image; one upsampled x2
    masks = masks_from_logits(logits, images, regions)
    want = [np.argmax(logits[0].numpy(), 0), np.argmax(logits[1, :, :, 1:9].numpy(), 0),
            np.argmax(torch.nn.functional.interpolate(logits[2:], size=(24, 20), mode="bilinear")[0].numpy(), 0)]
    for got, expected in zip(masks, want, strict=True):
        assert got.dtype == np.int64 and got.shape == expected.shape and (got == expected).all()
    assert (masks[0][0] == 2).all() and masks[1][3, 3] == 1 and masks[2][10:12, 10:12].max() == 3
    one = masks_from_logits(logits[:1, :1], images[:1], regions[:1])[0]
    assert one.shape == (12, 10) and not one.any()
