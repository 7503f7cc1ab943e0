"""What a results folder can tell apart: intervals, table markers and paired comparisons of cells.

A cell is what a table shows in one place: the runs of one row (method or ablation setting)
in one column (protocol variant with its input, code length), one run per seed, as grouped by
:func:`hashbench.tables.records_frame`. Its per-query values (:mod:`hashbench.queries`, read
and checked through :meth:`hashbench.store.RunStore.query_values`) make a
:class:`~hashbench.stats.CellValues`; the statistics are :mod:`hashbench.stats`'.

- :func:`annotate`: per cell of a table, its interval (optional) and its mark against the
  column's reference row (the best mean, or an ablation's default setting): ``reference``,
  ``tie`` (the paired difference is not significant at ``alpha``, Holm-corrected over the
  column's tests), ``differs``, or ``untested`` (no per-query values in this cell or in the
  reference: runs recorded before hashbench kept them; or nothing to compare with).
- :func:`compare_pair` and :func:`compare_all`: ``hashbench compare``.

A cell whose runs have no per-query values is never tested, and says so; a per-query file
that is missing, corrupt or another run's is an error (:class:`hashbench.queries.QueriesError`);
two cells over different queries are never paired (an error).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import HashbenchError
from .queries import QueryValues
from .stats import (
    DEFAULT_ALPHA,
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    CellValues,
    check_level,
    check_resamples,
    holm,
    interval,
    paired_difference,
)
from .store import RunRecord, RunStore, as_record, atomic_write_text

CELL = ["method", "dataset", "bits"]
MARKS = ("reference", "tie", "differs", "untested")
NO_QUERIES = "no per-query values (recorded before hashbench kept them; `hashbench run --force` reruns it)"


@dataclass(frozen=True)
class Settings:
    """How cells are compared: ``alpha`` (the level of the tests, Holm-corrected within a
    family), ``confidence`` (of the intervals), ``resamples`` (bootstrap replicates), ``seed``
    (of the bootstrap), ``intervals`` (whether tables show them)."""

    alpha: float = DEFAULT_ALPHA
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    intervals: bool = False

    def __post_init__(self) -> None:
        check_level(self.alpha, "--alpha")
        check_level(self.confidence, "--confidence")
        check_resamples(self.resamples, "--resamples")

    def describe(self) -> str:
        """The procedure in one sentence, for captions."""
        return (f"paired two-level bootstrap over seeds and queries ({self.resamples} replicates), "
                f"Holm-corrected within the column, alpha = {self.alpha:g}")


@dataclass
class QueryCells:
    """The per-query values of a frame's cells (:func:`hashbench.tables.records_frame` rows),
    read once from the results folder of their records; ``metric`` is the one resampled."""

    store: RunStore
    records: Mapping[str, RunRecord]
    metric: str
    _runs: dict[str, QueryValues | None] = field(default_factory=dict)

    @classmethod
    def of(cls, store: RunStore, records: Iterable[RunRecord | Mapping[str, Any]], metric: str) -> QueryCells:
        """``records``: RunRecords, or their JSON forms (taken as :func:`hashbench.store.as_record`)."""
        recs = [as_record(r) for r in records]
        return cls(store, {r.run_id: r for r in recs}, metric)

    def _values(self, run_id: str) -> QueryValues | None:
        if run_id not in self._runs:
            self._runs[run_id] = self.store.query_values(self.records[run_id])
        return self._runs[run_id]

    def cell(self, rows: pd.DataFrame, what: str) -> CellValues | str:
        """The cell of ``rows`` (one per seed), or why it cannot be tested (a string).
        HashbenchError when its seeds were evaluated on different queries."""
        rows = rows.sort_values("seed")
        runs = [(row.run_id, self._values(row.run_id)) for row in rows.itertuples(index=False)]
        if any(values is None or self.metric not in values.values for _, values in runs):
            return NO_QUERIES
        first_id, first = runs[0]
        for run_id, values in runs[1:]:
            if not values.same_queries(first):
                raise HashbenchError(f"{what}: runs {first_id} and {run_id} were evaluated on different queries; "
                                     "a cell's seeds must share the protocol's query split")
        matrix = np.stack([values.values[self.metric].astype(np.float64) for _, values in runs])
        return CellValues(matrix, first.query_ids, tuple(int(s) for s in rows["seed"]), what)


def cell_name(method: str, dataset: str, bits: int) -> str:
    return f"{method} on {dataset} at {bits} bits"


def _cells(frame: pd.DataFrame, cells: QueryCells) -> dict[tuple[str, str, int], CellValues | str]:
    return {(m, d, int(b)): cells.cell(rows, cell_name(m, d, int(b)))
            for (m, d, b), rows in frame.groupby(CELL, sort=True)}


def annotate(frame: pd.DataFrame, cells: QueryCells, settings: Settings,
             references: Mapping[tuple[str, int], str] | None = None) -> pd.DataFrame:
    """One row per cell of ``frame`` (done runs): method, dataset, bits, ``ci_low``/``ci_high``
    (NaN unless ``settings.intervals`` and the cell has per-query values), ``p_holm`` (the
    Holm-adjusted p-value of its paired difference to the column's reference; NaN for the
    reference and untested cells), ``mark`` (:data:`MARKS`) and ``untested`` (why, or "").

    ``references``: {(dataset, bits): row label} (an ablation's default setting); a column
    not in it (or all, when None) has the row of highest mean as its reference (ties: the
    first label in sorted order)."""
    values = _cells(frame, cells)
    means = frame.groupby(CELL, sort=True)[cells.metric].mean()
    out = []
    for (dataset, bits), column in means.groupby(level=["dataset", "bits"], sort=True):
        labels = [m for m, _, _ in column.index]
        if references is not None and (dataset, int(bits)) in references:
            reference = references[(dataset, int(bits))]
            reference = reference if reference in labels else None  # no finished run: nothing to test against
        else:
            reference = max(labels, key=lambda m: (column[(m, dataset, bits)], -labels.index(m)))
        ref = values[(reference, dataset, int(bits))] if reference is not None else "its reference row has no finished run"
        others = [m for m in labels if m != reference]
        tested = [m for m in others if not isinstance(values[(m, dataset, int(bits))], str) and not isinstance(ref, str)]
        p_raw = [paired_difference(values[(m, dataset, int(bits))], ref, settings.confidence, settings.resamples,
                                   settings.seed).p_value for m in tested]
        adjusted = dict(zip(tested, holm(p_raw))) if tested else {}
        for m in labels:
            cell = values[(m, dataset, int(bits))]
            row: dict[str, Any] = {"method": m, "dataset": dataset, "bits": int(bits), "ci_low": np.nan,
                                   "ci_high": np.nan, "p_holm": np.nan, "mark": "untested", "untested": ""}
            if settings.intervals and not isinstance(cell, str):
                iv = interval(cell, settings.confidence, settings.resamples, settings.seed)
                row.update(ci_low=iv.low, ci_high=iv.high)
            if m == reference:
                row["mark"] = "reference"
            elif m in adjusted:
                row.update(p_holm=float(adjusted[m]), mark="tie" if adjusted[m] > settings.alpha else "differs")
            else:
                row["untested"] = cell if isinstance(cell, str) else (ref if reference is None
                                                                      else f"its reference row {reference}: {ref}")
            if isinstance(cell, str) and m == reference:
                row["untested"] = cell
            out.append(row)
    return pd.DataFrame(out, columns=[*CELL, "ci_low", "ci_high", "p_holm", "mark", "untested"])


# ----------------------------------------------------------------------------- hashbench compare

def _select(frame: pd.DataFrame, datasets: Sequence[str] | None, bits: Sequence[int] | None) -> pd.DataFrame:
    """The rows of the given datasets (matched against the protocol, its variant or the
    column label) and bit lengths; HashbenchError naming what exists when nothing matches."""
    keep = pd.Series(True, index=frame.index)
    if datasets:
        wanted = set(datasets)
        keep &= frame["dataset"].isin(wanted) | frame["protocol_variant"].isin(wanted) | frame["protocol"].isin(wanted)
        if not keep.any():
            raise HashbenchError(f"--datasets {','.join(datasets)}: no finished run; the folder has "
                                 f"{', '.join(sorted(set(frame['dataset'])))}")
    if bits:
        keep &= frame["bits"].isin([int(b) for b in bits])
        if not keep.any():
            raise HashbenchError(f"--bits {','.join(map(str, bits))}: no finished run there; the folder has "
                                 f"{', '.join(map(str, sorted(set(frame['bits']))))} bits")
    return frame[keep]


def _check_label(frame: pd.DataFrame, label: str) -> None:
    if label not in set(frame["method"]):
        import difflib

        near = difflib.get_close_matches(label, sorted(set(frame["method"])), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise HashbenchError(f"no finished run labelled '{label}'{hint}; labels are the table's rows, "
                             f"e.g. {', '.join(sorted(set(frame['method']))[:6])}")


def compare_pair(frame: pd.DataFrame, cells: QueryCells, a: str, b: str, settings: Settings,
                 datasets: Sequence[str] | None = None, bits: Sequence[int] | None = None) -> pd.DataFrame:
    """``a`` against ``b`` (row labels of the tables, e.g. ``nsh``, ``nsh[sorter=exact]``) in
    every (dataset, bits) cell where both have finished runs: seeds of each, means, the
    difference ``a - b`` with its interval, its p-value and Holm's adjustment over the cells
    compared, and ``significant`` (adjusted p <= alpha); a cell without per-query values is
    listed with ``untested`` saying why. HashbenchError when no cell has both."""
    if a == b:
        raise HashbenchError(f"compare needs two different labels, got '{a}' twice")
    frame = _select(frame, datasets, bits)
    for label in (a, b):
        _check_label(frame, label)
    both = frame[frame["method"].isin([a, b])]
    rows = []
    for (dataset, n_bits), group in both.groupby(["dataset", "bits"], sort=True):
        if set(group["method"]) != {a, b}:
            continue
        ga, gb = group[group["method"] == a], group[group["method"] == b]
        ca = cells.cell(ga, cell_name(a, dataset, int(n_bits)))
        cb = cells.cell(gb, cell_name(b, dataset, int(n_bits)))
        row: dict[str, Any] = {"dataset": dataset, "bits": int(n_bits), "n_a": len(ga), "n_b": len(gb),
                               "mean_a": float(ga[cells.metric].mean()), "mean_b": float(gb[cells.metric].mean()),
                               "difference": float(ga[cells.metric].mean() - gb[cells.metric].mean()),
                               "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "p_holm": np.nan,
                               "significant": None, "untested": ""}
        untested = next((c for c in (ca, cb) if isinstance(c, str)), None)
        if untested is not None:
            row["untested"] = untested
        else:
            diff = paired_difference(ca, cb, settings.confidence, settings.resamples, settings.seed)
            row.update(ci_low=diff.low, ci_high=diff.high, p_value=diff.p_value)
        rows.append(row)
    if not rows:
        raise HashbenchError(f"'{a}' and '{b}' share no (dataset, bits) cell with finished runs")
    out = pd.DataFrame(rows)
    tested = out["p_value"].notna()
    if tested.any():
        out.loc[tested, "p_holm"] = holm(out.loc[tested, "p_value"].to_numpy())
        out.loc[tested, "significant"] = out.loc[tested, "p_holm"] <= settings.alpha
    return out


def compare_all(frame: pd.DataFrame, cells: QueryCells, settings: Settings,
                datasets: Sequence[str] | None = None, bits: Sequence[int] | None = None) -> pd.DataFrame:
    """Every row of every (dataset, bits) cell ranked by mean (1 = best): its mean, interval,
    the Holm-adjusted p-value of its difference to the cell's best and its mark
    (:func:`annotate` with intervals)."""
    frame = _select(frame, datasets, bits)
    marks = annotate(frame, cells, Settings(settings.alpha, settings.confidence, settings.resamples,
                                            settings.seed, intervals=True))
    means = frame.groupby(CELL, sort=True).agg(n=(cells.metric, "count"), mean=(cells.metric, "mean")).reset_index()
    out = means.merge(marks, on=CELL)
    out["rank"] = out.groupby(["dataset", "bits"])["mean"].rank(ascending=False, method="min").astype(int)
    out = out.sort_values(["dataset", "bits", "rank", "method"], ignore_index=True)
    return out[["dataset", "bits", "rank", "method", "n", "mean", "ci_low", "ci_high", "p_holm", "mark", "untested"]]


# ----------------------------------------------------------------------------- rendering

def _p(value: float) -> str:
    if value != value:  # NaN
        return "–"
    return f"{value:.4f}" if value >= 0.001 else f"{value:.1e}"


def _interval(low: float, high: float) -> str:
    return "–" if low != low else f"[{low:.4f}, {high:.4f}]"


def _markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def pair_markdown(table: pd.DataFrame, a: str, b: str, metric: str, settings: Settings) -> str:
    """:func:`compare_pair`'s result as Markdown, with the procedure and the untested cells."""
    level = f"{settings.confidence:.0%}"
    verdict = {True: "differ", False: "not distinguishable", None: "not tested"}
    rows = [[r.dataset, str(r.bits), f"{r.n_a}/{r.n_b}", f"{r.mean_a:.4f}", f"{r.mean_b:.4f}",
             f"{r.difference:+.4f} {_interval(r.ci_low, r.ci_high)}", _p(r.p_value), _p(r.p_holm),
             verdict[r.significant if r.significant is None else bool(r.significant)]]
            for r in table.itertuples(index=False)]
    lines = [f"{a} vs {b}: {metric}, difference {a} - {b} per cell", ""]
    lines += _markdown(["dataset", "bits", "seeds", a, b, f"difference [{level} CI]", "p", "p (Holm)", "verdict"], rows)
    lines += ["", f"Paired over the same queries; {settings.describe().replace('within the column', 'over the cells compared')}."]
    untested = table[table["untested"] != ""]
    if len(untested):
        lines.append(f"Not tested ({len(untested)} cells): {'; '.join(sorted(set(untested['untested'])))}.")
    return "\n".join(lines) + "\n"


def all_markdown(table: pd.DataFrame, metric: str, settings: Settings) -> str:
    """:func:`compare_all`'s result as Markdown: per cell, its rows ranked."""
    words = {"reference": "best", "tie": "not distinguishable from the best", "differs": "below the best",
             "untested": "not tested"}
    level = f"{settings.confidence:.0%}"
    rows = [[r.dataset, str(r.bits), str(r.rank), r.method, str(r.n), f"{r.mean:.4f} {_interval(r.ci_low, r.ci_high)}",
             _p(r.p_holm), words[r.mark]] for r in table.itertuples(index=False)]
    lines = [f"Every row of every cell ranked by {metric}", ""]
    lines += _markdown(["dataset", "bits", "rank", "method", "seeds", f"mean [{level} CI]", "p vs best (Holm)",
                        "verdict"], rows)
    lines += ["", f"Each row against its cell's best: {settings.describe().replace('column', 'cell')}."]
    untested = table[table["untested"] != ""]
    if len(untested):
        lines.append(f"Not tested ({len(untested)} rows): {'; '.join(sorted(set(untested['untested'])))}.")
    return "\n".join(lines) + "\n"


def file_slug(label: str) -> str:
    """A row label as part of a file name: ``nsh[sorter=exact]`` -> ``nsh-sorter-exact``."""
    return re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-") or "x"


def write_comparison(table: pd.DataFrame, markdown: str, out_dir: Path, stem: str) -> list[Path]:
    """``<stem>.md`` and ``<stem>.csv`` under ``out_dir``, each written atomically."""
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.csv"]
    atomic_write_text(paths[0], markdown)
    atomic_write_text(paths[1], table.to_csv(index=False))
    return paths
