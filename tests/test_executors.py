"""Executors: local (in process, --jobs N workers), ray, slurm (submitit's local cluster).

Every executor writes the same records; a worker killed mid-run leaves its run recorded failed,
the grid goes on and the next invocation redoes only that run; finished runs are never sent to
an executor again. Workers of --jobs, Ray and submitit load plugins from entry points, so the
test method that kills its own process is a real plugin distribution on PYTHONPATH.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from hashbench import registry as registry_module
from hashbench.components import Executor
from hashbench.config import Experiment
from hashbench.runner import RunTask, execute, record_lost_run, run_grid
from hashbench.store import RunStore

GRID = ["--methods", "lsh,itq", "--datasets", "digits", "--bits", "16,32", "--seeds", "0,1",
        "--no-progress", "--no-table"]

KILLER = '''
"""A test plugin: a method that SIGKILLs its own process on its first fit at 32 bits, seeds 1 and 2."""

import os
import signal
from dataclasses import dataclass

import numpy as np

from hashbench import hookimpl
from hashbench.components import HashMethod


class SigkillOnce(HashMethod):
    name = "sigkill-once"
    summary = "random projections; SIGKILLs its process at 32 bits, seeds 1, 2, once each (test only)"

    @dataclass(frozen=True)
    class Config:
        marker: str = ""   # <marker>.<seed> absent: create it and die
        counter: str = ""  # a line per fit is appended here

    def fit(self, train, val=None):
        with open(self.config.counter, "a") as fh:
            fh.write(f"{self.bits} {self.seed}\\n")
        marker = f"{self.config.marker}.{self.seed}"
        if self.bits == 32 and self.seed in (1, 2) and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        self.mean = train.x.mean(0)
        self.w = self.rng.standard_normal((train.x.shape[1], self.bits))

    def encode(self, x):
        return (x - self.mean) @ self.w > 0


@hookimpl
def register_methods():
    return [SigkillOnce]
'''


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (results / "runs").glob("*.json")}


def outcomes(results: Path) -> dict[str, tuple]:
    return {k: (r["status"], r.get("metrics"), r.get("curves")) for k, r in records(results).items()}


@pytest.fixture(scope="module")
def killer_site(tmp_path_factory) -> Path:
    """The SIGKILL method as an installed distribution, on a path of its own."""
    site = tmp_path_factory.mktemp("site")
    (site / "hb_killer").mkdir()
    (site / "hb_killer" / "__init__.py").write_text(KILLER)
    info = site / "hb_killer-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hb-killer\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hashbench]\nkiller = hb_killer\n")
    return site


@pytest.fixture
def killer(killer_site, monkeypatch, tmp_path):
    """Load the SIGKILL plugin here and in every worker; returns its --set flags."""
    monkeypatch.syspath_prepend(str(killer_site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(killer_site), os.environ.get("PYTHONPATH")])))
    registry_module.reload()
    return ["--set", f"sigkill-once.marker={tmp_path / 'marker'}", "--set", f"sigkill-once.counter={tmp_path / 'fits'}"]


@pytest.fixture(scope="module")
def ray_instance(killer_site):
    """One local Ray instance (2 CPUs) for the module; its workers see the SIGKILL plugin."""
    ray = pytest.importorskip("ray")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(killer_site), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # what Ray's workers start with
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    yield ray
    ray.shutdown()


@pytest.fixture
def executor_args(request, tmp_path, monkeypatch):
    """The flags that pick an executor (local --jobs 2, ray, slurm on submitit's local cluster).

    Every worker computes with one BLAS thread, as the reference does: another thread count may
    change the last digits of a projection and flip a code bit (Ray's tasks get one anyway).
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    name = request.param
    if name == "local":
        return []
    if name == "jobs":
        return ["--jobs", "2"]
    if name == "ray":
        request.getfixturevalue("ray_instance")
        return ["--executor", "ray", "--cpus-per-run", "1"]
    pytest.importorskip("submitit")
    exp = tmp_path / "slurm.yaml"
    exp.write_text("executor: slurm\nexecutor_params: {cluster: local, poll_s: 0.2}\n")
    return ["-c", str(exp), "--cpus-per-run", "1", "--time", "5"]


EXECUTORS = pytest.mark.parametrize("executor_args", ["jobs", "ray", "slurm"], indirect=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The grid run by the sequential local executor (one BLAS thread, as the workers)."""
    from threadpoolctl import threadpool_limits

    from hashbench.cli import main

    results = tmp_path_factory.mktemp("reference")
    with threadpool_limits(limits=1):
        assert main(["run", *GRID, "--results-dir", str(results)]) == 0
    return outcomes(results)


def test_list_executors_is_fast_and_imports_neither_ray_nor_submitit(tmp_path):
    code = ("import sys\nfrom hashbench.cli import main\nmain(['list', 'executors'])\n"
            "assert 'ray' not in sys.modules and 'submitit' not in sys.modules, 'imported'\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert set(rows) == {"local", "ray", "slurm"}
    assert "--jobs N worker processes" in rows["local"] and "hashbench[ray]" in rows["ray"]
    assert "job array" in rows["slurm"]


@EXECUTORS
def test_every_executor_writes_the_same_records(executor_args, reference, cli, tmp_path):
    results = tmp_path / "results"
    code, _, err = cli("run", *GRID, *executor_args, "--results-dir", str(results))
    assert code == 0, err
    assert "\nhashbench: 8 done\n" in err  # each run performed once ...
    assert outcomes(results) == reference  # ... with the same metrics and curves
    assert not (results / "runs" / "superseded").exists()  # no finished record written twice
    assert all(r["status"] == "done" and r["error"] is None for r in records(results).values())
    if "slurm" in str(executor_args):
        assert len(list((results / "slurm").glob("*_log.out"))) == 8  # submitit's job files and logs
    if "ray" in executor_args:
        import ray

        assert ray.is_initialized()  # the executor did not start this Ray, so it leaves it running
    code, _, err = cli("run", *GRID, *executor_args, "--results-dir", str(results))
    assert code == 0 and "\nhashbench: 8 skipped\n" in err


@EXECUTORS
def test_killed_worker_is_recorded_failed_and_redone_next_time(executor_args, killer, cli, tmp_path):
    results = tmp_path / "results"
    args = ["run", "--methods", "sigkill-once", "--datasets", "digits", "--bits", "16,32", "--seeds", "0,1,2,3",
            "--no-progress", "--no-table", *killer, *executor_args, "--results-dir", str(results)]
    code, _, err = cli(*args)
    assert code == 1, err
    # two workers die: with --jobs 2 the grid finishes only if each dead worker is replaced
    assert "\nhashbench: 6 done, 2 failed\n" in err
    by_status: dict[str, list] = {}
    for rec in records(results).values():
        by_status.setdefault(rec["status"], []).append(rec)
    assert len(by_status["done"]) == 6 and len(by_status["failed"]) == 2
    assert sorted((r["config"]["bits"], r["config"]["seed"]) for r in by_status["failed"]) == [(32, 1), (32, 2)]
    for failed in by_status["failed"]:
        assert failed["error"].startswith("worker died: ") and failed["traceback"] is None
        if executor_args == ["--jobs", "2"]:
            assert failed["error"] == "worker died: killed by signal 9 (SIGKILL)"
        elif "ray" in executor_args:
            assert "WorkerCrashedError" in failed["error"]
        else:
            assert "ended without a result" in failed["error"]
    fits = (tmp_path / "fits").read_text().splitlines()
    assert len(fits) == 8 and sorted(set(fits)) == sorted(fits)  # every run started once

    done_before = {k: r["started_at"] for k, r in records(results).items() if r["status"] == "done"}
    code, _, err = cli(*args)
    assert code == 0, err
    assert "\nhashbench: 2 done, 6 skipped\n" in err
    again = (tmp_path / "fits").read_text().splitlines()[8:]
    assert sorted(again) == ["32 1", "32 2"]  # only the lost runs ran again
    after = records(results)
    assert all(r["status"] == "done" for r in after.values())
    assert {k: after[k]["started_at"] for k in done_before} == done_before
    assert not (results / "runs" / "superseded").exists()


class Recording(Executor):
    """Runs in this process and remembers the tasks it was given (test only)."""

    name = "recording"
    summary = "test only"
    seen: ClassVar[list] = []

    def map(self, fn, tasks):
        for task in tasks:
            Recording.seen.append(task.config.run_id)
            yield fn(task)


def test_ray_address_joins_a_running_cluster(ray_instance, tmp_path):
    """--ray-address: a separate `hashbench run` joins the cluster, and leaves it running."""
    address = ray_instance.get_runtime_context().gcs_address
    results = tmp_path / "results"
    ran = subprocess.run([str(Path(sys.executable).with_name("hashbench")), "run", *GRID[:4], "--bits", "16",
                          "--seeds", "0", "--no-progress", "--no-table", "--executor", "ray", "--ray-address",
                          address, "--results-dir", str(results)],
                         check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "\nhashbench: 2 done\n" in ran.stderr
    assert ray_instance.is_initialized() and ray_instance.cluster_resources()["CPU"] == 2


def test_finished_runs_are_never_dispatched(with_plugin, tmp_path):
    with_plugin(register_executors=lambda: [Recording])
    grid = Experiment(methods=["lsh"], datasets=["synthetic"], bits=[8, 16], seeds=[0, 1]).grid()
    RunStore(tmp_path).write({"run_id": grid[0].run_id, "status": "failed", "config": grid[0].to_dict(),
                              "error": "RuntimeError: an earlier try"})
    first = run_grid(grid[:3], tmp_path, "recording", progress=False)
    assert Recording.seen == [c.run_id for c in grid[:3]]  # a failed record is redone
    assert sorted(s["status"] for s in first) == ["done"] * 3
    Recording.seen.clear()
    summaries = run_grid(grid, tmp_path, "recording", progress=False)
    assert Recording.seen == [grid[3].run_id]  # only the pending run reaches the executor
    assert sorted(s["status"] for s in summaries) == ["done", "skipped", "skipped", "skipped"]
    Recording.seen.clear()
    run_grid(grid[:1], tmp_path, "recording", force=True, progress=False)
    assert Recording.seen == [grid[0].run_id]  # --force sends it again


def test_a_lost_run_never_replaces_a_finished_record(tmp_path):
    (config,) = Experiment(methods=["lsh"], datasets=["synthetic"], bits=[8], seeds=[0]).grid()
    task = RunTask(config, str(tmp_path))
    lost = record_lost_run(task, "worker died: killed by signal 9 (SIGKILL)", started_at="2026-01-01T00:00:00+00:00")
    assert lost == {"run_id": config.run_id, "status": "failed", "seconds": None,
                    "error": "worker died: killed by signal 9 (SIGKILL)"}
    assert RunStore(tmp_path).read(config.run_id)["status"] == "failed"
    assert execute(task)["status"] == "done"  # the next invocation redoes it
    before = RunStore(tmp_path).path(config.run_id).read_text()
    assert record_lost_run(task, "worker died: exit code 1")["status"] == "done"  # it finished first
    assert RunStore(tmp_path).path(config.run_id).read_text() == before
    with RunStore(tmp_path).claim(config.run_id):  # a live process holds the run
        assert record_lost_run(RunTask(config, str(tmp_path), force=True), "x", wait_s=0.2)["status"] == "busy"


@pytest.mark.parametrize("args, message", [
    (["--jobs", "2", "--partition", "gpu"], "executor local takes no --partition"),
    (["--executor", "ray", "--jobs", "2"], "executor ray takes no --jobs"),
    (["--executor", "slurm", "--ray-address", "auto"], "executor slurm takes no --ray-address"),
    (["--jobs", "0"], "executor local: --jobs must be >= 1, got 0"),
    (["--jobs", "two"], "argument --jobs: invalid int value: 'two'"),
    (["--executor", "ray", "--cpus-per-run", "0"], "--cpus-per-run must be > 0"),
])
def test_bad_executor_flags_are_one_line_exit_2(args, message, cli, tmp_path, one_line_error):
    if "ray" in args and "--cpus-per-run" in args:
        pytest.importorskip("ray")
    code, _, err = cli("run", *GRID, *args, "--results-dir", str(tmp_path / "r"))
    assert code == 2
    assert message in one_line_error(err)
    assert not (tmp_path / "r").exists()


def test_experiment_file_executor_params_are_checked(cli, tmp_path, one_line_error):
    exp = tmp_path / "exp.yaml"
    exp.write_text("executor: local\nexecutor_params: {jobs: 2, workers: 3}\n")
    code, _, err = cli("run", "-c", str(exp), *GRID, "--results-dir", str(tmp_path / "r"))
    assert code == 2 and "executor local has no parameter 'workers'" in one_line_error(err)
    exp.write_text("executor_params: 2\n")
    code, _, err = cli("run", "-c", str(exp), *GRID, "--results-dir", str(tmp_path / "r"))
    assert code == 2 and "'executor_params' must be a dict" in one_line_error(err)


@pytest.mark.parametrize("executor, package, extra", [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_missing_optional_package_is_one_line_exit_2(executor, package, extra, cli, tmp_path, monkeypatch,
                                                     one_line_error):
    monkeypatch.setitem(sys.modules, package, None)  # `import ray` raises ImportError
    code, _, err = cli("run", *GRID, "--executor", executor, "--results-dir", str(tmp_path / "r"))
    assert code == 2
    assert one_line_error(err) == (
        f"hashbench: executor {executor} needs the {package} package: pip install 'hashbench[{extra}]'")
    assert not (tmp_path / "r").exists()


def test_slurm_without_slurm_is_one_line_exit_2(cli, tmp_path, monkeypatch, one_line_error):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    code, _, err = cli("run", *GRID, "--executor", "slurm", "--partition", "gpu", "--results-dir", str(tmp_path / "r"))
    assert code == 2 and "executor slurm: no Slurm here (sbatch not found)" in one_line_error(err)


# ----------------------------------------------------------------------------- declared options

def _help(cli_main, capsys, command: str) -> str:
    """``hashbench COMMAND --help``, its lines joined (argparse wraps the help text)."""
    with pytest.raises(SystemExit) as stop:
        cli_main([command, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["run", "ablate"])
def test_every_executor_field_is_an_option_with_its_doc(command, capsys):
    import hashbench
    from hashbench.cli import executor_flags, main
    from hashbench.params import limits_of

    text = _help(main, capsys, command)
    assert "executor options:" in text and "executor name: local, ray, slurm" in text
    for name in hashbench.names("executor"):
        cls = registry_module.registry("executor").get(name)
        for field, flag in executor_flags(cls).items():
            doc = limits_of(cls.Config, field).doc
            assert doc, f"executor {name}: field {field} has no doc"
            assert f"{flag} " in text and doc in text, (flag, doc)


def test_the_historic_flags_keep_their_names_and_fields():
    from hashbench.cli import executor_options

    table = {flag: option.fields for flag, option in executor_options().items()}
    assert table["--jobs"] == {"local": "jobs"}
    assert table["--ray-address"] == {"ray": "address"} and "--address" not in table
    assert table["--cpus-per-run"] == {"ray": "cpus_per_run", "slurm": "cpus_per_run"}
    assert table["--gpus-per-run"] == {"ray": "gpus_per_run", "slurm": "gpus_per_run"}
    assert table["--partition"] == {"slurm": "partition"} and table["--time"] == {"slurm": "time"}


@pytest.mark.parametrize("executor, flags, expected, package", [
    ("local", ["--jobs", "3"], {"jobs": 3}, None),
    ("ray", ["--ray-address", "auto", "--cpus-per-run", "0.5", "--num-cpus", "2"],
     {"address": "auto", "cpus_per_run": 0.5, "num_cpus": 2}, "ray"),
    ("slurm", ["--cluster", "local", "--cpus-per-run", "2", "--time", "5", "--poll-s", "0.5", "--mem-gb", "3"],
     {"cluster": "local", "cpus_per_run": 2, "time": 5, "poll_s": 0.5, "mem_gb": 3}, "submitit"),
])
def test_flags_reach_the_executor_config_over_the_file(executor, flags, expected, package, tmp_path):
    if package:
        pytest.importorskip(package)
    from hashbench.cli import build_experiment, build_parser

    exp = tmp_path / "exp.yaml"
    exp.write_text(f"executor: {executor}\nexecutor_params: {{}}\n")
    if executor == "slurm":
        exp.write_text("executor: slurm\nexecutor_params: {cluster: debug, folder: here, time: 9}\n")
        expected = {**expected, "folder": "here"}
    args = build_parser().parse_args(["run", "-c", str(exp), *GRID, *flags])
    _, settings = build_experiment(args)
    assert settings["executor"] == executor and settings["executor_params"] == expected
    config = registry_module.create("executor", executor, **settings["executor_params"]).config
    assert all(getattr(config, k) == v for k, v in expected.items())


def test_commands_without_a_grid_do_not_load_the_registry(monkeypatch):
    """The executors' options are added when run or ablate parses: other commands (evaluate,
    table, --version) never load the plugins for them."""
    from hashbench.cli import build_parser

    def refuse():
        raise AssertionError("the registry was loaded")

    monkeypatch.setattr(registry_module, "registries", refuse)
    args = build_parser().parse_args(["table", "--results-dir", "somewhere"])
    assert args.func.__name__ == "cmd_table"
    with pytest.raises(AssertionError, match="registry was loaded"):
        build_parser().parse_args(["run"])


def _plugin_executor(name: str, config: type, cli_options: dict | None = None) -> type:
    attrs = {"name": name, "summary": f"{name} (test only)", "Config": config,
             "map": lambda self, fn, tasks: (fn(t) for t in tasks)}
    if cli_options is not None:
        attrs["cli_options"] = cli_options
    return type(name.title().replace("-", ""), (Executor,), attrs)


def test_a_plugin_executor_brings_its_own_options(with_plugin, cli, tmp_path, capsys, one_line_error):
    from dataclasses import dataclass

    from hashbench.cli import main
    from hashbench.params import param

    @dataclass(frozen=True)
    class EchoConfig:
        dry: bool = param(False, doc="only say what would run")
        seeds: int = param(0, ge=0, doc="a field whose default flag --seeds is run's own")
        hidden: str = param("x", doc="set in experiment files only")

    seen = []

    class Echo(Executor):
        name = "echo"
        summary = "runs the tasks in order; notes its config (test only)"
        cli_options: ClassVar = {"seeds": "--echo-seeds", "hidden": None}
        Config = EchoConfig

        def map(self, fn, tasks):
            seen.append(self.config)
            return (fn(task) for task in tasks)

    with_plugin(register_executors=lambda: [Echo])
    text = _help(main, capsys, "run")
    assert "--dry true|false executor echo: only say what would run (default false)" in text
    assert "--echo-seeds N executor echo: a field whose default flag" in text and "--hidden" not in text
    code, _, err = cli("run", *GRID, "--executor", "echo", "--dry", "yes", "--echo-seeds", "4",
                       "--results-dir", str(tmp_path / "r"))
    assert code == 0, err
    assert seen == [EchoConfig(dry=True, seeds=4)]
    for flags, message in [
        (["--dry", "maybe"], "run: argument --dry: invalid true/false value: 'maybe'"),
        (["--echo-seeds", "-1"], "executor echo: --echo-seeds must be >= 0, got -1"),
        (["--hidden", "y"], "unrecognized arguments: --hidden y"),
        (["--jobs", "2"], "executor echo takes no --jobs"),
    ]:
        code, _, err = cli("run", *GRID, "--executor", "echo", *flags, "--results-dir", str(tmp_path / "r2"))
        assert code == 2 and message in one_line_error(err), (flags, err)
    code, _, err = cli("run", *GRID, "--dry", "true", "--results-dir", str(tmp_path / "r2"))
    assert code == 2 and "executor local takes no --dry" in one_line_error(err)


@pytest.mark.parametrize("cli_options, message", [
    ({}, "executor clashy: option --seeds clashes with an option of hashbench run; "
         "name another flag in the executor's cli_options"),
    ({"seeds": "--func"}, "executor clashy: option --func clashes with an option of hashbench run"),
    ({"sedes": "--x"}, "executor clashy: cli_options names 'sedes', which is not a Config field (fields: seeds)"),
    ({"seeds": "-s"}, "executor clashy: cli_options gives 'seeds' the flag '-s'; a flag is '--lower-case-words'"),
])
def test_a_bad_option_declaration_is_one_line_exit_2(cli_options, message, with_plugin, cli, one_line_error):
    from dataclasses import dataclass

    from hashbench.params import param

    @dataclass(frozen=True)
    class Config:
        seeds: int = param(0, doc="clashes with run's --seeds unless renamed")

    with_plugin(register_executors=lambda: [_plugin_executor("clashy", Config, cli_options)])
    code, out, _ = cli("list", "executors")  # commands without a grid do not read the options
    assert code == 0 and "clashy" in out
    code, _, err = cli("run", *GRID)
    assert code == 2 and message in one_line_error(err)
