"""``spinenet export CKPT --out DIR``: ONNX files of a segmenter or classifier (TorchScript: legacy option).

Written to ``DIR``: ``<name>.onnx`` (exported with ``torch.export``, i.e. ``torch.onnx.export(dynamo=True)``;
opset 18, dynamic batch axis; input ``input`` (B, C, H, W) float32, output ``logits``) and ``<name>.json``, the
sidecar: the model contract (:class:`~spinenet.contract.ModelContract`: image size, channels, resize mode,
CLAHE, classes, and for classifiers the crop recipe), the files and their SHA-256
(checked whenever an exported file is loaded), and the verification below. ``<name>`` is ``segmenter`` or ``classifier`` unless ``--name`` is given. ``spinenet diagnose`` runs
from these files.

``--format torchscript`` (legacy) also writes ``<name>.pt``, traced with ``torch.jit.trace``. TorchScript is
deprecated in PyTorch and emits its deprecation warnings; it is kept for consumers that run ``.pt`` files
(LibTorch in C++) and may go when PyTorch drops it.

Verification: each exported file is run on random inputs (batch 1 and 3) and must reproduce the checkpoint's
outputs within ``atol + rtol * |reference|`` (defaults 1e-4 and 1e-4, float32); the largest difference is
recorded in the sidecar. ONNX export needs ``onnxscript`` and ``onnx``; the file is checked with
``onnx.checker`` and run with onnxruntime (``pip install 'spinenet-mri[onnx]'``); without onnxruntime the
numeric check is skipped and the sidecar says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from spinenet.contract import CONTRACT_KEY, InputSpec, TaskKind
from spinenet.errors import ConfigError, DataError
from spinenet.loading import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    TORCHSCRIPT_SUFFIXES,
    OnnxPredictor,
    Predictor,
    load_model,
    onnx_session,
    open_torchscript,
)
from spinenet.utils.outdir import prepare_output_dir
from spinenet.utils.safe_io import file_sha256

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
DEFAULT_FORMATS = ("onnx",)  # TorchScript only when asked for (legacy)
ATOL, RTOL = 1e-4, 1e-4
# torch.onnx's own operator library is written for opset 18 (no version conversion); ONNX Runtime >= 1.14
ONNX_OPSET = 18


def _inputs(spec: InputSpec, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = spec.image_size
    return torch.rand(batch, spec.in_channels, h, w, generator=g)


class _ModuleForward(torch.nn.Module):
    """A module's own ``forward(x)`` as the exported graph: where it turns the net's outputs into class logits
    (CORN heads, a multi-task model's blocks), the file must hold that step, not the net alone."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def exportable_net(module: torch.nn.Module, source: Any) -> torch.nn.Module:
    """What an exported file runs: the net of a plain classifier or segmenter (its level offsets go in the
    sidecar), the module's forward where the outputs need more than the net (ordinal or multi-task heads)."""
    transforms_outputs = bool(getattr(module, "ordinal", False)) or hasattr(module, "task_slices")
    if not transforms_outputs:
        return module.net if hasattr(module, "net") else module
    if getattr(module, "level_offsets", None) is not None:
        raise ConfigError(f"{Path(str(source)).name}: a level prior on ordinal or multi-task heads acts before "
                          "their class probabilities and cannot be exported; use the checkpoint with diagnose")
    return _ModuleForward(module)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, bool]:
    a, b = a.float(), b.float()
    ok = bool(torch.allclose(a, b, atol=ATOL, rtol=RTOL))
    return float((a - b).abs().max()), ok


def verify(reference: Predictor, exported: Predictor, batches: Sequence[int] = (1, 3)) -> float:
    """Largest absolute difference of ``exported`` from ``reference`` on random inputs; raises when out of
    tolerance (``atol + rtol * |reference|``). The reference runs in float32, as the export does."""
    reference = reference.at_precision("32")
    worst = 0.0
    for i, b in enumerate(batches):
        x = _inputs(reference.contract.input, b, seed=i)
        diff, ok = _max_diff(reference(x), exported(x))
        worst = max(worst, diff)
        if not ok:
            raise DataError(
                f"exported {exported.source.name} differs from the checkpoint by up to {diff:.3g} "
                f"(tolerance atol {ATOL} + rtol {RTOL}); not usable"
            )
    return worst


def _onnx_program(net: torch.nn.Module, example: torch.Tensor) -> Any:
    """``net`` exported through ``torch.export`` to an ONNX program (opset 18, ``input`` -> ``logits``, axis 0
    dynamic and named ``batch``)."""
    # the exporter's graph passes log each step at INFO, which the CLI's logging would print; warnings stay
    chatty = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in chatty]
    try:
        for logger in chatty:
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
        with torch.inference_mode(False), torch.no_grad():
            return torch.onnx.export(net, (example,), dynamo=True, opset_version=ONNX_OPSET,
                                     input_names=["input"], output_names=["logits"],
                                     dynamic_shapes=({0: "batch"},), verbose=False)
    except ImportError as exc:  # onnxscript or onnx missing
        raise ConfigError(f"ONNX export needs {exc.name or 'onnxscript'}: pip install 'spinenet-mri[onnx]'") from None
    except Exception as exc:  # torch.export cannot capture the model (an unsupported operation)
        raise ConfigError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    finally:
        for logger, level in zip(chatty, levels, strict=True):
            logger.setLevel(level)


def onnxruntime_predictor(reference: Predictor) -> Predictor:
    """``reference`` (a checkpoint or ensemble loaded in PyTorch) exported to ONNX in memory and run by ONNX
    Runtime, whose U-Net ran 1.2-1.4x faster than PyTorch's on CPU (``spinenet bench diagnose``). Checked
    against ``reference`` like an exported file; nothing is written."""
    if reference.kind != "module":
        return reference  # already an exported file
    net = exportable_net(reference.net, reference.source)
    if getattr(net, "takes_levels", False):
        raise ConfigError(f"--engine onnxruntime: {reference.source.name} is an ensemble of classifiers with a "
                          "level prior, which runs in PyTorch only; use --engine torch")
    program = _onnx_program(net.eval().cpu(), _inputs(reference.contract.input, 2, seed=7))
    session = onnx_session(program.model_proto.SerializeToString(), "cpu", "--engine onnxruntime")
    fast = OnnxPredictor(session, reference.contract, reference.source, "cpu")
    verify(reference, fast)
    return fast


def export_model(
    checkpoint: str | Path,
    out_dir: str | Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export ``checkpoint`` (a .ckpt or ensemble .json) to ``out_dir``; returns the sidecar's path."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ConfigError(f"--format: choose from {', '.join(FORMATS)}, got {list(formats)}")
    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() in (*TORCHSCRIPT_SUFFIXES, ".onnx"):  # refused before a TorchScript file is opened
        raise ConfigError(f"{checkpoint}: export a .ckpt checkpoint or an ensemble .json, not an exported file")
    ref, contract = load_model(checkpoint)
    if ref.kind != "module":
        raise ConfigError(f"{checkpoint}: export a .ckpt checkpoint or an ensemble .json, not an exported file")
    name = name or ("segmenter" if contract.task is TaskKind.SEGMENTATION else "classifier")
    out = Path(out_dir)
    targets = [out / f"{name}.json"] + [out / f"{name}{'.pt' if f == 'torchscript' else '.onnx'}" for f in formats]
    prepare_output_dir(out, [(checkpoint, "checkpoint")], overwrite, command="export", clear=())
    for t in targets:
        t.unlink(missing_ok=True)
    net = exportable_net(ref.net, checkpoint)
    if getattr(net, "takes_levels", False):
        raise ConfigError(f"{checkpoint}: an ensemble of classifiers with a level prior (model.level_prior) "
                          "cannot be exported as one file; export its members, or use the .json with diagnose")
    net = net.eval()
    example = _inputs(ref.contract.input, 2, seed=7)
    files: dict[str, str] = {}
    checks: dict[str, Any] = {"atol": ATOL, "rtol": RTOL, "inputs": "uniform random, batch 1 and 3"}
    # the sidecar must exist before the exported files can be loaded back for the check
    sidecar = out / f"{name}.json"

    def write_sidecar() -> None:
        doc = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "source": checkpoint.name,
            "source_sha256": file_sha256(checkpoint),
            CONTRACT_KEY: contract.to_dict(),
            "files": files,
            # checked before an exported file is opened (spinenet.loading): a modified file is refused
            "sha256": {f: file_sha256(out / f) for f in files.values()},
            "verification": checks,
            "input": {"name": "input", "shape": ["batch", contract.input.in_channels, *contract.input.image_size],
                      "dtype": "float32", "range": [0.0, 1.0]},
            "output": {"name": "logits", "kind": "log-probabilities" if "ensemble" in str(type(net)).lower()
                       else "logits"},
        }
        sidecar.write_text(json.dumps(doc, indent=2) + "\n")

    if "torchscript" in formats:
        path = out / f"{name}.pt"
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(net, example, check_trace=False)
        traced.save(str(path))
        files["torchscript"] = path.name
        write_sidecar()
        checks["torchscript_max_abs_diff"] = verify(ref, open_torchscript(path))  # the file just written
    if "onnx" in formats:
        path = out / f"{name}.onnx"
        # one self-contained file (weights inside; a model over 2 GB would get a .data file beside it)
        _onnx_program(net, example).save(str(path), external_data=False)
        files["onnx"] = path.name
        import onnx  # there: the exporter needs it

        onnx.checker.check_model(str(path))
        checks["onnx_checker"] = "passed"
        write_sidecar()
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            checks["onnx_max_abs_diff"] = None
            checks["onnx_skipped"] = "onnxruntime not installed: numeric check skipped (onnx.checker passed)"
        else:
            checks["onnx_max_abs_diff"] = verify(ref, load_model(path)[0])
    write_sidecar()
    return sidecar


__all__ = ["export_model", "verify"]
