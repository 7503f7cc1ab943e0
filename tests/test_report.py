"""`hashbench plot` and `hashbench report`: the plotted data are the records' means, the page
holds every table, plot and run, and renders in headless Chromium."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hashbench import registry as registry_module
from hashbench.cli import main
from hashbench.errors import HashbenchError
from hashbench.plots import (
    ablations_from_records,
    mean_curves,
    metric_by_bits,
    plan_plots,
    shown_methods,
)
from hashbench.registry import registry
from hashbench.report import REPORT_SETTINGS, ablation_marks
from hashbench.significance import NO_QUERIES, QueryCells, Settings
from hashbench.store import RunStore, as_record
from hashbench.tables import write_tables

GRID = ["--datasets", "digits", "--bits", "16,32", "--seeds", "0,1", "--no-progress"]
FIGURES = ["ablation-itq-iterations", "map-vs-bits-digits", "pk-digits-16b", "pk-digits-32b",
           "pr-digits-16b", "pr-digits-32b"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A small real results folder: lsh and itq on digits at 16/32 bits, seeds 0/1, and an
    ablation of itq's iterations at 16 bits (12 runs, a few seconds)."""
    root = tmp_path_factory.mktemp("report") / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HASHBENCH_PLUGINS", raising=False)
        mp.setenv("HASHBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        registry_module.reload()
        assert main(["run", "--methods", "lsh,itq", *GRID, "--results-dir", str(root)]) == 0
        assert main(["ablate", "itq", "--vary", "iterations=0,5", "--datasets", "digits", "--bits", "16",
                     "--seeds", "0,1", "--no-progress", "--results-dir", str(root)]) == 0
    return root


def load_records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]


@pytest.fixture(scope="module")
def report_page(results) -> Path:
    from hashbench.report import write_report

    page, _ = write_report(results)
    return page


def test_plot_writes_png_and_pdf_of_every_figure(cli, results):
    code, out, err = cli("plot", "--results-dir", str(results))
    assert code == 0, err
    printed = [Path(line) for line in out.splitlines()]
    assert sorted(p.name for p in printed) == sorted(f"{s}.{f}" for s in FIGURES for f in ("png", "pdf"))
    for path in printed:
        assert path.parent == results / "plots"
        head = path.read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n" if path.suffix == ".png" else head.startswith(b"%PDF")
    assert f"wrote {len(printed)} files" in err
    # another metric: its own metric-vs-bits name; no ablation table for it, so the ablation
    # comes from the records (itq[iterations=0], itq[iterations=5] and itq's defaults)
    code, out, err = cli("plot", "--results-dir", str(results), "--format", "svg", "--metric", "map_full")
    assert code == 0, err
    names = {Path(line).name for line in out.splitlines()}
    assert {"map_full-vs-bits-digits.svg", "ablation-itq-iterations-map_full.svg"} <= names
    assert all(name.endswith(".svg") for name in names)


def test_curves_are_the_records_mean_curves(results):
    records = load_records(results)
    pr, pk = mean_curves(records, "pr"), mean_curves(records, "pk")
    assert set(pr) == set(pk) == {("digits", 16), ("digits", 32)}
    assert set(pr["digits", 16]) == {"lsh", "itq", "itq[iterations=0]", "itq[iterations=5]"}
    assert shown_methods(pr["digits", 16]) == ["itq", "lsh"]  # variants belong to the ablation
    for bits in (16, 32):
        for method in ("lsh", "itq"):
            mine = [r for r in records if r["config"]["method"] == method and r["config"]["bits"] == bits
                    and r["config"]["method_params"] == registry("method").get(method).default_params()]
            assert len(mine) == 2
            curves = [r["curves"]["pr_curve"] for r in mine]
            got = pr["digits", bits][method]
            assert got["n"] == 2 and got["radius"] == list(range(bits + 1))
            np.testing.assert_allclose(got["precision"], np.mean([c["precision"] for c in curves], axis=0))
            np.testing.assert_allclose(got["recall"], np.mean([c["recall"] for c in curves], axis=0))
            at_k = [r["curves"]["precision_at_k"] for r in mine]
            assert pk["digits", bits][method]["k"] == at_k[0]["k"]
            np.testing.assert_allclose(pk["digits", bits][method]["precision"],
                                       np.mean([c["precision"] for c in at_k], axis=0))


def test_metric_against_bits_is_the_tables_mean_and_std(results, tmp_path):
    records = load_records(results)
    write_tables(records, tmp_path, "map", ["csv"])
    table = pd.read_csv(tmp_path / "map.csv")
    table = table[table["source"] == "measured"].set_index(["method", "bits"])
    plotted = metric_by_bits(records, "map")
    assert list(plotted) == ["digits"]
    rows = plotted["digits"]
    assert set(rows["method"]) == set(table.index.get_level_values("method"))
    for row in rows.itertuples(index=False):
        assert row.mean == pytest.approx(table.loc[(row.method, row.bits), "mean"], abs=1e-12)
        assert row.std == pytest.approx(table.loc[(row.method, row.bits), "std"], abs=1e-12, nan_ok=True)
        assert row.n == table.loc[(row.method, row.bits), "n"]


def test_ablation_data_from_the_records(results):
    """The ablation figure's data come from the records alone (no table file is read back): the
    runs that change iterations, and itq's baseline runs as the default setting; its cells are
    the numbers of the table `hashbench ablate` wrote for the same runs."""
    records = load_records(results)
    default = registry("method").get("itq").default_params()["iterations"]
    (ablation,) = ablations_from_records(records)
    assert (ablation.name, ablation.method, ablation.keys) == ("ablation-itq-iterations", "itq", ["iterations"])
    assert ablation.source == "records" and ablation.numeric()
    assert ablation.settings == sorted({"iterations=0", "iterations=5", f"iterations={default}"},
                                       key=lambda s: int(s.partition("=")[2]))
    assert ablation.defaults == {f"iterations={default}"}  # the baseline runs, as their records say
    assert ablation.columns == [("digits", 16)]
    for setting, iterations in (("iterations=0", 0), ("iterations=5", 5), (f"iterations={default}", default)):
        maps = [r["metrics"]["map"] for r in records if r["config"]["method"] == "itq"
                and r["config"]["bits"] == 16 and r["config"]["method_params"]["iterations"] == iterations]
        cell = ablation.cells[setting, "digits", 16]
        assert cell["n"] == 2
        assert cell["mean"] == pytest.approx(np.mean(maps)) and cell["std"] == pytest.approx(np.std(maps, ddof=1))
    table = pd.read_csv(results / "tables" / "ablation-itq-iterations.csv")
    for row in table.itertuples(index=False):
        cell = ablation.cells[row.setting, row.dataset, row.bits]
        assert (cell["n"], cell["mean"], cell["std"]) == (row.n, pytest.approx(row.mean), pytest.approx(row.std))
    (full,) = ablations_from_records(records, "map_full")
    assert full.name == "ablation-itq-iterations-map_full"
    assert ablations_from_records(records, covered={("itq", "iterations")}) == []


def test_labels_are_what_the_records_stored(results, monkeypatch):
    """A default changed after the runs relabels nothing: rows, curves and ablations come from
    what each record stored when it ran."""
    records = load_records(results)
    before = (mean_curves(records, "pr"), ablations_from_records(records))
    itq = registry("method").get("itq")
    monkeypatch.setattr(itq, "default_params", classmethod(lambda cls: {"iterations": 5}))
    pr, (ablation,) = mean_curves(records, "pr"), ablations_from_records(records)
    assert set(pr["digits", 16]) == set(before[0]["digits", 16]) == {"lsh", "itq", "itq[iterations=0]",
                                                                      "itq[iterations=5]"}
    assert ablation.settings == before[1][0].settings and ablation.defaults == before[1][0].defaults


def test_baseline_survives_a_change_all_runs_share(results):
    """Records that all carry one change (e.g. every run made with ``--set nsh.epochs=20``):
    that is still the method's baseline, and its variants still go to the ablation."""
    assert shown_methods(["nsh[epochs=20]", "nsh[epochs=20,sorter=exact]", "itq", "itq[iterations=5]",
                          "wch[heads=1]", "wch[heads=2]"]) == ["itq", "nsh[epochs=20]", "wch[heads=1]", "wch[heads=2]"]
    records = load_records(results)
    for record in records:
        if record["config"]["method"] == "itq":  # as if itq had been run with centered=True throughout
            record["config"]["method_params"]["centered"] = True
            changed = {**record["label"]["changed"], "centered": True}
            record["label"].update(changed=changed, ablation=",".join(sorted(changed)))
    pr = mean_curves(records, "pr")
    assert shown_methods(pr["digits", 16]) == ["itq[centered=True]", "lsh"]
    (recovered,) = ablations_from_records(records)
    default = registry("method").get("itq").default_params()["iterations"]
    assert recovered.keys == ["iterations"]
    assert set(recovered.settings) == {"iterations=0", "iterations=5", f"iterations={default}"}
    assert recovered.cells[f"iterations={default}", "digits", 16]["n"] == 2


def test_report_page_holds_tables_plots_protocol_and_every_run(results, report_page, tmp_path):
    text = report_page.read_text()
    records = load_records(results)
    assert report_page == results / "report" / "index.html"
    for record in records:
        assert f'id="run-{record["run_id"]}"' in text
    assert text.count("<details>") == len(records)
    # the comparison table: the rows, best cells, intervals and ties of map.md (as `hashbench
    # table --ci` writes it now), with its caption
    store = RunStore(results)
    markdown, _ = write_tables(store.existing_records(), tmp_path, "map", ["md"], store=store,
                               settings=Settings(intervals=True))
    assert '<table class="cmp">' in text
    comparison = text[text.index('<section id="tables">'):text.index('<section id="plots">')]
    for method in ("lsh", "itq", "itq[iterations=0]", "itq[iterations=5]"):
        assert f"<td>{method}</td>" in comparison
    best = re.findall(r"\*\*(.+?)\*\*", markdown)
    assert best and all(re.search(r"\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\]", cell) for cell in best)
    assert all(f"<strong>{cell}</strong>" in comparison for cell in best)
    ties = re.findall(r"\| ([^|]+)†", markdown)
    assert ties and all(f"<td>{cell}†</td>" in comparison for cell in ties)
    assert "†: not distinguishable from the column&#x27;s best" in comparison
    assert "Not tested" not in text  # every run has its per-query values
    # two methods: no critical-difference diagram, and one line says why
    assert "No critical-difference diagram: it needs at least 3 methods" in comparison
    # the ablation table, its settings marked against the default setting (the baseline runs)
    ablation = text[text.index('<h3 id="ablation-itq-iterations">'):text.index('<section id="protocol">')]
    default = registry("method").get("itq").default_params()["iterations"]
    assert f"<td>iterations={default} (default)</td>" in ablation
    assert f"not distinguishable from the default setting (iterations={default})" in ablation
    marks = ablation_marks(next(p.data for p in plan_plots(records, results) if p.kind == "ablation"),
                           QueryCells.of(store, [as_record(r) for r in records], "map"), REPORT_SETTINGS)
    assert set(marks.loc[marks["method"] == f"iterations={default}", "mark"]) == {"reference"}
    for row in marks.itertuples(index=False):
        shown = re.search(rf"<td>{re.escape(row.method)}(?: \(default\))?</td><td>([^<]*(?:<strong>[^<]*</strong>)?[^<]*)</td>",
                          ablation).group(1)
        assert f"[{row.ci_low:.4f}, {row.ci_high:.4f}]" in shown
        assert shown.endswith("†") == (row.mark == "tie")
    # plots: every PNG embedded as a data URI, nothing fetched from anywhere
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    assert len(sources) == len(FIGURES)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.partition(",")[2])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', text, flags=re.IGNORECASE)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    # protocol facts and environment
    for fact in ("topk (K of mAP@K)", "database items", "query items", "relevance", "numpy", "host"):
        assert fact in text
    # a committed page never names the absolute path of the machine that made it
    assert str(results.resolve()) not in text


def test_report_without_per_query_files_says_its_cells_were_not_tested(results, tmp_path):
    """Records made before per-query files existed (no ``per_query`` entry, no sidecar): every
    cell renders with mean ± std and no mark, and the captions say why nothing was tested."""
    from hashbench.report import write_report

    shutil.copytree(results / "runs", tmp_path / "runs")
    for sidecar in (tmp_path / "runs").glob("*.queries.npz"):
        sidecar.unlink()
    for path in (tmp_path / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        del record["per_query"]
        path.write_text(json.dumps(record))
    page, _ = write_report(tmp_path)
    text = page.read_text()
    assert len(re.findall(r'id="run-', text)) == len(load_records(results))
    body = text[:text.index('<section id="protocol">')]
    assert not re.search(r"\d \[\d", body) and "†</td>" not in body  # no interval, no mark
    assert re.search(r"<td><strong>\d\.\d{4} ± \d\.\d{4}</strong></td>", body)
    notes = re.findall(r"Not tested \((\d+) cells: [^)]*\): ([^<]*)</p>", body)
    assert [int(n) for n, _ in notes] == [6, 3]  # the comparison table, the ablation table
    assert all(html.unescape(reason).startswith(NO_QUERIES) for _, reason in notes)
    assert "mean ± std over seeds" in body and "95% interval" not in body


def test_report_names_the_results_folder_relative_to_the_working_directory(tmp_path, monkeypatch):
    from hashbench.report import display_path

    (tmp_path / "results" / "reference").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert display_path("results/reference") == "results/reference"
    assert display_path(tmp_path / "results") == "results"
    assert display_path(tmp_path.parent) == tmp_path.parent.name  # outside: the name alone


def test_report_renders_in_headless_chromium(cli, results):
    from PIL import Image

    from hashbench.report import find_chromium, image_check

    if find_chromium() is None:
        pytest.skip("no Chromium on PATH (apt-get install -y chromium); the report's browser check needs it")
    code, out, err = cli("report", "--results-dir", str(results), "--screenshot")
    assert code == 0, err
    page, shot = (Path(line) for line in out.splitlines())
    assert f"decoded {len(FIGURES)} of {len(FIGURES)} plots" in err
    assert image_check(page) == (len(FIGURES), len(FIGURES))
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1280, 1600)
        rgb = np.asarray(image.convert("RGB"))
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    assert len(colours) > 50  # text, tables, the header band: not a blank page
    assert counts.max() / counts.sum() < 0.9
    assert rgb.std() > 20


def test_errors_are_one_line(cli, tmp_path, one_line_error, monkeypatch):
    for command in ("plot", "report"):
        code, _, err = cli(command, "--results-dir", str(tmp_path / "empty"))
        assert code == 2 and "no run records in" in one_line_error(err)
        assert not (tmp_path / "empty").exists()  # a typo in the folder creates nothing
    code, _, err = cli("plot", "--results-dir", str(tmp_path), "--format", "png,gif")
    assert code == 2 and "unknown plot format 'gif'" in one_line_error(err)
    code, _, err = cli("plot", "--results-dir", str(tmp_path), "--metric", "speed")
    assert code == 2 and "unknown metric 'speed'" in one_line_error(err)
    code, _, err = cli("report", "--results-dir", str(tmp_path), "--metric", "speed")
    assert code == 2 and "unknown metric 'speed'" in one_line_error(err)

    from hashbench.report import screenshot

    monkeypatch.setenv("HASHBENCH_CHROMIUM", str(tmp_path / "no-such-browser"))
    page = tmp_path / "index.html"
    page.write_text("<p>x</p>")
    with pytest.raises(HashbenchError, match="no Chromium found"):
        screenshot(page, tmp_path / "shot.png")


def test_plot_reads_records_written_elsewhere(cli, results, tmp_path):
    """A copied results folder with no tables: the ablation comes from the records."""
    shutil.copytree(results / "runs", tmp_path / "runs")
    code, out, err = cli("plot", "--results-dir", str(tmp_path), "--format", "png")
    assert code == 0, err
    assert sorted(Path(line).name for line in out.splitlines()) == sorted(f"{s}.png" for s in FIGURES)
