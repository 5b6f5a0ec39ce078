"""Patient-level splits: no patient crosses splits, deterministic, stratified, k-fold, saved and reloaded."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import pytest

from spinenet.data.splits import (
    StratificationWarning,
    check_splits,
    load_splits,
    patient_labels,
    save_splits,
    split_patients,
)
from spinenet.errors import ConfigError, DataError

PATIENTS = [f"{i:03d}" for i in range(30)]
LABELS = ["healthy"] * 18 + ["L4-L5"] * 6 + ["L5-S1"] * 6  # 30 patients, three classes
LABEL_OF = dict(zip(PATIENTS, LABELS, strict=True))


def assert_partition(splits: dict[str, list[str]], patients: list[str]) -> None:
    assert set(splits) == {"train", "val", "test"}
    check_splits(splits, patients)  # no patient in two splits, none missing
    assert sorted(p for s in splits.values() for p in s) == sorted(patients)


@pytest.mark.parametrize(
    ("ratios", "sizes"),
    [((0.8, 0.1, 0.1), (24, 3, 3)), ((0.75, 0.15, 0.10), (22, 5, 3))],  # Šušteršič 2022, Sayed 2025
)
def test_ratios_on_30_patients_stratified(ratios, sizes):
    with warnings.catch_warnings():
        warnings.simplefilter("error", StratificationWarning)  # 3 classes fit into 3 test patients
        splits = split_patients(PATIENTS, LABELS, ratios=ratios, seed=1)
    assert_partition(splits, PATIENTS)
    assert tuple(len(splits[k]) for k in ("train", "val", "test")) == sizes
    for name, members in splits.items():
        assert set(LABEL_OF[p] for p in members) == {"healthy", "L4-L5", "L5-S1"}, name
    train = Counter(LABEL_OF[p] for p in splits["train"])
    assert abs(train["healthy"] / len(splits["train"]) - 0.6) < 0.1  # proportions kept


def test_deterministic_and_order_independent():
    a = split_patients(PATIENTS, LABELS, seed=3)
    b = split_patients(list(reversed(PATIENTS)), list(reversed(LABELS)), seed=3)
    assert a == b
    assert a == split_patients(PATIENTS, LABELS, seed=3)
    assert any(split_patients(PATIENTS, LABELS, seed=s) != a for s in (4, 5, 6))
    assert all(v == sorted(v) for v in a.values())


def test_without_labels_is_random_partition():
    a = split_patients(PATIENTS, None, seed=0)
    assert_partition(a, PATIENTS)
    assert [len(a[k]) for k in ("train", "val", "test")] == [24, 3, 3]


def test_too_small_class_warns_and_still_spreads_classes():
    labels = ["healthy"] * 20 + ["L4-L5"] * 5 + ["L5-S1"] * 3 + ["both"] * 2  # SPIDER seg_t2space
    with pytest.warns(StratificationWarning, match="cannot put every label class in every split"):
        splits = split_patients(PATIENTS, labels, seed=0)
    assert_partition(splits, PATIENTS)
    lab = dict(zip(PATIENTS, labels, strict=True))
    train = Counter(lab[p] for p in splits["train"])
    assert train["healthy"] == 16 and train["L4-L5"] == 4  # proportional where quotas are whole
    assert Counter(lab[p] for p in splits["test"])["healthy"] == 2


def test_kfold_covers_each_non_test_patient_once():
    k = 5
    runs = [split_patients(PATIENTS, LABELS, folds=k, fold=f, seed=2) for f in range(k)]
    test = runs[0]["test"]
    assert len(test) == 3 and all(r["test"] == test for r in runs)  # held out once, same for every fold
    vals = [p for r in runs for p in r["val"]]
    assert Counter(vals) == Counter(p for p in PATIENTS if p not in test)  # each exactly once
    for r in runs:
        assert_partition(r, PATIENTS)
        assert len(r["val"]) in (5, 6)
        assert set(LABEL_OF[p] for p in r["val"]) == {"healthy", "L4-L5", "L5-S1"}  # stratified folds


def test_ten_fold_as_sustersic():
    with pytest.warns(StratificationWarning, match="fewer patients than folds"):  # 5 per rare class < 10
        runs = [split_patients(PATIENTS, LABELS, ratios=(0.8, 0.1, 0.1), folds=10, fold=f) for f in range(10)]
    vals = [p for r in runs for p in r["val"]]
    assert len(vals) == len(set(vals)) == 27


def test_zero_ratio_turns_a_split_off():
    splits = split_patients(PATIENTS, None, ratios=(0.9, 0.0, 0.1))
    assert splits["val"] == [] and len(splits["test"]) == 3


@pytest.mark.parametrize(
    ("ratios", "match"),
    [
        ((0.8, 0.1, 0.2), "sum to 1"),
        ((1.1, -0.1, 0.0), "negative"),
        ((0.5, 0.5), "three numbers"),
        (("a", 0.1, 0.1), "three numbers"),
        ((0.0, 0.5, 0.5), "train split"),
    ],
)
def test_bad_ratios(ratios, match):
    with pytest.raises(ConfigError, match=match):
        split_patients(PATIENTS, None, ratios=ratios)


def test_empty_split_names_split_and_count():
    with pytest.raises(DataError, match=r"split 'val' would be empty: 4 patients.*val 0"):
        split_patients(["a", "b", "c", "d"], None, ratios=(0.8, 0.1, 0.1))
    with pytest.raises(DataError, match=r"'val' would be empty.*only 3 patients for 5 folds"):
        split_patients(["a", "b", "c", "d"], None, ratios=(0.5, 0.25, 0.25), folds=5)


def test_fold_and_input_errors():
    with pytest.raises(ConfigError, match="split.fold must be in 0..4"):
        split_patients(PATIENTS, None, folds=5, fold=5)
    with pytest.raises(ConfigError, match="split.folds"):
        split_patients(PATIENTS, None, folds=1)
    with pytest.raises(DataError, match="repeated"):
        split_patients(["a", "a", "b"], None)
    with pytest.raises(DataError, match="one label per patient"):
        split_patients(PATIENTS, LABELS[:-1])


def test_check_splits_names_patient_and_splits():
    with pytest.raises(DataError, match="patient '7' in train and test"):
        check_splits({"train": ["1", "7"], "val": ["2"], "test": ["7"]})
    with pytest.raises(DataError, match="not in the manifest.*'9'"):
        check_splits({"train": ["1", "9"], "val": [], "test": []}, patients=["1"])
    with pytest.raises(DataError, match="in no split.*'2'"):
        check_splits({"train": ["1"], "val": [], "test": []}, patients=["1", "2"])


def test_save_and_load_roundtrip(tmp_path):
    splits = split_patients(PATIENTS, LABELS, folds=5, fold=1)
    path = save_splits(splits, tmp_path / "run/splits.json", meta={"seed": 0, "folds": 5, "fold": 1})
    doc = json.loads(path.read_text())
    assert doc["format"] == "spinenet-splits" and doc["version"] == 1 and doc["meta"]["fold"] == 1
    assert load_splits(path) == splits


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "cannot read splits file"),
        ('{"format": "other"}', "not a spinenet splits file"),
        ('{"format": "spinenet-splits", "version": 99, "splits": {}}', "version 99"),
        ('{"format": "spinenet-splits", "version": 1, "splits": {"train": []}}', "exactly the keys"),
        (
            '{"format": "spinenet-splits", "version": 1, "splits": {"train": [1], "val": [], "test": []}}',
            "strings",
        ),
        (
            '{"format": "spinenet-splits", "version": 1, "splits": {"train": ["a"], "val": ["a"], "test": []}}',
            "patient 'a' in train and val",
        ),
    ],
)
def test_load_splits_validates(tmp_path, content, match):
    path = tmp_path / "splits.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match) as e:
        load_splits(path)
    assert "splits.json" in str(e.value)
    with pytest.raises(DataError, match="no splits file"):
        load_splits(tmp_path / "absent.json")


def test_patient_labels_most_frequent_then_most_severe():
    rows_p = ["a", "a", "a", "b", "b", "c"]
    rows_l = ["healthy", "L5-S1", "healthy", "healthy", "L4-L5", "L4-L5"]
    order = ["healthy", "L4-L5", "L5-S1"]
    assert patient_labels(rows_p, rows_l, order) == {"a": "healthy", "b": "L4-L5", "c": "L4-L5"}
    assert patient_labels([1, 1], [0, 1]) == {"1": 1}


def test_rare_findings_are_stratified_by_the_most_severe_label():
    # 10 patients of 10 discs each; 3 of them have one herniated disc: by majority nobody is positive
    rows_p = [f"p{i}" for i in range(10) for _ in range(10)]
    rows_l = [int(i < 3 and d == 0) for i in range(10) for d in range(10)]
    assert set(patient_labels(rows_p, rows_l).values()) == {0}
    severe = patient_labels(rows_p, rows_l, [0, 1], rule="most_severe")
    assert sorted(p for p, lab in severe.items() if lab == 1) == ["p0", "p1", "p2"]
    # stratified on it, each of train / val / test gets a positive patient
    splits = split_patients(list(severe), list(severe.values()), ratios=(0.6, 0.2, 0.2), seed=0)
    for name, members in splits.items():
        assert any(severe[p] == 1 for p in members), name
    with pytest.raises(ConfigError, match="split.stratify must be one of majority, most_severe"):
        patient_labels(rows_p, rows_l, rule="any")


def test_test_folds_score_every_patient_once_with_validation_from_the_rest():
    ids = [f"p{i:02d}" for i in range(30)]
    labels = [i % 3 for i in range(30)]
    tested = []
    for k in range(5):
        s = split_patients(ids, labels, ratios=(0.8, 0.1, 0.1), seed=0, folds=5, fold=k, fold_split="test")
        assert len(s["test"]) == 6 and len(s["val"]) == 3 and len(s["train"]) == 21
        assert not set(s["test"]) & set(s["val"]) and not set(s["train"]) & (set(s["val"]) | set(s["test"]))
        # stratified: each test fold holds every label
        assert {labels[ids.index(p)] for p in s["test"]} == {0, 1, 2}
        tested += s["test"]
    assert sorted(tested) == ids
    with pytest.raises(ConfigError, match=r"split.fold_split must be one of \['val', 'test'\], got 'train'"):
        split_patients(ids, labels, folds=5, fold=0, fold_split="train")


def test_a_folds_file_holds_out_the_same_patients_in_every_data_set(tmp_path, tiny_phantom, compose_cfg):
    """`spinenet data folds` deals the first list evenly, then the next list's new patients; a data set
    trained with data.split.folds_file tests exactly its patients of fold k."""
    import hydra

    from spinenet.cli import main as cli_main
    from spinenet.data.splits import deal_folds, fold_counts, load_folds
    from tests.conftest import tiny_train_overrides

    small = [f"s{i}" for i in range(10)]
    large = small[:4] + [f"l{i}" for i in range(17)]
    fold_of = deal_folds([small, large], 5, seed=3)
    assert fold_counts(fold_of, small) == [2, 2, 2, 2, 2]
    assert sorted(fold_counts(fold_of, fold_of)) == [5, 5, 5, 6, 6] and len(fold_of) == 27  # the deal goes on
    assert deal_folds([large[::-1], small], 5, seed=3) == deal_folds([large, small], 5, seed=3)  # order-free

    manifest = tiny_phantom["sagittal"] / "manifest.csv"
    folds = tmp_path / "folds.csv"
    extra = tmp_path / "more.csv"
    extra.write_text("Patient,x\nzz1,0\nzz2,1\n")
    assert cli_main(["data", "folds", str(manifest), f"{extra}=Patient", "--k", "3", "--out", str(folds)]) == 0
    assert cli_main(["data", "folds", str(manifest), "--k", "3", "--out", str(folds)]) == 2  # never overwritten
    assigned = load_folds(folds)
    assert {"zz1", "zz2"} <= set(assigned) and set(assigned.values()) == {0, 1, 2}

    cfg = compose_cfg([*tiny_train_overrides(tiny_phantom["sagittal"]), f"data.split.folds_file={folds}",
                       "data.split.fold=1"])
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    splits = dm.make_splits()
    in_fold = sorted(p for p, f in assigned.items() if f == 1 and not p.startswith("zz"))
    assert splits["test"] == in_fold and not set(splits["train"]) & set(in_fold)
    assert splits["val"] and sorted(sum(splits.values(), [])) == sorted(p for p in assigned if not p.startswith("zz"))

    cfg = compose_cfg([*tiny_train_overrides(tiny_phantom["sagittal"]), f"data.split.folds_file={folds}",
                       "data.split.fold_split=val"])
    with pytest.raises(ConfigError, match="folds_file=.*makes fold k the test split; data.split.fold_split='val'"):
        hydra.utils.instantiate(cfg.data, _convert_="object").make_splits()


def test_bad_folds_files_are_refused_naming_file_and_row(tmp_path):
    from spinenet.data.splits import load_folds

    cases = {
        "nocol.csv": ("patient_id,split\na,0\n", "lacks column"),
        "word.csv": ("patient_id,fold\na,0\nb,one\n", r"row 3: fold 'one' is not a whole number"),
        "twice.csv": ("patient_id,fold\na,0\na,1\n", r"row 3: patient 'a' is empty or listed twice"),
        "gap.csv": ("patient_id,fold\na,0\nb,2\n", r"\[1\] unused"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=message):
            load_folds(tmp_path / name)
    with pytest.raises(DataError, match="no folds file .*absent.csv"):
        load_folds(tmp_path / "absent.csv")
    ids = ["a", "b", "c", "d"]
    with pytest.raises(DataError, match=r"1 patient\(s\) of the data set have no fold in the folds file: \['d'\]"):
        split_patients(ids, assigned_folds={"a": 0, "b": 1, "c": 1}, ratios=(0.8, 0.2, 0.0))


def test_a_folds_file_also_holds_fold_k_out_of_extra_training_data(tmp_path, tiny_phantom, compose_cfg):
    """Extra training rows of patients in the held-out fold are dropped (they are fold k's patients in the
    shared folds file, e.g. graded crops of slices that fold k's end-to-end evaluation diagnoses)."""
    import hydra
    import pandas as pd

    from spinenet.data.splits import save_folds
    from tests.conftest import tiny_train_overrides

    root = tiny_phantom["sagittal"]
    main = pd.read_csv(root / "manifest.csv", dtype=str)
    extra = main.copy()
    extra["patient_id"] = "x" + extra["patient_id"]  # other patients, the same images
    extra_manifest = tmp_path / "extra.csv"
    extra.to_csv(extra_manifest, index=False)
    patients = sorted(set(main["patient_id"])) + sorted(set(extra["patient_id"]))
    fold_of = {p: i % 3 for i, p in enumerate(patients)}
    folds = save_folds(fold_of, tmp_path / "folds.csv")
    cfg = compose_cfg([*tiny_train_overrides(root), f"data.split.folds_file={folds}", "data.split.fold=2",
                       f"+data.extra_train=[{{root: {root}, manifest: {extra_manifest}}}]"])
    dm = hydra.utils.instantiate(cfg.data, _convert_="object")
    dm.setup()
    kept = dm.load_extra_train(dm.load_frame())
    assert set(kept["patient_id"]) == {p for p in set(extra["patient_id"]) if fold_of[p] != 2}
    n_main_train = main["patient_id"].isin(dm.splits["train"]).sum()
    assert len(dm.datasets["train"]) == n_main_train + len(kept)
