"""`spinenet eval ckpt_path=X data.dataset.root=Y`: the checkpoint supplies the data schema; test Dice/IoU at
each image's own size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spinenet.data.datamodule import SegmentationDataModule
from spinenet.errors import ConfigError, DataError
from spinenet.lit.segmentation import SegmentationModule
from spinenet.tasks.evaluate import evaluate
from spinenet.tasks.train import train
from tests.conftest import REPO, tiny_train_overrides


# --------------------------------------------------------------------------------------------- native resolution
class Oracle(SegmentationModule):
    """Predicts the test batch's model-size truth (``"truth"``) or the disc everywhere (``"disc"``)."""

    def __init__(self, mode: str):
        super().__init__(net=nn.Identity(), loss=nn.CrossEntropyLoss(), optimizer=None,
                         class_names=["background", "disc"], num_overlays=0)
        self.mode = mode

    def on_test_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._truth = batch["mask"]

    def forward(self, x):
        if self.mode == "truth":
            return F.one_hot(self._truth, 2).permute(0, 3, 1, 2).float()
        return torch.stack([torch.zeros_like(x[:, 0]), torch.ones_like(x[:, 0])], 1)


def _data_set(root: Path, masks: list[np.ndarray]) -> Path:
    """One patient per mask (0 background, 1 disc, stored as 0/255), images of the same size."""
    root.mkdir(parents=True)
    rows = []
    for i, mask in enumerate(masks):
        cv2.imwrite(str(root / f"img{i}.png"), (mask * 200 + 20).astype(np.uint8))
        cv2.imwrite(str(root / f"mask{i}.png"), (mask * 255).astype(np.uint8))
        rows.append({"patient_id": f"p{i}", "image": f"img{i}.png", "mask": f"mask{i}.png"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def _test_oracle(root: Path, mode: str, resize_mode: str) -> tuple[dict, dict]:
    dm = SegmentationDataModule({"root": str(root), "mask_values": [0, 255], "class_names": ["background", "disc"]},
                                image_size=[8, 8], resize_mode=resize_mode, batch_size=4, check="off")
    loader = dm.split_dataloader("all")
    module = Oracle(mode)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, dataloaders=loader, verbose=False)
    return module.test_results, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_native_dice_is_scored_against_the_stored_mask(tmp_path):
    """A one-pixel-wide disc column survives the resize to 8x8 as one column; a perfect prediction at the
    model's size is upsampled bilinearly to a wider band, and scored against the mask as stored.

    16-wide images: truth column 2 -> model column 1 (nearest: source column 2*1); back at width 16, column x
    reads model column (x + 0.5) / 2 - 0.5, so disc wins at x = 2, 3: 8 true and 8 false disc pixels.
    24-wide images: truth column 3 -> model column 1 (3*1); disc wins where (x + 0.5) / 3 - 0.5 lies within
    0.5 of 1, x = 3, 4, 5: 8 true and 16 false. Five of each: Dice = 2*80 / (2*80 + 40 + 80) = 4/7.
    """
    masks = []
    for width, column in ((16, 2), (24, 3)):
        mask = np.zeros((8, width), np.uint8)
        mask[:, column] = 1
        masks += [mask] * 5
    root = _data_set(tmp_path / "stripes", masks)
    results, logged = _test_oracle(root, "truth", "resize")
    model_res = results["model_res"]
    assert model_res["dice"][1] == 1.0 and model_res["num_pixels"] == 10 * 64  # the prediction is the resized truth
    assert results["num_pixels"] == 5 * 8 * 16 + 5 * 8 * 24  # every pixel of every stored mask
    assert results["confusion_matrix"][1] == [0, 80]  # all 80 disc pixels found ...
    assert results["confusion_matrix"][0][1] == 40 + 80  # ... and the band around them
    assert results["dice"][1] == pytest.approx(4 / 7)
    assert logged["test/dice_disc"] == pytest.approx(4 / 7) and logged["test/dice_disc_model_res"] == 1.0
    assert logged["test/dice_mean_fg"] == pytest.approx(4 / 7) and logged["test/dice_mean_fg_model_res"] == 1.0
    assert "own size" in results["resolution"]


def test_native_metrics_leave_the_padding_out(tmp_path):
    """4x8 images padded to 8x8 (2 rows above and below): predicting the disc everywhere is scored on the 32
    pixels of the image (16 disc: Dice 2*16/(32+16) = 2/3, IoU 1/2), not on the 64 of the padded array
    (Dice 2*16/(64+16) = 0.4, IoU 1/4)."""
    mask = np.zeros((4, 8), np.uint8)
    mask[:, :4] = 1
    root = _data_set(tmp_path / "padded", [mask] * 10)
    results, logged = _test_oracle(root, "disc", "pad")
    assert results["num_pixels"] == 10 * 32 and results["model_res"]["num_pixels"] == 10 * 64
    assert results["dice"][1] == pytest.approx(2 / 3) and results["iou"][1] == pytest.approx(0.5)
    assert logged["test/miou"] == pytest.approx(0.25)  # background: never predicted, IoU 0
    assert logged["test/dice_disc_model_res"] == pytest.approx(0.4)
    assert logged["test/iou_disc_model_res"] == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------- eval by path
def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The installed `spinenet` command (this checkout's code first on the path), from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("SPINENET_ROOT", None)
    script = Path(sys.executable).parent / "spinenet"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "spinenet.cli"]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _cli_metrics(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("metrics written: "))
    return json.loads(Path(line.removeprefix("metrics written: ")).read_text())


def _copy_manifest(src: Path, dst: Path, edit) -> Path:
    """A data set in ``dst``: ``src``'s files (linked: paths stay inside the root) and manifest, changed by
    ``edit(frame)``."""
    frame = pd.read_csv(src / "manifest.csv", dtype=str)
    dst.mkdir(parents=True)
    for col in ("image", "mask"):
        for rel in frame[col] if col in frame else ():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            if not (dst / rel).exists():
                os.link(src / rel, dst / rel)
    edit(frame, dst)
    frame.to_csv(dst / "manifest.csv", index=False)
    return dst


@pytest.mark.slow
def test_eval_a_segmenter_by_path(tiny_phantom, compose_cfg, tmp_path):
    root = tiny_phantom["sagittal"]
    cfg = compose_cfg([*tiny_train_overrides(root), "trainer.max_epochs=1", "logger=none"])
    run = train(cfg)
    ckpt = run["best_checkpoint"]
    assert run["test"]["dice_mean_fg_model_res"] == pytest.approx(run["test"]["dice_mean_fg"])  # 64x64 at 64x64

    # only the checkpoint and the data folder, from an empty directory: the run's own test split again
    cwd = tmp_path / "empty"
    cwd.mkdir()
    saved = _cli_metrics(_cli(["eval", f"ckpt_path={ckpt}", f"data.dataset.root={root}"], cwd))
    assert Path(saved["run_dir"]).is_relative_to(cwd / "outputs" / "eval")
    assert saved["images"] == len(json.loads((Path(run["run_dir"]) / "splits.json").read_text())["splits"]["test"]) * 2
    for key in ("dice_mean_fg", "dice_disc", "miou", "dice_mean_fg_model_res", "loss"):
        assert saved["test"][key] == pytest.approx(run["test"][key], abs=1e-6), key
    assert saved["data"]["dataset"]["mask_values"] == [0, 85, 170, 255] and saved["data_from_command_line"] == [
        "dataset.root"]

    # a manifest whose mask column has another name: one error naming it; named on the command line, it works
    renamed = _copy_manifest(root, tmp_path / "renamed", lambda f, _: f.rename(columns={"mask": "seg"}, inplace=True))

    def run_eval(*overrides: str, name: str) -> dict:
        ecfg = compose_cfg([f"ckpt_path={ckpt}", *overrides, "trainer.accelerator=cpu"], config_name="eval",
                           output_dir=tmp_path / name)
        return evaluate(ecfg)

    with pytest.raises(DataError, match=r"data set not found: .*nowhere.*data.dataset.root from the command line"):
        run_eval(f"data.dataset.root={tmp_path / 'nowhere'}", name="nowhere")
    with pytest.raises(DataError, match=r"no column 'mask' \(dataset.mask_col"):
        run_eval(f"data.dataset.root={renamed}", name="renamed")
    result = run_eval(f"data.dataset.root={renamed}", "data.dataset.mask_col=seg", name="renamed_named")
    assert result["test"]["dice_mean_fg"] == pytest.approx(run["test"]["dice_mean_fg"], abs=1e-6)

    # a gray value the checkpoint's mask_values do not map
    def bad_mask(frame: pd.DataFrame, dst: Path) -> None:
        mask = cv2.imread(str(dst / frame.loc[0, "mask"]), cv2.IMREAD_UNCHANGED)
        mask[0, 0] = 100
        cv2.imwrite(str(dst / "bad.png"), mask)
        frame.loc[0, "mask"] = "bad.png"

    with pytest.raises(DataError, match=r"mask values outside dataset.mask_values in column 'mask' \(1 row, e.g. "
                                        r"line 2: .*100"):
        run_eval(f"data.dataset.root={_copy_manifest(root, tmp_path / 'bad_mask', bad_mask)}", name="bad_mask")
    # an image size named on the command line is used if the net takes it
    with pytest.raises(ConfigError, match=r"data.image_size=\[40, 40\]: the checkpoint's model does not take it"):
        run_eval(f"data.dataset.root={root}", "data.image_size=[40,40]", name="size")
    # the model's classes are not for the command line to change
    with pytest.raises(ConfigError, match="differ from the checkpoint's"):
        run_eval(f"data.dataset.root={root}", "data.dataset.class_names=[bg,a,b,c]", name="classes")


@pytest.mark.slow
def test_eval_a_classifier_by_path(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=cls/sustersic2022_sagittal", f"paths.data_dir={tmp_path / 'data'}",
                       "data.synthesize.patients=10", "data.synthesize.size=64", "data.synthesize.slices_per_patient=1",
                       "data.batch_size=4", "trainer.max_epochs=1", "model.bootstrap=20", "logger=none",
                       "callbacks.progress_bar=null", "trainer.accelerator=cpu", "extras.print_config=false"])
    run = train(cfg)
    root, ckpt = Path(cfg.data.dataset.root), run["best_checkpoint"]

    cwd = tmp_path / "empty"
    cwd.mkdir()
    saved = _cli_metrics(_cli(["eval", f"ckpt_path={ckpt}", f"data.dataset.root={root}"], cwd))
    assert saved["task"] == "classification" and saved["data"]["dataset"]["label_col"] == "label"
    for key in ("accuracy", "auroc", "loss"):
        assert saved["test"][key] == pytest.approx(run["test"][key], abs=1e-6), key

    # the experiment composes for eval: its data block is used, its model/optimizer are not
    ecfg = compose_cfg(["experiment=cls/sustersic2022_sagittal", f"ckpt_path={ckpt}", f"data.dataset.root={root}",
                        "trainer.accelerator=cpu"], config_name="eval", output_dir=tmp_path / "experiment")
    assert evaluate(ecfg)["test"]["accuracy"] == pytest.approx(run["test"]["accuracy"], abs=1e-6)

    # a label the checkpoint does not know: exit 2, one line naming it, no traceback (printed to stdout or stderr)
    def unknown(frame: pd.DataFrame, _dst: Path) -> None:
        frame.loc[1, "label"] = "L3-L4"

    other = _copy_manifest(root, tmp_path / "unknown_label", unknown)
    proc = _cli(["eval", f"ckpt_path={ckpt}", f"data.dataset.root={other}"], cwd)
    assert proc.returncode == 2, proc.stderr[-3000:]
    printed = proc.stdout + proc.stderr
    assert "Traceback" not in printed
    error = [s for s in printed.splitlines() if "L3-L4" in s]
    assert len(error) == 1 and "column 'label' (1 row, e.g. line 3: unknown label 'L3-L4'" in error[0], printed[-3000:]


@pytest.mark.parametrize("experiment", sorted(str(p.relative_to(REPO / "conf" / "experiment").with_suffix(""))
                                              for p in (REPO / "conf" / "experiment").rglob("*.yaml")))
def test_every_experiment_composes_for_eval(experiment, tmp_path):
    from spinenet.config import compose

    cfg = compose("eval", ["ckpt_path=/nowhere.ckpt", f"experiment={experiment}"], output_dir=tmp_path)
    assert cfg.data.dataset.root and cfg.task_name != "eval"
