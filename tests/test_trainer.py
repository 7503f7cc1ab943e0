"""The trainer's parts, each on its own (hashbench.trainparts, hashbench.trainconfig), and the
registry kinds it builds from (augmentation recipes, optimizers, schedules).

The whole loop is tested in test_train.py; here: a checkpoint round-trip and a config-hash
mismatch, the batch sources' views and per-epoch reproducibility, model selection with
patience, TrainConfig's declared limits, and a plugin's recipe, optimizer and schedule used by
name with no core edit.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("torchvision")

import hashbench  # noqa: E402
from hashbench import banks  # noqa: E402
from hashbench import train as engine  # noqa: E402
from hashbench.augment import RECIPE_VERSION, Recipe, derive_seed  # noqa: E402
from hashbench.components import HashMethod, Split, build_config  # noqa: E402
from hashbench.deep import DeepHashMethod, TrainConfig  # noqa: E402
from hashbench.errors import HashbenchError  # noqa: E402
from hashbench.optim import Optimizer, Schedule  # noqa: E402
from hashbench.params import describe  # noqa: E402
from hashbench.trainconfig import check_config  # noqa: E402
from hashbench.trainparts import (AUGMENT_STREAM, CHECKPOINT, CHECKPOINT_FORMAT, Amp, BankBatches,  # noqa: E402
                                  Checkpoint, LiveBatches, Selection, config_hash, epoch_order)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


class Toy(DeepHashMethod):
    """Linear head on pooled features, NT-Xent of tanh codes (test only)."""

    name = "toy-trainer"
    summary = "toy deep method (test only)"

    @dataclass(frozen=True)
    class Config(TrainConfig):
        backbone: str = "test_efficientnet"
        pretrained: bool | str = False
        input_size: int | None = 32
        bank_views: int = 3
        epochs: int = 2
        batch_size: int = 16
        lr: float = 1e-2
        val_every: int = 1
        patience: int = 0

    def build_head(self, feature_dim):
        return torch.nn.Linear(feature_dim, self.bits)

    def objective(self, head, f1, f2):
        return hashbench.create("loss", "nt_xent")(torch.tanh(head(f1 * 100)), torch.tanh(head(f2 * 100)))

    def hash_codes(self, head, f):
        return head(f) >= 0


def images(n: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(x=rng.integers(0, 255, size=(n, 16, 16), dtype=np.uint8), labels=np.arange(n) % 4,
                 index=np.arange(n) + 1000 * seed)


# ----------------------------------------------------------------------------- checkpoint

def test_checkpoint_round_trip(tmp_path):
    ckpt = Checkpoint(tmp_path / "run", "abc")
    assert ckpt.load() == (None, None)  # nothing yet
    state = {"epoch": 3, "finished": False, "head": {"w": torch.arange(6.0).view(2, 3)},
             "best": {"epoch": 2, "map": 0.5, "head": None, "backbone": None}, "log": {"epochs": [{"loss": 1.0}]}}
    ckpt.save(state)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT]  # no temporary file left
    loaded, why = ckpt.load()
    assert why is None and loaded["format"] == CHECKPOINT_FORMAT and loaded["config_hash"] == "abc"
    assert torch.equal(loaded["head"]["w"], state["head"]["w"])
    assert {k: v for k, v in loaded.items() if k not in ("head", "format", "config_hash")} == \
        {k: v for k, v in state.items() if k != "head"}
    torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)  # plain data
    ckpt.save({**state, "epoch": 4})  # replaced
    assert ckpt.load()[0]["epoch"] == 4


def test_checkpoint_of_another_config_or_unreadable_is_ignored(tmp_path):
    Checkpoint(tmp_path, "abc").save({"epoch": 1})
    assert Checkpoint(tmp_path, "xyz").load() == (None, "written for another config")
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    state, why = Checkpoint(tmp_path, "abc").load()
    assert state is None and why.startswith("unreadable (")
    nowhere = Checkpoint(None, "abc")
    nowhere.save({"epoch": 1})
    assert nowhere.path is None and nowhere.load() == (None, None)


def test_config_hash_names_the_run():
    base = Toy(bits=8, seed=0)
    data = {"train": "d1", "val": None, "train_n": 10, "val_n": 0}
    h = config_hash(base, data)
    assert len(h) == 20 and h == config_hash(Toy(bits=8, seed=0), dict(data))
    assert h != config_hash(Toy(bits=8, seed=0, lr=2e-2), data)
    assert h != config_hash(Toy(bits=8, seed=1), data) and h != config_hash(Toy(bits=16, seed=0), data)
    assert h != config_hash(base, {**data, "train": "d2"})


# ----------------------------------------------------------------------------- batch sources

def coded_bank(n: int, views: int) -> np.ndarray:
    """bank[i, a] = (i, a): every row says which image and view it is."""
    bank = np.zeros((n, views, 2), dtype=np.float32)
    bank[:, :, 0] = np.arange(n)[:, None]
    bank[:, :, 1] = np.arange(views)[None, :]
    return bank


def test_bank_batches_give_two_different_views_of_each_image():
    source = BankBatches(coded_bank(10, 4), batch_size=4, seed=0, device=CPU)
    assert source.steps == 2  # 10 // 4 full batches; the rest changes with the shuffle
    seen_views = set()
    for epoch in range(1, 6):
        pairs = list(source.epoch(epoch))
        assert len(pairs) == 2
        rows = []
        for f1, f2 in pairs:
            assert f1.dtype == torch.float32 and f1.shape == (4, 2)
            assert torch.equal(f1[:, 0], f2[:, 0])  # the same images
            assert (f1[:, 1] != f2[:, 1]).all()  # two different views of each
            rows += f1[:, 0].int().tolist()
            seen_views |= set(f1[:, 1].int().tolist()) | set(f2[:, 1].int().tolist())
        assert len(set(rows)) == 8  # no image twice in an epoch
    assert seen_views == {0, 1, 2, 3}


def test_bank_batches_are_reproducible_per_epoch():
    def epoch(seed, e):
        return [torch.cat(pair, 1) for pair in BankBatches(coded_bank(12, 3), 4, seed, CPU).epoch(e)]

    first = epoch(0, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(0, 2)))  # a new source, same epoch: same
    assert not all(torch.equal(a, b) for a, b in zip(first, epoch(0, 3)))  # another epoch
    assert not all(torch.equal(a, b) for a, b in zip(first, epoch(1, 2)))  # another seed
    # the order is epoch_order's: the same as the live source shuffles
    _, order = epoch_order(0, 2, 12)
    assert torch.cat(first)[:, 0].int().tolist() == order.tolist()


def test_bank_batches_of_fewer_images_than_a_batch_are_one_batch():
    [(f1, f2)] = list(BankBatches(coded_bank(3, 2), batch_size=8, seed=0, device=CPU).epoch(1))
    assert sorted(f1[:, 0].int().tolist()) == [0, 1, 2] and (f1[:, 1] != f2[:, 1]).all()


class _Views:
    """An augmenter whose views say which images and seed they come from."""

    def __init__(self):
        self.seeds = []

    def two_views(self, x, seed):
        self.seeds.append(seed)
        base = torch.as_tensor(np.asarray(x), dtype=torch.float32).reshape(len(x), -1)
        return base, base + 0.5


class _Backbone:
    device = CPU

    def outputs(self, x, names):
        return {name: 2 * x for name in names}


def test_live_batches_augment_each_step_with_its_own_seed():
    x = np.arange(10, dtype=np.uint8)[:, None]
    augmenter = _Views()
    source = LiveBatches(x, augmenter, _Backbone(), "pooled", batch_size=4, seed=7,
                         amp=Amp.for_device(CPU, True))
    assert source.steps == 2 and not source.amp.enabled  # no mixed precision on the CPU
    pairs = list(source.epoch(3))
    assert augmenter.seeds == [derive_seed(7, AUGMENT_STREAM, 3, step) for step in (0, 1)]
    _, order = epoch_order(7, 3, 10)
    assert torch.cat([f1 for f1, _ in pairs])[:, 0].tolist() == (2 * order[:8]).tolist()  # through the backbone
    assert all(torch.equal(f2, f1 + 1) for f1, f2 in pairs)  # the two views
    again = list(LiveBatches(x, _Views(), _Backbone(), "pooled", 4, 7, Amp.for_device(CPU, False)).epoch(3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(pairs, again))


# ----------------------------------------------------------------------------- selection

def test_selection_keeps_the_best_and_stops_after_patience_bad_validations():
    snapshots = []

    def snapshot():
        snapshots.append(len(snapshots))
        return {"head": {"n": len(snapshots)}, "backbone": None}

    selection = Selection(patience=2, last_epoch=10)
    assert selection.best == {"epoch": None, "map": None, "head": None, "backbone": None}
    assert selection.observe(1, 0.2, snapshot) is False
    assert selection.observe(2, 0.6, snapshot) is False
    assert selection.observe(3, 0.6, snapshot) is False  # a tie is no improvement
    assert selection.bad == 1 and len(snapshots) == 2  # snapshots of improvements only
    assert selection.observe(4, 0.5, snapshot) is True  # the 2nd bad validation in a row: stop
    assert selection.best == {"epoch": 2, "map": 0.6, "head": {"n": 2}, "backbone": None}


def test_selection_bad_count_resets_and_last_epoch_and_zero_patience_never_stop():
    keep = dict

    selection = Selection(patience=2, last_epoch=10)
    for epoch, value in enumerate([0.5, 0.4, 0.7, 0.6], start=1):  # bad, better (reset), bad
        assert selection.observe(epoch, value, keep) is False
    assert selection.best["epoch"] == 3 and selection.bad == 1
    at_end = Selection(patience=1, last_epoch=2)
    assert not at_end.observe(1, 0.5, keep) and not at_end.observe(2, 0.1, keep)  # the last epoch
    never = Selection(patience=0, last_epoch=100)
    assert not any(never.observe(e, 1.0 / e, keep) for e in range(1, 50))
    assert never.bad == 48 and never.best["epoch"] == 1


def test_amp_is_off_on_the_cpu():
    amp = Amp.for_device(CPU, True)
    assert not amp.enabled and amp.state_dict() == {}
    with amp.autocast():
        assert not torch.is_autocast_enabled()
    w = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([w], lr=0.5)
    amp.step(optimizer, (w * w).sum())
    assert torch.equal(w.detach(), torch.zeros(2))  # 1 - 0.5 * 2


# ----------------------------------------------------------------------------- TrainConfig

def test_train_config_declares_each_field_with_a_doc_and_its_limits():
    rows = {row["name"]: row for row in describe(TrainConfig)}
    assert list(rows) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert all(row["doc"] for row in rows.values())
    assert rows["lr"]["limits"] == "> 0" and rows["epochs"]["limits"] == ">= 1"
    assert rows["batch_size"]["limits"] == ">= 2" and rows["patience"]["limits"] == ">= 0"
    assert rows["optimizer"]["limits"] == "a registered optimizer"
    assert rows["schedule"]["limits"] == "a registered schedule"
    assert rows["augment"]["limits"] == "a registered augmentation"
    # the run ids hash these: names and defaults as they were
    assert dataclasses.asdict(TrainConfig()) == {
        "backbone": "tf_efficientnet_lite0", "pretrained": True, "input_size": 64, "frozen": True,
        "augment": "light", "bank_views": 8, "epochs": 10, "batch_size": 64, "lr": 1e-3,
        "weight_decay": 0.0, "optimizer": "adam", "schedule": "cosine", "val_every": 5, "patience": 3,
        "amp": True}


@pytest.mark.parametrize("params, message", [
    ({"lr": -1}, r"lr must be > 0, got -1"),
    ({"lr": float("nan")}, r"lr must be (a finite number )?> 0, got nan"),
    ({"epochs": 0}, r"epochs must be >= 1, got 0"),  # redeclared in Toy: the limits are kept
    ({"weight_decay": -0.1}, r"weight_decay must be >= 0, got -0.1"),
    ({"val_every": 0}, r"val_every must be >= 1, got 0"),
    ({"patience": -1}, r"patience must be >= 0, got -1"),
    ({"bank_views": 1}, r"bank_views must be 0 \(no bank\) or >= 2, got 1"),
    ({"bank_views": -2}, r"bank_views must be 0 \(no bank\) or >= 2, got -2"),
])
def test_train_config_limits_fail_when_the_method_is_built(params, message):
    with pytest.raises(HashbenchError, match="^method toy-trainer: " + message):
        Toy(bits=8, **params)


def test_train_config_post_init_chains():
    @dataclass(frozen=True)
    class Own(TrainConfig):
        positives: int = 2

        def __post_init__(self):
            super().__post_init__()
            if self.positives >= self.batch_size:
                raise ValueError(f"positives must be < batch_size = {self.batch_size}, got {self.positives}")

    assert build_config(Own, {"bank_views": 0, "positives": 3}, "method own").positives == 3
    with pytest.raises(HashbenchError, match=r"^method own: bank_views must be 0 \(no bank\) or >= 2, got 1$"):
        build_config(Own, {"bank_views": 1}, "method own")
    with pytest.raises(HashbenchError, match=r"^method own: positives must be < batch_size = 64, got 64$"):
        build_config(Own, {"positives": 64}, "method own")


def test_check_config_what_is_not_a_field_limit():
    assert check_config(Toy(bits=8)) is not None

    class Tokens(Toy):
        backbone_output = "cls"

    with pytest.raises(HashbenchError, match="method toy-trainer: backbone_output must be one of pooled, tokens"):
        check_config(Tokens(bits=8))

    class NotDeep(HashMethod):
        name = "plain"

    with pytest.raises(HashbenchError, match="method plain: its Config must subclass hashbench.deep.TrainConfig"):
        check_config(NotDeep(bits=8))


# ----------------------------------------------------------------------------- registry kinds

def test_built_in_recipes_optimizers_and_schedules_are_registered(cli):
    assert {"cibhash", "light", "mocov2"} <= set(hashbench.names("augmentation"))
    assert {"adam", "sgd"} <= set(hashbench.names("optimizer"))
    assert {"constant", "cosine"} <= set(hashbench.names("schedule"))
    for kind, row in (("augmentations", "light "), ("optimizers", "sgd "), ("schedules", "cosine ")):
        code, out, _ = cli("list", kind)
        assert code == 0 and any(line.startswith(row) and "hashbench." in line for line in out.splitlines())
    w = torch.nn.Parameter(torch.zeros(3))
    sgd = hashbench.create("optimizer", "sgd").build([w], 0.1, 1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    assert sgd.param_groups[0]["weight_decay"] == 1e-4
    adam = hashbench.create("optimizer", "adam").build([w], 0.1, 0.0)
    cosine = hashbench.create("schedule", "cosine").build(adam, 4)
    lrs = []
    for _ in range(4):
        lrs.append(adam.param_groups[0]["lr"])
        cosine.step()
    assert lrs == pytest.approx([0.1, 0.1 * (1 + np.cos(np.pi / 4)) / 2, 0.05, 0.1 * (1 + np.cos(3 * np.pi / 4)) / 2])
    constant = hashbench.create("schedule", "constant").build(sgd, 4)
    constant.step()
    assert sgd.param_groups[0]["lr"] == 0.1


class Invert(Recipe):
    name = "invert"
    summary = "crop and invert (test only)"

    def transform(self, size):
        from torchvision.transforms import v2

        return v2.Compose([v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
                           v2.Lambda(lambda image: 1.0 - image)])


class InvertV2(Invert):
    version = 2


class HalvingLR(Schedule):
    name = "halving"
    summary = "halves lr every epoch (test only)"

    def build(self, optimizer, epochs):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


class PlainSGD(Optimizer):
    name = "plain-sgd"
    summary = "SGD without momentum (test only)"

    def build(self, params, lr, weight_decay):
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def test_a_plugin_brings_its_recipe_optimizer_and_schedule(with_plugin):
    with_plugin(register_augmentations=lambda: [Invert], register_optimizers=lambda: [PlainSGD],
                register_schedules=lambda: [HalvingLR])
    method = Toy(bits=8, augment="invert", optimizer="plain-sgd", schedule="halving")
    state = engine.fit(method, images(32), images(16, seed=1))
    assert [e["lr"] for e in state.log["epochs"]] == [1e-2, 5e-3]
    assert state.log["bank"]["recipe"] == "invert" and engine.encode(method, state, images(5).x).shape == (5, 8)
    with pytest.raises(HashbenchError, match="method toy-trainer: augment must be a registered augmentation"):
        Toy(bits=8, augment="invert2")


def test_a_recipe_version_keys_its_view_banks_and_built_in_keys_are_unchanged(with_plugin, patterned_images):
    backbone = hashbench.create("backbone", "test_efficientnet", pretrained=False, input_size=32)
    train = patterned_images.x[patterned_images.train]
    # the key the built-in recipe's bank had before recipes were components (existing caches stay valid)
    _, light = banks.view_bank(backbone, train, "light", 2)
    assert RECIPE_VERSION == 1 and light["key"] == "6f60d0c8da92c2a18bb4"
    with_plugin(register_augmentations=lambda: [Invert])
    _, v1 = banks.view_bank(backbone, train, "invert", 2)
    _, again = banks.view_bank(backbone, train, "invert", 2)
    assert again["cache_hit"] and again["key"] == v1["key"] != light["key"]
    with_plugin(register_augmentations=lambda: [InvertV2])
    _, v2 = banks.view_bank(backbone, train, "invert", 2)
    assert not v2["cache_hit"] and v2["key"] != v1["key"]


def test_the_docs_recipe_and_schedule_example_runs_as_written(with_plugin, monkeypatch):
    doc = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
    block = next(b for b in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
                 if "register_augmentations" in b)
    module = types.ModuleType("strong_crop_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block, str(doc), "exec"), module.__dict__)
    with_plugin(register_augmentations=module.register_augmentations, register_schedules=module.register_schedules)
    assert "strong-crop" in hashbench.names("augmentation") and "halve-each-epoch" in hashbench.names("schedule")
    method = Toy(bits=8, augment="strong-crop", schedule="halve-each-epoch", epochs=3, bank_views=0)
    state = engine.fit(method, images(32), None)
    assert [e["lr"] for e in state.log["epochs"]] == [1e-2, 5e-3, 2.5e-3] and not state.log["banked"]
