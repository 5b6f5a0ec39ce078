"""The synthetic lumbar MRI phantom: layout, determinism, labels that agree with masks, no shortcut labels."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from spinenet.data.phantom import (
    AXIAL_CLASSES,
    AXIAL_LABELS,
    MASK_GRAY_STEP,
    SAGITTAL_CLASSES,
    SAGITTAL_LABELS,
    assign_labels,
    generate_phantom,
    render_preview,
    sample_anatomy,
    synth_slice,
)
from spinenet.errors import ConfigError

SAG_COLS = [
    "patient_id",
    "view",
    "slice",
    "image",
    "mask",
    "sagittal_class",
    "herniation_L4L5",
    "herniation_L5S1",
]
AX_COLS = ["patient_id", "view", "slice", "image", "mask", "axial_class", "herniated", "level"]


def _rows(manifest: Path) -> list[dict]:
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _files(root: Path) -> dict[str, bytes]:
    """The generated data (the output marker holds the time of writing)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".spinenet-output"
    }


@pytest.fixture(scope="module")
def sag(tmp_path_factory) -> Path:
    return generate_phantom(
        tmp_path_factory.mktemp("sag"), "sagittal", patients=4, seed=3, size=64, slices_per_patient=2
    )


@pytest.fixture(scope="module")
def ax(tmp_path_factory) -> Path:
    return generate_phantom(
        tmp_path_factory.mktemp("ax"), "axial", patients=5, seed=3, size=64, slices_per_patient=2
    )


# --- layout -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "which, cols, label_col, labels",
    [("sag", SAG_COLS, "sagittal_class", SAGITTAL_LABELS), ("ax", AX_COLS, "axial_class", AXIAL_LABELS)],
)
def test_manifest_columns_files_and_metadata(request, which, cols, label_col, labels):
    manifest = request.getfixturevalue(which)
    root = manifest.parent
    with manifest.open(newline="") as fh:
        assert next(csv.reader(fh)) == cols
    rows = _rows(manifest)
    assert len(rows) == (4 if which == "sag" else 5) * 2
    assert [r["patient_id"] for r in rows[::2]] == [f"P{i:04d}" for i in range(1, len(rows) // 2 + 1)]
    for r in rows:
        assert r["image"] == f"images/{r['patient_id']}_{r['view']}_s{r['slice']}.png"
        assert r["mask"] == r["image"].replace("images/", "masks/")
        img = cv2.imread(str(root / r["image"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(root / r["mask"]), cv2.IMREAD_UNCHANGED)
        assert img.shape == mask.shape == (64, 64) and img.dtype == mask.dtype == np.uint8
        assert r[label_col] in labels
    # all slices of a patient share the label (and, axially, the level)
    for pid in {r["patient_id"] for r in rows}:
        assert len({(r[label_col], r.get("level")) for r in rows if r["patient_id"] == pid}) == 1
    meta = json.loads((root / "phantom.json").read_text())
    assert meta["view"] == rows[0]["view"] and meta["seed"] == 3 and meta["size"] == 64
    assert meta["slices_per_patient"] == 2 and set(meta["class_balance"]) == set(labels)
    assert meta["generator_version"] >= 1


def test_label_columns_are_consistent(sag, ax):
    for r in _rows(sag):
        assert int(r["herniation_L4L5"]) == (r["sagittal_class"] == "L4-L5")
        assert int(r["herniation_L5S1"]) == (r["sagittal_class"] == "L5-S1")
    for r in _rows(ax):
        assert int(r["herniated"]) == (r["axial_class"] in ("central", "left", "right"))
        assert r["level"] in ("L4-L5", "L5-S1")


def test_mask_gray_values_and_every_class_present(sag, ax):
    allowed = {MASK_GRAY_STEP * i for i in range(4)}
    for manifest in (sag, ax):
        for r in _rows(manifest):
            values = set(
                np.unique(cv2.imread(str(manifest.parent / r["mask"]), cv2.IMREAD_GRAYSCALE)).tolist()
            )
            assert values == allowed, (r["mask"], values)


def test_images_look_like_mr_not_flat_shapes(sag):
    for r in _rows(sag):
        img = cv2.imread(str(sag.parent / r["image"]), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        mask = cv2.imread(str(sag.parent / r["mask"]), cv2.IMREAD_GRAYSCALE) // MASK_GRAY_STEP
        canal, vert = img[mask == 3], img[mask == 2]
        assert canal.mean() > vert.mean() + 20  # T2: CSF brighter than marrow
        assert vert.std() > 3  # textured, noisy marrow rather than a flat fill
        assert len(np.unique(img)) > 60


# --- determinism ------------------------------------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_differs(tmp_path, sag):
    again = generate_phantom(tmp_path / "a", "sagittal", patients=4, seed=3, size=64, slices_per_patient=2)
    assert _files(sag.parent) == _files(again.parent)
    other = generate_phantom(tmp_path / "b", "sagittal", patients=4, seed=4, size=64, slices_per_patient=2)
    a, b = _files(sag.parent), _files(other.parent)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.startswith("images/"))


def test_first_patients_do_not_depend_on_the_total(tmp_path, ax):
    more = generate_phantom(tmp_path / "more", "axial", patients=9, seed=3, size=64, slices_per_patient=2)
    small, big = _files(ax.parent), _files(more.parent)
    for name, data in small.items():
        if name.startswith(("images/", "masks/")):
            assert big[name] == data, name
    assert _rows(more)[:10] == _rows(ax)
    assert (
        assign_labels(7, {"a": 0.5, "b": 0.3, "c": 0.2}, 1)
        == assign_labels(30, {"a": 0.5, "b": 0.3, "c": 0.2}, 1)[:7]
    )


# --- labels agree with masks ------------------------------------------------------------------------------
def _anatomy(view: str, seed: int, **overrides) -> dict:
    return dict(sample_anatomy(np.random.default_rng(seed), view), **overrides)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sagittal_protrusion_sits_at_the_stated_disc(seed):
    anat = _anatomy("sagittal", seed, slice_offset=0.3)
    _, healthy = synth_slice(np.random.default_rng(9), "sagittal", "healthy", 128, anat)
    n, comp = cv2.connectedComponents((healthy == 1).astype(np.uint8))
    assert n - 1 == 5  # L1-L2 .. L5-S1
    centroids = sorted((np.argwhere(comp == i).mean(axis=0) for i in range(1, n)), key=lambda c: c[0])
    for label, level in (("L4-L5", 3), ("L5-S1", 4)):
        _, m = synth_slice(np.random.default_rng(9), "sagittal", label, 128, anat)
        extra = (m == 1) & (healthy != 1)
        assert extra.sum() >= 6
        assert ((m == 1) & (healthy == 3)).sum() >= 0.5 * extra.sum()  # it grows into the canal
        assert (m == 3).sum() < (healthy == 3).sum()
        assert not ((healthy == 1) & (m != 1)).any()  # nothing else changes
        c = np.argwhere(extra).mean(axis=0)
        nearest = int(np.argmin([np.linalg.norm(c - k) for k in centroids]))
        assert nearest == level, (label, nearest)
        # the protrusion lies behind the disc: on the canal's side (posterior = image right)
        assert c[1] > centroids[level][1]


def test_sagittal_canal_is_narrower_off_the_midline():
    mid = synth_slice(
        np.random.default_rng(0), "sagittal", "healthy", 128, _anatomy("sagittal", 5, slice_offset=0.0)
    )[1]
    side = synth_slice(
        np.random.default_rng(0), "sagittal", "healthy", 128, _anatomy("sagittal", 5, slice_offset=0.8)
    )[1]
    assert (side == 3).sum() < 0.92 * (mid == 3).sum()


@pytest.mark.parametrize("rotation", [0.0, None])
def test_axial_labels_agree_with_masks(rotation):
    for seed in (0, 1):
        over = {} if rotation is None else {"rotation": rotation, "shift": [0.0, 0.0]}
        anat = _anatomy("axial", seed, **over)
        masks = {lb: synth_slice(np.random.default_rng(1), "axial", lb, 128, anat)[1] for lb in AXIAL_LABELS}
        healthy = masks["healthy"]
        disc_x = np.argwhere(healthy == 1)[:, 1].mean()
        # bulge: the whole disc outline grows, diffusely
        grow = (masks["bulge"] == 1) & (healthy != 1)
        assert (masks["bulge"] == 1).sum() > 1.08 * (healthy == 1).sum()
        assert (
            grow[:, : int(disc_x)].sum() > 0.25 * grow.sum()
            and grow[:, int(disc_x) :].sum() > 0.25 * grow.sum()
        )
        xs = {}
        for lb in ("central", "left", "right"):
            extra = (masks[lb] == 1) & (healthy != 1)
            assert extra.sum() >= 8
            assert (masks[lb] == 2).sum() < (healthy == 2).sum()  # the canal is indented
            xs[lb] = np.argwhere(extra)[:, 1].mean()
        # radiological convention: the patient's left is on the image right
        assert xs["left"] > xs["central"] > xs["right"]
        if rotation == 0.0:
            assert xs["left"] > disc_x + 4 and xs["right"] < disc_x - 4 and abs(xs["central"] - disc_x) < 3


def test_mask_depends_only_on_anatomy_and_label():
    anat = _anatomy("axial", 3)
    img1, m1 = synth_slice(np.random.default_rng(1), "axial", "left", 64, anat)
    img2, m2 = synth_slice(np.random.default_rng(2), "axial", "left", 64, anat)
    assert np.array_equal(m1, m2) and not np.array_equal(img1, img2)


def test_image_statistics_do_not_predict_the_label(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    manifest = generate_phantom(tmp_path, "sagittal", patients=30, seed=11, size=64, slices_per_patient=2)
    feats, labels, groups = [], [], []
    for r in _rows(manifest):
        img = cv2.imread(str(tmp_path / r["image"]), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
        hist = np.histogram(img, bins=10, range=(0, 1))[0] / img.size
        feats.append([img.mean(), img.std(), *hist])
        labels.append(r["sagittal_class"])
        groups.append(r["patient_id"])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    acc = cross_val_score(clf, np.array(feats), np.array(labels), groups=groups, cv=GroupKFold(5)).mean()
    assert acc < 0.6, acc


# --- class balance ----------------------------------------------------------------------------------------
def test_class_balance_is_honoured():
    uniform = Counter(assign_labels(30, {lb: 1 / 3 for lb in SAGITTAL_LABELS}, 0))
    assert uniform == {lb: 10 for lb in SAGITTAL_LABELS}
    for n in (3, 4, 5):  # small N still covers every label
        assert set(assign_labels(n, {lb: 1 / 3 for lb in SAGITTAL_LABELS}, n)) == set(SAGITTAL_LABELS)
    probs = {"healthy": 0.5, "bulge": 0.25, "central": 0.25, "left": 0.0, "right": 0.0}
    for n in (8, 21, 40):
        counts = Counter(assign_labels(n, probs, 5))
        assert "left" not in counts and "right" not in counts
        for lb, p in probs.items():
            assert abs(counts.get(lb, 0) - p * n) <= 1.5, (n, counts)
    # shuffled: the label is not a function of the patient's position
    assert assign_labels(30, {lb: 1 / 3 for lb in SAGITTAL_LABELS}, 0) != assign_labels(
        30, {lb: 1 / 3 for lb in SAGITTAL_LABELS}, 1
    )


def test_generate_with_class_balance(tmp_path):
    m = generate_phantom(
        tmp_path,
        "axial",
        patients=4,
        seed=0,
        size=64,
        slices_per_patient=1,
        class_balance={"healthy": 1, "left": 1},
    )
    assert Counter(r["axial_class"] for r in _rows(m)) == {"healthy": 2, "left": 2}
    meta = json.loads((tmp_path / "phantom.json").read_text())
    assert meta["class_balance"] == {"healthy": 0.5, "bulge": 0.0, "central": 0.0, "left": 0.5, "right": 0.0}


# --- refusals and bad arguments ---------------------------------------------------------------------------
def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    out = tmp_path / "data"
    generate_phantom(out, "sagittal", patients=3, seed=0, size=64, slices_per_patient=2)
    with pytest.raises(ConfigError, match="not empty") as err:
        generate_phantom(out, "sagittal", patients=2, seed=0, size=64, slices_per_patient=1)
    assert str(out) in str(err.value)
    (out / "notes.txt").write_text("mine")
    m = generate_phantom(out, "sagittal", patients=2, seed=0, size=64, slices_per_patient=1, overwrite=True)
    assert len(_rows(m)) == 2
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "P0001_sagittal_s0.png",
        "P0002_sagittal_s0.png",
    ]
    assert (out / "notes.txt").read_text() == "mine"  # files it did not write are left alone


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"view": "coronal"}, ["sagittal", "axial"]),
        ({"patients": 0}, ["patients"]),
        ({"size": 100}, ["multiple of 32"]),
        ({"size": 32}, ["at least 64"]),
        ({"slices_per_patient": 0}, ["slices_per_patient"]),
        ({"class_balance": {"L3-L4": 1.0}}, ["L3-L4", "healthy", "L4-L5", "L5-S1"]),
        ({"class_balance": {"healthy": -1.0, "L4-L5": 1.0}}, ["healthy", ">= 0"]),
        ({"class_balance": {"healthy": 0.0}}, ["positive"]),
    ],
)
def test_bad_arguments_raise_config_error(tmp_path, kwargs, words):
    args = {"out_dir": tmp_path / "x", "view": "sagittal", "patients": 2, "size": 64} | kwargs
    with pytest.raises(ConfigError) as err:
        generate_phantom(**args)
    for w in words:
        assert w in str(err.value)
    assert not (tmp_path / "x").exists()  # nothing written before the arguments are checked


def test_synth_slice_rejects_unknown_label():
    with pytest.raises(ConfigError, match="bulge"):
        synth_slice(np.random.default_rng(0), "axial", "foraminal", 64)
    with pytest.raises(ConfigError, match="view"):
        synth_slice(np.random.default_rng(0), "sagittal", "healthy", 64, _anatomy("axial", 0))


def test_classes_are_the_documented_ones():
    assert SAGITTAL_CLASSES == ("background", "disc", "vertebra", "canal")
    assert AXIAL_CLASSES == ("background", "disc", "canal", "posterior")


# --- preview ----------------------------------------------------------------------------------------------
def test_render_preview_shows_every_label(tmp_path, ax):
    out = render_preview(ax, tmp_path / "prev.png", n=5)
    img = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert {r["axial_class"] for r in _rows(ax)} == set(AXIAL_LABELS)  # the fixture holds every label
    assert img.shape == (2 * 64, 5 * 64 + 4 * 2, 3)  # one tile per label, 2-pixel separators
    assert out.stat().st_size < 300_000
    # below the label text the upper row is gray; the lower row carries coloured mask outlines
    top, bottom = img[20:64].astype(int), img[64:].astype(int)
    assert np.abs(top[..., 0] - top[..., 2]).max() == 0 < np.abs(bottom[..., 0] - bottom[..., 2]).max()
