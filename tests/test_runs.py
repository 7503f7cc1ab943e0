"""Grids, run ids, records on disk, reruns, failures, concurrency, and the run/table commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hashbench.components import HashMethod
from hashbench.config import Experiment, RunConfig, load_experiment_file, parse_set
from hashbench.errors import HashbenchError
from hashbench.runner import run_grid
from hashbench.store import RunStore

SMALL = ["--datasets", "synthetic", "--bits", "8,16", "--seeds", "0,1", "--no-progress"]


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (results / "runs").glob("*.json")}


def test_grid_expansion_and_run_ids():
    grid = Experiment(methods=["lsh", "itq"], datasets=["synthetic"], bits=[8, 16], seeds=[0, 1]).grid()
    assert len(grid) == 8
    ids = {c.run_id for c in grid}
    assert len(ids) == 8
    itq = next(c for c in grid if c.method == "itq")
    assert itq.method_params == {"iterations": 50}  # resolved: defaults filled in
    same = Experiment(methods=["itq"], datasets=["synthetic"], bits=[itq.bits], seeds=[itq.seed],
                      overrides={"itq.iterations": 50}).grid()[0]
    assert same.run_id == itq.run_id  # the default written out is the same run
    other = Experiment(methods=["itq"], datasets=["synthetic"], bits=[itq.bits], seeds=[itq.seed],
                       overrides={"itq.iterations": 10}).grid()[0]
    assert other.run_id != itq.run_id
    assert RunConfig.from_dict(itq.to_dict()) == itq


@pytest.mark.parametrize("bad, message", [
    (dict(methods=["itqq"]), "unknown method 'itqq'. Did you mean: itq?"),
    (dict(methods=["itq"], datasets=["digitz"]), "unknown dataset 'digitz'"),
    (dict(methods=["itq"], bits=[0]), "bits must be between 1 and 1024, got 0"),
    (dict(methods=["itq"], bits=[2048]), "bits must be between 1 and 1024, got 2048"),
    (dict(methods=["itq"], overrides={"itq.iters": 3}), "method itq has no parameter 'iters'"),
    (dict(methods=["itq"], overrides={"nothing.x": 3}), "'nothing' is neither a method nor a dataset"),
    (dict(methods=["itq"], seeds=[-1]), "seeds must be whole numbers in 0..4294967295"),
    (dict(methods=["itq"], seeds=[2**32]), "seeds must be whole numbers in 0..4294967295"),
])
def test_grid_rejects_bad_input(bad, message):
    spec = dict(datasets=["synthetic"], bits=[8], seeds=[0]) | bad
    with pytest.raises(HashbenchError) as info:
        Experiment(**spec).grid()
    assert message in str(info.value)


def test_parse_set_reads_yaml_scalars():
    assert parse_set(["itq.iterations=100", "a.b=0.5", "a.c=true", "a.d=softsort", "a.e=1e-3"]) == {
        "itq.iterations": 100, "a.b": 0.5, "a.c": True, "a.d": "softsort", "a.e": 0.001}
    with pytest.raises(HashbenchError):
        parse_set(["itq.iterations"])


def test_run_writes_one_record_per_run_and_skips_on_rerun(cli, tmp_path):
    results = tmp_path / "results"
    code, out, err = cli("run", "--methods", "lsh,itq", *SMALL, "--results-dir", str(results))
    assert code == 0, err
    recs = records(results)
    assert len(recs) == 8 and all(r["status"] == "done" for r in recs.values())
    rec = next(r for r in recs.values() if r["config"]["method"] == "itq")
    assert rec["run_id"] == RunConfig.from_dict(rec["config"]).run_id
    assert set(rec["metrics"]) >= {"map", "topk", "map_full", "map_tie_aware", "precision_h2", "recall_h2"}
    assert rec["splits"] == {"train": 120, "val": 20, "query": 20, "database": 200}
    assert set(rec["timings"]) == {"load_s", "fit_s", "encode_s", "eval_s"}
    assert rec["versions"]["numpy"] == np.__version__ and rec["protocol"]["seed"] == 0
    assert rec["error"] is None
    assert "| itq |" in out and (results / "tables" / "map.md").exists()

    before = {p: p.stat().st_mtime_ns for p in (results / "runs").glob("*.json")}
    code, _, err = cli("run", "--methods", "lsh,itq", *SMALL, "--results-dir", str(results))
    assert code == 0 and "8 skipped" in err
    assert before == {p: p.stat().st_mtime_ns for p in (results / "runs").glob("*.json")}


def test_same_seed_same_metrics(cli, tmp_path):
    for name in ("a", "b"):
        assert cli("run", "--methods", "itq", *SMALL, "--results-dir", str(tmp_path / name))[0] == 0
    strip = lambda r: (r["metrics"], r["curves"])  # noqa: E731
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert a.keys() == b.keys() and all(strip(a[k]) == strip(b[k]) for k in a)


def test_force_redoes_but_keeps_the_old_record(cli, tmp_path):
    results = tmp_path / "results"
    args = ("run", "--methods", "lsh", "--datasets", "synthetic", "--bits", "8", "--seeds", "0",
            "--no-progress", "--results-dir", str(results))
    assert cli(*args)[0] == 0
    (run_id, first), = records(results).items()
    code, _, err = cli(*args, "--force")
    assert code == 0 and "1 done" in err
    kept = list((results / "runs" / "superseded").glob(f"{run_id}.*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["started_at"] == first["started_at"]
    assert records(results)[run_id]["status"] == "done"


class Exploding(HashMethod):
    name = "exploding"
    summary = "raises during fit (test only)"

    def fit(self, train, val=None):
        if self.bits == 16:
            raise RuntimeError("boom at 16 bits")
        self.dim = train.x.shape[1]

    def encode(self, x):
        return np.zeros((len(x), self.bits), dtype=bool)


def test_failed_run_is_recorded_and_grid_goes_on(with_plugin, tmp_path, cli):
    with_plugin(register_methods=lambda: [Exploding])
    results = tmp_path / "results"
    code, _, err = cli("run", "--methods", "exploding", *SMALL, "--results-dir", str(results))
    assert code == 1
    assert "2 done" in err and "2 failed" in err and "boom at 16 bits" in err
    by_status = {}
    for rec in records(results).values():
        by_status.setdefault(rec["status"], []).append(rec)
    assert len(by_status["failed"]) == 2 and len(by_status["done"]) == 2
    failed = by_status["failed"][0]
    assert failed["error"] == "RuntimeError: boom at 16 bits" and "Traceback" in failed["traceback"]
    # a failed run is not done: the next invocation retries exactly those
    code, _, err = cli("run", "--methods", "exploding", *SMALL, "--results-dir", str(results))
    assert "2 failed" in err and "2 skipped" in err


def test_wrong_codes_from_a_method_fail_the_run(with_plugin, tmp_path):
    class WrongShape(Exploding):
        name = "wrong-shape"

        def fit(self, train, val=None):
            pass

        def encode(self, x):
            return np.zeros((len(x), self.bits + 1))

    with_plugin(register_methods=lambda: [WrongShape])
    grid = Experiment(methods=["wrong-shape"], datasets=["synthetic"], bits=[8], seeds=[0]).grid()
    (summary,) = run_grid(grid, tmp_path, progress=False)
    assert summary["status"] == "failed"
    assert "encode must return bool codes of shape (20, 8)" in summary["error"]


def test_unreadable_record_is_moved_aside_and_rerun(cli, tmp_path):
    results = tmp_path / "results"
    args = ("--methods", "lsh", "--datasets", "synthetic", "--bits", "8", "--seeds", "0,1",
            "--no-progress", "--results-dir", str(results))
    assert cli("run", *args)[0] == 0
    broken = sorted((results / "runs").glob("*.json"))[0]
    broken.write_text('{"run_id": "lsh-synth')  # truncated
    code, out, err = cli("table", "--results-dir", str(results))
    assert code == 0 and f"unreadable record {broken}" in err
    assert broken.exists()  # table only skips it
    code, _, err = cli("run", *args)
    assert code == 0 and "1 done" in err and "1 skipped" in err
    assert f"unreadable record {broken}" in err
    moved = sorted((results / "runs" / "unreadable").glob(broken.stem + ".*"))
    # the record, its per-query file and its model go aside together, under one new name
    assert [p.name[len(broken.stem):].split(".", 2)[-1] for p in moved] == ["json", "model.pt", "queries.npz"]
    assert moved[0].read_text() == '{"run_id": "lsh-synth'
    assert moved[2].name == moved[0].name[:-len(".json")] + ".queries.npz"
    assert moved[1].name == moved[0].name[:-len(".json")] + ".model.pt"
    assert json.loads(broken.read_text())["status"] == "done"
    assert (results / "runs" / f"{broken.stem}.queries.npz").exists()  # the rerun's own


def test_store_never_overwrites_a_finished_record_in_place(tmp_path, record_for):
    store = RunStore(tmp_path)
    (config,) = Experiment(methods=["lsh"], datasets=["synthetic"], bits=[8], seeds=[0]).grid()
    rec = record_for(config, n=1)
    store.write(rec)
    store.write({**rec, "n": 2})
    assert json.loads(store.path(config.run_id).read_text())["n"] == 2
    (old,) = (tmp_path / "runs" / "superseded").glob(f"{config.run_id}.*.json")
    assert json.loads(old.read_text())["n"] == 1
    assert not list((tmp_path / "runs").glob(".tmp-*"))


def test_claim_excludes_a_second_holder(tmp_path):
    store = RunStore(tmp_path)
    with store.claim("r") as first:
        assert first
        probe = subprocess.run(
            [sys.executable, "-c",
             "import sys; from hashbench.store import RunStore\n"
             f"with RunStore({str(tmp_path)!r}).claim('r') as c: sys.exit(0 if c else 3)"],
            capture_output=True, cwd=tmp_path)
        assert probe.returncode == 3
    with store.claim("r") as again:
        assert again


def test_two_processes_on_one_results_folder(tmp_path):
    """Concurrent invocations: every run performed exactly once, every record intact."""
    results = tmp_path / "results"
    cmd = [str(Path(sys.executable).with_name("hashbench")), "run", "--methods", "lsh,pcah,itq,sh", "--datasets", "synthetic",
           "--bits", "8,16", "--seeds", "0,1,2", "--no-progress", "--no-table", "--results-dir", str(results)]
    env = {k: v for k, v in os.environ.items() if k != "HASHBENCH_PLUGINS"}
    procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    done = sum(int(line.split(" done")[0].split()[-1]) for e in errs for line in e.splitlines()
               if " done" in line and line.startswith("hashbench: ") and "runs (" not in line)
    recs = records(results)
    assert len(recs) == 24 and all(r["status"] == "done" for r in recs.values())
    assert done == 24  # no run was performed twice
    assert not list((results / "runs").glob("superseded/*"))


def test_experiment_file_and_cli_override(cli, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        "methods: [itq]\ndatasets: [synthetic]\nbits: [8]\nseeds: 0,1\n"
        f"set:\n  itq.iterations: 3\nresults_dir: {tmp_path / 'from-file'}\n")
    spec = load_experiment_file(exp)
    assert spec["seeds"] == [0, 1] and spec["set"] == {"itq.iterations": 3}
    code, _, err = cli("run", "-c", str(exp), "--bits", "16", "--set", "itq.iterations=4", "--no-progress")
    assert code == 0, err
    recs = records(tmp_path / "from-file")
    assert {r["config"]["bits"] for r in recs.values()} == {16}
    assert {r["config"]["method_params"]["iterations"] for r in recs.values()} == {4}
    assert len(recs) == 2


@pytest.mark.parametrize("content, message", [
    ("methods: [itq\n", "experiment file"),
    ("methods: [itq]\nbitz: [8]\n", "unknown key 'bitz'"),
    ("- itq\n- lsh\n", "expected a mapping"),
    ("set: 3\n", "'set' must be a dict"),
    ("!!python/object/apply:os.system ['echo pwned']\n", "experiment file"),
])
def test_malformed_experiment_file(cli, tmp_path, content, message, one_line_error):
    exp = tmp_path / "bad.yaml"
    exp.write_text(content)
    code, _, err = cli("run", "-c", str(exp), "--results-dir", str(tmp_path / "r"))
    assert code == 2
    assert message in one_line_error(err)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["--methods", "itqq"], "unknown method 'itqq'. Did you mean: itq?"),
    (["--datasets", "digitz"], "unknown dataset 'digitz'. Did you mean: digits?"),
    (["--bits", "0"], "bits must be between 1 and 1024, got 0"),
    (["--bits", "1025"], "bits must be between 1 and 1024, got 1025"),
    (["--bits", "16,abc"], "--bits expects comma-separated whole numbers"),
    (["--set", "itq.iterations=lots"], "parameter 'iterations' expects int"),
    (["--executor", "cloud"], "unknown executor 'cloud'"),
    (["-c", "/no/such/file.yaml"], "cannot read experiment file"),
])
def test_run_bad_input_is_one_line_exit_2(cli, tmp_path, args, message, one_line_error):
    code, _, err = cli("run", "--methods", "itq", "--datasets", "synthetic", "--bits", "8", *args,
                       "--results-dir", str(tmp_path / "r"))
    assert code == 2
    assert message in one_line_error(err)
    assert not (tmp_path / "r" / "runs").exists() or not list((tmp_path / "r" / "runs").glob("*.json"))


def test_default_run_uses_every_suitable_method(cli, tmp_path, monkeypatch):
    """`hashbench run` with no flags runs the default experiment file."""
    from hashbench import cli as cli_module

    seen = {}

    def fake_run_grid(configs, *args, **kwargs):
        seen["configs"] = configs
        return []

    monkeypatch.setattr("hashbench.runner.run_grid", fake_run_grid)
    monkeypatch.setattr("hashbench.runner.preflight", lambda *args, **kwargs: None)  # needs no data here
    code, _, err = cli("run", "--results-dir", str(tmp_path), "--no-table")
    assert code == 0, err
    configs = seen["configs"]
    assert {c.method for c in configs} == set(cli_module.suitable_methods(["fashion-mnist"]))
    assert {c.method for c in configs} >= {"lsh", "pcah", "itq", "sh"}
    assert {c.dataset for c in configs} == {"fashion-mnist"}
    assert {c.bits for c in configs} == {16, 32, 64} and {c.seed for c in configs} == {0, 1, 2}
    shallow = [c for c in configs if c.method in {"lsh", "pcah", "itq", "sh"}]
    assert {json.dumps(c.features, sort_keys=True) for c in shallow} == {
        json.dumps({"backbone": "tf_efficientnet_lite0", "pretrained": True, "input_size": 64}, sort_keys=True)}
    assert {c.method for c in configs} >= {"cibhash", "greedyhash", "bihalf"}
    assert all(not c.features for c in configs if c.method not in {"lsh", "pcah", "itq", "sh"})
    # a flag overrides the default file; a new backbone starts from its own defaults
    # a flag that applies to no run of the grid (digits provides features) is an error, not ignored
    code, _, err = cli("run", "--results-dir", str(tmp_path), "--no-table", "--datasets", "digits",
                       "--backbone", "resnet18")
    assert code == 2 and "--backbone applies to shallow methods on image datasets" in err
    code, _, err = cli("run", "--results-dir", str(tmp_path), "--no-table", "--datasets", "digits")
    assert code == 0, err  # the default file's backbone is no flag: digits runs on its own features
    assert {c.dataset for c in seen["configs"]} == {"digits"} and all(not c.features for c in seen["configs"])
