"""Files and folders from others: outputs never destroy input, manifest paths stay inside the data root,
generated data is never left half-written, bad files get one-line messages, CSV and Markdown outputs are safe.

CLI cases run ``spinenet`` in a subprocess, as a user would, and check the exit code, that the message names
the file or row, that no traceback reaches stderr and that every input file is unchanged."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from spinenet.data.io import read_image, read_mask
from spinenet.data.manifest import DatasetSpec, check_dataset, load_manifest
from spinenet.data.phantom import generate_on_first_use, generate_phantom
from spinenet.errors import ConfigError, DataError
from spinenet.utils.markdown import md_code, md_text
from spinenet.utils.outdir import MARKER, prepare_output_dir
from spinenet.utils.safe_csv import neutralise_frame
from tests.conftest import REPO

SPINENET = Path(sys.executable).with_name("spinenet")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
SYNTH = {"view": "sagittal", "patients": 2, "seed": 0, "size": 64, "slices_per_patient": 1}


def spinenet(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SPINENET), *map(str, args)], env=ENV, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def checksums(root: Path) -> dict[str, str]:
    """Every file under ``root`` (symlinks not followed) with its SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


class Result:
    """What a CLI call left: exit code, stdout, stderr (a subprocess's, or captured in this process)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """``spinenet`` in this process (its import costs ~10 s per subprocess on a busy machine): an exception
    other than the one-line user errors would fail the test, as a traceback would show in a terminal."""
    from spinenet.cli import main

    def call(*args: str | Path) -> Result:
        capsys.readouterr()
        rc = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(rc, captured.out, captured.err)

    return call


def refused(proc: subprocess.CompletedProcess | Result, *words: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)


@pytest.fixture
def phantom(tmp_path) -> Path:
    generate_phantom(tmp_path / "data", **SYNTH)
    return tmp_path / "data"


# --- 2. never destroy input -------------------------------------------------------------------------------
def test_roi_refuses_an_out_that_is_or_lies_inside_its_input(phantom, tmp_path, cli):
    before = checksums(phantom)
    # the reported case, as a user runs it: this deleted the images and the manifest
    refused(spinenet("roi", "--root", phantom, "--out", phantom, "--overwrite"), str(phantom), "is the data root")
    for out in (phantom / "crops", phantom / "images"):
        refused(cli("roi", "--root", phantom, "--out", out, "--overwrite"), str(out), "lies inside the data root")
    refused(cli("roi", "--root", phantom / "images" / "..", "--out", tmp_path, "--overwrite"), "contains")
    assert checksums(phantom) == before


def test_roi_overwrite_clears_only_a_spinenet_output(phantom, tmp_path, cli):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    proc = cli("roi", "--root", phantom, "--out", mine, "--overwrite")
    refused(proc, f"{mine} was not written by spinenet (no {MARKER})")
    assert (mine / "notes.txt").read_text() == "keep"
    crops = tmp_path / "crops"
    assert cli("roi", "--root", phantom, "--out", crops).returncode == 0
    assert json.loads((crops / MARKER).read_text())["command"] == "roi"
    refused(cli("roi", "--root", phantom, "--out", crops), "not empty", "--overwrite")
    assert cli("roi", "--root", phantom, "--out", crops, "--overwrite").returncode == 0


def test_synth_and_import_refuse_to_overwrite_a_folder_spinenet_did_not_write(tmp_path, cli):
    user = tmp_path / "my_data"
    (user / "images").mkdir(parents=True)
    (user / "images" / "scan.png").write_bytes(b"not ours")
    (user / "manifest.csv").write_text("patient_id,image\n1,images/scan.png\n")
    before = checksums(user)
    refused(cli("data", "synth", "--out", user, "--patients", "2", "--size", "64", "--overwrite"),
            "was not written by spinenet")
    vol = tmp_path / "vol.nii.gz"
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16)), str(vol))
    proc = spinenet("data", "import", vol, "--out", user, "--overwrite", "--keep-ids")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "was not written by spinenet" in proc.stderr
    proc = cli("data", "import", tmp_path, "--out", tmp_path / "imported", "--keep-ids")
    assert proc.returncode == 2 and "lies inside the volume folder" in proc.stderr, proc.stderr
    assert checksums(user) == before
    # a folder that synth wrote may be overwritten
    out = tmp_path / "synth"
    assert cli("data", "synth", "--out", out, "--patients", "2", "--size", "64").returncode == 0
    assert cli("data", "synth", "--out", out, "--patients", "1", "--size", "64", "--overwrite").returncode == 0
    assert len(pd.read_csv(out / "manifest.csv")) == 3  # 1 patient x 3 slices


def test_report_and_diagnose_refuse_outputs_over_their_inputs(tmp_path, cli):
    runs = tmp_path / "runs"
    (runs / "0").mkdir(parents=True)
    (runs / "0" / "metrics.json").write_text("{}")
    before = checksums(runs)
    refused(cli("report", runs, "--out", runs, "--overwrite"), "is the input folder")
    refused(cli("report", runs, "--out", tmp_path, "--overwrite"), "contains the input folder")
    (tmp_path / "scan.png").write_bytes(b"x")
    proc = cli("diagnose", tmp_path / "scan.png", "--segmenter", runs / "seg.ckpt",
                    "--classifier", f"sagittal={runs / 'cls.ckpt'}", "--out", runs, "--overwrite")
    refused(proc, "contains the model file")
    assert checksums(runs) == before


def test_prepare_output_dir_resolves_symlinks_and_marks(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.txt").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(data)
    with pytest.raises(ConfigError, match="is the data root"):
        prepare_output_dir(link, [(data, "data root")], overwrite=True)
    with pytest.raises(ConfigError, match="lies inside the checkpoint folder"):
        prepare_output_dir(link / "out", [(data, "checkpoint folder")])
    out = prepare_output_dir(tmp_path / "new", [(data, "data root")], command="export")
    assert json.loads((out / MARKER).read_text())["command"] == "export"
    (out / "old.onnx").write_text("x")
    prepare_output_dir(out, [], overwrite=True, command="export")
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    assert (data / "x.txt").read_text() == "x"


# --- 3. paths stay inside the data root -------------------------------------------------------------------
def _escape_rows(phantom: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    cv2.imwrite(str(outside / "secret.png"), np.zeros((64, 64), np.uint8))
    (phantom / "images" / "link.png").symlink_to(outside / "secret.png")
    df = pd.read_csv(phantom / "manifest.csv", dtype=str)
    extra = df.iloc[[0, 0, 0]].copy()
    extra["image"] = ["../outside/secret.png", str(outside / "secret.png"), "images/link.png"]
    extra["mask"] = df["mask"].iloc[0]
    pd.concat([df, extra]).to_csv(phantom / "manifest.csv", index=False)


def test_manifest_paths_outside_the_root_are_data_errors(phantom, tmp_path, cli):
    n = len(pd.read_csv(phantom / "manifest.csv"))
    _escape_rows(phantom, tmp_path)
    before = checksums(phantom)
    report = check_dataset(DatasetSpec(phantom, label_col="sagittal_class", mask_values=[0, 85, 170, 255]))
    outside = [p for p in report.problems if p.kind == "outside_root"]
    assert [(p.row, p.column) for p in outside] == [(n + 2, "image"), (n + 3, "image"), (n + 4, "image")]
    assert "allow_outside_root" in outside[0].message
    with pytest.raises(DataError, match=rf"line {n + 2} \[image\]: \.\./outside/secret\.png leads to"):
        load_manifest(DatasetSpec(phantom))
    ok = check_dataset(DatasetSpec(phantom, mask_values=[0, 85, 170, 255], allow_outside_root=True))
    assert not [p for p in ok.problems if p.kind == "outside_root"]
    proc = spinenet("data", "check", phantom)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"line {n + 4} [image]: images/link.png leads to" in proc.stdout + proc.stderr
    refused(cli("roi", "--root", phantom, "--out", tmp_path / "crops"), f"line {n + 2} [image]")
    assert checksums(phantom) == before


# --- 8. no stuck state ------------------------------------------------------------------------------------
def test_a_killed_generation_is_generated_again(tmp_path, caplog):
    root = tmp_path / "phantom"
    (root / "images").mkdir(parents=True)  # what a run killed while writing slices left behind
    (root / "images" / "P0001_sagittal_s0.png").write_bytes(b"half")
    stale = tmp_path / f".phantom.partial-{os.getpid() + 1}"  # a killed run's temporary folder
    (stale / "images").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        generate_on_first_use(root, SYNTH)
    assert "incomplete" in caplog.text and "interrupted" in caplog.text
    assert len(pd.read_csv(root / "manifest.csv")) == 2 and (root / MARKER).is_file()
    assert read_image(root / "images" / "P0001_sagittal_s0.png").shape == (64, 64)
    assert not stale.exists()
    # a folder with files of its own is not deleted
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "thesis.docx").write_text("keep")
    with pytest.raises(DataError, match="thesis.docx"):
        generate_on_first_use(mine, SYNTH)
    assert (mine / "thesis.docx").read_text() == "keep"


def _generate(root: str) -> None:
    generate_on_first_use(Path(root), SYNTH)


def test_concurrent_first_runs_make_one_identical_dataset(tmp_path):
    root = tmp_path / "phantom"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_generate, args=(str(root),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    generate_phantom(tmp_path / "reference", **SYNTH)
    ref = {k: v for k, v in checksums(tmp_path / "reference").items() if k != MARKER}
    assert {k: v for k, v in checksums(root).items() if k != MARKER} == ref
    assert sorted(p.name for p in tmp_path.iterdir()) == [".phantom.lock", "phantom", "reference"]


# --- 9. clear messages and safe outputs -------------------------------------------------------------------
def test_empty_and_corrupt_images_are_named(phantom, cli):
    img = phantom / "images" / "P0001_sagittal_s0.png"
    img.write_bytes(b"")
    for read in (read_image, lambda p: read_mask(p, [0, 85])):
        with pytest.raises(DataError, match=rf"image file {img} is empty \(0 bytes\)"):
            read(img)
    good = (phantom / "images" / "P0002_sagittal_s0.png").read_bytes()
    img.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=rf"{img} is not a readable image \(truncated or corrupt"):
        read_image(img)
    img.write_bytes(b"")
    proc = cli("data", "check", phantom)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "line 2 [image]" in proc.stdout and "is empty (0 bytes)" in proc.stdout


def test_a_manifest_that_is_not_utf8_is_named_with_its_line(phantom, tmp_path, cli):
    text = (phantom / "manifest.csv").read_bytes().replace(b"P0002", b"P\xe90002")
    (phantom / "manifest.csv").write_bytes(text)
    before = checksums(phantom)
    proc = cli("data", "check", phantom)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{phantom / 'manifest.csv'} is not UTF-8 text: byte 0xe9 at line 3, column 2" in proc.stdout
    refused(cli("roi", "--root", phantom, "--out", tmp_path / "c"), "is not UTF-8 text", "line 3")
    assert checksums(phantom) == before


def test_csv_outputs_neutralise_formulas_but_keep_numbers(phantom, tmp_path, cli):
    df = pd.read_csv(phantom / "manifest.csv", dtype=str)
    df["patient_id"] = ["=HYPERLINK(\"http://x\")", "-1"]
    df["note"] = ["@SUM(A1)", "+cmd"]
    df.to_csv(phantom / "manifest.csv", index=False)
    assert cli("roi", "--root", phantom, "--out", tmp_path / "crops").returncode == 0
    out = pd.read_csv(tmp_path / "crops" / "manifest.csv", dtype=str)
    missing = pd.read_csv(tmp_path / "crops" / "missing.csv", dtype=str)  # P0002's slice holds no disc
    assert {*out["patient_id"], *missing["patient_id"]} == {"'=HYPERLINK(\"http://x\")", "-1"}
    assert set(out["note"]) == {"'@SUM(A1)"}
    frame = neutralise_frame(pd.DataFrame({"x": [-1.5, 2.0], "s": ["-3", "-a"], "=c": ["ok", "=1"]}))
    assert frame["x"].tolist() == [-1.5, 2.0] and frame["s"].tolist() == ["-3", "'-a"]
    assert list(frame.columns) == ["x", "s", "'=c"]


def test_markdown_reports_escape_folder_names(tmp_path, cli):
    evil = "<img src=x onerror=alert(1)>"
    run = tmp_path / evil
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"task": "classification", "monitor": "val/auroc",
                                                  "best_score": 0.8, "test": {"auroc": 0.7}}))
    proc = cli("report", run, "--out", tmp_path / "rep")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    outside_code = re.sub(r"(`+).*?\1", "", text)  # inside a code span the name is literal text
    assert "<img" not in outside_code and "# Report: &lt;img src=x onerror=alert(1)&gt;" in text
    assert md_text("a|b*c`d<") == "a\\|b\\*c\\`d&lt;"
    assert md_code("a`b") == "`` a`b ``"
