"""Ablations: one method's config fields varied over given values, the rest of the grid fixed.

An ablation is an ordinary grid: each setting (one combination of the varied values) is an
:class:`~hashbench.config.Experiment` of the one method with the values as ``--set`` overrides,
so its cells are ordinary RunConfigs with ordinary run ids. A setting already run (by
``hashbench run``, e.g. the method's defaults, or by an earlier ablation) is recognised by its
run id and skipped. The ablation table is built from exactly the records of these run ids.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .config import Experiment, RunConfig
from .errors import HashbenchError
from .registry import registry
from .significance import QueryCells, Settings, annotate
from .store import INPUT_KEYS, RunLabel, RunRecord, RunStore, Snapshot
from .tables import (
    FORMATS,
    FRAME_COLUMNS,
    MEASURED,
    TIE_MARK,
    _latex_escape,
    check_formats,
    check_metric,
    column_label,
    column_order,
    cutoffs,
    record_row,
    significance_note,
    stored_columns,
    summary_frame,
    to_latex,
    to_markdown,
    wide_table,
    write_formats,
)

GRID_FLAGS = {"bits": "--bits", "seed": "--seeds", "seeds": "--seeds", "dataset": "--datasets",
              "datasets": "--datasets", "method": "the METHOD argument"}


def show(value: Any) -> str:
    """A value as it would be typed on the command line (YAML spelling): softsort, 0.5, true, null."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def method_fields(method: str) -> list[str]:
    return [f.name for f in dataclasses.fields(registry("method").get(method).Config)]


def parse_vary(items: Sequence[str], method: str) -> list[tuple[str, list[Any]]]:
    """``["sorter=softsort,neuralsort", "positives=1,4"]`` -> ``[("sorter", [...]), ("positives", [1, 4])]``.

    Keys must be config fields of ``method``; values are read as YAML scalars, as ``--set`` does
    (their types are checked when the grid is resolved).
    """
    fields = method_fields(method)
    axes: list[tuple[str, list[Any]]] = []
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise HashbenchError(f"--vary expects KEY=VALUE1,VALUE2,..., got '{item}'")
        if key not in fields:
            if not fields:
                raise HashbenchError(f"--vary {key}: method {method} has no parameters to vary")
            ranked = sorted(fields, key=lambda f: -difflib.SequenceMatcher(None, key, f).ratio())
            hint = f" (use {GRID_FLAGS[key]})" if key in GRID_FLAGS else ""
            raise HashbenchError(
                f"--vary {key}: method {method} has no parameter '{key}'{hint}; "
                f"its parameters, closest first: {', '.join(ranked)}"
            )
        if any(key == k for k, _ in axes):
            raise HashbenchError(f"--vary {key} is given twice; list all its values in one --vary")
        values = []
        for text in raw.split(","):
            if not text.strip():
                raise HashbenchError(f"--vary {key}: empty value in '{raw}' (values are comma-separated)")
            try:
                values.append(yaml.safe_load(text))
            except yaml.YAMLError:
                raise HashbenchError(f"--vary {key}: cannot read value '{text.strip()}'") from None
        axes.append((key, values))
    if not axes:
        raise HashbenchError("ablate needs at least one --vary KEY=VALUE1,VALUE2,...")
    return axes


@dataclass
class Setting:
    """One row of the ablation: the varied fields' resolved values and their runs."""

    values: dict[str, Any]
    configs: list[RunConfig]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={show(v)}" for k, v in self.values.items())


@dataclass
class Ablation:
    method: str
    keys: list[str]
    settings: list[Setting]
    experiment: Experiment

    @property
    def configs(self) -> list[RunConfig]:
        return [c for s in self.settings for c in s.configs]

    @property
    def name(self) -> str:
        """``ablation-<method>-<key>[-<key2>...]``: the tables' file name."""
        return "-".join(["ablation", self.method, *self.keys])


def plan_ablation(method: str, vary: Sequence[str], experiment: Experiment,
                  fixed: dict[str, Any] | None = None) -> Ablation:
    """Resolve the cross product of the ``--vary`` values into settings, each a grid of the method
    over the experiment's datasets x bits x seeds.

    ``experiment.overrides`` stay fixed in every setting, except that a varied key replaces the
    same key set by an experiment file; ``fixed`` (the CLI's ``--set``) may not name a varied key.
    Raises one-line HashbenchErrors for unknown keys, values of the wrong type, and two values
    that resolve to the same setting.
    """
    axes = parse_vary(vary, method)
    keys = [k for k, _ in axes]
    for key in keys:
        if f"{method}.{key}" in (fixed or {}):
            raise HashbenchError(f"--vary {key} and --set {method}.{key} both set {key}; drop one")
    settings: list[Setting] = []
    seen: dict[tuple[str, ...], str] = {}
    for combo in itertools.product(*(values for _, values in axes)):
        overrides = {**experiment.overrides, **{f"{method}.{k}": v for k, v in zip(keys, combo)}}
        grid = dataclasses.replace(experiment, methods=[method], overrides=overrides).grid()
        resolved = {k: grid[0].method_params[k] for k in keys}
        setting = Setting(resolved, grid)
        identity = tuple(json.dumps(v, sort_keys=True) for v in resolved.values())
        if identity in seen:
            typed = ", ".join(f"{k}={show(v)}" for k, v in zip(keys, combo))
            raise HashbenchError(
                f"--vary: {typed} is the same setting as {seen[identity]}; list each value once"
            )
        seen[identity] = ", ".join(f"{k}={show(v)}" for k, v in zip(keys, combo))
        settings.append(setting)
    return Ablation(method, keys, settings, experiment)


# ----------------------------------------------------------------------------- table

def read_records(ablation: Ablation, results_dir: str | Path, since: Snapshot | None = None) -> list[RunRecord]:
    """The records of the ablation's run ids (and no others); a missing one is left out.
    ``since``: a snapshot of the folder taken earlier (:meth:`RunStore.records`): a record
    not written since is not read again."""
    return RunStore(results_dir).records(since, run_ids=[config.run_id for config in ablation.configs])


def _column(config: dict[str, Any], keys: Sequence[str]) -> str:
    """The table column (dataset with its input) of a planned run, labelled as its record is
    when it runs now; a varied input of a deep method (backbone, weights, size, frozen) is in
    the row label instead, so rows share columns."""
    return column_label(RunLabel.of(config).dataset_label(), config,
                        without_input=any(k in INPUT_KEYS for k in keys))


def ablation_frame(ablation: Ablation, records: Sequence[RunRecord | dict[str, Any]]) -> pd.DataFrame:
    """One row per record of the ablation's cells: records_frame's columns (``method``: the
    setting's label, ``dataset``: its column, as planned) plus ``status``."""
    cells = {c.run_id: (s.label, _column(c.to_dict(), ablation.keys)) for s in ablation.settings for c in s.configs}
    rows = []
    for rec in records:
        if rec.get("run_id") not in cells:
            continue  # not a cell of this ablation
        row = record_row(rec)
        setting, column = cells[rec["run_id"]]
        row.update(method=setting, dataset=column, status=rec.get("status"))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*FRAME_COLUMNS, "status"])


def _mark_failed(table: pd.DataFrame, failed: dict[tuple[str, str, int], int], escape) -> pd.DataFrame:
    """A cell with failed runs: "failed" if none finished, else its value and "(k failed)"."""
    for (row, dataset, bits), k in failed.items():
        key = (MEASURED, dataset, bits)
        text = table.loc[row, key]
        table.loc[row, key] = escape("failed") if text == escape("–") else text + escape(f" ({k} failed)")
    return table


def default_setting(ablation: Ablation) -> str | None:
    """The label of the setting whose varied values are the method's defaults, if one is."""
    defaults = registry("method").get(ablation.method).default_params()
    for setting in ablation.settings:
        if all(json.dumps(defaults.get(k), sort_keys=True, default=str) == json.dumps(v, sort_keys=True, default=str)
               for k, v in setting.values.items()):
            return setting.label
    return None


def write_ablation_table(ablation: Ablation, records: Sequence[dict[str, Any]], out_dir: str | Path,
                         metric: str = "map", formats: Sequence[str] = FORMATS, store: RunStore | None = None,
                         settings: Settings | None = None) -> tuple[str, list[Path]]:
    """Write ``<ablation.name>[-<metric>].md|.csv|.tex`` under ``out_dir`` (no metric suffix for
    map): rows the settings, columns (dataset, bits), cells mean ± std over seeds of ``metric``,
    best per column in bold. With ``store`` (the records' results folder), a setting whose
    paired difference to the default setting (else to the column's best, when no setting is
    the default) is not significant is marked (:mod:`hashbench.significance`). Returns the
    Markdown text and the paths."""
    check_metric(metric)
    formats = check_formats(formats)
    settings = settings or Settings()
    frame = ablation_frame(ablation, records)
    done = frame[frame["status"] == "done"].astype({metric: float})
    default = default_setting(ablation)
    marks = None
    if store is not None and not done.empty:
        references = {(d, int(b)): default for d, b in done[["dataset", "bits"]].drop_duplicates().itertuples(index=False)}
        marks = annotate(done, QueryCells.of(store, records, metric), settings, references if default else None)
    summary = summary_frame(done, metric, published=False, marks=marks)
    rows = [s.label for s in ablation.settings]
    columns = sorted({(MEASURED, _column(c.to_dict(), ablation.keys), c.bits) for c in ablation.configs},
                     key=column_order)
    failed: dict[tuple[str, str, int], int] = {}
    for row in frame[frame["status"] == "failed"].itertuples(index=False):
        failed[row.method, row.dataset, row.bits] = failed.get((row.method, row.dataset, row.bits), 0) + 1

    owners = {ablation.method, *ablation.experiment.datasets}
    fixed = {k: v for k, v in ablation.experiment.overrides.items()
             if k.partition(".")[0] in owners
             and not (k.partition(".")[0] == ablation.method and k.partition(".")[2] in ablation.keys)}
    note = (f"{ablation.method} with {', '.join(ablation.keys)} varied; other parameters "
            + ("at their defaults, except " + ", ".join(f"{k}={show(v)}" for k, v in fixed.items())
               if fixed else "at their defaults") + ".")
    if failed:
        note += (f" {sum(failed.values())} runs failed: a cell marked 'failed' has no finished run; "
                 "'(k failed)': k seeds are missing from its mean.")
    significance = significance_note(summary, settings, f"the default setting ({default})" if default
                                     else "the column's best (no setting is the default)")

    def table(bold, escape=lambda text: text, tie=TIE_MARK["md"]):
        wide = wide_table(summary, bold, escape, rows=rows, columns=columns, tie=tie)
        return _mark_failed(wide, failed, escape)

    markdown = to_markdown(table(("**", "**")), metric, "", cutoffs(done), corner=ablation.method,
                           significance=significance) + note + "\n"

    def csv() -> str:
        """Long format: one line per (setting, dataset, bits), with each varied value in its column."""
        grid = pd.DataFrame([{"setting": label, "dataset": dataset, "bits": bits}
                             for label in rows for _, dataset, bits in columns])
        measured = summary.drop(columns="source").rename(columns={"method": "setting"})
        long = grid.merge(measured, on=["setting", "dataset", "bits"], how="left")
        long["n"] = long["n"].fillna(0).astype(int)
        long["failed"] = [failed.get(key, 0) for key in zip(long["setting"], long["dataset"], long["bits"])]
        long["best"] = long["best"].astype("boolean").fillna(False).astype(bool)
        long["method"] = ablation.method
        values = {s.label: s.values for s in ablation.settings}
        base = ["method", "setting", "dataset", "bits", "n", "failed", "mean", "std", "best"]
        base += stored_columns(summary, settings)
        keys = [k for k in ablation.keys if k not in base]  # a field named like a column stays in 'setting'
        for key in keys:
            long[key] = [show(values[label][key]) for label in long["setting"]]
        return long[base[:2] + keys + base[2:]].to_csv(index=False)

    renderers = {
        "md": lambda: markdown,
        "csv": csv,
        "latex": lambda: to_latex(table((r"\textbf{", "}"), _latex_escape, TIE_MARK["latex"]), metric,
                                  corner=ablation.method) + (f"% {significance}\n" if significance else ""),
    }
    stem = ablation.name if metric == "map" else f"{ablation.name}-{metric}"
    return markdown, write_formats(out_dir, stem, formats, renderers)
