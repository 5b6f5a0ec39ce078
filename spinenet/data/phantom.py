"""Synthetic lumbar-spine MRI phantom: T2-weighted-looking sagittal and axial slices with masks and labels.

The phantom is the project's embedded default data set. It is written in the same layout users bring for
real data (``images/``, ``masks/``, ``manifest.csv``), so every part of the pipeline runs on it unchanged.

Conventions
-----------
- Sagittal images: the patient's head at the top, anterior (abdomen) on the image left, posterior (the back)
  on the image right, as in SPIDER's sagittal slices.
- Axial images: radiological convention: anterior at the top, posterior at the bottom, the patient's left
  on the image right (so a ``left`` protrusion lies right of the midline in the picture). A horizontal
  flip therefore swaps the ``left`` and ``right`` labels.
- Masks: class ``i`` is written as gray value ``85 * i`` (``MASK_GRAY_STEP``). Sagittal classes:
  background, disc, vertebra (vertebral bodies L1-L5 and the sacrum; posterior elements stay background),
  canal. Axial classes: background, disc, canal, posterior (laminae, facets, spinous process).
- A mask depends only on the anatomy dict and the label; the generator passed to ``synth_slice`` drives
  textures, bowel, vessels, bias field and noise. So ``synth_slice`` with a fixed anatomy dict gives masks
  that can be compared label against label on the same patient.
- Axial ``herniated`` is 1 for focal protrusions (central, left, right) and 0 for healthy and bulge.

Geometry is drawn in "image fractions" (0..1 across the output image) on a canvas with a margin
(supersampled for images of 128 pixels or less), blurred for partial volume, then rotated, shifted, elastically
deformed and resampled to the output size; bias field and Rician noise are added at the output resolution,
as an MR scanner would. Generation takes roughly 40 ms per 256-pixel slice on one CPU core.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from spinenet.errors import ConfigError, DataError
from spinenet.utils.outdir import build_atomically, prepare_output_dir
from spinenet.utils.overlay import PALETTE, overlay_mask

SAGITTAL_CLASSES = ("background", "disc", "vertebra", "canal")
AXIAL_CLASSES = ("background", "disc", "canal", "posterior")
SAGITTAL_LABELS = ("healthy", "L4-L5", "L5-S1")
AXIAL_LABELS = ("healthy", "bulge", "central", "left", "right")
MASK_GRAY_STEP = 85  # class i is written as gray value 85*i in mask PNGs
VIEWS = ("sagittal", "axial")
GENERATOR_VERSION = 1
PHANTOM_OUTPUTS = ("images", "masks", "manifest.csv", "phantom.json")  # what generate_phantom writes

log = logging.getLogger(__name__)

_MARGIN = 0.16  # canvas margin (image fractions) so a rotated, shifted crop never leaves the canvas
_SAG = {name: i for i, name in enumerate(SAGITTAL_CLASSES)}
_AX = {name: i for i, name in enumerate(AXIAL_CLASSES)}
_LEVELS = ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")


# --------------------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------------------
def labels_for(view: str) -> tuple[str, ...]:
    """The label names of a view."""
    _check_view(view)
    return SAGITTAL_LABELS if view == "sagittal" else AXIAL_LABELS


def classes_for(view: str) -> tuple[str, ...]:
    """The mask class names of a view (class i is gray 85*i)."""
    _check_view(view)
    return SAGITTAL_CLASSES if view == "sagittal" else AXIAL_CLASSES


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise ConfigError(f"phantom view must be one of {list(VIEWS)}, got {view!r}")


def _check_size(size: int) -> None:
    if not isinstance(size, int | np.integer) or size < 64 or size % 32:
        raise ConfigError(f"phantom size must be an integer multiple of 32 and at least 64, got {size!r}")


def _check_label(view: str, label: str) -> None:
    if label not in labels_for(view):
        raise ConfigError(f"phantom {view} label must be one of {list(labels_for(view))}, got {label!r}")


# --------------------------------------------------------------------------------------------------------
# small geometry helpers (points are (N, 2) arrays of x, y in image fractions; y points down)
# --------------------------------------------------------------------------------------------------------
def _dir(a: float) -> np.ndarray:
    """Unit vector down the spine for a tilt ``a`` (radians; positive tilts the way down posteriorly)."""
    return np.array([math.sin(a), math.cos(a)])


def _nrm(a: float) -> np.ndarray:
    """Unit vector pointing posteriorly, perpendicular to ``_dir(a)``."""
    return np.array([math.cos(a), -math.sin(a)])


def _chaikin(p: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Corner cutting: rounds a closed polygon's corners (vertebral bodies are not boxes)."""
    p = np.asarray(p, dtype=np.float64)
    for _ in range(iterations):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], axis=1).reshape(-1, 2)
    return p


def _ellipse(center, axes, angle: float = 0.0, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([center[0] + c * x - s * y, center[1] + s * x + c * y], axis=1)


def _band(p0, p1, t0: float, t1: float, side: np.ndarray) -> np.ndarray:
    """Quadrilateral along segment p0-p1 between offsets t0 and t1 towards ``side``."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    return np.array([p0 + t0 * side, p1 + t0 * side, p1 + t1 * side, p0 + t1 * side])


class _Canvas:
    """Supersampled drawing surface: an intensity image and a class-id label map in the same frame."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng = size, rng
        self.ss = 2 if size <= 128 else 1  # supersample small images: smoother edges, partial volume
        self.scale = size * self.ss
        self.n = round(size * (1 + 2 * _MARGIN)) * self.ss
        self.img = np.zeros((self.n, self.n), np.float32)
        self.lab = np.zeros((self.n, self.n), np.uint8)
        grid = (np.arange(self.n, dtype=np.float32) + 0.5) / self.scale - _MARGIN
        self.xx, self.yy = np.meshgrid(grid, grid)
        self._noise: dict[tuple, np.ndarray] = {}

    def px(self, pts) -> np.ndarray:
        return (np.asarray(pts, dtype=np.float64) + _MARGIN) * self.scale

    def poly(self, pts) -> np.ndarray:
        """Boolean mask of a filled polygon (sub-pixel vertex precision)."""
        m = np.zeros((self.n, self.n), np.uint8)
        cv2.fillPoly(m, [np.round(self.px(pts) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        return m.astype(bool)

    def polys(self, polys) -> np.ndarray:
        m = np.zeros((self.n, self.n), bool)
        for p in polys:
            m |= self.poly(p)
        return m

    def soft(self, mask: np.ndarray, sigma_px: float) -> np.ndarray:
        """A mask blurred to a weight in [0, 1] (soft tissue boundaries, nucleus fading into annulus)."""
        out = np.zeros((self.n, self.n), np.float32)
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if len(ys) == 0:
            return out
        s = sigma_px * self.ss
        pad = int(3 * s) + 2
        y0, y1 = max(0, ys[0] - pad), min(self.n, ys[-1] + pad + 1)
        x0, x1 = max(0, xs[0] - pad), min(self.n, xs[-1] + pad + 1)
        roi = mask[y0:y1, x0:x1].astype(np.float32)  # blur only around the mask: much cheaper
        out[y0:y1, x0:x1] = cv2.GaussianBlur(roi, (0, 0), s) if s > 0 else roi
        return out

    def noise(self, sigma: float, sigma_y: float | None = None, key: int = 0) -> np.ndarray:
        """Smooth zero-mean, unit-variance noise; sigma in pixels of a 256-pixel image (anatomy scales with
        the image), anisotropic if sigma_y is given.

        Fields are cached per (sigma, sigma_y, key): tissues are disjoint, so sharing one field between
        them is invisible and saves most of the time; pass another key for an independent field.
        """
        sy = sigma if sigma_y is None else sigma_y
        cache_key = (sigma, sy, key)
        if cache_key in self._noise:
            return self._noise[cache_key]
        sigma, sy = max(0.35, sigma * self.size / 256), max(0.35, sy * self.size / 256)
        m = self.n // self.ss
        f = max(1.0, min(sigma, sy) / 2.0)  # a coarser grid for wide kernels keeps this cheap
        g = max(4, int(m / f))
        z = self.rng.standard_normal((g, g), dtype=np.float32)
        z = cv2.GaussianBlur(z, (0, 0), sigmaX=sigma / f, sigmaY=sy / f)
        z /= float(z.std()) + 1e-6
        z = cv2.resize(z, (self.n, self.n), interpolation=cv2.INTER_LINEAR)
        self._noise[cache_key] = z
        return z

    def put(self, mask: np.ndarray, value, cls: int | None = None) -> None:
        """Paint intensity (scalar or field) and optionally a class into the masked pixels."""
        self.img[mask] = value[mask] if isinstance(value, np.ndarray) else value
        if cls is not None:
            self.lab[mask] = cls

    def rim(self, mask: np.ndarray, width_px: float) -> np.ndarray:
        """Inner rim of a mask (cortical bone, annulus edge)."""
        k = max(1, round(width_px * self.ss))
        inner = cv2.erode(mask.astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8))
        return mask & ~inner.astype(bool)

    def lines(self, polylines, width_px: float) -> np.ndarray:
        """Float layer with anti-aliased open polylines (nerve roots, fascia, septa)."""
        layer = np.zeros((self.n, self.n), np.float32)
        t = max(1, round(width_px * self.ss))
        pl = [np.round(self.px(p) * 16).astype(np.int32) for p in polylines]
        cv2.polylines(layer, pl, False, 1.0, t, cv2.LINE_AA, shift=4)
        return layer


def _tissue(rng: np.random.Generator) -> dict[str, float]:
    """Per-patient T2 tissue intensities (randomised so image statistics do not reveal the label)."""
    u = rng.uniform
    return {
        "marrow": u(0.34, 0.55),
        "cortex": u(0.02, 0.07),
        "annulus": u(0.08, 0.2),
        "nucleus": u(0.6, 0.92),
        "csf": u(0.86, 1.0),
        "cord": u(0.25, 0.42),
        "muscle": u(0.12, 0.24),
        "fat": u(0.5, 0.78),
        "abdomen": u(0.12, 0.3),
        "ligament": u(0.02, 0.07),
        "herniation": u(0.18, 0.5),
        "noise": u(0.012, 0.04),
        "gamma": u(0.8, 1.25),
        "gain": u(0.82, 1.0),
        "coil": u(0.0, 0.4),
        "bias": u(0.05, 0.16),
    }


# --------------------------------------------------------------------------------------------------------
# anatomy
# --------------------------------------------------------------------------------------------------------
def sample_anatomy(rng: np.random.Generator, view: str) -> dict:
    """Random patient anatomy (sizes in image fractions, angles in degrees) for ``synth_slice``.

    Every label-specific parameter (protrusion size, bulge) is drawn for every patient whatever its label,
    so the same draw can be rendered healthy or diseased.
    """
    _check_view(view)
    return _sample_sagittal(rng) if view == "sagittal" else _sample_axial(rng)


def _sample_sagittal(rng: np.random.Generator) -> dict:
    u = rng.uniform
    bh = u(0.08, 0.094)
    bw = bh * u(1.45, 1.7)
    dh = u(0.026, 0.034)
    degen = np.where(rng.random(5) < 0.3, u(0.4, 1.0, 5), u(0.0, 0.15, 5))
    return {
        "view": "sagittal",
        # L1..L5 body heights / AP widths; L1-L2..L5-S1 disc heights (L5-S1 usually the thinnest)
        "body_h": [bh * f * u(0.95, 1.05) for f in (0.93, 0.96, 0.99, 1.0, 0.97)],
        "body_w": [bw * f * u(0.97, 1.03) for f in (0.92, 0.95, 0.98, 1.0, 1.02)],
        "disc_h": [dh * f * u(0.85, 1.15) for f in (0.82, 0.92, 1.02, 1.08, 0.75)],
        "disc_degen": degen.tolist(),  # 0 healthy bright nucleus .. 1 dark, narrowed disc
        "disc_bulge": u(0.0, 0.18, 5).tolist(),  # physiological posterior bulge, fraction of canal width
        "tilt_top": u(-16.0, -4.0),  # L1 upper endplate tilt, degrees
        "tilt_s1": u(38.0, 54.0),  # sacral slope
        "tilt_jitter": u(-0.25, 0.25, 11).tolist(),
        "sacrum_curve": u(8.0, 16.0),  # degrees per sacral segment (sacral kyphosis)
        "top": [u(0.47, 0.53), u(0.04, 0.075)],  # centre of L1's upper endplate
        "canal_w": bw * u(0.36, 0.48),
        "canal_gap": u(0.003, 0.006),
        "conus": u(0.2, 1.2),  # conus tip position in body-heights below L1's upper endplate
        "spinous_len": u(0.08, 0.12),
        "spinous_jitter": u(-1.0, 1.0, (5, 3)).tolist(),  # per level: length, angle, tip height
        "skin_wave": u(-1.0, 1.0, 6).tolist(),  # slow undulation of the fat and skin lines
        "muscle_d": u(0.02, 0.06),
        "fat_d": u(0.04, 0.1),
        "protrusion": {"depth": u(0.5, 0.75), "height": u(0.9, 1.4), "migrate": u(-0.35, 0.35)},
        "rotation": u(-10.0, 10.0),
        "shift": u(-0.04, 0.04, 2).tolist(),
        "warp": u(0.004, 0.009),  # elastic deformation amplitude
        "warp_seed": int(rng.integers(2**31)),
        "tissue": _tissue(rng),
        "slice_offset": 0.0,  # lateral position, -1..1 (0 = midsagittal)
        "slice_rotation": 0.0,
    }


def _sample_axial(rng: np.random.Generator) -> dict:
    u = rng.uniform
    level = str(rng.choice(["L4-L5", "L5-S1"]))
    lo = level == "L5-S1"
    return {
        "view": "axial",
        "level": level,
        "center": [0.5 + u(-0.015, 0.015), u(0.3, 0.35)],
        "disc_a": u(0.13, 0.155) * (1.05 if lo else 1.0),  # half width (left-right)
        "disc_b": u(0.085, 0.1),  # half depth (anterior-posterior)
        "squareness": u(2.2, 2.8),  # superellipse exponent of the anterior half
        "post_flat": u(0.75, 0.88),
        "concavity": u(0.2, 0.35),  # posterior concavity, fraction of disc_b
        "concavity_w": u(0.3, 0.42),
        "nucleus": u(0.58, 0.72),
        "degen": float(u(0.4, 1.0)) if rng.random() < 0.3 else float(u(0.0, 0.15)),
        "canal_w": u(0.068, 0.082) * (1.08 if lo else 1.0),  # half width of the thecal sac
        "canal_d": u(0.072, 0.088) * (0.92 if lo else 1.0),
        "canal_gap": u(0.004, 0.008),
        "facet_dx": u(0.0, 0.015),
        "facet_r": [u(0.032, 0.04), u(0.02, 0.026)],
        "facet_angle": u(35.0, 50.0) + (15.0 if lo else 0.0),  # from the sagittal plane; L5-S1 more coronal
        "flavum": u(0.007, 0.012),
        "lamina_t": u(0.02, 0.03),
        "spinous_len": u(0.08, 0.12),
        "spinous_w": u(0.026, 0.036),
        "spinous_angle": u(-6.0, 6.0),
        "psoas": [u(0.065, 0.085) * (1.1 if lo else 1.0), u(0.055, 0.07), u(0.0, 0.015)],
        "paraspinal": [u(0.1, 0.125), u(0.18, 0.22)],  # half width, half depth (clipped by the fat)
        "body": [u(0.6, 0.75), u(0.5, 0.56), u(0.38, 0.42)],  # half axes, centre y of the body outline
        "fat_d": u(0.03, 0.08),
        "bulge": {"grow": u(0.05, 0.08), "convex": u(0.0, 0.1)},
        "protrusion": {
            "depth": u(0.04, 0.058),
            "half_w": u(0.03, 0.042),
            "lateral": u(0.05, 0.068),
            "jitter": u(-0.008, 0.008),
        },
        "iliac": lo and bool(rng.random() < 0.8),
        "zoom": u(1.1, 1.22),
        "rotation": u(-10.0, 10.0),
        "shift": u(-0.04, 0.04, 2).tolist(),
        "warp": u(0.004, 0.009),  # elastic deformation amplitude
        "warp_seed": int(rng.integers(2**31)),
        "tissue": _tissue(rng),
        "slice_offset": 0.0,  # through-plane position within the disc, -1..1 (0 = mid-disc)
        "slice_rotation": 0.0,
    }


# --------------------------------------------------------------------------------------------------------
# textures shared by both views
# --------------------------------------------------------------------------------------------------------
def _marrow(cv: _Canvas, t: dict, scale: float = 1.0) -> np.ndarray:
    """Fatty marrow: fine trabecular grain, patchy heterogeneity, a few focal fat islands."""
    f = t["marrow"] * scale * (1 + 0.07 * cv.noise(0.7) + 0.1 * cv.noise(3.0) + 0.06 * cv.noise(8.0))
    spots = cv.noise(1.5) > 2.6  # focal fat (bright) islands
    f[spots] += 0.18
    return f


def _muscle(cv: _Canvas, t: dict, along_y: bool = True) -> np.ndarray:
    """Muscle with fibre striation and streaks of intramuscular fat."""
    stri = cv.noise(0.7, 6.0) if along_y else cv.noise(3.0, 3.0, key=1)
    f = t["muscle"] * (1 + 0.07 * stri + 0.1 * cv.noise(3.0) + 0.08 * cv.noise(0.7))
    streak = cv.noise(0.8, 5.0) if along_y else cv.noise(1.6, 1.6, key=2)
    f += np.clip(streak - (1.9 if along_y else 1.6), 0, None) * (t["fat"] - t["muscle"]) * 0.35
    return f


def _fat(cv: _Canvas, t: dict) -> np.ndarray:
    return t["fat"] * (1 + 0.05 * cv.noise(1.0) + 0.04 * cv.noise(6.0))


def _bowel(cv: _Canvas, t: dict, region: np.ndarray, count: int) -> None:
    """Bowel in the abdomen: irregular loops of bright fluid with dark walls, pockets of gas, a few
    rounder loops (intensity only; thresholded smooth noise gives organic shapes)."""
    rng = cv.rng
    fluid = (cv.noise(5.0, key=5) > rng.uniform(1.2, 1.7)) & region
    gas = (cv.noise(2.5, key=6) > rng.uniform(1.9, 2.4)) & region & ~fluid
    cv.img += cv.soft(fluid, 0.7) * region * (rng.uniform(0.35, 0.75) - cv.img)
    cv.img += cv.soft(cv.rim(fluid, 1.0), 0.5) * region * (t["muscle"] * 0.8 - cv.img) * 0.7
    cv.img += cv.soft(gas, 0.6) * region * (0.01 - cv.img)
    ys, xs = np.nonzero(region[:: cv.ss * 4, :: cv.ss * 4])
    if len(ys) == 0:
        return
    for _ in range(count):
        j = rng.integers(len(ys))
        c = ((xs[j] * cv.ss * 4 + 0.5) / cv.scale - _MARGIN, (ys[j] * cv.ss * 4 + 0.5) / cv.scale - _MARGIN)
        ax = (rng.uniform(0.01, 0.035), rng.uniform(0.01, 0.03))
        kind = rng.random()
        val = (
            rng.uniform(0.5, 0.9)
            if kind < 0.35
            else rng.uniform(0.0, 0.06)
            if kind < 0.55
            else rng.uniform(0.2, 0.4)
        )
        m = cv.poly(_ellipse(c, ax, rng.uniform(0, np.pi), 24)) & region
        cv.img += cv.soft(m, 0.8) * region * (val - cv.img)


def _finish(cv: _Canvas, anat: dict, size: int, posterior_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate/shift/resample to the output grid, then bias field, Rician noise and intensity scaling."""
    rng, t = cv.rng, anat["tissue"]
    img = cv2.GaussianBlur(cv.img, (0, 0), 0.55 * cv.ss)  # partial volume / point-spread blur
    ang = math.radians(anat["rotation"] + anat.get("slice_rotation", 0.0))
    sx, sy = anat["shift"]
    c, s = math.cos(ang), math.sin(ang)
    # output pixel centre q (image fractions) -> p = R(-ang)(q - centre - shift) / zoom + centre (unrotated)
    rinv = np.array([[c, s], [-s, c]])
    centre = np.array([0.5, 0.5])
    zoom = anat.get("zoom", 1.0)  # > 1: a smaller field of view around the image centre
    rinv = rinv / zoom
    off = rinv @ (0.5 / size - centre - np.array([sx, sy])) + centre
    m = np.zeros((2, 3))
    m[:, :2] = rinv * cv.scale / size
    m[:, 2] = (off + _MARGIN) * cv.scale - 0.5
    # plus a smooth elastic displacement so no outline is a perfect geometric curve; it is drawn from the
    # anatomy's own seed, so the mask still depends on the anatomy and label only
    xs, ys = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    map_x = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]).astype(np.float32)
    map_y = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]).astype(np.float32)
    wrng = np.random.default_rng(int(anat.get("warp_seed", 0)))
    amp = float(anat.get("warp", 0.0)) * cv.scale
    if amp > 0:
        for mp in (map_x, map_y):  # in place
            g = wrng.standard_normal((5, 5)).astype(np.float32)
            mp += amp * cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)
    out = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    lab = cv2.remap(cv.lab, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)

    # smooth multiplicative bias field plus the surface coil's fall-off away from the patient's back
    g = rng.standard_normal((3, 3)).astype(np.float32)
    bias = np.exp(t["bias"] * cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC))
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp = ramp[None, :] if posterior_axis == 1 else ramp[:, None]
    out = out * bias * (1 + t["coil"] * ramp)
    sigma = t["noise"] * rng.uniform(0.85, 1.15)
    n1 = rng.standard_normal(out.shape).astype(np.float32)
    n2 = rng.standard_normal(out.shape).astype(np.float32)
    out = np.sqrt((out + sigma * n1) ** 2 + (sigma * n2) ** 2)  # Rician: magnitude of complex noise
    ref = float(np.percentile(out, 99.5)) + 1e-6
    out = np.clip(out / ref, 0, 1.2) ** t["gamma"] * (255 * t["gain"])
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), lab


# --------------------------------------------------------------------------------------------------------
# sagittal
# --------------------------------------------------------------------------------------------------------
def _body_poly(top: np.ndarray, a_top: float, a_bot: float, h: float, w: float) -> tuple[np.ndarray, dict]:
    """Vertebral body: concave endplates, a waist on the anterior wall; returns polygon and landmarks."""
    a_mid = 0.5 * (a_top + a_bot)
    bot = top + h * _dir(a_mid)
    us = np.linspace(-w / 2, w / 2, 9)
    conc = 0.07 * h * (1 - (2 * us / w) ** 2)
    up = top + us[:, None] * _nrm(a_top) + conc[:, None] * _dir(a_top)
    lo = bot + us[:, None] * _nrm(a_bot) - conc[:, None] * _dir(a_bot)
    post_mid = 0.5 * (up[-1] + lo[-1]) - 0.02 * w * _nrm(a_mid)
    ant_mid = 0.5 * (up[0] + lo[0]) + 0.05 * w * _nrm(a_mid)
    poly = np.concatenate([up, [post_mid], lo[::-1], [ant_mid]])
    marks = {
        "top": top,
        "bot": bot,
        "post_top": top + w / 2 * _nrm(a_top),
        "post_bot": bot + w / 2 * _nrm(a_bot),
        "ant_top": top - w / 2 * _nrm(a_top),
        "ant_bot": bot - w / 2 * _nrm(a_bot),
        "a_mid": a_mid,
    }
    return _chaikin(poly, 2), marks


def _sagittal_geometry(anat: dict, label: str) -> dict:
    """Polygons of the lumbar column, sacrum, discs, canal and posterior elements for one slice."""
    z = float(np.clip(anat["slice_offset"], -1.0, 1.0))
    bw_f = 1 - 0.05 * z * z
    hs, ws = anat["body_h"], [w * bw_f for w in anat["body_w"]]
    tilts = _endplate_tilts(anat)
    bodies, marks, discs, pos = _lumbar_column(anat, tilts, hs, ws)
    s_polys, s_marks, s_gaps = _sacrum(anat, pos, tilts[10], hs[4], ws[4])
    canal_w = anat["canal_w"] * math.sqrt(max(0.2, 1 - 0.45 * z * z))  # narrower off the midline
    gap = anat["canal_gap"]
    disc_polys, nuclei, protrusion = _sagittal_discs(anat, label, discs, hs, z, canal_w, gap)
    P, N, W, ant_line, post_line, canal = _sagittal_canal(marks, s_marks, tilts, canal_w, gap)
    flav = anat["canal_gap"] + 0.004
    spinous = _spinous_processes(anat, marks, discs, hs, z, P, N, post_line, flav)
    dorsal = _dorsal_sacrum(s_marks, z, P, N, post_line, flav)
    return {
        "bodies": bodies,
        "marks": marks,
        "discs": discs,
        "disc_polys": disc_polys,
        "nuclei": nuclei,
        "protrusion": protrusion,
        "sacrum": s_polys,
        "sacrum_gaps": s_gaps,
        "canal": canal,
        "canal_P": P,
        "canal_N": N,
        "canal_W": W,
        "ant_line": ant_line,
        "post_line": post_line,
        "spinous": spinous,
        "tilts": tilts,
        "z": z,
        "dorsal_sacrum": dorsal,
    }


def _endplate_tilts(anat: dict) -> np.ndarray:
    """Endplate tilts in radians, L1 top .. S1 top (11 endplates); discs take more of the lordosis than bodies."""
    weights = np.array([1.0, 1.3, 1.0, 1.3, 1.0, 1.5, 1.0, 2.0, 1.0, 3.5]) * (
        1 + 0.4 * np.array(anat["tilt_jitter"][:10])
    )
    inc = weights / weights.sum() * (anat["tilt_s1"] - anat["tilt_top"])
    return np.radians(anat["tilt_top"] + np.concatenate([[0.0], np.cumsum(inc)]))


def _lumbar_column(
    anat: dict, tilts: np.ndarray, hs: list[float], ws: list[float]
) -> tuple[list[np.ndarray], list[dict], list[dict], np.ndarray]:
    """L1..L5 bodies (polygons, landmarks) and the discs below each; returns where the sacrum starts too."""
    dhs = list(anat["disc_h"])
    pos = np.array(anat["top"], float)
    bodies, marks, discs = [], [], []
    for i in range(5):
        poly, mk = _body_poly(pos, tilts[2 * i], tilts[2 * i + 1], hs[i], ws[i])
        bodies.append(poly)
        marks.append(mk)
        a1, a2 = tilts[2 * i + 1], tilts[2 * i + 2]
        w = ws[i]
        # a wedge disc: keep the posterior height at least 40% of the centre height
        dh = max(dhs[i] * (1 - 0.25 * anat["disc_degen"][i]), (w / 2) * math.tan(a2 - a1) / 0.6)
        nxt = mk["bot"] + dh * _dir(0.5 * (a1 + a2))
        discs.append({"a1": a1, "a2": a2, "up": mk["bot"], "lo": nxt, "h": dh, "w": w})
        pos = nxt
    return bodies, marks, discs, pos


def _sacrum(
    anat: dict, pos: np.ndarray, a: float, h_l5: float, w_l5: float
) -> tuple[list[np.ndarray], list[dict], list[np.ndarray]]:
    """S1 as a tilted block, then fused, tapering segments curving forward: polygons, landmarks, the gaps."""
    s_marks, s_polys, s_gaps = [], [], []
    h_s, w_s = h_l5 * 0.95, w_l5 * 1.0
    for k, (hf, wf) in enumerate([(1.05, 1.0), (0.78, 0.82), (0.62, 0.64), (0.52, 0.5), (0.45, 0.38)]):
        a_bot = a - math.radians(anat["sacrum_curve"]) * (0.4 if k == 0 else 1.0)
        poly, mk = _body_poly(pos, a, a_bot, h_s * hf, w_s * wf)
        s_polys.append(poly)
        s_marks.append(mk)
        gap = 0.005 if k == 0 else 0.003  # rudimentary disc S1-S2, fused segments below
        nxt = mk["bot"] + gap * _dir(a_bot)
        half = w_s * wf * (0.4 if k == 0 else 0.3)
        s_gaps.append(
            _band(
                mk["bot"] - half * _nrm(a_bot),
                mk["bot"] + half * _nrm(a_bot),
                -0.002,
                gap + 0.002,
                _dir(a_bot),
            )
        )
        pos, a = nxt, a_bot
    return s_polys, s_marks, s_gaps


def _sagittal_discs(
    anat: dict, label: str, discs: list[dict], hs: list[float], z: float, canal_w: float, gap: float
) -> tuple[list[np.ndarray], list[tuple], np.ndarray | None]:
    """Disc polygons, bulging slightly beyond the bodies, their nuclei, and the focal protrusion (or None)."""
    disc_polys, nuclei, protrusion = [], [], None
    for i, d in enumerate(discs):
        a_mid = 0.5 * (d["a1"] + d["a2"])
        n1, n2, nm = _nrm(d["a1"]), _nrm(d["a2"]), _nrm(a_mid)
        w, dm = d["w"], _dir(a_mid)
        e = 0.1 * hs[min(i, 4)]
        ua, la = d["up"] - w / 2 * n1 - e * _dir(d["a1"]), d["lo"] - w / 2 * n2 + e * _dir(d["a2"])
        up_, lp = d["up"] + w / 2 * n1 - e * _dir(d["a1"]), d["lo"] + w / 2 * n2 + e * _dir(d["a2"])
        pb = gap + anat["disc_bulge"][i] * canal_w
        post = 0.5 * (d["up"] + d["lo"]) + (w / 2) * nm + pb * nm
        ant = 0.5 * (d["up"] + d["lo"]) - (w / 2 + 0.004 + 0.004 * anat["disc_degen"][i]) * nm
        disc_polys.append(_chaikin(np.array([ua, up_, post, lp, la, ant]), 3))
        c = 0.5 * (d["up"] + d["lo"]) + 0.06 * w * nm
        nuc_f = (1 - 0.3 * z * z) * (1 - 0.5 * anat["disc_degen"][i])
        nuclei.append((c, (0.38 * w * nuc_f, 0.36 * d["h"] * nuc_f), math.atan2(nm[1], nm[0])))
        if label != "healthy" and _LEVELS[i] == label:
            p = anat["protrusion"]
            depth = gap + p["depth"] * canal_w * (1 - 0.25 * z * z)
            hw = 0.5 * p["height"] * d["h"]
            base = 0.5 * (d["up"] + d["lo"]) + (w / 2 - 0.03 * w) * nm
            ts = np.linspace(-np.pi / 2, np.pi / 2, 15)
            tip = (
                base[None, :]
                + (depth + 0.03 * w) * np.cos(ts)[:, None] ** 0.7 * nm
                + (hw * np.sin(ts) + p["migrate"] * d["h"] * np.cos(ts) ** 2)[:, None] * dm
            )
            protrusion = _chaikin(np.concatenate([tip, [base - 0.02 * w * nm]]), 2)
    return disc_polys, nuclei, protrusion


def _sagittal_canal(
    marks: list[dict], s_marks: list[dict], tilts: np.ndarray, canal_w: float, gap: float
) -> tuple[np.ndarray, ...]:
    """The canal: a band behind the posterior walls, up to the top of the canvas, tapering down the sacrum.

    Returns the resampled posterior wall ``P``, its normals ``N``, the widths ``W``, the canal's anterior and
    posterior lines and its polygon."""
    knots = []  # (point on posterior wall, posterior normal, width factor)
    top_mk = marks[0]
    knots.append((top_mk["post_top"] - 0.5 * _dir(tilts[0]), _nrm(tilts[0]), 1.08))
    for mk, (ta, tb) in zip(marks, [(tilts[2 * i], tilts[2 * i + 1]) for i in range(5)], strict=True):
        knots.append((mk["post_top"], _nrm(ta), 1.0))
        knots.append((mk["post_bot"], _nrm(tb), 1.0))
    for k, mk in enumerate(s_marks[:4]):
        wf = [0.95, 0.75, 0.45, 0.0][k]
        knots.append((mk["post_top"], _nrm(mk["a_mid"]), wf + 0.1 if k < 3 else 0.15))
        knots.append((mk["post_bot"], _nrm(mk["a_mid"]), wf))
    pts = np.array([k[0] for k in knots])
    nrms = np.array([k[1] for k in knots])
    wfs = np.array([k[2] for k in knots])
    # dense resampling so offset lines stay smooth
    t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    ts = np.linspace(0, t[-1], 160)
    P = np.stack([np.interp(ts, t, pts[:, 0]), np.interp(ts, t, pts[:, 1])], axis=1)
    N = np.stack([np.interp(ts, t, nrms[:, 0]), np.interp(ts, t, nrms[:, 1])], axis=1)
    N /= np.linalg.norm(N, axis=1, keepdims=True)
    W = np.interp(ts, t, wfs) * canal_w
    ant_line = P + gap * N
    post_line = ant_line + W[:, None] * N
    canal = np.concatenate([ant_line, post_line[::-1]])
    return P, N, W, ant_line, post_line, canal


def _spinous_processes(
    anat: dict,
    marks: list[dict],
    discs: list[dict],
    hs: list[float],
    z: float,
    P: np.ndarray,
    N: np.ndarray,
    post_line: np.ndarray,
    flav: float,
) -> list[np.ndarray]:
    """Posterior elements: lamina + spinous process behind each lumbar level (low contrast)."""
    spinous = []
    for i, mk in enumerate(marks):
        a_mid = mk["a_mid"]
        n, d = _nrm(a_mid), _dir(a_mid)
        h = hs[i]
        j0 = int(np.argmin(np.linalg.norm(P - (mk["post_top"] + 0.25 * h * d), axis=1)))
        j1 = int(np.argmin(np.linalg.norm(P - (mk["post_bot"] + 0.9 * discs[i]["h"] * d), axis=1)))
        b0, b1 = post_line[j0] + flav * N[j0], post_line[j1] + flav * N[j1]
        jl, ja, jt = anat["spinous_jitter"][i]
        ln = anat["spinous_len"] * (1 - 0.5 * abs(z)) * (1 + 0.15 * jl) + 0.02
        tip_dir = _nrm(a_mid - math.radians(15 + 8 * ja))  # spinous processes point down and back
        mid = 0.5 * (b0 + b1)
        tip = mid + ln * tip_dir
        hw_tip = (0.4 + 0.1 * jt) * np.linalg.norm(b1 - b0)
        spinous.append(
            _chaikin(
                np.array(
                    [
                        b0,
                        mid + 0.5 * ln * tip_dir - 0.5 * (b1 - b0) * 0.85,
                        tip - hw_tip * d,
                        tip + 0.25 * hw_tip * n,
                        tip + hw_tip * d,
                        mid + 0.5 * ln * tip_dir + 0.5 * (b1 - b0) * 0.8,
                        b1,
                    ]
                ),
                2,
            )
        )
    return spinous


def _dorsal_sacrum(
    s_marks: list[dict], z: float, P: np.ndarray, N: np.ndarray, post_line: np.ndarray, flav: float
) -> np.ndarray:
    """The dorsal sacrum (laminae and median crest, background class) closing the sacral canal from behind."""
    j = int(np.argmin(np.linalg.norm(P - s_marks[0]["post_top"], axis=1)))
    inner = post_line[j:] + flav * N[j:]
    thick = np.linspace(0.03, 0.012, len(inner))[:, None] * (1 - 0.3 * abs(z))
    return _chaikin(np.concatenate([inner, (inner + thick * N[j:])[::-1]]), 2)


def _synth_sagittal(
    rng: np.random.Generator, label: str, size: int, anat: dict
) -> tuple[np.ndarray, np.ndarray]:
    # tissue by tissue, each painted over the earlier ones (the order is part of the image: keep it)
    t = anat["tissue"]
    g = _sagittal_geometry(anat, label)
    cv = _Canvas(size, rng)
    back = _sagittal_back(cv, t, g, anat)
    _sagittal_front(cv, t, g, back, rng)
    _sagittal_ligaments(cv, t, g, anat)
    _sagittal_canal_contents(cv, t, g, anat, rng)
    # posterior elements (background class): marrow-like, lower contrast, dark cortex
    post = cv.polys(g["spinous"] + [g["dorsal_sacrum"]])
    cv.put(post, _marrow(cv, t, 0.75))
    cv.put(cv.rim(post, 1.0), t["cortex"] * 1.5)
    _sagittal_disc_tissue(cv, t, g, anat, rng)
    _sagittal_vertebrae(cv, t, g)
    return _finish(cv, anat, size, posterior_axis=1)


def _sagittal_back(cv: _Canvas, t: dict, g: dict, anat: dict) -> np.ndarray:
    """Abdomen (anterior) everywhere first, then the back, fat, skin and air behind it; returns the back's
    outline."""
    lo, hi = -_MARGIN - 0.05, 1 + _MARGIN + 0.05
    cv.img[:] = 0.75 * t["abdomen"] * (1 + 0.2 * cv.noise(5.0) + 0.12 * cv.noise(1.2))
    wall = [m["post_top"] for m in g["marks"]] + [m["post_bot"] for m in g["marks"]]
    wall = np.array(sorted(wall, key=lambda p: p[1]))
    back_line = np.concatenate(
        [
            [wall[0] + [0, lo - wall[0][1]]],
            wall,
            [g["post_line"][-1] + [0, 0.2]],
            [[g["post_line"][-1][0], hi]],
        ]
    )
    back = np.concatenate([back_line, [[hi, hi], [hi, lo]]])
    cv.put(cv.poly(back), _muscle(cv, t))
    # subcutaneous fat and skin follow the canal's posterior line at a distance
    P, N = g["post_line"], g["canal_N"]
    d_fat = anat["spinous_len"] + 0.04 + anat["muscle_d"]
    sw = np.array(anat["skin_wave"])
    ph = np.linspace(0, 1, len(P))
    wave = 0.012 * (
        sw[0] * np.sin(2 * np.pi * (1.5 * ph + sw[1])) + sw[2] * np.sin(2 * np.pi * (0.7 * ph + sw[3]))
    )
    fat_in = P + (d_fat + wave)[:, None] * N
    skin = fat_in + (anat["fat_d"] * (1 + 0.3 * sw[4] * np.sin(2 * np.pi * (ph + sw[5]))))[:, None] * N
    fat_in = np.concatenate([[fat_in[0] + [0, lo - fat_in[0][1]]], fat_in, [[fat_in[-1][0] + 0.1, hi]]])
    skin = np.concatenate([[skin[0] + [0, lo - skin[0][1]]], skin, [[skin[-1][0] + 0.1, hi]]])
    cv.put(cv.poly(np.concatenate([fat_in, [[hi, hi], [hi, lo]]])), _fat(cv, t))
    cv.img -= 0.5 * t["fat"] * cv.lines([fat_in + 0.02 * N[0]], 0.6) * (cv.noise(8.0) > 0.3)  # septa
    outside = cv.poly(np.concatenate([skin, [[hi, hi], [hi, lo]]]))
    cv.put(outside, 0.0)
    cv.img += cv.lines([skin], 0.8) * 0.35 * t["fat"] * ~outside
    return back


def _sagittal_front(cv: _Canvas, t: dict, g: dict, back: np.ndarray, rng: np.random.Generator) -> None:
    """Bowel in front of the column (lower abdomen and pelvis mostly) and, in some slices, the aorta."""
    ant = np.array([m["ant_top"] for m in g["marks"]] + [m["ant_bot"] for m in g["marks"]])
    x_front = float(ant[:, 0].min()) - 0.04
    front = (cv.xx < x_front - 0.02 * np.sin(cv.yy * 9)) & ~cv.poly(back)
    _bowel(cv, t, front & (cv.yy > 0.2 + 0.1 * np.sin(cv.xx * 7)), int(rng.integers(3, 8)))
    # the aorta / iliac vessels as a dark flow void just in front of the upper column, in some slices
    if rng.random() < 0.5:
        a_line = np.array([m["ant_top"] for m in g["marks"][:4]]) - [0.035 + rng.uniform(0, 0.02), 0]
        cv.img *= 1 - 0.8 * cv.soft(cv.lines([a_line], 7.0 + 3 * rng.random()) > 0.5, 1.0)


def _sagittal_ligaments(cv: _Canvas, t: dict, g: dict, anat: dict) -> None:
    """A dark line behind the bodies (PLL / dura) and the ligamentum flavum behind the canal."""
    cv.put(cv.poly(np.concatenate([g["canal_P"] - 0.002 * g["canal_N"], g["ant_line"][::-1]])), t["ligament"])
    flav = g["post_line"] + (anat["canal_gap"] + 0.004) * g["canal_N"]
    cv.put(cv.poly(np.concatenate([g["post_line"], flav[::-1]])), t["ligament"] * 1.5)


def _sagittal_canal_contents(cv: _Canvas, t: dict, g: dict, anat: dict, rng: np.random.Generator) -> None:
    """Canal: bright CSF, the cord tapering to the conus, cauda equina roots lying posteriorly (supine)."""
    z = g["z"]
    canal = cv.poly(g["canal"])
    cv.put(canal, t["csf"] * (1 + 0.03 * cv.noise(2.0)), _SAG["canal"])
    A, W, N = g["ant_line"], g["canal_W"], g["canal_N"]
    tip_y = anat["top"][1] + anat["conus"] * anat["body_h"][0]
    tip_i = max(3, int(np.searchsorted(A[:, 1], tip_y)))
    frac = np.linspace(0, 1, tip_i)
    half = 0.28 * W[:tip_i] * np.clip(1.4 * (1 - frac), 0, 1) ** 0.5 * (1 - 0.5 * abs(z))
    centre = A[:tip_i] + 0.5 * W[:tip_i, None] * N[:tip_i]
    cord = np.concatenate([centre - half[:, None] * N[:tip_i], (centre + half[:, None] * N[:tip_i])[::-1]])
    cv.img += cv.soft(cv.poly(cord), 0.6) * canal * (t["cord"] - cv.img)
    roots = []
    for _ in range(int(rng.integers(3, 6))):
        f = rng.uniform(0.45, 0.85)
        end = int(len(A) * rng.uniform(0.7, 0.9))
        wig = 0.003 * np.sin(np.linspace(0, rng.uniform(4, 9), end - tip_i) + rng.uniform(0, 6))
        roots.append(A[tip_i:end] + (f * W[tip_i:end] + wig)[:, None] * N[tip_i:end])
    cv.img -= cv.soft(cv.lines(roots, 0.7) > 0.3, 0.5) * canal * (1 - t["cord"]) * 0.5 * t["csf"]


def _sagittal_disc_tissue(cv: _Canvas, t: dict, g: dict, anat: dict, rng: np.random.Generator) -> None:
    """Discs: dark annulus, bright nucleus (dimmer when degenerate), optional intranuclear cleft; the
    protrusion with its stretched posterior ligament."""
    discs = cv.polys(g["disc_polys"])
    prot = cv.poly(g["protrusion"]) if g["protrusion"] is not None else np.zeros_like(discs)
    cv.put(discs | prot, t["annulus"] * (1 + 0.15 * cv.noise(1.0)), _SAG["disc"])
    for i, (c, axes, ang) in enumerate(g["nuclei"]):
        nuc = cv.poly(_ellipse(c, axes, ang, 32))
        val = t["nucleus"] * (1 - 0.72 * anat["disc_degen"][i])
        cv.img += cv.soft(nuc, 0.8) * discs * (val - cv.img)
        if rng.random() < 0.5:  # intranuclear cleft: a thin dark line across the nucleus
            u = np.array([math.cos(ang), math.sin(ang)])
            cv.img -= cv.lines([np.array([c - 0.8 * axes[0] * u, c + 0.8 * axes[0] * u])], 0.5) * 0.35 * val
    if g["protrusion"] is not None:
        w = cv.soft(prot & ~discs, 0.8) * prot
        cv.img += w * (t["herniation"] * (1 + 0.1 * cv.noise(1.0)) - cv.img)
        cv.put(cv.rim(prot, 0.6) & ~discs, t["ligament"] * 2)  # the stretched posterior ligament


def _sagittal_vertebrae(cv: _Canvas, t: dict, g: dict) -> None:
    """Vertebral bodies and sacrum: marrow with a dark cortical rim and endplates, a basivertebral vein."""
    verts = cv.polys(g["bodies"] + g["sacrum"] + g["sacrum_gaps"])
    cv.put(verts, _marrow(cv, t) * (1 + 0.06 * cv.noise(12.0)), _SAG["vertebra"])
    gaps = [cv.poly(p) for p in g["sacrum_gaps"]]
    cv.put(gaps[0], t["annulus"] * 1.3)  # rudimentary S1-S2 disc; the segments below are fused
    cv.put(np.logical_or.reduce(gaps[1:]), t["marrow"] * 0.7)
    for mk in g["marks"]:
        v0 = mk["post_top"] + 0.5 * (mk["post_bot"] - mk["post_top"])
        vein = [np.array([v0 - 0.003 * _nrm(mk["a_mid"]), v0 - 0.03 * _nrm(mk["a_mid"])])]
        cv.img += cv.lines(vein, 1.0) * verts * 0.25 * t["marrow"]
    cv.put(cv.rim(verts, 0.9), t["cortex"])


# --------------------------------------------------------------------------------------------------------
# axial
# --------------------------------------------------------------------------------------------------------
def _disc_outline(
    cx: float,
    cy: float,
    a: float,
    b: float,
    flat: float,
    conc: float,
    conc_w: float,
    square: float = 2.0,
    n: int = 160,
) -> np.ndarray:
    """Bean-shaped disc outline: a squarish anterior half (superellipse), a flatter posterior half whose
    middle is concave (``conc`` > 0) or convex (``conc`` < 0)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / square
    x = a * np.sign(c) * np.abs(c) ** e
    y = np.where(s > 0, b * flat * s, -b * np.abs(s) ** e)
    y = y - np.where(s > 0, conc * b * np.exp(-((x / (conc_w * a)) ** 2)) * np.sqrt(np.abs(s)), 0)
    return np.stack([cx + x, cy + y], axis=1)


def _posterior_margin(outline: np.ndarray, cy: float, x: np.ndarray) -> np.ndarray:
    """y of the posterior margin of an outline at the given x positions."""
    post = outline[outline[:, 1] > cy]
    order = np.argsort(post[:, 0])
    return np.interp(x, post[order, 0], post[order, 1])


def _axial_geometry(anat: dict, label: str) -> dict:
    """Outlines of the disc (healthy, bulging or with a protrusion), canal and posterior elements."""
    ts = float(np.clip(anat["slice_offset"], -1.0, 1.0))
    cx, cy = anat["center"]
    f = 1 - 0.06 * ts * ts  # near the endplates the slice cuts a slightly smaller disc
    a, b = anat["disc_a"] * f, anat["disc_b"] * f
    healthy, disc, protrusion = _axial_disc(anat, label, cx, cy, a, b, ts)
    canal, apex, y0 = _axial_canal(anat, healthy, cx, cy)
    laminae, flavum, facets, joints, spinous = _axial_posterior(anat, cx, apex, y0, ts)
    return {
        "healthy": healthy,
        "disc": disc,
        "protrusion": protrusion,
        "canal": canal,
        "apex": apex,
        "y0": y0,
        "laminae": laminae,
        "flavum": flavum,
        "facets": facets,
        "joints": joints,
        "spinous": spinous,
        "a": a,
        "b": b,
        "ts": ts,
    }


def _axial_disc(
    anat: dict, label: str, cx: float, cy: float, a: float, b: float, ts: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The healthy disc outline, the outline drawn (bulging for ``bulge``), and the protrusion (or None)."""
    sq = anat["squareness"]
    healthy = _disc_outline(cx, cy, a, b, anat["post_flat"], anat["concavity"], anat["concavity_w"], sq)
    disc = healthy
    if label == "bulge":  # diffuse: the whole outline grows and the posterior concavity is lost
        gr = 1 + anat["bulge"]["grow"]
        disc = _disc_outline(
            cx,
            cy,
            a * gr,
            b * gr,
            0.5 * (1 + anat["post_flat"]),
            -anat["bulge"]["convex"],
            0.6,
            0.5 * (2 + sq),
        )
    protrusion = None
    if label in ("central", "left", "right"):
        p = anat["protrusion"]
        side = {"central": 0.0, "left": 1.0, "right": -1.0}[label]  # patient's left = image right
        xp = cx + side * p["lateral"] + p["jitter"]
        ym = float(_posterior_margin(healthy, cy, np.array([xp]))[0])
        depth = p["depth"] * (1 - 0.2 * ts * ts)
        th = np.linspace(0, np.pi, 21)
        dome = np.stack([xp + p["half_w"] * np.cos(th), ym + depth * np.sin(th) ** 0.8], axis=1)
        protrusion = _chaikin(
            np.concatenate([dome, [[xp - p["half_w"], ym - 0.02], [xp + p["half_w"], ym - 0.02]]]), 2
        )
    return healthy, disc, protrusion


def _axial_canal(anat: dict, healthy: np.ndarray, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Canal: a rounded triangle behind the healthy disc margin (lateral recesses at the front corners);
    returns it, its posterior apex and the y of its front."""
    cw, cd, gap = anat["canal_w"], anat["canal_d"], anat["canal_gap"]
    xs = np.linspace(cx - cw, cx + cw, 25)
    front = np.stack([xs, _posterior_margin(healthy, cy, xs) + gap], axis=1)
    y0 = float(front[:, 1].max())
    apex = np.array([cx, y0 + cd])

    def side_curve(corner: np.ndarray, sgn: float) -> np.ndarray:
        ctrl = np.array([cx + sgn * cw * 0.95, y0 + 0.75 * cd])
        tt = np.linspace(0, 1, 12)[:, None]
        return (1 - tt) ** 2 * corner + 2 * (1 - tt) * tt * ctrl + tt**2 * apex

    right_side = side_curve(front[-1], 1.0)
    left_side = side_curve(front[0], -1.0)[::-1]
    canal = _chaikin(np.concatenate([front, right_side[1:], left_side[1:-1]]), 2)
    return canal, apex, y0


def _axial_posterior(
    anat: dict, cx: float, apex: np.ndarray, y0: float, ts: float
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Posterior elements: ligamentum flavum, laminae, facets (two articular processes), spinous process."""
    cw, cd = anat["canal_w"], anat["canal_d"]
    flav_t, lam_t = anat["flavum"], anat["lamina_t"]
    laminae, flavum, facets, joints = [], [], [], []
    fr = anat["facet_r"]
    for sgn in (-1.0, 1.0):
        corner = np.array([cx + sgn * cw * 0.92, y0 + 0.25 * cd])
        e = apex - corner
        out = np.array([e[1], -e[0]]) * sgn
        out /= np.linalg.norm(out)
        if out[1] < 0:
            out = -out
        flavum.append(_band(corner, apex, -0.002, flav_t, out))
        laminae.append(_chaikin(_band(corner - 0.2 * e, apex + 0.15 * e, flav_t, flav_t + lam_t, out), 1))
        fc = np.array([cx + sgn * (cw + anat["facet_dx"] + fr[0] * 0.6), y0 + 0.2 * cd + 0.01 * ts])
        ang = math.radians(90 - anat["facet_angle"]) * sgn
        facets.append(_ellipse(fc, fr, ang, 40))
        ua = np.array([math.cos(ang), math.sin(ang)])  # along the joint
        va = np.array([-ua[1], ua[0]])
        tau = np.linspace(-0.85, 0.85, 9)[:, None]
        joints.append(fc + tau * fr[0] * ua + 0.3 * fr[1] * (1 - tau**2) * va * sgn)
    sp_ang = math.radians(anat["spinous_angle"])
    sp_dir = np.array([math.sin(sp_ang), math.cos(sp_ang)])
    base = apex + (flav_t + 0.3 * lam_t) * np.array([0, 1])
    ln = anat["spinous_len"] * (1 - 0.15 * abs(ts))
    sw = anat["spinous_w"]
    perp = np.array([sp_dir[1], -sp_dir[0]])
    spinous = _chaikin(
        np.array(
            [
                base - sw * 0.8 * perp,
                base + sp_dir * ln * 0.6 - sw * 0.45 * perp,
                base + sp_dir * ln - sw * 0.6 * perp,
                base + sp_dir * (ln + 0.01),
                base + sp_dir * ln + sw * 0.6 * perp,
                base + sp_dir * ln * 0.6 + sw * 0.45 * perp,
                base + sw * 0.8 * perp,
            ]
        ),
        2,
    )
    return laminae, flavum, facets, joints, spinous


def _synth_axial(
    rng: np.random.Generator, label: str, size: int, anat: dict
) -> tuple[np.ndarray, np.ndarray]:
    # tissue by tissue, each painted over the earlier ones (the order is part of the image: keep it)
    t = anat["tissue"]
    g = _axial_geometry(anat, label)
    cv = _Canvas(size, rng)
    body, inner, deep = _axial_body(cv, t, anat, g["b"], rng)
    _axial_muscles_and_ilium(cv, t, anat, g, body, inner, deep)
    canal = _axial_canal_contents(cv, t, anat, g, rng)
    # posterior elements: flavum, laminae, facets with joint fluid, spinous process
    cv.put(cv.polys(g["flavum"]) & ~canal, t["ligament"] * 1.5)
    post = cv.polys(g["laminae"] + g["facets"] + [g["spinous"]])
    cv.put(post, _marrow(cv, t, 0.9), _AX["posterior"])
    cv.put(cv.rim(post, 1.0), t["cortex"])
    cv.img += cv.lines(g["joints"], 0.6) * post * (t["csf"] * 0.6 - cv.img) * 0.8
    _axial_disc_tissue(cv, t, anat, g)
    return _finish(cv, anat, size, posterior_axis=0)


def _axial_body(
    cv: _Canvas, t: dict, anat: dict, b: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body outline: air outside, subcutaneous fat, abdominal wall, retroperitoneal fat, abdomen in front with
    bowel, and the vessels in front of the disc; returns the body, inside the fat, inside the wall."""
    cx, cy = anat["center"]
    bx, by, bcy = anat["body"]
    skin = _ellipse((0.5, bcy), (bx, by), 0.0, 120)
    fat_in = _ellipse((0.5, bcy), (bx - anat["fat_d"] * 1.5, by - anat["fat_d"]), 0.0, 120)
    wall_in = _ellipse((0.5, bcy), (bx - anat["fat_d"] * 1.5 - 0.03, by - anat["fat_d"] - 0.025), 0.0, 120)
    body, inner, deep = cv.poly(skin), cv.poly(fat_in), cv.poly(wall_in)
    cv.img[:] = 0.0
    cv.put(body, _fat(cv, t))
    cv.img += cv.lines([np.concatenate([skin, skin[:1]])], 0.8) * 0.3 * t["fat"]
    cv.put(inner & (cv.yy < cy + 0.12), _muscle(cv, t, along_y=False))  # abdominal wall muscles
    cv.put(deep, t["fat"] * 0.75 * (1 + 0.12 * cv.noise(3.0)))  # retroperitoneal fat
    # abdomen in front of the spine and psoas, curving back at the flanks (colon), with a soft border
    front = cy - 0.6 * b + 2.0 * (cv.xx - cx) ** 2 + 0.015 * cv.noise(12.0, key=7)
    abdomen = deep & (cv.yy < front)
    cv.img += (
        cv.soft(abdomen, 1.5)
        * deep
        * (t["abdomen"] * (1 + 0.3 * cv.noise(5.0) + 0.12 * cv.noise(1.2)) - cv.img)
    )
    _bowel(cv, t, abdomen, int(rng.integers(4, 10)))
    # vessels in front of the disc: dark arterial flow voids, intermediate veins
    for sgn in (-1.0, 1.0):
        r = rng.uniform(0.014, 0.022)
        arter = cv.poly(_ellipse((cx + sgn * rng.uniform(0.03, 0.05), cy - b - 0.025), (r, r), 0, 24))
        cv.put(arter, t["ligament"] * rng.uniform(0.5, 1.5))
        vein = cv.poly(_ellipse((cx + sgn * rng.uniform(0.07, 0.09), cy - b + 0.005), (1.3 * r, r), 0, 24))
        cv.img += cv.soft(vein, 0.8) * (t["muscle"] * rng.uniform(0.8, 1.6) - cv.img)
    return body, inner, deep


def _axial_muscles_and_ilium(
    cv: _Canvas, t: dict, anat: dict, g: dict, body: np.ndarray, inner: np.ndarray, deep: np.ndarray
) -> None:
    """Psoas beside the disc, quadratus lumborum, the big paraspinal masses behind the laminae, gluteal/iliacus
    muscle and the iliac wings (background class) at the lumbosacral junction."""
    cx, cy = anat["center"]
    a, apex = g["a"], g["apex"]
    ps, pa = anat["psoas"], anat["paraspinal"]
    musc = np.zeros_like(body)
    for sgn in (-1.0, 1.0):
        musc |= cv.poly(
            _ellipse((cx + sgn * (a + ps[2] + ps[0] * 0.8), cy + 0.02), (ps[0], ps[1]), sgn * 0.6, 40)
        )
        musc |= cv.poly(_ellipse((cx + sgn * (a + 0.17), cy + 0.12), (0.065, 0.035), sgn * 0.45, 40))
        c = (cx + sgn * (pa[0] + 0.005), apex[1] - 0.04 + pa[1])
        sq = _disc_outline(c[0], c[1], pa[0], pa[1], 1.0, 0.0, 1.0, 3.0)  # squarish: flat medial border
        musc |= cv.poly(sq) & inner
        if anat["iliac"]:
            musc |= cv.poly(_ellipse((cx + sgn * 0.36, cy + 0.13), (0.075, 0.17), sgn * 0.45, 40))
    musc &= deep | inner
    cv.put(musc, _muscle(cv, t, along_y=False))
    for sgn in (-1.0, 1.0):  # the fat plane between multifidus and erector spinae
        tt = np.linspace(0, 1, 12)
        plane = np.stack([cx + sgn * pa[0] * (0.6 + 0.5 * tt**1.5), apex[1] - 0.02 + 0.27 * tt], axis=1)
        cv.img += cv.lines([plane], 0.8) * musc * 0.3 * (t["fat"] - t["muscle"])
    if anat["iliac"]:
        for sgn in (-1.0, 1.0):
            il = cv.poly(_ellipse((cx + sgn * 0.36, cy + 0.13), (0.042, 0.13), sgn * 0.45, 40)) & deep
            cv.put(il, _marrow(cv, t, 0.9))
            cv.put(cv.rim(il, 1.2), t["cortex"])


def _axial_canal_contents(cv: _Canvas, t: dict, anat: dict, g: dict, rng: np.random.Generator) -> np.ndarray:
    """Canal with CSF and nerve roots lying dependently (posterior) plus the exiting roots at the sides;
    returns the canal's mask."""
    cx = anat["center"][0]
    y0 = g["y0"]
    canal = cv.poly(g["canal"])
    cv.put(canal, t["csf"] * (1 + 0.03 * cv.noise(2.0)), _AX["canal"])
    roots = np.zeros_like(cv.img)
    for _ in range(int(rng.integers(5, 11))):
        r = rng.uniform(0.003, 0.005)
        c = (
            cx + rng.uniform(-0.7, 0.7) * anat["canal_w"] * 0.55,
            y0 + rng.uniform(0.45, 0.8) * anat["canal_d"],
        )
        roots = np.maximum(roots, cv.soft(cv.poly(_ellipse(c, (r, r), 0, 12)), 0.4))
    for sgn in (-1.0, 1.0):
        c = (cx + sgn * anat["canal_w"] * 0.8, y0 + 0.1 * anat["canal_d"])
        roots = np.maximum(roots, cv.soft(cv.poly(_ellipse(c, (0.008, 0.006), 0, 12)), 0.4))
    cv.img -= 0.7 * roots * canal * (cv.img - t["cord"])
    return canal


def _axial_disc_tissue(cv: _Canvas, t: dict, anat: dict, g: dict) -> None:
    """Disc: dark annulus ring, bright nucleus; partial volume of the endplate near the disc's top/bottom;
    the protrusion."""
    cx, cy = anat["center"]
    a, b = g["a"], g["b"]
    disc = cv.poly(g["disc"])
    prot = cv.poly(g["protrusion"]) if g["protrusion"] is not None else np.zeros_like(disc)
    cv.put(disc | prot, t["annulus"] * (1 + 0.15 * cv.noise(1.0)), _AX["disc"])
    nf = anat["nucleus"] * (1 - 0.45 * g["ts"] ** 2) * (1 - 0.4 * anat["degen"])
    nuc = cv.poly(_ellipse((cx, cy - 0.05 * b), (a * nf, b * nf * 0.85), 0, 48))
    val = t["nucleus"] * (1 - 0.72 * anat["degen"])
    cv.img += cv.soft(nuc, 1.8) * disc * (val - cv.img)
    ring = cv.poly(
        _disc_outline(
            cx,
            cy,
            a * 0.9,
            b * 0.88,
            anat["post_flat"],
            anat["concavity"],
            anat["concavity_w"],
            anat["squareness"],
        )
    )  # endplate in partial volume
    w_end = (0.1 + 0.5 * g["ts"] ** 2) * cv.soft(disc & ~ring, 1.0)
    cv.img += w_end * disc * (t["marrow"] - cv.img)
    if g["protrusion"] is not None:
        w = cv.soft(prot & ~disc, 0.6) * prot
        cv.img += w * (t["herniation"] * (1 + 0.1 * cv.noise(1.0)) - cv.img)


# --------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------
def synth_slice(
    rng: np.random.Generator, view: str, label: str, size: int = 256, anatomy: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One slice: image uint8 (size, size), mask uint8 class ids (size, size).

    ``anatomy`` is a dict from ``sample_anatomy`` (drawn from ``rng`` when None); set its ``slice_offset``
    (-1..1: lateral position for sagittal, position within the disc for axial) to move the slice. The mask
    depends only on ``anatomy`` and ``label``; ``rng`` drives textures and noise.
    """
    _check_view(view)
    _check_label(view, label)
    _check_size(size)
    if anatomy is None:
        anatomy = sample_anatomy(rng, view)
    elif anatomy.get("view", view) != view:
        raise ConfigError(f"anatomy was drawn for view {anatomy.get('view')!r}, not {view!r}")
    fn = _synth_sagittal if view == "sagittal" else _synth_axial
    return fn(rng, label, int(size), anatomy)


def _normalise_balance(view: str, class_balance: dict[str, float] | None) -> dict[str, float]:
    labels = labels_for(view)
    if class_balance is None:
        return {lb: 1.0 / len(labels) for lb in labels}
    if not isinstance(class_balance, dict):
        raise ConfigError(f"class_balance must map labels {list(labels)} to weights, got {class_balance!r}")
    unknown = [k for k in class_balance if k not in labels]
    if unknown:
        raise ConfigError(
            f"class_balance has unknown {view} label(s) {unknown}; valid labels: {list(labels)}"
        )
    weights = {}
    for k in labels:
        v = class_balance.get(k, 0.0)
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"class_balance[{k!r}] must be a number, got {v!r}") from None
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"class_balance[{k!r}] must be a finite weight >= 0, got {v!r}")
        weights[k] = v
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError(f"class_balance needs at least one positive weight among {list(labels)}")
    return {k: v / total for k, v in weights.items()}


def assign_labels(n: int, probs: dict[str, float], seed: int) -> list[str]:
    """Balanced, prefix-stable label sequence for ``n`` patients.

    Block 0 holds every label with a positive weight once; later picks go to the label furthest below its
    share (so counts stay within one of ``n * p`` as ``n`` grows). Each block of ``k`` picks is shuffled by
    a generator keyed on (seed, block), so the first N labels do not depend on the total.
    """
    labels = [k for k, p in probs.items() if p > 0]
    k = len(labels)
    p = np.array([probs[lb] for lb in labels])
    counts = np.zeros(k)
    seq: list[int] = []
    n_blocks = -(-n // k)
    for i in range(n_blocks * k):
        if i < k:
            j = i
        else:
            deficit = p * (i + 1) - counts
            j = int(np.argmax(deficit - 1e-9 * np.arange(k)))
        counts[j] += 1
        seq.append(j)
    out: list[str] = []
    for blk in range(n_blocks):
        block = seq[blk * k : (blk + 1) * k]
        order = np.random.default_rng(np.random.SeedSequence([seed, 1, blk])).permutation(k)
        out.extend(labels[block[o]] for o in order)
    return out[:n]


def _slice_offsets(rng: np.random.Generator, n: int) -> np.ndarray:
    base = np.linspace(-0.6, 0.6, n) if n > 1 else np.zeros(1)
    return np.clip(base + rng.uniform(-0.1, 0.1, n), -0.85, 0.85)


def generate_phantom(
    out_dir,
    view: str,
    patients: int,
    seed: int = 0,
    size: int = 256,
    slices_per_patient: int = 3,
    class_balance: dict[str, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write images/, masks/, manifest.csv under out_dir; return the manifest path.

    Each patient gets one label (all its slices share it), assigned by ``assign_labels``; patient ``i``
    draws its anatomy and textures from ``SeedSequence([seed, 0, i])``, so the first N patients are
    identical whether N or more are generated. Labels missing from ``class_balance`` get weight 0.
    """
    _check_phantom_settings(view, patients, seed, size, slices_per_patient)
    probs = _normalise_balance(view, class_balance)
    out = Path(out_dir)
    _prepare_phantom_dir(out, overwrite)
    labels = assign_labels(int(patients), probs, int(seed))
    rows = []
    for i, label in enumerate(labels):
        rows += _write_patient(out, i, label, view, int(seed), int(size), int(slices_per_patient))
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "generator": "spinenet.data.phantom",
        "generator_version": GENERATOR_VERSION,
        "view": view,
        "patients": int(patients),
        "seed": int(seed),
        "size": int(size),
        "slices_per_patient": int(slices_per_patient),
        "class_balance": probs,
        "labels": list(labels_for(view)),
        "classes": list(classes_for(view)),
        "mask_gray_step": MASK_GRAY_STEP,
        "mask_values": [MASK_GRAY_STEP * i for i in range(4)],
    }
    (out / "phantom.json").write_text(json.dumps(meta, indent=2) + "\n")
    return manifest


def _check_phantom_settings(view: str, patients: Any, seed: Any, size: Any, slices_per_patient: Any) -> None:
    """``ConfigError`` naming the first setting that is not what :func:`generate_phantom` needs."""
    _check_view(view)
    if isinstance(patients, bool) or not isinstance(patients, int | np.integer) or patients < 1:
        raise ConfigError(f"phantom patients must be an integer >= 1, got {patients!r}")
    if (
        isinstance(slices_per_patient, bool)
        or not isinstance(slices_per_patient, int | np.integer)
        or slices_per_patient < 1
    ):
        raise ConfigError(f"phantom slices_per_patient must be an integer >= 1, got {slices_per_patient!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"phantom seed must be an integer >= 0, got {seed!r}")
    _check_size(size)


def _prepare_phantom_dir(out: Path, overwrite: bool) -> None:
    """Make ``out/images`` and ``out/masks``; with ``overwrite``, remove the slices an earlier run wrote."""
    # refuses a non-empty folder unless overwriting, and overwriting one that spinenet did not write
    prepare_output_dir(out, overwrite=overwrite, command="data synth", clear=())
    if overwrite:
        # remove only files this generator writes, so stale slices of a larger earlier run cannot linger
        own = re.compile(r"^P\d{4,}_(sagittal|axial)_s\d+\.png$")
        for sub in ("images", "masks"):
            for f in (out / sub).glob("*.png") if (out / sub).is_dir() else []:
                if own.match(f.name):
                    f.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)


def _write_patient(out: Path, i: int, label: str, view: str, seed: int, size: int, slices: int) -> list[dict]:
    """Patient ``i``'s slices (images and masks) from its own random stream; returns their manifest rows."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, i]))
    anat = sample_anatomy(rng, view)
    offsets = _slice_offsets(rng, slices)
    rots = rng.uniform(-1.5, 1.5, slices)  # small motion between slices
    pid = f"P{i + 1:04d}"
    rows = []
    for k in range(slices):
        a = dict(anat, slice_offset=float(offsets[k]), slice_rotation=float(rots[k]))
        img, mask = synth_slice(rng, view, label, size, a)
        name = f"{pid}_{view}_s{k}.png"
        cv2.imwrite(str(out / "images" / name), img)
        cv2.imwrite(str(out / "masks" / name), (mask * MASK_GRAY_STEP).astype(np.uint8))
        row = {
            "patient_id": pid,
            "view": view,
            "slice": k,
            "image": f"images/{name}",
            "mask": f"masks/{name}",
        }
        if view == "sagittal":
            row.update(
                sagittal_class=label,
                herniation_L4L5=int(label == "L4-L5"),
                herniation_L5S1=int(label == "L5-S1"),
            )
        else:
            row.update(
                axial_class=label,
                herniated=int(label in ("central", "left", "right")),
                level=anat["level"],
            )
        rows.append(row)
    return rows


def generate_on_first_use(root: Path, synth: Mapping, manifest: str = "manifest.csv") -> Path:
    """Generate the phantom in ``root`` on first use; return ``root``.

    Written into a temporary sibling and renamed into place under a lock (``build_atomically``): a killed run
    leaves no half-written ``root``, a partial one left by older versions is regenerated, and runs started
    together wait for one generation. Its disc crops: :func:`spinenet.roi.phantom.phantom_crops_on_first_use`.
    """
    log.info("generating the synthetic phantom in %s", root)
    return build_atomically(
        Path(root),
        lambda tmp: generate_phantom(tmp, **dict(synth)),
        lambda path: (path / manifest).is_file(),
        PHANTOM_OUTPUTS,
        "synthetic phantom",
    )


def render_preview(
    manifest_path, out_png, n: int = 4, tile: int | None = None, gray_levels: int = 32
) -> Path:
    """Montage of ``n`` slices (one of every label first): images on top, the same with mask outlines below.

    Saved as a paletted PNG (``gray_levels`` grays plus the class colours) so documentation pictures stay
    small; ``tile`` resizes every slice to tile x tile pixels.
    """
    from PIL import Image  # lazy: only documentation previews need it

    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    with manifest_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{manifest_path} has no rows")
    label_col = "sagittal_class" if "sagittal_class" in rows[0] else "axial_class"
    chosen, seen = [], set()
    for r in rows:  # the middle slice of the first patient of every label
        if r[label_col] not in seen and int(r["slice"]) == _middle_slice(rows, r["patient_id"]):
            chosen.append(r)
            seen.add(r[label_col])
    chosen += [r for r in rows if r not in chosen][: max(0, n - len(chosen))]
    tops, bottoms = [], []
    text = (255, 255, 0)
    for r in chosen[:n]:
        img = cv2.imread(str(root / r["image"]), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(root / r["mask"]), cv2.IMREAD_GRAYSCALE) // MASK_GRAY_STEP
        if img is None or mask is None:
            raise DataError(f"cannot read {root / r['image']} or its mask (row of patient {r['patient_id']})")
        if tile:
            img = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (tile, tile), interpolation=cv2.INTER_NEAREST)
        top = np.stack([img] * 3, axis=-1)
        ink = np.zeros(img.shape, np.uint8)  # crisp text: one palette colour, no anti-aliased fringe
        cv2.putText(ink, r[label_col], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_AA)
        top[ink > 110] = text
        sep = np.full((img.shape[0], 2, 3), 255, np.uint8)
        tops += [top, sep]
        bottoms += [overlay_mask(img, mask, alpha=0.0, outline=True), sep]
    rgb = np.concatenate([np.concatenate(tops[:-1], axis=1), np.concatenate(bottoms[:-1], axis=1)], axis=0)

    # palette: gray ramp, then the class colours and the text colour (exact, so outlines keep their colour)
    colours = np.array([*PALETTE[1:4].tolist(), list(text)], dtype=np.int32)
    ramp = np.linspace(0, 255, gray_levels).round().astype(np.int32)
    gray = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
    idx = np.round(rgb[..., 0].astype(np.float32) / 255 * (gray_levels - 1)).astype(np.uint8)
    dist = ((rgb[..., None, :].astype(np.int32) - colours[None, None]) ** 2).sum(-1)
    idx[~gray] = (gray_levels + dist.argmin(-1)).astype(np.uint8)[~gray]
    pal = np.concatenate([np.repeat(ramp[:, None], 3, axis=1), colours]).astype(np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette(pal.flatten().tolist())
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    im.save(out_png, optimize=True)
    return out_png


def _middle_slice(rows: list[dict], pid: str) -> int:
    ks = sorted(int(r["slice"]) for r in rows if r["patient_id"] == pid)
    return ks[len(ks) // 2]
