"""Plots from run records: precision-recall and precision@K curves, a metric against code
length, and the ablations. Written by ``hashbench plot`` under ``<results>/plots/``.

One figure per

- (dataset + input, bits): ``pr-<slug>-<bits>b`` (Hamming-ball precision against recall, one
  point per radius 0..bits) and ``pk-<slug>-<bits>b`` (precision@K against K, log scale); one
  line per method, the mean curve over its seeds;
- dataset + input: ``<metric>-vs-bits-<slug>``, one line per method, mean ± std over seeds (the
  numbers of ``hashbench table``);
- ablation: ``<table stem>`` (``ablation-<method>-<key>[-<key2>][-<metric>]``), the metric per
  setting, mean ± std over seeds, one series per (dataset, bits) column of the table;
- the results folder: ``cd-diagram[-<metric>]``, the critical-difference diagram (Demšar 2006)
  of the methods' baselines over the (dataset, bits) cells they share (:func:`rank_data`);
- (dataset, bits) tuned by ``hashbench tune`` (only when the folder has studies):
  ``tuning-<dataset slug>-<bits>b``, one line per study (method): the running best VALIDATION
  mAP against the trial number (:func:`tuning_data`, read from ``tuning/studies.db``).

``<slug>`` is the table's column label (``fashion-mnist (tf_efficientnet_lite0 pretrained
64px)``) in lower case with every run of other characters turned into ``-``.

Every figure is drawn from the records alone: runs are labelled and grouped by what their
record stored (:class:`hashbench.store.RunLabel`: the parameters that differed from the
defaults when the run was made, and the ablation it belongs to), never by comparing them with
today's defaults, and no table file is read back.

The curve and metric-vs-bits figures show each method's baseline: its runs with default
parameters (or, when all its runs share changes, e.g. every run made with ``--set
nsh.epochs=20``, the runs with only those); variants with more changes (``nsh[sorter=exact]``)
belong to the ablations. An ablation groups a method's runs by the parameters they change
beyond the baseline (their record's ``ablation``: ``sorter``, or ``positives,sorter`` for a
cross product), with the baseline runs in the same (dataset, bits) columns as one more setting,
marked "(default)".

matplotlib is imported lazily, and only its object-oriented API is used (``Figure`` with the Agg
canvas): no pyplot, no global backend state.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import HashbenchError
from .stats import DEFAULT_ALPHA, RankTest, friedman_nemenyi
from .store import INPUT_KEYS, METRIC_LABELS, RunRecord, as_record, atomic_write_bytes
from .tune import History
from .tables import (
    check_metric,
    column_label,
    labelled_rows,
    records_frame,
    summary_frame,
)

PLOT_FORMATS = ("png", "pdf", "svg")
DEFAULT_FORMATS = ("png", "pdf")
DPI = 120
SIZE = (6.4, 4.4)


def check_plot_formats(formats: Iterable[str]) -> list[str]:
    formats = list(formats)
    if not formats:
        raise HashbenchError(f"--format needs at least one of {', '.join(PLOT_FORMATS)}")
    for fmt in formats:
        if fmt not in PLOT_FORMATS:
            raise HashbenchError(f"unknown plot format '{fmt}' (formats: {', '.join(PLOT_FORMATS)})")
    return list(dict.fromkeys(formats))


def slug(text: str) -> str:
    """``fashion-mnist (tf_efficientnet_lite0 pretrained 64px)`` -> ``fashion-mnist-tf-efficientnet-lite0-pretrained-64px``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def slugs(labels: Iterable[str]) -> dict[str, str]:
    """A file-name slug per label; labels whose slugs collide get a short hash of the label."""
    labels = sorted(set(labels))
    plain = {label: slug(label) for label in labels}
    counts: dict[str, int] = {}
    for s in plain.values():
        counts[s] = counts.get(s, 0) + 1
    return {label: s if counts[s] == 1 else f"{s}-{hashlib.sha1(label.encode()).hexdigest()[:6]}"
            for label, s in plain.items()}


def base_method(label: str) -> str:
    """``nsh[sorter=exact]`` -> ``nsh``."""
    return label.partition("[")[0]


_ITEM_SPLIT = re.compile(r",(?=[A-Za-z_][A-Za-z0-9_]*=)")


def changed_items(label: str) -> frozenset[str]:
    """``nsh[epochs=20,sorter=exact]`` -> ``{"epochs=20", "sorter=exact"}``; ``nsh`` -> ``{}``."""
    base = base_method(label)
    if label == base or not label.endswith("]"):
        return frozenset()
    return frozenset(_ITEM_SPLIT.split(label[len(base) + 1:-1]))


def shown_methods(labels: Iterable[str]) -> list[str]:
    """The methods a comparison figure shows: per method, its baseline, the label whose changed
    parameters are the ones all its labels share (``nsh``, or ``nsh[epochs=20]`` when every nsh
    run predates a change of the default); variants with more changes belong to the ablations.
    A method with no such label shows every label."""
    groups: dict[str, list[str]] = {}
    for label in set(labels):
        groups.setdefault(base_method(label), []).append(label)
    shown = []
    for group in groups.values():
        items = {label: changed_items(label) for label in group}
        common = frozenset.intersection(*items.values())
        baseline = [label for label in group if items[label] == common]
        shown += baseline or group
    return sorted(shown)


def metric_label(metric: str, ks: Sequence[int] = ()) -> str:
    if metric == "map" and len(ks) == 1:
        return f"mAP@{ks[0]}"
    return METRIC_LABELS.get(metric, metric)


# ----------------------------------------------------------------------------- data

def done_records(records: Iterable[RunRecord | Mapping[str, Any]]) -> list[RunRecord]:
    """The finished records, as RunRecords (a record's JSON form is migrated: :func:`hashbench.store.as_record`)."""
    return [as_record(rec) for rec in records if rec.get("status") == "done"]


def mean_curves(records: Iterable[dict[str, Any]], kind: str) -> dict[tuple[str, int], dict[str, dict[str, Any]]]:
    """The curves to plot: ``{(dataset, bits): {method: curve}}``, each curve the mean over the
    seeds' records (finished records with curves only).

    ``kind`` "pr": curve ``{"recall", "precision", "radius", "n", "run_ids"}`` (means per radius);
    "pk": ``{"k", "precision", "n", "run_ids"}`` (means at the k values every seed has).
    ``dataset`` and ``method`` are the table labels (:func:`hashbench.tables.labelled_rows`).
    """
    if kind not in ("pr", "pk"):
        raise ValueError(kind)
    groups: dict[tuple[str, int, str], list[RunRecord]] = {}
    done = done_records(records)
    for rec, row in zip(done, labelled_rows(done)):
        curves = rec.curves or {}
        if ("pr_curve" if kind == "pr" else "precision_at_k") not in curves:
            continue
        groups.setdefault((row["dataset"], row["bits"], row["method"]), []).append(rec)
    out: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for (dataset, bits, method), recs in sorted(groups.items()):
        recs = sorted(recs, key=lambda r: r["run_id"])
        ids = [r["run_id"] for r in recs]
        if kind == "pr":
            curves = [r["curves"]["pr_curve"] for r in recs]
            length = min(len(c["radius"]) for c in curves)
            curve = {
                "radius": [int(r) for r in curves[0]["radius"][:length]],
                "precision": np.mean([c["precision"][:length] for c in curves], axis=0).tolist(),
                "recall": np.mean([c["recall"][:length] for c in curves], axis=0).tolist(),
            }
        else:
            curves = [r["curves"]["precision_at_k"] for r in recs]
            common = set(curves[0]["k"]).intersection(*(c["k"] for c in curves[1:]))
            ks = sorted(common)
            values = [[dict(zip(c["k"], c["precision"]))[k] for k in ks] for c in curves]
            curve = {"k": ks, "precision": np.mean(values, axis=0).tolist() if ks else []}
        curve.update(n=len(recs), run_ids=ids)
        out.setdefault((dataset, bits), {})[method] = curve
    return out


def metric_by_bits(records: Iterable[dict[str, Any]], metric: str = "map") -> dict[str, pd.DataFrame]:
    """Per dataset label: the measured rows of :func:`hashbench.tables.summary_frame` (method,
    bits, n, mean, std: the table's numbers), sorted by method and bits."""
    check_metric(metric)
    frame = records_frame(records)
    summary = summary_frame(frame.astype({metric: float}), metric, published=False)
    out = {}
    for dataset, rows in summary.groupby("dataset"):
        out[str(dataset)] = rows[["method", "bits", "n", "mean", "std"]].sort_values(
            ["method", "bits"], ignore_index=True)
    return out


@dataclass
class AblationData:
    """An ablation's numbers: rows (settings) x columns (dataset, bits)."""

    name: str                     # figure stem: ablation-<method>-<key>[-<key2>][-<metric>]
    method: str
    keys: list[str]
    metric: str
    settings: list[str]           # row labels ("sorter=exact", "positives=1, sorter=exact")
    values: dict[str, dict[str, Any]]  # setting -> {key: value}
    columns: list[tuple[str, int]]
    cells: dict[tuple[str, str, int], dict[str, Any]]  # (setting, dataset, bits) -> n, failed, mean, std, best, run_ids
    source: str                   # where the numbers come from: "records"
    note: str = ""
    defaults: set[str] = field(default_factory=set)  # the baseline's settings (the defaults when it ran)
    ks: list[int] = field(default_factory=list)  # the K of mAP@K of its columns, when known

    def numeric(self) -> bool:
        """One key, every value a number: drawn as a line against the value."""
        return len(self.keys) == 1 and all(
            isinstance(v[self.keys[0]], (int, float)) and not isinstance(v[self.keys[0]], bool)
            for v in self.values.values())


def _changes(rec: RunRecord) -> set[tuple[str, str]]:
    """The record's stored changes as (parameter, JSON value) items."""
    return {(k, json.dumps(v, sort_keys=True)) for k, v in rec.label.changed.items()}


def ablations_from_records(records: Iterable[RunRecord | Mapping[str, Any]], metric: str = "map",
                           covered: Iterable[tuple[str, str]] = ()) -> list[AblationData]:
    """The ablations the finished records tell of, from what each stored.

    Per method, its baseline runs are those whose stored changes are the ones all its finished
    runs share (usually none: the runs at the defaults of their day). Every other run belongs
    to the ablation of the parameters it changes beyond those (its record's ``ablation``, less
    the shared ones); an ablation of keys K holds the runs whose extra changes are within K,
    and the baseline runs in the same (dataset, bits) columns as one more setting. Ablations
    with a key in ``covered`` ((method, key) pairs) are left out."""
    check_metric(metric)
    covered = set(covered)
    by_method: dict[str, list[RunRecord]] = {}
    for rec in done_records(records):
        if rec.label.tag is None:  # a tagged run (method[tuned]) is its own row, in no ablation
            by_method.setdefault(rec.label.method, []).append(rec)
    out = []
    for method, recs in sorted(by_method.items()):
        changes = [_changes(r) for r in recs]
        common = set.intersection(*changes)
        shared = {k for k, _ in common}
        extra = [tuple(k for k in r.label.ablation_keys if k not in shared) for r in recs]
        base = [r for r, keys in zip(recs, extra) if not keys]
        for keys in sorted({keys for keys in extra if keys}):
            if any((method, k) in covered for k in keys):
                continue
            members = [r for r, mine in zip(recs, extra) if mine and set(mine) <= set(keys)]
            out += _ablation_of(method, list(keys), members, base, metric)
    return out


def _ablation_of(method: str, keys: list[str], recs: list[RunRecord], base: list[RunRecord],
                 metric: str) -> list[AblationData]:
    def column(rec: RunRecord, row: dict[str, Any]) -> tuple[str, int]:
        # a varied input of a deep method is in the row label, so its runs share columns
        return column_label(row["protocol_variant"], rec.config, any(k in INPUT_KEYS for k in keys)), row["bits"]

    rows = {id(r): row for r, row in zip(recs + base, labelled_rows(recs + base))}
    columns = sorted({column(r, rows[id(r)]) for r in recs})
    base = [r for r in base if column(r, rows[id(r)]) in columns]
    by_value: dict[str, tuple[tuple[Any, ...], list[RunRecord]]] = {}
    for rec in recs + base:
        params = rec.config.get("method_params", {})
        value = tuple(params.get(k) for k in keys)  # None: a record made before the parameter existed
        by_value.setdefault(json.dumps(value, sort_keys=True), (value, []))[1].append(rec)
    if len(by_value) < 2:
        return []
    baseline = {id(r) for r in base}
    numeric = all(_sort_key(v)[0] == 0 for value, _ in by_value.values() for v in value)

    def order(item: tuple[tuple[Any, ...], list[RunRecord]]) -> tuple[bool, list[tuple[int, Any]]]:
        """Numbers in ascending order; other settings after the baseline's, sorted."""
        first = numeric or any(id(rec) in baseline for rec in item[1])
        return not first, [_sort_key(v) for v in item[0]]

    settings, values, cells, defaults = [], {}, {}, set()
    for value, group in sorted(by_value.values(), key=order):
        label = ", ".join(f"{k}={_show(v)}" for k, v in zip(keys, value))
        settings.append(label)
        values[label] = dict(zip(keys, value))
        if any(id(rec) in baseline for rec in group):
            defaults.add(label)
        by_column: dict[tuple[str, int], list[float]] = {}
        run_ids: dict[tuple[str, int], list[str]] = {}
        for rec in group:
            key = column(rec, rows[id(rec)])
            by_column.setdefault(key, []).append(float(rec.metrics[metric]))
            run_ids.setdefault(key, []).append(rec.run_id)
        for (dataset, bits), vals in by_column.items():
            cells[label, dataset, bits] = {
                "n": len(vals), "failed": 0, "mean": float(np.mean(vals)),
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan"), "best": False,
                "run_ids": run_ids[dataset, bits]}
    for dataset, bits in columns:
        here = [cells[s, dataset, bits]["mean"] for s in settings if (s, dataset, bits) in cells]
        for s in settings:
            cell = cells.get((s, dataset, bits))
            if cell is not None and cell["mean"] >= max(here) - 1e-12:
                cell["best"] = True
    name = "-".join(["ablation", method, *keys]) + ("" if metric == "map" else f"-{metric}")
    note = f"{method} runs that differ from its baseline runs in {', '.join(keys)} only, grouped from the records."
    return [AblationData(name, method, keys, metric, settings, values, columns, cells, "records", note, defaults)]


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, json.dumps(value, sort_keys=True))


def ablation_data(records: Iterable[RunRecord | Mapping[str, Any]], metric: str = "map") -> list[AblationData]:
    """Every ablation to draw: :func:`ablations_from_records` (no table file is read)."""
    return ablations_from_records(records, metric)


# ----------------------------------------------------------------------------- critical difference

MIN_RANK_METHODS, MIN_RANK_CELLS = 3, 2


def baseline_scores(records: Iterable[RunRecord | Mapping[str, Any]], metric: str = "map") -> pd.DataFrame:
    """Cells x methods: each method's baseline mean of ``metric`` over seeds (the table's
    number), NaN where it has none. Rows: the (dataset, bits) cells, sorted; columns: per
    method its one baseline label (:func:`shown_methods`; a method without a single baseline
    label is left out), sorted. Ablation variants never enter."""
    check_metric(metric)
    frame = records_frame(done_records(records))
    if frame.empty:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=["dataset", "bits"]), dtype=float)
    shown = shown_methods(frame["method"])
    single = [label for label in shown if sum(base_method(other) == base_method(label) for other in shown) == 1]
    rows = frame[frame["method"].isin(single)].astype({metric: float})
    means = rows.groupby(["dataset", "bits", "method"])[metric].mean()
    return means.unstack("method").sort_index().sort_index(axis=1)


def rank_selection(scores: pd.DataFrame) -> tuple[list[str], list[tuple[str, int]]] | None:
    """The methods and cells to rank from :func:`baseline_scores`: the method set S and the
    cells holding all of S that maximise |S| x (number of those cells), with |S| >= 3 and at
    least 2 cells (ties: more cells, then the first set in sorted order); None when no set
    qualifies. The sets tried are the cells' own method sets and all their intersections,
    so the maximum is exact (an optimal S's cells' common set contains S and covers them)."""
    present = {cell: frozenset(scores.columns[scores.loc[cell].notna()]) for cell in scores.index}
    candidates = {s for s in present.values() if len(s) >= MIN_RANK_METHODS}
    fresh = set(candidates)
    while fresh:
        fresh = {a & b for a in fresh for b in candidates
                 if len(a & b) >= MIN_RANK_METHODS} - candidates
        candidates |= fresh
    best: tuple[tuple[int, int], frozenset[str], list[Any]] | None = None
    for candidate in sorted(candidates, key=sorted):
        covered = [cell for cell in scores.index if candidate <= present[cell]]
        if len(covered) < MIN_RANK_CELLS:
            continue
        key = (len(candidate) * len(covered), len(covered))
        if best is None or key > best[0]:
            best = (key, candidate, covered)
    if best is None:
        return None
    return sorted(best[1]), [(str(d), int(b)) for d, b in best[2]]


@dataclass
class RankData:
    """A critical-difference diagram: the rank test (:func:`hashbench.stats.friedman_nemenyi`)
    of ``methods`` over ``cells``; ``scores`` the ranked means (cells x methods);
    ``left_out_methods`` and ``left_out_cells`` the folder's baselines and cells not ranked."""

    metric: str
    test: RankTest
    methods: list[str]
    cells: list[tuple[str, int]]
    scores: pd.DataFrame
    left_out_methods: list[str] = field(default_factory=list)
    left_out_cells: list[tuple[str, int]] = field(default_factory=list)
    ks: list[int] = field(default_factory=list)  # the K of mAP@K of its cells, when known


def cell_label(dataset: str, bits: int) -> str:
    return f"{dataset} {bits}b"


def rank_data(records: Iterable[RunRecord | Mapping[str, Any]], metric: str = "map",
              alpha: float = DEFAULT_ALPHA) -> RankData | str:
    """The critical-difference diagram of the records' baselines (:func:`baseline_scores`,
    :func:`rank_selection`, then Friedman's test and Nemenyi's critical difference at
    ``alpha``), or a one-line reason why there is none."""
    scores = baseline_scores(records, metric)
    chosen = rank_selection(scores)
    if chosen is None:
        return (f"No critical-difference diagram: it needs at least {MIN_RANK_METHODS} methods sharing at least "
                f"{MIN_RANK_CELLS} (dataset, bits) cells, and the folder's baselines ({scores.shape[1]} methods "
                f"over {scores.shape[0]} cells) have none.")
    methods, cells = chosen
    used = scores.loc[cells, methods]
    test = friedman_nemenyi(used.to_numpy(), methods, [cell_label(d, b) for d, b in cells], alpha)
    return RankData(metric, test, methods, cells, used,
                    [m for m in scores.columns if m not in methods],
                    [(str(d), int(b)) for d, b in scores.index if (str(d), int(b)) not in cells])


def _number(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def rank_caption(data: RankData) -> str:
    """The diagram's caption: the test, its numbers, the cells used and what was left out."""
    test, k, n = data.test, len(data.methods), len(data.cells)
    by_dataset: dict[str, list[int]] = {}
    for dataset, bits in data.cells:
        by_dataset.setdefault(dataset, []).append(bits)
    cells = "; ".join(f"{d} at {', '.join(map(str, b))} bits" for d, b in by_dataset.items())
    statistic = ("undefined (every method ties in every cell)" if math.isnan(test.statistic)
                 else f"{test.statistic:.2f}")
    parts = [(f"Average rank (1 = best) of each method's {metric_label(data.metric, data.ks)} (its mean over "
              f"seeds) over N = {n} cells, k = {k} methods. Friedman chi-square = {statistic} "
              f"({k - 1} degrees of freedom), p = {_number(test.p_value)}; Nemenyi's critical difference "
              f"CD = {test.critical_difference:.3f} at alpha = {test.alpha:g}: a bar joins methods whose "
              "average ranks differ by less (not distinguishable).")]
    if test.p_value > test.alpha:
        parts.append("Friedman's test does not reject equal ranks, so no pair is shown to differ.")
    parts.append(f"Cells: {cells}.")
    if data.left_out_methods:
        parts.append(f"Left out: {', '.join(data.left_out_methods)} (not run in every one of these cells).")
    if data.left_out_cells:
        parts.append(f"Cells left out (without all {k} methods): "
                     f"{', '.join(cell_label(d, b) for d, b in data.left_out_cells)}.")
    return " ".join(parts)


# ----------------------------------------------------------------------------- tuning

@dataclass
class TuningLine(History):
    """One study's line in a tuning figure: its :class:`hashbench.tune.History` and the
    legend's ``label`` (the method, with the study's hash when a cell has two of it)."""

    label: str = ""

    @property
    def best(self) -> list[float | None]:
        """The running best of the complete trials' scores (None before the first)."""
        return self.running_best()


def tuning_data(histories: Iterable[Any]) -> dict[tuple[str, int], list[TuningLine]]:
    """The tuning figures' lines from :func:`hashbench.tune.histories` (trials in their order,
    the running best :meth:`hashbench.tune.History.running_best`): ``{(dataset, bits): [line,
    ...]}`` sorted, lines by label; a line is labelled by its method, with the study's hash
    appended when several studies of that method share the cell."""
    cells: dict[tuple[str, int], list[Any]] = {}
    for history in histories:
        cells.setdefault((history.dataset, int(history.bits)), []).append(history)
    out = {}
    for cell, group in sorted(cells.items()):
        methods = [h.method for h in group]
        lines = []
        for h in group:
            label = h.method if methods.count(h.method) == 1 else f"{h.method} ({h.study.rpartition('-')[2]})"
            lines.append(TuningLine(**vars(h), label=label))
        out[cell] = sorted(lines, key=lambda line: line.label)
    return out


def tuning_caption(lines: Sequence[TuningLine]) -> str:
    """What a tuning figure plots, on which split, and each line's trials by state."""
    counts = "; ".join(f"{line.label} {line.count('complete')} / {line.count('pruned')} / {line.count('fail')}"
                       + (f" ({line.count('running') + line.count('waiting')} unfinished)"
                          if line.count("running") + line.count("waiting") else "")
                       for line in lines)
    return ("Running best validation mAP (step line) against the trial number, one line per method's study; dots: "
            "the complete trials' scores; x: pruned trials at the last validation mAP they reported (on the "
            "bottom axis when none); v on the bottom axis: failed trials. The score is the mAP of the VALIDATION "
            "split (val codes ranked against train codes), not the test protocol of the tables. Legend: trials "
            f"counted by the budget (complete + pruned). Trials complete / pruned / failed: {counts}.")


def tuning_plots(results_dir: str | Path) -> list[Plot]:
    """One figure per (dataset, bits) of the folder's studies (:func:`hashbench.tune.histories`;
    none without a study storage, a one-line HashbenchError when Optuna is missing)."""
    from .tune import histories

    data = tuning_data(histories(results_dir))
    names = slugs(dataset for dataset, _ in data)
    return [Plot(f"tuning-{names[dataset]}-{bits}b", "tuning", f"Tuning history: {dataset}, {bits} bits", dataset,
                 bits, lines, tuning_caption(lines)) for (dataset, bits), lines in data.items()]


# ----------------------------------------------------------------------------- figures

@dataclass
class Plot:
    """One figure: what it shows and the data it is drawn from."""

    stem: str
    kind: str                  # "pr", "pk", "bits", "ablation", "cd", "tuning"
    title: str
    dataset: str | None = None
    bits: int | None = None
    data: Any = None
    caption: str = ""
    files: list[Path] = field(default_factory=list)


def _colors(methods: Iterable[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    methods = sorted(set(methods))
    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


MARKERS = "osD^vPX*h<>p"


def plan_plots(records: Sequence[dict[str, Any]], results_dir: str | Path, metric: str = "map",
               alpha: float = DEFAULT_ALPHA) -> list[Plot]:
    """The figures for these records, in report order: the critical-difference diagram (when
    :func:`rank_data` finds methods and cells to rank; Nemenyi at ``alpha``); per dataset,
    metric against bits, then per bits PR and P@K; then the ablations; then the tuning histories
    of ``results_dir``'s studies (:func:`tuning_plots`; none when it has none)."""
    check_metric(metric)
    done = done_records(records)
    if not done:
        raise HashbenchError(f"no finished runs in {Path(results_dir) / 'runs'} (run `hashbench run` first)")
    pr, pk = mean_curves(done, "pr"), mean_curves(done, "pk")
    by_bits = metric_by_bits(done, metric)
    frame = records_frame(done)
    datasets = sorted(set(frame["dataset"]))
    names = slugs(datasets)
    ks = {d: sorted({int(k) for k in frame.loc[frame["dataset"] == d, "topk"].dropna()}) for d in datasets}
    plots = []
    ranked = rank_data(done, metric, alpha)
    if isinstance(ranked, RankData):
        ranked.ks = sorted({k for dataset, _ in ranked.cells for k in ks.get(dataset, [])})
        plots.append(Plot("cd-diagram" + ("" if metric == "map" else f"-{metric}"), "cd",
                          f"Critical difference: {metric_label(metric, ranked.ks)}, {len(ranked.methods)} methods "
                          f"over {len(ranked.cells)} cells", data=ranked, caption=rank_caption(ranked)))
    for dataset in datasets:
        if dataset in by_bits:
            plots.append(Plot(f"{metric}-vs-bits-{names[dataset]}", "bits",
                              f"{metric_label(metric, ks[dataset])} against code length: {dataset}", dataset,
                              data={"table": by_bits[dataset], "metric": metric, "ks": ks[dataset]},
                              caption=f"{metric_label(metric, ks[dataset])}, mean ± std over seeds (error bars), "
                                      f"the numbers of the table."))
        for bits in sorted({b for d, b in (*pr, *pk) if d == dataset}):
            if (dataset, bits) in pr:
                plots.append(Plot(f"pr-{names[dataset]}-{bits}b", "pr",
                                  f"Precision–recall: {dataset}, {bits} bits", dataset, bits, pr[dataset, bits],
                                  caption="Hamming-ball retrieval at radius 0..bits, mean over seeds."))
            if (dataset, bits) in pk:
                plots.append(Plot(f"pk-{names[dataset]}-{bits}b", "pk",
                                  f"Precision@K: {dataset}, {bits} bits", dataset, bits, pk[dataset, bits],
                                  caption="Precision of the top K of the Hamming ranking, mean over seeds."))
    for ablation in ablation_data(done, metric):
        ablation.ks = sorted({k for dataset, _ in ablation.columns for k in ks.get(dataset, [])})
        title = f"Ablation of {ablation.method}: {', '.join(ablation.keys)}"
        if len(ablation.columns) == 1:
            title += f" ({ablation.columns[0][0]}, {ablation.columns[0][1]} bits)"
        plots.append(Plot(ablation.name, "ablation", title, data=ablation,
                          caption=f"{metric_label(metric, ablation.ks)} per setting, mean ± std over seeds. "
                                  f"{ablation.note}".strip()))
    return plots + tuning_plots(results_dir)


def _title(ax, text: str) -> None:
    ax.set_title("\n".join(textwrap.wrap(text, 64)), fontsize=10)


def _draw_curves(ax, plot: Plot, colors: dict[str, Any]) -> None:
    curves = plot.data
    for i, method in enumerate(shown_methods(curves)):
        curve = curves[method]
        label = f"{method} ({curve['n']} seed{'s' if curve['n'] != 1 else ''})"
        style = {"color": colors.get(method), "marker": MARKERS[i % len(MARKERS)], "markersize": 3.5,
                 "linewidth": 1.4, "label": label}
        if plot.kind == "pr":
            ax.plot(curve["recall"], curve["precision"], **style)
        else:
            ax.plot(curve["k"], curve["precision"], **style)
    if plot.kind == "pr":
        ax.set_xlabel(f"recall (fraction of relevant items within Hamming radius r = 0..{plot.bits})")
        ax.set_ylabel("precision (fraction relevant within radius r)")
        ax.set_xlim(-0.02, 1.02)
    else:
        ax.set_xscale("log")
        ax.set_xlabel("K (items retrieved, log scale)")
        ax.set_ylabel("precision@K (fraction relevant)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small", loc="best")


def _draw_bits(ax, plot: Plot, colors: dict[str, Any]) -> None:
    table: pd.DataFrame = plot.data["table"]
    methods = shown_methods(table["method"])
    for i, method in enumerate(methods):
        rows = table[table["method"] == method].sort_values("bits")
        std = rows["std"].fillna(0.0).to_numpy()
        n = int(rows["n"].max())
        ax.errorbar(rows["bits"], rows["mean"], yerr=std, color=colors.get(method), marker=MARKERS[i % len(MARKERS)],
                    markersize=4, linewidth=1.4, capsize=3, label=f"{method} ({n} seed{'s' if n != 1 else ''})")
    bits = sorted(set(table["bits"]))
    ax.set_xscale("log", base=2)
    ax.set_xticks(bits, [str(b) for b in bits])
    ax.minorticks_off()
    ax.set_xlabel("code length (bits)")
    ax.set_ylabel(f"{metric_label(plot.data['metric'], plot.data['ks'])} (mean ± std over seeds)")
    ax.legend(fontsize="small", loc="best")


def _draw_ablation(ax, plot: Plot) -> None:
    from matplotlib import colormaps

    data: AblationData = plot.data
    cmap = colormaps["tab10"]
    many = len(data.columns) > 1
    ylabel = f"{metric_label(data.metric, data.ks)} (mean ± std over seeds)"
    if data.numeric():
        key = data.keys[0]
        for j, (dataset, bits) in enumerate(data.columns):
            pts = [(data.values[s][key], data.cells[s, dataset, bits]) for s in data.settings
                   if (s, dataset, bits) in data.cells and data.cells[s, dataset, bits]["n"]]
            if not pts:
                continue
            x = [p[0] for p in pts]
            ax.errorbar(x, [p[1]["mean"] for p in pts], yerr=[0.0 if math.isnan(p[1]["std"]) else p[1]["std"]
                                                               for p in pts],
                        marker=MARKERS[j % len(MARKERS)], color=cmap(j % 10), capsize=3, linewidth=1.4,
                        label=f"{dataset}, {bits} bits")
        xs = sorted({v[key] for v in data.values.values()})
        wide = xs[0] > 0 and xs[-1] / xs[0] >= 10  # e.g. learning rates: spread evenly on a log axis
        if wide:
            ax.set_xscale("log")
        ax.set_xticks(xs, [_show(v) + (" (default)" if f"{key}={_show(v)}" in data.defaults else "") for v in xs],
                      fontsize="small")
        ax.minorticks_off()
        ax.set_xlabel(key + (" (log scale)" if wide else ""))
        if many:
            ax.legend(fontsize="small", loc="best")
    else:
        width = 0.8 / max(len(data.columns), 1)
        positions = np.arange(len(data.settings))
        for j, (dataset, bits) in enumerate(data.columns):
            cells = [data.cells.get((s, dataset, bits)) for s in data.settings]
            means = [c["mean"] if c and c["n"] else 0.0 for c in cells]
            errs = [c["std"] if c and c["n"] and not math.isnan(c["std"]) else 0.0 for c in cells]
            x = positions - 0.4 + width * (j + 0.5)
            bars = ax.bar(x, means, width * 0.9, yerr=errs, capsize=3, color=cmap(j % 10),
                          label=f"{dataset}, {bits} bits", edgecolor="black", linewidth=0.5)
            labels = [f"{c['mean']:.3f}" if c and c["n"] else "failed" if c and c["failed"] else "–" for c in cells]
            ax.bar_label(bars, labels, padding=2, fontsize=7, rotation=90 if many else 0)
        ticks = [s + ("\n(default)" if s in data.defaults else "") for s in data.settings]
        ax.set_xticks(positions, ticks, fontsize="small", rotation=20 if len(data.settings) > 4 else 0,
                      ha="right" if len(data.settings) > 4 else "center")
        ax.set_xlabel(", ".join(data.keys))
        top = max([c["mean"] + (0 if math.isnan(c["std"]) else c["std"])
                   for c in data.cells.values() if c["n"]] or [1.0])
        ax.set_ylim(0, min(1.0, top * 1.15) if top <= 1 else top * 1.15)
        if many:
            ax.legend(fontsize="small", loc="lower right")
    ax.set_ylabel(ylabel)


CD_ROW_INCHES = 0.24        # one label row of the diagram
CD_CHAR_INCHES = 0.065      # one character of its labels (8.5 pt), for the side margins


def cd_layout(data: RankData) -> dict[str, Any]:
    """Where the diagram's parts go, in data units (x: average rank; y: label rows, the rank
    axis at 0, up positive), and the figure size (inches) that gives each row
    :data:`CD_ROW_INCHES` and the labels room on both sides."""
    test = data.test
    names = list(test.average_ranks)
    k = len(names)
    half = (k + 1) // 2
    labels = {m: f"{m} ({test.average_ranks[m]:.2f})" for m in names}
    label_in = 0.3 + CD_CHAR_INCHES * max(len(text) for text in labels.values())
    width = SIZE[0]
    span_in = max(width - 2 * label_in - 0.3, 2.0)
    right = max(k, 1 + test.critical_difference)
    margin = label_in * (right - 1) / span_in
    groups = test.groups()
    first_row = -(0.9 + 0.45 * len(groups))
    rows = {m: first_row - i for i, m in enumerate(names[:half])}
    rows |= {m: first_row - i for i, m in enumerate(reversed(names[half:]))}
    bottom, top = first_row - half + 0.4, 2.6
    height = (top - bottom) * CD_ROW_INCHES + 0.6  # and the title
    return {"labels": labels, "left": names[:half], "rows": rows, "groups": groups,
            "xlim": (1 - margin, right + margin), "ylim": (bottom, top), "size": (width, height), "k": k}


def _draw_cd(ax, plot: Plot) -> None:
    """The classic critical-difference diagram: the rank axis 1..k (best on the left) on top,
    the CD bar above it, each method's name joined by a line to its average rank (the better
    half on the left, the others on the right), a thick bar under each group of methods not
    distinguishable (:meth:`hashbench.stats.RankTest.groups`)."""
    data: RankData = plot.data
    layout = cd_layout(data)
    ranks = data.test.average_ranks
    k = layout["k"]
    ax.set_axis_off()
    ax.set_xlim(*layout["xlim"])
    ax.set_ylim(*layout["ylim"])
    line = {"color": "black", "linewidth": 1.0, "solid_capstyle": "butt"}
    ax.plot([1, k], [0, 0], **line)
    for tick in np.arange(1, k + 0.01, 0.5):
        whole = float(tick).is_integer()
        ax.plot([tick, tick], [0, 0.35 if whole else 0.2], **line)
        if whole:
            ax.text(tick, 0.5, str(int(tick)), ha="center", va="bottom", fontsize=9)
    cd = data.test.critical_difference
    ax.plot([1, 1 + cd], [1.9, 1.9], **{**line, "linewidth": 1.6})
    for end in (1, 1 + cd):
        ax.plot([end, end], [1.75, 2.05], **line)
    ax.text(1 + cd / 2, 2.1, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    pad = 0.04 * (layout["xlim"][1] - layout["xlim"][0]) / 2
    for method, y in layout["rows"].items():
        x = ranks[method]
        left = method in layout["left"]
        end = 1 - pad if left else k + pad
        ax.plot([x, x, end], [0, y, y], color="black", linewidth=0.8)
        ax.text(end - pad / 2 if left else end + pad / 2, y, layout["labels"][method], ha="right" if left else "left",
                va="center", fontsize=8.5)
    for j, group in enumerate(layout["groups"]):
        y = -0.55 - 0.45 * j
        ax.plot([ranks[group[0]] - 0.03, ranks[group[-1]] + 0.03], [y, y], color="black", linewidth=4,
                solid_capstyle="round")


def _draw_tuning(ax, plot: Plot, colors: dict[str, Any]) -> None:
    """Per line: the running best as a step line, complete trials as dots, pruned ones as x
    (at their last reported score, else on the bottom axis), failed ones as v on the bottom axis."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    lines: list[TuningLine] = plot.data
    cmap = colormaps["tab10"]
    axis = ax.get_xaxis_transform()  # x: trial number, y: fraction of the axes' height
    for i, line in enumerate(lines):
        color = (colors.get(line.method) or colors.get(f"{line.method}[tuned]")) if line.label == line.method else None
        color = color or cmap(i % 10)
        best = [np.nan if b is None else b for b in line.best]
        ax.step(line.numbers, best, where="post", color=color, linewidth=1.6,
                label=f"{line.label} ({line.counted} trial{'s' if line.counted != 1 else ''} counted)")
        trials = list(zip(line.numbers, line.states, line.values))
        complete = [(n, v) for n, s, v in trials if s == "complete" and v is not None]
        if complete:
            ax.plot(*zip(*complete), linestyle="none", marker="o", markersize=3.5, color=color, alpha=0.7)
        scored = [(n, v) for n, s, v in trials if s == "pruned" and v is not None]
        if scored:
            ax.plot(*zip(*scored), linestyle="none", marker="x", markersize=5, color=color, alpha=0.5)
        unscored = [n for n, s, v in trials if s == "pruned" and v is None]
        if unscored:
            ax.plot(unscored, [0.02] * len(unscored), transform=axis, linestyle="none", marker="x", markersize=5,
                    color=color, alpha=0.5, clip_on=False)
        failed = [n for n, s in zip(line.numbers, line.states) if s == "fail"]
        if failed:
            ax.plot(failed, [0.02] * len(failed), transform=axis, linestyle="none", marker="v", markersize=5,
                    markerfacecolor="none", color=color, alpha=0.7, clip_on=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel("validation mAP (val codes against train codes)")
    present = {state for line in lines for state in line.states}
    keys = [Line2D([], [], linestyle="none", marker=m, color="grey", markerfacecolor=f, label=f"{state} trial")
            for m, f, state in (("o", "grey", "complete"), ("x", "grey", "pruned"), ("v", "none", "fail"))
            if state in present]
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + keys, fontsize="small", loc="lower right")


def render(plot: Plot, out_dir: str | Path, formats: Sequence[str], colors: dict[str, Any]) -> list[Path]:
    """Draw ``plot`` and save ``<out_dir>/<stem>.<fmt>`` per format; returns the paths."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=cd_layout(plot.data)["size"] if plot.kind == "cd" else SIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    if plot.kind == "cd":
        _draw_cd(ax, plot)
    elif plot.kind in ("pr", "pk"):
        _draw_curves(ax, plot, colors)
    elif plot.kind == "bits":
        _draw_bits(ax, plot, colors)
    elif plot.kind == "tuning":
        _draw_tuning(ax, plot, colors)
    else:
        _draw_ablation(ax, plot)
    _title(ax, plot.title)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{plot.stem}.{fmt}"
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Date": None} if fmt == "svg" else None
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, metadata=metadata)
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    plot.files = paths
    return paths


def make_plots(records: Sequence[dict[str, Any]], results_dir: str | Path, formats: Sequence[str] = DEFAULT_FORMATS,
               metric: str = "map", alpha: float = DEFAULT_ALPHA) -> list[Plot]:
    """Plan and draw every figure under ``<results_dir>/plots``; returns the plots (with their files)."""
    formats = check_plot_formats(formats)
    plots = plan_plots(records, results_dir, metric, alpha)
    colors = _colors(row["method"] for row in labelled_rows(done_records(records)))
    for plot in plots:
        render(plot, Path(results_dir) / "plots", formats, colors)
    return plots


def write_plots(results_dir: str | Path, formats: Sequence[str] = DEFAULT_FORMATS, metric: str = "map",
                alpha: float = DEFAULT_ALPHA) -> list[Path]:
    """``hashbench plot``: every figure of the records under ``results_dir`` (the
    critical-difference diagram at ``alpha``); returns the files written."""
    from .store import RunStore

    formats = check_plot_formats(formats)
    check_metric(metric)
    plots = make_plots(RunStore(results_dir).existing_records(), results_dir, formats, metric, alpha)
    return [p for plot in plots for p in plot.files]
