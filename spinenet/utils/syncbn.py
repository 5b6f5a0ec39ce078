"""Synchronized batch norm for DDP on CPU processes (``trainer=ddp_sim trainer.sync_batchnorm=true``).

torch's ``SyncBatchNorm`` runs on GPUs only (its forward refuses CPU tensors and ``DistributedDataParallel``
refuses CPU modules holding one), so Lightning's ``sync_batchnorm=True`` cannot train on CPU processes.
:class:`CpuSyncBatchNorm` computes the batch statistics over every process's part of the batch with two
differentiable all-reduces (sums, then squared deviations from the global mean): forward and backward match
one batch norm over the global batch. ``train(cfg)`` hands :class:`CpuSyncBatchNormPlugin` to the Trainer when
``trainer.sync_batchnorm`` is true and the run is on CPU; on GPUs Lightning's own plugin (torch's
``SyncBatchNorm``) is used. Either way the layers are plain batch norms again once fitting ends.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class CpuSyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics cover all processes of the default (or given) process group."""

    def __init__(self, *args, process_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.process_group = process_group
        self.original_class: type[_BatchNorm] = nn.BatchNorm2d

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        if not self.training or group is None or dist.get_world_size(group) == 1:
            return super().forward(input)  # evaluation or a single process: plain batch norm
        self._check_input_dim(input)
        from torch.distributed.nn.functional import all_reduce  # differentiable: gradients are reduced too

        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        x = input.float()  # statistics in float32, also under bf16 autocast
        count = torch.full((1,), float(input.numel() // channels), dtype=torch.float32, device=input.device)
        sums = all_reduce(torch.cat([x.sum(dims), count]), group=group)
        total = sums[channels]
        if float(total) <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.shape}")
        mean = sums[:channels] / total
        centered = x - mean.view(shape)
        var = all_reduce(centered.pow(2).sum(dims), group=group) / total
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (total / (total - 1)), alpha=factor)
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def _swap(module: _BatchNorm, new: _BatchNorm) -> _BatchNorm:
    """``new`` with ``module``'s parameters and buffers (the same tensors: optimizers keep working)."""
    if module.affine:
        with torch.no_grad():
            new.weight = module.weight
            new.bias = module.bias
    new.running_mean = module.running_mean
    new.running_var = module.running_var
    new.num_batches_tracked = module.num_batches_tracked
    new.train(module.training)
    if hasattr(module, "qconfig"):
        new.qconfig = module.qconfig
    return new


def _args(module: _BatchNorm) -> tuple:
    return module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Every ``BatchNorm*d`` of ``module`` as a :class:`CpuSyncBatchNorm` (undone by :func:`revert_sync_batchnorm`)."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, CpuSyncBatchNorm | nn.SyncBatchNorm):
        out = _swap(module, CpuSyncBatchNorm(*_args(module), process_group=process_group))
        out.original_class = type(module)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """The batch-norm classes :func:`convert_sync_batchnorm` found (state-dict keys never change)."""
    out = module
    if isinstance(module, CpuSyncBatchNorm):
        out = _swap(module, module.original_class(*_args(module)))
    for name, child in module.named_children():
        out.add_module(name, revert_sync_batchnorm(child))
    return out


class CpuSyncBatchNormPlugin(TorchSyncBatchNorm):
    """Lightning's layer-sync plugin for ``sync_batchnorm=True`` on CPU processes."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        return super().revert(revert_sync_batchnorm(model))


def runs_on_cpu(accelerator: str | None) -> bool:
    """Whether a Trainer with this ``accelerator`` setting trains on CPU."""
    accelerator = str(accelerator or "auto").lower()
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())
