"""A corpus of bad inputs through every command that reads files from others (issue 16, item 12).

Each case makes its inputs in its own folder, runs one command (in this process, a few through the installed
console script as a user would) and checks what the README documents: the exit code (spinenet/errors.py), the
file or row named in the message, no traceback, the good inputs' outputs of batch commands, and that NO input
file changed (SHA-256 of every file under the inputs before and after).

Diagnose cases run with random-weight checkpoints; where a case needs real segmentations (an axial slice given
as sagittal, a model failing on one image), ``segment`` answers the phantom's ground-truth masks for the
phantom's own images and raises for a blank image (an injected model fault); other images go to the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from spinenet.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from tests.conftest import REPO, tiny_train_overrides
from tests.test_diagnose import CLS_OVERRIDES, SEG_OVERRIDES, _write_dicom, make_checkpoint
from tests.test_dicom_codecs import _edit
from tests.test_importers import SALT, write_dicom_series
from tests.test_model_trust import _fake_run, _save_hostile

SPINENET = Path(sys.executable).with_name("spinenet")
MASK_VALUES = [0, 85, 170, 255]
SAG_IMAGE = "images/P0001_sagittal_s0.png"


# --------------------------------------------------------------------------------------------- shared assets
@dataclass
class Assets:
    """Made once per module: the 10-patient phantoms, model files, and the run folders of two members."""

    sagittal: Path
    axial: Path
    models: Path  # seg.ckpt, cls.ckpt, b.ckpt (another segmenter), payload.ckpt, empty.ckpt, text.ckpt, hostile.pt


@pytest.fixture(scope="module")
def assets(tiny_phantom, tmp_path_factory) -> Assets:
    models = tmp_path_factory.mktemp("models")
    make_checkpoint(models / "seg.ckpt", SEG_OVERRIDES)
    make_checkpoint(models / "cls.ckpt", CLS_OVERRIDES)
    b = make_checkpoint(models / "b.ckpt", [*SEG_OVERRIDES, "seed=7"])
    data = torch.load(b, weights_only=True)  # another member: other weights, same input and classes
    data["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in data["state_dict"].items()}
    torch.save(data, b)
    (models / "empty.ckpt").write_bytes(b"")
    (models / "text.ckpt").write_text("this is not a checkpoint\n")

    class Payload:  # unpickling it would run a shell command that leaves a file behind
        def __reduce__(self):
            return (os.system, (f"touch '{models / 'PWNED'}'",))

    torch.save({"state_dict": {}, "hyper_parameters": Payload()}, models / "payload.ckpt")
    _save_hostile(models / "hostile.pt")
    return Assets(tiny_phantom["sagittal"], tiny_phantom["axial"], models)


@pytest.fixture(scope="module")
def gt_masks(assets) -> dict[bytes, np.ndarray]:
    from spinenet.data.io import read_image, read_mask

    table = {}
    for root in (assets.sagittal, assets.axial):
        for row in pd.read_csv(root / "manifest.csv", dtype=str).itertuples():
            table[read_image(root / row.image).tobytes()] = read_mask(root / row.mask, MASK_VALUES)
    return table


@pytest.fixture(autouse=True)
def keep_log_handlers():
    """An in-process train/eval lets Hydra point the root logger at this test's captured stderr; later
    cases would log into that closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def ground_truth_segmenter(gt_masks, monkeypatch):
    import spinenet.pipeline.diagnose as diagnose

    real_segment, real_masks = diagnose.segment, diagnose.masks_from_logits

    def ground_truth(images):
        if any(np.ptp(im) == 0 for im in images):
            raise RuntimeError("injected fault: the segmenter fails on a blank image")
        if all(np.asarray(im).tobytes() in gt_masks for im in images):
            return [gt_masks[np.asarray(im).tobytes()] for im in images]
        return None

    def segment(images, segmenter):  # one image at a time, after a batch failed
        return ground_truth(images) or real_segment(images, segmenter)

    def masks_from_logits(logits, images, regions):  # the pipeline's batches
        return ground_truth(images) or real_masks(logits, images, regions)

    monkeypatch.setattr(diagnose, "segment", segment)
    monkeypatch.setattr(diagnose, "masks_from_logits", masks_from_logits)


# --------------------------------------------------------------------------------------------- the table
@dataclass
class Call:
    """What a builder made: the command line, the folders holding inputs (hashed before and after), texts the
    message must hold, files of the good inputs that must exist afterwards, and files that must not."""

    argv: list[str | Path]
    inputs: list[Path]
    named: list[str]
    outputs: list[Path] = field(default_factory=list)
    absent: list[Path] = field(default_factory=list)
    check: Callable[[str], None] | None = None  # more assertions on stdout + stderr and the outputs


@dataclass(frozen=True)
class Case:
    kind: str
    command: str
    build: Callable[[Assets, Path], Call]
    code: int
    subprocess: bool = False

    @property
    def id(self) -> str:
        return f"{self.kind}[{self.command}]"


def data_copy(assets: Assets, tmp: Path, view: str = "sagittal") -> Path:
    return Path(shutil.copytree(getattr(assets, view), tmp / "data"))


def edit_manifest(root: Path, change: Callable[[pd.DataFrame], None], name: str = "manifest.csv") -> Path:
    df = pd.read_csv(root / "manifest.csv", dtype=str)
    change(df)
    df.to_csv(root / name, index=False)
    return root / name


def diagnose_argv(assets: Assets, src: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    return ["diagnose", src, "--segmenter", assets.models / "seg.ckpt", "--classifier", assets.models / "cls.ckpt",
            "--out", out, "--no-progress", "--min-area", "5", *extra]


def scans(assets: Assets, tmp: Path, files: dict[str, bytes | Path] | None = None) -> Path:
    """A folder holding good.png (a phantom sagittal slice) and ``files`` (bytes, or a file to copy)."""
    src = tmp / "scans"
    src.mkdir()
    shutil.copy(assets.sagittal / SAG_IMAGE, src / "good.png")
    for name, content in (files or {}).items():
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copy(content, target)
        else:
            target.write_bytes(content)
    return src


def half_png(assets: Assets) -> bytes:
    data = (assets.sagittal / "images" / "P0002_sagittal_s0.png").read_bytes()
    return data[: len(data) // 2]


def summary_status(out: Path) -> dict[str, dict]:
    return {r["file"]: r for r in json.loads((out / "summary.json").read_text())["inputs"]}


def train_argv(assets: Assets, root: Path, tmp: Path, *extra: str) -> list[str | Path]:
    over = [o for o in tiny_train_overrides(root) if not o.startswith("trainer.max_epochs")]
    return ["train", *over, "trainer.max_epochs=1", "logger=none", f"paths.output_dir={tmp / 'run'}", *extra]


# -- data sets and manifests
def zero_byte_png_check(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    (root / SAG_IMAGE).write_bytes(b"")
    return Call(["data", "check", root], [root], ["line 2 [image]", "is empty (0 bytes)"])


def text_renamed_png_check(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    (root / SAG_IMAGE).write_text("a letter, not a scan\n")
    return Call(["data", "check", root], [root], ["line 2 [image]", f"{root / SAG_IMAGE} is not a readable image"])


def roi_partial(root: Path, out: Path, bad: dict[str, tuple[int, str]]) -> Call:
    """``roi`` past bad rows: ``bad`` maps each bad image (as in the manifest) to its line and a reason
    text; the others are cropped, the bad ones listed in summary.json, the last line counts them."""
    images = set(pd.read_csv(root / "manifest.csv")["image"])
    n = len(images)

    def check(text: str) -> None:
        manifest = pd.read_csv(out / "manifest.csv", dtype=str)
        missing = pd.read_csv(out / "missing.csv", dtype=str)  # read, but no disc found
        assert set(manifest["source_image"]) | set(missing["source_image"]) == images - set(bad)
        assert all((out / p).is_file() for p in manifest["image"])
        failed = {f["file"]: f for f in json.loads((out / "summary.json").read_text())["failed"]}
        assert set(failed) == set(bad), failed
        for image, (line, reason) in bad.items():
            assert failed[image]["line"] == line and failed[image]["status"] == "failed", failed[image]
            assert reason in failed[image]["reason"], failed[image]

    named = [f"failed: line {line} ({image}): " for image, (line, _) in bad.items()]
    named.append(f"roi: {n} images, {n - len(bad)} ok, {len(bad)} failed (see {out / 'summary.json'})")
    return Call(["roi", "--root", root, "--out", out, "--no-progress"], [root], named,
                outputs=[out / "manifest.csv", out / "summary.json"], check=check)


def truncated_png_roi(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    (root / SAG_IMAGE).write_bytes(half_png(a))
    return roi_partial(root, tmp / "crops", {SAG_IMAGE: (2, f"{root / SAG_IMAGE} is not a readable image (truncated")})


def nothing_readable_roi(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    edit_manifest(root, lambda df: df.drop(index=df.index[2:], inplace=True))
    for image in pd.read_csv(root / "manifest.csv")["image"]:
        (root / image).write_bytes(b"")
    return Call(["roi", "--root", root, "--out", tmp / "new" / "crops"], [root],
                ["none of the 2 image(s) could be read", "line 3 (images/P0001_sagittal_s1.png)", "is empty (0 bytes)"],
                absent=[tmp / "new"])


def dotdot_path(manifest_row: int = 2):
    def build(a: Assets, tmp: Path, command: str) -> Call:
        root = data_copy(a, tmp)
        (tmp / "outside").mkdir()
        shutil.copy(root / SAG_IMAGE, tmp / "outside" / "secret.png")
        edit_manifest(root, lambda df: df.__setitem__("image", df["image"].where(df.index != 1, "../outside/secret.png")))
        if command == "data check":
            return Call(["data", "check", root], [root, tmp / "outside"], ["line 3 [image]", "../outside/secret.png leads to"])
        return Call(train_argv(a, root, tmp), [root, tmp / "outside"], ["line 3 [image]", "../outside/secret.png leads to"],
                    absent=[tmp / "run" / "checkpoints"])
    return build


def absolute_path_roi(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    elsewhere = tmp / "elsewhere.png"
    shutil.copy(root / SAG_IMAGE, elsewhere)
    edit_manifest(root, lambda df: df.__setitem__("image", df["image"].where(df.index != 2, str(elsewhere))))
    return Call(["roi", "--root", root, "--out", tmp / "crops"], [root], ["line 4 [image]", f"{elsewhere} leads to"])


def symlink_out_of_root_check(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    (tmp / "outside").mkdir()
    shutil.copy(root / SAG_IMAGE, tmp / "outside" / "secret.png")
    (root / "images" / "link.png").symlink_to(tmp / "outside" / "secret.png")
    edit_manifest(root, lambda df: df.__setitem__("image", df["image"].where(df.index != 0, "images/link.png")))
    return Call(["data", "check", root], [root, tmp / "outside"], ["line 2 [image]", "images/link.png leads to"])


def missing_image_check(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    edit_manifest(root, lambda df: df.__setitem__("image", df["image"].where(df.index != 1, "images/gone.png")))
    return Call(["data", "check", root], [root], ["line 3 [image]", f"no such file: {root / 'images/gone.png'}"])


def missing_image_diagnose(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    csv = tmp / "studies.csv"
    pd.DataFrame({"patient_id": ["P1", "P1"], "image": [str(root / SAG_IMAGE), str(root / "images/gone.png")]}
                 ).to_csv(csv, index=False)
    out = tmp / "out"

    def check(text: str) -> None:
        status = summary_status(out)
        assert status[str(root / "images/gone.png")]["status"] == "failed"
        assert status[str(root / SAG_IMAGE)]["status"] == "ok"

    return Call(["diagnose", "--manifest", csv, "--study-col", "patient_id", "--segmenter", a.models / "seg.ckpt",
                 "--classifier", a.models / "cls.ckpt", "--out", out, "--no-progress", "--min-area", "5"],
                [root, csv], ["images/gone.png", "manifest line 3: file not found"],
                outputs=[out / "P1" / "findings.json", out / "P1" / "overlay.jpg"], check=check)


def _mask_other_size(root: Path) -> None:
    mask = cv2.imread(str(root / "masks" / "P0002_sagittal_s0.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(root / "masks" / "P0002_sagittal_s0.png"), cv2.resize(mask, (48, 48), interpolation=cv2.INTER_NEAREST))


def mask_other_size(command: str):
    def build(a: Assets, tmp: Path) -> Call:
        root = data_copy(a, tmp)
        _mask_other_size(root)
        line = "line 4 [mask]"  # P0001 s0, s1, P0002 s0 (lines 2, 3, 4)
        if command == "data check":
            return Call(["data", "check", root], [root], [line, "masks/P0002_sagittal_s0.png is 48x48"])
        return roi_partial(root, tmp / "crops", {"images/P0002_sagittal_s0.png": (
            4, "mask masks/P0002_sagittal_s0.png is 48x48 (HxW) but image images/P0002_sagittal_s0.png is 64x64")})
    return build


def mask_unmapped_gray(command: str):
    def build(a: Assets, tmp: Path) -> Call:
        root = data_copy(a, tmp)
        path = root / "masks" / "P0001_sagittal_s1.png"
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        mask[0, :3] = 40
        cv2.imwrite(str(path), mask)
        if command == "data check":
            return Call(["data", "check", root, "--data", "phantom_sagittal"], [root], ["line 3 [mask]", f"values 40 in {path}"])
        return roi_partial(root, tmp / "crops", {"images/P0001_sagittal_s1.png": (
            3, f"mask {path} has values outside")})
    return build


def unknown_label(command: str):
    def build(a: Assets, tmp: Path) -> Call:
        root = data_copy(a, tmp)
        edit_manifest(root, lambda df: df.__setitem__("sagittal_class", df["sagittal_class"].where(df.index != 4, "L3-L4")))
        if command == "data check":
            return Call(["data", "check", root, "--data", "phantom_sagittal"], [root], ["line 6 [sagittal_class]", "unknown label 'L3-L4'"])
        return Call(train_argv(a, root, tmp), [root], ["line 6 [sagittal_class]", "unknown label 'L3-L4'"],
                    absent=[tmp / "run" / "checkpoints"])
    return build


def non_utf8_manifest_train(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    (root / "manifest.csv").write_bytes((root / "manifest.csv").read_bytes().replace(b"P0003", b"P\xe90003", 1))
    return Call(train_argv(a, root, tmp), [root], [f"{root / 'manifest.csv'} is not UTF-8 text", "line 6"],
                absent=[tmp / "run" / "checkpoints"])


def missing_column(command: str):
    def build(a: Assets, tmp: Path) -> Call:
        root = data_copy(a, tmp)
        edit_manifest(root, lambda df: df.drop(columns=["mask"], inplace=True))
        named = [str(root / "manifest.csv"), "no column 'mask'"]
        if command == "data check":
            return Call(["data", "check", root], [root], named)
        return Call(["roi", "--root", root, "--out", tmp / "crops"], [root], named)
    return build


def empty_manifest_check(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    (root / "manifest.csv").write_bytes(b"")
    return Call(["data", "check", root], [root], [f"cannot read {root / 'manifest.csv'} as CSV"])


def header_only_manifest_roi(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    text = (root / "manifest.csv").read_text()
    (root / "manifest.csv").write_text(text.splitlines()[0] + "\n")
    return Call(["roi", "--root", root, "--out", tmp / "crops"], [root], [f"{root / 'manifest.csv'} has no rows"])


def patient_in_two_splits_train(a: Assets, tmp: Path) -> Call:
    from spinenet.data.splits import FORMAT, VERSION

    pids = [f"P{i:04d}" for i in range(1, 11)]
    splits = tmp / "splits.json"
    splits.write_text(json.dumps({"format": FORMAT, "version": VERSION,
                                  "splits": {"train": pids[:8], "val": pids[7:9], "test": pids[9:]}}))
    return Call(train_argv(a, a.sagittal, tmp, f"data.split.file={splits}"), [splits, a.sagittal],
                [str(splits), "patient 'P0008' in train and val"], absent=[tmp / "run" / "checkpoints"])


def csv_formula_roi(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    edit_manifest(root, lambda df: df.__setitem__("note", '=HYPERLINK("http://x")'))
    out = tmp / "crops"

    def check(text: str) -> None:
        crops = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
        assert len(crops) and set(crops["note"]) == {"'=HYPERLINK(\"http://x\")"}, crops["note"]
        assert all((out / p).is_file() for p in crops["image"])

    return Call(["roi", "--root", root, "--out", out, "--no-progress"], [root], ["roi written"],
                outputs=[out / "manifest.csv", out / "summary.json"], check=check)


# -- where outputs go
def out_is_input_roi(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    return Call(["roi", "--root", root, "--out", root, "--overwrite"], [root], [f"--out {root} is the data root"])


def out_is_input_import(a: Assets, tmp: Path) -> Call:
    write_dicom_series(tmp / "dcm")
    return Call(["data", "import", tmp / "dcm", "--out", tmp / "dcm", "--salt", SALT, "--overwrite", "--no-progress"],
                [tmp / "dcm"], [f"--out {tmp / 'dcm'} is the DICOM folder"])


def out_inside_input_import(a: Assets, tmp: Path) -> Call:
    write_dicom_series(tmp / "dcm")
    return Call(["data", "import", tmp / "dcm", "--out", tmp / "dcm" / "png", "--salt", SALT, "--no-progress"],
                [tmp / "dcm"], [f"--out {tmp / 'dcm' / 'png'} lies inside the DICOM folder"], absent=[tmp / "dcm" / "png"])


def out_inside_input_diagnose(a: Assets, tmp: Path) -> Call:
    src = scans(a, tmp)
    return Call(diagnose_argv(a, src, src / "findings"), [src], [f"--out {src / 'findings'} lies inside the input"],
                absent=[src / "findings"])


def overwrite_foreign(command: str):
    def build(a: Assets, tmp: Path) -> Call:
        mine = tmp / "mine"
        mine.mkdir()
        (mine / "thesis.docx").write_text("three years of work")
        named = [f"{mine} was not written by spinenet (no .spinenet-output)"]
        if command == "diagnose":
            src = scans(a, tmp)
            return Call(diagnose_argv(a, src, mine, "--overwrite"), [src, mine], named)
        root = data_copy(a, tmp)
        return Call(["roi", "--root", root, "--out", mine, "--overwrite"], [root, mine], named)
    return build


# -- scans through diagnose (fault isolation)
def bad_file_in_folder(name: str, content: Callable[[Assets], bytes], reason: str, status: str = "failed"):
    def build(a: Assets, tmp: Path) -> Call:
        src = scans(a, tmp, {name: content(a)})
        out = tmp / "out"

        def check(text: str) -> None:
            got = summary_status(out)
            assert got[name]["status"] == status and reason in got[name]["reason"], got[name]
            # with the ground-truth segmenter (in this process) the good image is "ok"; a subprocess runs the
            # random-weight checkpoint, which may find no disc: diagnosed all the same
            assert got["good.png"]["status"] not in ("failed", "skipped"), got["good.png"]

        return Call(diagnose_argv(a, src, out), [src], [f"{status}: {name}: ", reason],
                    outputs=[out / "good" / "findings.json", out / "good" / "overlay.jpg", out / "index.html"], check=check)
    return build


def blank_png(a: Assets) -> bytes:
    return cv2.imencode(".png", np.full((64, 64), 128, np.uint8))[1].tobytes()


def dicom_slice_without_pixels(a: Assets, tmp: Path) -> Call:
    from spinenet.data.io import read_image

    image = read_image(a.sagittal / SAG_IMAGE)
    _write_dicom(tmp / "series", [image, image, image], no_pixels=(1,))
    out = tmp / "out"

    def check(text: str) -> None:
        images = json.loads((out / "study1" / "findings.json").read_text())["images"]
        assert [im["status"] for im in images][1] == "failed" and images[1]["reason"] == "DICOM file without pixel data"
        assert images[0]["status"] != "failed" and images[2]["status"] != "failed"

    return Call(diagnose_argv(a, tmp / "series", out), [tmp / "series"], ["series1_slice_001", "without pixel data"],
                outputs=[out / "study1" / "overlay.jpg", out / "study1" / "report.txt"], check=check)


def axial_as_sagittal(a: Assets, tmp: Path) -> Call:
    src = scans(a, tmp, {"axial.png": a.axial / "images" / "P0001_axial_s0.png"})
    out = tmp / "out"

    def check(text: str) -> None:
        got = summary_status(out)
        assert got["axial.png"]["status"] == "implausible for sagittal", got["axial.png"]
        assert got["good.png"]["status"] == "ok"
        doc = json.loads((out / "axial" / "findings.json").read_text())
        assert doc["findings"] == {} and doc["images"][0]["discs"] == []  # no level named
        assert "axial.png: implausible for sagittal, no level named" in (out / "axial" / "report.txt").read_text()

    return Call(diagnose_argv(a, src, out), [src], ["1 implausible"], outputs=[out / "good" / "findings.json"],
                check=check)


def html_in_folder_name(a: Assets, tmp: Path) -> Call:
    evil = "<img src=x onerror=alert(1)>"
    src = scans(a, tmp, {f"{evil}/scan.png": a.sagittal / SAG_IMAGE})
    out = tmp / "out"

    def check(text: str) -> None:
        page = (out / "index.html").read_text()
        assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page
        (folder,) = [f for s, f in json.loads((out / "summary.json").read_text())["study_folders"].items() if evil in s]
        assert "<" not in folder and (out / folder / "findings.json").is_file()

    return Call(diagnose_argv(a, src, out), [src], ["diagnosis written"], outputs=[out / "good" / "findings.json"],
                check=check)


def colliding_study_ids(a: Assets, tmp: Path) -> Call:
    root = data_copy(a, tmp)
    csv = tmp / "studies.csv"
    ids = ["AB 1", "AB_1", "ab_1", "p/1"]
    pd.DataFrame({"study": ids, "image": [str(root / f"images/P000{k + 1}_sagittal_s0.png") for k in range(4)]}
                 ).to_csv(csv, index=False)
    out = tmp / "out"

    def check(text: str) -> None:
        folders = json.loads((out / "summary.json").read_text())["study_folders"]
        assert set(folders) == set(ids) and len({f.lower() for f in folders.values()}) == 4, folders
        for study, folder in folders.items():
            assert json.loads((out / folder / "findings.json").read_text())["study"] == study
        assert sorted(p.name for p in tmp.iterdir()) == ["data", "out", "studies.csv"]  # nothing beside --out

    return Call(["diagnose", "--manifest", csv, "--study-col", "study", "--segmenter", a.models / "seg.ckpt",
                 "--classifier", a.models / "cls.ckpt", "--out", out, "--no-progress", "--min-area", "5"],
                [root, csv], ["4 studies"], check=check)


def model_fails_on_one_image(a: Assets, tmp: Path) -> Call:
    return bad_file_in_folder("blank.png", blank_png, "could not be diagnosed: RuntimeError: injected fault")(a, tmp)


# -- DICOM import
def import_with(edit: str):
    def build(a: Assets, tmp: Path) -> Call:
        write_dicom_series(tmp / "dcm")
        if edit == "no pixels":
            _edit(tmp / "dcm" / "IM0002", PixelData=None)
            named, file, status = ["IM0002", "no pixel data"], "IM0002", "failed"
        else:
            _edit(tmp / "dcm" / "IM0003", BurnedInAnnotation="YES")
            named, file, status = ["IM0003", "BurnedInAnnotation is YES", "--allow-burned-in"], "IM0003", "refused"
        out = tmp / "out"

        def check(text: str) -> None:
            rows = pd.read_csv(out / "manifest.csv", dtype=str)
            assert len(rows) == 7 and all((out / r).is_file() for r in rows["image"])  # 8 slices less the bad one
            files = {f["file"]: f for f in json.loads((out / "import_summary.json").read_text())["files"]}
            assert files[file]["status"] == status

        return Call(["data", "import", tmp / "dcm", "--out", out, "--salt", SALT, "--no-progress"], [tmp / "dcm"],
                    named, outputs=[out / "manifest.csv", out / "import_summary.json"], check=check)
    return build


# -- model files
def bad_checkpoint(name: str, command: str, reason: str):
    def build(a: Assets, tmp: Path) -> Call:
        ckpt = a.models / name
        absent = [a.models / "PWNED"]
        if command == "eval":
            argv = ["eval", f"ckpt_path={ckpt}", f"data.dataset.root={a.sagittal}", f"paths.output_dir={tmp / 'ev'}"]
        elif command == "ensemble":
            argv = ["ensemble", ckpt, a.models / "seg.ckpt", "--out", tmp / "ens", "--no-progress"]
            absent.append(tmp / "ens")
        else:
            argv = train_argv(a, a.sagittal, tmp, f"ckpt_path={ckpt}")
            absent.append(tmp / "run" / "checkpoints")
        return Call(argv, [a.models, a.sagittal], [str(ckpt), reason], absent=absent)
    return build


def torchscript_without_flag(a: Assets, tmp: Path) -> Call:
    src = scans(a, tmp)
    hostile = a.models / "hostile.pt"

    def check(text: str) -> None:
        assert "HOSTILE" not in text

    return Call(["diagnose", src, "--segmenter", hostile, "--classifier", a.models / "cls.ckpt", "--out", tmp / "out"],
                [src, a.models], [str(hostile), "it was not opened", "--allow-torchscript"], absent=[tmp / "out"],
                check=check)


def sidecar_sha_mismatch(a: Assets, tmp: Path) -> Call:
    from spinenet.loading import EXPORT_FORMAT

    src, export = scans(a, tmp), tmp / "export"
    export.mkdir()
    (export / "segmenter.onnx").write_bytes(b"\x08\x07" + b"replaced after export" * 10)
    (export / "segmenter.json").write_text(json.dumps({"format": EXPORT_FORMAT, "preprocessing": {},
                                                      "sha256": {"segmenter.onnx": hashlib.sha256(b"original").hexdigest()}}))
    return Call(["diagnose", src, "--segmenter", export / "segmenter.onnx", "--classifier", a.models / "cls.ckpt",
                 "--out", tmp / "out"], [src, export],
                [f"model file {export / 'segmenter.onnx'} does not match the SHA-256 in its sidecar"], absent=[tmp / "out"])


def runs(a: Assets, tmp: Path) -> tuple[Path, Path]:
    from spinenet.data.splits import save_splits

    first, second = _fake_run(tmp / "runs" / "a", a.models / "seg.ckpt"), _fake_run(tmp / "runs" / "b", a.models / "b.ckpt")
    pids = [f"P{i:04d}" for i in range(1, 11)]
    save_splits({"train": pids[:6], "val": pids[6:8], "test": pids[8:]}, first / "splits.json")
    return first, second


def copied_run_points_outside(a: Assets, tmp: Path) -> Call:
    first, second = runs(a, tmp)
    copy = Path(shutil.copytree(first, tmp / "runs" / "copy"))
    (copy / "checkpoints" / "epoch_001.ckpt").unlink()  # metrics.json still names the original's absolute path
    return Call(["ensemble", copy, second, "--out", tmp / "ens", "--data-root", a.sagittal, "--no-progress"],
                [tmp / "runs", a.models], [f"run folder {copy}", "is not inside the folder"], absent=[tmp / "ens"])


def member_replaced(a: Assets, tmp: Path) -> Call:
    first, second = runs(a, tmp)
    shutil.copy(a.models / "b.ckpt", first / "checkpoints" / "epoch_001.ckpt")
    return Call(["ensemble", first, second, "--out", tmp / "ens", "--data-root", a.sagittal, "--no-progress"],
                [tmp / "runs", a.models], [str(first / "checkpoints" / "epoch_001.ckpt"),
                                            "does not match the SHA-256 its training recorded"], absent=[tmp / "ens"])


def identical_members(a: Assets, tmp: Path) -> Call:
    first, second = runs(a, tmp)
    copy = Path(shutil.copytree(first, tmp / "runs" / "a_copy"))
    out = tmp / "ens"

    def check(text: str) -> None:
        report = json.loads((out / "report.json").read_text())
        assert [m["name"] for m in report["members"]] == ["a", "b"]
        assert "**Counted once:** a_copy" in (out / "report.md").read_text()

    # predictions cached outside the run folders (by default they go into each member's predictions/)
    return Call(["ensemble", first, second, copy, "--out", out, "--data-root", a.sagittal, "--step", "0.5",
                 "--cache-dir", tmp / "cache", "--no-progress"], [tmp / "runs", a.models, a.sagittal], ["ensemble: 2 member(s)"],
                outputs=[out / "ensemble.json", out / "report.md"], check=check)


CASES = [
    Case("zero-byte PNG", "data check", zero_byte_png_check, EXIT_FAILED),
    Case("zero-byte PNG", "diagnose", bad_file_in_folder("zero.png", lambda a: b"", "empty file (0 bytes)"), EXIT_PARTIAL),
    Case("truncated PNG", "roi", truncated_png_roi, EXIT_PARTIAL),
    Case("truncated PNG", "diagnose", bad_file_in_folder("cut.png", half_png, "truncated or corrupt PNG"), EXIT_PARTIAL,
         subprocess=True),
    Case(".txt among images", "diagnose", bad_file_in_folder("notes.txt", lambda a: b"hello", "not an image (.txt",
                                                             status="skipped"), EXIT_PARTIAL),
    Case("text file renamed .png", "data check", text_renamed_png_check, EXIT_FAILED),
    Case("text file renamed .png", "diagnose", bad_file_in_folder("scan.png", lambda a: b"a letter\n", "not a readable image (no PNG, JPEG"),
         EXIT_PARTIAL),
    Case("DICOM without pixel data", "data import", import_with("no pixels"), EXIT_PARTIAL),
    Case("DICOM slice without pixels in a series", "diagnose", dicom_slice_without_pixels, EXIT_PARTIAL),
    Case("burned-in-annotation DICOM", "data import", import_with("burned in"), EXIT_PARTIAL, subprocess=True),
    Case("manifest row with ../", "data check", lambda a, t: dotdot_path()(a, t, "data check"), EXIT_FAILED),
    Case("manifest row with ../", "train", lambda a, t: dotdot_path()(a, t, "train"), EXIT_USAGE),
    Case("absolute path in manifest", "roi", absolute_path_roi, EXIT_USAGE),
    Case("symlink out of the root", "data check", symlink_out_of_root_check, EXIT_FAILED),
    Case("missing image file", "data check", missing_image_check, EXIT_FAILED),
    Case("missing image file", "diagnose", missing_image_diagnose, EXIT_PARTIAL),
    Case("mask of another size", "data check", mask_other_size("data check"), EXIT_FAILED),
    Case("mask of another size", "roi", mask_other_size("roi"), EXIT_PARTIAL),
    Case("mask with unmapped gray value", "data check", mask_unmapped_gray("data check"), EXIT_FAILED),
    Case("mask with unmapped gray value", "roi", mask_unmapped_gray("roi"), EXIT_PARTIAL),
    Case("no readable image at all", "roi", nothing_readable_roi, EXIT_USAGE),
    Case("unknown label", "data check", unknown_label("data check"), EXIT_FAILED),
    Case("unknown label", "train", unknown_label("train"), EXIT_USAGE),
    Case("non-UTF-8 manifest", "train", non_utf8_manifest_train, EXIT_USAGE),
    Case("missing manifest column", "data check", missing_column("data check"), EXIT_FAILED),
    Case("missing manifest column", "roi", missing_column("roi"), EXIT_USAGE),
    Case("empty (0-byte) manifest", "data check", empty_manifest_check, EXIT_FAILED),
    Case("header-only manifest", "roi", header_only_manifest_roi, EXIT_USAGE),
    Case("patient in two splits", "train", patient_in_two_splits_train, EXIT_USAGE),
    Case("--out equal to the input", "roi", out_is_input_roi, EXIT_USAGE, subprocess=True),
    Case("--out equal to the input", "data import", out_is_input_import, EXIT_USAGE),
    Case("--out inside the input", "data import", out_inside_input_import, EXIT_USAGE),
    Case("--out inside the input", "diagnose", out_inside_input_diagnose, EXIT_USAGE),
    Case("--overwrite on a folder spinenet did not write", "diagnose", overwrite_foreign("diagnose"), EXIT_USAGE),
    Case("--overwrite on a folder spinenet did not write", "roi", overwrite_foreign("roi"), EXIT_USAGE),
    Case("pickle-payload checkpoint", "eval", bad_checkpoint("payload.ckpt", "eval", "it was NOT executed"),
         EXIT_USAGE, subprocess=True),
    Case("pickle-payload checkpoint", "ensemble", bad_checkpoint("payload.ckpt", "ensemble", "it was NOT executed"),
         EXIT_USAGE),
    Case("pickle-payload checkpoint", "train", bad_checkpoint("payload.ckpt", "train", "it was NOT executed"), EXIT_USAGE),
    Case("zero-byte checkpoint", "eval", bad_checkpoint("empty.ckpt", "eval", "file is empty"), EXIT_USAGE),
    Case("text file as checkpoint", "ensemble", bad_checkpoint("text.ckpt", "ensemble", "not a readable PyTorch checkpoint"),
         EXIT_USAGE),
    Case("checkpoint of the other task", "train", bad_checkpoint("cls.ckpt", "train", "is a classification checkpoint"),
         EXIT_USAGE),
    Case("checkpoint of the other task", "eval", bad_checkpoint("cls.ckpt", "eval", "does not fit the checkpoint"),
         EXIT_USAGE),
    Case("TorchScript without --allow-torchscript", "diagnose", torchscript_without_flag, EXIT_USAGE),
    Case("sidecar SHA-256 mismatch", "diagnose", sidecar_sha_mismatch, EXIT_USAGE),
    Case("copied run folder pointing outside", "ensemble", copied_run_points_outside, EXIT_USAGE),
    Case("member checkpoint replaced after training", "ensemble", member_replaced, EXIT_USAGE),
    Case("two identical ensemble members", "ensemble", identical_members, EXIT_OK),
    Case("axial image given as sagittal", "diagnose", axial_as_sagittal, EXIT_OK),
    Case("model fails on one image", "diagnose", model_fails_on_one_image, EXIT_PARTIAL),
    Case("CSV formula cell in a manifest", "roi", csv_formula_roi, EXIT_OK),
    Case("HTML in a folder name", "diagnose", html_in_folder_name, EXIT_OK),
    Case("study ids colliding after sanitising", "diagnose", colliding_study_ids, EXIT_OK),
]


# --------------------------------------------------------------------------------------------- the test
def checksums(paths: list[Path]) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (a path may be a file); symlinks not followed."""
    out = {}
    for root in paths:
        for p in [root] if root.is_file() else sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str], in_process: bool, capfd, cwd: Path) -> tuple[int, str, str]:
    if not in_process:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
        env.pop("HYDRA_FULL_ERROR", None)
        proc = subprocess.run([str(SPINENET), *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout, proc.stderr
    from spinenet.cli import main

    capfd.readouterr()
    rc = main(argv)  # an exception other than the one-line user errors fails the test: a traceback
    out, err = capfd.readouterr()
    return rc, out, err


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, assets: Assets, tmp_path: Path, capfd, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # train/eval write their Hydra folders under the launch folder
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    work = tmp_path / "case"
    work.mkdir()
    call = case.build(assets, work)
    before = checksums(call.inputs)
    assert before, "the case has no input files"
    rc, out, err = run_cli([str(a) for a in call.argv], not case.subprocess, capfd, tmp_path)
    text = out + err
    assert rc == case.code, f"exit {rc}, expected {case.code}\n{text[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    for words in call.named:
        assert words in text, (words, text[-3000:])
    if case.code == EXIT_USAGE:  # "spinenet <command>: error: ..." (bad manifests: every bad row below it)
        (line,) = [x for x in err.splitlines() if "error:" in x]
        assert line.startswith(f"spinenet {case.command}: error: "), line
        assert all(w in err for w in call.named), (call.named, err)
    for path in call.outputs:
        assert path.is_file(), f"{path} missing after exit {rc}\n{text[-2000:]}"
    for path in call.absent:
        assert not path.exists(), path
    if call.check:
        call.check(text)
    assert checksums(call.inputs) == before, "an input file changed"


def test_the_corpus_covers_every_command_and_25_kinds() -> None:
    assert {c.command for c in CASES} >= {"data check", "train", "eval", "roi", "diagnose", "data import", "ensemble"}
    assert len({c.kind for c in CASES}) >= 25
    assert len({c.id for c in CASES}) == len(CASES)
