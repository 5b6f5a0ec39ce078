"""Model files from elsewhere: TorchScript only when allowed, exported files checked against their sidecar's
SHA-256, ensemble members found inside the run folder given and checked against training's SHA-256, and a bad
``ckpt_path`` refused before training."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import List  # noqa: UP035 (TorchScript reads the annotations)

import pytest
import torch

from spinenet.checkpoints import load_run_checkpoint
from spinenet.cli import main as cli_main
from spinenet.ensemble.artifact import load_ensemble, save_artifact
from spinenet.ensemble.members import _run_checkpoint, resolve_members
from spinenet.errors import ConfigError, DataError
from spinenet.loading import load_model
from spinenet.tasks.train import train
from spinenet.utils.safe_io import file_sha256
from tests.conftest import tiny_train_overrides
from tests.test_diagnose import CLS_OVERRIDES, SEG_OVERRIDES, make_checkpoint


class _Hostile(torch.nn.Module):
    """A scripted module that shows its code ran: it prints while it is LOADED (``__setstate__``) and its
    forward returns a constant 42 whatever the input."""

    def __init__(self) -> None:
        super().__init__()
        self.tag = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full([x.shape[0], 4, x.shape[2], x.shape[3]], 42.0)

    @torch.jit.export
    def __getstate__(self) -> List[torch.Tensor]:  # noqa: UP006
        return [self.tag]

    @torch.jit.export
    def __setstate__(self, state: List[torch.Tensor]) -> None:  # noqa: UP006
        self.tag = state[0]
        self.training = False
        print("HOSTILE CODE RAN AT LOAD")


def _save_hostile(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        torch.jit.script(_Hostile()).save(str(path))
    return path


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("trust")
    ckpt = make_checkpoint(root / "seg.ckpt", SEG_OVERRIDES)
    assert cli_main(["export", str(ckpt), "--out", str(root / "export"), "--format", "onnx", "torchscript"]) == 0
    return root / "export"


def _scans(tmp_path: Path) -> Path:
    """A folder with one slice to diagnose (beside, not around, the --out folder)."""
    import cv2
    import numpy as np

    scans = tmp_path / "scans"
    scans.mkdir(exist_ok=True)
    cv2.imwrite(str(scans / "s.png"), np.full((64, 64), 80, np.uint8))
    return scans


def _copy(export_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(export_dir, tmp_path / "export"))


# --------------------------------------------------------------------------------------------- TorchScript
def test_torchscript_is_refused_without_the_flag_and_nothing_in_it_runs(export_dir, tmp_path, capfd):
    folder = _copy(export_dir, tmp_path)
    side = json.loads((folder / "segmenter.json").read_text())
    assert side["sha256"] == {f: file_sha256(folder / f) for f in ("segmenter.pt", "segmenter.onnx")}
    # the attack: a hostile scripted module saved as segmenter.pt beside the genuine sidecar, whose hash the
    # attacker also rewrote (a hash detects modification, not a malicious original)
    hostile = _save_hostile(folder / "segmenter.pt")
    side["sha256"]["segmenter.pt"] = file_sha256(hostile)
    (folder / "segmenter.json").write_text(json.dumps(side))
    capfd.readouterr()
    rc = cli_main(["diagnose", str(_scans(tmp_path)), "--segmenter", str(hostile), "--classifier", str(hostile),
                   "--out", str(tmp_path / "out"), "--no-progress"])
    out, err = capfd.readouterr()
    assert rc == 2
    (line,) = [x for x in err.splitlines() if "error" in x]
    assert str(hostile) in line and "--allow-torchscript" in line and "not opened" in line
    assert "HOSTILE" not in out + err and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="allow_torchscript=True"):
        load_model(hostile)[0]
    # eval and ensemble take checkpoints only: the TorchScript file is refused there too, unopened
    with pytest.raises(DataError, match="TorchScript file .* NOT executed"):
        load_run_checkpoint(hostile)
    assert "HOSTILE" not in "".join(capfd.readouterr())

    # what the flag means: the file's own code runs as it loads, and its forward is whatever it says
    p = load_model(hostile, allow_torchscript=True)[0]
    assert "HOSTILE CODE RAN AT LOAD" in capfd.readouterr().out
    assert torch.all(p(torch.rand(1, 1, 64, 64)) == 42.0)


def test_the_flag_loads_a_genuine_export_with_a_warning(export_dir, caplog):
    with caplog.at_level(logging.WARNING):
        p = load_model(export_dir / "segmenter.pt", allow_torchscript=True)[0]
    assert p.kind == "torchscript" and p(torch.rand(2, 1, 64, 64)).shape == (2, 4, 64, 64)
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "TorchScript files can run arbitrary operations; load only files you trust" in msg
    # the sidecar JSON opens the ONNX file: it runs ONNX operators only
    assert load_model(export_dir / "segmenter.json")[0].kind == "onnx"


@pytest.mark.parametrize("name", ["segmenter.onnx", "segmenter.pt"])
def test_a_modified_exported_file_is_refused(export_dir, tmp_path, capfd, name):
    folder = _copy(export_dir, tmp_path)
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        load_model(folder / name, allow_torchscript=True)[0]
    assert str(err.value) == (f"model file {folder / name} does not match the SHA-256 in its sidecar "
                              f"{folder / 'segmenter.json'} (modified or replaced)")
    # through the CLI: one line, exit 2
    rc = cli_main(["diagnose", str(_scans(tmp_path)), "--segmenter", str(folder / name), "--classifier",
                   str(folder / name), "--out", str(tmp_path / "out"), "--allow-torchscript", "--no-progress"])
    err_lines = [x for x in capfd.readouterr().err.splitlines() if "error:" in x]
    assert rc == 2 and len(err_lines) == 1 and "does not match the SHA-256" in err_lines[0]


def test_an_older_sidecar_without_hashes_loads_with_a_warning(export_dir, tmp_path, caplog):
    folder = _copy(export_dir, tmp_path)
    side = json.loads((folder / "segmenter.json").read_text())
    del side["sha256"]
    (folder / "segmenter.json").write_text(json.dumps(side))
    with caplog.at_level(logging.WARNING):
        p = load_model(folder / "segmenter.onnx")[0]
    assert p.kind == "onnx"
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "records no SHA-256" in msg and "segmenter.onnx" in msg


# --------------------------------------------------------------------------------------------- ensemble members
def _fake_run(run: Path, ckpt_src: Path, record_sha: bool = True) -> Path:
    """A finished run folder as spinenet train leaves it (metrics.json with absolute paths)."""
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "epoch_001.ckpt"
    shutil.copy(ckpt_src, ckpt)
    metrics = {"run_dir": str(run), "best_checkpoint": str(ckpt), "last_checkpoint": None,
               "test_ckpt": "best", "tested_checkpoint": str(ckpt)}
    if record_sha:
        metrics["checkpoint_sha256"] = {ckpt.name: file_sha256(ckpt)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture(scope="module")
def seg_ckpts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("members")
    a = make_checkpoint(root / "a.ckpt", SEG_OVERRIDES)
    b = make_checkpoint(root / "b.ckpt", [*SEG_OVERRIDES, "seed=7"])
    data = torch.load(b, weights_only=True)
    data["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in data["state_dict"].items()}
    torch.save(data, b)
    assert file_sha256(a) != file_sha256(b)
    return a, b


def test_a_copied_run_folder_uses_its_own_checkpoint_never_the_original(seg_ckpts, tmp_path):
    original = _fake_run(tmp_path / "original", seg_ckpts[0])
    copy = Path(shutil.copytree(original, tmp_path / "copy"))
    assert _run_checkpoint(copy) == copy / "checkpoints" / "epoch_001.ckpt"
    (member,) = resolve_members([copy])
    assert member.checkpoint.is_relative_to(copy.resolve()) and member.run_dir == copy.resolve()
    # the copy's checkpoint is missing: an error naming the copy, although the original's file still exists
    (copy / "checkpoints" / "epoch_001.ckpt").unlink()
    with pytest.raises(ConfigError, match=rf"run folder {copy.resolve()}: the tested_checkpoint .* not inside"):
        resolve_members([copy])
    # a symlink pointing out of the folder is outside it too
    (copy / "checkpoints" / "epoch_001.ckpt").symlink_to(original / "checkpoints" / "epoch_001.ckpt")
    with pytest.raises(ConfigError, match="not inside"):
        _run_checkpoint(copy)


def test_a_member_checkpoint_that_differs_from_training_is_refused(seg_ckpts, tmp_path, caplog):
    run = _fake_run(tmp_path / "run", seg_ckpts[0])
    shutil.copy(seg_ckpts[1], run / "checkpoints" / "epoch_001.ckpt")  # replaced by another valid checkpoint
    for spec in (run, run / "checkpoints" / "epoch_001.ckpt"):  # the run folder, or its checkpoint by name
        with pytest.raises(DataError) as err:
            resolve_members([spec])
        assert str(run / "checkpoints" / "epoch_001.ckpt") in str(err.value)
        assert "does not match the SHA-256 its training recorded" in str(err.value)
    # a run from before checkpoint hashes were recorded: used, with a warning
    old = _fake_run(tmp_path / "old", seg_ckpts[0], record_sha=False)
    with caplog.at_level(logging.WARNING):
        assert len(resolve_members([old])) == 1
    assert any("records no checkpoint SHA-256" in r.getMessage() for r in caplog.records)


def test_the_same_file_twice_is_counted_once(seg_ckpts, tmp_path, caplog):
    a = _fake_run(tmp_path / "a", seg_ckpts[0])
    a_copy = Path(shutil.copytree(a, tmp_path / "a_copy"))
    b = _fake_run(tmp_path / "b", seg_ckpts[1])
    with caplog.at_level(logging.WARNING):
        members = resolve_members([a, b, a_copy])
    assert [m.name for m in members] == ["a", "b"]
    assert members[0].duplicates == [f"a_copy ({a_copy.resolve() / 'checkpoints' / 'epoch_001.ckpt'})"]
    assert members[0].to_dict()["duplicates"] == members[0].duplicates
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "a_copy" in msg and "same file as a" in msg and "counted once" in msg


def test_a_saved_ensemble_verifies_each_member(seg_ckpts, tmp_path):
    members = resolve_members([seg_ckpts[0], seg_ckpts[1]])
    path = save_artifact(tmp_path / "ens.json", members, [1.0, 1.0])
    doc = json.loads(path.read_text())
    assert [m["sha256"] for m in doc["members"]] == [file_sha256(c) for c in seg_ckpts]
    module, _, _ = load_ensemble(path)
    assert len(module.net.members) == 2
    # an entry without its SHA-256 (hand-edited) is refused, not loaded unverified
    del doc["members"][1]["sha256"]
    (tmp_path / "nosha.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="records no SHA-256"):
        load_ensemble(tmp_path / "nosha.json")


# --------------------------------------------------------------------------------------------- train ckpt_path
@pytest.fixture(scope="module")
def bad_ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_ckpts")
    (root / "empty.ckpt").write_bytes(b"")
    (root / "text.ckpt").write_text("not a checkpoint\n")

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch '{root / 'PWNED'}'",))

    torch.save({"state_dict": {}, "hyper_parameters": Payload()}, root / "payload.ckpt")
    (root / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
    make_checkpoint(root / "cls.ckpt", CLS_OVERRIDES)
    seg = make_checkpoint(root / "seg_depth3.ckpt", [*SEG_OVERRIDES, "model.net.depth=3"])
    data = torch.load(seg, weights_only=True)
    torch.save({**data, "optimizer_states": [], "loops": {}}, seg)  # looks resumable, another architecture
    return {p.stem: p for p in root.iterdir()}


@pytest.mark.parametrize("name,reason", [
    ("empty", "file is empty"),
    ("text", "not a readable PyTorch checkpoint"),
    ("payload", "not a weights-only checkpoint (it references posix.system); it was NOT executed"),
    ("plain", "not a weights-only checkpoint; it was NOT executed"),  # a pickle, not a torch file
    ("cls", "is a classification checkpoint; this run trains segmentation"),
    ("seg_depth3", "does not fit this model"),
])
def test_train_refuses_a_bad_ckpt_path_before_fit(bad_ckpts, tiny_phantom, compose_cfg, tmp_path, name, reason):
    path = bad_ckpts[name]
    cfg = compose_cfg([*tiny_train_overrides(tiny_phantom["sagittal"]), "trainer.max_epochs=1",
                       "logger=none", f"ckpt_path={path}"])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    msg = str(err.value)
    assert msg.startswith("ckpt_path: ") and str(path) in msg and reason in msg and "\n" not in msg
    assert not (path.parent / "PWNED").exists()
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
