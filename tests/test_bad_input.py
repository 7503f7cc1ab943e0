"""Bad input and faults, as a new user meets them: one row per case.

Every case is ONE line ``hashbench: ...`` on stderr, no traceback, and exit code 2 (bad input)
or 1 (a run failed, or the machine refused a write). To cover a new case, add a :class:`Case`
to ``CASES``: the command (``{tmp}`` is the test's folder), the files it needs, the environment,
an optional ``patch`` (for faults a test cannot cause for real, e.g. a full disk), the exit code
and a fragment of the line. Records that must never be misread have their own tests below.
"""

from __future__ import annotations

import errno
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pytest

from hashbench.components import HashMethod
from hashbench.config import Experiment
from hashbench.store import RecordWarning, RunStore

GRID = ["--datasets", "digits", "--methods", "lsh", "--bits", "8", "--seeds", "0", "--no-progress"]


def _npz_named_npy(path: Path) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, a=np.zeros((2, 8), np.uint8))


def _codes_and_labels(tmp: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp / "q.npy", rng.integers(0, 256, (5, 4), dtype=np.uint8))  # packed: 32 bits in 4 bytes
    np.save(tmp / "db.npy", rng.integers(0, 256, (20, 4), dtype=np.uint8))
    np.save(tmp / "ql.npy", rng.integers(0, 3, 5))
    np.save(tmp / "dbl.npy", rng.integers(0, 3, 20))


def _no_space(monkeypatch, tmp: Path) -> None:
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("hashbench.store.os.fsync", fsync)


def _read_only(monkeypatch, tmp: Path) -> None:
    """As root (CI) chmod does not stop writes: refuse them as a read-only folder would."""
    import tempfile

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)


class _Exits(HashMethod):
    """A plugin method whose fit calls sys.exit(3)."""

    name = "exits"
    summary = "calls sys.exit(3) in fit (test only)"

    def fit(self, train, val=None):
        raise SystemExit(3)

    def encode(self, x):
        return np.zeros((len(x), self.bits), bool)


class _Interrupted(_Exits):
    name = "interrupted"
    summary = "Ctrl-C in fit (test only)"

    def fit(self, train, val=None):
        raise KeyboardInterrupt


def _raise(exc: Exception):
    def hook():
        raise exc

    return hook


@dataclass
class Case:
    id: str
    args: list[str]
    code: int
    says: str
    files: dict[str, Any] = field(default_factory=dict)  # name -> bytes, or a function of its path
    env: dict[str, str] = field(default_factory=dict)
    patch: Callable[..., None] | None = None  # (monkeypatch, tmp)
    plugin: dict[str, Any] | None = None  # hooks of a test-only plugin


CASES = [
    # ---- silent fallbacks: each ran something else than asked, with exit 0
    Case("empty experiment file", ["run", "-c", "{tmp}/e.yaml"], 2, "is empty", {"e.yaml": b""}),
    Case("empty datasets in a file", ["run", "-c", "{tmp}/e.yaml"], 2, "'datasets' is empty",
         {"e.yaml": b"datasets: []\n"}),
    Case("empty --datasets", ["run", "--datasets", ""], 2, "--datasets is empty"),
    Case("empty --methods", ["run", "--methods", ""], 2, "--methods is empty"),
    Case("empty --bits", ["run", "--bits", ","], 2, "--bits is empty"),
    Case("--backbone --pretrained on digits", ["run", *GRID, "--backbone", "resnet18", "--pretrained"], 2,
         "--backbone, --pretrained apply to shallow methods on image datasets"),
    Case("--backbone nosuchnet on digits", ["run", *GRID, "--backbone", "nosuchnet"], 2,
         "--backbone applies to shallow methods"),
    Case("--input-size -5", ["run", *GRID, "--input-size", "-5"], 2, "--input-size: expected a whole number > 0"),
    Case("--data-root /nonexistent", ["run", *GRID, "--data-root", "/nonexistent"], 2,
         "--data-root /nonexistent: no such folder"),
    Case("--set of a method not in the grid, bad value", ["run", *GRID, "--set", "nsh.sorter=foo"], 2,
         "method nsh: sorter must be a registered sorter, got 'foo'"),
    Case("--set of a method not in the grid", ["run", *GRID, "--set", "itq.iterations=3"], 2,
         "itq is not in this grid"),
    Case("table on a folder with a typo", ["table", "--results-dir", "{tmp}/typo"], 2, "no run records in"),
    Case("plot on a folder with a typo", ["plot", "--results-dir", "{tmp}/typo"], 2, "no run records in"),
    Case("HASHBENCH_PLUGINS with a typo", ["list", "methods"], 2, "HASHBENCH_PLUGINS names typo",
         env={"HASHBENCH_PLUGINS": "typo"}),
    Case("packed uint8 codes without --bits",
         ["evaluate", "--query-codes", "{tmp}/q.npy", "--db-codes", "{tmp}/db.npy",
          "--query-labels", "{tmp}/ql.npy", "--db-labels", "{tmp}/dbl.npy"], 2,
         "look like packed codes", {"": _codes_and_labels}),
    # ---- tracebacks where one line belongs
    Case("negative synthetic.dim", ["run", "--datasets", "synthetic", "--methods", "lsh", "--set", "synthetic.dim=-1"],
         2, "dataset synthetic: dim must be >= 1, got -1"),
    Case("negative digits.queries_per_class", ["run", *GRID, "--set", "digits.queries_per_class=-1"], 2,
         "dataset digits: queries_per_class must be >= 1, got -1"),
    Case("260-digit seed", ["run", "--datasets", "digits", "--methods", "lsh", "--seeds", "9" * 260], 2,
         "seeds must be whole numbers in 0..4294967295"),
    Case("methods: a mapping", ["run", "-c", "{tmp}/e.yaml"], 2, "'methods' must be a list",
         {"e.yaml": b"methods: {a: 1}\n"}),
    Case("methods: a nested list", ["run", "-c", "{tmp}/e.yaml"], 2, "'methods' holds ['lsh']",
         {"e.yaml": b"methods: [[lsh]]\n"}),
    Case("methods: a number", ["run", "-c", "{tmp}/e.yaml"], 2, "'methods' holds 1; each item must be a name",
         {"e.yaml": b"methods: [1]\n"}),
    Case("datasets: [null]", ["run", "-c", "{tmp}/e.yaml"], 2, "'datasets' holds None",
         {"e.yaml": b"datasets: [null]\n"}),
    Case("non-UTF-8 experiment file", ["run", "-c", "{tmp}/e.yaml"], 2, "is not UTF-8 text",
         {"e.yaml": b"methods: [\xff\xfe]\n"}),
    Case("empty .npy", ["evaluate", "--query-codes", "{tmp}/q.npy", "--db-codes", "{tmp}/q.npy",
                        "--query-labels", "{tmp}/q.npy", "--db-labels", "{tmp}/q.npy"], 2,
         "--query-codes: cannot read", {"q.npy": b""}),
    Case(".npz named .npy", ["evaluate", "--query-codes", "{tmp}/q.npy", "--db-codes", "{tmp}/q.npy",
                             "--query-labels", "{tmp}/q.npy", "--db-labels", "{tmp}/q.npy"], 2,
         "is a .npz archive", {"q.npy": _npz_named_npy}),
    Case("read-only results folder", ["run", *GRID, "--results-dir", "{tmp}/ro"], 2,
         "cannot write run records to", patch=_read_only),
    Case("results path is a file", ["run", *GRID, "--results-dir", "{tmp}/file"], 2,
         "cannot write run records to", {"file": b"not a folder"}),
    Case("full disk during run", ["run", *GRID, "--results-dir", "{tmp}/r"], 1,
         "No space left on device", patch=_no_space),
    Case("a plugin's register_methods raises", ["list", "methods"], 2,
         "plugin test-plugin: register_methods raised RuntimeError: broken",
         plugin={"register_methods": _raise(RuntimeError("broken"))}),
    Case("a plugin returns a non-class", ["list", "methods"], 2,
         "plugin test-plugin: register_methods returned 'lsh', not a class",
         plugin={"register_methods": lambda: ["lsh"]}),
    Case("a plugin's fit calls sys.exit(3)",
         ["run", "--datasets", "digits", "--methods", "exits", "--bits", "8", "--seeds", "0", "--no-table",
          "--results-dir", "{tmp}/r"], 1, "the run called sys.exit(3)",
         plugin={"register_methods": lambda: [_Exits]}),
    Case("Ctrl-C inside a run",
         ["run", "--datasets", "digits", "--methods", "interrupted", "--bits", "8", "--seeds", "0",
          "--no-table", "--results-dir", "{tmp}/r"], 130, "hashbench: interrupted",
         plugin={"register_methods": lambda: [_Interrupted]}),
    Case("NaN cibhash temperature", ["run", "--methods", "cibhash", "--set", "cibhash.temperature=.nan"], 2,
         "method cibhash: temperature must be a finite number > 0, got nan"),
    Case("NaN cibhash kl_weight", ["run", "--methods", "cibhash", "--set", "cibhash.kl_weight=.nan"], 2,
         "method cibhash: kl_weight must be a finite number >= 0, got nan"),
]


def _install_plugin(monkeypatch, hooks: dict[str, Any]) -> None:
    """A test-only plugin loaded the way an installed one is: when the CLI first needs the
    registries (so that a hook that raises, raises there)."""
    import types

    import hashbench.registry as registry_module
    from hashbench import hookimpl

    module = types.ModuleType("test-plugin")
    for name, fn in hooks.items():
        setattr(module, name, hookimpl(fn))
    original = registry_module.make_plugin_manager
    monkeypatch.setattr(registry_module, "make_plugin_manager",
                        lambda extra_plugins=None: original({**(extra_plugins or {}), "test-plugin": module}))


def _prepare(case: Case, tmp: Path, monkeypatch) -> list[str]:
    for name, content in case.files.items():
        path = tmp / name if name else tmp
        if callable(content):
            content(path)
        else:
            path.write_bytes(content)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    if case.plugin:
        _install_plugin(monkeypatch, case.plugin)
    if case.patch:
        case.patch(monkeypatch, tmp)
    monkeypatch.setattr("hashbench.registry._REGISTRIES", None)  # load plugins as a fresh process does
    return [a.replace("{tmp}", str(tmp)) for a in case.args]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_with_its_exit_code(case, cli, tmp_path, monkeypatch, one_line_error):
    monkeypatch.chdir(tmp_path)  # nothing lands in the source tree, even on a silent fallback
    args = _prepare(case, tmp_path, monkeypatch)
    code, out, err = cli(*args)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and "Traceback" not in out
    assert code == case.code, err
    # status lines may come first; the last line is the one that says what went wrong
    assert lines and lines[-1].startswith("hashbench: ") and case.says in lines[-1], err
    if case.code == 2:
        one_line_error(err)  # bad input: that line alone
        assert not (tmp_path / "results").exists()  # and nothing was run or written


def test_a_typo_in_the_results_folder_creates_nothing(cli, tmp_path, one_line_error):
    for command in ("table", "plot", "report"):
        code, _, err = cli(command, "--results-dir", str(tmp_path / "typo"))
        assert code == 2 and "no run records in" in one_line_error(err)
    assert not (tmp_path / "typo").exists()


def test_a_full_disk_leaves_the_previous_table_whole(cli, tmp_path, monkeypatch):
    assert cli("run", *GRID, "--results-dir", str(tmp_path))[0] == 0
    table = tmp_path / "tables" / "map.md"
    before = table.read_text()
    assert "lsh" in before
    _no_space(monkeypatch, tmp_path)
    code, _, err = cli("table", "--results-dir", str(tmp_path))
    assert code == 1 and "No space left on device" in err and str(tmp_path / "tables") in err
    assert table.read_text() == before  # never left empty or half-written
    assert not list((tmp_path / "tables").glob(".tmp-*"))


def test_a_run_that_exits_is_recorded_and_the_grid_goes_on(cli, tmp_path, with_plugin):
    with_plugin(register_methods=lambda: [_Exits])
    code, _, err = cli("run", "--datasets", "digits", "--methods", "exits,lsh", "--bits", "8", "--seeds", "0",
                       "--no-table", "--no-progress", "--results-dir", str(tmp_path))
    assert code == 1 and "1 done, 1 failed" in err
    records = {r["config"]["method"]: r for r in RunStore(tmp_path).records()}
    assert records["exits"]["status"] == "failed" and "sys.exit(3)" in records["exits"]["error"]
    assert records["lsh"]["status"] == "done"


def test_ctrl_c_inside_a_run_records_it_and_stops_the_grid(cli, tmp_path, with_plugin):
    with_plugin(register_methods=lambda: [_Interrupted])
    code, _, err = cli("run", "--datasets", "digits", "--methods", "interrupted,lsh", "--bits", "8", "--seeds", "0",
                       "--no-table", "--no-progress", "--results-dir", str(tmp_path))
    assert code == 130 and err.strip().splitlines()[-1] == "hashbench: interrupted"
    (record,) = RunStore(tmp_path).records()  # the grid stopped: lsh never ran
    assert record["config"]["method"] == "interrupted" and record["status"] == "failed"
    assert record["error"].startswith("KeyboardInterrupt")


def test_ctrl_c_while_the_command_starts_is_one_line(monkeypatch, capsys):
    """The console script imports the CLI inside a guard: Ctrl-C during those imports (the first
    ~0.1 s, measured: a traceback before) is the same one line as later."""
    import sys

    from hashbench import console

    class CtrlC:
        def find_spec(self, name, path=None, target=None):
            if name == "hashbench.cli":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "hashbench.cli")
    monkeypatch.setattr(sys, "meta_path", [CtrlC(), *sys.meta_path])
    assert console.main(["list"]) == 130
    assert capsys.readouterr().err == "hashbench: interrupted\n"


def test_a_worker_whose_driver_is_gone_exits_quietly():
    from hashbench.executors import _worker_loop

    class Gone:
        def __init__(self):
            self.tasks = [7]

        def recv(self):
            return self.tasks.pop() if self.tasks else None

        def send(self, message):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    _worker_loop(lambda task: task * 2, Gone())  # returns: no BrokenPipe traceback


# ----------------------------------------------------------------------------- records never misread

@pytest.fixture
def finished(cli, tmp_path):
    """A results folder with 3 finished lsh runs on digits (seeds 0, 1, 2); returns (folder, records)."""
    args = ["run", "--datasets", "digits", "--methods", "lsh", "--bits", "8", "--seeds", "0,1,2",
            "--no-progress", "--results-dir", str(tmp_path)]
    assert cli(*args)[0] == 0
    return tmp_path, RunStore(tmp_path).records(), args


def _mean_cell(results: Path) -> str:
    line = next(x for x in (results / "tables" / "map.md").read_text().splitlines() if x.startswith("| lsh"))
    return line.split("|")[2].strip()


def test_a_leftover_temporary_file_is_never_a_record(finished, cli):
    results, records, _ = finished
    cell = _mean_cell(results)
    stray = {**records[0], "metrics": {**records[0]["metrics"], "map": 0.0}}
    (results / "runs" / ".tmp-abc123.json").write_text(json.dumps(stray))  # a complete leftover
    assert cli("table", "--results-dir", str(results))[0] == 0
    assert _mean_cell(results) == cell  # still 3 seeds, the same mean
    assert len(RunStore(results).records()) == 3


def _corrupt(record: Mapping[str, Any], how: str) -> dict[str, Any]:
    record = json.loads(json.dumps(dict(record)))  # a RunRecord is a mapping of its JSON form
    if how == "null metric":
        record["metrics"]["map"] = None
    elif how == "NaN metric":
        record["metrics"]["map"] = math.nan
    elif how == "missing metric":
        del record["metrics"]["map_full"]
    elif how == "string metric":
        record["metrics"]["map"] = "0.9"
    elif how == "config without dataset":
        del record["config"]["dataset"]
    elif how == "garbage curves":
        record["curves"]["pr_curve"]["precision"] = ["x"]
    elif how == "edited config":
        record["config"]["method_params"] = {"hand": "edited"}
    elif how == "copied under another name":
        record["run_id"] = record["run_id"][:-1] + ("0" if record["run_id"][-1] != "0" else "1")
    return record


CORRUPTIONS = ["null metric", "NaN metric", "missing metric", "string metric", "config without dataset",
               "garbage curves", "edited config", "copied under another name"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_an_invalid_done_record_is_skipped_by_table_plot_report_and_redone_by_run(finished, cli, how):
    results, records, run_args = finished
    victim = records[1]
    path = RunStore(results).path(victim["run_id"])
    path.write_text(json.dumps(_corrupt(victim, how)))
    code, _, err = cli("table", "--results-dir", str(results))
    assert code == 0 and "Traceback" not in err
    warning = next(line for line in err.splitlines() if victim["run_id"] in line)  # named, one line
    assert warning.startswith("hashbench: warning: unreadable record") and "skipped" in warning
    with pytest.warns(RecordWarning):
        assert len(RunStore(results).records()) == 2  # the table averages the two valid seeds only
    code, _, err = cli("plot", "--results-dir", str(results), "--format", "png")
    assert code == 0 and "Traceback" not in err
    code, _, err = cli(*run_args)
    assert code == 0 and "1 done, 2 skipped" in err and "Traceback" not in err  # redone, never counted done
    assert list((results / "runs" / "unreadable").glob(f"{victim['run_id']}.*.json"))  # kept aside
    assert RunStore(results).read(victim["run_id"])["metrics"]["map"] == victim["metrics"]["map"]


def test_every_reference_record_is_valid():
    """The committed reference results pass the schema (with the run id recomputed from each config)."""
    reference = Path(__file__).resolve().parents[1] / "results" / "reference"
    if not (reference / "runs").is_dir():
        pytest.skip("no reference results in this tree")
    paths = [p for p in (reference / "runs").glob("*.json")]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RecordWarning)
        assert len(RunStore(reference).records()) == len(paths) > 0


def test_the_valid_record_helper_makes_valid_records(record_for, tmp_path):
    """The test helper makes records the store accepts (else the tests using it would prove nothing)."""
    (config,) = Experiment(methods=["lsh"], datasets=["synthetic"], bits=[8], seeds=[0]).grid()
    store = RunStore(tmp_path)
    store.write(record_for(config))
    assert store.read(config.run_id)["status"] == "done"
