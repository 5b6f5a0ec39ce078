"""Multi-task disc grading (model.tasks, masked loss, per-task metrics) and the CORN ordinal head."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from spinenet.data.multitask import MultiTaskDataModule, parse_tasks
from spinenet.errors import ConfigError, DataError
from spinenet.lit.classification import ClassificationModule
from spinenet.lit.multitask import MultiTaskModule
from spinenet.ordinal import corn_class_probs, corn_loss

TASKS = [
    {"name": "herniation", "column": "disc_herniation", "kind": "binary", "classes": ["0", "1"]},
    {"name": "pfirrmann", "column": "pfirrmann", "kind": "ordinal", "classes": ["1", "2", "3"]},
    {"name": "modic", "column": "modic", "kind": "binary", "classes": ["0", "1"], "map": {"2": "1"},
     "loss_weight": 0.5},
]


class _Flat(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.fc = nn.Linear(16, k)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _multitask(**kw) -> MultiTaskModule:
    return MultiTaskModule(net=_Flat(2 + 2 + 2), tasks=TASKS,
                           optimizer=lambda params: torch.optim.SGD(params, lr=0.1), **kw)


# -- CORN ------------------------------------------------------------------------------------------------
def test_corn_probabilities_are_rank_consistent_and_sum_to_one():
    logits = torch.randn(50, 4) * 3
    probs = corn_class_probs(logits)
    assert probs.shape == (50, 5) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(50))
    # P(y > k) = sum of the classes above k falls with k for any logits
    above = 1 - probs.cumsum(1)[:, :-1]
    assert (above[:, 1:] <= above[:, :-1] + 1e-6).all()


def test_corn_loss_trains_each_threshold_on_the_samples_that_reach_it():
    logits = torch.zeros(3, 2, requires_grad=True)
    target = torch.tensor([0, 1, 2])
    corn_loss(logits, target).backward()
    # task 1 ("above 1 given above 0") sees only the samples of class >= 1
    assert logits.grad[0, 1] == 0 and logits.grad[1, 1] != 0 and logits.grad[2, 1] != 0
    # 5 terms of log 2 each: task 0 on all three, task 1 on two
    assert corn_loss(torch.zeros(3, 2), target).item() == pytest.approx(np.log(2))


def test_single_task_ordinal_head_returns_class_log_probabilities():
    module = ClassificationModule(net=_Flat(2), loss=nn.CrossEntropyLoss(), label_names=["1", "2", "3"],
                                  optimizer=lambda params: torch.optim.SGD(params, lr=0.1), head="ordinal")
    x = torch.randn(4, 1, 4, 4)
    torch.testing.assert_close(module(x).exp(), corn_class_probs(module.net(x)))
    loss = module._step({"image": x, "label": torch.tensor([0, 1, 2, 2])}, "train")
    assert torch.isfinite(loss)
    wrong = ClassificationModule(net=_Flat(3), loss=nn.CrossEntropyLoss(), label_names=["1", "2", "3"],
                                 optimizer=lambda params: torch.optim.SGD(params, lr=0.1), head="ordinal")
    with pytest.raises(ConfigError, match="number of labels minus 1"):
        wrong._step({"image": x, "label": torch.tensor([0, 1, 2, 2])}, "train")


# -- multi-task module -----------------------------------------------------------------------------------
def test_masked_labels_do_not_contribute_to_the_loss():
    module = _multitask()
    raw = torch.randn(4, 6, requires_grad=True)
    labels = torch.tensor([[0, 2, 1], [1, -1, 0], [-1, 0, -1], [0, 1, 1]])
    loss = module.combined_loss(raw, labels)
    loss.backward()
    # a missing label: no gradient reaches that image's head of that task
    assert torch.count_nonzero(raw.grad[1, 2:4]) == 0 and torch.count_nonzero(raw.grad[2, 0:2]) == 0
    assert torch.count_nonzero(raw.grad[2, 4:6]) == 0 and torch.count_nonzero(raw.grad[2, 2:4]) > 0
    # changing the outputs of masked heads leaves the loss as it was
    changed = raw.detach().clone()
    changed[1, 2:4] += 5.0
    changed[2, [0, 1, 4, 5]] -= 7.0
    assert module.combined_loss(changed, labels).item() == pytest.approx(loss.item())
    # the total is the weighted sum of the tasks' losses over the labelled images only
    parts = module.task_losses(raw.detach(), labels)
    assert loss.item() == pytest.approx(parts["herniation"] + parts["pfirrmann"] + 0.5 * parts["modic"])
    only = torch.tensor([[-1, -1, -1]] * 4)
    assert module.combined_loss(raw.detach(), only).item() == 0.0


def test_forward_layout_is_one_softmax_block_per_task():
    module = _multitask()
    x = torch.randn(3, 1, 4, 4)
    out = module(x)
    assert out.shape == (3, 2 + 3 + 2)  # class logits: the ordinal task's 2 CORN outputs become 3 classes
    assert [(s.start, s.stop) for s in module.task_slices()] == [(0, 2), (2, 5), (5, 7)]
    per_task = module.forward_tasks(x)
    torch.testing.assert_close(per_task["pfirrmann"].softmax(1), corn_class_probs(module.net(x)[:, 2:4]))
    assert [t["name"] for t in module.task_list()] == ["herniation", "pfirrmann", "modic"]


def test_bad_task_lists_are_named():
    with pytest.raises(ConfigError, match=r"tasks\[0\].*kind"):
        parse_tasks([{"name": "a", "column": "c", "kind": "ranked", "classes": ["0", "1"]}])
    with pytest.raises(ConfigError, match="distinct"):
        parse_tasks([TASKS[0], TASKS[0]])
    with pytest.raises(ConfigError, match="missing"):
        parse_tasks([{"name": "a", "kind": "binary", "classes": ["0", "1"]}])


# -- a tiny graded crop set, end to end --------------------------------------------------------------------
def _graded_set(root: Path) -> Path:
    """8 patients x 3 discs of 16x32 crops; gradings in a separate SPIDER-style table, some missing."""
    crops = root / "disc_crops"
    crops.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, grades = [], []
    for p in range(1, 9):
        for disc in (1, 2, 3):
            hern, pf, modic = int((p + disc) % 3 == 0), 1 + (p + disc) % 3, (p * disc) % 3
            name = f"{p}_t2_disc_{disc}.png"
            img = np.clip(rng.normal(60 + 60 * hern + 20 * pf, 10, (16, 32)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(crops / name), img)
            level = {1: "L5-S1", 2: "L4-L5", 3: "L3-L4"}[disc]
            # an empty Pfirrmann grade in the manifest: that crop trains herniation and Modic only
            rows.append({"patient_id": p, "series": "t2", "image": name, "ivd_label": disc, "level": level,
                         "disc_herniation": hern, "disc_bulging": 0, "pfirrmann": "" if p == 2 else pf})
            if (p, disc) != (3, 2):  # a disc without a row in the gradings: its Modic grade is missing
                grades.append({"Patient": p, "IVD label": disc, "Modic": modic, "Disc herniation": hern})
    pd.DataFrame(rows).to_csv(crops / "manifest.csv", index=False)
    pd.DataFrame(grades).to_csv(root / "radiological_gradings.csv", index=False)
    return root


def test_datamodule_joins_gradings_and_marks_missing_grades(tmp_path):
    root = _graded_set(tmp_path)
    dataset = {"root": str(root / "disc_crops"), "patient_col": "patient_id", "label_col": "disc_herniation",
               "label_names": ["0", "1"], "mask_col": None, "level_col": "level", "image_col": "image"}
    dm = MultiTaskDataModule(dataset, tasks=TASKS, gradings=str(root / "radiological_gradings.csv"),
                             image_size=[16, 32], batch_size=2, split={"ratios": [0.5, 0.25, 0.25], "seed": 0})
    frame = dm.load_frame()
    by_disc = frame.set_index(["patient_id", "ivd_label"])
    assert by_disc.loc[("3", 2), "_task_modic"] == -1 and by_disc.loc[("1", 2), "_task_modic"] == 1  # 2 -> "1"
    assert (frame[frame.patient_id == "2"]["_task_pfirrmann"] == -1).all()
    dm.setup()
    sample = dm.datasets["train"][0]
    assert sample["labels"].shape == (3,) and sample["labels"].dtype == torch.long
    bad = [{**TASKS[1], "classes": ["1", "2"]}]
    dm_bad = MultiTaskDataModule(dataset, tasks=bad, image_size=[16, 32])
    with pytest.raises(DataError, match=r"pfirrmann='3' is not a class"):
        dm_bad.load_frame()


def test_grading_experiment_trains_and_reports_every_task(tmp_path, compose_cfg):
    from spinenet.tasks.train import train

    root = _graded_set(tmp_path / "spider")
    tasks = ("[{name: herniation, column: disc_herniation, kind: binary, classes: ['0','1']},"
             "{name: pfirrmann, column: pfirrmann, kind: ordinal, classes: ['1','2','3']},"
             "{name: modic, column: modic, kind: binary, classes: ['0','1'], map: {2: '1'}}]")
    cfg = compose_cfg([
        "experiment=cls/spider_grading", f"paths.spider_dir={root}", f"model.tasks={tasks}",
        "data.image_size=[16,32]", "data.batch_size=4", "data.split.ratios=[0.5,0.25,0.25]",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "model.bootstrap=20", "logger=csv",
        "callbacks.progress_bar=null", "extras.print_config=false",
    ])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    for task in ("herniation", "pfirrmann", "modic"):
        assert {f"{task}/auroc", f"{task}/balanced_accuracy"} <= set(metrics["test"])
        report = metrics["per_class"]["tasks"][task]
        assert report["labelled"] > 0 and report["bootstrap"]["auroc"]["level"] == "group"
        assert (run / "plots" / f"test_{task}_roc.png").is_file()
    assert {"herniation/sensitivity", "herniation/specificity", "pfirrmann/qwk", "pfirrmann/mae",
            "pfirrmann/within1_accuracy"} <= set(metrics["test"])
    predictions = pd.read_csv(run / "predictions.csv")
    assert {"pfirrmann_prob_1", "pfirrmann_prob_3", "modic_pred", "patient_id"} <= set(predictions.columns)
    ckpt = torch.load(next((run / "checkpoints").glob("last*.ckpt")), map_location="cpu", weights_only=False)
    saved = ckpt["spinenet"]["model"]["tasks"]
    assert [(t["name"], t["column"], t["kind"], t["classes"]) for t in saved] == [
        ("herniation", "disc_herniation", "binary", ["0", "1"]),
        ("pfirrmann", "pfirrmann", "ordinal", ["1", "2", "3"]),
        ("modic", "modic", "binary", ["0", "1"]),
    ]
    # the model contract: one head per task, in the output's column order, each calibrated on validation
    from spinenet.loading import load_model

    _, contract = load_model(run / "checkpoints" / "last.ckpt")
    assert [(h.name, h.kind, len(h.classes)) for h, _ in contract.head_slices()] == [
        ("herniation", "binary", 2), ("pfirrmann", "ordinal", 3), ("modic", "binary", 2)]
    assert [cols for _, cols in contract.head_slices()] == [slice(0, 2), slice(2, 5), slice(5, 7)]
    probs = contract.probabilities(torch.randn(4, 7))
    torch.testing.assert_close(probs[:, 2:5].sum(1), torch.ones(4))  # a softmax per head, not over all 7
    assert set(metrics["calibration"]["last.ckpt"]["heads"]) <= {"herniation", "pfirrmann", "modic"}
    # an ensemble of multi-task members averages each task's probabilities (a softmax per block, not over all)
    from spinenet.ensemble.artifact import EnsembleNet

    model, _ = load_model(run / "checkpoints" / "last.ckpt")
    x, levels = torch.rand(3, 1, 16, 32), ["L4-L5", "L5-S1", ""]
    avg = EnsembleNet([model.module, model.module], [0.5, 0.5]).probabilities(x, levels)
    torch.testing.assert_close(avg[:, 2:5].sum(1), torch.ones(3))
    # its level prior acts before the CORN probabilities: exporting it alone would drop it, so it is refused
    from spinenet.errors import ConfigError
    from spinenet.pipeline.export import export_model

    with pytest.raises(ConfigError, match="level prior on ordinal or multi-task heads"):
        export_model(run / "checkpoints" / "last.ckpt", tmp_path / "export")


def test_diagnose_reports_every_finding_of_a_multi_task_classifier():
    """Per disc, each head's call (its own threshold) and probabilities; herniation makes the level's call."""
    import numpy as np

    from spinenet.contract import CropRecipe, Head, InputSpec, ModelContract
    from spinenet.pipeline.diagnose import _findings_column, _head_findings, _main_head

    heads = (Head("bulging", "binary", ("0", "1")), Head("herniation", "binary", ("0", "1"), threshold=0.2),
             Head("pfirrmann", "ordinal", ("1", "2", "3")))
    contract = ModelContract("classification", tuple(f"{h.name}:{c}" for h in heads for c in h.classes),
                             InputSpec((32, 32)), crop=CropRecipe(size=(32, 32)), heads=heads)
    p = np.array([0.3, 0.7, 0.75, 0.25, 0.1, 0.6, 0.3])
    assert _main_head(contract) == 1 and contract.decide(p, 1) == 1  # 0.25 >= its threshold 0.2
    found = _head_findings(contract, p)
    assert found["bulging"] == {"class": "1", "probability": 0.7, "probabilities": {"0": 0.3, "1": 0.7},
                                "kind": "binary", "column": None}
    assert found["herniation"]["class"] == "1" and found["pfirrmann"]["class"] == "2"
    assert _findings_column({"findings": found})["findings"].startswith("bulging=1 (0.70); herniation=1 (0.25)")
