"""The deep training engine: hashbench.train, hashbench.banks, hashbench.augment.

Tiny data (4 classes of 16x16 quadrant images) and timm's tiny random ``test_efficientnet``
at 32 px; torch runs on one thread here (two threads on a shared 2-core machine can be 100x
slower when another process holds a core).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("torchvision")

import hashbench  # noqa: E402
from hashbench import augment, banks  # noqa: E402
from hashbench import train as engine  # noqa: E402
from hashbench.components import Split  # noqa: E402
from hashbench.data.images import ImageFiles  # noqa: E402
from hashbench.deep import DeepHashMethod, TrainConfig  # noqa: E402
from hashbench.errors import HashbenchError  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quadrants(n: int, seed: int, offset: int = 0, side: int = 16) -> Split:
    """n grey images of 4 classes: class c is bright in quadrant c, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.integers(0, 60, size=(n, side, side)).astype(np.uint8)
    h = side // 2
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, h * r:h * r + h, h * q:h * q + h] += 180
    return Split(x=x, labels=y, index=np.arange(n) + offset)


TRAIN = quadrants(48, 0)
VAL = quadrants(24, 1, offset=1000)


class Toy(DeepHashMethod):
    """Head Dropout -> Linear(F, bits); NT-Xent of tanh codes + quantization (test only)."""

    name = "toy"
    summary = "toy deep method (test only)"

    @dataclass(frozen=True)
    class Config(TrainConfig):
        backbone: str = "test_efficientnet"
        pretrained: bool | str = False
        input_size: int | None = 32
        augment: str = "light"
        bank_views: int = 3
        epochs: int = 4
        batch_size: int = 16
        lr: float = 1e-2
        val_every: int = 2
        patience: int = 0
        quantization: float = 0.1

    def build_head(self, feature_dim):
        return torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(feature_dim, self.bits))

    def _h(self, head, f):
        f = f.mean(dim=1) if f.dim() == 3 else f  # tokens -> pooled
        return torch.tanh(head(f * 100))  # random-init features are tiny

    def objective(self, head, f1, f2):
        h1, h2 = self._h(head, f1), self._h(head, f2)
        nt = hashbench.create("loss", "nt_xent")
        quant = hashbench.create("loss", "quantization")
        return {**nt(h1, h2), **quant(torch.cat([h1, h2]))}

    def term_weights(self):
        return {"quantization": self.config.quantization}

    def hash_codes(self, head, f):
        return self._h(head, f) >= 0


class ToyTokens(Toy):
    name = "toy-tokens"
    backbone_output = "tokens"


def toy(cls=Toy, bits: int = 8, seed: int = 0, **params) -> Toy:
    return cls(bits=bits, seed=seed, **params)


def term_log(log):
    return [(e["epoch"], e["terms"], e["loss"], e["val_map"]) for e in log["epochs"]]


# ----------------------------------------------------------------------------- augment

def test_recipes_give_seeded_independent_views():
    backbone = hashbench.create("backbone", "test_efficientnet", pretrained=False, input_size=32)
    before = torch.random.get_rng_state()
    for recipe in augment.recipe_names():
        aug = augment.Augmenter(backbone, recipe)
        a1, a2 = aug.two_views(TRAIN.x[:6], seed=5)
        b1, _ = aug.two_views(TRAIN.x[:6], seed=5)
        c1, _ = aug.two_views(TRAIN.x[:6], seed=6)
        assert a1.shape == (6, 3, 32, 32) and a1.dtype == torch.float32
        assert torch.equal(a1, b1) and not torch.equal(a1, a2) and not torch.equal(a1, c1)
        # normalized with the backbone's mean and std: back in [0, 1]
        unit = a1 * aug.std + aug.mean
        assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator is untouched
    with pytest.raises(HashbenchError, match=r"unknown augmentation recipe 'nope' \(recipes: cibhash, light, mocov2\)"):
        augment.Augmenter(backbone, "nope")


# ----------------------------------------------------------------------------- banks

def test_content_hash(tmp_path):
    x = TRAIN.x
    assert banks.content_hash(x) == banks.content_hash(x.copy())
    y = x.copy()
    y[0, 0, 0] ^= 1
    assert banks.content_hash(y) != banks.content_hash(x)
    assert banks.content_hash(x[:, :, :8]) != banks.content_hash(np.ascontiguousarray(x[:, :, :8]).reshape(48, 8, 16))
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    files = ImageFiles(tmp_path, ["a.png", "b.png"])
    assert banks.content_hash(files) == banks.content_hash(ImageFiles(tmp_path, ["a.png", "b.png"]))
    assert banks.content_hash(files) != banks.content_hash(ImageFiles(tmp_path, ["b.png", "a.png"]))


def test_view_bank_is_cached_and_shared_by_seeds(monkeypatch):
    calls = []
    real = augment.Augmenter.augment
    monkeypatch.setattr(augment.Augmenter, "augment", lambda self, x, seed: calls.append(len(x)) or real(self, x, seed))
    first = engine.fit(toy(seed=0), TRAIN, VAL)
    assert first.log["banked"] and first.log["bank"]["cache_hit"] is False
    assert first.log["bank"]["shape"] == [48, 3, 256] and first.log["bank"]["seed"] == banks.BANK_SEED
    assert sum(calls) == 48 * 3  # each view of each image once
    calls.clear()
    second = engine.fit(toy(seed=1, lr=1e-3), TRAIN, VAL)  # another seed and config: same bank
    assert second.log["bank"]["cache_hit"] is True and second.log["bank"]["key"] == first.log["bank"]["key"]
    assert calls == []
    other = engine.fit(toy(bank_views=2, epochs=1), TRAIN, None)  # another A: another bank
    assert other.log["bank"]["cache_hit"] is False and other.log["bank"]["key"] != first.log["bank"]["key"]


def _count_passes(monkeypatch, backbone):
    """Count forward_features calls of ``backbone``'s module (of more than one image: the
    one-image shape probes do not count)."""
    calls = []
    real = backbone.module.forward_features
    monkeypatch.setattr(backbone.module, "forward_features",
                        lambda x: (len(x) > 1 and calls.append(len(x))) or real(x))
    return calls


def _chunks(n):
    """The forward passes of one cache pass over n images: FORWARD_BATCH images at a time."""
    return [min(banks.FORWARD_BATCH, n - i) for i in range(0, n, banks.FORWARD_BATCH)]


def test_one_pass_gives_pooled_and_tokens_as_separate_passes_do(monkeypatch, tmp_path):
    backbone = hashbench.create("backbone", "test_efficientnet", pretrained=False, input_size=32)
    calls = _count_passes(monkeypatch, backbone)
    both = banks.clean_outputs(backbone, TRAIN.x, ["pooled", "tokens"])
    assert calls == _chunks(48) and not both["pooled"][1]["cache_hit"] and not both["tokens"][1]["cache_hit"]
    assert both["pooled"][0].shape == (48, 256) and both["tokens"][0].shape == (48, 1, 256)
    calls.clear()
    again = banks.clean_outputs(backbone, TRAIN.x, ["tokens", "pooled"])  # cached: no pass
    assert calls == [] and again["pooled"][1]["cache_hit"] and again["tokens"][1]["cache_hit"]
    lazy = banks.clean_outputs(backbone, TRAIN.x, ["tokens"], fetch=False)  # warming: held in memory
    assert calls == [] and lazy["tokens"][0] is both["tokens"][0]
    banks.clear_memory()
    lazy = banks.clean_outputs(backbone, TRAIN.x, ["tokens"], fetch=False)  # warming: header only
    assert calls == [] and isinstance(lazy["tokens"][0], np.memmap)
    assert np.array_equal(lazy["tokens"][0], both["tokens"][0])
    monkeypatch.setenv("HASHBENCH_CACHE", str(tmp_path / "fresh"))
    pooled, _ = banks.clean_features(backbone, TRAIN.x, "pooled")
    tokens, _ = banks.clean_features(backbone, TRAIN.x, "tokens")
    assert calls == _chunks(48) * 2
    assert np.array_equal(pooled, both["pooled"][0]) and np.array_equal(tokens, both["tokens"][0])
    with torch.no_grad():  # pooled is the model's own forward; for this CNN the mean of its tokens
        own = backbone.module(backbone.preprocess(TRAIN.x)).numpy()
    np.testing.assert_array_equal(pooled, own)
    np.testing.assert_allclose(pooled, tokens.mean(axis=1), rtol=1e-5, atol=1e-6)
    # a bank of both kinds: one augmentation and one pass per view, values as separate banks
    calls.clear()
    banks_both = banks.view_banks(backbone, TRAIN.x, "light", 3, ["pooled", "tokens"])
    assert calls == _chunks(48) * 3
    monkeypatch.setenv("HASHBENCH_CACHE", str(tmp_path / "fresh2"))
    for output in ("pooled", "tokens"):
        alone, info = banks.view_bank(backbone, TRAIN.x, "light", 3, output)
        assert info["key"] == banks_both[output][1]["key"] and np.array_equal(alone, banks_both[output][0])
    with pytest.raises(HashbenchError, match="backbone output must be one of pooled, tokens, got 'cls'"):
        banks.clean_outputs(backbone, TRAIN.x, ["pooled", "cls"])


def test_banked_and_unbanked_paths(monkeypatch):
    banked = engine.fit(toy(), TRAIN, VAL)
    unbanked = engine.fit(toy(bank_views=0), TRAIN, VAL)
    assert banked.log["banked"] and not unbanked.log["banked"] and unbanked.log["bank"] is None
    for state in (banked, unbanked):
        assert [e["epoch"] for e in state.log["epochs"]] == [1, 2, 3, 4]
        assert set(state.log["epochs"][0]["terms"]) == {"nt_xent", "quantization"}
        codes = engine.encode(toy(), state, VAL.x)
        assert codes.dtype == np.bool_ and codes.shape == (24, 8)
    json.dumps(banked.log)  # JSON-serializable
    # float16 banks above the threshold; no bank at all above MAX_BYTES
    monkeypatch.setattr(banks, "FLOAT16_ABOVE_BYTES", 0)
    half = engine.fit(toy(epochs=1), TRAIN, None)
    assert half.log["banked"] and half.log["bank"]["dtype"] == "float16"
    monkeypatch.setattr(banks, "MAX_BYTES", 1000)
    none = engine.fit(toy(epochs=1), TRAIN, None)
    assert not none.log["banked"] and "exceeds" in none.log["bank"]["reason"]


def test_two_different_views_per_image(monkeypatch):
    seen = []

    class Spy(Toy):
        def objective(self, head, f1, f2):
            seen.append((f1 - f2).abs().amax(dim=1))
            return super().objective(head, f1, f2)

    engine.fit(toy(Spy, epochs=2), TRAIN, None)
    assert all((d > 0).all() for d in seen)


def test_tokens_and_trained_backbone(tmp_path):
    tokens = engine.fit(toy(ToyTokens, epochs=1), TRAIN, VAL)
    assert tokens.log["banked"] and len(tokens.log["bank"]["shape"]) == 4  # (N, A, T, C)
    assert engine.encode(toy(ToyTokens), tokens, VAL.x).shape == (24, 8)
    method = toy(frozen=False, epochs=2, lr=1e-3)
    before = {k: v.clone() for k, v in hashbench.create("backbone", "test_efficientnet", pretrained=False,
                                                         input_size=32).module.state_dict().items()}
    state = engine.fit(method, TRAIN, VAL, workdir=tmp_path)
    assert not state.log["banked"]
    after = state.backbone.module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    ckpt = torch.load(tmp_path / engine.CHECKPOINT, weights_only=True)
    assert ckpt["backbone"] is not None and ckpt["best"]["backbone"] is not None
    assert engine.encode(method, state, VAL.x).shape == (24, 8)


# ----------------------------------------------------------------------------- determinism, resume

@pytest.mark.parametrize("bank_views", [3, 0])
def test_resume_gives_the_codes_and_log_of_an_uninterrupted_run(tmp_path, bank_views):
    method = toy(bank_views=bank_views)
    torch.manual_seed(1)  # the global generator's state must not matter
    whole = engine.fit(method, TRAIN, VAL, workdir=tmp_path / "whole")
    codes = engine.encode(method, whole, VAL.x)

    class Killed(Exception):
        pass

    def kill(epoch, log):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        engine.fit(toy(bank_views=bank_views), TRAIN, VAL, workdir=tmp_path / "parts", on_epoch_end=kill)
    ckpt = torch.load(tmp_path / "parts" / engine.CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 2 and not ckpt["finished"] and [e["epoch"] for e in ckpt["log"]["epochs"]] == [1, 2]
    resumed_method = toy(bank_views=bank_views)
    torch.manual_seed(2)
    resumed = engine.fit(resumed_method, TRAIN, VAL, workdir=tmp_path / "parts")
    assert resumed.log["resumed_from"] == 2 and whole.log["resumed_from"] is None
    assert term_log(resumed.log) == term_log(whole.log)
    assert resumed.log["best_epoch"] == whole.log["best_epoch"]
    np.testing.assert_array_equal(engine.encode(resumed_method, resumed, VAL.x), codes)
    # a finished checkpoint: fit again returns the selected head without training
    again = engine.fit(toy(bank_views=bank_views), TRAIN, VAL, workdir=tmp_path / "parts")
    assert term_log(again.log) == term_log(whole.log)
    np.testing.assert_array_equal(engine.encode(method, again, VAL.x), codes)
    # a checkpoint of another config is not resumed
    other = engine.fit(toy(bank_views=bank_views, lr=2e-2, epochs=1), TRAIN, VAL, workdir=tmp_path / "parts")
    assert other.log["resumed_from"] is None and other.log["checkpoint_ignored"] == "written for another config"


def test_same_seed_same_codes_other_seed_other_codes():
    def codes(seed):
        method = toy(seed=seed, epochs=2)
        return engine.encode(method, engine.fit(method, TRAIN, VAL), VAL.x)

    a, b, c = codes(0), codes(0), codes(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_through_the_method_api_and_report(tmp_path):
    method = toy(epochs=2)
    method.workdir = tmp_path
    method.fit(TRAIN, VAL)
    codes = method.encode(VAL.x)
    assert codes.shape == (24, 8) and codes.dtype == np.bool_
    report = method.report()
    assert report["epochs_run"] == 2 and report["seconds"] > 0 and (tmp_path / "checkpoint.pt").is_file()
    assert set(report) >= {"epochs", "val", "best_epoch", "best_val_map", "stopped_early", "banked", "bank"}


# ----------------------------------------------------------------------------- selection, early stop

def test_model_selection_and_early_stopping_on_val_only(monkeypatch):
    script = iter([0.2, 0.6, 0.5, 0.4, 0.9, 0.9])  # peak at the 2nd validation
    seen = []

    def fake_map(query_codes, db_codes, query_labels, db_labels, *, bits, topk):
        seen.append((query_codes.copy(), query_labels, db_labels, topk))
        return next(script)

    monkeypatch.setattr(engine, "map_at_k", fake_map)
    method = toy(epochs=10, val_every=1, patience=2)
    state = engine.fit(method, TRAIN, VAL)
    log = state.log
    assert [v["epoch"] for v in log["val"]] == [1, 2, 3, 4]
    assert log["best_epoch"] == 2 and log["best_val_map"] == 0.6
    assert log["stopped_early"] and log["epochs_run"] == 4
    for _, query_labels, db_labels, topk in seen:  # val as queries against train, nothing else
        assert query_labels is VAL.labels and db_labels is TRAIN.labels and topk == 48
    # the kept head is the one of epoch 2: its val codes are those scored at epoch 2
    from hashbench.evaluate import pack_codes

    np.testing.assert_array_equal(pack_codes(engine.encode(method, state, VAL.x)), seen[1][0])
    # patience running out at the last epoch is not an early stop
    script = iter([0.5, 0.4, 0.3])
    state = engine.fit(toy(epochs=3, val_every=1, patience=2), TRAIN, VAL)
    assert state.log["epochs_run"] == 3 and state.log["best_epoch"] == 1 and not state.log["stopped_early"]


def test_without_val_the_last_epoch_is_kept():
    state = engine.fit(toy(epochs=3, val_every=1, patience=1), TRAIN, None)
    assert state.log["val"] == [] and state.log["best_epoch"] == 3 and state.log["selected"] == "last epoch"
    assert state.log["epochs_run"] == 3 and not state.log["stopped_early"]


def test_validation_schedule_includes_the_last_epoch():
    state = engine.fit(toy(epochs=5, val_every=2), TRAIN, VAL)
    assert [v["epoch"] for v in state.log["val"]] == [2, 4, 5]


# ----------------------------------------------------------------------------- errors

def test_nan_loss_stops_with_diverged():
    class Diverges(Toy):
        def objective(self, head, f1, f2):
            terms = super().objective(head, f1, f2)
            return {**terms, "nt_xent": terms["nt_xent"] * float("nan")}

    with pytest.raises(HashbenchError, match=r"^training diverged: loss is nan at epoch 1 step 1 \(terms: nt_xent=nan, quantization="):
        engine.fit(toy(Diverges), TRAIN, VAL)


@pytest.mark.parametrize("params, message", [
    ({"optimizer": "adamw"}, "method toy: optimizer must be a registered optimizer, got 'adamw'"),
    ({"schedule": "step"}, "method toy: schedule must be a registered schedule, got 'step'"),
    ({"augment": "heavy"}, "method toy: augment must be a registered augmentation, got 'heavy'"),
    ({"bank_views": 1}, "method toy: bank_views must be 0 (no bank) or >= 2, got 1"),
    ({"batch_size": 1}, "method toy: batch_size must be >= 2"),
])
def test_bad_config_is_one_line(params, message):
    """TrainConfig's declared limits and rules fail when the method is built, in one line."""
    with pytest.raises(HashbenchError) as info:
        engine.fit(toy(**params), TRAIN, VAL)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_encode_before_fit():
    with pytest.raises(HashbenchError, match="before fit"):
        engine.encode(toy(), None, VAL.x)


def test_checkpoint_holds_plain_data_only(tmp_path):
    engine.fit(toy(epochs=1), TRAIN, VAL, workdir=tmp_path)
    ckpt = torch.load(tmp_path / engine.CHECKPOINT, weights_only=True)
    assert set(ckpt) >= {"head", "optimizer", "scheduler", "epoch", "best", "log", "config_hash"}
    assert ckpt["finished"] and ckpt["backbone"] is None  # frozen: not stored
    assert dataclasses.asdict(toy().config)["epochs"] == 4
