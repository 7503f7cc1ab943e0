"""`hashbench ablate`: settings as ordinary runs (reused), the cross product, the ablation table."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hashbench.components import HashMethod
from hashbench.errors import HashbenchError

SMALL = ["--datasets", "synthetic", "--bits", "8,16", "--seeds", "0,1", "--no-progress"]
CELL = r"\d\.\d{4} ± \d\.\d{4}"


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (results / "runs").glob("*.json")}


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of the first Markdown table, split into cells."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


class Knobs(HashMethod):
    """A random projection with two knobs (test only): ``sorter`` picks how the projection is
    drawn, ``positives`` how many leading features are kept; positives=0 raises in fit."""

    name = "knobs"
    summary = "random projection with two knobs (test only)"

    @dataclass(frozen=True)
    class Config:
        sorter: str = "gauss"
        positives: int = 16

    def fit(self, train, val=None):
        if self.config.positives == 0:
            raise RuntimeError("no positives")
        dim = train.x.shape[1]
        draw = self.rng.normal if self.config.sorter == "gauss" else self.rng.uniform
        self.w = draw(size=(dim, self.bits))
        self.w[self.config.positives:] = 0
        self.mean = train.x.mean(axis=0)

    def encode(self, x):
        return (x - self.mean) @ self.w >= 0


def test_ablation_table_rows_columns_mean_std(cli, tmp_path):
    results = tmp_path / "results"
    code, out, err = cli("ablate", "itq", "--vary", "iterations=0,5,50", *SMALL, "--results-dir", str(results))
    assert code == 0, err
    assert "12 runs (3 settings x 1 datasets x 2 bit lengths x 2 seeds)" in err and "12 done" in err
    tables = results / "tables"
    assert sorted(p.name for p in tables.iterdir()) == [
        "ablation-itq-iterations.csv", "ablation-itq-iterations.md", "ablation-itq-iterations.tex"]
    markdown = (tables / "ablation-itq-iterations.md").read_text()
    assert markdown in out  # printed too
    assert markdown.splitlines()[0] == "| itq | synthetic 8b | synthetic 16b |"
    rows = table_rows(markdown)
    assert [r[0] for r in rows] == ["iterations=0", "iterations=5", "iterations=50"]  # the order given
    for col in (1, 2):
        # † after a setting not distinguishable from the default one (iterations=50)
        assert all(re.fullmatch(rf"(\*\*)?{CELL}(\*\*)?†?", r[col]) for r in rows)
        assert sum(r[col].startswith("**") for r in rows) == 1  # best per column in bold
        assert not rows[2][col].endswith("†")  # the default is the reference
    assert "mean ± std over seeds" in markdown and "itq with iterations varied" in markdown
    assert "†: not distinguishable from the default setting (iterations=50)" in markdown

    # each cell is the mean ± sample std over the seeds of exactly its runs
    maps: dict[tuple[int, int], list[float]] = {}
    for rec in records(results).values():
        key = (rec["config"]["method_params"]["iterations"], rec["config"]["bits"])
        maps.setdefault(key, []).append(rec["metrics"]["map"])
    for row, iterations in zip(rows, (0, 5, 50)):
        for col, bits in ((1, 8), (2, 16)):
            values = maps[iterations, bits]
            assert len(values) == 2
            assert row[col].rstrip("†").strip("*") == f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"

    csv = pd.read_csv(tables / "ablation-itq-iterations.csv")
    assert list(csv.columns) == ["method", "setting", "iterations", "dataset", "bits", "n", "failed",
                                 "mean", "std", "best", "p_holm", "mark", "untested"]
    assert list(csv["mark"])[4:] == ["reference", "reference"]  # iterations=50, the default
    assert len(csv) == 6 and set(csv["n"]) == {2} and set(csv["failed"]) == {0}
    assert list(csv["iterations"]) == [0, 0, 5, 5, 50, 50] and list(csv["bits"]) == [8, 16] * 3
    assert csv.groupby("bits")["best"].sum().tolist() == [1, 1]
    tex = (tables / "ablation-itq-iterations.tex").read_text()
    assert r"\begin{tabular}{lcc}" in tex and r"\textbf{" in tex and r"$\pm$" in tex
    assert "itq & 8 bits & 16 bits" in tex and "iterations=50 &" in tex


def test_ablation_reuses_existing_records(cli, tmp_path):
    results = tmp_path / "results"
    code, _, err = cli("run", "--methods", "itq", *SMALL, "--no-table", "--results-dir", str(results))
    assert code == 0 and "4 done" in err
    before = {p.name: p.stat().st_mtime_ns for p in (results / "runs").glob("*.json")}
    # the default (iterations=50) is the setting `run` already ran: its 4 cells are skipped
    code, out, err = cli("ablate", "itq", "--vary", "iterations=5,50", *SMALL, "--results-dir", str(results))
    assert code == 0, err
    assert "4 done, 4 skipped" in err
    assert all((results / "runs" / name).stat().st_mtime_ns == t for name, t in before.items())
    assert len(records(results)) == 8
    assert [r[0] for r in table_rows(out)] == ["iterations=5", "iterations=50"]
    # an earlier ablation is reused too, and the value written differently is the same run
    code, _, err = cli("ablate", "itq", "--vary", "iterations=50,5", *SMALL, "--results-dir", str(results))
    assert code == 0 and "hashbench: 8 skipped\n" in err


def test_cross_product_of_two_axes(cli, tmp_path, with_plugin):
    with_plugin(register_methods=lambda: [Knobs])
    results = tmp_path / "results"
    code, _, err = cli("ablate", "knobs", "--vary", "sorter=gauss,uniform", "--vary", "positives=4,16",
                         "--datasets", "synthetic", "--bits", "8", "--seeds", "0,1", "--no-progress",
                         "--results-dir", str(results))
    assert code == 0, err
    assert "8 runs (4 settings x 1 datasets x 1 bit lengths x 2 seeds)" in err
    params = sorted((r["config"]["method_params"]["sorter"], r["config"]["method_params"]["positives"])
                    for r in records(results).values())
    assert params == sorted([(s, p) for s in ("gauss", "uniform") for p in (4, 16)] * 2)
    markdown = (results / "tables" / "ablation-knobs-sorter-positives.md").read_text()
    assert markdown.splitlines()[0] == "| knobs | synthetic 8b |"
    assert [r[0] for r in table_rows(markdown)] == [
        "sorter=gauss, positives=4", "sorter=gauss, positives=16",
        "sorter=uniform, positives=4", "sorter=uniform, positives=16"]
    csv = pd.read_csv(results / "tables" / "ablation-knobs-sorter-positives.csv")
    assert list(csv[["sorter", "positives"]].itertuples(index=False, name=None)) == [
        ("gauss", 4), ("gauss", 16), ("uniform", 4), ("uniform", 16)]


def test_failed_cells_are_marked_and_the_rest_is_shown(cli, tmp_path, with_plugin):
    with_plugin(register_methods=lambda: [Knobs])
    results = tmp_path / "results"
    code, out, err = cli("ablate", "knobs", "--vary", "positives=0,4", *SMALL, "--results-dir", str(results))
    assert code == 1
    assert "4 done, 4 failed" in err and "no positives" in err
    rows = table_rows(out)
    assert rows[0] == ["positives=0", "failed", "failed"]
    assert all(re.fullmatch(rf"\*\*{CELL}\*\*", cell) for cell in rows[1][1:])
    assert "4 runs failed" in out
    csv = pd.read_csv(results / "tables" / "ablation-knobs-positives.csv")
    assert list(csv["failed"]) == [2, 2, 0, 0] and list(csv["n"]) == [0, 0, 2, 2]


def test_runs_outside_the_ablation_stay_out_of_its_table(cli, tmp_path):
    results = tmp_path / "results"
    # another method, another iterations value, and a seed the ablation does not run
    assert cli("run", "--methods", "lsh,itq", *SMALL, "--no-table", "--set", "itq.iterations=3",
               "--results-dir", str(results))[0] == 0
    assert cli("run", "--methods", "itq", "--datasets", "synthetic", "--bits", "8", "--seeds", "2",
               "--no-progress", "--no-table", "--results-dir", str(results))[0] == 0
    assert cli("run", "--methods", "itq", "--datasets", "synthetic", "--bits", "4", "--seeds", "0",
               "--no-progress", "--no-table", "--results-dir", str(results))[0] == 0
    code, out, err = cli("ablate", "itq", "--vary", "iterations=0,50", *SMALL, "--results-dir", str(results))
    assert code == 0, err
    assert [r[0] for r in table_rows(out)] == ["iterations=0", "iterations=50"]
    assert out.splitlines()[0] == "| itq | synthetic 8b | synthetic 16b |"  # no 4-bit column
    assert "lsh" not in out and "iterations=3" not in out
    csv = pd.read_csv(results / "tables" / "ablation-itq-iterations.csv")
    assert set(csv["n"]) == {2}  # the seed-2 run of iterations=50 at 8 bits is not in the mean


def test_experiment_file_and_metric(cli, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"methods: [lsh]\ndatasets: [synthetic]\nbits: [8]\nseeds: [0, 1]\n"
                   f"set:\n  itq.iterations: 7\n  synthetic.spread: 0.8\nresults_dir: {tmp_path / 'r'}\n")
    code, out, err = cli("ablate", "sh", "-c", str(exp), "--vary", "pca_dim=null,4", "--metric", "map_full",
                         "--no-progress")
    assert code == 0, err
    recs = records(tmp_path / "r")
    assert {r["config"]["method"] for r in recs.values()} == {"sh"}  # the file's methods are ignored
    assert {r["config"]["dataset_params"]["spread"] for r in recs.values()} == {0.8}
    assert len(recs) == 4
    assert (tmp_path / "r" / "tables" / "ablation-sh-pca_dim-map_full.md").exists()
    assert out.startswith("| sh | synthetic[spread=0.8] 8b |")
    assert [r[0] for r in table_rows(out)] == ["pca_dim=null", "pca_dim=4"]
    assert out.count("map_full: mean ± std") == 1
    assert "except synthetic.spread=0.8." in out  # the fixed overrides that apply, not itq's
    # a varied key replaces the file's value for it: the file's itq.iterations=7 is no run here
    code, _, err = cli("ablate", "itq", "-c", str(exp), "--vary", "iterations=1", "--no-progress")
    assert code == 0, err
    assert {r["config"]["method_params"].get("iterations") for r in records(tmp_path / "r").values()} == {None, 1}


@pytest.mark.parametrize("args, message", [
    (["itq", "--vary", "iters=1,2"], "method itq has no parameter 'iters'; its parameters, closest first: iterations"),
    (["itq", "--vary", "seed=1,2"], "(use --seeds)"),
    (["knobs", "--vary", "positive=1"], "its parameters, closest first: positives, sorter"),
    (["itq", "--vary", "iterations=5,lots"], "parameter 'iterations' expects int, got 'lots'"),
    (["itq", "--vary", "iterations=-1"], "iterations must be >= 0, got -1"),
    (["knobs", "--vary", "sorter=gauss", "--vary", "positives=1,many"], "parameter 'positives' expects int"),
    (["itqq", "--vary", "iterations=1"], "unknown method 'itqq'. Did you mean: itq?"),
    (["itq", "--vary", "iterations"], "--vary expects KEY=VALUE1,VALUE2"),
    (["itq", "--vary", "iterations=1,,2"], "empty value"),
    (["itq", "--vary", "iterations=5,5"], "iterations=5 is the same setting as iterations=5"),
    (["itq", "--vary", "iterations=1", "--vary", "iterations=2"], "--vary iterations is given twice"),
    (["itq", "--vary", "iterations=1", "--set", "itq.iterations=2"], "both set iterations"),
    (["lsh", "--vary", "iterations=1"], "method lsh has no parameters to vary"),
    (["itq"], "the following arguments are required: --vary"),
    (["itq", "--vary", "iterations=1", "--metric", "accuracy"], "unknown metric 'accuracy'"),
    (["itq", "--vary", "iterations=1", "--datasets", "digitz"], "unknown dataset 'digitz'"),
])
def test_bad_input_is_one_line_exit_2(cli, tmp_path, with_plugin, one_line_error, args, message):
    with_plugin(register_methods=lambda: [Knobs])
    code, _, err = cli("ablate", "--datasets", "synthetic", "--bits", "8", "--seeds", "0", "--no-progress",
                       "--results-dir", str(tmp_path / "r"), *args)  # the case's flags come last and win
    assert code == 2
    assert message in one_line_error(err)
    assert not (tmp_path / "r").exists()


def test_plan_resolves_values_through_the_config():
    from hashbench.ablate import plan_ablation
    from hashbench.config import Experiment

    experiment = Experiment(methods=["lsh"], datasets=["synthetic"], bits=[8], seeds=[0])
    ablation = plan_ablation("sh", ["pca_dim=null,4"], experiment)
    assert [s.label for s in ablation.settings] == ["pca_dim=null", "pca_dim=4"]
    assert [c.method_params for c in ablation.configs] == [{"pca_dim": None}, {"pca_dim": 4}]
    assert ablation.name == "ablation-sh-pca_dim"
    with pytest.raises(HashbenchError, match=re.escape("expects int | None, got 'x'")):
        plan_ablation("sh", ["pca_dim=x"], experiment)
