"""Weighted-average ensemble weight search: simplex grid, exactness against a naive loop, pruning, greedy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    jaccard_score,
    roc_auc_score,
)

from spinenet.ensemble.objectives import OBJECTIVES, confusion_from_labels, get_objective
from spinenet.ensemble.search import (
    WeightScorer,
    baselines,
    exhaustive_search,
    greedy_selection,
    n_simplex_points,
    naive_scores,
    score_weights,
    simplex_counts,
    simplex_grid,
    step_to_divisions,
    weighted_average,
)
from spinenet.errors import ConfigError, DataError

CLS_OBJECTIVES = ["accuracy", "balanced_accuracy", "macro_f1", "auroc"]
SEG_OBJECTIVES = ["dice", "miou", "accuracy"]


def _members_cls(
    k: int, n: int, c: int, seed: int, coarse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy members around the truth; `coarse` rounds probabilities to 1/8 so that exact ties are common."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    logits = 1.5 * torch.nn.functional.one_hot(y, c).float() + torch.randn(k, n, c, generator=g)
    p = torch.softmax(logits, -1)
    if coarse:
        p = torch.round(p * 8) / 8
    return p.to(torch.float16), y


def _members_seg(k: int, n: int, c: int, size: int, seed: int, coarse: bool = False):
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(n, size, size, dtype=torch.int64)
    y[:, 2:7, 3:9] = 1
    y[:, 6:10, 5:11] = 2
    if c > 3:
        y[:, 9:, :4] = 3
    onehot = torch.nn.functional.one_hot(y, c).permute(0, 3, 1, 2).float()
    logits = 3.0 * onehot.unsqueeze(0) + 1.2 * torch.randn(k, n, c, size, size, generator=g)
    p = torch.softmax(logits, 2)
    if coarse:
        p = torch.round(p * 4) / 4
    return p.to(torch.float16), y


# ------------------------------------------------------------------------------------------------ simplex
@pytest.mark.parametrize("k,n", [(1, 5), (2, 10), (3, 4), (6, 20), (8, 10)])
def test_simplex_count_unique_and_normalised(k: int, n: int) -> None:
    counts = simplex_counts(k, n)
    assert counts.shape == (math.comb(n + k - 1, k - 1), k) == (n_simplex_points(k, n), k)
    assert (counts >= 0).all() and (counts.sum(1) == n).all()
    assert torch.unique(counts, dim=0).shape[0] == counts.shape[0]  # no duplicates
    grid = simplex_grid(k, n)
    assert torch.allclose(grid.sum(1), torch.ones(grid.shape[0], dtype=torch.float64))
    # lexicographic order (what "first in enumeration order" means for ties)
    assert [tuple(r) for r in counts.tolist()] == sorted(tuple(r) for r in counts.tolist())


def test_step_must_divide_one() -> None:
    assert step_to_divisions(0.1) == 10 and step_to_divisions(0.05) == 20 and step_to_divisions(1) == 1
    for bad in (0.3, 0, 1.5, -0.1):
        with pytest.raises(ConfigError):
            step_to_divisions(bad)


# ------------------------------------------------------------------------------------------------ averaging
def test_weighted_average_matches_formula() -> None:
    P, _ = _members_cls(3, 7, 4, seed=1)
    w = [0.2, 0.0, 0.5]
    by_hand = torch.zeros(7, 4, dtype=torch.float64)
    for i in range(3):
        for s in range(7):
            for j in range(4):
                by_hand[s, j] += w[i] * float(P[i, s, j])
    by_hand /= sum(w)
    out = weighted_average(P, w)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), by_hand, atol=1e-6)
    # scale invariance: [0, 1]^k weights and their normalised version give the same ensemble
    assert torch.allclose(weighted_average(P, [0.4, 0.0, 1.0]), out, atol=1e-6)
    with pytest.raises(ConfigError, match="all zero"):
        weighted_average(P, [0.0, 0.0, 0.0])
    with pytest.raises(ConfigError):
        weighted_average(P, [0.5, 0.5])
    with pytest.raises(ConfigError):
        weighted_average(P, [0.5, -0.1, 0.6])


# ------------------------------------------------------------------------------------------------ objectives
def test_objectives_match_sklearn_for_one_vector() -> None:
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 4, (200,), generator=g)
    scores = torch.softmax(torch.randn(200, 4, generator=g) + torch.nn.functional.one_hot(y, 4), -1).double()
    pred = scores.argmax(1)
    cm = confusion_from_labels(pred.unsqueeze(0), y, 4)
    yn, pn = y.numpy(), pred.numpy()
    assert float(OBJECTIVES["accuracy"].fn(cm)[0]) == pytest.approx(accuracy_score(yn, pn))
    assert float(OBJECTIVES["balanced_accuracy"].fn(cm)[0]) == pytest.approx(balanced_accuracy_score(yn, pn))
    assert float(OBJECTIVES["macro_f1"].fn(cm)[0]) == pytest.approx(f1_score(yn, pn, average="macro"))
    assert float(OBJECTIVES["dice"].fn(cm)[0]) == pytest.approx(
        f1_score(yn, pn, labels=[1, 2, 3], average="macro")
    )
    assert float(OBJECTIVES["miou"].fn(cm)[0]) == pytest.approx(jaccard_score(yn, pn, average="macro"))
    assert float(OBJECTIVES["auroc"].fn(scores.unsqueeze(0), y)[0]) == pytest.approx(
        roc_auc_score(yn, scores.numpy(), multi_class="ovr", average="macro")
    )
    # empty foreground class: left out of the Dice mean
    cm2 = torch.tensor([[[5, 1, 0], [1, 3, 0], [0, 0, 0]]])
    assert float(OBJECTIVES["dice"].fn(cm2)[0]) == pytest.approx(6 / 8)


def test_unknown_objective_lists_names() -> None:
    with pytest.raises(ConfigError) as e:
        get_objective("f2")
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "dice", "miou"):
        assert name in str(e.value)


def test_auroc_refused_for_segmentation() -> None:
    P, y = _members_seg(2, 1, 3, 8, seed=0)
    with pytest.raises(ConfigError, match="classification only"):
        exhaustive_search(P, y, "auroc", step=0.5)


def test_bad_targets_raise_data_error() -> None:
    P, y = _members_cls(2, 10, 3, seed=0)
    with pytest.raises(DataError):
        exhaustive_search(P, y[:5], "accuracy", step=0.5)
    with pytest.raises(DataError):
        exhaustive_search(P, y + 3, "accuracy", step=0.5)


# ------------------------------------------------------------------------------------------------ exactness
def _sklearn_scores(P: torch.Tensor, y: torch.Tensor, objective: str, counts: torch.Tensor) -> np.ndarray:
    """Independent per-vector scores with scikit-learn (classification)."""
    yn = y.numpy()
    out = []
    for cv in counts.double():
        avg = (torch.tensordot(cv, P.double(), 1) / cv.sum()).numpy()
        pred = avg.argmax(1)
        if objective == "accuracy":
            out.append(accuracy_score(yn, pred))
        elif objective == "balanced_accuracy":
            out.append(balanced_accuracy_score(yn, pred))
        elif objective == "macro_f1":
            out.append(f1_score(yn, pred, average="macro"))
        else:
            out.append(np.mean([roc_auc_score(yn == c, avg[:, c]) for c in range(P.shape[2])]))
    return np.array(out)


@pytest.mark.parametrize("coarse", [False, True])
@pytest.mark.parametrize("objective", CLS_OBJECTIVES)
def test_exhaustive_equals_naive_classification(objective: str, coarse: bool) -> None:
    P, y = _members_cls(4, 80, 3, seed=7, coarse=coarse)
    res = exhaustive_search(P, y, objective, step=0.125, device="cpu")
    counts = simplex_counts(4, 8)
    naive = naive_scores(P, y, objective, counts)
    assert res.n_vectors == counts.shape[0] == 165
    assert np.array_equal(res.scores_all.numpy(), naive)  # bit-identical, every vector
    first_best = int(np.flatnonzero(naive == naive.max())[0])
    assert torch.equal(res.counts, counts[first_best]) and res.score == naive.max()
    assert torch.allclose(res.weights, counts[first_best].double() / 8)
    # and the scores are the textbook ones
    assert np.allclose(naive, _sklearn_scores(P, y, objective, counts), atol=1e-12)


@pytest.mark.parametrize("coarse", [False, True])
@pytest.mark.parametrize("objective", SEG_OBJECTIVES)
def test_exhaustive_equals_naive_segmentation(objective: str, coarse: bool) -> None:
    P, y = _members_seg(3, 2, 4, 12, seed=5, coarse=coarse)
    res = exhaustive_search(P, y, objective, step=0.1, device="cpu")
    counts = simplex_counts(3, 10)
    naive = naive_scores(P, y, objective, counts)
    assert np.array_equal(res.scores_all.numpy(), naive)
    first_best = int(np.flatnonzero(naive == naive.max())[0])
    assert torch.equal(res.counts, counts[first_best]) and res.score == naive.max()
    if objective == "dice":  # independent Dice: F1 per foreground class over all pixels
        for i in (0, len(counts) // 2, len(counts) - 1):
            pred = torch.tensordot(counts[i].double(), P.double(), 1).argmax(1)
            ref = f1_score(y.flatten(), pred.flatten(), labels=[1, 2, 3], average="macro")
            assert naive[i] == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("coarse", [False, True])
def test_pruning_gives_identical_confusion(coarse: bool) -> None:
    P, y = _members_seg(4, 2, 4, 16, seed=11, coarse=coarse)
    counts = simplex_counts(4, 6)
    pruned = WeightScorer(P, y, "dice", max_total=6, prune=True)
    full = WeightScorer(P, y, "dice", max_total=6, prune=False)
    assert pruned.n_binary + pruned.n_ternary + pruned.n_multi < full.n_multi == P[0].numel() // P.shape[2]
    assert 0 < pruned.settled_fraction < 1
    assert torch.equal(pruned.confusion(counts), full.confusion(counts))
    assert torch.equal(pruned.score(counts), full.score(counts))


def test_settled_means_all_members_agree() -> None:
    P, y = _members_seg(3, 1, 3, 16, seed=2)
    scorer = WeightScorer(P, y, "dice", max_total=10)
    agree = (P.float().argmax(2) == P.float().argmax(2)[0]).all(0)
    assert scorer.settled_fraction == pytest.approx(float(agree.float().mean()))


def test_known_optimum_is_a_specific_mix() -> None:
    # Two samples, two classes. Only 0.5 * A + 0.5 * B classifies both correctly on the 0.1 grid:
    # sample 0 (class 1) needs w_A / w_B > 0.75 and w_C small, sample 1 (class 0) needs w_A / w_B <= 4 / 3.
    p1 = torch.tensor(
        [[0.9, 0.8], [0.2, 0.1], [0.0, 1.0]], dtype=torch.float64
    )  # P(class 1), member x sample
    P = torch.stack([1 - p1, p1], -1)
    y = torch.tensor([1, 0])
    res = exhaustive_search(P, y, "accuracy", step=0.1, device="cpu")
    assert res.score == 1.0
    assert torch.allclose(res.weights, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert int((res.scores_all == 1.0).sum()) == 1  # unique optimum
    # the plain average gets both wrong; each member alone at most one
    assert baselines(P, y, "accuracy", device="cpu") == {"aem": 0.0, "members": [0.5, 0.5, 0.0]}


def test_known_optimum_perfect_member_segmentation() -> None:
    P, y = _members_seg(3, 2, 3, 12, seed=4)
    P[1] = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).to(P.dtype)  # member 1 is perfect
    res = exhaustive_search(P, y, "dice", step=0.25, device="cpu")
    assert res.score == 1.0
    assert torch.equal(weighted_average(P, res.weights).argmax(1), y)
    assert baselines(P, y, "dice", device="cpu")["members"][1] == 1.0


# ------------------------------------------------------------------------------------------------ greedy
def test_greedy_trajectory_and_kept_ensemble() -> None:
    P, y = _members_cls(5, 150, 4, seed=9)
    res = greedy_selection(P, y, "accuracy", rounds=12)
    assert len(res.trajectory) == 12
    assert all(b >= a for a, b in zip(res.best_so_far, res.best_so_far[1:], strict=False))
    assert res.best_so_far == list(np.maximum.accumulate(res.trajectory))
    assert res.score == max(res.trajectory)
    # first round = best single member
    assert res.trajectory[0] == max(baselines(P, y, "accuracy", device="cpu")["members"])
    # the kept weights are counts / size and really give the reported validation score
    assert torch.isclose(res.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert res.counts.sum() == res.trajectory.index(res.score) + 1
    pred = weighted_average(P.double(), res.weights).argmax(1)
    assert float((pred == y).double().mean()) == res.score


def test_greedy_without_replacement_uses_each_member_once() -> None:
    P, y = _members_cls(4, 100, 3, seed=2)
    res = greedy_selection(P, y, "macro_f1", rounds=10, with_replacement=False)
    assert len(res.trajectory) == 4  # stops when every member is in
    assert (res.counts <= 1).all()
    assert all(b >= a for a, b in zip(res.best_so_far, res.best_so_far[1:], strict=False))


def test_greedy_keeps_first_best_round_after_a_worse_round() -> None:
    # A alone is perfect; without replacement round 2 must add B or C, which ruins both samples.
    p1 = torch.tensor([[0.6, 0.4], [0.0, 1.0], [0.1, 0.9]], dtype=torch.float64)
    P = torch.stack([1 - p1, p1], -1)
    y = torch.tensor([1, 0])
    res = greedy_selection(P, y, "accuracy", rounds=3, with_replacement=False)
    assert res.trajectory == [1.0, 0.0, 0.0]
    assert res.best_so_far == [1.0, 1.0, 1.0]
    assert res.score == 1.0 and res.weights.tolist() == [1.0, 0.0, 0.0]


def test_score_weights_exact_and_float_paths() -> None:
    P, y = _members_cls(3, 120, 3, seed=8)
    res = exhaustive_search(P, y, "macro_f1", step=0.1, device="cpu")
    assert score_weights(P, y, "macro_f1", res.weights, device="cpu") == res.score
    assert score_weights(P, y, "macro_f1", res.weights * 7.0, device="cpu") == res.score  # scale-invariant
    w = torch.tensor([1.0, math.pi, math.e], dtype=torch.float64)  # not on any 1/n grid: float path
    pred = weighted_average(P.double(), w).argmax(1)
    ref = f1_score(y.numpy(), pred.numpy(), average="macro")
    assert score_weights(P, y, "macro_f1", w, device="cpu") == pytest.approx(ref, abs=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_search_equals_cpu() -> None:
    P, y = _members_seg(5, 3, 4, 32, seed=1)
    cpu = exhaustive_search(P, y, "dice", step=0.1, device="cpu")
    gpu = exhaustive_search(P, y, "dice", step=0.1, device="cuda")
    assert torch.equal(cpu.scores_all, gpu.scores_all) and torch.equal(cpu.counts, gpu.counts)
    P, y = _members_cls(4, 300, 5, seed=1)
    for objective in ("accuracy", "auroc"):
        cpu = exhaustive_search(P, y, objective, step=0.1, device="cpu")
        gpu = exhaustive_search(P, y, objective, step=0.1, device="cuda")
        assert torch.equal(cpu.scores_all, gpu.scores_all)
