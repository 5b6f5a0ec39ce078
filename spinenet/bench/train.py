"""``spinenet bench train``: what does the Lightning module cost per training step over plain PyTorch?

The same model, batches (pre-loaded in memory, so data loading is not measured) and optimizer run
(a) in a plain PyTorch loop and (b) through ``Trainer.fit`` with the project's ``SegmentationModule``
(loss, logging, train metrics). Both run in this process, interleaved, and the median step times are
compared. Target: ratio at most 1.05. Peak memory is printed (CUDA: max allocated; CPU: peak RSS).
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence

import lightning as L
import torch

from spinenet.bench import smoke


class _StepTimer(L.Callback):
    """Wall time from one training batch start to the next: the full per-step cost of the framework."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self.starts.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.starts.append(time.perf_counter())

    @staticmethod
    def _sync(module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()

    def step_times(self, skip: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[skip:-1], self.starts[skip + 1:], strict=True)]


def _plain_loop(module, batches, device, skip: int) -> list[float]:
    net, loss_fn = module.net.to(device), module.loss.to(device)
    optimizer = module.optimizer_factory(params=net.parameters())
    net.train()
    times = []
    for batch in batches:
        start = time.perf_counter()
        x, y = batch["image"].to(device), batch["mask"].to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        loss.item()  # Lightning reads the loss for logging too
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[skip:]


def _lightning_loop(module, batches, accelerator: str, skip: int, tmp: str) -> list[float]:
    timer = _StepTimer()
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=tmp, callbacks=[timer])
    # batch_size=None: the loader hands out the ready-made batches as they are (a bare list would be taken
    # by Lightning as several dataloaders)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False))
    return timer.step_times(skip)


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB (CUDA max allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (process peak RSS)"


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="spinenet bench train", description=__doc__)
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--steps", type=int, default=2 if smoke() else 20)
    parser.add_argument("--warmup", type=int, default=1 if smoke() else 3)
    parser.add_argument("--rounds", type=int, default=1 if smoke() else 2, help="interleaved repetitions of both loops")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra overrides")
    args = parser.parse_args(list(argv))

    import hydra

    from spinenet.config import compose
    from spinenet.tasks.common import build_module

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose("train", [f"experiment={args.experiment}", f"paths.data_dir={tmp}/data", *args.override],
                      output_dir=tmp)
        dm = hydra.utils.instantiate(cfg.data, output_dir=None, check="fast")
        dm.prepare_data()
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        first = [next(loader) for _ in range(min(len(dm.train_dataloader()), 4))]
        batches = [first[i % len(first)] for i in range(args.steps + args.warmup)]
        L.seed_everything(0)
        template = build_module(cfg, dm.class_names, dm.label_names)
        plain, light = [], []
        for _ in range(args.rounds):
            plain += _plain_loop(copy.deepcopy(template), batches, device, args.warmup)
            light += _lightning_loop(copy.deepcopy(template), batches, "gpu" if device.type == "cuda" else "cpu",
                                     args.warmup, tmp)
    p, lt = statistics.median(plain), statistics.median(light)
    print(f"spinenet bench train: experiment={args.experiment}, model={cfg.model.net.name}, "
          f"batch {cfg.data.batch_size} x {list(cfg.data.image_size)}, device {device}, "
          f"{len(plain)} steps each (median)")
    print(f"  plain PyTorch loop   {p * 1000:8.1f} ms/step")
    print(f"  Lightning module     {lt * 1000:8.1f} ms/step")
    print(f"  ratio {lt / p:.3f} (target <= 1.05): {'met' if lt / p <= 1.05 else 'NOT met'}")
    print(f"  peak memory {_peak_memory(device)}")
    return 0
