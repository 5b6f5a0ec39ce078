"""``spinenet bench diagnose``: end-to-end images/s of the sagittal pipeline on 256x256 slices.

Models: the Šušteršič U-Net (8->256 kernels, 5 poolings, 4 classes) and DiscNet (3 classes, 64x64 crops),
random weights (speed does not depend on them). So that the stages after segmentation see the real number
of discs (a random U-Net's mask is noise), the U-Net's logits get the phantom's ground-truth one-hot mask
added (x10) before the arg-max; everything else is what ``spinenet diagnose FOLDER`` runs
(:func:`spinenet.pipeline.diagnose.folder_items` and :func:`~spinenet.pipeline.diagnose.run`): the slices are
PNG files in a temporary folder, decoded, preprocessed, segmented (batched U-Net), turned into masks, disc
contours, level names, crops + CLAHE, classified (batched DiscNet) and written (per study findings.json,
overlay.jpg, report.txt; findings.csv, summary.json, index.html), in the overlapped pipeline of ``run``.

Printed: images/s end to end and of the U-Net alone (same engine, batch size and run) and their ratio, the
process's CPU time per image end to end (all threads; on a shared machine steadier than images/s), peak
memory (CPU: process peak RSS; CUDA: max allocated), FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``:
U-Net + DiscNet x discs per image) and the achieved FLOP/s as a fraction of a practical peak, measured as a
2048x2048 float32 matmul's FLOP/s with the same threads (not the vendor's theoretical peak). Target on 2 CPU
cores: >= 65 images/s end to end, or >= 90% of the U-Net alone (the stages after it hidden behind it).
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from spinenet.bench import smoke
from spinenet.contract import CropRecipe, InputSpec, ModelContract, TaskKind
from spinenet.loading import Predictor, inference_precision
from spinenet.pipeline.diagnose import diagnose_images, folder_items, run


def _phantom(n: int, size: int, seed: int, folder: Path, copies: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` phantom slices and masks; ``copies`` PNG files of them (repeated) in ``folder``, as a user's."""
    import shutil

    import pandas as pd

    from spinenet.data.io import read_image, read_mask
    from spinenet.data.phantom import generate_phantom

    m = generate_phantom(folder.parent / "phantom", view="sagittal", patients=n, seed=seed, size=size,
                         slices_per_patient=1)
    df = pd.read_csv(m)
    images = [read_image(m.parent / r) for r in df.image]
    masks = [read_mask(m.parent / r, [0, 85, 170, 255]) for r in df["mask"]]
    folder.mkdir(parents=True)
    for i in range(copies):
        shutil.copyfile(m.parent / df.image[i % len(df)], folder / f"slice_{i:04d}.png")
    return images, masks


class _Oracle(Predictor):
    """A segmenter whose logits get the ground-truth one-hot (x10) added, looked up by the input's bytes, so
    that the stages after segmentation see the real discs whatever runs the U-Net (PyTorch or ONNX Runtime).
    """

    def __init__(self, inner: Predictor, pairs):
        super().__init__(inner.net, inner.contract, inner.source, inner.device)
        self.inner, self.kind = inner, inner.kind
        classes = len(inner.contract.classes)
        # made once, so that the lookup costs the timed pass next to nothing
        self.table = {hash(img.tobytes()): 10 * torch.nn.functional.one_hot(torch.from_numpy(m).long(), classes)
                      .permute(2, 0, 1).float() for img, m in pairs}

    def __call__(self, x: torch.Tensor, levels=None) -> torch.Tensor:
        logits = self.inner(x)
        return logits + torch.stack([self.table[hash(xi[0].cpu().numpy().tobytes())] for xi in x])


def _flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return int(counter.get_total_flops())


def _matmul_peak(device: str, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _engines(requested: Sequence[str] | None, dev: str) -> list[str]:
    if requested:
        return list(requested)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return ["torch"]
    return ["torch", "onnxruntime"] if dev == "cpu" else ["torch"]


def _unet_alone_rate(seg_model: Any, batch_size: int, images: int, dev: str) -> float:
    """Images/s of the segmenter alone on random input, same engine and batch size (after one warm-up call)."""
    xb = torch.rand(batch_size, 1, 256, 256, device=dev)
    seg_model(xb)
    _sync(dev)
    t = time.perf_counter()
    calls = max(1, images // batch_size)
    for _ in range(calls):
        seg_model(xb)
    _sync(dev)
    return batch_size * calls / (time.perf_counter() - t)


def _flops_per_image(unet: torch.nn.Module, discnet: torch.nn.Module, slices: Sequence[np.ndarray], seg: Any,
                     cls: Any, dev: str) -> float:
    """U-Net FLOPs plus DiscNet FLOPs times the discs classified per image (counted on 8 slices); printed."""
    unet_flops = _flops(unet, torch.rand(1, 1, 256, 256, device=dev))
    disc_flops = _flops(discnet, torch.rand(1, 1, 64, 64, device=dev))
    res = diagnose_images(slices[:8], "sagittal", seg, cls, 8)
    classified = sum(d["classified"] for r in res for d in r["discs"]) / len(res)
    found = sum(len(r["discs"]) for r in res) / len(res)
    per_image = unet_flops + classified * disc_flops
    print(f"FLOPs per image: U-Net {unet_flops / 1e9:.3f} G + DiscNet {disc_flops / 1e6:.2f} M x {classified:.1f} "
          f"classified discs ({found:.1f} found) = {per_image / 1e9:.3f} GFLOP")
    return per_image


def benchmark(images: int | None = None, distinct: int | None = None, batch_sizes: Sequence[int] | None = None,
              pipeline_threads: int | None = None, threads: int | None = None, channels_last: bool = True,
              engines: Sequence[str] | None = None, repeats: int | None = None, device: str | None = None,
              overlays: str = "all", overlay_format: str = "jpg", precision: str = "auto") -> int:
    """Print images/s of the diagnosis pipeline end to end and of the U-Net alone, per engine and batch size.

    ``images`` slices per timed pass made of ``distinct`` phantom slices, ``repeats`` timed passes (the best is
    reported); defaults 64, 16, [8, 16, 32], 3 (4, 2, [2], 1 in smoke mode). ``engines``: default torch, and
    onnxruntime where installed (CPU). ``device``: default cuda when available. ``overlays``, ``overlay_format``,
    ``precision``: as ``spinenet diagnose --overlays``, ``--overlay-format``, ``--precision`` (the PyTorch
    segmenter's; the target is measured with their defaults)."""
    images = images if images is not None else (4 if smoke() else 64)
    distinct = distinct if distinct is not None else (2 if smoke() else 16)
    batch_sizes = list(batch_sizes) if batch_sizes is not None else ([2] if smoke() else [8, 16, 32])
    repeats = repeats if repeats is not None else (1 if smoke() else 3)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads:
        torch.set_num_threads(threads)
    from spinenet.models.classification import build_classifier
    from spinenet.models.segmentation import build_segmenter
    from spinenet.pipeline.export import onnxruntime_predictor

    dev = device
    engines = _engines(engines, dev)
    if "onnxruntime" in engines and dev != "cpu":
        raise SystemExit("--engine onnxruntime runs on the CPU; use --device cpu")
    torch.manual_seed(0)
    unet = build_segmenter("unet_sustersic", 4, 1, image_size=(256, 256), base_channels=8, depth=5).eval().to(dev)
    discnet = build_classifier("discnet", 3, 1, image_size=(64, 64)).eval().to(dev)
    tmp = tempfile.TemporaryDirectory(prefix="spinenet_bench_diagnose_")
    folder = Path(tmp.name) / "slices"
    slices, masks = _phantom(distinct, 256, 0, folder, images)
    items = folder_items(folder)
    seg_prep = ModelContract(TaskKind.SEGMENTATION, ("background", "disc", "vertebra", "canal"), InputSpec((256, 256)))
    crop = CropRecipe(size=(64, 64), margin=0.1, clahe={"clip": 2.0, "tiles": [4, 4]}, levels=("L4-L5", "L5-S1"))
    cls_prep = ModelContract(TaskKind.CLASSIFICATION, ("healthy", "L4-L5", "L5-S1"), InputSpec((64, 64)), crop=crop)
    # channels-last, as `spinenet diagnose` runs a checkpoint (--no-channels-last here to compare)
    torch_seg = Predictor(unet, seg_prep, Path("unet_sustersic"), dev, channels_last=channels_last,
                          precision=inference_precision(precision, dev))
    torch_cls = Predictor(discnet, cls_prep, Path("discnet"), dev, channels_last=channels_last)
    models = {}
    for engine in engines:
        if engine == "torch":
            models[engine] = (torch_seg, torch_cls)
        else:  # exported in memory and checked against PyTorch, as `spinenet diagnose --engine onnxruntime`
            models[engine] = (onnxruntime_predictor(torch_seg), onnxruntime_predictor(torch_cls))
    pairs = list(zip(slices, masks, strict=True))

    print(f"device: {dev}, torch threads: {torch.get_num_threads()}, channels_last (torch): {channels_last}, "
          f"segmenter precision (torch): {torch_seg.precision}, "
          f"torch {torch.__version__}, engines: {', '.join(engines)}, overlays: {overlays} ({overlay_format})")
    per_image = _flops_per_image(unet, discnet, slices, _Oracle(torch_seg, pairs), torch_cls, dev)
    peak = _matmul_peak(dev)
    print(f"practical peak (2048^2 float32 matmul, measured; a bf16 segmenter can exceed it): "
          f"{peak / 1e9:.1f} GFLOP/s")
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    best: dict[str, float] = {}
    for engine, (seg_model, cls_model) in models.items():
        seg = _Oracle(seg_model, pairs)
        for bs in batch_sizes:
            times, cpu = [], []
            for r in range(repeats):
                _sync(dev)
                t, c = time.perf_counter(), time.process_time()
                summary = run(items, {"sagittal": seg}, {"sagittal": cls_model}, Path(tmp.name) / f"out_{r}", bs,
                              overwrite=True, progress=False, threads=pipeline_threads,
                              overlays=overlays, overlay_format=overlay_format)
                _sync(dev)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            assert summary["status_counts"]["ok"] == len(items), summary["status_counts"]
            ips = len(items) / min(times)
            unet_ips = _unet_alone_rate(seg_model, bs, images, dev)
            if ips > best.get(engine, (0.0, 0.0, 0))[0]:
                best[engine] = (ips, unet_ips, bs)
            print(f"{engine:11s} batch {bs:3d}: end to end {ips:6.1f} images/s ({1000 / ips:.1f} ms/image, "
                  f"CPU {1000 * cpu[times.index(min(times))] / len(items):.1f} ms/image), "
                  f"U-Net alone {unet_ips:6.1f} images/s, end to end / U-Net alone {ips / unet_ips:.0%}; "
                  f"achieved {ips * per_image / 1e9:.1f} GFLOP/s = {ips * per_image / peak:.0%} of the practical peak")
    if dev.startswith("cuda"):
        print(f"peak CUDA memory allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"peak process RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if "torch" in best and "onnxruntime" in best:
        print(f"onnxruntime / torch (best batch each, same run): {best['onnxruntime'][0] / best['torch'][0]:.2f}x")
    engine, (top, unet_ips, bs) = max(best.items(), key=lambda kv: kv[1][0])
    met = top >= 65.0 or top >= 0.9 * unet_ips
    print(f"best: {top:.1f} images/s end to end with {engine} (batch {bs}; U-Net alone {unet_ips:.1f} images/s, "
          f"end to end / U-Net alone {top / unet_ips:.0%}; target >= 65 images/s or >= 90% of the U-Net alone on "
          f"2 CPU cores: {'met' if met else 'not met'} with {torch.get_num_threads()} threads on {dev})")
    tmp.cleanup()
    return 0
