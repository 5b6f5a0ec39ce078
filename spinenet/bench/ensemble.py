"""`spinenet bench ensemble`: speed and exactness of the WAEM weight search on synthetic member caches.

The member probabilities imitate trained members (no training needed, so the figures depend only on the search):
- segmentation: a ground-truth label map per slice drawn as a lumbar column (vertebral bodies, discs between
  them, a canal band behind them). Each member sees the truth through its own smooth random displacement field
  (~1.5 px, so boundaries move a little differently per member), blurred over 3x3 pixels and sharpened by a
  member-specific confidence plus low-frequency noise, then a softmax; stored as float16 like the on-disk cache.
  Members agree confidently away from boundaries and disagree in a band around them (settled fraction printed).
- classification: every member sees the true class with a member-specific strength, damped on hard samples,
  plus noise shared by all members (correlated errors) and its own noise; softmax, float16.
The naive reference is `naive_scores`: one NumPy weighted average + argmax + confusion per weight vector, timed on
a random sample of grid vectors in the same run and extrapolated to the whole grid.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from spinenet.ensemble.search import (
    baselines,
    exhaustive_search,
    greedy_selection,
    naive_scores,
    simplex_counts,
    step_to_divisions,
)

__all__ = ["print_figures", "run_ensemble_benchmark", "synthetic_classification", "synthetic_segmentation"]


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _smooth_noise(g: torch.Generator, n: int, ch: int, size: int, coarse: int) -> torch.Tensor:
    """Low-frequency noise (n, ch, size, size) with unit-ish amplitude: coarse normal grid, bicubic upsampling."""
    z = torch.randn(n, ch, coarse, coarse, generator=g)
    return F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)


def synthetic_segmentation(
    members: int = 8, slices: int = 32, size: int = 256, classes: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Member probabilities (k, N, C, H, W) float16 and labels (N, H, W) int64 shaped like trained members."""
    g = torch.Generator().manual_seed(seed)
    h = w = size
    y = torch.zeros(slices, h, w, dtype=torch.int64)
    s = size / 256
    for n in range(slices):
        u = torch.rand(8, generator=g)
        cx = (110 + 20 * (u[0] - 0.5)) * s
        top = (25 + 10 * u[1]) * s
        pitch = (44 + 6 * u[2]) * s
        canal_x = cx + (38 + 6 * u[3]) * s
        xs = torch.arange(w, dtype=torch.float32)
        y[n, :, (xs >= canal_x) & (xs <= canal_x + (12 + 4 * u[4]) * s)] = min(3, classes - 1)
        for i in range(6):
            cy = top + i * pitch
            y[n][_ellipse(h, w, cy, cx, 17 * s, (27 + 3 * float(u[5])) * s)] = 1
            y[n][_ellipse(h, w, cy + pitch / 2, cx + 2 * s, 6 * s, (25 + 3 * float(u[6])) * s)] = min(
                2, classes - 1
            )
    onehot = F.one_hot(y, classes).permute(0, 3, 1, 2).float()  # (N, C, H, W)
    base = torch.stack(
        torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")[::-1], -1
    ).unsqueeze(0)  # identity sampling grid (1, H, W, 2) in (x, y) order
    out = torch.empty(members, slices, classes, h, w, dtype=torch.float16)
    for m in range(members):
        disp = _smooth_noise(g, slices, 2, size, 6).permute(0, 2, 3, 1) * (1.5 * 2 / size)  # ~1.5 px
        warped = F.grid_sample(
            onehot, base + disp, mode="bilinear", padding_mode="border", align_corners=True
        )
        soft = F.avg_pool2d(warped, 3, stride=1, padding=1, count_include_pad=False)
        beta = 5.0 + 1.5 * float(torch.rand(1, generator=g))
        logits = beta * soft + 0.35 * _smooth_noise(g, slices, classes, size, 16)
        logits += 0.05 * torch.randn(logits.shape, generator=g)
        out[m] = torch.softmax(logits, 1).to(torch.float16)
    return out, y


def synthetic_classification(
    members: int = 6, samples: int = 1000, classes: int = 5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Member probabilities (k, N, C) float16 and labels (N,) int64 with correlated member errors."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (samples,), generator=g)
    hard = torch.rand(samples, 1, generator=g)
    shared = torch.randn(samples, classes, generator=g)
    onehot = F.one_hot(y, classes).float()
    out = torch.empty(members, samples, classes, dtype=torch.float16)
    for m in range(members):
        strength = 3.0 + 1.5 * float(torch.rand(1, generator=g))
        logits = (
            strength * onehot * (1.0 - 0.7 * hard)
            + 0.9 * shared
            + 0.8 * torch.randn(samples, classes, generator=g)
        )
        out[m] = torch.softmax(1.5 * logits, 1).to(torch.float16)
    return out, y


def run_ensemble_benchmark(
    device: str | torch.device | None = None, seed: int = 0, naive_samples: int = 20, size: int = 256
) -> dict:
    """Run both benchmarks; return the figures as a dict (see `main` for the printed table)."""
    dev = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    result: dict = {"device": str(dev), "torch_threads": torch.get_num_threads(), "seed": seed}

    # ---- classification: 6 x 1000 x 5, step 0.05 (53,130 vectors)
    P, y = synthetic_classification(seed=seed)
    cls = {"members": P.shape[0], "samples": P.shape[1], "classes": P.shape[2], "step": 0.05}
    for name in ("accuracy", "macro_f1", "auroc"):
        exhaustive_search(P[:, :50], y[:50], name, step=0.5, device=dev)  # warm-up (first-call overheads)
        r = exhaustive_search(P, y, name, step=0.05, device=dev)
        base = baselines(P, y, name, device=dev)
        cls[name] = {
            "seconds": r.seconds,
            "score": r.score,
            "weights": [round(float(v), 4) for v in r.weights],
            "aem": base["aem"],
            "best_member": max(base["members"]),
        }
        cls["n_vectors"] = r.n_vectors
        if name == "accuracy":
            cls["settled_fraction"] = r.settled_fraction
            counts = simplex_counts(P.shape[0], step_to_divisions(0.05))
            sample = np.sort(np.random.default_rng(seed).choice(counts.shape[0], 200, replace=False))
            t = time.perf_counter()
            naive = naive_scores(P, y, name, counts[sample])
            per_vec = (time.perf_counter() - t) / len(sample)
            fast = r.scores_all[sample].numpy()
            cls.update(
                naive_seconds_per_vector=per_vec,
                naive_extrapolated_seconds=per_vec * r.n_vectors,
                speedup=per_vec * r.n_vectors / r.seconds,
                naive_vectors=len(sample),
                scores_identical=bool(np.array_equal(naive, fast)),
            )
    g = greedy_selection(P, y, "accuracy", rounds=25, device=dev)
    cls["greedy_accuracy"] = {
        "seconds": g.seconds,
        "score": g.score,
        "weights": [round(float(v), 4) for v in g.weights],
    }
    result["classification"] = cls

    # ---- segmentation: 8 x 32 x 256 x 256 x 4, step 0.1 (19,448 vectors)
    t = time.perf_counter()
    P, y = synthetic_segmentation(size=size, seed=seed)
    seg: dict = {
        "members": P.shape[0],
        "slices": P.shape[1],
        "classes": P.shape[2],
        "size": size,
        "step": 0.1,
        "generate_seconds": time.perf_counter() - t,
    }
    r = exhaustive_search(P, y, "dice", step=0.1, device=dev)
    seg.update(
        n_vectors=r.n_vectors,
        seconds=r.seconds,
        settled_fraction=r.settled_fraction,
        score=r.score,
        weights=[round(float(v), 4) for v in r.weights],
    )
    base = baselines(P, y, "dice", device=dev)
    seg["aem"] = base["aem"]
    seg["aem_on_grid"] = bool(step_to_divisions(0.1) % P.shape[0] == 0)  # equal weights 1/k need k | n
    seg["best_member"] = max(base["members"])

    # Naive loop on a random sample of grid vectors, same run.
    n = step_to_divisions(0.1)
    counts = simplex_counts(P.shape[0], n)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(counts.shape[0], size=min(naive_samples, counts.shape[0]), replace=False))
    t = time.perf_counter()
    naive = naive_scores(P, y, "dice", counts[sample])
    naive_s = time.perf_counter() - t
    fast = r.scores_all[sample].numpy()
    per_vec = naive_s / len(sample)
    seg.update(
        naive_vectors=len(sample),
        naive_seconds=naive_s,
        naive_seconds_per_vector=per_vec,
        naive_extrapolated_seconds=per_vec * r.n_vectors,
        speedup=per_vec * r.n_vectors / r.seconds,
        scores_identical=bool(np.array_equal(naive, fast)),
        same_optimum_on_sample=bool(
            int(np.argmax(naive)) == int(np.argmax(fast)) and naive.max() == fast.max()
        ),
    )
    result["segmentation"] = seg
    return result


def _fmt_s(x: float) -> str:
    return f"{x:.3f} s" if x < 100 else f"{x:,.0f} s"


def print_figures(r: dict) -> int:
    """Print the figures of :func:`run_ensemble_benchmark`; 1 when the search is not exact on the sample."""
    c, s = r["classification"], r["segmentation"]
    print(f"device: {r['device']}  torch threads: {r['torch_threads']}  seed: {r['seed']}")
    print()
    print(
        f"classification: {c['members']} members x {c['samples']} samples x {c['classes']} classes, "
        f"step {c['step']} ({c['n_vectors']:,} vectors), settled samples {c['settled_fraction']:.1%}"
    )
    print("| objective | search | best WAEM | AEM | best member | weights |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("accuracy", "macro_f1", "auroc"):
        e = c[name]
        print(
            f"| {name} | {_fmt_s(e['seconds'])} | {e['score']:.4f} | {e['aem']:.4f} | {e['best_member']:.4f} "
            f"| {e['weights']} |"
        )
    gr = c["greedy_accuracy"]
    print(
        f"| accuracy (greedy, 25 rounds) | {_fmt_s(gr['seconds'])} | {gr['score']:.4f} | | | {gr['weights']} |"
    )
    print(
        f"naive NumPy loop (accuracy, {c['naive_vectors']} sampled vectors): "
        f"{c['naive_seconds_per_vector'] * 1e3:.2f} ms per vector, extrapolated "
        f"{_fmt_s(c['naive_extrapolated_seconds'])}, speed ratio {c['speedup']:,.0f}x, "
        f"scores identical: {c['scores_identical']}"
    )
    print()
    print(
        f"segmentation: {s['members']} members x {s['slices']} slices {s['size']}x{s['size']} x {s['classes']} "
        f"classes, step {s['step']} ({s['n_vectors']:,} vectors), objective dice"
    )
    print("| figure | value |")
    print("| --- | --- |")
    rows = [
        ("settled pixels (all members agree)", f"{s['settled_fraction']:.2%}"),
        ("exhaustive search, whole grid", _fmt_s(s["seconds"])),
        (f"naive NumPy loop, {s['naive_vectors']} sampled vectors", _fmt_s(s["naive_seconds"])),
        ("naive loop per vector", _fmt_s(s["naive_seconds_per_vector"])),
        ("naive loop extrapolated to the grid", _fmt_s(s["naive_extrapolated_seconds"])),
        ("speed ratio", f"{s['speedup']:,.0f}x"),
        ("per-vector scores identical on the sample", str(s["scores_identical"])),
        ("same optimum on the sample", str(s["same_optimum_on_sample"])),
        ("best WAEM dice / AEM / best member", f"{s['score']:.4f} / {s['aem']:.4f} / {s['best_member']:.4f}"),
        ("best weights", str(s["weights"])),
    ]
    for k_, v_ in rows:
        print(f"| {k_} | {v_} |")
    if not s["aem_on_grid"]:
        print(
            f"note: the plain average (weights 1/{s['members']}) is not a point of the step-{s['step']} grid, "
            "so the grid optimum can score below AEM; report both"
        )
    ok = s["scores_identical"] and s["same_optimum_on_sample"] and c["scores_identical"]
    return 0 if ok else 1

