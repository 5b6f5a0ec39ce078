"""`spinenet ensemble`: members from a sweep, cached predictions, the report, and the artifact loaded as one model."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spinenet.cli.ensemble import build_parser, main
from spinenet.contract import ModelContract
from spinenet.ensemble import members as members_mod
from spinenet.ensemble.artifact import EnsembleNet, is_ensemble, save_artifact
from spinenet.ensemble.members import (
    MIN_VAL_IMAGES,
    Member,
    SplitPredictions,
    build_datamodule,
    check_compatible,
    rank_sweep,
    resolve_members,
    split_size_warnings,
)
from spinenet.ensemble.run import EnsembleRequest, run_ensemble
from spinenet.errors import ConfigError, DataError
from spinenet.tasks.evaluate import evaluate
from spinenet.utils.safe_io import load_tensors
from tests.conftest import REPO, module_and_config, tiny_train_overrides
from tests.wandb_offline import offline_runs


# --------------------------------------------------------------------------------------------- fast checks
def _member(name: str, classes=("background", "disc"), size=(64, 64), task="segmentation") -> Member:
    key = "class_names" if task == "segmentation" else "label_names"
    config = {
        "task": task,
        "data": {
            "image_size": list(size),
            "in_channels": 1,
            "resize_mode": "resize",
            "dataset": {key: list(classes), "mask_values": [0, 255]},
        },
    }
    if task == "classification":
        config["data"]["crop_recipe"] = {"margin": 0.1}
    return Member(name=name, checkpoint=Path(f"/nowhere/{name}.ckpt"), config=config, sha256=name,
                  contract=ModelContract.from_run_config(config))


def test_members_with_other_classes_or_sizes_are_refused():
    assert check_compatible([_member("a"), _member("b")])["image_size"] == [64, 64]
    with pytest.raises(ConfigError) as err:
        check_compatible(
            [_member("a"), _member("b", classes=("background", "canal")), _member("c", size=(128, 128))]
        )
    msg = str(err.value)
    assert "classes" in msg and "'canal'" in msg and "image_size" in msg and "[128, 128]" in msg
    with pytest.raises(ConfigError, match="task"):
        check_compatible([_member("a"), _member("b", task="classification")])


def test_request_has_every_option_and_checks_it_like_the_cli():
    dests = {a.dest for a in build_parser()._actions} - {"help", "wandb_project", "wandb_group"}
    fields = {f.name for f in dataclasses.fields(EnsembleRequest)}
    assert {"sweeps" if d == "sweep" else d for d in dests} == fields
    for bad, msg in [
        ({"rounds": 0}, "--rounds must be >= 1"),
        ({"top_k": 0}, "--top-k must be >= 1"),
        ({"method": "grid"}, "--method must be one of exhaustive, greedy, both"),
        ({"objective": "f2"}, "--objective must be one of"),
        ({"device": "tpu"}, "--device must be one of"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            EnsembleRequest(members=["a"], **bad)
    request = EnsembleRequest(members=["a", "b"], method="greedy")
    assert request.members == ("a", "b") and request.methods == ("greedy",)
    assert EnsembleRequest().methods == ("exhaustive", "greedy")
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.step = 0.5  # type: ignore[misc]


def test_cli_errors_are_one_line(tmp_path, capsys):
    from spinenet.cli import main as spinenet_main

    assert spinenet_main(["ensemble"]) == 2
    assert "no ensemble members" in capsys.readouterr().err
    assert spinenet_main(["ensemble", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "a.ckpt").write_text("not a checkpoint")
    assert spinenet_main(["ensemble", str(tmp_path / "a.ckpt"), "--top-k", "3"]) == 2
    assert "--top-k needs a sweep folder" in capsys.readouterr().err


def _fake_trial(sweep: Path, num: int, status: str, best: float | None, last: float, mode: str) -> None:
    trial = sweep / str(num)
    (trial / ".hydra").mkdir(parents=True)
    (trial / "trial.json").write_text(
        json.dumps({"status": status, "error": "boom" if status == "failed" else ""})
    )
    (trial / ".hydra" / "config.yaml").write_text(f"monitor: val/dice_mean_fg\nmonitor_mode: {mode}\n")
    (trial / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={num}\n")
    if status == "ok":
        (trial / "metrics.json").write_text(
            json.dumps({"monitor": "val/dice_mean_fg", "best_score": best, "val": {"dice_mean_fg": last}})
        )


@pytest.mark.parametrize("mode,order", [("max", ["1", "3", "0"]), ("min", ["0", "3", "1"])])
def test_sweep_ranked_by_score_at_best_checkpoint(tmp_path, mode, order):
    # the last epoch's value disagrees with best_score on purpose: the best checkpoint is what gets used;
    # trial 3 has no best_score and falls back to its monitor column; the failed trial is left out
    for num, status, best, last in (
        (0, "ok", 0.5, 0.95),
        (1, "ok", 0.9, 0.2),
        (2, "failed", None, 0.99),
        (3, "ok", None, 0.7),
    ):
        _fake_trial(tmp_path, num, status, best, last, mode)
    ranked, monitor, got_mode = rank_sweep(tmp_path)
    assert monitor == "val/dice_mean_fg" and got_mode == mode
    assert [Path(f).name for f in ranked["folder"]] == order


def test_validation_too_small_warnings():
    def preds(labels: list[int]) -> SplitPredictions:
        n = len(labels)
        return SplitPredictions(
            "val",
            torch.zeros(1, n, 3),
            torch.tensor(labels),
            [str(i) for i in range(n)],
            [f"P{i // 2}" for i in range(n)],
        )

    classes = ["healthy", "bulge", "central"]
    assert split_size_warnings(preds([0, 1, 2] * 12), classes, "classification") == []
    notes = split_size_warnings(preds([0] * 30 + [1] * 6 + [2] * 3), classes, "classification")
    assert len(notes) == 1 and "central (3)" in notes[0] and "bulge" not in notes[0]
    notes = split_size_warnings(preds([0, 1, 2] * 3), classes, "classification")
    assert f"fewer than {MIN_VAL_IMAGES}" in notes[0] and "9 images from 5 patient(s)" in notes[0]


# --------------------------------------------------------------------------------------------- with trained members
@pytest.fixture(scope="module")
def tiny_sweep(tiny_phantom, tmp_path_factory) -> Path:
    """Two 1-epoch U-Nets on the 64x64 phantom, trained as a real sweep through the CLI."""
    root = tmp_path_factory.mktemp("ens_sweep")
    overrides = [
        *[o for o in tiny_train_overrides(tiny_phantom["sagittal"]) if not o.startswith("logger")],
        "logger=none",
        "trainer.max_epochs=1",
        "test=false",
        "optimizer.lr=0.01,0.001",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "spinenet.cli", "train", "-m", *overrides, f"paths.root_dir={root}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (root / "outputs" / "train" / "multiruns").iterdir()
    return sweep


@pytest.mark.slow
def test_ensemble_cli_report_cache_and_artifact(tiny_sweep, tmp_path, monkeypatch):
    out = tmp_path / "e1"
    assert main(["--sweep", str(tiny_sweep), "--top-k", "2", "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [m["name"].rsplit("/", 1)[-1] for m in report["members"]] in (["0", "1"], ["1", "0"])
    assert all(not c for m in report["members"] for c in m["cached"].values()), "first run predicts"
    kinds = [e["kind"] for e in report["entries"]]
    assert kinds == ["member", "member", "aem", "waem", "waem"]
    for e in report["entries"]:
        assert sum(e["weights"]) == pytest.approx(1.0)
        for split in ("val", "test"):
            assert set(e[split]) == {"dice", "miou", "accuracy"}
            assert all(0.0 <= v <= 1.0 for v in e[split].values())
    waem = {e["method"]: e for e in report["entries"] if e["kind"] == "waem"}
    members = [e for e in report["entries"] if e["kind"] == "member"]
    # the exhaustive grid contains every member alone and the plain average: it is at least as good on validation
    assert waem["exhaustive"]["val"]["dice"] >= max(m["val"]["dice"] for m in members) - 1e-12
    assert waem["exhaustive"]["val"]["dice"] >= report["entries"][2]["val"]["dice"] - 1e-12
    # the phantom's validation split is one patient: the report says it is too small, and what that means
    assert report["splits"]["val"]["images"] == 2 and report["warnings"]
    md = (out / "report.md").read_text()
    assert "too small to trust" in md and f"fewer than {MIN_VAL_IMAGES} images" in md
    assert "val dice (objective)" in md and "test dice" in md and "AEM (plain average)" in md
    artifact = json.loads((out / "ensemble.json").read_text())
    assert artifact["format"] == "spinenet-ensemble" and artifact["method"] == report["chosen"]["method"]
    assert [m["weight"] for m in artifact["members"]] == pytest.approx(waem[artifact["method"]]["weights"])
    assert (out / "ensemble_greedy.json").is_file() and (out / "ensemble_exhaustive.json").is_file()
    # cached probabilities: float16 segmentation maps next to each member's run
    cache = Path(report["members"][0]["cache_files"]["val"])
    assert cache.parent.name == "predictions" and cache.is_file()
    tensors, meta = load_tensors(cache, expected_format="spinenet-member-predictions")
    assert tensors["probs"].dtype == torch.float16 and tuple(tensors["probs"].shape) == (2, 4, 64, 64)
    assert meta["split"] == "val" and meta["checkpoint_sha256"] == report["members"][0]["sha256"]

    # a new search over the same members does no inference at all
    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran although every prediction is cached")

    monkeypatch.setattr(members_mod, "_run_inference", no_inference)
    out2 = tmp_path / "e2"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main([str(tiny_sweep), "--method", "greedy", "--objective", "miou", "--out", str(out2),
                 "--wandb-project", "ens-test"]) == 0
    (run,) = offline_runs(out2)  # --wandb-project: the weights table and the scores in one W&B run
    assert run["job_type"] == "ensemble" and run["exit_code"] == 0 and run["config"]["objective"] == "miou"
    assert "weights" in json.dumps(run["summary"]) and any(k.endswith("/test/miou") for k in run["summary"])
    report2 = json.loads((out2 / "report.json").read_text())
    assert all(all(m["cached"].values()) for m in report2["members"])
    assert [e["kind"] for e in report2["entries"]] == ["member", "member", "aem", "waem"]
    # the library takes a typed request, no argparse: the same search from the same cache gives the same weights
    report_lib = run_ensemble(
        EnsembleRequest(members=[tiny_sweep], method="greedy", objective="miou", out=tmp_path / "e2lib")
    )
    assert [e["weights"] for e in report_lib["entries"]] == [e["weights"] for e in report2["entries"]]
    assert report_lib["chosen"] == report2["chosen"]
    monkeypatch.undo()

    # another split of the data set is another cache entry: it is predicted
    splits = json.loads(Path(report["splits_file"]).read_text())
    s = splits["splits"]
    s["val"], s["test"] = s["test"], s["val"]
    other = tmp_path / "other_splits.json"
    other.write_text(json.dumps(splits))
    calls = []
    real = members_mod._run_inference
    monkeypatch.setattr(members_mod, "_run_inference", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert (
        main([str(tiny_sweep), "--method", "greedy", "--splits", str(other), "--out", str(tmp_path / "e3")])
        == 0
    )
    assert len(calls) == 2, "val and test of the new split are predicted"

    # existing output is never overwritten silently
    with pytest.raises(ConfigError, match="not empty"):
        main([str(tiny_sweep), "--out", str(out)])


@pytest.mark.slow
def test_ensemble_prediction_is_weighted_average_of_members(tiny_sweep, tmp_path):
    members = resolve_members([tiny_sweep / "0", tiny_sweep / "1"])
    path = save_artifact(tmp_path / "ens.json", members, [2.0, 6.0])  # unnormalised: same as 0.25 / 0.75
    module, saved = module_and_config(path)
    assert is_ensemble(module) and isinstance(module.net, EnsembleNet)
    assert type(module).__name__ == "SegmentationModule" and saved.ensemble.weights == [2.0, 6.0]
    m0, _ = module_and_config(members[0].checkpoint)
    m1, _ = module_and_config(members[1].checkpoint)
    dm = build_datamodule(members[0].config, tiny_sweep / "0" / "splits.json")
    x = next(iter(dm.split_dataloader("val")))["image"]
    with torch.no_grad():
        expected = (2.0 * torch.softmax(m0(x), 1) + 6.0 * torch.softmax(m1(x), 1)) / 8.0
        got = module.net.probabilities(x)
        logits = module(x)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    # forward returns log-probabilities: softmax gives the average back, argmax is the ensemble's decision
    assert torch.allclose(torch.softmax(logits, 1), expected, atol=1e-6, rtol=0)
    assert torch.equal(logits.argmax(1), expected.argmax(1))

    # a member file that changed after the weights were chosen is refused
    moved = tmp_path / "m0.ckpt"
    moved.write_bytes(members[0].checkpoint.read_bytes())
    members[0].checkpoint = moved
    changed = save_artifact(tmp_path / "changed.json", members, [1.0, 1.0])
    with moved.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(DataError, match="has changed"):
        module_and_config(changed)


@pytest.mark.slow
def test_eval_loads_the_artifact_like_one_model(tiny_sweep, tiny_phantom, compose_cfg, tmp_path):
    members = resolve_members([tiny_sweep / "0", tiny_sweep / "1"])
    common = [
        f"data.dataset.root={tiny_phantom['sagittal']}",
        "data.synthesize=null",
        "data.image_size=[64,64]",
        f"data.split.file={tiny_sweep / '0' / 'splits.json'}",
        "split=val",
        "trainer.accelerator=cpu",
    ]

    def run(ckpt: Path, name: str) -> dict:
        cfg = compose_cfg([f"ckpt_path={ckpt}", *common], config_name="eval", output_dir=tmp_path / name)
        return evaluate(cfg)

    alone = run(members[0].checkpoint, "member")
    one_hot = run(save_artifact(tmp_path / "one_hot.json", members, [1.0, 0.0]), "one_hot")
    assert one_hot["test"]["dice_mean_fg"] == pytest.approx(alone["test"]["dice_mean_fg"], abs=1e-6)
    assert one_hot["test"]["miou"] == pytest.approx(alone["test"]["miou"], abs=1e-6)
    mixed = run(save_artifact(tmp_path / "mixed.json", members, [0.3, 0.7]), "mixed")
    assert mixed["images"] == 2 and mixed["split"] == "val"
    assert 0.0 <= mixed["test"]["dice_mean_fg"] <= 1.0 and 0.0 <= mixed["test"]["miou"] <= 1.0
    assert 0.0 < mixed["test"]["loss"] < float("inf"), "the loss sees the ensemble's log-probabilities"


@pytest.mark.slow
def test_a_copied_run_given_again_is_counted_once_and_reported(tiny_sweep, tmp_path):
    import shutil

    copy = Path(shutil.copytree(tiny_sweep / "0", tmp_path / "copy_of_0"))
    recorded = json.loads((copy / "metrics.json").read_text())["checkpoint_sha256"]
    out = tmp_path / "dup"
    assert main([str(tiny_sweep / "0"), str(tiny_sweep / "1"), str(copy), "--method", "greedy",
                 "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["members"]) == 2 and report["members"][0]["sha256"] in recorded.values()
    assert report["members"][0]["duplicates"] == [f"copy_of_0 ({copy.resolve()}/checkpoints/"
                                                  f"{Path(report['members'][0]['checkpoint']).name})"]
    md = (out / "report.md").read_text()
    assert "**Counted once:** copy_of_0" in md and "same file (counted once)" in md
    assert len(json.loads((out / "ensemble.json").read_text())["members"]) == 2


# --------------------------------------------------------------------------------------------- classification
def _cls_overrides(axial: Path) -> list[str]:
    """DiscNet on the tiny axial phantom's whole slices, labelled by their axial class (seconds to train)."""
    return [
        "experiment=cls/sustersic2022_axial",
        f"data.dataset.root={axial}",
        "data.synthesize=null",
        "data.dataset.label_col=axial_class",
        "data.batch_size=8",
    ]


@pytest.mark.slow
def test_classification_ensemble_and_eval(tiny_phantom, compose_cfg, tmp_path):
    from spinenet.tasks.train import train

    axial = tiny_phantom["axial"]
    runs = []
    for i, lr in enumerate((0.01, 0.001)):
        cfg = compose_cfg(
            [
                *_cls_overrides(axial),
                "logger=none",
                "trainer.max_epochs=1",
                "trainer.accelerator=cpu",
                "extras.print_config=false",
                "callbacks.progress_bar=null",
                "model.bootstrap=0",
                "model.plots=false",
                "test=false",
                f"optimizer.lr={lr}",
            ],
            output_dir=tmp_path / f"run{i}",
        )
        train(cfg)
        runs.append(tmp_path / f"run{i}")
    # the phantom's validation split is one patient, so one class: AUROC cannot rank anything there
    with pytest.raises(ConfigError, match="auroc is undefined on this validation split"):
        main([str(r) for r in runs] + ["--out", str(tmp_path / "auroc"), "--objective", "auroc"])
    out = tmp_path / "ens"
    assert main([str(r) for r in runs] + ["--out", str(out), "--step", "0.05"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "classification" and report["objective"] == "balanced_accuracy"
    assert all(all(m["cached"].values()) for m in report["members"]), (
        "the failed run's predictions are reused"
    )
    for e in report["entries"]:
        assert set(e["val"]) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
        assert set(e["per_class"]["test"]["recall"]) == {"healthy", "bulge", "central", "left", "right"}
    tensors, _ = load_tensors(report["members"][0]["cache_files"]["val"])
    assert tensors["probs"].dtype == torch.float32 and tensors["probs"].shape[1] == 5
    assert torch.allclose(tensors["probs"].sum(1), torch.ones(tensors["probs"].shape[0]), atol=1e-5)

    members = resolve_members(runs)
    module, _ = module_and_config(save_artifact(tmp_path / "mixed.json", members, [0.25, 0.75]))
    assert type(module).__name__ == "ClassificationModule" and is_ensemble(module)
    m0, m1 = (module_and_config(m.checkpoint)[0] for m in members)
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        expected = 0.25 * torch.softmax(m0(x), 1) + 0.75 * torch.softmax(m1(x), 1)
        assert torch.allclose(torch.softmax(module(x), 1), expected, atol=1e-6, rtol=0)

    common = [
        *_cls_overrides(axial)[1:],
        "task_kind=classification",
        "data=phantom_axial_crops",
        f"data.split.file={runs[0] / 'splits.json'}",
        "split=test",
        "trainer.accelerator=cpu",
    ]

    def run(ckpt: Path, name: str) -> dict:
        return evaluate(
            compose_cfg([f"ckpt_path={ckpt}", *common], config_name="eval", output_dir=tmp_path / name)
        )

    alone = run(members[1].checkpoint, "alone")
    one_hot = run(save_artifact(tmp_path / "one_hot.json", members, [0.0, 1.0]), "one_hot")
    for key in ("accuracy", "balanced_accuracy", "auroc"):
        assert one_hot["test"][key] == pytest.approx(alone["test"][key], abs=1e-6, nan_ok=True), key
    assert one_hot["test"]["loss"] == pytest.approx(alone["test"]["loss"], rel=1e-4)


# --------------------------------------------------------------------------------------------- the DiscNet grid
def test_discnet_grid_composes_with_the_classification_experiment(compose_cfg):
    import hydra

    cfg = compose_cfg(["experiment=cls/sustersic2022_axial", "hparams_search=sustersic2022_discnet"])
    params = cfg.hydra.sweeper.params
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert params["data.batch_size"] == "range(6, 13, 2)"
    lrs = [float(v) for v in params["optimizer.lr"].split(",")]
    assert sorted(round(x, 6) for x in lrs) == sorted(
        round(m * 10.0**-e, 6) for e in (1, 2, 3) for m in range(1, 10)
    )
    assert [float(v) for v in params["model.net.dropout"].split(",")] == [0.1, 0.2, 0.3, 0.4, 0.5]
    # one trial of the grid builds a DiscNet with that dropout
    trial = compose_cfg(
        [
            "experiment=cls/sustersic2022_axial",
            "hparams_search=sustersic2022_discnet",
            "model.net.dropout=0.2",
            "optimizer.lr=0.003",
            "data.batch_size=8",
        ]
    )
    net = hydra.utils.instantiate(trial.model.net)
    assert type(net).__name__ == "DiscNet" and net.head[0].p == 0.2
    assert trial.task_kind == "classification" and trial.data.batch_size == 8


def test_a_run_member_is_the_checkpoint_its_test_used(tmp_path):
    from spinenet.ensemble.members import _run_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("epoch_003.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"x")
    best, last = str(run / "checkpoints" / "epoch_003.ckpt"), str(run / "checkpoints" / "last.ckpt")
    metrics = {"best_checkpoint": best, "last_checkpoint": last}
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert _run_checkpoint(run) == Path(best)  # runs from before test_ckpt: their best
    (run / "metrics.json").write_text(json.dumps({**metrics, "test_ckpt": "last", "tested_checkpoint": last}))
    assert _run_checkpoint(run) == Path(last)
