"""Scale and reliability: DDP run folders, bad-data reports at scale from the CLI, no PHI anywhere."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from spinenet.data.importers import import_dicom_series
from spinenet.tasks.train import train
from spinenet.utils.privacy import scan_for_phi
from tests.conftest import REPO, tiny_train_overrides

ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Through the installed console script, as users start it (Lightning's DDP re-runs that command line)."""
    return subprocess.run([str(Path(sys.executable).parent / "spinenet"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_ddp_processes_share_one_run_folder(tmp_path):
    """The acceptance command, from an empty folder through the installed command: trainer=ddp on 2 CPU
    processes; rank 0 decides the run folder, rank 1 inherits it (Lightning re-runs the command line)."""
    proc = _cli(["train", "experiment=demo", "debug=limit", "trainer=ddp", "trainer.accelerator=cpu",
                 "trainer.devices=2"], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "demo" / "runs").iterdir())
    assert len(runs) == 1, runs
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["test"] and metrics["best_checkpoint"].startswith(str(runs[0]))
    assert (runs[0] / ".ddp_config.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "outputs"], "nothing else written in the folder"


# ddp_sim: 2 spawned CPU processes; ddp: worker processes started with the command line, which get rank 0's
# config through SPINENET_DDP_CONFIG (a second trial used to wait forever for workers that were never started)
DDP_ON_CPU = {"ddp_sim": ["trainer=ddp_sim"],
              "ddp": ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                      "trainer.sync_batchnorm=false"]}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(DDP_ON_CPU))
def test_ddp_inside_a_multirun_gives_one_run_folder_per_trial(tiny_phantom, tmp_path, strategy):
    """``spinenet train -m`` with 2 trials on 2 CPU processes each: one folder per trial, nothing stray."""
    overrides = [o for o in tiny_train_overrides(tiny_phantom["sagittal"]) if not o.startswith("trainer.")]
    proc = _cli(["train", "-m", *overrides, *DDP_ON_CPU[strategy], "trainer.max_epochs=1", "trainer.deterministic=true",
                 "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
                 "extras.data_check=off", "optimizer.lr=0.001,0.002", f"paths.root_dir={tmp_path}"], cwd=tmp_path,
                timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = tmp_path / "outputs" / "train"
    assert [p.name for p in outputs.iterdir()] == ["multiruns"], "a child process made a run folder of its own"
    (sweep,) = (outputs / "multiruns").iterdir()
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [t.name for t in trials] == ["0", "1"], trials
    for trial in trials:
        metrics = json.loads((trial / "metrics.json").read_text())
        assert metrics["run_dir"] == str(trial) and metrics["test"], trial
        checkpoints = {p.name for p in (trial / "checkpoints").iterdir()}
        assert "last.ckpt" in checkpoints and metrics["best_checkpoint"].startswith(str(trial / "checkpoints"))
        assert json.loads((trial / "trial.json").read_text())["status"] == "ok"
        assert (trial / ".ddp_config.yaml").is_file() == (strategy == "ddp")
    assert sorted(pd.read_csv(sweep / "summary.csv")["status"]) == ["ok", "ok"]
    stray = [p for p in tmp_path.rglob("*") if p.is_dir() and p.name in ("lightning_logs", "runs", "multirun")]
    assert stray == [], stray


class ModuleProbe(L.Callback):
    """Written per process while it trains: the model's batch-norm classes, the net's output dtype, the world."""

    def __init__(self, out: str):
        self.out, self.seen = out, {}

    def on_train_start(self, trainer, pl_module):
        norms = {type(m).__module__ + "." + type(m).__name__ for m in pl_module.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
        self.seen = {"norms": sorted(norms), "world_size": trainer.world_size,
                     "distributed": torch.distributed.is_available() and torch.distributed.is_initialized()}

        def record(module, args, output):
            if module.training:
                self.seen.setdefault("dtype", str(output.dtype))

        self._hook = pl_module.net.register_forward_hook(record)

    def on_train_end(self, trainer, pl_module):
        self._hook.remove()
        Path(self.out, f"probe_rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


def _finite(values: dict) -> bool:
    """Loss and Dice finite; NaN only where the policy puts it (precision of a class never predicted...)."""
    return (math.isfinite(values["loss"]) and math.isfinite(values["dice_mean_fg"])
            and not any(math.isinf(v) for v in values.values() if isinstance(v, float)))


def _probe(cfg_dir: Path) -> list[str]:
    cfg_dir.mkdir(parents=True, exist_ok=True)
    return [f"+callbacks.probe._target_={__name__}.ModuleProbe", f"+callbacks.probe.out={cfg_dir}"]


def _syncbn_worker(rank: int, world: int, port: int) -> None:
    """One of ``world`` gloo processes: SyncBatchNorm on its part of a batch == BatchNorm2d on the whole batch."""
    import copy

    from spinenet.utils.syncbn import CpuSyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        x, g = torch.randn(8, 3, 5, 5) * 3 + 1, torch.randn(8, 3, 5, 5)
        ref = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
        with torch.no_grad():
            ref[0].weight.uniform_(0.5, 2.0)
            ref[0].bias.uniform_(-1.0, 1.0)
        sync = convert_sync_batchnorm(copy.deepcopy(ref))
        assert isinstance(sync[0], CpuSyncBatchNorm)
        whole = x.clone().requires_grad_()
        expected = ref(whole)
        (expected * g).sum().backward()
        part = slice(rank * 8 // world, (rank + 1) * 8 // world)
        mine = x[part].clone().requires_grad_()
        out = sync(mine)
        (out * g[part]).sum().backward()
        weight_grad, bias_grad = sync[0].weight.grad.clone(), sync[0].bias.grad.clone()
        torch.distributed.all_reduce(weight_grad)
        torch.distributed.all_reduce(bias_grad)
        close = dict(atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, expected[part].detach(), **close)
        ref.eval()
        sync.eval()
        torch.testing.assert_close(sync[0].running_mean, ref[0].running_mean, **close)
        torch.testing.assert_close(sync[0].running_var, ref[0].running_var, **close)
        torch.testing.assert_close(mine.grad, whole.grad[part], **close)
        torch.testing.assert_close(weight_grad, ref[0].weight.grad, **close)
        torch.testing.assert_close(bias_grad, ref[0].bias.grad, **close)
        torch.testing.assert_close(sync(x), ref(x), **close)  # eval: the running statistics, no sync
        layer = sync[0]
        back = revert_sync_batchnorm(sync)
        assert type(back[0]) is torch.nn.BatchNorm2d and back[0].weight is layer.weight
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_sync_batchnorm_on_cpu_processes_matches_batchnorm_over_the_global_batch():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_syncbn_worker, args=(2, port), nprocs=2, join=True)


@pytest.mark.slow
def test_ddp_sim_with_sync_batchnorm(tiny_phantom, compose_cfg, tmp_path):
    """trainer.sync_batchnorm=true on 2 CPU processes: the net trains with synchronized batch norm."""
    cfg = compose_cfg([*tiny_train_overrides(tiny_phantom["sagittal"]), "trainer=ddp_sim", "trainer.sync_batchnorm=true",
                       "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                       "+trainer.limit_test_batches=1", "extras.data_check=off", *_probe(tmp_path / "probe")])
    metrics = train(cfg)
    assert metrics["test"] and _finite(metrics["val"]) and _finite(metrics["test"])
    for rank in (0, 1):
        seen = json.loads((tmp_path / "probe" / f"probe_rank{rank}.json").read_text())
        assert seen["norms"] == ["spinenet.utils.syncbn.CpuSyncBatchNorm"], seen  # every BatchNorm2d converted
        assert seen["distributed"] and seen["world_size"] == 2
    # the checkpoint holds plain batch-norm weights: it loads into the model as built for one device
    ckpt = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    assert any(k.endswith("running_var") for k in ckpt["state_dict"])


@pytest.mark.slow
def test_bf16_mixed_precision_on_cpu(tiny_phantom, compose_cfg, tmp_path):
    cfg = compose_cfg([*tiny_train_overrides(tiny_phantom["sagittal"]), "trainer.precision=bf16-mixed",
                       "trainer.max_epochs=1", "extras.data_check=off", *_probe(tmp_path / "probe")])
    metrics = train(cfg)
    seen = json.loads((tmp_path / "probe" / "probe_rank0.json").read_text())
    assert seen["dtype"] == "torch.bfloat16", seen  # autocast really ran
    for split in ("val", "test"):
        assert metrics[split]["loss"] > 0 and _finite(metrics[split]), split


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs a CUDA device")
def test_16_mixed_precision_on_cuda(tiny_phantom, compose_cfg, tmp_path):
    cfg = compose_cfg([*[o for o in tiny_train_overrides(tiny_phantom["sagittal"]) if not o.startswith("trainer.")],
                       "trainer=gpu", "trainer.precision=16-mixed", "trainer.max_epochs=1",
                       "extras.data_check=off", *_probe(tmp_path / "probe")])
    metrics = train(cfg)
    seen = json.loads((tmp_path / "probe" / "probe_rank0.json").read_text())
    assert seen["dtype"] == "torch.float16", seen
    assert _finite(metrics["val"]) and _finite(metrics["test"])


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
