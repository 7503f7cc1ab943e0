"""The critical-difference diagram (Demšar 2006): Nemenyi's CD and its groups, the choice of
methods and cells to rank, the figure `hashbench plot` draws and the report shows."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hashbench import registry as registry_module
from hashbench.cli import main
from hashbench.plots import (
    DPI,
    baseline_scores,
    cd_layout,
    metric_by_bits,
    plan_plots,
    rank_data,
    rank_selection,
)
from hashbench.stats import RankTest, friedman_nemenyi

METHODS = ["itq", "lsh", "pcah", "sh"]


@pytest.fixture(scope="module")
def ranked_results(tmp_path_factory) -> Path:
    """lsh, itq, pcah and sh on digits at 16 and 32 bits, seeds 0-2 (24 runs, a few seconds)."""
    root = tmp_path_factory.mktemp("cd") / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HASHBENCH_PLUGINS", raising=False)
        mp.setenv("HASHBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        registry_module.reload()
        assert main(["run", "--methods", ",".join(METHODS), "--datasets", "digits", "--bits", "16,32",
                     "--seeds", "0,1,2", "--no-progress", "--no-table", "--results-dir", str(root)]) == 0
    return root


def records_of(results: Path):
    from hashbench.store import RunStore

    return RunStore(results).existing_records()


# ----------------------------------------------------------------------------- the test

def test_critical_difference_is_demsars_worked_value():
    """Demšar (2006), section 3.2.4: 4 methods over 14 data sets, alpha 0.05: q = 2.569, CD = 1.25."""
    cells = [f"set{i}" for i in range(14)]
    rng = np.random.default_rng(0)
    test = friedman_nemenyi(rng.random((14, 4)), ["a", "b", "c", "d"], cells)
    assert test.critical_difference == pytest.approx(1.25, abs=0.005)
    assert test.critical_difference / math.sqrt(4 * 5 / (6 * 14)) == pytest.approx(2.569, abs=0.001)
    assert test.cells == tuple(cells) and test.alpha == 0.05


def test_ranks_statistic_and_groups_of_a_hand_made_example():
    """a always first, b second, c and d share the last places: ranks 1, 2, 3.5, 3.5; Friedman's
    chi-square 12N/(k(k+1)) (sum R^2 - k(k+1)^2/4) = 37.8; a-b (1.0 apart) and c-d (0 apart)
    lie within CD = 1.25, b-c (1.5) does not."""
    rows = [[0.9, 0.8, 0.2, 0.1] if i % 2 else [0.9, 0.8, 0.1, 0.2] for i in range(14)]
    test = friedman_nemenyi(np.array(rows), ["a", "b", "c", "d"], [f"set{i}" for i in range(14)])
    assert test.average_ranks == {"a": 1.0, "b": 2.0, "c": 3.5, "d": 3.5}
    assert test.statistic == pytest.approx(37.8)
    assert test.p_value < 1e-6
    assert test.groups() == [("a", "b"), ("c", "d")]
    # a chain: each run of methods within one CD of its first is a bar, none inside another
    chain = RankTest({"a": 1.0, "b": 1.5, "c": 2.4, "d": 3.6, "e": 4.0}, ("x", "y"), 1.0, 0.5, 1.25, 0.05)
    assert chain.groups() == [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")]


# ----------------------------------------------------------------------------- what is ranked

def scores_frame(cells: dict[tuple[str, int], list[str]]) -> pd.DataFrame:
    """Cells x methods, 0.5 where the method ran in the cell, NaN elsewhere."""
    methods = sorted({m for ms in cells.values() for m in ms})
    index = pd.MultiIndex.from_tuples(list(cells), names=["dataset", "bits"])
    return pd.DataFrame([[0.5 if m in ms else np.nan for m in methods] for ms in cells.values()],
                        index=index, columns=methods)


def test_selection_maximises_methods_times_cells():
    nine = [f"m{i}" for i in range(9)]
    four = ["m0", "m1", "m2", "m3"]
    # as in the reference results: 9 methods on 3 feature cells, 4 of them also on 3 pixel cells
    cells = {**{("features", b): nine for b in (16, 32, 64)}, **{("pixels", b): four for b in (16, 32, 64)}}
    assert rank_selection(scores_frame(cells)) == (nine, [("features", 16), ("features", 32), ("features", 64)])
    # two more pixel cells: 4 x 8 = 32 beats 9 x 3 = 27
    cells |= {("pixels", 128): four, ("pixels", 256): four}
    methods, chosen = rank_selection(scores_frame(cells))
    assert methods == four and len(chosen) == 8
    # a tie of the product (3 x 4 = 4 x 3): more cells win
    tie = {**{("a", b): ["x", "y", "z", "w"] for b in (8, 16, 32)}, ("b", 8): ["x", "y", "z"]}
    assert rank_selection(scores_frame(tie)) == (["x", "y", "z"], [("a", 8), ("a", 16), ("a", 32), ("b", 8)])
    # no cell holds the best set itself: the intersection of two cells' sets is found
    split = {("d", 16): ["a", "b", "c", "d"], ("d", 32): ["a", "b", "c", "e"]}
    assert rank_selection(scores_frame(split)) == (["a", "b", "c"], [("d", 16), ("d", 32)])
    # under 3 methods or under 2 cells: nothing to rank
    assert rank_selection(scores_frame({("d", 16): ["a", "b"], ("d", 32): ["a", "b"]})) is None
    assert rank_selection(scores_frame({("d", 16): ["a", "b", "c"], ("d", 32): ["a", "b", "d"]})) is None
    assert rank_selection(scores_frame({("d", 16): ["a", "b", "c", "d"]})) is None


def record(method, bits, seed, value, method_params=None):
    """A minimal done record (an old-format one, migrated when read)."""
    return {"run_id": f"{method}-{bits}-{seed}-{value}", "status": "done",
            "config": {"method": method, "dataset": "synthetic", "bits": bits, "seed": seed,
                       "method_params": method_params or {}, "dataset_params": {}},
            "metrics": {"map": value, "map_full": value, "map_tie_aware": value, "precision_h2": 0.1,
                        "recall_h2": 0.2}}


def test_scores_are_the_baselines_means_and_the_reason_when_none():
    records = [record(m, bits, seed, value + 0.01 * seed)
               for m, value in (("lsh", 0.2), ("itq", 0.6), ("pcah", 0.4)) for bits in (8, 16) for seed in (0, 1)]
    records.append(record("itq", 8, 0, 0.99, method_params={"iterations": 3}))  # an ablation variant
    scores = baseline_scores(records)
    assert list(scores.columns) == ["itq", "lsh", "pcah"]  # itq[iterations=3] is not a method here
    assert list(scores.index) == [("synthetic", 8), ("synthetic", 16)]
    assert scores.loc[("synthetic", 8), "itq"] == pytest.approx(0.605)
    ranked = rank_data(records)
    assert ranked.test.average_ranks == {"itq": 1.0, "pcah": 2.0, "lsh": 3.0}
    assert ranked.cells == [("synthetic", 8), ("synthetic", 16)] and ranked.left_out_methods == []
    reason = rank_data([r for r in records if r["config"]["method"] != "pcah"])
    assert isinstance(reason, str) and reason.startswith("No critical-difference diagram")
    assert "2 methods over 2 cells" in reason


# ----------------------------------------------------------------------------- figure and report

def test_plot_draws_the_diagram_of_the_tables_means(cli, ranked_results):
    from PIL import Image

    code, out, err = cli("plot", "--results-dir", str(ranked_results), "--format", "png")
    assert code == 0, err
    path = ranked_results / "plots" / "cd-diagram.png"
    assert str(path) in out.splitlines()
    (plot,) = [p for p in plan_plots(records_of(ranked_results), ranked_results) if p.kind == "cd"]
    data = plot.data
    assert data.methods == METHODS and data.cells == [("digits", 16), ("digits", 32)]
    # the ranks are those of the table's means, per cell
    table = metric_by_bits(records_of(ranked_results))["digits"].set_index(["bits", "method"])["mean"]
    ranks = np.mean([pd.Series({m: table[bits, m] for m in METHODS}).rank(ascending=False) for bits in (16, 32)],
                    axis=0)
    assert data.test.average_ranks == pytest.approx(dict(zip(METHODS, ranks)))
    assert list(data.test.average_ranks) == sorted(METHODS, key=lambda m: data.test.average_ranks[m])
    for words in ("Friedman chi-square", f"CD = {data.test.critical_difference:.3f}", "N = 2 cells",
                  "k = 4 methods", "alpha = 0.05", "Cells: digits at 16, 32 bits"):
        assert words in plot.caption
    with Image.open(path) as image:  # drawn at the diagram's own size
        width, height = cd_layout(data)["size"]
        assert image.size[0] == pytest.approx(width * DPI, abs=1) and image.size[1] == pytest.approx(height * DPI, abs=1)
    code, out, err = cli("plot", "--results-dir", str(ranked_results), "--format", "svg", "--metric", "map_full")
    assert code == 0, err
    assert str(ranked_results / "plots" / "cd-diagram-map_full.svg") in out.splitlines()


def test_diagram_draws_labels_ranks_groups_and_the_cd_bar(ranked_results):
    from matplotlib.figure import Figure

    from hashbench.plots import _draw_cd

    (plot,) = [p for p in plan_plots(records_of(ranked_results), ranked_results) if p.kind == "cd"]
    ax = Figure().add_subplot()
    _draw_cd(ax, plot)
    texts = {t.get_text() for t in ax.texts}
    ranks = plot.data.test.average_ranks
    assert {f"{m} ({r:.2f})" for m, r in ranks.items()} <= texts
    assert {"1", "2", "3", "4", f"CD = {plot.data.test.critical_difference:.2f}"} <= texts
    bars = [line for line in ax.lines if line.get_linewidth() == 4]
    assert len(bars) == len(plot.data.test.groups())
    for bar, group in zip(bars, plot.data.test.groups()):  # each bar spans its group's ranks
        xs = bar.get_xdata()
        assert xs[0] < ranks[group[0]] and xs[1] > ranks[group[-1]]
    # each name's line ends at its rank on the axis: the better half's names on the left
    left = [t for t in ax.texts if t.get_ha() == "right"]
    assert {t.get_text().split(" ")[0] for t in left} == set(list(ranks)[:2])


def test_report_shows_the_diagram_and_the_procedure(ranked_results):
    from hashbench.report import write_report

    page, files = write_report(ranked_results)
    text = page.read_text()
    figure = re.search(r'<figure id="plot-cd-diagram"><img alt="[^"]*" src="data:image/png;base64,([^"]+)">'
                       r"<figcaption>(.*?)</figcaption>", text)
    assert figure is not None
    assert base64.b64decode(figure.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Friedman chi-square" in figure.group(2)
    comparison = text[text.index('<section id="tables">'):text.index('<section id="plots">')]
    assert 'id="plot-cd-diagram"' in comparison  # shown with the comparison table, once
    assert text.count('id="plot-cd-diagram"') == 1
    assert "Nemenyi&#x27;s critical difference (Friedman&#x27;s test first)" in comparison
    assert re.search(r"\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\]", comparison)  # every cell with its interval
    assert ranked_results / "plots" / "cd-diagram.png" in files
