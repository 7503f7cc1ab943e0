"""A third-party plugin with no core edit: tests/plugins/hashbench_example, installed the way every
plugin is (a dist-info with its ``hashbench`` entry point, on a path of its own), brings its own
augmentation recipe (``example-noise``, hook ``register_augmentations``) and its own executor with
its own command-line option (``serial-shuffled``, ``--shuffle-seed``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hashbench import registry as registry_module

PROJECT = Path(__file__).parent / "plugins" / "hashbench_example"
HASHBENCH = str(Path(sys.executable).with_name("hashbench"))
GRID = ["--methods", "lsh,itq", "--datasets", "synthetic", "--bits", "8,16", "--seeds", "0",
        "--no-progress", "--no-table"]


def _sibling(name: str):
    """A module of tests/ by file (works in any pytest import mode), under a private name."""
    spec = importlib.util.spec_from_file_location(f"_example_plugin_{name}", Path(__file__).parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """The plugin's dist-info (name, version and entry points from its pyproject.toml) on a path
    of its own; the package itself is imported from its project folder."""
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    site = tmp_path_factory.mktemp("site")
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    points = "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["hashbench"].items())
    (info / "entry_points.txt").write_text(f"[hashbench]\n{points}")
    return site


@pytest.fixture
def example(example_site, monkeypatch):
    """The plugin installed for this process and its children; returns its module."""
    for path in (PROJECT, example_site):
        monkeypatch.syspath_prepend(str(path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(example_site), str(PROJECT),
                                                                  os.environ.get("PYTHONPATH")])))
    registry_module.reload()
    import hashbench_example

    return hashbench_example


def _help(cli_main, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        cli_main(["run", "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_listed_through_its_entry_point(example, cli):
    code, out, _ = cli("list", "augmentations")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("example-noise"))
    assert "hashbench-example:example" in row and "Gaussian pixel noise" in row
    code, out, _ = cli("list", "executors")
    assert code == 0 and any(line.startswith("serial-shuffled") for line in out.splitlines())


def test_the_console_script_lists_the_recipe_and_the_option(example, tmp_path):
    """A fresh process finds the plugin through its entry point alone."""
    env = {k: v for k, v in os.environ.items() if k != "HASHBENCH_PLUGINS"}
    listed = subprocess.run([HASHBENCH, "list", "augmentations"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "example-noise" in listed.stdout and "hashbench-example:example" in listed.stdout
    helped = subprocess.run([HASHBENCH, "run", "--help"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())
    assert "--shuffle-seed N executor serial-shuffled: seed of the order the runs go in (>= 0; default 0)" in text


def test_the_option_reaches_the_executor_config(example, cli, capsys, tmp_path, monkeypatch):
    from hashbench.cli import main

    assert "--shuffle-seed N executor serial-shuffled: seed of the order" in _help(main, capsys)
    seen = []
    original = example.SerialShuffled.map

    def spy(self, fn, tasks):
        tasks = list(tasks)
        ran = [summary["run_id"] for summary in original(self, fn, tasks)]
        seen.append((self.config, [t.config.run_id for t in tasks], ran))
        yield from ({"run_id": r, "status": "done"} for r in ran)

    monkeypatch.setattr(example.SerialShuffled, "map", spy)
    results = tmp_path / "results"
    code, _, err = cli("run", *GRID, "--executor", "serial-shuffled", "--shuffle-seed", "3",
                       "--results-dir", str(results))
    assert code == 0, err
    (config, tasks, ran), = seen
    assert config == example.SerialShuffled.Config(shuffle_seed=3)
    assert ran == [tasks[i] for i in example.SerialShuffled(shuffle_seed=3).order(len(tasks))] != tasks
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert len(records) == 4 and all(r["status"] == "done" for r in records)


@pytest.mark.parametrize("flags, message", [
    (["--executor", "serial-shuffled", "--shuffle-seed", "three"],
     "hashbench: run: argument --shuffle-seed: invalid int value: 'three'"),
    (["--executor", "serial-shuffled", "--shuffle-seed", "-1"],
     "hashbench: executor serial-shuffled: --shuffle-seed must be >= 0, got -1"),
    (["--shuffle-seed", "3"], "hashbench: executor local takes no --shuffle-seed"),
    (["--executor", "serial-shufled"], "hashbench: unknown executor 'serial-shufled'. Did you mean: serial-shuffled?"),
])
def test_a_typo_is_one_line_exit_2(flags, message, example, cli, tmp_path, one_line_error):
    code, _, err = cli("run", *GRID, *flags, "--results-dir", str(tmp_path / "r"))
    assert code == 2 and one_line_error(err).startswith(message), err
    assert not (tmp_path / "r").exists()


def test_without_the_plugin_its_option_and_recipe_are_unknown(example, cli, tmp_path, monkeypatch, one_line_error):
    monkeypatch.setenv("HASHBENCH_PLUGINS", "none")
    registry_module.reload()
    code, _, err = cli("run", *GRID, "--shuffle-seed", "3", "--results-dir", str(tmp_path / "r"))
    assert code == 2 and "unrecognized arguments: --shuffle-seed 3" in one_line_error(err)
    code, out, _ = cli("list", "augmentations")
    assert code == 0 and "example-noise" not in out


@pytest.fixture
def tiny_fashion(tmp_path, monkeypatch):
    """Tiny fashion-mnist files (60 images) under HASHBENCH_DATA; the --set flags that fit them."""
    from hashbench.data import fashion_mnist, roots

    _sibling("test_image_protocols")._write_fashion(tmp_path / "data" / "fashion-mnist", gz=True)
    monkeypatch.setenv(roots.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setattr(fashion_mnist.FashionMNIST, "system_dirs", ())
    return ["--set", "fashion-mnist.queries_per_class=2", "--set", "fashion-mnist.train_per_class=3",
            "--set", "fashion-mnist.val_per_class=1"]


@pytest.mark.parametrize("bank_views", [0, 2], ids=["live", "bank"])
def test_a_deep_method_trains_with_the_recipe(bank_views, example, tiny_fashion, cli, tmp_path, monkeypatch,
                                              one_torch_thread, one_line_error):
    calls = []
    transform = example.NoisyCrop.transform

    def counted(self, size):
        calls.append(size)
        return transform(self, size)

    monkeypatch.setattr(example.NoisyCrop, "transform", counted)
    tiny = [f"greedyhash.{k}" for k in ("backbone=vit_tiny_patch16_224", "pretrained=false", "input_size=32",
                                         "epochs=1", "batch_size=16", f"bank_views={bank_views}",
                                         "val_every=1", "patience=0")]
    grid = ["--methods", "greedyhash", "--datasets", "fashion-mnist", "--bits", "16", "--seeds", "0",
            "--no-progress", "--no-table", *tiny_fashion, *[a for t in tiny for a in ("--set", t)]]
    results = tmp_path / "results"
    code, _, err = cli("run", *grid, "--set", "greedyhash.augment=example-noise", "--results-dir", str(results))
    assert code == 0, err
    (record,) = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert record["status"] == "done", record.get("error")
    assert record["config"]["method_params"]["augment"] == "example-noise"
    assert calls and set(calls) == {32}  # the plugin's transform made the views
    assert 0.0 <= record["metrics"]["map"] <= 1.0

    code, _, err = cli("run", *grid, "--set", "greedyhash.augment=example-nosie", "--results-dir", str(results))
    assert code == 2
    message = one_line_error(err)
    assert "augment" in message and "example-nosie" in message


def test_its_components_keep_the_contract(example, request, tmp_path):
    contract = _sibling("test_contract")
    contract.check_augmentation("example-noise", request, tmp_path)
    contract.check_executor("serial-shuffled", request, tmp_path)
