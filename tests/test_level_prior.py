"""model.level_prior: a learned logit offset per disc level, fed by data.dataset.level_col in training and by
the level diagnose names; exported files carry the offsets in their sidecar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spinenet.cli import main as cli_main
from spinenet.errors import ConfigError, DataError
from spinenet.lit.classification import ClassificationModule
from spinenet.loading import load_model
from tests.test_diagnose import CLS_OVERRIDES, make_checkpoint

LEVELS = ["L5-S1", "L4-L5"]


class _Flat(nn.Module):
    def __init__(self, k: int = 3):
        super().__init__()
        self.fc = nn.Linear(16, k)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _module(levels=LEVELS) -> ClassificationModule:
    return ClassificationModule(
        net=_Flat(),
        loss=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        label_names=["healthy", "L4-L5", "L5-S1"],
        level_prior=levels,
    )


def test_each_level_gets_its_own_offset_and_unknown_levels_share_one():
    module = _module()
    with torch.no_grad():
        module.level_offsets.copy_(torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]]))
    x = torch.randn(4, 1, 4, 4)
    plain = module(x)  # no levels: the net alone, as exported
    torch.testing.assert_close(plain, module.net(x))
    got = module(x, ["L5-S1", "L4-L5", "", "T12-L1"])
    expected = plain + torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0], [0, 0, 3.0]])
    torch.testing.assert_close(got, expected)
    assert module.level_offset_table() == {"L5-S1": [1.0, 0, 0], "L4-L5": [0, 2.0, 0], "*": [0, 0, 3.0]}


def test_offsets_learn_from_the_loss_and_a_batch_without_levels_is_refused():
    module = _module()
    assert torch.count_nonzero(module.level_offsets) == 0  # the net alone until fit start sets them
    batch = {"image": torch.randn(4, 1, 4, 4), "label": torch.tensor([2, 2, 0, 1]),
             "level": ["L5-S1", "L5-S1", "", "L4-L5"]}
    module._step(batch, "train").backward()
    grad = module.level_offsets.grad
    assert grad is not None and torch.count_nonzero(grad[0]) > 0 and torch.count_nonzero(grad[2]) > 0
    with pytest.raises(ConfigError, match="data.dataset.level_col"):
        module._step({"image": batch["image"], "label": batch["label"]}, "val")
    with pytest.raises(ConfigError, match="level_prior"):
        _module(["L5-S1", "L5-S1"])


@pytest.fixture(scope="module")
def tiny_phantom_crops(tmp_path_factory):
    from spinenet.roi import phantom_crops

    out = tmp_path_factory.mktemp("crops") / "sag"
    phantom = {"view": "sagittal", "patients": 10, "seed": 1, "size": 64, "slices_per_patient": 2}
    return phantom_crops(out, phantom, {"size": 32, "levels": ["L4-L5", "L5-S1"]})


def test_manifest_level_column_reaches_the_batch(tiny_phantom_crops):
    from spinenet.data.datamodule import ClassificationDataModule

    root = tiny_phantom_crops
    common = dict(image_col="image", mask_col=None, patient_col="patient_id", label_col="sagittal_class",
                  label_names=["healthy", "L4-L5", "L5-S1"])
    dm = ClassificationDataModule(dataset=dict(root=str(root), level_col="level", **common),
                                  image_size=(32, 32), batch_size=4)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert set(batch["level"]) <= {"L4-L5", "L5-S1"} and len(batch["level"]) == len(batch["label"])
    bad = ClassificationDataModule(dataset=dict(root=str(root), level_col="disc_level", **common),
                                   image_size=(32, 32), batch_size=4)
    with pytest.raises(DataError, match="dataset.level_col"):
        bad.setup()


def test_level_log_odds_match_hand_counts():
    from spinenet.metrics.classification import level_log_odds

    labels = [1, 1, 0, 0, 0, 1]
    levels = ["A", "A", "B", "B", "", "C"]  # "" (unknown) and C (not listed) share the last row
    got = level_log_odds(labels, levels, ["A", "B"], 2, alpha=1.0)
    # counts + 1: A [1, 3], B [3, 1], other [2, 2]; overall [6, 6] -> p(c) = 0.5
    expected = [[np.log(0.25 / 0.5), np.log(0.75 / 0.5)], [np.log(0.75 / 0.5), np.log(0.25 / 0.5)], [0.0, 0.0]]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    with pytest.raises(DataError, match="6 labels but 5 levels"):
        level_log_odds(labels, levels[:5], ["A"], 2)


def test_offsets_start_at_the_training_split_log_odds(tiny_phantom_crops):
    import lightning as L

    from spinenet.data.datamodule import ClassificationDataModule
    from spinenet.metrics.classification import level_log_odds

    dataset = dict(root=str(tiny_phantom_crops), image_col="image", mask_col=None, patient_col="patient_id",
                   label_col="sagittal_class", label_names=["healthy", "L4-L5", "L5-S1"], level_col="level")
    dm = ClassificationDataModule(dataset=dataset, image_size=(8, 8), batch_size=4)
    module = ClassificationModule(
        net=nn.Sequential(nn.Flatten(), nn.Linear(64, 3)),
        loss=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.0),  # nothing moves: the start is what is left
        label_names=["healthy", "L4-L5", "L5-S1"],
        level_prior=LEVELS,
        bootstrap=0,
        plots=False,
    )
    trainer = L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, accelerator="cpu",
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    expected = level_log_odds(dm.train_labels(), dm.train_levels(), LEVELS, 3)
    table = module.level_offset_table()
    np.testing.assert_allclose([table["L5-S1"], table["L4-L5"], table["*"]], expected, rtol=1e-6)
    assert np.abs(np.asarray(expected)).max() > 0.05  # the split's levels differ: not the zero start
    dataset["level_col"] = None
    with pytest.raises(ConfigError, match="data.dataset.level_col"):
        ClassificationDataModule(dataset=dataset, image_size=(8, 8), batch_size=4).train_levels()


def _checkpoint_with_offsets(folder, net: str = "discnet"):
    """A sagittal checkpoint with a level prior over L5-S1, L4-L5 and set (non-zero) offsets."""
    ckpt = make_checkpoint(folder / "cls.ckpt", [*CLS_OVERRIDES, "model.level_prior=[L5-S1,L4-L5]",
                                                 "+data.dataset.level_col=level", f"model.net.name={net}"])
    state = torch.load(ckpt, weights_only=False)
    state["state_dict"]["level_offsets"] = torch.tensor([[2.0, -1, 0], [0, 1.5, -2], [-3.0, 0, 1]])
    torch.save(state, ckpt)
    return ckpt


@pytest.mark.parametrize("net", ["discnet", "smallcnn"])  # the SPIDER herniation and bulging models
def test_checkpoint_and_exported_files_apply_the_same_level_offsets(tmp_path, net):
    pytest.importorskip("onnxruntime")
    ckpt = _checkpoint_with_offsets(tmp_path, net)
    ref = load_model(ckpt)[0]
    assert ref.contract.level_offsets == {"L5-S1": [2.0, -1, 0], "L4-L5": [0, 1.5, -2], "*": [-3.0, 0, 1]}
    assert cli_main(["export", str(ckpt), "--out", str(tmp_path / "out"), "--format", "onnx", "torchscript"]) == 0
    rng = np.random.default_rng(0)
    x, _ = ref.contract.preprocess([rng.random((64, 64)).astype(np.float32) for _ in range(3)])
    levels = ["L4-L5", "T12-L1", "L5-S1"]
    expected = ref(x, levels)
    torch.testing.assert_close(expected - ref(x), torch.tensor([[0, 1.5, -2], [-3.0, 0, 1], [2.0, -1, 0]]),
                               atol=1e-5, rtol=0)
    for name in ("classifier.pt", "classifier.onnx"):
        got = load_model(tmp_path / "out" / name, allow_torchscript=True)[0](x, levels)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_onnxruntime_engine_keeps_the_offsets_of_a_checkpoint(tmp_path):
    pytest.importorskip("onnxruntime")
    from spinenet.pipeline.export import onnxruntime_predictor

    ref = load_model(_checkpoint_with_offsets(tmp_path))[0]
    fast = onnxruntime_predictor(ref)
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(fast(x, ["L5-S1", ""]), ref(x, ["L5-S1", ""]), atol=1e-4, rtol=1e-4)


def test_ensemble_members_get_the_levels_and_refuse_data_without_them():
    from spinenet.ensemble.artifact import EnsembleNet

    a, b = _module(), _module()
    with torch.no_grad():
        a.level_offsets.copy_(torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]]))
    ens = EnsembleNet([a, b], [3.0, 1.0])
    assert ens.takes_levels
    x, levels = torch.randn(3, 1, 4, 4), ["L5-S1", "", "L4-L5"]
    expected = 0.75 * torch.softmax(a(x, levels), 1) + 0.25 * torch.softmax(b(x, levels), 1)
    torch.testing.assert_close(ens.probabilities(x, levels), expected)
    with pytest.raises(ConfigError, match="data.dataset.level_col"):
        ens(x)
    # wrapped as a classifier (how a saved ensemble loads), the levels are passed on
    wrapper = ClassificationModule(net=ens, loss=nn.NLLLoss(), optimizer=None,
                                   label_names=["healthy", "L4-L5", "L5-S1"])
    torch.testing.assert_close(torch.exp(wrapper(x, levels)), expected)
