"""Classification end to end: every cls experiment through train(cfg), class weights, segment -> crop -> classify."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import lightning as L
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from spinenet.cli import main as cli_main
from spinenet.errors import ConfigError, DataError
from spinenet.metrics.classification import compute_class_weights
from spinenet.tasks.common import build_module
from spinenet.tasks.evaluate import evaluate
from spinenet.tasks.train import train
from tests.conftest import SPIDER
from tests.test_roi_cli import tiny_segmenter

pytestmark = pytest.mark.slow

PHANTOM_EXPERIMENTS = [
    "cls/sustersic2022_axial",
    "cls/sustersic2022_axial4",
    "cls/sustersic2022_sagittal",
    "cls/sayed2025",
]
SPIDER_EXPERIMENTS = ["cls/spider_bulging", "cls/spider_herniation", "cls/spider_pfirrmann"]
requires_disc_crops = pytest.mark.skipif(
    not (SPIDER / "disc_crops" / "manifest.csv").is_file(),
    reason=f"real SPIDER disc crops not found at {SPIDER / 'disc_crops'} (set SPIDER_DIR to run these tests)",
)


@pytest.fixture(scope="session")
def cls_data_dir(tmp_path_factory) -> Path:
    """Where the phantom crop sets are generated on first use (shared by the tests of this session)."""
    return tmp_path_factory.mktemp("cls_data")


def tiny_cls_overrides(data_dir: Path) -> list[str]:
    """Seconds-long classification runs: a tiny 64x64 phantom, cropped on first use; one batch per split."""
    return [
        f"paths.data_dir={data_dir}",
        "data.synthesize.patients=10",
        "data.synthesize.size=64",
        "data.synthesize.slices_per_patient=1",
        "data.batch_size=4",
        "debug=fdr",
        "model.bootstrap=20",
        "extras.print_config=false",
    ]


def _check_run(metrics: dict, run: Path, labels: list[str]) -> dict:
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["task"] == "classification" and on_disk["classes"] == labels
    assert {"accuracy", "balanced_accuracy", "f1_macro", "auroc", "loss"} <= set(on_disk["test"])
    assert 0.0 <= on_disk["test"]["accuracy"] <= 1.0
    report = on_disk["per_class"]
    assert report["class_names"] == labels and set(report["per_class"]) == set(labels)
    assert {"precision", "recall", "specificity", "f1", "auroc", "support"} <= set(
        report["per_class"][labels[0]]
    )
    cm = report["confusion_matrix"]
    assert len(cm) == len(labels) and sum(map(sum, cm)) == report["num_samples"] > 0
    assert report["bootstrap"]["accuracy"]["level"] == "group"  # resampled by patient
    plots = {p.name for p in (run / "plots").glob("*.png")}
    assert {"test_confusion_matrix.png", "test_roc.png", "test_pr.png"} <= plots
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == report["num_samples"] and "patient_id" in predictions
    assert set(predictions.true_label.astype(str)) <= set(labels) and {f"prob_{n}" for n in labels} <= set(
        predictions.columns
    )
    assert metrics["test"]["accuracy"] == pytest.approx(on_disk["test"]["accuracy"])
    return on_disk


@pytest.mark.parametrize("experiment", PHANTOM_EXPERIMENTS)
def test_phantom_experiment_runs(experiment, cls_data_dir, compose_cfg):
    cfg = compose_cfg([f"experiment={experiment}", *tiny_cls_overrides(cls_data_dir)])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    labels = list(cfg.data.dataset.label_names)
    on_disk = _check_run(metrics, run, labels)
    # the crop set was generated on first use, next to its phantom (from the ground-truth masks)
    root = Path(cfg.data.dataset.root)
    summary = json.loads((root / "summary.json").read_text())
    assert summary["mask_source"] == "gt" and summary["size"] == [64, 64]
    assert (Path(cfg.data.synthesize.crops.source) / "phantom.json").is_file()
    assert on_disk["per_class"]["class_weights"] is not None  # balanced weights, from the training split
    if experiment.endswith("axial4"):
        assert "bulge" not in set(pd.read_csv(root / "manifest.csv").label)


@requires_disc_crops
@pytest.mark.parametrize("experiment", SPIDER_EXPERIMENTS)
def test_spider_experiment_runs(experiment, compose_cfg):
    cfg = compose_cfg(
        [
            f"experiment={experiment}",
            f"paths.spider_dir={SPIDER}",
            "debug=fdr",
            "data.batch_size=8",
            "model.bootstrap=20",
            "extras.data_check=fast",
            "extras.print_config=false",
        ]
    )
    metrics = train(cfg)
    on_disk = _check_run(metrics, Path(cfg.paths.output_dir), list(cfg.data.dataset.label_names))
    aggregated = on_disk["per_class"]["aggregated"]  # one disc seen in several series: its mean prediction
    assert (
        aggregated["by"] == ["patient_id", "ivd_label"]
        and 0 < aggregated["groups"] <= aggregated["num_samples"]
    )
    assert "agg_auroc" in on_disk["test"]


def test_predictions_of_one_case_are_averaged(compose_cfg, tmp_path):
    """aggregate_by: the two slices of a phantom disc are one case; the mean of their predictions is scored."""
    cfg = compose_cfg(
        [
            "experiment=cls/sustersic2022_sagittal",
            *tiny_cls_overrides(tmp_path / "data"),  # its own phantom: 2 slices per patient
            "data.synthesize.slices_per_patient=2",
            "data.batch_size=64",
            "model.aggregate_by=[patient_id,level]",
        ]
    )
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    crops = pd.read_csv(run / "predictions.csv")
    cases = pd.read_csv(run / "predictions_aggregated.csv")
    assert len(cases) == crops.groupby(["patient_id", "level"]).ngroups < len(crops)
    assert (cases.crops == 2).all()
    mean = crops.groupby(["patient_id", "level"])[["prob_healthy", "prob_L4-L5", "prob_L5-S1"]].mean()
    got = cases.set_index(["patient_id", "level"]).loc[mean.index, mean.columns]
    assert got.to_numpy() == pytest.approx(mean.to_numpy(), abs=1e-6)
    report = json.loads((run / "metrics.json").read_text())["per_class"]["aggregated"]
    assert report["groups"] == len(cases) and report["num_samples"] == len(cases)
    assert {"agg_accuracy", "agg_auroc"} <= set(metrics["test"]) and "agg_accuracy" in metrics["val"]


def _datamodule_and_module(cfg):
    datamodule = hydra.utils.instantiate(cfg.data, output_dir=cfg.paths.output_dir, check="fast")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule, build_module(cfg, datamodule.class_names, datamodule.label_names)


def test_balanced_class_weights_reach_the_loss(cls_data_dir, compose_cfg):
    # sagittal crops are imbalanced: most L4-L5 / L5-S1 discs are healthy
    cfg = compose_cfg(["experiment=cls/sustersic2022_sagittal", *tiny_cls_overrides(cls_data_dir)])
    datamodule, module = _datamodule_and_module(cfg)
    assert module.loss.weight.tolist() == [1.0, 1.0, 1.0]  # placeholder until the training split is known
    trainer = L.Trainer(
        fast_dev_run=True,
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    expected = compute_class_weights(datamodule.train_labels(), 3, "balanced")
    assert len(set(expected)) > 1, "the test needs an imbalanced training split"
    assert module.loss.weight.tolist() == pytest.approx(expected)
    assert module.class_weight_values == pytest.approx(expected)
    # the loss applies them: weighted cross-entropy, not the plain one
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 0, 0, 0, 1, 2])
    weighted = F.cross_entropy(logits, target, weight=torch.tensor(expected, dtype=torch.float32))
    assert float(module.loss(logits, target)) == pytest.approx(float(weighted), rel=1e-5)
    assert float(module.loss(logits, target)) != pytest.approx(
        float(F.cross_entropy(logits, target)), rel=1e-3
    )


def test_class_weights_from_config(cls_data_dir, compose_cfg):
    cfg = compose_cfg(
        [
            "experiment=cls/sustersic2022_sagittal",
            *tiny_cls_overrides(cls_data_dir),
            "model.class_weights=[0.5,2.0,3.0]",
        ]
    )
    _, module = _datamodule_and_module(cfg)
    assert module.loss.weight.tolist() == [0.5, 2.0, 3.0]
    with pytest.raises(Exception, match="2 values for 3 labels"):
        _datamodule_and_module(
            compose_cfg(
                [
                    "experiment=cls/sustersic2022_sagittal",
                    *tiny_cls_overrides(cls_data_dir),
                    "model.class_weights=[1,2]",
                ]
            )
        )
    with pytest.raises(Exception, match="set twice"):
        _datamodule_and_module(
            compose_cfg(
                [
                    "experiment=cls/sustersic2022_sagittal",
                    *tiny_cls_overrides(cls_data_dir),
                    "+loss.class_weights=[1,2,3]",
                ]
            )
        )
    with pytest.raises(Exception, match="balanced"):
        _datamodule_and_module(
            compose_cfg(
                [
                    "experiment=cls/sustersic2022_sagittal",
                    *tiny_cls_overrides(cls_data_dir),
                    "model.class_weights=inverse",
                ]
            )
        )


def test_bad_crop_settings_are_named(cls_data_dir, compose_cfg, tmp_path):
    cfg = compose_cfg(
        [
            "experiment=cls/sustersic2022_axial",
            *tiny_cls_overrides(cls_data_dir),
            "data.synthesize.patients=3",
            "+data.synthesize.crops.padding=2",
        ]
    )
    with pytest.raises(ConfigError, match=r"data.synthesize.crops: unknown setting\(s\) \['padding'\]"):
        train(cfg)
    # a source folder that holds a phantom made with other settings is refused, never silently cropped
    from spinenet.data.phantom import generate_phantom

    data = tmp_path / "data"
    generate_phantom(
        data / "phantom_axial_p3_s64_seed0", view="axial", patients=3, size=64, slices_per_patient=1
    )
    cfg = compose_cfg(
        [
            "experiment=cls/sustersic2022_axial",
            *tiny_cls_overrides(data),
            "data.synthesize.patients=3",
            "data.synthesize.slices_per_patient=2",
        ],
        output_dir=tmp_path / "run2",
    )
    with pytest.raises(DataError, match=r"holds another phantom .*slices_per_patient.*\(1, 2\)"):
        train(cfg)


def test_sustersic_pipeline_segment_crop_classify(tiny_phantom, compose_cfg, tmp_path, capsys):
    """Šušteršič 2022 end to end on a tiny phantom: a trained U-Net's masks -> disc crops -> DiscNet."""
    seg_run = tiny_segmenter(tiny_phantom["axial"], tmp_path / "seg")
    ckpt = json.loads((seg_run / "metrics.json").read_text())["best_checkpoint"]
    crops = tmp_path / "crops"
    assert (
        cli_main(
            [
                "roi",
                "--data",
                "phantom_axial",
                "--root",
                str(tiny_phantom["axial"]),
                "--segmenter",
                ckpt,
                "--out",
                str(crops),
                "--size",
                "32",
            ]
        )
        == 0
    )
    assert "masks: segmenter" in capsys.readouterr().out
    cfg = compose_cfg(
        [
            "experiment=cls/sustersic2022_axial",
            f"data.dataset.root={crops}",
            "data.synthesize=null",
            f"data.split.file={seg_run / 'splits.json'}",
            "data.image_size=[32,32]",
            "data.batch_size=4",
            "trainer.max_epochs=2",
            "logger=csv",
            "callbacks.progress_bar=null",
            "model.bootstrap=20",
            "trainer.accelerator=cpu",
            "extras.print_config=false",
        ],
        output_dir=tmp_path / "cls",
    )
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    _check_run(metrics, run, ["healthy", "bulge", "central", "left", "right"])
    # the classifier is tested on the segmenter's test patients: neither model saw them in training
    seg_splits = json.loads((seg_run / "splits.json").read_text())["splits"]
    cls_splits = json.loads((run / "splits.json").read_text())["splits"]
    assert cls_splits == seg_splits
    assert set(pd.read_csv(run / "predictions.csv").patient_id.astype(str)) <= set(seg_splits["test"])
    # the classifier checkpoint rebuilds from itself alone
    from tests.conftest import module_and_config

    module, saved = module_and_config(metrics["best_checkpoint"])
    assert saved.task_kind == "classification" and module.label_names == cfg.data.dataset.label_names


def test_ddp_sim_two_cpu_processes(cls_data_dir, compose_cfg):
    """Metrics gathered across 2 processes (list states arrive concatenated), then tested in one process."""
    overrides = [o for o in tiny_cls_overrides(cls_data_dir) if o != "debug=fdr"]
    cfg = compose_cfg(
        [
            "experiment=cls/sustersic2022_axial",
            *overrides,
            "trainer=ddp_sim",
            "trainer.max_epochs=1",
            "logger=none",
            "callbacks.progress_bar=null",
            "trainer.deterministic=true",
        ]
    )
    metrics = train(cfg)
    assert metrics["val"] and 0.0 <= metrics["val"]["accuracy"] <= 1.0
    _check_run(metrics, Path(cfg.paths.output_dir), list(cfg.data.dataset.label_names))


def test_a_last_training_batch_of_one_is_dropped(cls_data_dir, compose_cfg):
    """Batch norm cannot train on one image: a split whose size leaves a last batch of one drops it."""
    cfg = compose_cfg(["experiment=cls/sustersic2022_sagittal", *tiny_cls_overrides(cls_data_dir)])
    datamodule, module = _datamodule_and_module(cfg)
    n = len(datamodule.train_dataloader().dataset)
    assert n > 3
    datamodule.batch_size = n - 1  # n % (n - 1) == 1
    loader = datamodule.train_dataloader()
    assert loader.drop_last and [len(b["label"]) for b in loader] == [n - 1]
    module.train()
    module.net(next(iter(loader))["image"])  # batch norm trains on the full batch
    datamodule.batch_size = n - 2 if n % (n - 2) != 1 else n  # no batch of one: nothing dropped
    assert not datamodule.train_dataloader().drop_last
    assert not datamodule.val_dataloader().drop_last  # evaluation never drops images


def test_eval_enhances_crops_as_the_checkpoint_was_trained(cls_data_dir, compose_cfg, tmp_path):
    """data.clahe is part of what the model expects: eval takes it from the checkpoint, like the image size."""
    overrides = [o for o in tiny_cls_overrides(cls_data_dir) if o != "debug=fdr"]
    cfg = compose_cfg(["experiment=cls/sustersic2022_sagittal", *overrides, "trainer.max_epochs=1",
                       "data.clahe={clip:4.0,tiles:[2,2]}", "logger=none"])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    ecfg = compose_cfg([f"ckpt_path={metrics['best_checkpoint']}", "data=phantom_sagittal_crops",
                        f"data.dataset.root={cfg.data.dataset.root}", "data.synthesize=null",
                        f"data.split.file={run / 'splits.json'}", "split=test", "trainer.accelerator=cpu"],
                       config_name="eval", output_dir=tmp_path / "eval")
    saved = json.loads(Path(evaluate(ecfg)["metrics_file"]).read_text())
    assert saved["test"]["loss"] == pytest.approx(metrics["test"]["loss"], abs=1e-5)
    assert saved["test"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-6)


@requires_disc_crops
def test_spider_bulging_with_midsag_crops(compose_cfg, tmp_path):
    """cls/spider_bulging_midsag: graded crops of other patients join the training split only."""
    import cv2
    import numpy as np

    folder = tmp_path / "data" / "spider_midsag_crops"
    overrides = ["experiment=cls/spider_bulging_midsag", f"paths.spider_dir={SPIDER}", f"paths.data_dir={tmp_path / 'data'}",
                 "debug=fdr", "data.batch_size=8", "model.bootstrap=0", "extras.data_check=fast",
                 "extras.print_config=false"]
    with pytest.raises(DataError, match=str(folder / "graded.csv")):
        train(compose_cfg(overrides, output_dir=tmp_path / "missing"))
    (folder / "images").mkdir(parents=True)
    rows = []
    for k, level in enumerate(["L5-S1", "L4-L5", "L3-L4", "T12-L1"]):
        cv2.imwrite(str(folder / "images" / f"x{k}.png"), np.full((48, 112), 30 + 40 * k, np.uint8))
        rows.append({"patient_id": f"M{k % 2}", "image": f"images/x{k}.png", "level": level, "ivd_label": k + 1,
                     "disc_bulging": k % 2, "disc_herniation": 0, "pfirrmann": 3})
    pd.DataFrame(rows).to_csv(folder / "graded.csv", index=False)
    cfg = compose_cfg(overrides)
    datamodule, _ = _datamodule_and_module(cfg)
    train_rows = datamodule.datasets["train"].rows
    assert list(train_rows.patient_id[-4:]) == ["M0", "M1", "M0", "M1"]
    assert {"M0", "M1"}.isdisjoint(set(datamodule.datasets["test"].rows.patient_id))
    metrics = train(cfg)
    assert "auroc" in metrics["test"] and metrics["test_ckpt"] == "last"
