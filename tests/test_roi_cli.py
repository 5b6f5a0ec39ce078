"""`spinenet roi`: crops from ground-truth masks, from a trained segmenter's masks, and from a box CSV."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from spinenet.cli import main as cli_main
from spinenet.cli.roi import main as roi_main
from spinenet.errors import ConfigError
from tests.conftest import tiny_train_overrides

_SEGMENTERS: dict[str, Path] = {}


def tiny_segmenter(phantom_root: Path, out_dir: Path, view: str = "axial", epochs: int = 12) -> Path:
    """A U-Net trained a few seconds on the tiny phantom (once per session and view); its run folder."""
    key = f"{phantom_root}:{view}"
    if key not in _SEGMENTERS:
        from spinenet.config import compose
        from spinenet.tasks.train import train

        overrides = [
            *tiny_train_overrides(phantom_root, view),
            "logger=none",
            f"trainer.max_epochs={epochs}",
            "optimizer.lr=0.003",
            "+trainer.enable_progress_bar=false",
            "model.num_overlays=0",
        ]
        metrics = train(compose("train", overrides, output_dir=out_dir))
        _SEGMENTERS[key] = Path(metrics["run_dir"])
    return _SEGMENTERS[key]


@pytest.fixture(scope="session")
def axial_segmenter(tiny_phantom, tmp_path_factory) -> Path:
    return tiny_segmenter(tiny_phantom["axial"], tmp_path_factory.mktemp("segmenter") / "run")


def _best_checkpoint(run: Path) -> Path:
    return Path(json.loads((run / "metrics.json").read_text())["best_checkpoint"])


def test_roi_from_ground_truth_masks(tiny_phantom, tmp_path, capsys):
    root = tiny_phantom["sagittal"]
    out = tmp_path / "crops"
    assert (
        cli_main(
            [
                "roi",
                "--data",
                "phantom_sagittal",
                "--root",
                str(root),
                "--out",
                str(out),
                "--levels",
                "L4-L5,L5-S1",
                "--size",
                "32x48",
                "--min-area",
                "8",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    source = pd.read_csv(root / "manifest.csv")
    manifest = pd.read_csv(out / "manifest.csv")
    missing = pd.read_csv(out / "missing.csv")
    # every image gives crops or is listed as missing: nothing is dropped silently
    assert set(manifest.source_image) | set(missing.source_image) == set(source.image)
    assert manifest.groupby("source_image").size().max() <= 2 and len(manifest) >= len(source)
    assert set(manifest.level) <= {"L4-L5", "L5-S1"}
    assert set(manifest.label) <= {"healthy", "L4-L5", "L5-S1"}
    herniated = manifest[manifest.herniated == 1]
    assert (herniated.label == herniated.level).all()
    assert (herniated.sagittal_class == herniated.level).all()  # the slice's grading names that disc
    crop = cv2.imread(str(out / manifest.image.iloc[0]), cv2.IMREAD_UNCHANGED)
    assert crop.shape == (32, 48)
    assert f"roi written: {out}" in printed and "masks: gt" in printed
    assert f"no disc cropped in {len(missing)} image" in printed

    # the view comes from the data config; an axial set gives one crop per slice with the slice's label
    ax_out = tmp_path / "ax"
    assert (
        cli_main(
            ["roi", "--data", "phantom_axial", "--root", str(tiny_phantom["axial"]), "--out", str(ax_out)]
        )
        == 0
    )
    ax = pd.read_csv(ax_out / "manifest.csv")
    ax_source = pd.read_csv(tiny_phantom["axial"] / "manifest.csv")
    assert len(ax) == len(ax_source) and list(ax.label) == list(ax_source.axial_class)
    assert json.loads((ax_out / "summary.json").read_text())["view"] == "axial"


def test_roi_column_flags_and_missing_discs(tmp_path, capsys):
    """A data set named by column flags only; an image without a disc is reported, not dropped."""
    root = tmp_path / "src"
    (root / "img").mkdir(parents=True)
    (root / "seg").mkdir()
    rows = []
    for k, has_disc in enumerate([True, True, False]):
        image = np.full((80, 80), 40, np.uint8)
        mask = np.zeros((80, 80), np.uint8)
        if has_disc:
            mask[30:42, 20:60] = 1
            image[mask == 1] = 220
        cv2.imwrite(str(root / "img" / f"s{k}.png"), image)
        cv2.imwrite(str(root / "seg" / f"s{k}.png"), mask * 29)  # SPIDER's gray value for disc
        rows.append({"pid": f"P{k}", "file": f"img/s{k}.png", "seg": f"seg/s{k}.png", "grade": "a"})
    pd.DataFrame(rows).to_csv(root / "index.csv", index=False)
    out = tmp_path / "out"
    args = [
        "roi",
        "--root",
        str(root),
        "--manifest",
        "index.csv",
        "--image-col",
        "file",
        "--mask-col",
        "seg",
        "--patient-col",
        "pid",
        "--label-col",
        "grade",
        "--mask-values",
        "0,29,76,150",
        "--view",
        "axial",
        "--out",
        str(out),
        "--no-clahe",
        "--margin",
        "0",
    ]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest.patient_id) == ["P0", "P1"]
    assert manifest.loc[0, ["x0", "y0", "x1", "y1"]].tolist() == [20, 30, 60, 42]  # margin 0: the disc's box
    assert "no disc cropped in 1 image(s)" in printed and "img/s2.png: no disc contour" in printed
    assert pd.read_csv(out / "missing.csv").patient_id.tolist() == ["P2"]
    # the output folder is never overwritten by accident; a bad flag fails in one line (exit 2)
    assert cli_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite", "--size", "big"]) == 2
    assert "--size" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--root"):
        roi_main(["--out", str(tmp_path / "none")])


@pytest.mark.slow
def test_roi_with_a_trained_segmenter(tiny_phantom, axial_segmenter, tmp_path, capsys):
    ckpt = _best_checkpoint(axial_segmenter)
    out = tmp_path / "pred"
    root = tiny_phantom["axial"]
    # column flags and no mask column: the segmenter supplies the masks
    assert (
        cli_main(
            [
                "roi",
                "--root",
                str(root),
                "--label-col",
                "axial_class",
                "--view",
                "axial",
                "--segmenter",
                str(ckpt),
                "--out",
                str(out),
                "--size",
                "32",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mask_source"] == "segmenter" and summary["segmenter"] == str(ckpt.resolve())
    assert "masks: segmenter" in printed
    manifest, missing = pd.read_csv(out / "manifest.csv"), pd.read_csv(out / "missing.csv")
    source = pd.read_csv(root / "manifest.csv")
    assert len(manifest) + len(missing) == len(source)
    assert len(manifest) >= len(source) // 2, "a segmenter trained a few epochs finds most axial discs"
    # its boxes overlap the ground-truth boxes (same crop geometry, masks from the truth); 12 epochs give a
    # disc Dice of about 0.8 and box IoUs of 0.7-0.95 on this phantom
    truth = tmp_path / "truth"
    assert (
        cli_main(["roi", "--data", "phantom_axial", "--root", str(root), "--out", str(truth), "--size", "32"])
        == 0
    )
    gt = pd.read_csv(truth / "manifest.csv").set_index("source_image")
    pred = manifest.set_index("source_image")
    both = pred.index.intersection(gt.index)
    g, p = gt.loc[both], pred.loc[both]
    inter = (np.minimum(g.x1, p.x1) - np.maximum(g.x0, p.x0)).clip(0) * (
        np.minimum(g.y1, p.y1) - np.maximum(g.y0, p.y0)
    ).clip(0)
    iou = inter / ((g.x1 - g.x0) * (g.y1 - g.y0) + (p.x1 - p.x0) * (p.y1 - p.y0) - inter)
    assert np.median(iou) >= 0.6 and iou.min() >= 0.3, sorted(iou.round(2))

    with pytest.raises(ConfigError, match="not found"):
        roi_main(
            ["--root", str(root), "--segmenter", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "x")]
        )


def test_roi_from_a_box_csv(tmp_path, capsys):
    images = tmp_path / "png"
    images.mkdir()
    cv2.imwrite(str(images / "a1.png"), np.tile(np.linspace(0, 255, 100, dtype=np.uint8), (80, 1)))
    csv = tmp_path / "boxes.csv"
    csv.write_text("image_id,label,xmin,ymin,xmax,ymax\na1,herniation,10,20,50,40\na2,No finding,,,,\n")
    (images / "a2.png").write_bytes((images / "a1.png").read_bytes())
    out = tmp_path / "crops"
    assert (
        cli_main(["roi", "--boxes", str(csv), "--images", str(images), "--out", str(out), "--size", "16"])
        == 0
    )
    printed = capsys.readouterr().out
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest.label.tolist() == ["herniation"]
    assert manifest.loc[0, ["x0", "y0", "x1", "y1"]].tolist() == [10, 20, 50, 40]  # no margin by default
    assert "no disc cropped in 1 image(s)" in printed and "a2: line 3: no box" in printed
    assert cli_main(["roi", "--boxes", str(csv), "--root", str(images), "--out", str(tmp_path / "o")]) == 2


def _sha256s(root: Path) -> dict[str, str]:
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_roi_keeps_going_past_unreadable_images(tmp_path, capsys):
    """3 good slices, a zero-byte image, a truncated one and one whose mask has another size: the good ones
    are cropped, the bad ones listed with their reason, exit 3; inputs unchanged. Nothing readable: exit 2
    and no output folder (nor its staging sibling)."""
    root = tmp_path / "src"
    (root / "img").mkdir(parents=True)
    (root / "seg").mkdir()
    rows = []
    for k in range(6):
        image = np.full((80, 80), 40, np.uint8)
        mask = np.zeros((80, 80), np.uint8)
        mask[30:42, 20:60] = 1
        image[mask == 1] = 220
        cv2.imwrite(str(root / "img" / f"s{k}.png"), image)
        cv2.imwrite(str(root / "seg" / f"s{k}.png"), mask * 85)
        rows.append({"patient_id": f"P{k}", "image": f"img/s{k}.png", "mask": f"seg/s{k}.png"})
    (root / "img" / "s1.png").write_bytes(b"")  # zero bytes
    data = (root / "img" / "s3.png").read_bytes()
    (root / "img" / "s3.png").write_bytes(data[: len(data) // 2])  # truncated
    cv2.imwrite(str(root / "seg" / "s4.png"), np.zeros((40, 40), np.uint8))  # mask of another size
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame([rows[1], rows[3]]).to_csv(root / "bad.csv", index=False)  # nothing readable
    before = _sha256s(root)
    out = tmp_path / "out"
    args = ["roi", "--root", str(root), "--view", "axial", "--out", str(out), "--no-progress"]

    assert cli_main(args) == 3
    printed = capsys.readouterr().out
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest.patient_id.tolist() == ["P0", "P2", "P5"]
    assert all((out / p).is_file() for p in manifest.image)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_images"], summary["n_ok"], summary["n_failed"]) == (6, 3, 3)
    assert summary["view"] == "axial" and summary["n_crops"] == 3  # the keys it had before are kept
    failed = {f["file"]: f for f in summary["failed"]}
    assert sorted(failed) == ["img/s1.png", "img/s3.png", "img/s4.png"]
    assert [failed[f]["line"] for f in sorted(failed)] == [3, 5, 6]
    assert {f["status"] for f in failed.values()} == {"failed"}
    assert "empty (0 bytes)" in failed["img/s1.png"]["reason"]
    assert "truncated" in failed["img/s3.png"]["reason"]
    assert "mask seg/s4.png is 40x40 (HxW) but image img/s4.png is 80x80" in failed["img/s4.png"]["reason"]
    assert "failed: line 3 (img/s1.png): " in printed
    assert printed.rstrip().splitlines()[-1] == f"roi: 6 images, 3 ok, 3 failed (see {out / 'summary.json'})"
    assert _sha256s(root) == before

    # nothing readable: one error, exit 2, and --overwrite leaves the earlier crops as they were
    written = _sha256s(out)
    assert cli_main([*args, "--manifest", "bad.csv", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 image(s) could be read" in err and "line 3 (img/s3.png)" in err
    assert _sha256s(out) == written
    fresh = tmp_path / "new" / "crops"
    assert cli_main([*args[:-3], "--out", str(fresh), "--manifest", "bad.csv"]) == 2
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no staging folder left
    assert _sha256s(root) == before
