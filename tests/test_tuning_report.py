"""The tuning history of ``hashbench plot`` and the report's Tuning section, from a study
storage made here with Optuna (trials in known states and values): the plotted running best
is the trials' own, the figures are written, the page shows them with a row per study, and a
folder without studies shows neither."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

from hashbench.config import Experiment
from hashbench.store import RunStore

optuna = pytest.importorskip("optuna")

# per study: (method, bits, [(state, value, iterations)]), trials in order
STUDIES = {
    "itq-synthetic-8b-aaaaaaaaaaaa": ("itq", 8, [("complete", 0.3, 10), ("pruned", 0.25, 20), ("complete", 0.5, 30),
                                                 ("fail", None, 40), ("complete", 0.4, 50)]),
    "lsh-synthetic-8b-bbbbbbbbbbbb": ("lsh", 8, [("fail", None, 1), ("complete", 0.2, 2), ("pruned", None, 3),
                                                 ("complete", 0.1, 4)]),
    "itq-synthetic-16b-cccccccccccc": ("itq", 16, [("complete", 0.7, 5)]),
}
RUNNING_BEST = {"itq-synthetic-8b-aaaaaaaaaaaa": [0.3, 0.3, 0.5, 0.5, 0.5],
                "lsh-synthetic-8b-bbbbbbbbbbbb": [None, 0.2, 0.2, 0.2],
                "itq-synthetic-16b-cccccccccccc": [0.7]}
TUNING_FIGURES = ["tuning-synthetic-8b", "tuning-synthetic-16b"]  # by (dataset, bits)


def write_runs(folder: Path, record_for) -> None:
    """lsh and itq at 8 and 16 bits (seed 0), and itq[tuned] at 8 bits (seeds 0, 1)."""
    store = RunStore(folder)
    configs = Experiment(methods=["lsh", "itq"], datasets=["synthetic"], bits=[8, 16], seeds=[0]).grid()
    configs += Experiment(methods=["itq"], datasets=["synthetic"], bits=[8], seeds=[0, 1], tag="tuned").grid()
    for i, config in enumerate(configs):
        store.write(record_for(config, map_value=0.1 + 0.05 * i))


def write_studies(folder: Path) -> None:
    from hashbench.tune import storage

    states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
              "fail": optuna.trial.TrialState.FAIL}
    space = {"iterations": optuna.distributions.IntDistribution(1, 100)}
    for name, (method, bits, trials) in STUDIES.items():
        study = optuna.create_study(study_name=name, storage=storage(folder), direction="maximize")
        study.set_user_attr("spec", {"method": method, "dataset": "synthetic", "bits": bits})
        for state, value, iterations in trials:
            study.add_trial(optuna.trial.create_trial(state=states[state], value=value,
                                                      params={"iterations": iterations}, distributions=space))


@pytest.fixture
def tuned(tmp_path, record_for) -> Path:
    """A results folder with runs and three studies (two cells: synthetic at 8 and 16 bits)."""
    write_runs(tmp_path, record_for)
    write_studies(tmp_path)
    (tmp_path / "tuning" / "itq-synthetic-8b-aaaaaaaaaaaa.yaml").write_text("methods: [itq]\n")  # as tune writes
    return tmp_path


@pytest.fixture
def untuned(tmp_path_factory, record_for) -> Path:
    """The same runs, without studies."""
    folder = tmp_path_factory.mktemp("untuned")
    write_runs(folder, record_for)
    return folder


def test_the_figure_plots_the_trials_running_best(tuned):
    from matplotlib.figure import Figure

    from hashbench.plots import _draw_tuning, plan_plots

    plots = [p for p in plan_plots(RunStore(tuned).existing_records(), tuned) if p.kind == "tuning"]
    assert [p.stem for p in plots] == TUNING_FIGURES
    eight = plots[0]
    assert (eight.dataset, eight.bits) == ("synthetic", 8)
    assert [line.label for line in eight.data] == ["itq", "lsh"]
    for plot in plots:
        for line in plot.data:
            method, bits, trials = STUDIES[line.study]
            assert (line.method, line.bits) == (method, bits)
            assert line.states == [state for state, _, _ in trials]
            assert line.best == RUNNING_BEST[line.study]
    assert "VALIDATION" in eight.caption
    assert "complete / pruned / failed: itq 3 / 1 / 1; lsh 2 / 1 / 1." in eight.caption
    # what is drawn: the running best as a step line (NaN before the first complete trial),
    # the complete trials as dots, each method's counted trials (complete + pruned) in the legend
    fig = Figure()
    ax = fig.add_subplot()
    _draw_tuning(ax, eight, {})
    steps = {line.get_label(): line for line in ax.get_lines() if line.get_drawstyle() == "steps-post"}
    assert sorted(steps) == ["itq (4 trials counted)", "lsh (3 trials counted)"]
    for label, study in (("itq (4 trials counted)", "itq-synthetic-8b-aaaaaaaaaaaa"),
                         ("lsh (3 trials counted)", "lsh-synthetic-8b-bbbbbbbbbbbb")):
        drawn = [None if math.isnan(y) else y for y in steps[label].get_ydata()]
        assert list(steps[label].get_xdata()) == list(range(len(STUDIES[study][2])))
        assert drawn == RUNNING_BEST[study]
    dots = [list(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines() if line.get_marker() == "o"]
    assert [(0, 0.3), (2, 0.5), (4, 0.4)] in dots and [(1, 0.2), (3, 0.1)] in dots
    pruned = [list(line.get_xdata()) for line in ax.get_lines() if line.get_marker() == "x" and len(line.get_xdata())]
    failed = [list(line.get_xdata()) for line in ax.get_lines() if line.get_marker() == "v" and len(line.get_xdata())]
    assert sorted(pruned) == [[1], [2]] and sorted(failed) == [[0], [3]]


def test_plot_writes_the_tuning_figures(cli, tuned, untuned):
    code, out, err = cli("plot", "--results-dir", str(tuned), "--format", "png")
    assert code == 0, err
    written = {Path(line).name for line in out.splitlines()}
    assert {f"{stem}.png" for stem in TUNING_FIGURES} <= written
    for stem in TUNING_FIGURES:
        assert (tuned / "plots" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same runs without studies: the same figures less the tuning ones, no study storage made
    code, out, err = cli("plot", "--results-dir", str(untuned), "--format", "png")
    assert code == 0, err
    assert {Path(line).name for line in out.splitlines()} == written - {f"{stem}.png" for stem in TUNING_FIGURES}
    assert not (untuned / "tuning").exists()


def test_report_has_the_tuning_section_and_study_table(tuned):
    from hashbench.report import write_report

    page, _ = write_report(tuned)
    text = page.read_text()
    assert '<a href="#tuning">Tuning</a>' in text
    section = text[text.index('<section id="tuning">'):text.index('<section id="protocol">')]
    assert "validation split only" in section and "<code>&lt;method&gt;[tuned]</code>" in section
    for stem in TUNING_FIGURES:
        assert f'<figure id="plot-{stem}"><img' in section
        assert f'id="plot-{stem}"' not in text[text.index('<section id="plots">'):text.index('<section id="tuning">')]
    rows = {re.search(r"<code>([^<]+)</code>", row).group(1): re.findall(r"<td[^>]*>(.*?)</td>", row)
            for row in re.findall(r"<tr><td><code>.*?</tr>", section)}
    # study, method, dataset, bits, counted, complete / pruned / failed, best, best trial, values, file, tuned runs
    assert rows == {
        "itq-synthetic-16b-cccccccccccc": ["<code>itq-synthetic-16b-cccccccccccc</code>", "itq", "synthetic", "16", "1",
                                           "1 / 0 / 0", "0.7000", "0", "iterations=5", "–", "0"],
        "itq-synthetic-8b-aaaaaaaaaaaa": ["<code>itq-synthetic-8b-aaaaaaaaaaaa</code>", "itq", "synthetic", "8", "4",
                                          "3 / 1 / 1", "0.5000", "2", "iterations=30",
                                          "<code>tuning/itq-synthetic-8b-aaaaaaaaaaaa.yaml</code>", "2"],
        "lsh-synthetic-8b-bbbbbbbbbbbb": ["<code>lsh-synthetic-8b-bbbbbbbbbbbb</code>", "lsh", "synthetic", "8", "3",
                                          "2 / 1 / 1", "0.2000", "1", "iterations=2", "–", "0"],
    }
    assert "counted trials differ in synthetic 8 bits" in section  # itq 4, lsh 3
    assert "<td>itq[tuned]</td>" in text[text.index('<section id="tables">'):text.index('<section id="plots">')]


def test_report_without_studies_has_no_tuning_section(untuned):
    from hashbench.report import write_report

    page, files = write_report(untuned)
    text = page.read_text()
    assert 'id="tuning"' not in text and 'href="#tuning"' not in text and "tuning-" not in text
    assert not any(p.name.startswith("tuning-") for p in files)
    assert not (untuned / "tuning").exists()


def test_a_study_storage_without_optuna_is_a_one_line_error(cli, tuned, monkeypatch, one_line_error):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna fails
    for command in ("plot", "report"):
        code, _, err = cli(command, "--results-dir", str(tuned))
        assert code == 2 and "needs Optuna" in one_line_error(err)
