"""``spinenet bench train``: what does the Lightning module cost per training step over plain PyTorch?

The same model, batches (pre-loaded in memory, so data loading is not measured) and optimizer run
(a) in a plain PyTorch loop and (b) through ``Trainer.fit`` with the project's ``SegmentationModule``
(loss, logging, train metrics). Both run in this process, interleaved, and the median step times are
compared. Target: ratio at most 1.05. Peak memory is printed (CUDA: max allocated; CPU: peak RSS).

``--setting NAME`` (repeatable) instead measures training speed options through ``Trainer.fit`` on the
experiment's real training loader (loading included): images/s per setting, settings interleaved per
round, medians. ``--epoch-time`` times one full training epoch of the experiment's default config.
"""

from __future__ import annotations

import copy
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence

import lightning as L
import torch

from spinenet.bench import smoke
from spinenet.errors import ConfigError


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

    def first_step(self) -> float:
        return self.starts[1] - self.starts[0]

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


# what each --setting changes relative to the experiment's config (baseline: nothing)
SETTINGS = {
    "baseline": "the experiment's config",
    "channels_last": "callbacks.train_speed.channels_last=true (weights and inputs NHWC)",
    "bf16": "trainer.precision=bf16-mixed (autocast)",
    "compile": "callbacks.train_speed.compile=true (torch.compile of the network)",
    "workers2": "data.num_workers=2 (loader worker processes)",
}


def _setting_run(setting: str, dm, template, accelerator: str, steps: int, skip: int,
                 tmp: str) -> tuple[list[float], float]:
    """Per-step times of ``steps`` training batches from the real loader under one setting, and the first
    step's time (compilation and worker start-up land there)."""
    from spinenet.utils.callbacks import TrainSpeed

    timer = _StepTimer()
    parts = set(setting.split("+"))
    callbacks = [timer, TrainSpeed(channels_last="channels_last" in parts, compile="compile" in parts)]
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        limit_train_batches=steps, num_sanity_val_steps=0, default_root_dir=tmp,
                        precision="bf16-mixed" if "bf16" in parts else "32-true", callbacks=callbacks)
    dm.num_workers = 2 if "workers2" in parts else 0
    try:
        trainer.fit(copy.deepcopy(template), train_dataloaders=dm.train_dataloader())
    finally:
        dm.num_workers = 0
    return timer.step_times(skip), timer.first_step()


def _epoch_time(cfg, dm, template, accelerator: str, tmp: str) -> tuple[float, int]:
    """Seconds of one full training epoch (no validation) and its number of batches."""
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=tmp, precision=cfg.trainer.precision)
    loader = dm.train_dataloader()
    start = time.perf_counter()
    trainer.fit(copy.deepcopy(template), train_dataloaders=loader)
    return time.perf_counter() - start, len(loader)


def benchmark(experiment: str = "demo", steps: int | None = None, warmup: int | None = None,
              rounds: int | None = None, overrides: Sequence[str] = (), settings: Sequence[str] = (),
              epoch_time: bool = False) -> int:
    """Print the Lightning-vs-plain-loop step times of ``experiment`` (``steps`` timed after ``warmup``, over
    ``rounds`` interleaved rounds; defaults 20, 3, 2; 2, 1, 1 in smoke mode) or, with ``settings`` (names of
    :data:`SETTINGS`, combined with +) or ``epoch_time``, images/s per speed setting and one epoch's time."""
    steps = steps if steps is not None else (2 if smoke() else 20)
    warmup = warmup if warmup is not None else (1 if smoke() else 3)
    rounds = rounds if rounds is not None else (1 if smoke() else 2)
    settings = list(settings)
    unknown = sorted({part for name in settings for part in name.split("+")} - set(SETTINGS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; choose from {sorted(SETTINGS)}")

    import hydra

    from spinenet.config import compose
    from spinenet.tasks.common import build_module

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose("train", [f"experiment={experiment}", f"paths.data_dir={tmp}/data", *overrides],
                      output_dir=tmp)
        dm = hydra.utils.instantiate(cfg.data, output_dir=None, check="fast")
        dm.prepare_data()
        dm.setup("fit")
        accelerator = "gpu" if device.type == "cuda" else "cpu"
        header = (f"spinenet bench train: experiment={experiment}, model={cfg.model.net.name}, "
                  f"batch {cfg.data.batch_size} x {list(cfg.data.image_size)}, device {device}, "
                  f"{torch.get_num_threads()} threads")
        if settings or epoch_time:
            L.seed_everything(0)
            template = build_module(cfg, dm.class_names, dm.label_names)
            print(header)
            if settings:
                _print_settings(settings, dm, template, accelerator, tmp, cfg.data.batch_size, rounds, steps, warmup)
            if epoch_time:
                seconds, n = _epoch_time(cfg, dm, template, accelerator, tmp)
                print(f"  one training epoch ({n} batches, {len(dm.train_dataloader().dataset)} images, "
                      f"precision {cfg.trainer.precision}, {dm.num_workers} workers): {seconds:.1f} s")
            return 0
        loader = iter(dm.train_dataloader())
        first = [next(loader) for _ in range(min(len(dm.train_dataloader()), 4))]
        batches = [first[i % len(first)] for i in range(steps + warmup)]
        L.seed_everything(0)
        template = build_module(cfg, dm.class_names, dm.label_names)
        plain, light = [], []
        for _ in range(rounds):
            plain += _plain_loop(copy.deepcopy(template), batches, device, warmup)
            light += _lightning_loop(copy.deepcopy(template), batches, accelerator, warmup, tmp)
    p, lt = statistics.median(plain), statistics.median(light)
    print(f"{header}, {len(plain)} steps each (median)")
    print(f"  plain PyTorch loop   {p * 1000:8.1f} ms/step")
    print(f"  Lightning module     {lt * 1000:8.1f} ms/step")
    print(f"  ratio {lt / p:.3f} (target <= 1.05): {'met' if lt / p <= 1.05 else 'NOT met'}")
    print(f"  peak memory {_peak_memory(device)}")
    return 0


def _print_settings(settings: list[str], dm, template, accelerator: str, tmp: str, batch_size: int,
                    rounds: int, steps: int, warmup: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in settings}
    first: dict[str, list[float]] = {name: [] for name in settings}
    failed: dict[str, str] = {}
    for _ in range(rounds):
        for name in settings:
            if name in failed:
                continue
            try:
                step_times, first_step = _setting_run(name, dm, template, accelerator, steps + warmup,
                                                 warmup, tmp)
                times[name] += step_times
                first[name].append(first_step)
            except Exception as exc:  # a setting this machine or torch build cannot run is reported, not fatal
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    counts = sorted({len(t) for t in times.values() if t})
    print(f"  {rounds} interleaved round(s), up to {steps} steps each after {warmup} warm-up "
          f"(one epoch at most: {'/'.join(map(str, counts)) or 0} steps timed per setting), real loader, median step")
    base = statistics.median(times["baseline"]) if times.get("baseline") else None
    for name in settings:
        if name in failed:
            print(f"  {name:<20} failed: {failed[name]}")
            continue
        step = statistics.median(times[name])
        versus = f"  x{base / step:.2f} vs baseline" if base else ""
        print(f"  {name:<20} {batch_size / step:8.1f} images/s  {step * 1000:8.1f} ms/step{versus}"
              f"  (first step {max(first[name]):.1f} s)")
