"""Safe loading: weights-only checkpoints and plain tensor files with a format and version."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from spinenet.errors import DataError
from spinenet.utils.safe_io import load_checkpoint, load_tensors, save_tensors


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``: what a tampered file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch '{self.marker}'",))


def test_tampered_checkpoint_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "tampered.ckpt"
    torch.save({"state_dict": nn.Linear(2, 1).state_dict(), "hyper_parameters": _Payload(marker)}, ckpt)
    with pytest.raises(DataError) as info:
        load_checkpoint(ckpt)
    msg = str(info.value)
    assert str(ckpt) in msg and "not a weights-only checkpoint" in msg and "NOT executed" in msg
    assert "system" in msg  # names what it refused to call
    assert not marker.exists()
    # the same payload as a plain (legacy) pickle file is refused too
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"x": _Payload(marker)}))
    with pytest.raises(DataError, match="NOT executed"):
        load_checkpoint(legacy)
    assert not marker.exists()
    pickle.loads(legacy.read_bytes())  # proves the payload is live: plain unpickling runs it
    assert marker.exists()


def test_normal_checkpoint_loads(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 5, 5)).sum().backward()
    opt.step()
    ckpt = {"epoch": 3, "state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()],
            "hyper_parameters": {"cfg": {"lr": 1e-3, "layers": [1, 2], "name": "unet", "none": None}}}
    path = tmp_path / "ok.ckpt"
    torch.save(ckpt, path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["hyper_parameters"] == ckpt["hyper_parameters"]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["state_dict"][key], value)
    assert loaded["optimizer_states"][0]["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_omegaconf_hyper_parameters_are_not_weights_only(tmp_path: Path) -> None:
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"lr": 0.1})
    path = tmp_path / "omega.ckpt"
    torch.save({"hyper_parameters": cfg}, path)
    with pytest.raises(DataError, match="not a weights-only checkpoint"):
        load_checkpoint(path)
    torch.save({"hyper_parameters": omegaconf.OmegaConf.to_container(cfg)}, path)  # the documented fix
    assert load_checkpoint(path)["hyper_parameters"] == {"lr": 0.1}


def test_broken_files_give_a_clear_error(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pt"
    text.write_text("just some text\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path, expected in ((truncated, "not a readable PyTorch checkpoint"), (text, "not a readable PyTorch"),
                           (empty, "empty"), (tmp_path / "missing.pt", "not found")):
        with pytest.raises(DataError, match=expected) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)
    bare = tmp_path / "tensor.pt"
    torch.save(torch.ones(2), bare)
    with pytest.raises(DataError, match="expected a dict"):
        load_checkpoint(bare)


def test_tensors_round_trip_with_metadata(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"probs": base, "row0": base[0], "ids": torch.tensor([7, 8, 9]), "mask": torch.tensor([True, False]),
               "half": torch.randn(2, 2).to(torch.bfloat16), "t": base.t()}  # views and non-contiguous
    meta = {"format": "spinenet-predictions", "version": 1, "models": ["a", "b"], "split": "val"}
    path = save_tensors(tmp_path / "sub" / "preds.safetensors", tensors, meta)
    loaded, loaded_meta = load_tensors(path, expected_format="spinenet-predictions", max_version=1)
    assert loaded_meta == meta
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value)
    assert [p.name for p in path.parent.iterdir()] == ["preds.safetensors"]  # no temporary file left


def test_tensor_files_that_are_not_what_they_claim(tmp_path: Path) -> None:
    path = save_tensors(tmp_path / "w.safetensors", {"w": torch.ones(3)}, {"format": "spinenet-ensemble", "version": 2})
    with pytest.raises(DataError, match="holds format 'spinenet-ensemble', expected 'spinenet-predictions'"):
        load_tensors(path, expected_format="spinenet-predictions")
    with pytest.raises(DataError, match="version 2 is newer"):
        load_tensors(path, max_version=1)
    with pytest.raises(DataError, match="lacks"):
        save_tensors(tmp_path / "x.safetensors", {"w": torch.ones(1)}, {"format": "x"})
    with pytest.raises(DataError, match="not a str -> Tensor"):
        save_tensors(tmp_path / "x.safetensors", {"w": [1, 2]}, {"format": "x", "version": 1})  # type: ignore[dict-item]
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"w": torch.ones(3)}, pickled)
    with pytest.raises(DataError, match="not a safetensors file"):
        load_tensors(pickled)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(DataError, match="not a safetensors file"):
        load_tensors(truncated)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(foreign), metadata={"other": "1"})
    with pytest.raises(DataError, match="not written by save_tensors"):
        load_tensors(foreign)
    with pytest.raises(DataError, match="not found"):
        load_tensors(tmp_path / "nope.safetensors")
