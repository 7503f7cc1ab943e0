"""The plugin registry: built-ins through entry points, timm-style API, third-party plugins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import hashbench
from hashbench.components import HashMethod
from hashbench.errors import HashbenchError, UnknownComponentError
from hashbench.registry import HOOKS, registry

ROOT = Path(__file__).resolve().parents[1]
#: the installed console script (run away from the source tree, which is not importable as-is)
HASHBENCH = str(Path(sys.executable).with_name("hashbench"))


def test_builtins_register_through_entry_points():
    entry = registry("method").entry("itq")
    assert entry.plugin == "hashbench.baselines.itq"
    assert registry("dataset").entry("digits").plugin == "hashbench.data.builtin"
    assert set(hashbench.names("methods")) >= {"lsh", "pcah", "itq", "sh"}


def test_names_fnmatch_and_create():
    assert hashbench.names("method", "*h") == [n for n in hashbench.names("method") if n.endswith("h")]
    assert "itq" not in hashbench.names("method", "*h")
    method = hashbench.create("method", "itq", bits=16, seed=3, iterations=7)
    assert method.bits == 16 and method.seed == 3 and method.config.iterations == 7


def test_unknown_name_lists_closest():
    with pytest.raises(UnknownComponentError, match=r"unknown method 'itqq'\. Did you mean: itq\?"):
        hashbench.create("method", "itqq", bits=16)


def test_unknown_parameter_lists_fields():
    with pytest.raises(HashbenchError, match=r"no parameter 'iteration'.*Did you mean: iterations"):
        hashbench.create("method", "itq", bits=16, iteration=5)
    with pytest.raises(HashbenchError, match=r"'iterations' expects int"):
        hashbench.create("method", "itq", bits=16, iterations="many")


def test_unknown_kind():
    with pytest.raises(HashbenchError, match="unknown component kind"):
        hashbench.names("widgets")


def test_every_kind_has_a_documented_hook():
    from hashbench import hookspecs

    for hook in HOOKS.values():
        assert getattr(hookspecs, hook).__doc__.strip()


def test_duplicate_name_is_an_error(with_plugin):
    class FakeITQ(HashMethod):
        name = "itq"

    with pytest.raises(HashbenchError, match="registered twice"):
        with_plugin(register_methods=lambda: [FakeITQ])


def test_list_command(cli):
    code, out, _ = cli("list", "methods")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("itq "))
    assert "hashbench.baselines.itq" in row and "Iterative Quantization" in row
    code, out, _ = cli("list")
    assert code == 0 and "datasets:" in out and "executors:" in out and "local" in out


def test_packages_cover_every_plugin_folder():
    """Every bundled plugin folder is packaged, and only under the hashbench namespace."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(config["packages"])
    assert all(p == "hashbench" or p.startswith("hashbench.") for p in packages)
    for folder, namespace in (("baselines", "hashbench.baselines"), ("plugins", "hashbench.plugins"),
                              ("hashbench", "hashbench")):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((namespace, *rel)).rstrip(".") in packages, init


def _doc_blocks(lang: str) -> list[str]:
    text = (ROOT / "docs" / "plugins.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


@pytest.fixture
def fake_distribution(tmp_path):
    """The example plugin of docs/plugins.md as a separate distribution on a path of its own."""
    module = next(b for b in _doc_blocks("python") if "@hookimpl" in b)
    pyproject = tomllib.loads(next(b for b in _doc_blocks("toml") if "entry-points" in b))
    project = pyproject["project"]
    (ep_name, ep_value), = pyproject["project"]["entry-points"]["hashbench"].items()
    site = tmp_path / "site"
    (site / ep_value).mkdir(parents=True)
    (site / ep_value / "__init__.py").write_text(module)
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text(f"[hashbench]\n{ep_name} = {ep_value}\n")
    return site


def _hashbench(args, site, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "HASHBENCH_PLUGINS"}
    full_env.update(PYTHONPATH=str(site), **env)
    return subprocess.run([HASHBENCH, *args], env=full_env, cwd=site,
                          capture_output=True, text=True, timeout=120)


def test_third_party_distribution_is_listed_and_runs(fake_distribution, tmp_path):
    listed = _hashbench(["list", "methods"], fake_distribution)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("median-hash"))
    assert "hashbench-median:median-hash" in row and "example plugin" in row

    results = tmp_path / "results"
    ran = _hashbench(["run", "--methods", "median-hash,lsh", "--datasets", "synthetic", "--bits", "8",
                      "--seeds", "0", "--set", "median-hash.replace=true", "--results-dir", str(results),
                      "--no-progress"], fake_distribution)
    assert ran.returncode == 0, ran.stderr
    import json
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("median-hash-*.json")]
    assert len(records) == 1 and records[0]["status"] == "done", records
    assert records[0]["config"]["method_params"] == {"replace": True}
    assert records[0]["versions"]["hashbench-median"] == "0.1.0"
    assert 0.0 < records[0]["metrics"]["map"] <= 1.0
    assert "median-hash[replace=True]" in (results / "tables" / "map.md").read_text()


def test_env_var_restricts_external_plugins(fake_distribution, one_line_error):
    hidden = _hashbench(["list", "methods"], fake_distribution, HASHBENCH_PLUGINS="none")
    assert hidden.returncode == 0 and "median-hash" not in hidden.stdout
    assert "itq" in hidden.stdout  # built-ins always load
    allowed = _hashbench(["list", "methods"], fake_distribution, HASHBENCH_PLUGINS="hashbench-median")
    assert "median-hash" in allowed.stdout
    other = _hashbench(["list", "methods"], fake_distribution, HASHBENCH_PLUGINS="something-else")
    assert other.returncode == 2 and "median-hash" not in other.stdout  # a typo loads nothing silently: an error
    message = one_line_error(other.stderr)
    assert "HASHBENCH_PLUGINS names something-else" in message and "hashbench-median" in message
    refused = _hashbench(["run", "--methods", "median-hash", "--datasets", "synthetic"], fake_distribution,
                         HASHBENCH_PLUGINS="")
    assert refused.returncode == 2
    assert "unknown method 'median-hash'" in one_line_error(refused.stderr)
