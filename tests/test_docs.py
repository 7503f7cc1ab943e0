"""The code in docs/plugins.md runs as written (the median-hash example is tested in test_registry)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np

import hashbench
from hashbench.components import Split

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _deep_example(monkeypatch) -> types.ModuleType:
    block = next(b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
                 if "DeepHashMethod" in b)
    module = types.ModuleType("tanh_contrast_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    exec(compile(block, str(DOC), "exec"), module.__dict__)
    return module


def test_deep_method_example_trains_through_the_shared_loop(with_plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    example = _deep_example(monkeypatch)
    with_plugin(register_methods=lambda: example.register_methods())
    method = hashbench.create("method", "tanh-contrast", bits=8, seed=0, backbone="resnet18",
                              pretrained=False, input_size=32, epochs=2, batch_size=8, bank_views=2,
                              val_every=1, patience=0, quantization_weight=0.5)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(24, 16, 16, 3), dtype=np.uint8)
    y = np.repeat(np.arange(4), 6)
    ids = np.arange(24)
    method.workdir = tmp_path
    method.fit(Split(x[:16], y[:16], ids[:16]), Split(x[16:], y[16:], ids[16:]))
    codes = method.encode(x)
    assert codes.dtype == bool and codes.shape == (24, 8)
    log = method.report()
    assert set(log["epochs"][-1]["terms"]) == {"nt_xent", "quantization"}
    assert method.term_weights() == {"quantization": 0.5}


def test_executor_example_brings_its_option(with_plugin, monkeypatch, cli, capsys, tmp_path):
    """The executor of docs/plugins.md: its --shuffle-seed is in run --help and runs the grid."""
    import pytest

    from hashbench.cli import main

    block = next(b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
                 if "register_executors" in b)
    module = types.ModuleType("serial_shuffled_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    exec(compile(block, str(DOC), "exec"), module.__dict__)
    with_plugin(register_executors=module.register_executors)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--shuffle-seed N executor serial-shuffled: seed of the order the runs go in (>= 0; default 0)" in help_text
    code, _, err = cli("run", "--methods", "lsh,itq", "--datasets", "digits", "--bits", "8", "--seeds", "0",
                       "--executor", "serial-shuffled", "--shuffle-seed", "3", "--no-progress", "--no-table",
                       "--results-dir", str(tmp_path))
    assert code == 0 and "hashbench: 2 done" in err, err
