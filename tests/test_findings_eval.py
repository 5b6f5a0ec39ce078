"""`spinenet findings-eval`: diagnose findings scored against per-level gradings.

Hand-built findings with known TP/FN/TN/FP give hand-computed sensitivity, specificity, AUROC and 4-way
agreement; patients in the train/val split of a splits.json are left out; a bad truth manifest or an
unmatched study gives an error naming the file and column; and the sagittal phantom goes through
``diagnose`` (ground-truth-mask segmenter, oracle 0/1 classifier) and ``findings-eval`` end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spinenet.cli import main as cli_main
from spinenet.data.splits import save_splits
from spinenet.errors import ConfigError, DataError
from spinenet.pipeline.combine import herniation_probability, is_herniated
from spinenet.pipeline.findings_eval import auroc, evaluate_findings, wilson

LEVELS = ("L4-L5", "L5-S1")
HEADER = "patient_id,image,herniation_L5S1,herniation_L4L5,sagittal_class\n"


def _entry(level: str, p: float) -> dict:
    """A sagittal finding of a 0/1 classifier, with the p_herniation/herniated an older diagnose wrote for
    0/1 labels (always 1.0/True): findings-eval must recompute them from the probabilities and class."""
    return {"level": level, "class": "1" if p > 0.5 else "0", "probability": round(max(p, 1 - p), 4),
            "p_herniation": 1.0, "herniated": True, "probabilities": {"0": round(1 - p, 4), "1": p}}


def _write_findings(folder: Path, calls: dict[str, dict[str, float]]) -> None:
    for study, levels in calls.items():
        sag = [_entry(lv, p) for lv, p in levels.items()]
        doc = {"format": "spinenet-findings", "version": 1, "study": study,
               "models": {"segmenter": "sagittal=s.ckpt", "classifier": "sagittal=c.ckpt"},
               "images": [], "findings": {"sagittal": sag} if sag else {}}
        (folder / study).mkdir(parents=True)
        (folder / study / "findings.json").write_text(json.dumps(doc))


def _write_truth(path: Path, truth: dict[str, tuple[int, int]]) -> Path:
    names = {(0, 0): "healthy", (1, 0): "L4-L5", (0, 1): "L5-S1", (1, 1): "both"}
    rows = [f"{p},{p}_t2.png,{l5},{l4},{names[(l4, l5)]}\n" for p, (l4, l5) in truth.items()]
    path.write_text(HEADER + "".join(rows))
    return path


# truth (L4-L5, L5-S1) and the pipeline's herniation probability per found level (absent: not found)
TRUTH = {"1": (1, 0), "2": (1, 0), "3": (0, 1), "4": (0, 1), "5": (0, 0), "6": (0, 0), "7": (1, 1),
         "8": (0, 0), "9": (0, 0), "10": (1, 0), "11": (0, 0)}
CALLS = {
    "1": {"L4-L5": 0.9, "L5-S1": 0.1},    # L4 TP, L5 TN
    "2": {"L4-L5": 0.4, "L5-S1": 0.2},    # L4 FN, L5 TN
    "3": {"L4-L5": 0.1, "L5-S1": 0.95},   # L4 TN, L5 TP
    "4": {"L4-L5": 0.2},                  # L4 TN, L5 not found: FN
    "5": {"L4-L5": 0.7, "L5-S1": 0.3},    # L4 FP, L5 TN
    "6": {"L4-L5": 0.3, "L5-S1": 0.55},   # L4 TN, L5 FP
    "7": {"L4-L5": 0.8, "L5-S1": 0.6},    # TP, TP
    "8": {},                              # no disc found: TN, TN
    "9": {"L4-L5": 0.9, "L5-S1": 0.9},    # in a train split: excluded (would be FP, FP)
    "10": {"L4-L5": 0.1, "L5-S1": 0.9},   # in a val split: excluded (would be FN, FP)
    "11": {"L4-L5": 0.05, "L5-S1": 0.7},  # in a test split: kept; L4 TN, L5 FP
}


@pytest.fixture
def hand_built(tmp_path):
    _write_findings(tmp_path / "findings", CALLS)
    truth = _write_truth(tmp_path / "truth.csv", TRUTH)
    seg = save_splits({"train": ["9", "99"], "val": ["98"], "test": ["11"]}, tmp_path / "seg_run" / "splits.json")
    cls = save_splits({"train": ["97"], "val": ["10"], "test": ["96"]}, tmp_path / "cls_run" / "splits.json")
    return tmp_path / "findings", truth, seg, cls


def test_binary_classifier_labels_are_understood():
    # a 0/1 classifier (SPIDER disc_herniation): "0" is the negative class, as "healthy" is
    assert herniation_probability("sagittal", {"0": 0.8, "1": 0.2}) == pytest.approx(0.2)
    assert herniation_probability("sagittal", {"healthy": 0.3, "L4-L5": 0.7}) == pytest.approx(0.7)
    assert not is_herniated("sagittal", "0") and is_herniated("sagittal", "1")
    assert not is_herniated("sagittal", "healthy") and is_herniated("sagittal", "L5-S1")


def test_hand_built_findings_give_hand_computed_metrics(hand_built):
    findings, truth, seg, cls = hand_built
    r = evaluate_findings(findings, truth, [seg, cls], bootstrap=200)
    assert r["patients"] == {**r["patients"], "truth": 11, "diagnosed": 11, "excluded": 2, "evaluated": 9,
                             "excluded_patients": ["10", "9"], "not_diagnosed": 0}
    assert r["patients"]["excluded_by_file"] == {str(seg): 1, str(cls): 1}

    l4, l5, pooled = r["per_level"]["L4-L5"], r["per_level"]["L5-S1"], r["pooled"]
    assert (l4["tp"], l4["fn"], l4["tn"], l4["fp"]) == (2, 1, 5, 1)
    assert (l5["tp"], l5["fn"], l5["tn"], l5["fp"]) == (2, 1, 4, 2)
    assert (pooled["tp"], pooled["fn"], pooled["tn"], pooled["fp"]) == (4, 2, 9, 3)
    assert l4["sensitivity"] == pytest.approx(2 / 3, abs=1e-4) and l4["specificity"] == pytest.approx(5 / 6, abs=1e-4)
    assert l5["specificity"] == pytest.approx(4 / 6, abs=1e-4)
    assert pooled["sensitivity"] == pytest.approx(4 / 6, abs=1e-4)
    assert pooled["specificity"] == pytest.approx(9 / 12, abs=1e-4)
    # Wilson 95%: 2/3 -> (0.208, 0.939), 5/6 -> (0.436, 0.970)
    assert l4["sensitivity_ci95"] == pytest.approx([0.2077, 0.9385], abs=1e-3)
    assert l4["specificity_ci95"] == pytest.approx([0.4365, 0.9699], abs=1e-3)
    # AUROC by counting pairs: L4-L5 17 of 18 pairs ordered; L5-S1 11.5 of 18 (the not-found positive
    # scores 0 and ties the not-found negative)
    assert l4["auroc"] == pytest.approx(17 / 18, abs=1e-4)
    assert l5["auroc"] == pytest.approx(11.5 / 18, abs=1e-4)
    lo, hi = l4["auroc_ci95"]
    assert 0 <= lo <= l4["auroc"] <= hi <= 1
    from sklearn.metrics import roc_auc_score

    y = [TRUTH[x["patient"]][j] for x in r["per_patient"] for j in range(2)]
    s = [(x["p_herniation"][lv] or 0.0) for x in r["per_patient"] for lv in LEVELS]
    assert pooled["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-4)

    # not found: L5-S1 of patient 4 (positive) and both levels of patient 8 (negative)
    assert l5["not_found"] == {"total": 2, "positive": 1, "negative": 1}
    assert l4["not_found"] == {"total": 1, "positive": 0, "negative": 1}
    assert (l5["found_only"]["tp"], l5["found_only"]["fn"], l5["found_only"]["tn"], l5["found_only"]["fp"]) == (
        2, 0, 3, 2)
    assert "treated as negative" in r["not_found_policy"]

    fw = r["four_way"]
    assert fw["classes"] == ["healthy", "L4-L5", "L5-S1", "both"]
    assert fw["confusion"] == [[1, 1, 2, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    assert (fw["correct"], fw["n"]) == (4, 9) and fw["agreement"] == pytest.approx(4 / 9, abs=1e-4)
    assert fw["agreement_ci95"] == pytest.approx([0.1888, 0.7333], abs=1e-3)

    # the statistics on their own
    assert wilson(0, 0) is None and wilson(5, 5)[1] == 1.0
    assert auroc([1, 1], [0.2, 0.9]) is None  # one class only


def test_cli_writes_json_and_prints_table(hand_built, tmp_path, capsys):
    findings, truth, seg, cls = hand_built
    rc = cli_main(["findings-eval", "--findings", str(findings), "--truth", str(truth), "--exclude-splits",
                   str(seg), str(cls.parent), "--bootstrap", "100"])  # a run folder stands for its splits.json
    assert rc == 0
    doc = json.loads((findings / "eval.json").read_text())
    assert doc["format"] == "spinenet-findings-eval" and doc["patients"]["evaluated"] == 9
    printed = capsys.readouterr().out
    assert "9 patients evaluated; 2 excluded" in printed
    assert "pooled" in printed and "4-way agreement: 0.444 (0.189-0.733), 4/9" in printed
    assert "Levels not found count as negative" in printed


def test_cli_logs_to_wandb_when_a_project_is_given(hand_built, monkeypatch):
    from tests.wandb_offline import offline_runs

    findings, truth, seg, cls = hand_built
    monkeypatch.setenv("WANDB_MODE", "offline")
    rc = cli_main(["findings-eval", "--findings", str(findings), "--truth", str(truth), "--bootstrap", "0",
                   "--wandb-project", "eval-test", "--out", str(findings / "eval_wandb.json")])
    assert rc == 0
    (run,) = [r for r in offline_runs(findings) if r["job_type"] == "findings-eval"]
    doc = json.loads((findings / "eval_wandb.json").read_text())
    assert run["summary"]["pooled/sensitivity"] == doc["pooled"]["sensitivity"]
    assert "levels" in json.dumps(run["summary"]) and run["exit_code"] == 0
    assert not any("excluded_patients" in k or "per_patient" in k for k in run["summary"]), "no patient ids"


def test_exclusion_by_splits(hand_built, tmp_path):
    findings, truth, seg, cls = hand_built
    assert evaluate_findings(findings, truth, bootstrap=0)["patients"]["evaluated"] == 11  # nothing excluded
    r = evaluate_findings(findings, truth, [seg], bootstrap=0)
    assert r["patients"]["excluded_patients"] == ["9"] and r["patients"]["evaluated"] == 10
    assert "11" in [x["patient"] for x in r["per_patient"]]  # the test split stays
    everyone = save_splits({"train": list(TRUTH)[:6], "val": list(TRUTH)[6:], "test": []},
                           tmp_path / "all" / "splits.json")
    with pytest.raises(DataError, match="no patient left to evaluate"):
        evaluate_findings(findings, truth, [everyone], bootstrap=0)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="bad.json"):
        evaluate_findings(findings, truth, [tmp_path / "bad.json"], bootstrap=0)
    with pytest.raises(DataError, match="no splits file .*nowhere"):
        evaluate_findings(findings, truth, [tmp_path / "nowhere" / "splits.json"], bootstrap=0)


def test_bad_truth_manifest_and_unmatched_study(hand_built, tmp_path, capsys):
    findings, truth, *_ = hand_built
    bad = tmp_path / "no_l4.csv"
    bad.write_text("patient_id,image,herniation_L5S1\n1,1_t2.png,0\n")
    with pytest.raises(DataError, match=r"no_l4.csv: missing column\(s\) 'herniation_L4L5'"):
        evaluate_findings(findings, bad)
    rc = cli_main(["findings-eval", "--findings", str(findings), "--truth", str(bad)])
    assert rc == 2 and "herniation_L4L5" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"missing column\(s\) 'grade'"):
        evaluate_findings(findings, truth, class_col="grade")

    wrong = tmp_path / "wrong.csv"
    wrong.write_text(HEADER + "1,1_t2.png,0,2,L4-L5\n2,2_t2.png,1,0,healthy\n")
    with pytest.raises(DataError, match=r"line 2: herniation_L4L5 = '2' \(expected 0 or 1\)") as e:
        evaluate_findings(findings, wrong)
    assert "line 3: sagittal_class = 'healthy'" in str(e.value)

    # studies named after the image (diagnose run without --study-col) match no patient
    renamed = tmp_path / "by_image"
    _write_findings(renamed, {"1_t2": {"L4-L5": 0.9}})
    with pytest.raises(DataError, match=r"match no 'patient_id' of truth manifest .*'1_t2'.*--study-col"):
        evaluate_findings(renamed, truth)


# ---------------------------------------------------------------------------------------------------------
# end to end on the sagittal phantom
# ---------------------------------------------------------------------------------------------------------
def _key(x: torch.Tensor) -> bytes:
    return np.round(x.numpy().astype(np.float32), 5).tobytes()


def test_phantom_diagnose_then_findings_eval(tmp_path, capsys):
    from spinenet.contract import CropRecipe, InputSpec, ModelContract
    from spinenet.data.io import read_image, read_mask
    from spinenet.data.phantom import generate_phantom
    from spinenet.loading import Predictor
    from spinenet.pipeline.diagnose import manifest_items, run
    from spinenet.roi import assign_levels, crop_roi, disc_boxes, enlarge_box

    manifest = generate_phantom(tmp_path / "ph", view="sagittal", patients=6, seed=3, size=128,
                                slices_per_patient=1)
    import pandas as pd

    rows = pd.read_csv(manifest, dtype=str).to_dict("records")
    crop = CropRecipe(size=[64, 64], margin=0.1, clahe={"clip": 2.0, "tiles": [4, 4]}, levels=list(LEVELS))
    masks, answers = {}, {}
    flipped = rows[1]["patient_id"]  # its herniated level is answered "0": one false negative
    blank = rows[5]["patient_id"]    # the segmenter finds no disc: both levels not found
    for row in rows:
        image = read_image(manifest.parent / row["image"])
        mask = read_mask(manifest.parent / row["mask"], [0, 85, 170, 255])
        if row["patient_id"] == blank:
            mask = np.zeros_like(mask)
        masks[_key(torch.from_numpy(image)[None])] = mask
        boxes = disc_boxes(mask)
        for box, level in zip(boxes, assign_levels(boxes), strict=True):
            if level in LEVELS:
                positive = row["sagittal_class"] == level and row["patient_id"] != flipped
                roi = enlarge_box(box, crop.margin, image.shape)
                x = torch.from_numpy(crop_roi(image, roi, crop.size, crop.clahe).astype(np.float32) / 255.0)
                answers[_key(x[None])] = "1" if positive else "0"

    def seg_net(x):
        m = torch.stack([torch.from_numpy(masks[_key(xi)]).long() for xi in x])
        return torch.nn.functional.one_hot(m, 4).permute(0, 3, 1, 2).float() * 10

    def cls_net(x):
        out = torch.full((len(x), 2), -5.0)
        for i, xi in enumerate(x):
            out[i, int(answers[_key(xi)])] = 5.0
        return out

    seg = Predictor(seg_net, ModelContract("segmentation", ["background", "disc", "vertebra", "canal"],
                                           InputSpec((128, 128))), Path("seg"))
    cls = Predictor(cls_net, ModelContract("classification", ["0", "1"], InputSpec((64, 64)), crop=crop), Path("cls"))
    out = tmp_path / "findings"
    run(manifest_items(manifest, study_col="patient_id"), {"sagittal": seg}, {"sagittal": cls}, out, batch_size=4, progress=False)

    excluded = rows[0]["patient_id"]
    splits = save_splits({"train": [excluded], "val": [], "test": []}, tmp_path / "run" / "splits.json")
    rc = cli_main(["findings-eval", "--findings", str(out), "--truth", str(manifest), "--exclude-splits",
                   str(splits), "--out", str(tmp_path / "eval.json"), "--bootstrap", "100"])
    assert rc == 0
    r = json.loads((tmp_path / "eval.json").read_text())
    assert r["patients"]["excluded"] == 1 and r["patients"]["evaluated"] == 5
    truth = {row["patient_id"]: row["sagittal_class"] for row in rows[1:]}
    positives = sum(c != "healthy" for c in truth.values())
    pooled = r["pooled"]
    blank_positive = int(truth[blank] != "healthy")
    flipped_positive = int(truth[flipped] != "healthy")
    # every level right except the flipped patient's herniation and the blank patient's levels (not found)
    assert pooled["n"] == 10 and pooled["fp"] == 0
    assert pooled["fn"] == flipped_positive + blank_positive
    assert pooled["tp"] == positives - pooled["fn"]
    assert pooled["not_found"]["total"] == 2
    by_patient = {x["patient"]: x for x in r["per_patient"]}
    assert by_patient[blank]["call"] == {"L4-L5": None, "L5-S1": None}
    ok = [p for p in truth if p not in (flipped, blank)]
    assert all(by_patient[p]["call"] == by_patient[p]["truth"] for p in ok)
    assert r["four_way"]["correct"] == len(ok) + int(truth[flipped] == "healthy") + int(truth[blank] == "healthy")
    assert "evaluation written" in capsys.readouterr().out


def test_unreadable_findings_are_listed_and_the_rest_scored(hand_built, tmp_path, capsys):
    findings, truth, *_ = hand_built
    (findings / "broken").mkdir()
    (findings / "broken" / "findings.json").write_text('{"format": "spinenet-find')  # cut short
    (findings / "empty").mkdir()
    (findings / "empty" / "findings.json").write_text("")
    # a study whose only image the segmentation check refused: no finding, listed as such
    doc = json.loads((findings / "8" / "findings.json").read_text())
    doc["images"] = [{"image": "8_t2.png", "status": "implausible for sagittal", "reason": "12 disc regions"}]
    (findings / "8" / "findings.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="broken"):
        from spinenet.pipeline.findings_eval import load_findings

        load_findings(findings)
    rc = cli_main(["findings-eval", "--findings", str(findings), "--truth", str(truth), "--bootstrap", "0",
                   "--out", str(tmp_path / "eval.json")])
    assert rc == 3
    r = json.loads((tmp_path / "eval.json").read_text())
    assert r["patients"]["evaluated"] == 11  # every readable study scored
    assert sorted(Path(u["file"]).parent.name for u in r["unreadable_findings"]) == ["broken", "empty"]
    assert {Path(u["file"]).parent.name: u["reason"] for u in r["unreadable_findings"]}["empty"] == \
        "empty file (0 bytes)"
    assert r["unassessed_studies"] == [{"patient": "8", "study": "8", "images": [
        {"image": "8_t2.png", "status": "implausible for sagittal", "reason": "12 disc regions"}]}]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("findings-eval: 13 findings files, 11 read, 2 unreadable, 1 evaluated studies")


def test_a_multi_task_classifiers_heads_are_scored_against_the_gradings():
    """Each binary head's probability per level is a predictor of the graded finding it learnt."""
    from spinenet.pipeline.findings_eval import (
        MEASUREMENT_PREDICTORS,
        head_columns,
        measurement_rows,
        score_measurements,
    )

    def disc(level: str, p_bulging: float) -> dict:
        return {"level": level, "findings": {
            "bulging": {"kind": "binary", "column": "disc_bulging", "probabilities": {"0": 1 - p_bulging, "1": p_bulging}},
            "pfirrmann": {"kind": "ordinal", "column": "pfirrmann", "probabilities": {"1": 0.5, "2": 0.5}}}}

    docs = {str(p): {"images": [{"view": "sagittal", "discs": [disc("L4-L5", 0.9 if p % 2 else 0.2)]}]}
            for p in range(6)}
    assert head_columns(docs) == {"bulging": "disc_bulging"}  # ordinal heads are not binary findings
    rows = measurement_rows(docs, ["L4-L5"], {p: {"L4-L5": 0} for p in docs})
    for r in rows:
        r["disc_bulging"] = int(r["patient"]) % 2  # graded bulging where the head said so
    scores = score_measurements(rows, ["L4-L5"], [*MEASUREMENT_PREDICTORS, ("p_bulging", "disc_bulging", 1)], 0)
    assert scores["p_bulging->disc_bulging"]["L4-L5"]["auroc"] == 1.0


def test_cross_validated_folders_are_pooled_one_fold_each(tmp_path, capsys):
    """With --folds, findings folder k is scored on fold k's patients only, so each patient counts once,
    scored by the models of its own fold; the same patients diagnosed by another fold's models are ignored."""
    from spinenet.data.splits import save_folds

    truth = _write_truth(tmp_path / "truth.csv", TRUTH)
    fold_of = {p: int(p) % 2 for p in TRUTH}
    folds = save_folds(fold_of, tmp_path / "folds.csv")
    # every folder diagnoses every patient; fold 0's folder has the hand-built calls, fold 1's the opposite
    opposite = {p: {lv: round(1 - q, 2) for lv, q in c.items()} for p, c in CALLS.items()}
    _write_findings(tmp_path / "f0", CALLS)
    _write_findings(tmp_path / "f1", opposite)
    r = evaluate_findings([tmp_path / "f0", tmp_path / "f1"], truth, bootstrap=0, folds_file=folds)
    assert r["patients"]["evaluated"] == 11 and r["folds"] == str(folds)
    got = {x["patient"]: x["p_herniation"]["L4-L5"] for x in r["per_patient"]}
    for p in TRUTH:
        want = (CALLS if fold_of[p] == 0 else opposite)[p].get("L4-L5")
        assert got[p] == want, p

    with pytest.raises(ConfigError, match="--folds has 2 folds but 1 --findings folder"):
        evaluate_findings([tmp_path / "f0"], truth, bootstrap=0, folds_file=folds)
    # pooled without --folds: a patient diagnosed in two folders is refused, naming both
    with pytest.raises(DataError, match="patient '1' is diagnosed in both .*f0 and .*f1"):
        evaluate_findings([tmp_path / "f0", tmp_path / "f1"], truth, bootstrap=0)

    rc = cli_main(["findings-eval", "--findings", str(tmp_path / "f0"), str(tmp_path / "f1"), "--folds",
                   str(folds), "--truth", str(truth), "--bootstrap", "0", "--out", str(tmp_path / "cv.json")])
    assert rc == 0 and json.loads((tmp_path / "cv.json").read_text())["patients"]["evaluated"] == 11
    capsys.readouterr()
    rc = cli_main(["findings-eval", "--findings", str(tmp_path / "f0"), str(tmp_path / "f1"), "--folds",
                   str(folds), "--truth", str(truth)])
    assert rc == 2 and "name the JSON file to write" in capsys.readouterr().err
