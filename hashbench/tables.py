"""Comparison tables from run records: methods x (dataset, bits), mean +- std over seeds.

Published numbers (a protocol's ``published``) go in a separate, labelled column block and are
never mixed with measured ones. Written as Markdown, CSV (long format) and LaTeX.

A run's row and column come from what its record stored (:class:`hashbench.store.RunLabel`:
the parameters that differed from the defaults when it ran), never from today's defaults, so
changing a default relabels no old record. Runs that share a label but not their parameters (a
default changed between them) are told apart by the parameters in which they differ.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import HashbenchError
from .registry import registry
from .significance import QueryCells, Settings, annotate
from .store import (
    INPUT_KEYS,
    METRICS,
    RunRecord,
    RunStore,
    as_record,
    atomic_write_text,
    param_label,
)

FORMATS = ("md", "csv", "latex")
SUFFIX = {"md": "md", "csv": "csv", "latex": "tex"}
MEASURED, PUBLISHED = "measured", "published"


def input_label(config: Mapping[str, Any]) -> str:
    """What a run's method saw, in a few words: the backbone behind a shallow method's features
    or inside a deep method ("tf_efficientnet_lite0 pretrained 64px", "pixels"); "" when the
    protocol itself gives feature vectors. Runs on the same input share table columns."""
    params = config.get("method_params", {})
    if not config.get("features") and "backbone" in params:
        label = features_label({k: params.get(k) for k in ("backbone", "pretrained", "input_size")})
        return label + (" fine-tuned" if params.get("frozen") is False else "")
    return features_label(config.get("features", {}))


def features_label(features: Mapping[str, Any]) -> str:
    """A FeatureSpec in a few words ("" for none)."""
    if not features:
        return ""
    if features.get("backbone") is None:
        return "pixels"
    pretrained = features.get("pretrained")
    weights = "pretrained" if pretrained is True else "random" if pretrained is False else "weights file"
    size = features.get("input_size")
    return f"{features['backbone']} {weights}" + (f" {size}px" if size else "")


def column_label(variant: str, config: Mapping[str, Any], without_input: bool = False) -> str:
    """The table column of a run (its dataset variant and what its method saw); with
    ``without_input``, a deep method's own input (backbone, weights, size, frozen) is left out,
    for an ablation whose rows vary it."""
    if without_input:
        params = {k: v for k, v in config.get("method_params", {}).items() if k not in INPUT_KEYS}
        config = {**config, "method_params": params}
    label = input_label(config)
    return f"{variant} ({label})" if label else variant


def _told_apart(labels: Sequence[str], params: Sequence[Mapping[str, Any]], changed: Sequence[Mapping[str, Any]],
                names: Sequence[str], skip: Iterable[str] = ()) -> list[str]:
    """``labels``, except that runs which share a label but differ in a parameter (not in
    ``skip``) get that parameter listed too (``nsh[epochs=10]``, ``nsh[epochs=20]``)."""
    skip = set(skip)
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    out = list(labels)
    for members in groups.values():
        if len(members) < 2:
            continue
        def value(i: int, key: str) -> str | None:
            return json.dumps(params[i][key], sort_keys=True) if key in params[i] else None

        keys = sorted({k for i in members for k in params[i]} - skip)
        differ = [k for k in keys if len({value(i, k) for i in members}) > 1]
        if differ:
            for i in members:
                shown = {**changed[i], **{k: params[i].get(k) for k in differ}}
                out[i] = param_label(names[i], dict(sorted(shown.items())))
    return out


def labelled_rows(records: Iterable[RunRecord | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`record_row` of each record, with the labels told apart where runs share a label
    but not their parameters (see the module doc): the rows of :func:`records_frame`, of the
    plots and of the report."""
    recs = [as_record(r) for r in records]
    configs = [r.config for r in recs]
    methods = _told_apart([r.label.method_label() for r in recs], [c.get("method_params", {}) for c in configs],
                          [r.label.changed for r in recs], [r.label.method for r in recs], skip=INPUT_KEYS)
    variants = _told_apart([r.label.dataset_label() for r in recs], [c.get("dataset_params", {}) for c in configs],
                           [r.label.dataset_changed for r in recs], [r.label.dataset for r in recs])
    return [record_row(r, m, v) for r, m, v in zip(recs, methods, variants)]


def records_frame(records: Iterable[RunRecord | Mapping[str, Any]]) -> pd.DataFrame:
    """One row per finished run: method, dataset, bits, seed, metrics (:func:`labelled_rows`).

    ``method`` and ``protocol_variant`` carry the parameters that differed from the defaults
    when the run was made (its record's label); ``dataset`` adds how images became features, so
    different inputs never share a column.
    """
    done = [r for r in records if r.get("status") == "done"]
    return pd.DataFrame(labelled_rows(done), columns=FRAME_COLUMNS)


FRAME_COLUMNS = ["method", "dataset", "protocol_variant", "protocol", "bits", "seed", "run_id", "topk", *METRICS,
                 "base_method"]


def record_row(rec: RunRecord | Mapping[str, Any], method: str | None = None,
               variant: str | None = None) -> dict[str, Any]:
    """The row of :func:`records_frame` for one record, whatever its status (a failed run's
    metrics are None): ``method`` and ``protocol_variant`` are the labels its record stored
    (unless given), ``base_method`` its method's name."""
    rec = as_record(rec)
    cfg = rec.config
    variant = variant if variant is not None else rec.label.dataset_label()
    metrics = rec.metrics or {}
    return {
        "method": method if method is not None else rec.label.method_label(),
        "dataset": column_label(variant, cfg),
        "protocol_variant": variant,
        "protocol": cfg["dataset"],
        "bits": int(cfg["bits"]),
        "seed": int(cfg["seed"]),
        "run_id": rec.run_id,
        "topk": metrics.get("topk"),
        **{m: metrics.get(m) for m in METRICS},
        "base_method": cfg["method"],
    }


def cutoffs(frame: pd.DataFrame) -> str:
    """``digits: K=1597`` per dataset (the K of mAP@K used by its runs)."""
    parts = []
    for dataset, ks in frame.groupby("dataset")["topk"]:
        values = sorted({int(k) for k in ks.dropna()})
        parts.append(f"{dataset}: K={'/'.join(map(str, values))}")
    return ", ".join(parts)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise HashbenchError(f"unknown metric '{metric}' (metrics: {', '.join(METRICS)})")
    return metric


def check_formats(formats: Iterable[str]) -> list[str]:
    formats = list(formats)
    for fmt in formats:
        if fmt not in FORMATS:
            raise HashbenchError(f"unknown table format '{fmt}' (formats: {', '.join(FORMATS)})")
    return formats


SIGNIFICANCE_COLUMNS = ["ci_low", "ci_high", "p_holm", "mark", "untested"]


def shows_intervals(summary: pd.DataFrame) -> bool:
    """Whether any cell of a summary (or of :func:`hashbench.significance.annotate`'s marks)
    has an interval: asked for, and runs with per-query values."""
    return "ci_low" in summary.columns and bool(summary["ci_low"].notna().any())


def stored_columns(summary: pd.DataFrame, settings: Settings) -> list[str]:
    """The significance columns a long table (csv) of ``summary`` stores: all of them with
    intervals asked for (``settings.intervals``), else all but ci_low/ci_high; none without marks."""
    if "mark" not in summary.columns:
        return []
    return [c for c in SIGNIFICANCE_COLUMNS if settings.intervals or not c.startswith("ci_")]


def summary_frame(frame: pd.DataFrame, metric: str = "map", published: bool = True,
                  marks: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long table: source, method, dataset, bits, n (seeds), mean, std, best, and with
    ``marks`` (:func:`hashbench.significance.annotate` of ``frame``) its columns ci_low,
    ci_high, p_holm, mark, untested.

    ``best`` marks the highest measured mean per (dataset, bits); published rows come from the
    protocols' ``published`` tables, for the datasets that have measured runs (none if not
    ``published``).
    """
    check_metric(metric)
    columns = ["source", "method", "dataset", "bits", "n", "mean", "std", "best"]
    if marks is not None:
        columns += SIGNIFICANCE_COLUMNS
    if frame.empty:
        return pd.DataFrame(columns=columns)
    grouped = frame.groupby(["method", "dataset", "bits"])[metric]
    measured = grouped.agg(n="count", mean="mean", std=lambda s: s.std(ddof=1) if len(s) > 1 else float("nan"))
    measured = measured.reset_index()
    measured.insert(0, "source", MEASURED)
    top = measured.groupby(["dataset", "bits"])["mean"].transform("max")
    measured["best"] = measured["mean"] >= top - 1e-12
    published_rows = []
    datasets = registry("dataset")
    for variant, protocol in frame[["protocol_variant", "protocol"]].drop_duplicates().itertuples(index=False):
        if not published or variant != protocol or protocol not in datasets or metric != "map":
            continue  # published numbers belong to the default protocol only, and report mAP
        cls = datasets.get(protocol)
        bits_run = set(frame.loc[frame["protocol_variant"] == variant, "bits"])
        for method, by_bits in cls.published.items():
            for bits, value in by_bits.items():
                if int(bits) in bits_run:
                    published_rows.append({"source": PUBLISHED, "method": method, "dataset": protocol,
                                      "bits": int(bits), "n": 0, "mean": float(value),
                                      "std": float("nan"), "best": False})
    if marks is not None:
        measured = measured.merge(marks, on=["method", "dataset", "bits"], how="left")
    published_frame = pd.DataFrame(published_rows, columns=columns)
    out = pd.concat([measured, published_frame], ignore_index=True) if published_rows else measured
    return out[columns].sort_values(["source", "dataset", "bits", "method"], ignore_index=True)


def _cell(mean: float, std: float, n: int, low: float = math.nan, high: float = math.nan) -> str:
    """``mean ± std`` (one run: the mean; published: 3 decimals); with an interval, ``mean [low, high]``."""
    if not math.isnan(low):
        return f"{mean:.4f} [{low:.4f}, {high:.4f}]"
    if n > 1 and not math.isnan(std):
        return f"{mean:.4f} ± {std:.4f}"
    return f"{mean:.4f}" if n else f"{mean:.3f}"


#: the marker of a cell not distinguishable from its column's reference, per output format
TIE_MARK = {"md": "†", "latex": r"$^\dagger$", "html": "†"}


def column_order(key: tuple[str, str, int]) -> tuple[bool, str, int]:
    """Measured columns first, then by dataset and bits."""
    return key[0] != MEASURED, key[1], key[2]


def wide_table(summary: pd.DataFrame, bold: tuple[str, str], escape=lambda text: text,
               rows: list[str] | None = None,
               columns: list[tuple[str, str, int]] | None = None, tie: str = TIE_MARK["md"]) -> pd.DataFrame:
    """Rows: methods; columns: (block, dataset, bits) with block 'measured' or 'published'.

    Cells are ``escape``d, then the best measured ones wrapped in ``bold``, then ``tie``
    appended to those whose mark (a summary with significance columns) is "tie"; a missing
    one is "–"; with ci_low/ci_high, a cell shows its interval instead of its std.
    ``rows`` and ``columns``, when given, fix the rows and columns and their order (by default:
    those of ``summary``, measured methods first, sorted).
    """
    cells: dict[tuple[str, str, int], dict[str, str]] = {}
    marked = "mark" in summary.columns
    for row in summary.itertuples(index=False):
        low, high = (row.ci_low, row.ci_high) if marked else (math.nan, math.nan)
        text = escape(_cell(row.mean, row.std, row.n, float(low), float(high)))
        if row.best:
            text = bold[0] + text + bold[1]
        if marked and row.mark == "tie":
            text += tie
        cells.setdefault((row.source, row.dataset, row.bits), {})[row.method] = text
    if not cells and rows is None and columns is None:
        return pd.DataFrame()
    keys = list(columns) if columns is not None else sorted(cells, key=column_order)
    if rows is None:
        measured_methods = sorted(summary.loc[summary["source"] == MEASURED, "method"].unique())
        rows = measured_methods + sorted(set(summary["method"]) - set(measured_methods))
    table = pd.DataFrame(index=list(rows), columns=pd.MultiIndex.from_tuples(keys))
    for key in keys:
        for method, text in cells.get(key, {}).items():
            table.loc[method, key] = text
    return table.fillna(escape("–"))


def significance_note(summary: pd.DataFrame, settings: Settings, reference: str = "the column's best") -> str:
    """What the markers and intervals of a summary with significance columns mean, and which
    cells were not tested (and why); "" for a summary without them."""
    if "mark" not in summary.columns:
        return ""
    measured = summary[summary["source"] == MEASURED]
    parts = [f"{TIE_MARK['md']}: not distinguishable from {reference} ({settings.describe()})."]
    if shows_intervals(measured):
        parts.append(f"[low, high]: {settings.confidence:.0%} interval of the mean (two-level bootstrap over seeds "
                     "and queries).")
    if "n" in measured.columns and (measured["n"] == 2).any():
        parts.append("Cells of 2 seeds get wide intervals and weak tests (their seeds' part has 1 degree of "
                     "freedom): run 3 or more seeds.")
    untested = measured[measured["untested"].fillna("") != ""]
    if len(untested):
        reasons = sorted(set(untested["untested"]))
        names = [f"{r.method} {r.bits}b" for r in untested.itertuples(index=False)]
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        parts.append(f"Not tested ({len(names)} cells: {shown}): {'; '.join(reasons)}.")
    return " ".join(parts)


def to_markdown(table: pd.DataFrame, metric: str, sources: str, ks: str = "", corner: str = "method",
                significance: str = "", intervals: bool = False) -> str:
    """``corner``: the header of the row-label column; ``significance``: :func:`significance_note`;
    ``intervals``: the cells show intervals, not stds."""
    if table.empty:
        return f"_no finished runs_ ({metric})\n"
    header = [corner] + [
        f"{dataset} {bits}b" + (" (published)" if block == PUBLISHED else "")
        for block, dataset, bits in table.columns
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in table.iterrows():
        lines.append("| " + " | ".join([method, *row.tolist()]) + " |")
    shown = "mean [interval] over seeds" if intervals else "mean ± std over seeds"
    note = f"\n{metric}: {shown}; best measured value per column in bold."
    if metric == "map" and ks:
        note += f" mAP@K with {ks}."
    if significance:
        note += " " + significance
    if sources:
        note += f" Published: {sources}"
    return "\n".join(lines) + "\n" + note + "\n"


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#")):
        text = text.replace(a, b)
    return text.replace("±", r"$\pm$").replace("–", "--")


def to_latex(table: pd.DataFrame, metric: str, corner: str = "method") -> str:
    if table.empty:
        return f"% no finished runs ({metric})\n"
    groups: list[tuple[str, int]] = []
    for block, dataset, _ in table.columns:
        label = dataset + (" (published)" if block == PUBLISHED else "")
        if groups and groups[-1][0] == label:
            groups[-1] = (label, groups[-1][1] + 1)
        else:
            groups.append((label, 1))
    lines = [
        r"\begin{tabular}{l" + "c" * len(table.columns) + "}",
        r"\toprule",
        " & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_latex_escape(label)}}}" for label, n in groups) + r" \\",
        _latex_escape(corner) + " & " + " & ".join(f"{bits} bits" for _, _, bits in table.columns) + r" \\",
        r"\midrule",
    ]
    for method, row in table.iterrows():
        lines.append(" & ".join([_latex_escape(method), *row.tolist()]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def published_sources(summary: pd.DataFrame) -> str:
    datasets = registry("dataset")
    names = sorted(set(summary.loc[summary["source"] == PUBLISHED, "dataset"]))
    return "; ".join(f"{d}: {datasets.get(d).published_source}" for d in names if d in datasets)


def marked_summary(records: Sequence[RunRecord], metric: str, store: RunStore | None,
                   settings: Settings | None, published: bool = True,
                   references: Mapping[tuple[str, int], str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(records_frame, summary_frame) of ``records``; with a ``store`` (their results folder),
    the summary carries the significance columns (:func:`hashbench.significance.annotate`:
    against each column's best, or the ``references`` rows)."""
    frame = records_frame(records)
    marks = None
    if store is not None and not frame.empty:
        marks = annotate(frame, QueryCells.of(store, records, metric), settings or Settings(), references)
    return frame, summary_frame(frame, metric, published, marks)


def write_tables(records: Sequence[RunRecord], out_dir: str | Path, metric: str = "map",
                 formats: Iterable[str] = FORMATS, store: RunStore | None = None,
                 settings: Settings | None = None) -> tuple[str, list[Path]]:
    """Write ``<metric>.md|.csv|.tex`` under ``out_dir``; returns the Markdown text and the paths.

    ``store``: the records' results folder: cells get their significance marks (and, with
    ``settings.intervals``, intervals) from its per-query files; without it, none."""
    formats = check_formats(formats)
    settings = settings or Settings()
    frame, summary = marked_summary(list(records), metric, store, settings)
    note = significance_note(summary, settings)
    markdown = to_markdown(wide_table(summary, ("**", "**")), metric, published_sources(summary), cutoffs(frame),
                           significance=note, intervals=shows_intervals(summary))
    latex_note = "% " + note + "\n" if note else ""
    long = summary[[c for c in summary.columns if c not in SIGNIFICANCE_COLUMNS] + stored_columns(summary, settings)]
    renderers = {
        "md": lambda: markdown,
        "csv": lambda: long.to_csv(index=False),
        "latex": lambda: to_latex(wide_table(summary, (r"\textbf{", "}"), _latex_escape, tie=TIE_MARK["latex"]),
                                  metric) + latex_note,
    }
    return markdown, write_formats(out_dir, metric, formats, renderers)


def write_formats(out_dir: str | Path, stem: str, formats: Iterable[str], renderers: dict[str, Any]) -> list[Path]:
    """Write ``<stem>.md|.csv|.tex`` under ``out_dir``, each text from ``renderers[fmt]()``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in check_formats(formats):
        path = out_dir / f"{stem}.{SUFFIX[fmt]}"
        atomic_write_text(path, renderers[fmt]())
        written.append(path)
    return written
