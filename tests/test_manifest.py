"""DatasetSpec, load_manifest and check_dataset: every bad row found at once, with exact counts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from spinenet.data.manifest import DatasetSpec, check_dataset, existing_files, load_manifest, raise_if_bad
from spinenet.errors import ConfigError, DataError

SPIDER = Path(os.environ.get("SPIDER_DIR", Path(__file__).resolve().parents[1].parent / "shared/data/spider"))


def needs_spider(test):
    """Mark ``spider`` and skip, with the reason, where the real data are absent."""
    skip = pytest.mark.skipif(
        not (SPIDER / "seg_t2space/manifest.csv").is_file(),
        reason=f"real SPIDER data not found at {SPIDER} (../shared/data/spider next to the repo, or SPIDER_DIR)",
    )
    return pytest.mark.spider(skip(test))


VALUES = [0, 85, 170, 255]
LABELS = ["healthy", "L4-L5", "L5-S1"]


def png_bytes(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


GOOD_IMG = png_bytes(np.full((8, 10), 120, np.uint8))
GOOD_MASK = png_bytes(np.array(VALUES, np.uint8)[np.arange(80).reshape(8, 10) % 4])
SMALL_MASK = png_bytes(np.zeros((6, 6), np.uint8))  # wrong size
BAD_MASK = png_bytes(np.array([0, 85, 200, 13], np.uint8)[np.arange(80).reshape(8, 10) % 4])
JUNK = b"not an image at all" * 8
TRUNCATED = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))[:300]


def write_csv(path: Path, rows: list[dict], header: list[str] | None = None, blank_after: int | None = None):
    header = header or ["patient_id", "image", "mask", "label"]
    lines = [",".join(header)]
    for i, r in enumerate(rows):
        lines.append(",".join(str(r.get(c, "")) for c in header))
        if blank_after is not None and i == blank_after:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def spec_for(root: Path, **kw) -> DatasetSpec:
    base = dict(root=root, label_col="label", label_names=LABELS, mask_values=VALUES)
    base.update(kw)
    return DatasetSpec(**base)


# ----------------------------------------------------------------------------------------------- DatasetSpec


def test_spec_from_dict_and_dictconfig(tmp_path):
    d = {"root": str(tmp_path), "label_col": "y", "label_names": [0, 1], "mask_values": [0, 29, 76, 150]}
    s = DatasetSpec.from_config(d)
    assert s.root == tmp_path and s.label_names == ["0", "1"] and s.mask_col == "mask"
    cfg = OmegaConf.create({"base": str(tmp_path), "dataset": {"root": "${base}/sub", "mask_col": None}})
    s2 = DatasetSpec.from_config(cfg.dataset)
    assert (
        s2.root == tmp_path / "sub"
        and s2.mask_col is None
        and s2.manifest_path == tmp_path / "sub/manifest.csv"
    )


@pytest.mark.parametrize(
    ("cfg", "setting"),
    [
        ({"root": "x", "imgae_col": "a"}, "imgae_col"),
        ({"image_col": "a"}, "dataset.root"),
        ({"root": "x", "image_col": 3}, "dataset.image_col"),
        ({"root": "x", "mask_col": ""}, "dataset.mask_col"),
        ({"root": "x", "label_names": "healthy"}, "dataset.label_names"),
        ({"root": "x", "label_names": ["a", "a"]}, "dataset.label_names"),
        ({"root": "x", "mask_values": [0, 1.5]}, "dataset.mask_values"),
        ({"root": "x", "mask_values": [0, 1], "class_names": ["bg", "a", "b"]}, "dataset.class_names"),
    ],
)
def test_spec_errors_name_the_setting(cfg, setting):
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        DatasetSpec.from_config(cfg)


# ---------------------------------------------------------------------------------------------- load_manifest


def test_load_manifest_adds_paths_and_labels(tmp_path):
    (tmp_path / "img").mkdir()
    write_csv(
        tmp_path / "manifest.csv",
        [
            {"patient_id": "007", "image": "img/a.png", "mask": "img/a_m.png", "label": "L5-S1"},
            {"patient_id": " 007", "image": "img/b.png", "mask": "img/b_m.png", "label": "healthy"},
            {"patient_id": "NA", "image": "img/c.png", "mask": "img/c_m.png", "label": "L4-L5"},
        ],
    )
    df = load_manifest(spec_for(tmp_path))
    assert df["patient_id"].tolist() == ["007", "007", "NA"]  # strings, stripped, "NA" is an id
    assert df["label_idx"].tolist() == [2, 0, 1] and df["label_idx"].dtype == np.int64
    assert df["image_path"].iloc[0] == str((tmp_path / "img/a.png").resolve())
    assert Path(df["mask_path"].iloc[2]).is_absolute()
    assert df["csv_line"].tolist() == [2, 3, 4]
    assert df.attrs["label_names"] == LABELS
    # label names inferred (numeric order) when not configured
    df2 = load_manifest(spec_for(tmp_path, label_names=None))
    assert df2.attrs["label_names"] == ["L4-L5", "L5-S1", "healthy"]


def test_load_manifest_missing_column_lists_columns(tmp_path):
    write_csv(
        tmp_path / "manifest.csv", [{"patient_id": "1", "image": "a.png"}], header=["patient_id", "image"]
    )
    with pytest.raises(DataError) as e:
        load_manifest(spec_for(tmp_path))
    msg = str(e.value)
    assert "'mask'" in msg and "dataset.mask_col" in msg and "'label'" in msg and "patient_id, image" in msg
    df = load_manifest(spec_for(tmp_path, mask_col=None, label_col=None))  # classification-only layouts
    assert "mask_path" not in df.columns and len(df) == 1


def test_load_manifest_fast_errors_name_lines(tmp_path):
    with pytest.raises(DataError, match="no manifest file"):
        load_manifest(spec_for(tmp_path))
    write_csv(tmp_path / "manifest.csv", [])
    with pytest.raises(DataError, match="no rows"):
        load_manifest(spec_for(tmp_path))
    rows = [
        {"patient_id": "1", "image": "a.png", "mask": "m.png", "label": "healthy"},
        {"patient_id": "", "image": "b.png", "mask": "m.png", "label": "healthy"},
        {"patient_id": "2", "image": "c.png", "mask": "m.png", "label": "L3-L4"},
    ]
    write_csv(tmp_path / "manifest.csv", rows, blank_after=0)  # a blank line must not shift line numbers
    with pytest.raises(DataError) as e:
        load_manifest(spec_for(tmp_path))
    msg = str(e.value)
    assert "line 4 [patient_id]: empty patient id" in msg
    assert "line 5 [label]: unknown label 'L3-L4'" in msg and "healthy" in msg


# ---------------------------------------------------------------------------------------------- check_dataset


def broken_fixture(root: Path) -> DatasetSpec:
    img = root / "img"
    img.mkdir(parents=True)
    for name, data in {
        "a.png": GOOD_IMG, "b.png": GOOD_IMG, "c.png": GOOD_IMG, "d.png": GOOD_IMG, "e.png": GOOD_IMG,
        "f.png": GOOD_IMG, "g.png": GOOD_IMG, "h.png": GOOD_IMG, "i.png": GOOD_IMG,
        "junk.png": JUNK, "trunc.png": TRUNCATED,
        "ok_m.png": GOOD_MASK, "small_m.png": SMALL_MASK, "bad_m.png": BAD_MASK, "junk_m.png": JUNK,
    }.items():  # fmt: skip
        (img / name).write_bytes(data)
    r = lambda pid, im, m="img/ok_m.png", lab="healthy": dict(patient_id=pid, image=im, mask=m, label=lab)  # noqa: E731
    rows = [
        r("p1", "img/a.png"),  # line 2: good
        r("p1", "img/b.png", lab="L4-L5"),  # 3: good
        r("p2", "img/missing.png"),  # 4: missing_image
        r("p2", "img/c.png", m="img/nomask.png"),  # 5: missing_mask
        r("p3", "img/junk.png"),  # 6: unreadable_image
        r("p3", "img/trunc.png"),  # 7: unreadable_image (deep only), mask_size (64x64 vs 8x10)
        r("p4", "img/d.png", m="img/small_m.png"),  # 8: mask_size
        r("p4", "img/e.png", m="img/bad_m.png"),  # 9: mask_values (deep only)
        r("p5", "img/f.png", lab="weird"),  # 10: unknown_label
        r("", "img/g.png"),  # 11: missing_patient; then a blank line 12
        r("p6", "img/a.png"),  # 13: duplicate_image
        r("p6", "nodir/x.png"),  # 14: missing_image (folder missing)
        r("p7", "img/h.png", lab=""),  # 15: unknown_label (empty)
        r("p7", "img/i.png", m="img/junk_m.png"),  # 16: unreadable_mask
    ]
    write_csv(root / "manifest.csv", rows, blank_after=9)
    return spec_for(root)


def rows_of(report, kind):
    return sorted(p.row for p in report.problems if p.kind == kind)


def test_check_dataset_reports_every_kind(tmp_path):
    spec = broken_fixture(tmp_path)
    rep = check_dataset(spec)
    assert rep.n_rows == 14 and not rep.ok
    assert rep.counts == {
        "missing_patient": 1,
        "unknown_label": 2,
        "duplicate_image": 1,
        "missing_image": 2,
        "unreadable_image": 2,
        "missing_mask": 1,
        "unreadable_mask": 1,
        "mask_size": 2,
        "mask_values": 1,
    }
    assert rows_of(rep, "missing_image") == [4, 14]
    assert rows_of(rep, "unreadable_image") == [6, 7]
    assert rows_of(rep, "mask_size") == [7, 8]
    assert rows_of(rep, "mask_values") == [9]
    assert rows_of(rep, "unknown_label") == [10, 15]
    assert rows_of(rep, "missing_patient") == [11]
    assert rows_of(rep, "duplicate_image") == [13]
    assert rows_of(rep, "unreadable_mask") == [16]
    assert rep.bad_rows == [4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16]
    text = rep.format()
    assert "14 rows checked" in text and "mask_values (1)" in text
    assert "line 9 [mask]: values 13, 200" in text and "[0, 85, 170, 255]" in text
    assert "line 13 [image]: img/a.png is already listed on line 2" in text
    assert "6x6 (HxW) but image img/d.png is 8x10" in text
    with pytest.raises(DataError, match="missing_image"):
        raise_if_bad(rep, "data check failed")

    shallow = check_dataset(spec, deep=False)  # no decoding: truncated files and mask values pass
    assert shallow.counts["unreadable_image"] == 1 and "mask_values" not in shallow.counts
    assert shallow.counts["mask_size"] == 2 and shallow.counts["missing_image"] == 2


def test_check_dataset_manifest_level_problem(tmp_path):
    rep = check_dataset(spec_for(tmp_path / "nowhere"))
    assert rep.counts == {"manifest": 1} and "does not exist either" in rep.format()
    raise_if_bad(check_dataset_ok(tmp_path), "unused")  # an OK report raises nothing


def check_dataset_ok(root: Path):
    (root / "i.png").write_bytes(GOOD_IMG)
    (root / "m.png").write_bytes(GOOD_MASK)
    write_csv(root / "manifest.csv", [dict(patient_id="1", image="i.png", mask="m.png", label="healthy")])
    rep = check_dataset(spec_for(root))
    assert rep.ok and "no problems" in rep.format()
    return rep


def test_existing_files_lists_each_folder_once(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/x.png").write_bytes(b"x")
    (tmp_path / "a/sub").mkdir()
    paths = [
        str(tmp_path / "a/x.png"),
        str(tmp_path / "a/y.png"),
        str(tmp_path / "a/sub"),
        "",
        str(tmp_path / "b/x"),
    ]
    assert existing_files(paths).tolist() == [True, False, False, False, False]


def test_check_dataset_10000_rows_exact_counts(tmp_path):
    """10,000 rows, a few small files, many bad rows of each kind: every one counted (no timing assertion)."""
    rng = np.random.default_rng(0)
    img, msk = tmp_path / "img", tmp_path / "msk"
    img.mkdir()
    msk.mkdir()
    for name, data in {"ok.png": GOOD_MASK, "small.png": SMALL_MASK, "bad.png": BAD_MASK,
                       "junk1.png": JUNK, "junk2.png": JUNK,
                       "ok64.png": png_bytes(np.zeros((64, 64), np.uint8))}.items():  # fmt: skip
        (msk / name).write_bytes(data)
    n_good_files = 0

    def good_image() -> str:
        nonlocal n_good_files
        n_good_files += 1
        name = f"img/g{n_good_files:05d}.png"
        (tmp_path / name).write_bytes(GOOD_IMG)
        return name

    rows: list[dict] = []

    def add(n: int, image, mask="msk/ok.png", label="healthy", pid=True):
        for i in range(n):
            im = image(i) if callable(image) else image
            rows.append(
                dict(patient_id=f"p{len(rows) % 997}" if pid else "", image=im, mask=mask, label=label)
            )

    expected = {
        "missing_patient": 500,
        "unknown_label": 800,
        "duplicate_image": 900,
        "missing_image": 1500,
        "unreadable_image": 500,
        "missing_mask": 1000,
        "unreadable_mask": 200,
        "mask_size": 600,
        "mask_values": 700,
    }
    add(3300, lambda i: good_image())
    good_rows = list(rows)
    add(500, lambda i: good_image(), pid=False)
    add(400, lambda i: good_image(), label="L3-L4")
    add(400, lambda i: good_image(), label="")
    rows += [dict(r) for r in good_rows[:900]]  # duplicates of good rows
    add(1200, lambda i: f"img/missing{i}.png")
    add(300, lambda i: f"no_such_dir/{i}.png")
    for i in range(400):
        (img / f"junk{i}.png").write_bytes(JUNK)
    add(400, lambda i: f"img/junk{i}.png")
    for i in range(100):
        (img / f"trunc{i}.png").write_bytes(TRUNCATED)  # header intact: only decoding finds it
    add(100, lambda i: f"img/trunc{i}.png", mask="msk/ok64.png")  # same size as the truncated image
    add(1000, lambda i: good_image(), mask="msk/none.png")
    add(100, lambda i: good_image(), mask="msk/junk1.png")
    add(100, lambda i: good_image(), mask="msk/junk2.png")
    add(600, lambda i: good_image(), mask="msk/small.png")
    add(700, lambda i: good_image(), mask="msk/bad.png")
    assert len(rows) == 10_000
    order = rng.permutation(len(rows))
    pd.DataFrame([rows[i] for i in order]).to_csv(tmp_path / "manifest.csv", index=False)
    spec = spec_for(tmp_path)

    t0 = time.perf_counter()
    rep = check_dataset(spec, deep=True, max_examples=5)
    elapsed = time.perf_counter() - t0
    print(f"\ncheck_dataset deep on 10,000 rows ({n_good_files + 500} image files): {elapsed:.2f} s")
    assert rep.n_rows == 10_000
    assert rep.counts == expected
    assert len(rep.bad_rows) == sum(expected.values())  # one problem per bad row, nothing double-counted
    text = rep.format()
    assert "... and 1495 more" in text and text.count("\n") < 100

    t0 = time.perf_counter()
    shallow = check_dataset(spec, deep=False)
    print(f"check_dataset headers-only on 10,000 rows: {time.perf_counter() - t0:.2f} s")
    assert shallow.counts == {
        **{k: v for k, v in expected.items() if k != "mask_values"},
        "unreadable_image": 400,
    }


# ----------------------------------------------------------------------------------------------- real SPIDER


@needs_spider
def test_spider_seg_manifest_checks_clean():
    spec = DatasetSpec.from_config(
        {
            "root": str(SPIDER / "seg_t2space"),
            "label_col": "sagittal_class",
            "label_names": ["healthy", "L4-L5", "L5-S1", "both"],
            "mask_values": [0, 29, 76, 150],
            "class_names": ["background", "disc", "vertebra", "canal"],
        }
    )
    df = load_manifest(spec)
    assert len(df) == 180 and df["patient_id"].nunique() == 30
    assert set(df["label_idx"]) == {0, 1, 2, 3}
    rep = check_dataset(spec, deep=False)
    assert rep.ok, rep.format()


@needs_spider
def test_spider_midsag_without_masks():
    spec = DatasetSpec(
        root=SPIDER / "midsag_t2", mask_col=None, label_col="herniation_L5S1", label_names=[0, 1]
    )
    df = load_manifest(spec)
    assert len(df) == 172 and set(df["label_idx"]) <= {0, 1}
    rep = check_dataset(spec, deep=False)
    assert rep.ok, rep.format()
