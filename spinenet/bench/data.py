"""``spinenet bench data``: does the training DataLoader keep up with the training step?

Measures images/s the training loader delivers (decode + augment; 0 and 2 workers) and images/s the
default model's training step consumes (forward, backward, optimizer step) on the same batches, and
prints their ratio. Target on a 2-core machine: the loader delivers at least 3x what the step consumes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from spinenet.bench import smoke


def _loader_rate(datamodule, workers: int, batches: int) -> float:
    datamodule.num_workers = workers
    loader = datamodule.train_dataloader()
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += batch["image"].shape[0]
    return n / (time.perf_counter() - start)


def _step_rate(module, batch, steps: int) -> float:
    optimizer = module.optimizer_factory(params=module.parameters())
    module.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = module.loss(module(batch["image"]), batch["mask"])
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch["image"].shape[0] / (time.perf_counter() - start)


def benchmark(experiment: str = "demo", batches: int | None = None, steps: int | None = None,
              data_dir: str | None = None) -> int:
    """Print the loader's and the training step's images/s for ``experiment`` (``batches`` loader batches,
    ``steps`` training steps; default: 30 and 10, 2 and 1 in smoke mode); the phantom goes to ``data_dir``
    (default: a temporary folder)."""
    batches = batches if batches is not None else (2 if smoke() else 30)
    steps = steps if steps is not None else (1 if smoke() else 10)

    import hydra

    from spinenet.config import compose
    from spinenet.tasks.common import build_module

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = data_dir or str(Path(tmp) / "data")
        cfg = compose("train", [f"experiment={experiment}", f"paths.data_dir={data_dir}"], output_dir=tmp)
        dm = hydra.utils.instantiate(cfg.data, output_dir=None, check="fast")
        dm.prepare_data()
        dm.setup("fit")
        module = build_module(cfg, dm.class_names, dm.label_names)
        batch = next(iter(dm.train_dataloader()))
        consumed = _step_rate(module, batch, steps)
        rows = [(w, _loader_rate(dm, w, batches)) for w in (0, 2)]
    size = "x".join(map(str, cfg.data.image_size))
    print(f"spinenet bench data: experiment={experiment}, images {size}, batch {cfg.data.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  training step consumes      {consumed:8.1f} images/s")
    for workers, rate in rows:
        print(f"  loader, {workers} workers delivers {rate:8.1f} images/s   ratio {rate / consumed:6.2f}x")
    best = max(rate for _, rate in rows) / consumed
    print(f"  best ratio {best:.2f}x (target >= 3x): {'met' if best >= 3 else 'NOT met'}")
    return 0
