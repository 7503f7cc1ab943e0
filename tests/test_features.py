"""Features for shallow methods on image protocols: raw pixels, backbone features, the cache."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

import hashbench
from hashbench import banks
from hashbench.components import Splits
from hashbench.config import Experiment
from hashbench.errors import HashbenchError
from hashbench.features import FeatureSpec, feature_splits
from hashbench.runner import run_grid


@pytest.fixture
def plugins(with_plugin, monkeypatch, tiny_images):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return with_plugin(register_datasets=lambda: [tiny_images])


#: a small random-weight timm model: cheap, and real
TINY = {"backbone": "resnet18", "pretrained": False, "input_size": 32}


def test_pixels_are_scaled_and_flattened(plugins):
    protocol = hashbench.create("dataset", "tiny-images")
    splits = protocol.load()
    feats, info = feature_splits(protocol, {"split_seed": 0}, splits, FeatureSpec(backbone="none"))
    assert info == {"backbone": None, "cached": False}
    assert feats.query.x.shape == (20, 64) and feats.query.x.dtype == np.float32
    np.testing.assert_allclose(feats.query.x, splits.query.x.reshape(20, 64) / 255.0)
    assert np.array_equal(feats.database.index, splits.database.index)


def test_backbone_features_are_cached_and_shared(plugins):
    from hashbench.banks import clean_features

    protocol = hashbench.create("dataset", "tiny-images")
    splits = protocol.load()
    spec = FeatureSpec.resolve(TINY)
    feats, info = feature_splits(protocol, {"split_seed": 0}, splits, spec)
    assert info["cached"] is False and info["weights"] == "random:0" and info["input_size"] == 32
    assert feats.train.x.shape == (40, 512) and feats.train.x.dtype == np.float32
    backbone = hashbench.create("backbone", "resnet18", pretrained=False, input_size=32)
    direct = backbone.encode_images(splits.query.x)
    np.testing.assert_allclose(feats.query.x, direct, rtol=1e-4, atol=1e-5)

    again, info2 = feature_splits(protocol, {"split_seed": 0}, splits, spec)
    assert info2["cached"] is True  # every split read back from the cache
    for name in ("train", "val", "query", "database"):
        np.testing.assert_array_equal(getattr(again, name).x, getattr(feats, name).x)
    # the deep methods' frozen path reads the same cache entry
    _, hit = clean_features(backbone, splits.database.x)
    assert hit["cache_hit"] is True
    bigger = FeatureSpec.resolve({**TINY, "input_size": 40})
    _, info3 = feature_splits(protocol, {"split_seed": 0}, splits, bigger)
    assert info3["cached"] is False and info3["input_size"] == 40


def test_grid_attaches_features_only_where_they_apply(plugins):
    grid = Experiment(methods=["itq"], datasets=["tiny-images", "digits"], bits=[8], seeds=[0],
                      features=TINY).grid()
    by_dataset = {c.dataset: c for c in grid}
    assert by_dataset["tiny-images"].features == TINY
    assert by_dataset["digits"].features == {}  # digits already provides features


def test_run_records_the_features(plugins, tmp_path):
    grid = Experiment(methods=["itq", "lsh"], datasets=["tiny-images"], bits=[8], seeds=[0, 1],
                      features=TINY).grid()
    summaries = run_grid(grid, tmp_path, progress=False)
    assert [s["status"] for s in summaries] == ["done"] * 4
    rec = json.loads(next((tmp_path / "runs").glob("itq-*.json")).read_text())
    assert rec["features"]["backbone"] == "resnet18" and rec["features"]["feature_dim"] == 512
    assert "features_s" in rec["timings"] and rec["metrics"]["map"] > 0.5


@pytest.mark.parametrize("features, message", [
    ({"backbone": "resnet18x"}, "unknown backbone 'resnet18x'"),
    ({"backbone": "none", "pretrained": True}, "need a --backbone"),
    ({"backbone": "resnet18", "pretrained": "/no/such/weights.pth"}, "no such weights file"),
    ({"backbone": "resnet18", "input_size": 3}, "input size must be between 8 and 2048"),
    ({"backbone": "resnet18", "depth": 3}, "features has no parameter 'depth'"),
])
def test_bad_feature_specs(plugins, features, message):
    with pytest.raises(HashbenchError, match=message):
        Experiment(methods=["itq"], datasets=["tiny-images"], bits=[8], seeds=[0], features=features).grid()


def test_method_that_needs_images_is_refused_on_a_feature_protocol(with_plugin):
    class ImageMethod(hashbench.components.HashMethod):
        name = "image-method"
        input = "images"

    with_plugin(register_methods=lambda: [ImageMethod])
    with pytest.raises(HashbenchError, match="method image-method takes images but dataset digits provides features"):
        Experiment(methods=["image-method"], datasets=["digits"], bits=[8], seeds=[0]).grid()


def test_cli_backbone_flags(plugins, cli, tmp_path, one_line_error):
    base = ("run", "--methods", "itq", "--datasets", "tiny-images", "--bits", "8", "--seeds", "0",
            "--results-dir", str(tmp_path), "--no-progress")
    code, _, err = cli(*base, "--backbone", "none")
    assert code == 0, err
    rec = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    assert rec["config"]["features"] == {"backbone": None, "pretrained": False, "input_size": None}
    code, _, err = cli(*base, "--backbone", "resnet18", "--pretrained", "false", "--input-size", "32")
    assert code == 0, err
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2
    code, _, err = cli(*base, "--backbone", "none", "--pretrained")
    assert code == 2 and "need a --backbone" in one_line_error(err)


def test_offline_pretrained_backbone_fails_at_once(plugins, cli, tmp_path, monkeypatch, one_line_error):
    """With HF_HUB_OFFLINE=1, --backbone resnet18 --pretrained stops before any run, in one line."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli("run", "--methods", "itq", "--datasets", "tiny-images", "--bits", "8", "--seeds", "0",
                       "--backbone", "resnet18", "--pretrained", "--results-dir", str(tmp_path), "--no-progress")
    assert code == 2
    line = one_line_error(err)
    assert "backbone resnet18: no pretrained weights available offline" in line
    assert "--pretrained PATH" in line and "--pretrained false" in line
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))


def test_preflight_refuses_a_leaking_protocol_before_any_run(with_plugin, cli, tmp_path, one_line_error, tiny_images):
    class Leaky(tiny_images):
        name = "leaky-images"

        def load(self):
            s = super().load()
            return Splits(train=s.train, val=s.val, query=s.query, database=s.query)

    with_plugin(register_datasets=lambda: [Leaky])
    code, _, err = cli("run", "--methods", "itq", "--datasets", "leaky-images", "--bits", "8", "--seeds", "0",
                       "--backbone", "none", "--results-dir", str(tmp_path), "--no-progress")
    assert code == 2
    assert "splits 'query' and 'database' must be disjoint" in one_line_error(err)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))


def test_preflight_checks_a_deep_methods_backbone(plugins, cli, tmp_path, monkeypatch, one_line_error):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli("run", "--methods", "cibhash", "--datasets", "tiny-images", "--bits", "8", "--seeds", "0",
                       "--set", "cibhash.backbone=resnet18", "--results-dir", str(tmp_path), "--no-progress")
    assert code == 2
    assert "backbone resnet18: no pretrained weights available offline" in one_line_error(err)


def test_warm_caches_computes_what_a_grid_reads_in_one_pass_per_split(plugins, with_plugin, tmp_path, monkeypatch, tiny_images):
    """A shallow method on backbone features and a deep method on tokens of the same backbone:
    each split gets one backbone pass for both kinds, each distinct image computed once (the
    train images inside the database are copied); the runs then compute nothing."""
    import torch

    from hashbench.deep import DeepHashMethod, TrainConfig
    from hashbench.models.backbones import TimmBackbone
    from hashbench.runner import warm_caches

    class TokenHead(DeepHashMethod):
        name = "token-head"
        summary = "mean of tokens -> Linear (test only)"
        backbone_output = "tokens"

        @dataclass(frozen=True)
        class Config(TrainConfig):
            backbone: str = "resnet18"
            pretrained: bool | str = False
            input_size: int | None = 32
            bank_views: int = 2
            epochs: int = 1
            batch_size: int = 8

        def build_head(self, dim):
            return torch.nn.Linear(dim, self.bits)

        def objective(self, head, f1, f2):
            return {"l2": ((head(f1.mean(1)) - head(f2.mean(1))) ** 2).mean()}

        def hash_codes(self, head, f):
            return head(f.mean(1)) >= 0

    with_plugin("both", register_datasets=lambda: [tiny_images], register_methods=lambda: [TokenHead])
    monkeypatch.setattr(banks, "MAX_FORWARD_WORKERS", 1)  # no first-chunk check of worker threads (test_cache_memory)
    passes = []
    real = TimmBackbone.outputs
    monkeypatch.setattr(TimmBackbone, "outputs",  # passes over more than one image (not shape probes)
                        lambda self, x, names=("pooled",): (len(x) > 1 and passes.append((tuple(names), len(x))))
                        or real(self, x, names))
    grid = Experiment(methods=["itq", "token-head"], datasets=["tiny-images"], bits=[8], seeds=[0, 1],
                      features=TINY).grid()
    done = warm_caches(grid, tmp_path, progress=False)
    assert sorted((d["what"], tuple(d["outputs"]), d["cache_hit"]) for d in done) == [
        ("bank light x2", ("tokens",), False),
        *[(f"clean {s}", ("pooled", "tokens"), False) for s in ("database", "query", "train", "val")],
    ]
    # both kinds in each pass; the 120 distinct images once each (train 40, val 20, query 20, and
    # the database's 80 minus its 40 train images); the bank: 40 images x 2 views, tokens only
    assert {names for names, _ in passes} == {("pooled", "tokens"), ("tokens",)}
    assert sum(n for names, n in passes if names == ("pooled", "tokens")) == 120
    assert sum(n for names, n in passes if names == ("tokens",)) == 40 * 2
    assert max(n for _, n in passes) < banks.FORWARD_BATCH + banks.MIN_FORWARD
    passes.clear()
    summaries = run_grid(grid, tmp_path, progress=False)
    assert [s["status"] for s in summaries] == ["done"] * 4
    assert passes == []  # the runs recompute nothing
    assert warm_caches(grid, tmp_path, progress=False) == []  # every run is done: nothing to read
