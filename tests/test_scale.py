"""Scale and reliability: DDP run folders, bad-data reports at scale from the CLI, no PHI anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from spinenet.data.importers import import_dicom_series
from spinenet.tasks.train import train
from spinenet.utils.privacy import scan_for_phi
from tests.conftest import REPO, tiny_train_overrides

ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spinenet.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_ddp_processes_share_one_run_folder(tiny_phantom, tmp_path):
    """trainer=ddp on 2 CPU processes started from the command line: rank 0 decides the folder, rank 1 inherits."""
    overrides = [o for o in tiny_train_overrides(tiny_phantom["sagittal"]) if not o.startswith("trainer.accelerator")]
    proc = _cli(["train", *overrides, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                 "trainer.precision=32-true", "trainer.sync_batchnorm=false", "trainer.max_epochs=1",
                 f"paths.root_dir={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1, runs
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["test"] and metrics["best_checkpoint"].startswith(str(runs[0]))
    assert (runs[0] / ".ddp_config.yaml").is_file()


def _broken_dataset(root: Path, rows: int = 2000) -> Path:
    """A manifest with many rows of several kinds of faults, pointing at a few real files."""
    import cv2

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    img = np.zeros((16, 16), np.uint8)
    cv2.imwrite(str(root / "images" / "ok.png"), img)
    cv2.imwrite(str(root / "masks" / "ok.png"), img)
    cv2.imwrite(str(root / "masks" / "big.png"), np.zeros((20, 16), np.uint8))
    bad = img.copy()
    bad[0, 0] = 7
    cv2.imwrite(str(root / "masks" / "values.png"), bad)
    kinds = ["ok", "missing_image", "mask_size", "mask_values", "unknown_label"]
    records = []
    for i in range(rows):
        kind = kinds[i % len(kinds)]
        records.append({
            "patient_id": f"P{i % 50}",
            "image": f"images/{'nowhere_' + str(i) if kind == 'missing_image' else 'ok'}.png",
            "mask": {"mask_size": "masks/big.png", "mask_values": "masks/values.png"}.get(kind, "masks/ok.png"),
            "label": "martian" if kind == "unknown_label" else "healthy",
        })
    pd.DataFrame(records).to_csv(root / "manifest.csv", index=False)
    return root


def test_data_check_reports_every_bad_row(tmp_path):
    root = _broken_dataset(tmp_path / "broken")
    proc = _cli(["data", "check", str(root), "--label-col", "label", "--labels", "healthy,bulge",
                 "--mask-values", "0,85"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    for kind in ("missing_image", "mask_size", "mask_values", "unknown_label"):
        assert kind in out, (kind, out[:2000])
    assert "400" in out  # 2,000 rows, 5 kinds in turn: 400 rows of each fault, all reported
    ok = _cli(["data", "check", str(tiny_phantom_root(tmp_path)), "--data", "phantom_sagittal"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def tiny_phantom_root(tmp_path: Path) -> Path:
    from spinenet.data.phantom import generate_phantom

    return generate_phantom(tmp_path / "ph", view="sagittal", patients=3, size=64, slices_per_patient=1).parent


@pytest.mark.slow
def test_no_phi_in_anything_import_and_training_write(tmp_path, compose_cfg):
    """A DICOM carrying PatientName, PatientID, birth date... imported, trained on with W&B offline:
    none of those values appears in any file the import or the run wrote."""
    from tests.test_importers import PHI, SALT, write_dicom_series

    data = tmp_path / "data"
    data.mkdir()
    manifests = []
    for i in range(3):  # three patients, each one series with a label volume on its grid
        write_dicom_series(tmp_path / f"dcm{i}")
        first = sorted((tmp_path / f"dcm{i}").glob("IM*"))[0]
        ref = sitk.ReadImage(str(first))
        arr = np.zeros((8, 32, 32), np.int16)
        arr[:, 4:12, 4:28], arr[:, 12:16, 4:28], arr[:, 16:24, 4:28], arr[:, 24:30, 4:28] = 1, 201, 2, 100
        label = sitk.GetImageFromArray(arr)
        from tests.test_importers import _dicom_grid_label

        grid = _dicom_grid_label({})
        label.CopyInformation(grid)
        sitk.WriteImage(label, str(tmp_path / f"label{i}.nii.gz"))
        del ref
        out = import_dicom_series(tmp_path / f"dcm{i}", data / f"p{i}", patient_id=f"case{i}", salt=SALT,
                                  masks=tmp_path / f"label{i}.nii.gz", label_map="spider")
        frame = pd.read_csv(out / "manifest.csv", dtype=str)
        for col in ("image", "mask"):
            frame[col] = f"p{i}/" + frame[col]
        manifests.append(frame)
    pd.concat(manifests).to_csv(data / "manifest.csv", index=False)

    cfg = compose_cfg([*[o for o in tiny_train_overrides(data) if not o.startswith(("logger", "data.image_size"))],
                       "data.dataset.label_col=null", "data.dataset.label_names=null", "data.image_size=[32,32]",
                       "model.net.depth=3", "data.split.ratios=[0.34,0.33,0.33]", "trainer.max_epochs=1",
                       "logger=wandb", "logger.wandb.mode=offline"])
    metrics = train(cfg)
    assert metrics["test"]
    run_dir = Path(cfg.paths.output_dir)
    assert list((run_dir / "wandb").glob("offline-run-*")), "the W&B run was written"
    values = [v for k, v in PHI.items() if "UID" not in k or len(v) > 8]
    found = scan_for_phi([data, run_dir], values)
    assert found == [], found
