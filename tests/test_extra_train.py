"""data.extra_train: more training data from other patients, never in validation or test."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from spinenet.data.datamodule import ClassificationDataModule
from spinenet.errors import ConfigError, DataError


def _crop_set(root, patients, labels=("no", "yes"), per_patient=2, level="L4-L5"):
    """A tiny classification set: ``per_patient`` 16x16 crops per patient, alternating labels."""
    (root / "images").mkdir(parents=True)
    rows = []
    for pid in patients:
        for k in range(per_patient):
            name = f"images/{pid}_{k}.png"
            cv2.imwrite(str(root / name), np.full((16, 24), 40 + 50 * k, np.uint8))
            rows.append({"pid": pid, "image": name, "grade": labels[k % len(labels)], "lvl": level})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def _module(main, extra, **kw):
    dataset = {"root": str(main), "patient_col": "pid", "label_col": "grade", "label_names": ["no", "yes"],
               "mask_col": None, "level_col": "lvl"}
    return ClassificationDataModule(dataset, image_size=[16, 24], batch_size=2, extra_train=extra,
                                    split={"ratios": [0.6, 0.2, 0.2], "seed": 0}, **kw)


def test_extra_rows_join_the_training_split_only(tmp_path):
    main = _crop_set(tmp_path / "main", [f"P{i}" for i in range(10)])
    extra = _crop_set(tmp_path / "extra", ["X1", "X2", "X3"], per_patient=3, level="L5-S1")
    plain = _module(main, None)
    plain.setup()
    dm = _module(main, [{"root": str(extra)}])
    dm.setup()
    assert dm.splits == plain.splits  # the split is made from data.dataset alone
    for name in ("val", "test"):
        assert len(dm.datasets[name]) == len(plain.datasets[name])
    train = dm.datasets["train"].rows
    assert len(train) == len(plain.datasets["train"]) + 9
    added = train[train.pid.str.startswith("X")]
    # labels take the main set's class order; the level column comes along for model.level_prior
    assert list(added.label_idx) == [0, 1, 0] * 3 and set(added.lvl) == {"L5-S1"}
    assert dm.train_levels().count("L5-S1") == 9 and len(dm.train_labels()) == len(train)
    sample = dm.datasets["train"][len(train) - 1]
    assert sample["label"].item() == 0 and tuple(sample["image"].shape) == (1, 16, 24)
    assert len(dm.datasets["all"]) == 20  # "all" (spinenet eval split=all) is data.dataset only


def test_extra_rows_of_a_held_out_patient_are_refused(tmp_path):
    main = _crop_set(tmp_path / "main", [f"P{i}" for i in range(10)])
    probe = _module(main, None)
    probe.setup()
    test_patient = probe.splits["test"][0]
    extra = _crop_set(tmp_path / "extra", ["X1", test_patient])
    dm = _module(main, [{"root": str(extra)}])
    with pytest.raises(DataError, match=rf"extra_train\[0\].*{extra / 'manifest.csv'}.*{test_patient} \(test\)"):
        dm.setup()
    # a training-split patient may bring more images
    train_patient = probe.splits["train"][0]
    more = _crop_set(tmp_path / "more", [train_patient])
    ok = _module(main, [{"root": str(more)}])
    ok.setup()
    assert len(ok.datasets["train"]) == len(probe.datasets["train"]) + 2


def test_extra_train_settings_are_checked(tmp_path):
    main = _crop_set(tmp_path / "main", [f"P{i}" for i in range(10)])
    with pytest.raises(ConfigError, match="list of dataset blocks"):
        _module(main, {"root": str(main)})
    with pytest.raises(ConfigError, match=r"extra_train\[0\] must be a dataset block with a root"):
        _module(main, [{"manifest": "other.csv"}])
    with pytest.raises(ConfigError, match="unknown settings"):
        _module(main, [{"root": str(main), "colour": "red"}])
    bad = _crop_set(tmp_path / "bad", ["X1"], labels=("no", "maybe"))
    with pytest.raises(DataError, match="maybe"):
        _module(main, [{"root": str(bad)}]).setup()
