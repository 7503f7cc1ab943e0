"""Progress lines for logs: a line per finished run and cache pass when stderr is no terminal."""

from __future__ import annotations

import io
import re

import pytest

from hashbench.progress import StepLog, duration, logs_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("seconds, text", [(0, "0.0s"), (42.04, "42.0s"), (185, "3m05s"), (3725, "1h02m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_lines_only_when_asked_and_stderr_is_no_terminal():
    assert logs_progress(True, io.StringIO()) is True
    assert logs_progress(True, _Terminal()) is False  # the progress bar shows it there
    assert logs_progress(False, io.StringIO()) is False  # --no-progress


def test_the_estimate_weights_steps_by_their_group_and_work(monkeypatch):
    clock = iter([0.0, 10.0, 30.0, 31.0])
    monkeypatch.setattr("hashbench.progress.time.perf_counter", lambda: next(clock))
    out = io.StringIO()
    log = StepLog("run", [("a1", "slow", 1), ("b1", "fast", 1), ("a2", "slow", 1), ("b2", "fast", 1)],
                  "runs", stream=out)
    log.done("a1", 10.0, "a1 done in 10.0s")  # elapsed 10 s; slow steps take 10 s, other groups the mean
    log.done("b1", 20.0)  # elapsed 30 s; fast steps take 20 s
    log.done("a2", None, "a2 failed")  # elapsed 31 s; a step without seconds teaches nothing
    lines = out.getvalue().splitlines()
    assert lines[0] == "hashbench: run 1/4 done: a1 done in 10.0s; elapsed 10.0s, about 30.0s left"
    # left after b1: a2 (slow, 10 s) + b2 (fast, 20 s) = 30 s, scaled by wall 30 s / steps 30 s
    assert lines[1] == "hashbench: run 2/4 done: b1; elapsed 30.0s, about 30.0s left"
    assert lines[2] == "hashbench: run 3/4 done: a2 failed; elapsed 31.0s, about 20.7s left"


def test_disabled_prints_nothing():
    out = io.StringIO()
    log = StepLog("run", [("a", None, 1)], "runs", enabled=False, stream=out)
    log.done("a", 1.0)
    assert out.getvalue() == ""


def test_a_grid_logs_each_run_and_each_cache_pass(cli, tmp_path, with_plugin, tiny_images, capsys):
    """What a log file of `hashbench run` shows (stderr captured: no terminal)."""
    with_plugin(register_datasets=lambda: [tiny_images])
    code, _, err = cli("run", "--methods", "itq,lsh", "--datasets", "tiny-images", "--bits", "8", "--seeds", "0,1",
                       "--backbone", "resnet18", "--pretrained", "false", "--input-size", "32",
                       "--no-table", "--results-dir", str(tmp_path))
    assert code == 0, err
    passes = re.findall(r"hashbench: cache pass (\d)/4 done: tiny-images resnet18 clean (\w+) \(pooled\): "
                        r"(\d+) images in [\d.]+s; elapsed [\dms.]+, about [\dms.]+ left", err)
    assert [(i, split) for i, split, _ in passes] == [("1", "train"), ("2", "val"), ("3", "query"), ("4", "database")]
    runs = re.findall(r"hashbench: run (\d)/4 done: (\w+)-tiny-images-8b-s\d-\w+ done in [\d.]+s; "
                      r"elapsed [\dms.]+, about [\dms.]+ left", err)
    assert [i for i, _ in runs] == ["1", "2", "3", "4"] and {m for _, m in runs} == {"itq", "lsh"}
    last = next(line for line in reversed(err.splitlines()) if line.startswith("hashbench: run 4/4"))
    assert last.endswith("about 0.0s left")

    code, _, err = cli("run", "--methods", "itq,lsh", "--datasets", "tiny-images", "--bits", "8", "--seeds", "0,1",
                       "--backbone", "resnet18", "--pretrained", "false", "--input-size", "32",
                       "--no-table", "--no-progress", "--results-dir", str(tmp_path / "quiet"))
    assert code == 0 and "cache pass" not in err and "hashbench: run " not in err
