"""Training speed options (callbacks.train_speed) and `spinenet bench train --setting`."""

from __future__ import annotations

import re

import lightning as L
import torch

from spinenet.cli import main as cli_main
from spinenet.tasks.train import train
from spinenet.utils.callbacks import TrainSpeed
from tests.conftest import tiny_train_overrides

SEEN: dict[str, list[bool]] = {}


class FormatProbe(L.Callback):
    """Records, for every training forward, whether the conv weights and the input are channels-last."""

    def on_train_start(self, trainer, pl_module):
        SEEN.clear()

        convs = [m for m in pl_module.net.modules() if isinstance(m, torch.nn.Conv2d)]

        def record(module, args, output):
            if module.training:
                SEEN.setdefault("weights", []).append(
                    all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs))
                # the first conv's output has many channels: there NHWC and NCHW differ (a 1-channel input
                # is contiguous in both formats)
                SEEN.setdefault("activations", []).append(output.is_contiguous(memory_format=torch.channels_last))

        convs[0].register_forward_hook(record)


def _run(tiny_phantom, compose_cfg, tmp_path, channels_last: bool) -> dict[str, list[bool]]:
    cfg = compose_cfg([*tiny_train_overrides(tiny_phantom["sagittal"]), "trainer.max_epochs=1",
                       "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                       "+trainer.limit_test_batches=1", "extras.data_check=off",
                       f"callbacks.train_speed.channels_last={str(channels_last).lower()}",
                       f"+callbacks.probe._target_={__name__}.FormatProbe"],
                      output_dir=tmp_path / f"run_channels_last_{channels_last}")
    train(cfg)
    return dict(SEEN)


def test_channels_last_option_trains_in_nhwc(tiny_phantom, compose_cfg, tmp_path):
    on = _run(tiny_phantom, compose_cfg, tmp_path, channels_last=True)
    assert on["weights"] and all(on["weights"]) and all(on["activations"]), on
    off = _run(tiny_phantom, compose_cfg, tmp_path, channels_last=False)  # the default stays NCHW
    assert off["weights"] and not any(off["weights"]) and not any(off["activations"]), off


def test_compile_option_compiles_the_network_once():
    module = L.LightningModule()
    module.net = torch.nn.Conv2d(1, 2, 3)
    keys = list(module.state_dict())
    TrainSpeed(compile=True).setup(None, module, "fit")
    compiled = module.net._compiled_call_impl
    assert compiled is not None and list(module.state_dict()) == keys  # checkpoints keep their keys
    TrainSpeed(compile=True).setup(None, module, "test")
    assert module.net._compiled_call_impl is compiled
    plain = L.LightningModule()
    plain.net = torch.nn.Conv2d(1, 2, 3)
    TrainSpeed().setup(None, plain, "fit")
    assert plain.net._compiled_call_impl is None


def test_bench_train_prints_a_row_per_setting(monkeypatch, capsys):
    monkeypatch.setenv("SPINENET_SMOKE", "1")
    rc = cli_main(["bench", "train", "--setting", "baseline", "channels_last"])
    out = capsys.readouterr().out
    assert rc == 0
    for name in ("baseline", "channels_last"):
        assert re.search(rf"^  {name}\s+[\d.]+ images/s\s+[\d.]+ ms/step", out, re.M), out
    assert "plain PyTorch loop" not in out  # the settings replace the default comparison
