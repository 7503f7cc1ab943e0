"""Uncertainty and significance from per-query values: intervals, paired tests, Holm, Friedman-Nemenyi.

The unit is a table cell: one method (or ablation setting) on one protocol column at one code
length, run with S training seeds. Its per-query values form an (S, Q) matrix ``Y`` (seed s,
query q); the cell's number is ``Y.mean()``, the mean over seeds of each seed's mean over
queries. All seeds of a cell are evaluated on THE SAME queries (the protocol's query split), so
seeds and queries are crossed, not nested: a query that is hard for one trained model is hard
for the others.

The estimand is the mean over both populations: of training runs (seeds) and of queries (the
query split is a sample of the protocol's queries). The cell's mean is the sum of two
independent parts, and the two-level bootstrap draws each (:func:`interval`, and the same
for a difference of cells, :func:`paired_difference`):

- queries: the per-query means over seeds (Q values) are resampled with replacement, the
  same draws for every cell of a comparison (paired over queries). This part carries the
  queries' spread and the seed-by-query interaction, each counted once. Resampling queries
  anew within each seed instead (nested) would count one query S times as S independent
  draws: intervals about sqrt(S) too narrow where queries dominate (the usual case here);
- seeds: S = 3 seeds cannot be resampled usefully (10 possible draws, and their variance
  estimate has 2 degrees of freedom), so this part is drawn from a Student t with S - 1
  degrees of freedom (Welch-Satterthwaite across the cells of a difference), scaled by the
  standard error of the mean over seeds: the moment estimate of the seed effects' variance
  (the variance of the seeds' means less the interaction's share of it), over S. One seed:
  no seed part (the interval then covers the queries' sampling only).

Intervals are percentile intervals of the replicates. A difference's p-value is the bootstrap
test of a zero difference: the share of centred replicates ``|D* - D|`` at least as large as
the observed ``|D|``, counting the observed one (``(1 + hits) / (1 + n)``).

Measured on 400 simulated cells per case (tests/test_stats.py; docs/statistics.md), 3 seeds
and 500 queries: the 95 % interval covers the true mean in 95.5 % of cells with the reference
results' variance components (queries dominate) and in 96.3 % where seeds dominate (LSH-like;
resampling the 3 seeds instead covered ~83 %); the test rejects 4.3-4.5 % of null pairs at
alpha 0.05, and 98.8 % of pairs 0.04 apart when the seeds agree (76.5 % with the reference
results' spread over seeds: 3 seeds leave it little power). Seeded and reproducible: the same
inputs and ``seed`` give the same numbers.

Across many cells, :func:`friedman_nemenyi` ranks methods per cell and tests the average ranks
(Demšar 2006: Friedman's test, then Nemenyi's critical difference), with scipy.stats.

numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import HashbenchError

DEFAULT_CONFIDENCE = 0.95
DEFAULT_ALPHA = 0.05
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
_CHUNK_CELLS = 1 << 22  # replicate x query weights drawn at a time (32 MiB of int64)


@dataclass(frozen=True, eq=False)
class CellValues:
    """One cell's per-query values: ``values`` float64 (S, Q), row s the seed ``seeds[s]``,
    column q the query ``query_ids[q]``; ``what`` names the cell in messages."""

    values: np.ndarray
    query_ids: np.ndarray
    seeds: tuple[int, ...]
    what: str = "cell"

    def __post_init__(self) -> None:
        v = self.values
        if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] == 0:
            raise HashbenchError(f"{self.what}: per-query values must be a non-empty (seeds, queries) matrix, "
                                 f"got shape {v.shape}")
        if v.shape != (len(self.seeds), len(self.query_ids)):
            raise HashbenchError(f"{self.what}: {v.shape} values for {len(self.seeds)} seeds and "
                                 f"{len(self.query_ids)} queries")
        if not np.isfinite(v).all():
            raise HashbenchError(f"{self.what}: per-query values are not all finite")

    @property
    def mean(self) -> float:
        """The cell's number: the mean over seeds of the mean over queries."""
        return float(self.values.mean())


@dataclass(frozen=True)
class Interval:
    """A ``confidence`` interval [low, high] around ``estimate``."""

    estimate: float
    low: float
    high: float
    confidence: float


@dataclass(frozen=True)
class Difference:
    """A paired difference ``a - b`` of two cells: its estimate and interval, and the two-sided
    p-value of the bootstrap test of a zero difference."""

    estimate: float
    low: float
    high: float
    confidence: float
    p_value: float


def check_level(value: float, what: str) -> float:
    """``value`` if it is a probability strictly between 0 and 1, else a HashbenchError."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
        raise HashbenchError(f"{what} must be between 0 and 1 (exclusive), got {value!r}")
    return float(value)


def check_resamples(n: int, what: str = "resamples") -> int:
    """``n`` if it is a whole number of bootstrap replicates >= 100, else a HashbenchError."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 100:
        raise HashbenchError(f"{what} must be a whole number >= 100, got {n!r}")
    return n


def _components(values: np.ndarray) -> tuple[float, np.ndarray]:
    """A cell's two resampled parts: the standard error of its mean over seeds from the seed
    effects' variance (moment estimate: the variance of the seeds' means less the
    seed-by-query interaction's share; 0 with one seed), and its per-query means over seeds
    (see the module doc). Returns (seed standard error, query means (Q,))."""
    s, q = values.shape
    rows, columns = values.mean(axis=1), values.mean(axis=0)
    if s < 2:
        return 0.0, columns
    residual = values - rows[:, None] - columns[None, :] + values.mean()
    interaction = float((residual ** 2).sum()) / ((s - 1) * (q - 1)) if q > 1 else 0.0
    seed_var = max(0.0, float(rows.var(ddof=1)) - interaction / q)
    return math.sqrt(seed_var / s), columns


def _count_weights(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size) float64: each row the counts of ``size`` draws with replacement from
    ``size`` items, divided by ``size`` (a bootstrap resample as weights)."""
    draws = rng.integers(0, size, (n, size))
    draws += np.arange(n)[:, None] * size
    return np.bincount(draws.ravel(), minlength=n * size).reshape(n, size) / size


def _replicates(cells: Sequence[CellValues], coefficients: Sequence[float], n_resamples: int,
                seed: int) -> np.ndarray:
    """(n_resamples,) float64: two-level bootstrap replicates of ``sum(c * cell.mean)`` (see
    the module doc), centred on its estimate: the queries drawn with replacement, the same
    draws for every cell (they must have the same query ids, in the same order), plus the
    seeds' part, a Student-t draw scaled by its standard error (Welch-Satterthwaite degrees
    of freedom across the cells)."""
    n_resamples = check_resamples(n_resamples)
    first = cells[0]
    for cell in cells[1:]:
        if not np.array_equal(cell.query_ids, first.query_ids):
            raise HashbenchError(f"cannot pair {first.what} with {cell.what}: their query ids differ "
                                 f"({len(first.query_ids)} and {len(cell.query_ids)} queries)")
    rng = np.random.default_rng(seed)
    parts = [_components(c.values) for c in cells]
    columns = sum(c * cols for c, (_, cols) in zip(coefficients, parts))
    variances = [(c * se) ** 2 for c, (se, _) in zip(coefficients, parts)]
    dof_terms = [v * v / (len(cell.seeds) - 1) for v, cell in zip(variances, cells) if v > 0]
    seed_se = math.sqrt(sum(variances))
    q = len(first.query_ids)
    out = np.empty(n_resamples)
    step = max(1, _CHUNK_CELLS // q)
    for b0 in range(0, n_resamples, step):
        b1 = min(n_resamples, b0 + step)
        out[b0:b1] = _count_weights(rng, b1 - b0, q) @ columns
    if dof_terms:
        out += seed_se * rng.standard_t(sum(variances) ** 2 / sum(dof_terms), n_resamples)
    return out


def interval(cell: CellValues, confidence: float = DEFAULT_CONFIDENCE, n_resamples: int = DEFAULT_RESAMPLES,
             seed: int = DEFAULT_SEED) -> Interval:
    """The percentile interval of the cell's mean (see the module doc)."""
    confidence = check_level(confidence, "confidence")
    reps = _replicates([cell], [1.0], n_resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(reps, [tail, 1 - tail])
    return Interval(cell.mean, float(low), float(high), confidence)


def paired_difference(a: CellValues, b: CellValues, confidence: float = DEFAULT_CONFIDENCE,
                      n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Difference:
    """``a - b`` over the same queries (HashbenchError when their query ids differ): the
    difference of the cells' means, its percentile interval and the bootstrap test's p-value
    (see the module doc), from replicates that draw the same queries for both."""
    confidence = check_level(confidence, "confidence")
    diffs = _replicates([a, b], [1.0, -1.0], n_resamples, seed)
    estimate = a.mean - b.mean
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    hits = int(np.count_nonzero(np.abs(diffs - estimate) >= abs(estimate) - 1e-15))
    return Difference(estimate, float(low), float(high), confidence, (1 + hits) / (1 + len(diffs)))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (same order): reject where the
    adjusted value <= alpha controls the family-wise error rate at alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or ((p < 0) | (p > 1)).any():
        raise HashbenchError("p-values must be a 1-D list of numbers in [0, 1]")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


@dataclass(frozen=True)
class RankTest:
    """Friedman's test over blocks (cells) and Nemenyi's critical difference of average ranks.

    ``average_ranks``: {method: average rank over the cells, 1 = best}, best first;
    ``cells``: the cells ranked; ``statistic``/``p_value``: Friedman's chi-square and its
    p-value; ``critical_difference``: two methods whose average ranks differ by less are not
    distinguishable at ``alpha`` (Nemenyi)."""

    average_ranks: dict[str, float]
    cells: tuple[str, ...]
    statistic: float
    p_value: float
    critical_difference: float
    alpha: float

    def groups(self) -> list[tuple[str, ...]]:
        """The maximal runs of methods (in rank order) whose ranks lie within one critical
        difference: the bars of a critical-difference diagram (runs of one method left out)."""
        names = list(self.average_ranks)
        ranks = [self.average_ranks[m] for m in names]
        out: list[tuple[str, ...]] = []
        for i in range(len(names)):
            j = i
            while j + 1 < len(names) and ranks[j + 1] - ranks[i] < self.critical_difference:
                j += 1
            if j > i and not (out and names.index(out[-1][-1]) >= j):
                out.append(tuple(names[i:j + 1]))
        return out


def friedman_nemenyi(scores: np.ndarray, methods: Sequence[str], cells: Sequence[str],
                     alpha: float = DEFAULT_ALPHA) -> RankTest:
    """Rank ``methods`` (columns of ``scores``, (cells, methods), higher is better) within each
    cell (ties share their average rank), then Friedman's test and Nemenyi's critical
    difference ``q_alpha * sqrt(k (k + 1) / (6 N))`` (k methods, N cells; q_alpha the
    studentized range quantile over sqrt 2). Needs >= 2 cells and >= 3 methods."""
    from scipy import stats

    alpha = check_level(alpha, "alpha")
    scores = np.asarray(scores, dtype=np.float64)
    n, k = scores.shape if scores.ndim == 2 else (0, 0)
    if k != len(methods) or n != len(cells):
        raise HashbenchError(f"scores of shape {scores.shape} for {len(cells)} cells and {len(methods)} methods")
    if n < 2 or k < 3:
        raise HashbenchError(f"a rank test needs at least 2 cells and 3 methods, got {n} and {k}")
    if not np.isfinite(scores).all():
        raise HashbenchError("scores are not all finite")
    ranks = stats.rankdata(-scores, axis=1)
    average = ranks.mean(axis=0)
    statistic, p_value = stats.friedmanchisquare(*scores.T)
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    cd = float(q * math.sqrt(k * (k + 1) / (6.0 * n)))
    order = np.argsort(average, kind="stable")
    return RankTest({methods[i]: float(average[i]) for i in order}, tuple(cells), float(statistic),
                    float(p_value) if np.isfinite(p_value) else 1.0, cd, alpha)
