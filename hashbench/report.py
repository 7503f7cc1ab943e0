"""One static HTML page of a results folder: ``hashbench report`` -> ``<results>/report/index.html``.

The page holds the comparison table (the content of ``tables/<metric>.md`` as ``hashbench table
--ci`` writes it: best values in bold, each cell's interval, † where a cell is not distinguishable
from its column's best) with the critical-difference diagram of the methods, the ablation tables
(each setting marked † against the default setting), every plot of ``hashbench plot`` (PNG
embedded as base64 data URIs), when the folder has ``hashbench tune`` studies a Tuning section
(their history figures and a table of each study's best trial), the protocol facts and the
environment recorded by the runs, and the list of runs, each with its full resolved config. The
intervals and marks come from the runs' per-query files (:mod:`hashbench.significance`); a cell
of runs recorded without them is shown all the same, and the caption says it was not tested. It
is self-contained: no server, no network, no external file; it opens from disk. The plots are
always regenerated first (``plots/``, PNG and PDF), so the page never shows figures older than
the records.

``--screenshot`` then renders the page in headless Chromium (``chromium``, or the program named
by ``HASHBENCH_CHROMIUM``) and saves ``report/screenshot.png`` (1280 x 1600).
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import HashbenchError
from .plots import (
    DEFAULT_FORMATS,
    AblationData,
    Plot,
    done_records,
    make_plots,
    metric_label,
    rank_data,
)
from .significance import QueryCells, Settings, annotate
from .store import RunRecord, RunStore
from .tables import (
    MEASURED,
    PUBLISHED,
    TIE_MARK,
    check_metric,
    cutoffs,
    labelled_rows,
    marked_summary,
    shows_intervals,
    published_sources,
    records_frame,
    significance_note,
    to_markdown,
    wide_table,
)

#: how the page compares cells: the default tests, with intervals
REPORT_SETTINGS = Settings(intervals=True)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SCREENSHOT_SIZE = (1280, 1600)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2330;
       background: #f6f7f9; }
header { background: #1f3a5f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 0; opacity: .85; }
main { padding: 8px 32px 40px; max-width: 1500px; }
nav { margin: 12px 0; }
nav a { margin-right: 14px; color: #1f3a5f; }
section { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: 4px 20px 16px; margin: 16px 0; }
h2 { font-size: 19px; border-bottom: 1px solid #dde1e7; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #d5d9e0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.cmp td { text-align: center; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.cmp td:first-child { text-align: left; }
th.pub, td.pub { background: #f7f3e8; color: #555; }
.note { color: #555; font-size: 13px; max-width: 1100px; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 12px; }
figure { margin: 0; border: 1px solid #e3e6eb; border-radius: 4px; padding: 6px; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: #555; }
.cd { max-width: 820px; margin: 8px 0; }
.wide { overflow-x: auto; }
details pre { max-height: 360px; overflow: auto; background: #f4f5f7; padding: 6px; font-size: 12px; }
.failed { color: #b00020; font-weight: 600; }
footer { color: #777; font-size: 12px; padding: 0 32px 24px; }
"""

# Records in the page, once it has loaded, how many of its images decoded (a headless browser
# check reads these attributes; a reader sees the footer line).
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = document.images, decoded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) decoded++;
  }
  var el = document.getElementById("image-check");
  el.setAttribute("data-images", String(images.length));
  el.setAttribute("data-decoded", String(decoded));
  el.textContent = decoded + " of " + images.length + " plots displayed.";
});
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# ----------------------------------------------------------------------------- tables

def _header(columns: Sequence[tuple[str, str, int]], corner: str) -> str:
    groups: list[list[Any]] = []
    for block, dataset, _ in columns:
        label = dataset + (" (published)" if block == PUBLISHED else "")
        if groups and groups[-1][0] == label:
            groups[-1][1] += 1
        else:
            groups.append([label, 1, block])
    top = "".join(f'<th colspan="{n}"{" class=pub" if block == PUBLISHED else ""}>{esc(label)}</th>'
                  for label, n, block in groups)
    bottom = "".join(f'<th{" class=pub" if block == PUBLISHED else ""}>{bits} bits</th>'
                     for block, _, bits in columns)
    return f'<thead><tr><th rowspan="2">{esc(corner)}</th>{top}</tr><tr>{bottom}</tr></thead>'


def html_table(table: pd.DataFrame, corner: str = "method") -> str:
    """A :func:`hashbench.tables.wide_table` (cells already escaped) as an HTML table."""
    if table.empty:
        return "<p><em>no finished runs</em></p>"
    rows = []
    for label, row in table.iterrows():
        cells = "".join(f'<td{" class=pub" if key[0] == PUBLISHED else ""}>{text}</td>'
                        for key, text in zip(table.columns, row.tolist()))
        rows.append(f"<tr><td>{esc(label)}</td>{cells}</tr>")
    return (f'<div class=wide><table class="cmp">{_header(list(table.columns), corner)}<tbody>{"".join(rows)}'
            "</tbody></table></div>")


def procedure_note(settings: Settings) -> str:
    """How the page's intervals, marks and diagram are made, in two sentences."""
    return (f"Intervals: {settings.confidence:.0%} two-level bootstrap over training seeds and queries, paired over "
            f"the same queries; {TIE_MARK['html']} marks a cell whose difference to the column's best (in an "
            f"ablation: to the default setting) is not significant at alpha {settings.alpha:g} after Holm's "
            "correction within the column. The critical-difference diagram ranks the methods' baselines in each "
            "(dataset, bits) cell and joins by a bar those whose average ranks differ by less than Nemenyi's "
            "critical difference (Friedman's test first).")


def rank_figure(records: Sequence[RunRecord], plots: Sequence[Plot], metric: str,
                alpha: float = REPORT_SETTINGS.alpha) -> str:
    """The critical-difference diagram of ``plots``, or one line saying why there is none."""
    drawn = next((p for p in plots if p.kind == "cd" and p.files), None)
    if drawn is not None:
        return f"<div class=cd>{_img(drawn)}</div>"
    reason = rank_data(records, metric, alpha)
    text = reason if isinstance(reason, str) else "No critical-difference diagram was drawn."
    return f"<p class=note>{esc(text)}</p>"


def comparison_section(records: Sequence[RunRecord], metric: str, store: RunStore | None = None,
                       plots: Sequence[Plot] = (), settings: Settings = REPORT_SETTINGS) -> str:
    """The comparison table; with ``store`` (the records' results folder) each cell's interval
    and mark (:func:`hashbench.tables.marked_summary`) and their caption; then the
    critical-difference diagram of ``plots`` (or why there is none) and the procedure."""
    frame, summary = marked_summary(records, metric, store, settings)
    table = wide_table(summary, ("<strong>", "</strong>"), esc, tie=TIE_MARK["html"])
    markdown = to_markdown(wide_table(summary, ("**", "**")), metric, published_sources(summary), cutoffs(frame),
                           significance=significance_note(summary, settings), intervals=shows_intervals(summary))
    note = " ".join(line for line in markdown.splitlines() if line.strip() and not line.startswith("|"))
    return (f'<section id="tables"><h2>Comparison: {esc(metric_label(metric))}</h2>'
            f"{html_table(table)}<p class=note>{esc(note)}</p>"
            "<p class=note>Rows <code>method[key=value]</code> are runs with that parameter changed from the "
            "method's default when they ran (ablations), as their records store it.</p>"
            f'<h3 id="cd-diagram">Critical-difference diagram</h3>{rank_figure(records, plots, metric, settings.alpha)}'
            f"<p class=note>{esc(procedure_note(settings))}</p></section>")


def ablation_reference(data: AblationData) -> str | None:
    """The setting an ablation's cells are tested against: its default setting (the one
    holding the baseline runs), or None (each column's best) when it has no single one."""
    return next(iter(data.defaults)) if len(data.defaults) == 1 else None


def ablation_marks(data: AblationData, cells: QueryCells, settings: Settings) -> pd.DataFrame:
    """:func:`hashbench.significance.annotate` of the ablation's cells (rows: its settings;
    from the runs each cell holds), against :func:`ablation_reference` in every column."""
    rows = []
    for (setting, dataset, bits), cell in data.cells.items():
        for run_id in cell.get("run_ids", []):
            rec = cells.records[run_id]
            rows.append({"method": setting, "dataset": dataset, "bits": bits, "seed": int(rec.config["seed"]),
                         "run_id": run_id, data.metric: float(rec.metrics[data.metric])})
    reference = ablation_reference(data)
    references = {column: reference for column in data.columns} if reference is not None else None
    return annotate(pd.DataFrame(rows), cells, settings, references)


def ablation_table(data: AblationData, marks: pd.DataFrame | None = None,
                   settings: Settings = REPORT_SETTINGS) -> str:
    """The ablation's table: mean ± std per cell, the best per column in bold; with ``marks``
    (:func:`ablation_marks`) each cell's interval instead of its std where it has one, † where
    it is not distinguishable from the reference setting, and their caption."""
    columns = [(MEASURED, dataset, bits) for dataset, bits in data.columns]
    marked = {} if marks is None else {(r.method, r.dataset, r.bits): r for r in marks.itertuples(index=False)}
    body = []
    for setting in data.settings:
        cells = []
        for dataset, bits in data.columns:
            cell = data.cells.get((setting, dataset, bits))
            mark = marked.get((setting, dataset, bits))
            if cell is None or (not cell["n"] and not cell["failed"]):
                text = "–"
            elif not cell["n"]:
                text = '<span class="failed">failed</span>'
            else:
                if mark is not None and mark.ci_low == mark.ci_low:
                    text = f"{cell['mean']:.4f} [{mark.ci_low:.4f}, {mark.ci_high:.4f}]"
                elif cell["n"] > 1 and cell["std"] == cell["std"]:
                    text = f"{cell['mean']:.4f} ± {cell['std']:.4f}"
                else:
                    text = f"{cell['mean']:.4f}"
                text = f"<strong>{text}</strong>" if cell["best"] else text
                if mark is not None and mark.mark == "tie":
                    text += TIE_MARK["html"]
                if cell["failed"]:
                    text += f' <span class="failed">({cell["failed"]} failed)</span>'
            cells.append(f"<td>{text}</td>")
        label = setting + (" (default)" if setting in data.defaults else "")
        body.append(f"<tr><td>{esc(label)}</td>{''.join(cells)}</tr>")
    source = data.source if data.source == "records" else Path(data.source).name
    caption = ""
    if marks is not None:
        reference = ablation_reference(data)
        caption = significance_note(marks.assign(source=MEASURED), settings,
                                    f"the default setting ({reference})" if reference is not None
                                    else "the column's best (no single default setting)")
    return (f'<h3 id="{esc(data.name)}">{esc(data.name)}</h3><table class="cmp">{_header(columns, data.method)}'
            f"<tbody>{''.join(body)}</tbody></table>"
            f"<p class=note>{esc(data.note)} Source: {esc(source)}.{' ' + esc(caption) if caption else ''}</p>")


# ----------------------------------------------------------------------------- plots

def _img(plot: Plot) -> str:
    png = next((p for p in plot.files if p.suffix == ".png"), None)
    if png is None:
        return ""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure id="plot-{esc(plot.stem)}"><img alt="{esc(plot.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><strong>{esc(plot.stem)}</strong>: {esc(plot.caption)}</figcaption></figure>")


def plots_section(plots: Sequence[Plot]) -> str:
    parts = [('<section id="plots"><h2>Plots</h2>'
              "<p class=note>Also under <code>plots/</code> as PNG and PDF (<code>hashbench plot</code>). "
              "Curves and the metric against bits show each method's baseline runs (its default "
              "parameters, or the changes all its runs share); variants with more changes are in the "
              "ablations. Legends give the number of seeds averaged.</p>")]
    plots = [p for p in plots if p.kind != "tuning"]  # in the Tuning section
    datasets = list(dict.fromkeys(p.dataset for p in plots if p.dataset is not None))
    for dataset in datasets:
        mine = [p for p in plots if p.dataset == dataset]
        parts.append(f"<h3>{esc(dataset)}</h3><div class=plots>{''.join(_img(p) for p in mine)}</div>")
    ablations = [p for p in plots if p.kind == "ablation"]
    if ablations:
        parts.append(f"<h3>Ablations</h3><div class=plots>{''.join(_img(p) for p in ablations)}</div>")
    return "".join(parts) + "</section>"


def ablations_section(plots: Sequence[Plot], records: Sequence[RunRecord] = (), store: RunStore | None = None,
                      settings: Settings = REPORT_SETTINGS) -> str:
    """The ablation tables of ``plots``; with ``store`` (the folder of ``records``), marked
    against their default settings (:func:`ablation_marks`)."""
    ablations = [p.data for p in plots if p.kind == "ablation"]
    if not ablations:
        return ""
    tables, cells = [], {}  # the per-query files read once for all ablations of a metric
    for data in ablations:
        marks = None
        if store is not None:
            if data.metric not in cells:
                cells[data.metric] = QueryCells.of(store, records, data.metric)
            marks = ablation_marks(data, cells[data.metric], settings)
        tables.append(ablation_table(data, marks, settings))
    return ('<section id="ablations"><h2>Ablations</h2>'
            "<p class=note>From the records: each method's runs grouped by the parameters they changed "
            "beyond its baseline runs (the ablation their record stores), with the baseline runs as the "
            f"setting marked (default); {TIE_MARK['html']}: not distinguishable from the default setting "
            "(each table's caption says how it was tested).</p>"
            + "".join(tables) + "</section>")


# ----------------------------------------------------------------------------- tuning

def _param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tuning_section(plots: Sequence[Plot], results_dir: str | Path, records: Sequence[RunRecord] = ()) -> str:
    """The tuning figures of ``plots`` and a row per study (read from ``results_dir``'s study
    storage: trials by state, the best complete trial's score and values, the experiment file,
    the finished ``<method>[tuned]`` runs among ``records``); "" when there are none."""
    from .tune import TAG, TUNING_DIR, budget_trials, optuna, storage, summary

    figures = [p for p in plots if p.kind == "tuning"]
    if not figures:
        return ""
    opt = optuna()
    store = storage(results_dir)
    tuned = Counter((r.config["method"], r.config["dataset"], int(r.config["bits"]))
                    for r in done_records(records) if r.label.tag == TAG)
    rows, uneven = [], []
    for plot in figures:
        counted = {line.counted for line in plot.data}
        if len(counted) > 1:
            uneven.append(f"{plot.dataset} {plot.bits} bits")
        for line in plot.data:
            loaded = opt.load_study(study_name=line.study, storage=store)
            study = summary(loaded, budget_trials(loaded))  # the best of the budget's trials: the rerun one
            values = ", ".join(f"{k}={_param(v)}" for k, v in sorted((study["best_params"] or {}).items()))
            best = "–" if study["best_value"] is None else f"{study['best_value']:.4f}"
            trial = "–" if study["best_trial"] is None else str(study["best_trial"])
            file = Path(results_dir) / TUNING_DIR / f"{line.study}.yaml"
            states = f"{line.count('complete')} / {line.count('pruned')} / {line.count('fail')}"
            runs = tuned[line.method, line.dataset, line.bits]
            rows.append(f"<tr><td><code>{esc(line.study)}</code></td><td>{esc(line.method)}</td>"
                        f"<td>{esc(line.dataset)}</td><td class=num>{line.bits}</td>"
                        f"<td class=num>{line.counted}</td><td class=num>{states}</td><td class=num>{best}</td>"
                        f"<td class=num>{trial}</td><td>{esc(values or '–')}</td>"
                        f"<td>{f'<code>{esc(TUNING_DIR)}/{esc(file.name)}</code>' if file.exists() else '–'}</td>"
                        f"<td class=num>{runs}</td></tr>")
    head = ("<tr><th>study</th><th>method</th><th>dataset</th><th>bits</th><th>trials counted</th>"
            "<th>complete / pruned / failed</th><th>best validation mAP</th><th>best trial</th>"
            "<th>best trial's values</th><th>experiment file</th>"
            f"<th>finished runs <code>[{esc(TAG)}]</code></th></tr>")
    note = ("<p class=note>Every method gets the same budget per (dataset, bits) (<code>hashbench tune --trials N"
            "</code>: N trials counted, complete or pruned; or <code>--budget SECONDS</code>). Trials are scored "
            "on the validation split only (mAP of the val codes ranked against the train codes; the query and "
            "database splits are never read), so the search never sees the test protocol. The best configuration "
            "of each study (its best complete trial) is then rerun on the test protocol over the usual seeds: the "
            f"rows <code>&lt;method&gt;[{esc(TAG)}]</code> of the comparison table.</p>")
    if uneven:
        note += (f"<p class=note>The methods' counted trials differ in {esc('; '.join(uneven))} (a budget in "
                 "seconds, or a study stopped or still running).</p>")
    return ('<section id="tuning"><h2>Tuning</h2>' + note
            + f"<div class=plots>{''.join(_img(p) for p in figures)}</div>"
            + f"<h3>Studies</h3><table>{head}{''.join(rows)}</table></section>")


# ----------------------------------------------------------------------------- facts

def _values(items: Iterable[Any]) -> str:
    """Distinct values, with their run counts when there are several."""
    counts = Counter(json.dumps(v, sort_keys=True) if not isinstance(v, str) else v for v in items)
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{value} ({n} runs)" for value, n in sorted(counts.items()))


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def protocol_section(records: Sequence[dict[str, Any]]) -> str:
    done = done_records(records)
    labelled = {id(rec): row for rec, row in zip(done, labelled_rows(done))}
    by_variant: dict[str, list[Any]] = {}
    for rec in done:
        by_variant.setdefault(labelled[id(rec)]["protocol_variant"], []).append(rec)
    parts = [('<section id="protocol"><h2>Protocol</h2>'
              "<p class=note>As recorded by the finished runs (a value that differs between runs is "
              "listed with its run counts).</p>")]
    for variant, recs in sorted(by_variant.items()):
        protocols = [r.get("protocol") or {} for r in recs]
        rows: list[tuple[str, str]] = []
        keys = sorted({k for p in protocols for k in p} - {"name"})
        first = ("relevance", "multi_label", "num_classes", "topk")
        for key in [*(k for k in first if k in keys), *(k for k in keys if k not in first)]:
            label = "topk (K of mAP@K)" if key == "topk" else key
            rows.append((label, _values(p.get(key) for p in protocols)))
        sizes = [r.get("splits") or {} for r in recs]
        for split in sorted({s for d in sizes for s in d}):
            rows.append((f"{split} items", _values(d.get(split) for d in sizes)))
        inputs = Counter(labelled[id(r)]["dataset"] for r in recs)
        rows.append(("inputs (table columns)", "; ".join(f"{k} ({n} runs)" for k, n in sorted(inputs.items()))))
        features = [{k: v for k, v in (r.get("features") or {}).items() if k != "cached"}
                    for r in recs if r.get("features")]
        if features:
            rows.append(("feature extraction", _values(features)))
        parts.append(f"<h3>{esc(variant)}</h3>{_kv_table(rows)}")
    return "".join(parts) + "</section>"


def _installed(names: Sequence[str]) -> str:
    out = []
    for name in names:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def environment_section(records: Sequence[dict[str, Any]]) -> str:
    rows: list[tuple[str, str]] = []
    versions = [r.get("versions") or {} for r in records]
    packages = sorted({k for v in versions for k in v}, key=lambda k: (k != "python", k != "hashbench", k))
    for name in packages:
        rows.append((name, _values(v.get(name, "not recorded") for v in versions)))
    for name in ("torch", "timm", "torchvision"):
        if name not in packages:
            rows.append((name, "not recorded in the run records"))
    rows.append(("host", _values(r.get("host", "not recorded") for r in records)))
    devices = [((r.get("training") or {}).get("device") or "no device (numpy)") for r in records
               if r.get("status") == "done"]
    rows.append(("device", _values(devices)))
    weights = Counter()
    for r in records:
        w = (r.get("features") or {}).get("weights") or ((r.get("training") or {}).get("backbone") or {}).get("weights")
        if w:
            weights[w] += 1
    if weights:
        rows.append(("backbone weights", "; ".join(f"{w} ({n} runs)" for w, n in sorted(weights.items()))))
    started = sorted(r["started_at"] for r in records if r.get("started_at"))
    finished = sorted(r["finished_at"] for r in records if r.get("finished_at"))
    if started and finished:
        rows.append(("runs started / finished", f"{started[0]} … {finished[-1]}"))
    seconds = sum(float(r.get("seconds") or 0.0) for r in records)
    rows.append(("run time, all runs", f"{seconds:.0f} s ({seconds / 60:.1f} min)"))
    rows.append(("this report built with", _installed(("hashbench", "matplotlib", "pandas", "numpy", "torch", "timm"))))
    return (f'<section id="environment"><h2>Environment</h2>'
            f"<p class=note>As recorded by the runs (per package, every version seen).</p>{_kv_table(rows)}</section>")


def runs_section(records: Sequence[dict[str, Any]], metric: str) -> str:
    head = ("<tr><th>run id</th><th>method</th><th>dataset</th><th>bits</th><th>seed</th><th>status</th>"
            f"<th>{esc(metric)}</th><th>seconds</th><th>config</th></tr>")
    body = []
    records = sorted(records, key=lambda r: r["run_id"])
    for rec, row in zip(records, labelled_rows(records)):
        value = row.get(metric)
        status = rec.get("status", "?")
        config = json.dumps(rec.get("config"), indent=1, sort_keys=True)
        extra = ""
        if rec.get("error"):
            extra = f"\n\nerror: {rec['error']}"
        seconds = rec.get("seconds")
        body.append(
            f'<tr id="run-{esc(rec["run_id"])}"><td><code>{esc(rec["run_id"])}</code></td><td>{esc(row["method"])}</td>'
            f"<td>{esc(row['dataset'])}</td><td class=num>{row['bits']}</td><td class=num>{row['seed']}</td>"
            f"<td{' class=failed' if status != 'done' else ''}>{esc(status)}</td>"
            f"<td class=num>{'' if value is None else f'{value:.4f}'}</td>"
            f"<td class=num>{'' if seconds is None else f'{float(seconds):.1f}'}</td>"
            f"<td><details><summary>config</summary><pre>{esc(config + extra)}</pre></details></td></tr>")
    counts = Counter(r.get("status") for r in records)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: str(kv[0])))
    return (f'<section id="runs"><h2>Runs ({len(records)}: {esc(summary)})</h2>'
            f"<table>{head}{''.join(body)}</table></section>")


# ----------------------------------------------------------------------------- page

def display_path(results_dir: str | Path) -> str:
    """The results folder as the page names it: relative to the working directory when inside
    it (``results/reference``), else its name alone; never a machine's absolute path (the page
    is committed and shared)."""
    folder = Path(results_dir).resolve()
    try:
        return folder.relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return folder.name


def render_html(records: Sequence[dict[str, Any]], plots: Sequence[Plot], results_dir: str | Path,
                metric: str = "map", settings: Settings = REPORT_SETTINGS) -> str:
    """The page of ``records`` (those of ``results_dir``, whose per-query files give the
    intervals and marks) and their drawn ``plots``."""
    check_metric(metric)
    store = RunStore(results_dir)
    done = done_records(records)
    datasets = sorted(set(records_frame(done)["dataset"]))
    tuning = tuning_section(plots, results_dir, done)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hashbench report: {esc(Path(results_dir).resolve().name)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>hashbench report</h1>
<p>{len(records)} runs ({len(done)} finished) on {esc(", ".join(datasets))}; results folder
<code>{esc(display_path(results_dir))}</code>; generated {esc(stamp)}.</p></header>
<main>
<nav><a href="#tables">Comparison</a><a href="#cd-diagram">Critical difference</a><a href="#plots">Plots</a><a href="#ablations">Ablations</a>
{'<a href="#tuning">Tuning</a>' if tuning else ''}
<a href="#protocol">Protocol</a><a href="#environment">Environment</a><a href="#runs">Runs</a></nav>
{comparison_section(done, metric, store, plots, settings)}
{plots_section(plots)}
{ablations_section(plots, done, store, settings)}
{tuning}
{protocol_section(records)}
{environment_section(records)}
{runs_section(records, metric)}
</main>
<footer><p id="image-check" data-images="" data-decoded="">{len([p for p in plots if p.files])} plots embedded.</p>
<p>Generated by <code>hashbench report</code>; self-contained (plots embedded as PNG data).</p></footer>
<script>{IMAGE_CHECK}</script>
</body></html>
"""


def write_report(results_dir: str | Path, metric: str = "map",
                 formats: Sequence[str] = DEFAULT_FORMATS,
                 settings: Settings = REPORT_SETTINGS) -> tuple[Path, list[Path]]:
    """Regenerate the plots, then write ``<results_dir>/report/index.html``; returns the page and the
    plot files. ``settings``: the intervals' and tests' levels (intervals always shown)."""
    from .store import atomic_write_text

    check_metric(metric)
    formats = list(dict.fromkeys(["png", *formats]))
    results_dir = Path(results_dir)
    records = RunStore(results_dir).existing_records()
    plots = make_plots(records, results_dir, formats, metric, settings.alpha)  # one-line error for no runs
    page = results_dir / "report" / "index.html"
    atomic_write_text(page, render_html(records, plots, results_dir, metric, settings))
    return page, [p for plot in plots for p in plot.files]


# ----------------------------------------------------------------------------- chromium

def find_chromium() -> str | None:
    """``HASHBENCH_CHROMIUM``, else the first of chromium, chromium-browser, google-chrome on PATH."""
    named = os.environ.get("HASHBENCH_CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).exists() else None)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def run_chromium(page: str | Path, *args: str, timeout: float = 120.0) -> str:
    """Run headless Chromium on ``page`` with ``args``; returns its stdout. One-line errors."""
    exe = find_chromium()
    if exe is None:
        raise HashbenchError("no Chromium found (apt-get install -y chromium, or set HASHBENCH_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="hashbench-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
               "--no-first-run", "--mute-audio", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
               *args, Path(page).resolve().as_uri()]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HashbenchError(f"chromium did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HashbenchError(f"chromium exited with code {proc.returncode}: {last}")
    return proc.stdout


def dump_dom(page: str | Path) -> str:
    """The page's DOM after load (and after its scripts ran), as Chromium serialises it."""
    return run_chromium(page, "--dump-dom")


def image_check(page: str | Path) -> tuple[int, int]:
    """(decoded, total): the page's images that Chromium decoded (naturalWidth > 0), as the page's
    own load script recorded them in the DOM."""
    dom = dump_dom(page)
    found = re.search(r'data-images="(\d+)" data-decoded="(\d+)"', dom)
    if found is None:
        raise HashbenchError(f"{page}: the page's image check did not run in Chromium")
    return int(found.group(2)), int(found.group(1))


def screenshot(page: str | Path, out: str | Path, size: tuple[int, int] = SCREENSHOT_SIZE) -> Path:
    """Render ``page`` in headless Chromium and save a ``size`` PNG screenshot to ``out``."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".tmp-{out.name}")  # renamed over ``out`` once complete
    partial.unlink(missing_ok=True)
    run_chromium(page, f"--screenshot={partial}", f"--window-size={size[0]},{size[1]}")
    if not partial.exists() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        raise HashbenchError(f"chromium wrote no screenshot to {out}")
    os.replace(partial, out)
    return out
