"""Weight search for weighted-average ensembles (WAEM, Sayed 2025 eq. 1) on cached member probabilities.

Inputs: `P` of shape (k members, N, C) for classification or (k, N, C, H, W) for segmentation (float16 caches
are fine), integer targets `y` of shape (N,) or (N, H, W).

Exactness. Grid weight vectors are integer counts c (sum n, weight c/n). The ensemble decision is
argmax_j S_j with S_j = sum_i c_i * P_i[j] (dividing by sum c never changes an argmax), ties going to the first
maximal class as torch.argmax and numpy.argmax do. Before searching, probabilities are snapped to the
fixed-point grid 2^-q with q = 52 - ceil(log2(2 * max_total * max|P|)) (q = 47 for n = 10 and P <= 1): then
every product c_i * P_i[j], every partial sum and every difference of such sums is an integer multiple of 2^-q
of magnitude below 2^53 * 2^-q, so float64 matrix products are exact in any summation order, with or without
FMA, on CPU or GPU. Snapping changes nothing for float16 caches (their values are multiples of 2^-24) nor for
float32 values >= 2^-(q-23) (about 1e-7); smaller float32 values move by less than 2^-(q+1). Hence ties are real
ties and are broken the same way everywhere: the batched search returns the same per-vector confusion counts,
so bit-identical scores, as the naive per-vector loop `naive_scores` (for float16 caches, and float32 ones
without values below that threshold), and the same optimum: the first maximal score in enumeration order.

Pruning. For a pixel (or sample), class j can never be the first argmax if some class c dominates it for
every member: P_i[c] >= P_i[j] for all i when c < j (a tie already goes to c), or P_i[c] > P_i[j] for all i when
c > j; or if two classes a, b beat it on average for every member: P_i[a] + P_i[b] > 2 P_i[j] (then
max(S_a, S_b) > S_j). Both hold for every non-negative, non-zero weight vector, so each pixel keeps a set of
candidate classes, and a class that is some member's argmax is always a candidate (the grid has the vertices):
- one candidate, i.e. all members' argmax agree: "settled", its confusion count is added once;
- two candidates a < b: b iff S_b - S_a = c . (P[b] - P[a]) > 0, one exact dot product of length k;
- three candidates a < b < c: two exact differences to S_a, and b needs > 0, c needs > 0 and > S_b - S_a;
- four or more (rare): the full weighted sums and an argmax.
Pixels are grouped by (candidates, target), so counting a group's decisions is a row sum. With trained
members most pixels are settled, and the per-vector work is a small float64 GEMM over the boundary pixels, in
cache-sized blocks (one intra-op thread per worker on CPU, see `_cpu_workers`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from spinenet.ensemble.objectives import Objective, get_objective
from spinenet.errors import ConfigError, DataError
from spinenet.utils.progress import progress_bar

__all__ = [
    "SearchResult",
    "WeightScorer",
    "baselines",
    "exhaustive_search",
    "greedy_selection",
    "n_simplex_points",
    "naive_scores",
    "simplex_counts",
    "score_weights",
    "simplex_grid",
    "step_to_divisions",
    "weighted_average",
]

# Refuse grids that cannot finish in reasonable time or memory (the count alone would be 8 bytes * k each).
MAX_GRID_POINTS = 20_000_000


@dataclass
class _Grouped:
    """Pixels with the same number of candidates, sorted by (candidate classes, target).

    col: (width - 1, k, M) exact differences P[cand_j] - P[cand_0]; sizes: (G,) pixels per group;
    cells: (width, G) confusion cell (target * C + class) for each candidate; blocks: (start, end, groups present,
    one-hot of the block's pixels onto those groups or None when there is one group).
    """

    col: torch.Tensor
    sizes: torch.Tensor
    cells: torch.Tensor
    blocks: list[tuple[int, int, torch.Tensor, torch.Tensor | None]]

    @property
    def n(self) -> int:
        return self.col.shape[2]


@dataclass
class SearchResult:
    """Outcome of a weight search. `weights` are normalised (sum 1), in member order."""

    weights: torch.Tensor
    score: float
    n_vectors: int
    method: str
    objective: str
    seconds: float = 0.0
    counts: torch.Tensor | None = None  # integer grid counts of the chosen vector
    scores_all: torch.Tensor | None = None  # exhaustive: score of every vector, in enumeration order
    trajectory: list[float] = field(default_factory=list)  # greedy: score after each round
    best_so_far: list[float] = field(default_factory=list)  # greedy: running maximum of trajectory
    settled_fraction: float | None = None

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "objective": self.objective,
            "weights": [float(w) for w in self.weights],
            "score": self.score,
            "n_vectors": self.n_vectors,
            "seconds": self.seconds,
            "trajectory": list(self.trajectory),
            "best_so_far": list(self.best_so_far),
            "settled_fraction": self.settled_fraction,
        }


# ----------------------------------------------------------------------------------------------- simplex
def n_simplex_points(k: int, n: int) -> int:
    """Number of weight vectors with entries in {0, 1/n, ..., 1} summing to 1: C(n + k - 1, k - 1)."""
    return math.comb(n + k - 1, k - 1)


def step_to_divisions(step: float) -> int:
    """Grid step 1/n -> n; the step must divide 1 evenly."""
    if not (isinstance(step, int | float) and 0 < step <= 1):
        raise ConfigError(f"ensemble step must be in (0, 1], got {step!r}")
    n = round(1.0 / step)
    if abs(n * step - 1.0) > 1e-6:
        raise ConfigError(f"ensemble step {step} does not divide 1 evenly; use e.g. 0.1, 0.05, 0.2 or 0.25")
    return n


def simplex_counts(k: int, n: int) -> torch.Tensor:
    """All compositions of n into k non-negative parts, (C(n+k-1, k-1), k) int64, lexicographic order.

    Stars and bars: choosing k-1 bar positions among n+k-1 slots gives each composition exactly once, and
    itertools.combinations yields bar sets in lexicographic order, which is lexicographic order of the counts.
    """
    if k < 1 or n < 1:
        raise ConfigError(f"simplex grid needs k >= 1 members and n >= 1 divisions, got k={k}, n={n}")
    total = n_simplex_points(k, n)
    if total > MAX_GRID_POINTS:
        raise ConfigError(
            f"ensemble grid of {k} members with step 1/{n} has {total:,} weight vectors "
            f"(limit {MAX_GRID_POINTS:,}); use a coarser step, fewer members or greedy selection"
        )
    if k == 1:
        return torch.tensor([[n]], dtype=torch.int64)
    bars = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(n + k - 1), k - 1)),
        dtype=np.int64,
        count=total * (k - 1),
    ).reshape(total, k - 1)
    edges = np.concatenate(
        [np.full((total, 1), -1, np.int64), bars, np.full((total, 1), n + k - 1, np.int64)], axis=1
    )
    return torch.from_numpy(np.diff(edges, axis=1) - 1)


def simplex_grid(k: int, n: int) -> torch.Tensor:
    """Weight vectors on the simplex with step 1/n, (C(n+k-1, k-1), k) float64, rows summing to 1.

    WAEM = sum_i w_i M_i / sum_i w_i is unchanged when all w_i are scaled by the same factor, so every vector
    of the paper's [0, 1]^k grid gives the same ensemble as its normalised version: searching the normalised
    vectors (the simplex) covers every distinct ensemble exactly once, instead of (n+1)^k mostly redundant
    points (and the all-zero vector, which is no ensemble at all).
    """
    return simplex_counts(k, n).to(torch.float64) / n


# ----------------------------------------------------------------------------------------------- averaging
def weighted_average(P: torch.Tensor, w: torch.Tensor | list[float] | np.ndarray) -> torch.Tensor:
    """WAEM probabilities sum_i w_i P_i / sum_i w_i over the member axis 0 (float32, or float64 for float64 P)."""
    P = torch.as_tensor(P)
    w = torch.as_tensor(w, dtype=torch.float64).flatten()
    if w.numel() != P.shape[0]:
        raise ConfigError(f"ensemble weights: got {w.numel()} weights for {P.shape[0]} members")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ConfigError(f"ensemble weights must be finite and non-negative, got {w.tolist()}")
    total = float(w.sum())
    if total <= 0:
        raise ConfigError("ensemble weights are all zero; at least one member needs a positive weight")
    dtype = torch.float64 if P.dtype == torch.float64 else torch.float32
    out = torch.zeros(P.shape[1:], dtype=dtype, device=P.device)
    for wi, Pi in zip(w.tolist(), P, strict=True):
        if wi != 0:  # member by member: no (k, ...) float32 copy of a large float16 cache
            out += wi * Pi.to(dtype)
    return out / total


# ----------------------------------------------------------------------------------------------- scorer
def _as_inputs(P: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate shapes; return P as (k, M, C) with classes last, y as (M,), and whether it is segmentation."""
    P = torch.as_tensor(P)
    y = torch.as_tensor(y)
    if not P.is_floating_point():
        raise DataError(f"member probabilities must be floating point, got {P.dtype}")
    if P.dim() == 3:
        seg = False
        expect = (P.shape[1],)
    elif P.dim() == 5:
        seg = True
        expect = (P.shape[1], P.shape[3], P.shape[4])
    else:
        raise DataError(
            f"member probabilities must be (k, N, C) or (k, N, C, H, W), got shape {tuple(P.shape)}"
        )
    if tuple(y.shape) != expect:
        raise DataError(
            f"targets have shape {tuple(y.shape)}, expected {expect} for probabilities {tuple(P.shape)}"
        )
    if P.shape[0] < 1 or P.shape[2] < 2:
        raise DataError(f"need at least 1 member and 2 classes, got shape {tuple(P.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise DataError(f"targets must be integer class ids, got {y.dtype}")
    c = P.shape[2]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        raise DataError(f"targets must be class ids in [0, {c - 1}], found {int(y.min())}..{int(y.max())}")
    k = P.shape[0]
    Pf = P.movedim(2, -1).reshape(k, -1, c) if seg else P
    return Pf, y.reshape(-1).to(torch.int64), seg


class WeightScorer:
    """Exact batched scoring of integer weight vectors on fixed member probabilities (see module doc).

    Build once per (P, y, objective); `score(counts)` then costs only the work on unsettled pixels.
    `max_total` bounds the sum of any count vector that will be scored (n for a 1/n grid).
    `prune=False` scores every pixel with the full argmax (the reference the pruning is tested against).
    After construction: `settled_fraction`, and `n_binary`, `n_ternary`, `n_multi` pixels with 2, 3, 4+
    candidate classes.
    """

    def __init__(
        self,
        P: torch.Tensor,
        y: torch.Tensor,
        objective: str | Objective,
        *,
        max_total: int,
        device: str | torch.device | None = None,
        prune: bool = True,
        pixel_chunk: int = 1 << 16,
    ) -> None:
        self.objective = get_objective(objective)
        Pf, yf, seg = _as_inputs(P, y)
        if seg and not self.objective.segmentation:
            raise ConfigError(
                f"objective '{self.objective.name}' is for classification only; segmentation objectives: "
                "dice, miou, accuracy, balanced_accuracy, macro_f1"
            )
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.k, self.m, self.c = Pf.shape
        self.max_total = int(max_total)
        if self.max_total < 1:
            raise ConfigError(f"max_total must be >= 1, got {max_total}")
        cpu = self.device.type == "cpu"
        # Cache-sized blocks on CPU; large blocks on a GPU, where launch overhead dominates.
        self._bv, self._bm = (64, 8192) if cpu else (2048, 16384)
        self._set_scale(Pf)
        if self.objective.needs == "scores":
            self._keep_all_scores(Pf, yf)
            return
        self._partition_pixels(Pf, yf, prune, pixel_chunk)

    def _set_scale(self, Pf: torch.Tensor) -> None:
        """The fixed-point grid 2^-q on which every weighted sum and difference is exact in float64 (see the
        module doc)."""
        amax = float(Pf.abs().max()) if Pf.numel() else 1.0
        if not math.isfinite(amax):
            raise DataError("member probabilities contain NaN or infinite values")
        self.q = 52 - math.ceil(math.log2(2 * self.max_total * max(amax, 2.0**-20)))
        self._scale = 2.0**self.q

    def _keep_all_scores(self, Pf: torch.Tensor, yf: torch.Tensor) -> None:
        """AUROC ranks all samples: no pruning, keep every snapped probability."""
        self._q_all = self._snap(Pf.to(self.device)).reshape(self.k, -1)
        self._y = yf.to(self.device)
        self.settled_fraction = 0.0
        self.n_binary, self.n_ternary, self.n_multi = 0, 0, self.m

    def _partition_pixels(self, Pf: torch.Tensor, yf: torch.Tensor, prune: bool, pixel_chunk: int) -> None:
        """Settled pixels are counted into the confusion matrix once here, so scoring a weight vector only
        touches the pixels whose decision can change; those are sorted by their number of candidates."""
        c = self.c
        # Snapping is the identity on float16 values (multiples of 2^-24) when q >= 24, so the agreement test
        # can run on an exact float32 copy and only disagreeing pixels need float64.
        raw_exact = Pf.dtype == torch.float16 and self.q >= 24
        fixed = torch.zeros(c * c, dtype=torch.int64, device=self.device)
        keys2, cols2, keys3, cols3, multi_q, multi_y = [], [], [], [], [], []
        n_settled = 0
        for s in range(0, self.m, pixel_chunk):
            raw = Pf[:, s : s + pixel_chunk].to(self.device)
            yc = yf[s : s + pixel_chunk].to(self.device)
            if not prune:  # every pixel takes the full argmax path
                multi_q.append(self._snap(raw))
                multi_y.append(yc)
                continue
            am = (raw.float() if raw_exact else self._snap(raw)).argmax(2)  # (k, m): each member's class
            agree = (am == am[:1]).all(0)
            # Settled: every member's first argmax is the same class c. Then P_i[c] >= P_i[j] for all i, j,
            # strictly for j < c, so for any weights S_c >= S_j (strictly for j < c): argmax is c.
            fixed += torch.bincount(yc[agree] * c + am[0, agree], minlength=c * c)
            n_settled += int(agree.sum())
            rest = (~agree).nonzero().squeeze(1)
            if rest.numel() == 0:
                continue
            q, yr = self._snap(raw[:, rest]), yc[rest]
            cand = self._candidates(q)
            ncand = cand.sum(1)
            order = torch.arange(c, device=self.device)
            ranked = torch.sort(torch.where(cand, order, c), 1).values  # candidate classes first, ascending
            for width, keys, cols in ((2, keys2, cols2), (3, keys3, cols3)):
                sel = ncand == width
                if not sel.any():
                    continue
                key, col = self._narrow_key_and_columns(q[:, sel], yr[sel], ranked[sel, :width])
                keys.append(key)
                cols.append(col)
            many = ncand >= 4
            if many.any():
                multi_q.append(q[:, many])
                multi_y.append(yr[many])
        self._fixed = fixed
        self.settled_fraction = n_settled / max(self.m, 1)
        self._two = self._grouped(keys2, cols2, 2)
        self._three = self._grouped(keys3, cols3, 3)
        self.n_binary = self._two.n if self._two else 0
        self.n_ternary = self._three.n if self._three else 0
        self._block_multi(multi_q, multi_y)

    def _narrow_key_and_columns(
        self, qs: torch.Tensor, ys: torch.Tensor, cls: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pixel with 2 or 3 candidates (`cls`, (m', width), ascending) is decided by the differences of its
        candidates' probabilities to the first one's; the key (candidates, target) lets `_grouped` count a
        whole group's decisions with one row sum."""
        c, width = self.c, cls.shape[1]
        pick = [qs.gather(2, cls[:, j].view(1, -1, 1).expand(self.k, -1, 1)).squeeze(2) for j in range(width)]
        col = torch.stack([pick[j] - pick[0] for j in range(1, width)])  # exact differences
        key = torch.zeros_like(ys)
        for j in range(width):
            key = key * c + cls[:, j]
        return key * c + ys, col

    def _block_multi(self, multi_q: list[torch.Tensor], multi_y: list[torch.Tensor]) -> None:
        """Pixels with 4+ candidates need the full weighted sums and an argmax: blocks of (k, pixels * C)
        snapped probabilities and their targets, sized like the other blocks."""
        self._multi_blocks = []
        self.n_multi = 0
        if multi_q:
            mq, my = torch.cat(multi_q, 1), torch.cat(multi_y)
            self.n_multi = mq.shape[1]
            bm = max(1, self._bm // self.c)
            for s in range(0, mq.shape[1], bm):
                self._multi_blocks.append((mq[:, s : s + bm].reshape(self.k, -1), my[s : s + bm]))

    def _candidates(self, q: torch.Tensor) -> torch.Tensor:
        """(m, C) mask of the classes that can be the first argmax for some weight vector (exact, see doc)."""
        c = q.shape[2]
        lt = torch.ones(c, c, dtype=torch.bool, device=q.device).triu(1)  # [c, j]: c < j
        ge = (q.unsqueeze(-1) >= q.unsqueeze(-2)).all(0)  # (m, C, C): P_i[c] >= P_i[j] for every member
        gt = (q.unsqueeze(-1) > q.unsqueeze(-2)).all(0)
        dominated = ((ge & lt) | (gt & lt.transpose(0, 1))).any(1)
        many = (~dominated).sum(1) >= 3
        if 3 <= c <= 16 and bool(many.any()):
            sel = many.nonzero().squeeze(1)
            dominated[sel] |= self._mixed_dominated(q[:, sel])
        return ~dominated

    def _grouped(self, keys: list[torch.Tensor], cols: list[torch.Tensor], width: int) -> _Grouped | None:
        """Sort pixels with `width` candidates by (candidates, target) and cut them into blocks."""
        if not keys:
            return None
        key = torch.cat(keys)
        col = torch.cat(cols, 2)  # (width - 1, k, M)
        key, order = torch.sort(key, stable=True)
        col = col[:, :, order].contiguous()
        groups, sizes = torch.unique_consecutive(key, return_counts=True)
        c = self.c
        y = groups % c
        classes = []
        rest = groups // c
        for _ in range(width):
            classes.append(rest % c)
            rest = rest // c
        classes.reverse()  # a, b(, c) in ascending class order
        cells = torch.stack([y * c + cl for cl in classes])  # (width, G): confusion cell of each choice
        gid = torch.repeat_interleave(torch.arange(len(groups), device=self.device), sizes)
        blocks = []
        for s in range(0, gid.numel(), self._bm):
            blk = gid[s : s + self._bm]
            present, local = torch.unique(blk, return_inverse=True)
            onehot = None  # one group in the block (the usual case for segmentation): a plain row sum
            if present.numel() > 1:
                onehot = torch.zeros(blk.numel(), present.numel(), dtype=torch.float64, device=self.device)
                onehot[torch.arange(blk.numel(), device=self.device), local] = 1.0
            blocks.append((s, s + blk.numel(), present, onehot))
        return _Grouped(col, sizes, cells, blocks)

    @staticmethod
    def _mixed_dominated(q: torch.Tensor) -> torch.Tensor:
        """(m, C) mask of classes j with P_i[a] + P_i[b] > 2 P_i[j] for every member i, for some a, b != j.

        Then S_a + S_b > 2 S_j for every non-zero weight vector, so max(S_a, S_b) > S_j strictly and j is never
        the argmax (no tie rule involved). This removes a small third class at a two-class boundary, where no
        single class dominates it for every member. Sums of two grid values are exact.
        """
        c = q.shape[2]
        out = torch.zeros(q.shape[1], c, dtype=torch.bool, device=q.device)
        for a, b in itertools.combinations(range(c), 2):
            pair = q[:, :, a] + q[:, :, b]
            for j in range(c):
                if j != a and j != b:
                    out[:, j] |= (pair > 2 * q[:, :, j]).all(0)
        return out

    def _block_vectors(self, width: int) -> int:
        # Keep (vectors x columns) per block near the tuned size: few pixels (classification) -> many vectors.
        return max(self._bv, (self._bv * self._bm) // max(width, 1))

    def _snap(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        return torch.round(x * self._scale) / self._scale  # power-of-two scaling: exact

    def _check_counts(self, counts: torch.Tensor) -> torch.Tensor:
        counts = torch.as_tensor(counts)
        if counts.dim() == 1:
            counts = counts.unsqueeze(0)
        if counts.shape[1] != self.k:
            raise ConfigError(f"weight vectors have {counts.shape[1]} entries for {self.k} members")
        if counts.is_floating_point() and not torch.equal(counts, counts.round()):
            raise ConfigError("WeightScorer takes integer count vectors (weights = counts / counts.sum())")
        counts = counts.to(torch.int64)
        totals = counts.sum(1)
        if (counts < 0).any() or (totals < 1).any() or int(totals.max()) > self.max_total:
            raise ConfigError(
                f"count vectors must be non-negative with a sum in 1..{self.max_total} (the scorer's max_total)"
            )
        return counts

    @torch.no_grad()
    def confusion(self, counts: torch.Tensor) -> torch.Tensor:
        """Confusion counts (V, C, C) of the ensembles given by integer count vectors (V, k)."""
        counts = self._check_counts(counts)
        if self.objective.needs == "scores":
            raise ConfigError(
                f"objective '{self.objective.name}' is computed from scores, not confusion counts"
            )
        c = self.c
        v = counts.shape[0]
        w = counts.to(self.device, torch.float64)
        cm = self._fixed.unsqueeze(0).repeat(v, 1)
        for grouped in (self._two, self._three):
            if grouped is None:
                continue
            picks = torch.zeros(
                grouped.col.shape[0], v, len(grouped.sizes), dtype=torch.float64, device=w.device
            )
            for s, e, present, onehot in grouped.blocks:
                bv = self._block_vectors(e - s)
                for vs in range(0, v, bv):
                    wb = w[vs : vs + bv]
                    # Exact S_b - S_a (and S_c - S_a); the first maximal class wins, so b needs > 0, c needs
                    # > 0 and > S_b - S_a.
                    r1 = wb @ grouped.col[0, :, s:e]
                    if grouped.col.shape[0] == 1:
                        chosen = [r1.gt_(0)]
                    else:
                        r2 = wb @ grouped.col[1, :, s:e]
                        pos1 = r1 > 0
                        pick_c = torch.where(pos1, r2 > r1, r2 > 0)
                        chosen = [(pos1 & ~pick_c).to(torch.float64), pick_c.to(torch.float64)]
                    for j, ch in enumerate(chosen):
                        picks[j, vs : vs + bv, present] += (
                            ch.sum(1, keepdim=True) if onehot is None else ch @ onehot
                        )
            picks = picks.to(torch.int64)
            cm.index_add_(1, grouped.cells[0], grouped.sizes.unsqueeze(0) - picks.sum(0))  # first candidate
            for j in range(picks.shape[0]):
                cm.index_add_(1, grouped.cells[j + 1], picks[j])
        for qb, yb in self._multi_blocks:
            bv = self._block_vectors(qb.shape[1])
            for vs in range(0, v, bv):
                wb = w[vs : vs + bv]
                pred = (wb @ qb).view(wb.shape[0], -1, c).argmax(-1)  # first maximal class on ties
                idx = yb.unsqueeze(0) * c + pred
                cm[vs : vs + bv].scatter_add_(1, idx, torch.ones_like(idx))
        return cm.view(v, c, c)

    @torch.no_grad()
    def score(self, counts: torch.Tensor) -> torch.Tensor:
        """Objective score (V,) float64 of each integer count vector (V, k), on the scorer's device."""
        if self.objective.needs == "confusion":
            return self.objective.fn(self.confusion(counts))
        counts = self._check_counts(counts)
        w = counts.to(self.device, torch.float64)
        out = []
        bv = 256 if self.device.type == "cpu" else 4096
        for vs in range(0, w.shape[0], bv):
            s = (w[vs : vs + bv] @ self._q_all).view(-1, self.m, self.c)
            out.append(self.objective.fn(s, self._y))
        return torch.cat(out)


# ----------------------------------------------------------------------------------------------- searches
def _default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def _cpu_workers(device: torch.device) -> Iterator[int]:
    """On CPU: one intra-op thread per worker; yields the number of workers (the previous thread count).

    The search issues many small ops. With several intra-op threads every op ends in a barrier, and on a
    shared, oversubscribed machine one descheduled thread stalls the others at each barrier (measured here:
    10-20x slower). Independent Python threads, each running single-threaded ops on its own chunk of weight
    vectors (torch releases the GIL inside ops), use the same cores without that stall.
    """
    if device.type != "cpu":
        yield 1
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield n
    finally:
        torch.set_num_threads(n)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def exhaustive_search(
    P: torch.Tensor,
    y: torch.Tensor,
    objective: str | Objective,
    step: float = 0.1,
    device: str | torch.device | None = None,
    chunk: int = 65536,
    keep_scores: bool = True,
    prune: bool = True,
    progress: bool | None = False,
) -> SearchResult:
    """Score every weight vector of the simplex grid with step `step`; return the first best one.

    Exact: the same per-vector scores and the same optimum as `naive_scores` over `simplex_counts` (ties go
    to the first vector in lexicographic order of the counts). `device=None` uses CUDA when available.
    `progress`: a bar over the chunks of weight vectors (`None`: on a terminal only; default off).
    """
    t0 = time.perf_counter()
    dev = _default_device(device)
    obj = get_objective(objective)
    n = step_to_divisions(step)
    k = torch.as_tensor(P).shape[0]
    counts = simplex_counts(k, n)
    scores = torch.empty(counts.shape[0], dtype=torch.float64)
    with _cpu_workers(dev) as workers:
        scorer = WeightScorer(P, y, obj, max_total=n, device=dev, prune=prune)
        if workers > 1:
            chunk = min(chunk, 1024)  # several chunks per worker keeps the load even
        starts = range(0, counts.shape[0], chunk)
        bar = progress_bar(counts.shape[0], "weight vectors", progress)

        def run(s: int) -> None:
            scores[s : s + chunk] = scorer.score(counts[s : s + chunk]).cpu()
            bar.update(min(chunk, counts.shape[0] - s))

        with bar:
            if workers > 1 and len(starts) > 1:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(run, starts))
            else:
                for s in starts:
                    run(s)
    _sync(dev)
    best = int(torch.argmax(scores))  # first maximal index
    return SearchResult(
        weights=counts[best].to(torch.float64) / n,
        score=float(scores[best]),
        n_vectors=counts.shape[0],
        method="exhaustive",
        objective=obj.name,
        seconds=time.perf_counter() - t0,
        counts=counts[best],
        scores_all=scores if keep_scores else None,
        settled_fraction=scorer.settled_fraction,
    )


def greedy_selection(
    P: torch.Tensor,
    y: torch.Tensor,
    objective: str | Objective,
    rounds: int = 25,
    with_replacement: bool = True,
    device: str | torch.device | None = None,
) -> SearchResult:
    """Greedy forward selection (Caruana et al. 2004) as AutoGluon's EnsembleSelection does it.

    Start from the empty ensemble; each round add the member (repeats allowed with replacement) whose addition
    gives the best validation score, even when that score is worse than the previous round's: AutoGluon always
    adds the round's best candidate and afterwards keeps the ensemble of the first round that reached the best
    score (`use_best`), so a bad round costs nothing. Ties (relative 1e-12, as AutoGluon) prefer members
    already in the ensemble, then - deterministically, where AutoGluon draws at random - the lowest index.
    Weights are counts / size of the kept ensemble. `trajectory` holds every round's score, `best_so_far` its
    running maximum (non-decreasing by construction); the result's score is the last value of `best_so_far`.
    """
    t0 = time.perf_counter()
    if rounds < 1:
        raise ConfigError(f"greedy selection needs rounds >= 1, got {rounds}")
    dev = _default_device(device)
    obj = get_objective(objective)
    k = torch.as_tensor(P).shape[0]
    with _cpu_workers(dev):
        scorer = WeightScorer(P, y, obj, max_total=rounds, device=dev)
        return _greedy(scorer, k, rounds, with_replacement, obj, t0)


def _greedy(
    scorer: WeightScorer, k: int, rounds: int, with_replacement: bool, obj: Objective, t0: float
) -> SearchResult:
    counts = torch.zeros(k, dtype=torch.int64)
    history: list[torch.Tensor] = []
    trajectory: list[float] = []
    n_scored = 0
    for _ in range(rounds):
        allowed = [j for j in range(k) if with_replacement or counts[j] == 0]
        if not allowed:
            break
        cand = counts.unsqueeze(0).repeat(len(allowed), 1)
        cand[torch.arange(len(allowed)), torch.tensor(allowed)] += 1
        scores = scorer.score(cand).cpu()
        n_scored += len(allowed)
        best_val = float(scores.max())
        tied = [
            i
            for i in range(len(allowed))
            if math.isclose(float(scores[i]), best_val, rel_tol=1e-12, abs_tol=0)
        ]
        used = [i for i in tied if counts[allowed[i]] > 0]
        pick = (used or tied)[0]
        counts = cand[pick]
        history.append(counts.clone())
        trajectory.append(float(scores[pick]))
    best_round = int(np.argmax(trajectory))  # first round reaching the maximum
    kept = history[best_round]
    best_so_far = list(np.maximum.accumulate(trajectory).tolist())
    return SearchResult(
        weights=kept.to(torch.float64) / kept.sum(),
        score=trajectory[best_round],
        n_vectors=n_scored,
        method="greedy",
        objective=obj.name,
        seconds=time.perf_counter() - t0,
        counts=kept,
        trajectory=trajectory,
        best_so_far=best_so_far,
        settled_fraction=scorer.settled_fraction,
    )


def baselines(
    P: torch.Tensor, y: torch.Tensor, objective: str | Objective, device: str | torch.device | None = None
) -> dict:
    """Scores of the plain average (AEM) and of each member alone: {"aem": float, "members": [float, ...]}."""
    dev = _default_device(device)
    k = torch.as_tensor(P).shape[0]
    counts = torch.cat([torch.ones(1, k, dtype=torch.int64), torch.eye(k, dtype=torch.int64)])
    with _cpu_workers(dev):
        scorer = WeightScorer(P, y, objective, max_total=k, device=dev)
        scores = scorer.score(counts).cpu().tolist()
    return {"aem": scores[0], "members": scores[1:]}


def score_weights(
    P: torch.Tensor,
    y: torch.Tensor,
    objective: str | Objective,
    weights: torch.Tensor | list[float] | np.ndarray,
    device: str | torch.device | None = None,
) -> float:
    """Objective score of one weight vector, e.g. the chosen weights on the test split.

    Weights that are multiples of 1/n for some n <= 1000 after normalising (every grid or greedy result) are
    scored exactly like the search scores them; other weights fall back to float64 `weighted_average`.
    """
    obj = get_objective(objective)
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    avg = weighted_average(torch.as_tensor(P).to(torch.float64), w)  # validates the weights
    w = w / w.sum()
    for n in range(1, 1001):
        counts = torch.round(w * n)
        if torch.allclose(counts, w * n, rtol=0, atol=1e-9) and int(counts.sum()) == n:
            dev = _default_device(device)
            with _cpu_workers(dev):
                scorer = WeightScorer(P, y, obj, max_total=n, device=dev)
                return float(scorer.score(counts.to(torch.int64).unsqueeze(0))[0])
    yt = torch.as_tensor(y)
    if avg.dim() == 4:  # (N, C, H, W) -> (N*H*W, C)
        avg = avg.movedim(1, -1).reshape(-1, avg.shape[1])
    return float(obj.from_scores(avg.unsqueeze(0), yt.reshape(-1))[0])


def naive_scores(
    P: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    objective: str | Objective,
    counts: torch.Tensor,
) -> np.ndarray:
    """Reference: one weight vector at a time in NumPy, no pruning, no batching (slow on purpose).

    avg = sum_i c_i P_i / sum_i c_i in float64 over the whole array, argmax (first maximal class), confusion by
    bincount, then the shared objective formula. Integer counts c stand for the weights c/n (same WAEM by scale
    invariance) and keep the products exact, so this is the textbook computation without representation error.
    """
    obj = get_objective(objective)
    P64 = np.asarray(torch.as_tensor(P).to(torch.float64).cpu())
    y_np = np.asarray(torch.as_tensor(y).cpu()).astype(np.int64)
    c = P64.shape[2]
    out = np.empty(len(counts), dtype=np.float64)
    for i, cv in enumerate(np.asarray(torch.as_tensor(counts).cpu(), dtype=np.float64)):
        avg = np.tensordot(cv, P64, axes=(0, 0)) / cv.sum()  # (N, C[, H, W])
        if obj.needs == "scores":
            out[i] = float(obj.fn(torch.from_numpy(avg).unsqueeze(0), torch.from_numpy(y_np))[0])
            continue
        pred = avg.argmax(1)
        cm = np.bincount((y_np * c + pred).ravel(), minlength=c * c).reshape(1, c, c)
        out[i] = float(obj.fn(torch.from_numpy(cm))[0])
    return out
