"""The one loader of trained models: :func:`load_model` opens any model file and returns it with its contract.

By suffix:

- ``.ckpt``: a spinenet checkpoint (weights only); ``.json``: a saved ensemble (``spinenet ensemble``) or the
  sidecar of an export (``spinenet export``, then its ONNX file is used, else its TorchScript file);
- ``.onnx``: ONNX from ``spinenet export``, run with onnxruntime (sidecar beside it);
- ``.pt`` / ``.ts``: TorchScript from ``spinenet export`` (the sidecar ``<stem>.json`` beside it), only with
  ``allow_torchscript=True``: a TorchScript file is a program (its ``__setstate__`` runs while it loads, its
  ``forward`` can call any TorchScript op), so a file from elsewhere must be trusted before it is opened.

Trust: checkpoints and ensembles are loaded weights-only (ensemble members checked against their SHA-256); ONNX
files run only ONNX operators. The sidecar of an export records the SHA-256 of each exported file and the file
is checked against it before it is opened (a modified or replaced file is refused). A hash detects tampering
after export, not a malicious original.

Every model comes with its :class:`~spinenet.contract.ModelContract`: what it was trained on (size, channels,
resize mode, CLAHE, classes) and, for classifiers, how its crops were made, so that ``eval``, ``roi``,
``diagnose``, ``ensemble`` and ``export`` prepare images exactly as its training did
(:meth:`~spinenet.contract.ModelContract.preprocess`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinenet.contract import CONTRACT_KEY, ModelContract, TaskKind
from spinenet.errors import ConfigError, DataError
from spinenet.utils.safe_io import file_sha256

log = logging.getLogger(__name__)

EXPORT_FORMAT = "spinenet-export"
EXPORT_VERSION = 2  # 2: the sidecar holds the model contract (1: a "preprocessing" record, still read)
TORCHSCRIPT_SUFFIXES = (".pt", ".ts")
TORCHSCRIPT_WARNING = "TorchScript files can run arbitrary operations; load only files you trust"


PRECISIONS = ("auto", "32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS[1:]:
        raise ConfigError(f"precision: choose one of {', '.join(PRECISIONS[1:])}, got {precision!r}")
    return precision


def inference_precision(requested: str, device: str) -> str:
    """``32`` or ``bf16`` for ``requested`` (``auto``, ``32``, ``bf16``) on ``device``: ``auto`` is bf16 where
    the hardware computes it natively (a CUDA GPU that supports it, a CPU with AVX-512 BF16 or AMX, as oneDNN
    reports), float32 elsewhere (emulated bf16 is slower than float32)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision: choose one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "bf16" if native_bf16(device) else "32"


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bf16 in hardware (a CUDA GPU that supports it; a CPU with AVX-512 BF16 or
    AMX, as oneDNN reports)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Predictor:
    """``predictor(x)`` -> logits (or log-probabilities for ensembles) for a float32 batch (B, C, H, W)."""

    kind = "module"

    def __init__(self, net: Any, contract: ModelContract, source: Path, device: str = "cpu",
                 channels_last: bool = False, config: Any = None, precision: str = "32"):
        self.net, self.contract, self.source, self.device = net, contract, Path(source), device
        self.precision = check_precision(precision)
        # a checkpoint's or ensemble's run config (None for an exported file)
        self.config = config
        # NHWC inputs and weights: the U-Net ran 1.6-2x faster on CPU (spinenet bench diagnose --no-channels-last)
        self.channels_last = channels_last
        if channels_last:
            self.net = net.to(memory_format=torch.channels_last)

    def at_precision(self, precision: str) -> Predictor:
        """This model (the same weights, not a copy of them) run at ``precision``."""
        import copy

        other = copy.copy(self)
        other.precision = check_precision(precision)
        return other

    @property
    def task(self) -> TaskKind:
        return self.contract.task

    @property
    def module(self) -> Any:
        """The LightningModule of a checkpoint or ensemble; :class:`ConfigError` for an exported file."""
        if self.kind != "module":
            raise ConfigError(f"{self.source} is an exported {self.kind} file; this needs the checkpoint or "
                              "ensemble it was exported from")
        return self.net

    def __call__(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> torch.Tensor:
        """Logits of ``x``; ``levels`` (one disc level per image) for classifiers with a level prior."""
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        bf16 = self.precision == "bf16"
        with torch.inference_mode(), torch.autocast(torch.device(self.device).type, torch.bfloat16, enabled=bf16):
            if levels is not None and hasattr(self.net, "level_offset_table"):
                return self.net(x, list(levels)).float().cpu()  # a ClassificationModule adds its offsets
            return self.with_level_offsets(self.net(x).float().cpu(), levels)

    def with_level_offsets(self, logits: torch.Tensor, levels: Sequence[str] | None) -> torch.Tensor:
        table = self.contract.level_offsets
        if not table or levels is None:
            return logits
        offsets = torch.tensor([table.get(str(v), table["*"]) for v in levels], dtype=logits.dtype)
        return logits + offsets


class OnnxPredictor(Predictor):
    kind = "onnx"

    def __call__(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> torch.Tensor:
        (out,) = self.net.run(None, {"input": np.ascontiguousarray(x.cpu().numpy(), np.float32)})
        return self.with_level_offsets(torch.from_numpy(out), levels)


def _sidecar(path: Path) -> ModelContract:
    """The contract in ``path``'s sidecar, after checking ``path`` against the SHA-256 recorded there."""
    side = path.with_suffix(".json")
    if not side.is_file():
        raise DataError(f"{path}: its sidecar {side.name} is missing (written by spinenet export)")
    try:
        doc = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{side}: not a readable JSON sidecar ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise DataError(f"{side}: not a spinenet export sidecar (format "
                        f"{doc.get('format') if isinstance(doc, dict) else None!r})")
    expected = (doc.get("sha256") or {}).get(path.name)
    if expected is None:  # exports written before sidecars recorded hashes
        log.warning("%s: its sidecar %s records no SHA-256 (an older export); loaded without checking it",
                    path, side.name)
    elif file_sha256(path) != expected:
        raise DataError(f"model file {path} does not match the SHA-256 in its sidecar {side} (modified or replaced)")
    if CONTRACT_KEY in doc:
        return ModelContract.from_dict(doc[CONTRACT_KEY], side)
    if isinstance(doc.get("preprocessing"), dict):  # version 1 sidecars
        return contract_from_v1_sidecar(doc["preprocessing"], side)
    raise DataError(f"{side}: holds no model contract; export the checkpoint again with spinenet export")


def contract_from_v1_sidecar(prep: dict[str, Any], source: Path) -> ModelContract:
    """The contract of an export from before contracts (its sidecar's ``preprocessing`` record)."""
    try:
        crop = dict(prep["crop"]) if prep.get("crop") else None
        doc = {"version": 1, "task": prep["task"], "classes": prep.get("classes") or [],
               "input": {"image_size": prep["image_size"], "in_channels": prep.get("in_channels", 1),
                         "resize_mode": prep.get("resize_mode", "resize"), "clahe": prep.get("clahe")},
               "crop": crop, "view": prep.get("view"), "level_offsets": prep.get("level_offsets")}
    except (KeyError, TypeError) as exc:
        raise DataError(f"{source}: its preprocessing record lacks {exc}; export the checkpoint again") from None
    return ModelContract.from_dict(doc, source)


def onnx_session(model: str | bytes, device: str, what: str, alternative: str = "") -> Any:
    """An ONNX Runtime session for a model file or its bytes, with torch's thread count."""
    try:
        import onnxruntime as ort
    except ImportError:
        hint = f"; {alternative}" if alternative else ""
        raise ConfigError(f"{what} needs onnxruntime (pip install 'spinenet-mri[onnx]'){hint}") from None
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    # idle workers sleep instead of spinning: diagnose's decode, post-processing and writing threads need those
    # cores while the segmenter runs (spinning halved its end-to-end images/s on 2 cores)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, opts, providers=providers or ["CPUExecutionProvider"])


def open_torchscript(path: Path, device: str = "cpu") -> Predictor:
    """An exported TorchScript file, checked against its sidecar's SHA-256 before ``torch.jit.load`` runs
    anything in it. No trust check: :func:`load_model` asks for ``allow_torchscript``; ``spinenet export``
    calls this for the file it has just written."""
    import warnings

    contract = _sidecar(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        net = torch.jit.load(str(path), map_location=device).eval()
    p = Predictor(net, contract, path, device)
    p.kind = "torchscript"
    return p


def load_model(
    path: str | Path, device: str = "cpu", allow_torchscript: bool = False, precision: str = "32"
) -> tuple[Predictor, ModelContract]:
    """``(model, contract)`` of a checkpoint, ensemble JSON, export sidecar JSON, ONNX or TorchScript
    (``.pt``/``.ts``) file: the one loader (module docstring). ``precision``: ``32``, ``bf16`` (autocast;
    checkpoints and ensembles only) or ``auto`` (:func:`inference_precision`; float32 for an exported file,
    which runs as exported).

    TorchScript runs code from the file: it is refused (:class:`ConfigError`, before the file is read) unless
    ``allow_torchscript``, and then loaded with a warning.
    """
    resolved = inference_precision(precision, device)  # a bad choice fails before the file is read
    model = _open(Path(path), device, allow_torchscript)
    if model.kind == "module":
        model.precision = resolved
    elif precision == "bf16":
        raise ConfigError(f"{path}: an exported {model.kind} file runs in float32; --precision bf16 needs the "
                          "checkpoint or ensemble")
    return model, model.contract


def _open(path: Path, device: str, allow_torchscript: bool) -> Predictor:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except ValueError as exc:
            raise DataError(f"{path}: not a JSON file ({exc})") from None
        if isinstance(doc, dict) and doc.get("format") == EXPORT_FORMAT:
            files = doc.get("files") or {}
            # ONNX when it was exported (it runs only ONNX operators); TorchScript when it is the only file, or
            # when it is allowed and onnxruntime is not installed
            import importlib.util

            chosen = files.get("onnx") or files.get("torchscript")
            if allow_torchscript and files.get("torchscript") and importlib.util.find_spec("onnxruntime") is None:
                chosen = files["torchscript"]
            if not chosen:
                raise DataError(f"{path}: the export sidecar names no exported file")
            return _open(path.with_name(Path(chosen).name), device, allow_torchscript)
    if suffix in TORCHSCRIPT_SUFFIXES:
        if not allow_torchscript:
            raise ConfigError(f"{path} is a TorchScript file, which can run arbitrary code; it was not opened. "
                              "Pass --allow-torchscript (allow_torchscript=True) only for a file you trust, "
                              "or use the .onnx file exported beside it")
        log.warning("%s: %s", path, TORCHSCRIPT_WARNING)
        return open_torchscript(path, device)
    if suffix == ".onnx":
        contract = _sidecar(path)
        session = onnx_session(str(path), device, f"{path}: running ONNX",
                               "or pass the TorchScript file (.pt) exported beside it with --allow-torchscript")
        return OnnxPredictor(session, contract, path, device)
    if suffix not in (".ckpt", ".json"):
        raise ConfigError(
            f"{path}: unknown model file type {suffix!r}; give a .ckpt checkpoint, an ensemble .json, "
            "or an exported .pt (TorchScript) / .onnx file"
        )
    from spinenet.checkpoints import is_ensemble_artifact, load_run_model  # lazy: lightning, hydra
    from spinenet.ensemble.artifact import load_ensemble  # lazy: as above

    module, saved, contract = load_ensemble(path) if is_ensemble_artifact(path) else load_run_model(path)
    return Predictor(module.to(device).eval(), contract, path, device, channels_last=True, config=saved)
