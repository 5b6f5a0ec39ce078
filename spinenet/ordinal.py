"""Ordinal classification with CORN (Shi, Cao & Raschka 2023, "Deep neural networks for rank-consistent
ordinal regression based on conditional probabilities").

A label with K ordered classes (Pfirrmann 1-5) gets K - 1 logits; logit k models the *conditional*
probability P(y > k | y > k - 1). The cumulative probabilities are their running products,

    P(y > k) = prod_{j <= k} sigmoid(logit_j),

so they fall with k whatever the logits are (rank-consistent), and the class probabilities are their
differences: P(y = 0) = 1 - P(y > 0), P(y = k) = P(y > k - 1) - P(y > k), P(y = K - 1) = P(y > K - 2).

Why CORN rather than CORAL (Cao et al. 2020): CORAL gets rank consistency by sharing one weight vector among
the K - 1 binary tasks (only the biases differ), which constrains the last layer of every net in the registry;
CORN needs nothing of the net but K - 1 outputs, so any classifier (``model.net.num_classes = K - 1``) and a
multi-task net's column block can be an ordinal head.

The loss is the sum over k of the binary cross-entropy of task k on the samples with y > k - 1 (task 0: all
of them), divided by the number of (sample, task) terms (optionally weighted by a weight per class).

Downstream code (metrics, ``predictions.csv``, ``diagnose``, ``spinenet ensemble``) wants class logits whose
softmax is the class probabilities: :func:`corn_class_log_probs` gives the log class probabilities, whose
softmax is the probabilities themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# a class probability is never exactly 0 in the log (softmax(log p) == p to float precision)
_LOG_FLOOR = 1e-12


def corn_cumulative(logits: torch.Tensor) -> torch.Tensor:
    """``(N, K - 1)`` CORN logits -> ``(N, K - 1)`` P(y > k), non-increasing in k."""
    # the product of sigmoids as exp(cumsum(log sigmoid)): the same values, and ONNX has CumSum (no CumProd)
    return torch.exp(torch.cumsum(F.logsigmoid(logits.float()), dim=1))


def corn_class_probs(logits: torch.Tensor) -> torch.Tensor:
    """``(N, K - 1)`` CORN logits -> ``(N, K)`` class probabilities (rows sum to 1)."""
    above = corn_cumulative(logits)
    ones = torch.ones_like(above[:, :1])
    zeros = torch.zeros_like(above[:, :1])
    return (torch.cat([ones, above], 1) - torch.cat([above, zeros], 1)).clamp_min(0.0)


def corn_class_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``(N, K - 1)`` CORN logits -> ``(N, K)`` log class probabilities, i.e. class logits for a softmax."""
    return corn_class_probs(logits).clamp_min(_LOG_FLOOR).log()


def corn_loss(
    logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | Sequence[float] | None = None
) -> torch.Tensor:
    """CORN loss of ``(N, K - 1)`` logits for class ids ``target`` (N,) in ``0..K-1``.

    Task k sees the samples with ``target >= k`` and asks "is it above k?". ``class_weights`` (K values):
    each sample's terms count with its class's weight (the weighted mean over all terms).
    """
    logits = logits.float()
    target = target.long().reshape(-1)
    k = logits.shape[1]
    ranks = torch.arange(k, device=logits.device)
    in_task = target[:, None] >= ranks[None, :]  # task k conditions on y > k - 1
    above = (target[:, None] > ranks[None, :]).float()
    terms = F.binary_cross_entropy_with_logits(logits, above, reduction="none")
    weight = in_task.float()
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        weight = weight * w[target][:, None]
    return (terms * weight).sum() / weight.sum().clamp_min(1e-12)


def corn_level_log_odds(
    labels: Sequence[int], levels: Sequence[str], level_names: Sequence[str], num_classes: int, alpha: float = 1.0
) -> list[list[float]]:
    """Per level, how much the CORN logits of that level differ from the overall ones:
    ``logit P(y > k | y >= k, level) - logit P(y > k | y >= k)`` (counts plus ``alpha``), one row per name in
    ``level_names`` and a last row for every other level. The ordinal counterpart of
    :func:`spinenet.metrics.classification.level_log_odds`, to start ``model.level_prior``."""
    names = [str(v) for v in level_names]
    y = torch.as_tensor([int(v) for v in labels])
    rows = torch.as_tensor([names.index(str(v)) if str(v) in names else len(names) for v in levels])

    def conditional_logits(mask: torch.Tensor) -> torch.Tensor:
        out = []
        for k in range(num_classes - 1):
            at_least = (y[mask] >= k).sum().double() + 2 * alpha
            above = (y[mask] > k).sum().double() + alpha
            p = above / at_least
            out.append(torch.log(p) - torch.log1p(-p))
        return torch.stack(out)

    overall = conditional_logits(torch.ones_like(y, dtype=torch.bool))
    return [(conditional_logits(rows == i) - overall).tolist() for i in range(len(names) + 1)]


__all__ = ["CornLoss", "corn_class_log_probs", "corn_class_probs", "corn_cumulative", "corn_level_log_odds", "corn_loss"]


class CornLoss(torch.nn.Module):
    """:func:`corn_loss` as a module with a ``weight`` buffer of one value per class (``model.class_weights``)."""

    def __init__(self, num_classes: int, class_weights: Sequence[float] | None = None):
        super().__init__()
        w = torch.ones(int(num_classes)) if class_weights is None else torch.as_tensor(
            [float(v) for v in class_weights], dtype=torch.float32)
        self.register_buffer("weight", w)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return corn_loss(logits, target, self.weight)
