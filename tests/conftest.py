"""Shared fixtures: an in-process CLI, a fresh registry, test-only plugins."""

from __future__ import annotations

import os
import types

import pytest

from hashbench import hookimpl
from hashbench import registry as registry_module
from hashbench.cli import main

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; see hashbench.cli.main


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch, tmp_path_factory):
    """Every test starts from the installed plugins only, with a private cache, and leaves them so."""
    monkeypatch.delenv("HASHBENCH_PLUGINS", raising=False)
    monkeypatch.setenv("HASHBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    registry_module.reload()
    _clear_process_caches()
    yield
    registry_module.reload()
    _clear_process_caches()


def _clear_process_caches():
    from hashbench import runner

    runner._load_splits.cache_clear()
    runner._load_features.cache_clear()


@pytest.fixture
def cli(capsys):
    """Run ``hashbench ARGS`` in this process; returns (exit code, stdout, stderr)."""

    def run(*args: str):
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def with_plugin():
    """Register a module of hook implementations (as a test-only plugin) for this test."""

    def register(label: str = "test-plugin", **hooks):
        """``register(register_methods=lambda: [MyMethod])``."""
        module = types.ModuleType(label)
        for name, fn in hooks.items():
            setattr(module, name, hookimpl(fn))
        registry_module.reload(extra_plugins={label: module})
        return module

    return register


def _one_line_error(err: str) -> str:
    """Assert ``err`` is a single 'hashbench: ...' line without a traceback; return it."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hashbench: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def one_line_error():
    """The check that an error output is one 'hashbench: ...' line with no traceback."""
    return _one_line_error
