"""hashbench tune: search spaces as data, validation-only trials, a resumable SQLite study, tuned runs.

The tuning runs use a tiny image protocol ("tiny-tune", 4 classes of 8x8 images) and GreedyHash
on a random resnet18 at 32 px for 2-4 epochs: a trial takes about a second. The tests that start
other processes (SIGKILL and resume, two workers) install the protocol as a plugin the way every
plugin is installed (a dist-info with a ``hashbench`` entry point on a path of their own).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hashbench.config import Experiment
from hashbench.errors import HashbenchError
from hashbench.registry import registry
from hashbench.space import Range, choice, declared_space, int_range, log_uniform, parse_range, parse_space, resolve_space
from hashbench.store import RunLabel, RunStore

optuna = pytest.importorskip("optuna")

HASHBENCH = str(Path(sys.executable).with_name("hashbench"))
SMALL = ["--set", "greedyhash.backbone=resnet18", "--set", "greedyhash.pretrained=false",
         "--set", "greedyhash.input_size=32", "--set", "greedyhash.bank_views=2",
         "--set", "greedyhash.batch_size=16", "--set", "greedyhash.epochs=3"]
GRID = ["greedyhash", "--datasets", "tiny-tune", "--bits", "8", "--seeds", "0,1", *SMALL]

PLUGIN = textwrap.dedent('''
    """tiny-tune: 4 classes x 40 quadrant images 8x8 (tests of hashbench tune). With
    TINY_TUNE_POISON=1 the query split's labels and images are garbage."""
    import os
    from dataclasses import dataclass

    import numpy as np

    import hashbench
    from hashbench.components import Protocol, Split, Splits


    class TinyTune(Protocol):
        name = "tiny-tune"
        summary = "8x8 quadrant images (tune tests)"
        provides = ("images",)
        num_classes = 4

        @dataclass(frozen=True)
        class Config:
            split_seed: int = 0

        def fingerprint(self):
            return "tiny-tune-v1"

        def load(self):
            rng = np.random.default_rng(self.config.split_seed)
            y = np.repeat(np.arange(4), 40)
            x = rng.integers(0, 60, size=(len(y), 8, 8)).astype(np.uint8)
            for c in range(4):
                r, q = divmod(c, 2)
                x[y == c, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 150
            ids, pos = np.arange(len(y)), np.tile(np.arange(40), 4)
            qx, qy = x, y
            if os.environ.get("TINY_TUNE_POISON") == "1":
                qx = np.full_like(x, 255)
                qy = np.full_like(y, -7)

            def split(sel, xs=x, ys=y):
                return Split(x=xs[sel], labels=ys[sel], index=ids[sel])

            return Splits(train=split(ids[pos >= 10][::2]), val=split(ids[(pos >= 5) & (pos < 10)]),
                          query=split(ids[pos < 5], qx, qy), database=split(ids[pos >= 10]))


    @hashbench.hookimpl
    def register_datasets():
        return [TinyTune]
''')


@pytest.fixture
def tiny_tune(tmp_path_factory, monkeypatch):
    """The tiny-tune protocol installed as a plugin for this process and its children."""
    from hashbench import registry as registry_module

    root = tmp_path_factory.mktemp("plugin")
    (root / "tiny_tune_plugin.py").write_text(PLUGIN)
    info = root / "tiny_tune_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-tune-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hashbench]\ntiny = tiny_tune_plugin\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HASHBENCH_TUNE_HEARTBEAT", "1")
    registry_module.reload()
    return root


def trials(results: Path) -> list[dict]:
    """Every trial of the results folder's studies, from the SQLite database itself."""
    with sqlite3.connect(results / "tuning" / "studies.db") as db:
        rows = db.execute("SELECT t.trial_id, t.number, t.state, v.value FROM trials t "
                          "LEFT JOIN trial_values v ON v.trial_id = t.trial_id ORDER BY t.number").fetchall()
        attrs = db.execute("SELECT trial_id, key, value_json FROM trial_user_attributes").fetchall()
        system = db.execute("SELECT trial_id, key, value_json FROM trial_system_attributes").fetchall()
        params = db.execute("SELECT trial_id, param_name, param_value FROM trial_params").fetchall()
    out = []
    for trial_id, number, state, value in rows:
        out.append({"number": number, "state": state, "value": value,
                    "user": {k: json.loads(v) for t, k, v in attrs if t == trial_id},
                    "system": {k: json.loads(v) for t, k, v in system if t == trial_id},
                    "params": {k: v for t, k, v in params if t == trial_id}})
    return out


# ----------------------------------------------------------------------------- spaces

def test_every_declared_range_lies_within_its_fields_limits():
    seen = 0
    for name in registry("method").names():
        cls = registry("method").get(name)
        for field, rng in declared_space(cls.Config).items():
            resolve_space(f"method {name}", cls.Config, {field: rng})  # raises when outside the limits
            default = getattr(cls.Config(), field)
            assert rng.contains(default), f"{name}.{field}: default {default} outside {rng.describe()}"
            seen += 1
    assert seen >= 10
    assert set(declared_space(registry("method").get("nsh").Config)) == {"lr", "positives", "temperature"}
    assert declared_space(registry("method").get("itq").Config) == {}


def test_ranges_parse_and_print_as_space_spells_them():
    cases = {"log:1e-05..0.01": log_uniform(1e-5, 1e-2), "0.05..1": Range("float", 0.05, 1.0),
             "int:1..8": int_range(1, 8), "int-log:1..64": int_range(1, 64, log=True),
             "softsort|exact": choice("softsort", "exact"), "true|false": choice(True, False)}
    for text, rng in cases.items():
        assert parse_range(text, "x") == rng
        assert parse_range(rng.describe(), "x") == rng
    assert parse_range("off", "x") is None
    for bad in ("1..", "log:-1..2", "2..1", "int:1.5..3", "x:1..2", "a"):
        with pytest.raises(HashbenchError, match="--space lr"):
            parse_space([f"lr={bad}"])


def test_space_overrides_are_checked_against_the_method(cli):
    cls = registry("method").get("nsh").Config
    space = resolve_space("method nsh", cls, {"lr": log_uniform(1e-4, 1e-3), "temperature": None,
                                              "epochs": int_range(5, 30)})
    assert space == {"lr": log_uniform(1e-4, 1e-3), "positives": int_range(1, 8), "epochs": int_range(5, 30)}
    with pytest.raises(HashbenchError, match="method nsh has no parameter 'lrr'"):
        resolve_space("method nsh", cls, {"lrr": log_uniform(1e-4, 1e-3)})
    with pytest.raises(HashbenchError, match="temperature must be > 0, got -1"):
        resolve_space("method nsh", cls, {"temperature": Range("float", -1, 1)})
    with pytest.raises(HashbenchError, match="score must be one of dot, cosine"):
        resolve_space("method nsh", cls, {"score": choice("dot", "euclid")})
    code, out, _ = cli("show", "cibhash")
    assert code == 0 and "tune log:1e-05..0.01" in out and "tune 0.05..1" in out


def test_plan_skips_methods_without_a_space_and_validates_deep_ones_every_epoch():
    from hashbench.tune import plan

    experiment = Experiment(methods=["itq", "greedyhash"], datasets=["fashion-mnist"], bits=[16, 32], seeds=[0])
    with pytest.raises(HashbenchError, match="--space nope: no tuned method has that parameter"):
        plan(experiment, {"nope": None})
    specs, notes = plan(Experiment(methods=["itq", "lsh"], datasets=["digits"], bits=[16], seeds=[0]), {})
    assert specs == [] and len(notes) == 2 and notes[0].startswith("itq: nothing to tune")
    specs, notes = plan(experiment, {"itq.iterations": int_range(1, 50), "lr": log_uniform(1e-4, 1e-2)})
    assert [(s.method, s.bits) for s in specs] == [("itq", 16), ("itq", 32), ("greedyhash", 16), ("greedyhash", 32)]
    assert specs[0].space == {"iterations": int_range(1, 50)} and "itq.val_every" not in specs[0].overrides
    assert specs[2].space["lr"] == log_uniform(1e-4, 1e-2) and specs[2].overrides["greedyhash.val_every"] == 1
    assert specs[2].name != specs[3].name and specs[2].name.startswith("greedyhash-fashion-mnist-16b-")


# ----------------------------------------------------------------------------- tuning

def test_tuning_never_reads_the_queries(tiny_tune, tmp_path, monkeypatch):
    """The same study on a protocol whose query split is garbage gives the same trials."""
    from hashbench.tune import plan, run_study

    experiment = Experiment(methods=["greedyhash"], datasets=["tiny-tune"], bits=[8], seeds=[0],
                            overrides={a.split("=")[0]: _value(a.split("=")[1]) for a in SMALL[1::2]})
    (spec,), _ = plan(experiment, {})
    clean = run_study(spec, tmp_path / "clean", trials=3, log=lambda _: None)
    from hashbench import runner

    runner._load_splits.cache_clear()
    monkeypatch.setenv("TINY_TUNE_POISON", "1")
    poisoned = run_study(spec, tmp_path / "poisoned", trials=3, log=lambda _: None)
    assert runner._load_splits("tiny-tune", '{"split_seed": 0}')[1].query.labels[0] == -7  # the poison was served
    values = [[t["value"] for t in trials(tmp_path / name)] for name in ("clean", "poisoned")]
    assert values[0] == values[1] and len(values[0]) == 3 and all(v is not None for v in values[0])
    assert clean["best_params"] == poisoned["best_params"]


def _value(text: str):
    return {"false": False, "true": True}.get(text, int(text) if text.isdigit() else text)


def test_tune_writes_a_study_a_tuned_experiment_and_tuned_runs(tiny_tune, tmp_path, cli):
    results = tmp_path / "results"
    code, out, err = cli("tune", *GRID, "--trials", "3", "--results-dir", str(results), "--no-progress")
    assert code == 0, err
    assert (results / "tuning" / "studies.db").exists()
    (yaml_file,) = (results / "tuning").glob("greedyhash-tiny-tune-8b-*.yaml")
    assert yaml_file.stem in out and "3 trials" in out
    records = RunStore(results).records()
    assert len(records) == 2 and {r.label.method_label() for r in records} == {"greedyhash[tuned]"}
    assert all(r.label.ablation is None and r.config["tag"] == "tuned" for r in records)
    assert all(r.config["method_params"]["val_every"] == 1 for r in records)
    assert "greedyhash[tuned]" in (results / "tables" / "map.md").read_text()  # tune rewrote the tables
    # the experiment file reruns exactly these runs
    code, _, err = cli("run", "-c", str(yaml_file), "--results-dir", str(results), "--no-progress")
    assert code == 0 and "2 skipped" in err
    assert "greedyhash[tuned]" in (results / "tables" / "map.md").read_text()
    # the same arguments continue the study: the budget is spent, nothing more runs
    before = trials(results)
    assert cli("tune", *GRID, "--trials", "3", "--results-dir", str(results), "--no-progress")[0] == 0
    assert trials(results) == before
    # a larger budget continues the same study
    assert cli("tune", *GRID, "--trials", "4", "--results-dir", str(results), "--no-progress")[0] == 0
    after = trials(results)
    assert after[:len(before)] == before and sum(t["state"] in ("COMPLETE", "PRUNED") for t in after) == 4


def test_a_budget_in_seconds_stops_the_study(tiny_tune, tmp_path, cli):
    results = tmp_path / "results"
    code, out, _ = cli("tune", *GRID, "--budget", "2", "--no-final", "--results-dir", str(results), "--no-progress")
    assert code == 0
    done = [t for t in trials(results) if t["state"] in ("COMPLETE", "PRUNED")]
    assert 1 <= len(done) < 20
    assert not list((results / "runs").glob("*.json")) if (results / "runs").exists() else True


def test_tune_checks_its_arguments(cli, monkeypatch):
    code, _, err = cli("tune", "greedyhash", "--trials", "2", "--budget", "5")
    assert code == 2 and "not allowed with argument" in err
    code, _, err = cli("tune", "greedyhash")
    assert code == 2 and "give the budget as --trials N or --budget SECONDS" in err
    code, _, err = cli("tune", "itq", "--trials", "2")
    assert code == 2 and "itq: nothing to tune" in err and "nothing to tune: no method" in err
    code, _, err = cli("tune", "greedyhash", "--trials", "2", "--space", "lr=2..1")
    assert code == 2 and "--space lr: a range needs low < high, got 2..1" in err
    monkeypatch.setitem(sys.modules, "optuna", None)  # not installed
    code, _, err = cli("tune", "greedyhash", "--trials", "2")
    assert code == 2 and "pip install 'hashbench[tune]'" in err


def test_a_killed_tune_resumes_and_counts_no_trial_twice(tiny_tune, tmp_path):
    """SIGKILL mid-trial, then the same command: the study keeps its finished trials, the
    killed one is failed (its heartbeat stopped) and retried once with the same values, and
    exactly the budget of trials is counted."""
    results = tmp_path / "results"
    args = [HASHBENCH, "tune", *GRID, "--set", "greedyhash.epochs=6", "--trials", "5", "--no-final",
            "--results-dir", str(results)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if (results / "tuning" / "studies.db").exists():
                now = _safe_trials(results)
                states = [t["state"] for t in now]
                # mid-trial: the running one has drawn its values (it is training)
                if states.count("COMPLETE") + states.count("PRUNED") >= 2 and states[-1:] == ["RUNNING"] \
                        and now[-1]["params"]:
                    break
        else:
            pytest.fail("the tune never reached a running trial after two finished ones")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed = trials(results)
    running = [t for t in killed if t["state"] == "RUNNING"]
    assert len(running) == 1
    time.sleep(3.5)  # its heartbeat is now older than the grace period (3 x 1 s)
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    final = trials(results)
    finished_before = [t for t in killed if t["state"] != "RUNNING"]
    assert [t for t in final if t["number"] in {f["number"] for f in finished_before}] == finished_before
    failures = [t for t in final if t["state"] == "FAIL"]
    assert len(failures) == 1, (killed, final, done.stderr)
    (failed,) = failures
    assert failed["number"] == running[0]["number"]
    retries = [t for t in final if t["system"].get("failed_trial") == failed["number"]]
    assert len(retries) == 1 and retries[0]["params"] == failed["params"]
    assert sum(t["state"] in ("COMPLETE", "PRUNED") for t in final) == 5
    assert len({t["number"] for t in final}) == len(final)


def _safe_trials(results: Path) -> list[dict]:
    try:
        return trials(results)
    except sqlite3.OperationalError:  # the tables are being created
        return []


def test_two_workers_share_one_study(tiny_tune, tmp_path):
    results = tmp_path / "results"
    done = subprocess.run([HASHBENCH, "tune", *GRID, "--set", "greedyhash.epochs=4", "--trials", "6", "--jobs", "2",
                           "--no-final", "--results-dir", str(results)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    final = trials(results)
    counted = [t for t in final if t["state"] in ("COMPLETE", "PRUNED")]
    assert 6 <= len(counted) <= 7  # both may start the last one: the summary keeps the first 6
    assert len({t["number"] for t in final}) == len(final)
    assert {t["user"]["worker"] for t in counted} == {0, 1}
    assert len({t["user"]["pid"] for t in counted}) == 2
    assert "6 trials" in done.stdout


# ----------------------------------------------------------------------------- the tag

def test_a_tagged_run_is_its_own_row_and_no_ablation(record_for, tmp_path):
    (config,) = Experiment(methods=["itq"], datasets=["synthetic"], bits=[8], seeds=[0],
                           overrides={"itq.iterations": 3}, tag="tuned").grid()
    label = RunLabel.of(config.to_dict())
    assert label.method_label() == "itq[tuned]" and label.ablation is None and label.changed == {"iterations": 3}
    (untagged,) = Experiment(methods=["itq"], datasets=["synthetic"], bits=[8], seeds=[0],
                             overrides={"itq.iterations": 3}).grid()
    assert "tag" not in untagged.to_dict() and untagged.run_id != config.run_id
    store = RunStore(tmp_path)
    store.write(record_for(config))
    assert store.records()[0].label.tag == "tuned"
    # beside the default runs, the tagged ones make no ablation and join no baseline
    from hashbench.plots import ablations_from_records

    (default,) = Experiment(methods=["itq"], datasets=["synthetic"], bits=[8], seeds=[0]).grid()
    store.write(record_for(untagged))
    store.write(record_for(default))
    (ablation,) = ablations_from_records(store.records())
    assert ablation.settings == ["iterations=3", "iterations=50"] or set(ablation.settings) == {"iterations=3",
                                                                                               "iterations=50"}
    assert all(cell["n"] == 1 for cell in ablation.cells.values())
    with pytest.raises(HashbenchError, match="tag must be a lower-case name"):
        Experiment(methods=["itq"], datasets=["synthetic"], bits=[8], seeds=[0], tag="Tuned!").grid()


def test_a_study_whose_trials_all_fail_stops_and_says_why(cli, tmp_path):
    """Every proposed value breaks a rule of the method (positives <= batch_size - 1): the
    study stops after MAX_FAILURES failures instead of trying forever."""
    from hashbench.tune import MAX_FAILURES

    code, out, err = cli("tune", "nsh", "--bits", "16", "--trials", "3", "--set", "nsh.batch_size=4",
                         "--space", "positives=int:4..8", "--space", "lr=off", "--space", "temperature=off",
                         "--results-dir", str(tmp_path))
    assert code == 0
    assert f"stopped: {MAX_FAILURES} trials failed, 0 counted" in err
    assert "positives must be <= batch_size - 1 = 3" in err
    assert "no trial completed" in out
    assert [t["state"] for t in trials(tmp_path)] == ["FAIL"] * MAX_FAILURES


def test_an_experiment_files_space_narrows_the_search_and_only_tune_reads_it(tiny_tune, tmp_path, cli):
    experiment = tmp_path / "tune.yaml"
    experiment.write_text("datasets: [tiny-tune]\nbits: [8]\nseeds: [0]\nspace:\n  greedyhash.lr: log:1e-4..2e-4\n"
                          "  greedyhash.alpha: 'off'\n")
    results = tmp_path / "results"
    code, _, err = cli("tune", "greedyhash", "-c", str(experiment), *SMALL, "--trials", "2", "--no-final",
                       "--results-dir", str(results), "--no-progress")
    assert code == 0, err
    done = trials(results)
    assert len(done) == 2 and all(set(t["params"]) == {"lr"} and 1e-4 <= t["params"]["lr"] <= 2e-4 for t in done)
    code, _, err = cli("run", "-c", str(experiment), "--methods", "itq", "--results-dir", str(results))
    assert code == 2 and "'space' is read by hashbench tune only" in err
