"""Shared fixtures: an in-process CLI, a fresh registry, test-only plugins."""

from __future__ import annotations

import os
import types
from dataclasses import dataclass

import numpy as np

import pytest

from hashbench import hookimpl
from hashbench import registry as registry_module
from hashbench.cli import main
from hashbench.components import Protocol, Split, Splits

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
    monkeypatch.undo()  # the test's environment and patches first (a HASHBENCH_PLUGINS typo, a broken plugin)
    registry_module.reload()
    _clear_process_caches()


def _clear_process_caches():
    from hashbench import banks, runner

    runner._load_splits.cache_clear()
    runner._load_features.cache_clear()
    banks.clear_memory()
    banks._THREADED_FORWARD_OK.clear()


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


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (two threads on a shared 2-core machine can be 100x
    slower when another process holds a core); the previous count is restored."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyImages(Protocol):
    """4 classes x 30 8x8 grey images, class c bright in quadrant c plus noise: query 5, val 5,
    database 20 per class, train every other database image (test only)."""

    name = "tiny-images"
    summary = "8x8 quadrant images (test only)"
    provides = ("images",)
    num_classes = 4

    @dataclass(frozen=True)
    class Config:
        split_seed: int = 0

    def fingerprint(self) -> str:
        return "tiny-v1"

    def load(self):
        rng = np.random.default_rng(self.config.split_seed)
        y = np.repeat(np.arange(4), 30)
        x = rng.integers(0, 60, size=(len(y), 8, 8)).astype(np.uint8)
        for c in range(4):
            r, q = divmod(c, 2)
            x[y == c, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 180
        ids, pos = np.arange(len(y)), np.tile(np.arange(30), 4)

        def split(sel):
            return Split(x=x[sel], labels=y[sel], index=ids[sel])

        return Splits(train=split(ids[pos >= 10][::2]), val=split(ids[(pos >= 5) & (pos < 10)]),
                      query=split(ids[pos < 5]), database=split(ids[pos >= 10]))


@pytest.fixture
def tiny_images() -> type:
    """The test image protocol "tiny-images" (:class:`TinyImages`; register it with ``with_plugin``)."""
    return TinyImages


@dataclass
class PatternedImages:
    """4 classes x 15 noisy 16x16 RGB patterns (horizontal / vertical stripes, checks,
    diagonals): uint8 ``x`` (60, 16, 16, 3), int ``y`` (60,); id arrays ``query`` (3 per class),
    ``val`` (2 per class) and ``train`` (the other 10 per class)."""

    x: np.ndarray
    y: np.ndarray
    query: np.ndarray
    val: np.ndarray
    train: np.ndarray

    def split(self, ids: np.ndarray):
        from hashbench.components import Split

        return Split(self.x[ids], self.y[ids], ids)


@pytest.fixture
def patterned_images() -> PatternedImages:
    """The tiny image data of the deep methods' fit tests (see :class:`PatternedImages`)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    patterns = [(yy // 2) % 2, (xx // 2) % 2, ((yy // 2) + (xx // 2)) % 2, ((yy + xx) // 3) % 2]
    colors = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255], [240, 240, 40]])
    x, y = [], []
    for c, pattern in enumerate(patterns):
        for _ in range(15):
            image = pattern[..., None] * colors[c] + rng.normal(0, 25, (16, 16, 3))
            x.append(np.clip(image, 0, 255).astype(np.uint8))
            y.append(c)
    x, y = np.stack(x), np.array(y)
    ids = np.arange(len(y))
    query = np.concatenate([ids[y == c][:3] for c in range(4)])
    val = np.concatenate([ids[y == c][3:5] for c in range(4)])
    train = np.setdiff1d(ids, np.concatenate([query, val]))
    return PatternedImages(x, y, query, val, train)


def valid_record(config, status: str = "done", map_value: float = 0.5, **extra):
    """A run record that passes the store's schema (hashbench.store.check_record) for a
    RunConfig: a done one with every metric and curve, a failed one with its error text."""
    record = {"run_id": config.run_id, "status": status, "config": config.to_dict(), "seconds": 1.0}
    if status == "done":
        record["metrics"] = {"map": map_value, "map_full": map_value, "map_tie_aware": map_value,
                             "precision_h2": 0.5, "recall_h2": 0.1, "topk": 10}
        record["curves"] = {"pr_curve": {"radius": [0, 1], "precision": [0.6, 0.5], "recall": [0.1, 0.2]},
                            "precision_at_k": {"k": [1, 10], "precision": [1.0, 0.8]}}
        record["error"] = None
    else:
        record["error"] = "RuntimeError: it broke"
    record.update(extra)
    return record


@pytest.fixture
def record_for():
    """``record_for(config, **kw)``: :func:`valid_record`."""
    return valid_record
