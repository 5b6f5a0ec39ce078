"""``spinenet bench diagnose``: end-to-end images/s of the sagittal pipeline on 256x256 slices.

Models: the Šušteršič U-Net (8->256 kernels, 5 poolings, 4 classes) and DiscNet (3 classes, 64x64 crops),
random weights (speed does not depend on them). So that the stages after segmentation see the real number
of discs (a random U-Net's mask is noise), the U-Net's logits get the phantom's ground-truth one-hot mask
added (x10) before the arg-max; everything else is :func:`spinenet.pipeline.diagnose.diagnose_images`:
preprocessing, batched U-Net, logits -> mask, disc contours, level names, crop + CLAHE, batched DiscNet.
Images are in memory (file decoding is not timed).

Printed: images/s end to end and for the U-Net alone, peak memory (CPU: process peak RSS; CUDA: max
allocated), FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``: U-Net + DiscNet x discs per
image) and the achieved FLOP/s as a fraction of a practical peak, measured as a 2048x2048 float32 matmul's
FLOP/s with the same threads (not the vendor's theoretical peak). Target: >= 40 images/s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from spinenet.bench import smoke
from spinenet.pipeline.diagnose import diagnose_images
from spinenet.pipeline.models import CropSettings, Predictor, Preprocessing


def _phantom(n: int, size: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    import tempfile

    from spinenet.data.io import read_image, read_mask
    from spinenet.data.phantom import generate_phantom

    with tempfile.TemporaryDirectory() as tmp:
        m = generate_phantom(Path(tmp) / "p", view="sagittal", patients=n, seed=seed, size=size,
                             slices_per_patient=1)
        import pandas as pd

        df = pd.read_csv(m)
        images = [read_image(m.parent / r) for r in df.image]
        masks = [read_mask(m.parent / r, [0, 85, 170, 255]) for r in df["mask"]]
    return images, masks


class _Oracle(Predictor):
    """A segmenter whose logits get the ground-truth one-hot (x10) added, looked up by the input's bytes, so
    that the stages after segmentation see the real discs whatever runs the U-Net (PyTorch or ONNX Runtime).
    """

    def __init__(self, inner: Predictor, pairs):
        super().__init__(inner.net, inner.prep, inner.source, inner.device)
        self.inner, self.kind = inner, inner.kind
        classes = len(inner.prep.classes)
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


def main(argv: Sequence[str] = ()) -> int:
    from spinenet.pipeline.diagnose import ENGINES

    p = argparse.ArgumentParser(prog="spinenet bench diagnose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4 if smoke() else 64, help="slices per timed pass")
    p.add_argument("--distinct", type=int, default=2 if smoke() else 16, help="distinct phantom slices (repeated)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[2] if smoke() else [8, 16, 32])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as set)")
    p.add_argument("--no-channels-last", action="store_true", help="PyTorch engine: keep NCHW")
    p.add_argument("--engine", nargs="+", choices=ENGINES, default=None,
                   help="default: torch, and onnxruntime where installed (CPU); as `spinenet diagnose --engine`")
    p.add_argument("--repeats", type=int, default=1 if smoke() else 3, help="timed passes; the best is reported")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(list(argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    from spinenet.models.classification import build_classifier
    from spinenet.models.segmentation import build_segmenter
    from spinenet.pipeline.export import onnxruntime_predictor

    dev = args.device
    engines = _engines(args.engine, dev)
    if "onnxruntime" in engines and dev != "cpu":
        raise SystemExit("--engine onnxruntime runs on the CPU; use --device cpu")
    torch.manual_seed(0)
    unet = build_segmenter("unet_sustersic", 4, 1, image_size=(256, 256), base_channels=8, depth=5).eval().to(dev)
    discnet = build_classifier("discnet", 3, 1, image_size=(64, 64)).eval().to(dev)
    channels_last = not args.no_channels_last
    images, masks = _phantom(args.distinct, 256, seed=0)
    data = [images[i % len(images)] for i in range(args.images)]
    seg_prep = Preprocessing("segmentation", [256, 256], classes=["background", "disc", "vertebra", "canal"])
    crop = CropSettings(size=[64, 64], margin=0.1, clahe={"clip": 2.0, "tiles": [4, 4]}, levels=["L4-L5", "L5-S1"])
    cls_prep = Preprocessing("classification", [64, 64], classes=["healthy", "L4-L5", "L5-S1"], crop=crop)
    # channels-last, as `spinenet diagnose` runs a checkpoint (--no-channels-last here to compare)
    torch_seg = Predictor(unet, seg_prep, Path("unet_sustersic"), dev, channels_last=channels_last)
    torch_cls = Predictor(discnet, cls_prep, Path("discnet"), dev, channels_last=channels_last)
    models = {}
    for engine in engines:
        if engine == "torch":
            models[engine] = (torch_seg, torch_cls)
        else:  # exported in memory and checked against PyTorch, as `spinenet diagnose --engine onnxruntime`
            models[engine] = (onnxruntime_predictor(torch_seg), onnxruntime_predictor(torch_cls))
    pairs = list(zip(images, masks, strict=True))

    print(f"device: {dev}, torch threads: {torch.get_num_threads()}, channels_last (torch): {channels_last}, "
          f"torch {torch.__version__}, engines: {', '.join(engines)}")
    x1 = torch.rand(1, 1, 256, 256, device=dev)
    unet_flops = _flops(unet, x1)
    disc_flops = _flops(discnet, torch.rand(1, 1, 64, 64, device=dev))
    res = diagnose_images(data[:8], "sagittal", _Oracle(torch_seg, pairs), torch_cls, 8)
    classified = sum(d["classified"] for r in res for d in r["discs"]) / len(res)
    found = sum(len(r["discs"]) for r in res) / len(res)
    per_image = unet_flops + classified * disc_flops
    print(f"FLOPs per image: U-Net {unet_flops / 1e9:.3f} G + DiscNet {disc_flops / 1e6:.2f} M x {classified:.1f} "
          f"classified discs ({found:.1f} found) = {per_image / 1e9:.3f} GFLOP")
    peak = _matmul_peak(dev)
    print(f"practical peak (2048^2 float32 matmul, measured): {peak / 1e9:.1f} GFLOP/s")
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    best: dict[str, float] = {}
    for engine, (seg_model, cls_model) in models.items():
        seg = _Oracle(seg_model, pairs)
        for bs in args.batch_size:
            times = []
            for _ in range(args.repeats):
                _sync(dev)
                t = time.perf_counter()
                diagnose_images(data, "sagittal", seg, cls_model, bs)
                _sync(dev)
                times.append(time.perf_counter() - t)
            ips = len(data) / min(times)
            best[engine] = max(best.get(engine, 0.0), ips)
            # the U-Net alone, same engine and batch size
            xb = torch.rand(bs, 1, 256, 256, device=dev)
            seg_model(xb)
            _sync(dev)
            t = time.perf_counter()
            for _ in range(max(1, args.images // bs)):
                seg_model(xb)
            _sync(dev)
            unet_ips = bs * max(1, args.images // bs) / (time.perf_counter() - t)
            print(f"{engine:11s} batch {bs:3d}: end to end {ips:6.1f} images/s ({1000 / ips:.1f} ms/image), "
                  f"U-Net alone {unet_ips:6.1f} images/s; achieved {ips * per_image / 1e9:.1f} GFLOP/s = "
                  f"{ips * per_image / peak:.0%} of the practical peak")
    if dev.startswith("cuda"):
        print(f"peak CUDA memory allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"peak process RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if "torch" in best and "onnxruntime" in best:
        print(f"onnxruntime / torch (best batch each, same run): {best['onnxruntime'] / best['torch']:.2f}x")
    engine, top = max(best.items(), key=lambda kv: kv[1])
    target = 40.0
    print(f"best: {top:.1f} images/s end to end with {engine} (target >= {target:.0f} on 2 CPU cores: "
          f"{'met' if top >= target else 'not met'} with {torch.get_num_threads()} threads on {dev})")
    return 0
