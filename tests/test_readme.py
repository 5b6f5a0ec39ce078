"""The README is executable: every ```bash block runs verbatim, as a user would type it, in an empty folder.

Blocks run in README order, as bash scripts (``set -e``), in one shared empty folder, with a clean environment
and the installed ``spinenet`` command (not ``python -m``). The one change is the knob the README documents
for CI: ``SPINENET_SMOKE=1`` cuts every training run to a few batches and every benchmark to its smallest size.

An HTML comment on the line before a block says what it needs (it is invisible on GitHub):

- ``<!-- readme-test: skip: <reason> -->``: not run; the reason is reported (e.g. a SLURM cluster).
- ``<!-- readme-test: needs: spider -->``: run with ``SPIDER_DIR`` set when the real SPIDER data is present.
- ``<!-- readme-test: fixture: NAME[, NAME] -->``: files the block's commands name (a DICOM series, a folder in
  another tool's layout) are made first by the fixture of that name below.

The commands are read from README.md each time: when the README changes, the test follows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, SPIDER

pytestmark = pytest.mark.slow

README = REPO / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|needs|fixture):\s*(.*?)\s*-->")


@dataclass
class Block:
    line: int  # README line of the opening fence
    script: str
    skip: str | None = None
    needs: list[str] = field(default_factory=list)
    fixtures: list[str] = field(default_factory=list)

    @property
    def commands(self) -> list[str]:
        """The logical command lines (continuations joined, comments and blank lines left out)."""
        joined = re.sub(r"\s*\\\n\s*", " ", self.script)
        return [c for c in (line.strip() for line in joined.splitlines()) if c and not c.startswith("#")]

    @property
    def id(self) -> str:
        first = next((c for c in self.commands if c.startswith(("spinenet", "make"))), self.commands[0])
        return f"L{self.line}:{first[:60]}"


def readme_blocks(text: str | None = None) -> list[Block]:
    lines = (README.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            block = Block(line=start, script="\n".join(body) + "\n")
            j = start - 2
            while j >= 0 and (m := MARKER.search(lines[j])):  # markers stacked right above the fence
                kind, value = m.group(1), m.group(2)
                if kind == "skip":
                    block.skip = value
                else:
                    getattr(block, "needs" if kind == "needs" else "fixtures").extend(
                        v.strip() for v in value.split(",") if v.strip())
                j -= 1
            blocks.append(block)
        i += 1
    return blocks


# --- fixtures that README commands name ---------------------------------------------------------------------
def _fixture_my_data(cwd: Path) -> None:
    """my_data/: a phantom in the layout of data=spider_seg (SPIDER's mask gray values and label names)."""
    import cv2
    import numpy as np
    import pandas as pd

    from spinenet.data.phantom import generate_phantom

    manifest = generate_phantom(cwd / "fixture_phantom", view="sagittal", patients=8, seed=3, size=128,
                                slices_per_patient=2)
    src, dst = manifest.parent, cwd / "my_data"
    table = pd.read_csv(manifest)
    lut = np.zeros(256, np.uint8)
    lut[[0, 85, 170, 255]] = [0, 29, 76, 150]  # phantom class i is gray 85*i; SPIDER's are 0/29/76/150
    for rel in table["mask"]:
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), lut[cv2.imread(str(src / rel), cv2.IMREAD_GRAYSCALE)])
    for rel in table["image"]:
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes((src / rel).read_bytes())
    table.to_csv(dst / "manifest.csv", index=False)


def _fixture_my_conf(cwd: Path) -> None:
    """~/my_conf/experiment/mine.yaml: a user's own experiment (HOME is the test's folder)."""
    conf = cwd / "home" / "my_conf" / "experiment"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "mine.yaml").write_text("# @package _global_\n# a user's experiment: the demo U-Net, 3 epochs\n"
                                    "task_name: mine\ntrainer:\n  max_epochs: 3\nmodel:\n  net:\n"
                                    "    base_channels: 8\n    depth: 4\n")


def _fixture_dicom_series(cwd: Path) -> None:
    """dicom_series/: 3 slices of one series carrying made-up patient identifiers (they must not leak)."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = cwd / "dicom_series"
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    for k in range(3):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^README", "MRN-README-1", "19700101"
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", series, generate_uid()
        ds.SeriesDescription, ds.InstanceNumber = "T2 SAG", k + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [float(k), 0.0, 0.0], [0, 1, 0, 0, 0, -1]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 3.0
        ds.Rows = ds.Columns = 64
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096).tobytes()
        ds.save_as(folder / f"IM{k}.dcm", enforce_file_format=True)


def _fixture_mha_case(cwd: Path) -> None:
    """case1_t2.mha and case1_t2_mask.mha: a volume and its labels in SPIDER's numbering (discs 201.., canal 100)."""
    import numpy as np
    import SimpleITK as sitk

    image = (np.random.default_rng(0).random((4, 64, 48)) * 1000).astype(np.int16)
    labels = np.zeros_like(image, dtype=np.uint8)
    labels[:, 10:20, 10:30], labels[:, 22:28, 10:30], labels[:, 10:50, 32:40] = 1, 201, 100
    for array, name in ((image, "case1_t2.mha"), (labels, "case1_t2_mask.mha")):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing((0.6, 0.6, 3.0))
        sitk.WriteImage(volume, str(cwd / name))


FIXTURES = {"my_data": _fixture_my_data, "my_conf": _fixture_my_conf, "dicom_series": _fixture_dicom_series,
            "mha_case": _fixture_mha_case}


# --- running ------------------------------------------------------------------------------------------------
def clean_env(cwd: Path) -> dict[str, str]:
    """What a user's shell has: PATH with the installed command, HOME, W&B offline; nothing of the test's."""
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
           "HOME": str(cwd / "home"), "LANG": "C.UTF-8", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "SPINENET_SMOKE": "1",  # the README's documented knob: short training runs and benchmarks
           "SITE_SECRET": "readme-test-salt", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "PYTHONPATH": str(REPO)}  # this checkout's code behind the installed command
    (cwd / "home").mkdir(exist_ok=True)
    return env


BLOCKS = readme_blocks()


def test_the_readme_has_runnable_blocks():
    assert len(BLOCKS) >= 8, "README.md lost its bash blocks?"
    runnable = [b for b in BLOCKS if not b.skip]
    commands = [c for b in runnable for c in b.commands if c.startswith("spinenet")]
    skipped = {b.id: b.skip for b in BLOCKS if b.skip}
    print(f"README: {len(BLOCKS)} bash blocks, {len(commands)} spinenet commands run, skipped: {skipped}")
    assert len(commands) >= 25
    for block in runnable:
        assert not set(block.fixtures) - set(FIXTURES), f"README line {block.line}: unknown fixture"
        for command in block.commands:  # placeholders a user could not type
            assert not re.search(r"<[a-z_]+>|\.\.\./|epoch_0NN", command), f"README line {block.line}: {command}"


def test_parser_reads_markers_and_continuations():
    text = "x\n<!-- readme-test: fixture: my_data -->\n<!-- readme-test: skip: no cluster -->\n```bash\n" \
           "spinenet train a=1 \\\n    b=2   # two lines\n# a comment\n```\n"
    (block,) = readme_blocks(text)
    assert block.skip == "no cluster" and block.fixtures == ["my_data"]
    assert block.commands == ["spinenet train a=1 b=2   # two lines"]


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme_user")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block: Block, user_folder: Path):
    if block.skip:
        pytest.skip(f"README line {block.line}: {block.skip}")
    env = clean_env(user_folder)
    if "spider" in block.needs:
        if not (SPIDER / "seg_t2space" / "manifest.csv").is_file():
            pytest.skip(f"README line {block.line}: needs the real SPIDER data (not found at {SPIDER})")
        env["SPIDER_DIR"] = str(SPIDER)
    for name in block.fixtures:
        FIXTURES[name](user_folder)
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-x", "-c", block.script], cwd=user_folder, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (f"README line {block.line} failed (exit {proc.returncode})\n"
                                  f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}")
    shown = [line for line in proc.stderr.splitlines() if not line.startswith("+")]
    assert not any(line.startswith("Traceback") for line in shown), proc.stderr[-5000:]
