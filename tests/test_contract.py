"""The contract of every registered component: for each kind of ``hashbench.registry.HOOKS`` and
each name of ``hashbench.names(kind)``, the generic promises of that kind (its hook's docstring in
``hashbench/hookspecs.py``), so that a new plugin, built-in or installed, is tested by adding it.

* method: fits and encodes bool (N, bits): feature methods on Gaussian features, image methods
  (deep) on 60 tiny images with a random-init ``vit_tiny`` at 32 px, 1 epoch; its report is
  JSON (it goes into the run record);
* backbone: maps float (B, 3, H, W) to float32 (B, feature_dim);
* sorter: P (B, n, n) with non-negative rows summing to 1 whose row argmax is the exact
  descending order, and P @ s = sort(s) as its ``parameter`` (temperature, regularization)
  goes to 0;
* loss: called on 2-D float tensors, returns a dict of named finite scalar terms (differentiable);
* dataset: loads (offline: the file-based built-ins on tiny files the test writes), its declared
  disjoint splits share no item, labels fit ``num_classes`` and ``multi_label``, and two loads
  give the same splits;
* executor: maps a function over tasks and returns every result, once each;
* augmentation: ``transform(size)`` maps float32 (3, S, S) in [0, 1] to the same shape, dtype and
  range, the same views for the same torch seed; ``version`` is an int;
* optimizer: ``build(params, lr, weight_decay)`` is a torch optimizer with that lr and decay that
  lowers a quadratic, with a plain-data ``state_dict``;
* schedule: ``build(optimizer, epochs)`` is a torch LR scheduler, finite non-negative rates over
  the epochs, with a plain-data ``state_dict`` that restores.

A kind without a check here FAILS (``test_every_kind_has_a_contract`` and each of its
components): nothing is skipped silently. A dataset that cannot load offline and has no tiny files
here is skipped with its error as the reason.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import hashbench
from hashbench.components import Split, Splits
from hashbench.errors import HashbenchError
from hashbench.registry import HOOKS, registry

BITS = 16

#: what some built-ins need, beyond their defaults, to run here tiny and offline: (kind, name) -> params
TINY: dict[tuple[str, str], dict[str, Any]] = {
    ("backbone", "timm"): {"model": "resnet18"},  # the family entry: any timm model
}

#: a deep method's run: random-init vit_tiny at 32 px (tokens and pooled), frozen, a 2-view bank, 1 epoch
DEEP = {"backbone": "vit_tiny_patch16_224", "pretrained": False, "input_size": 32, "epochs": 1, "batch_size": 16,
        "bank_views": 2, "val_every": 1, "patience": 0}


def _params(kind: str, name: str, cls: type, generic: dict[str, Any]) -> dict[str, Any]:
    """``generic`` limited to the fields of ``cls.Config``, with :data:`TINY`'s entry over it."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls.Config)}
    return {**{k: v for k, v in generic.items() if k in fields}, **TINY.get((kind, name), {})}


# ----------------------------------------------------------------------------- method

def _feature_splits() -> tuple[Split, Split, Split]:
    """Four Gaussian clusters in 32-D: train 200, val 40, query 30."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 270)
    centers = rng.normal(0, 3, (4, 32))
    x = (centers[labels] + rng.normal(size=(270, 32))).astype(np.float32)
    ids = np.arange(270)
    return tuple(Split(x[s], labels[s], ids[s]) for s in (slice(0, 200), slice(200, 240), slice(240, 270)))


def check_method(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    cls = registry("method").get(name)
    kind = getattr(cls, "input", "features")
    if kind == "features":
        train, val, query = _feature_splits()
        params = _params("method", name, cls, {})
    elif kind == "images":
        request.getfixturevalue("one_torch_thread")
        images = request.getfixturevalue("patterned_images")
        train, val, query = images.split(images.train), images.split(images.val), images.split(images.query)
        params = _params("method", name, cls, DEEP)
    else:
        pytest.fail(f"method {name}: input {kind!r} has no contract data here (features, images)")
    method = hashbench.create("method", name, bits=BITS, seed=0, **params)
    method.workdir = tmp_path
    method.fit(train, val)
    codes = method.encode(query.x)
    assert isinstance(codes, np.ndarray) and codes.dtype == bool, type(codes)
    assert codes.shape == (len(query), BITS)
    report = method.report()
    assert isinstance(report, dict)
    json.dumps(report)  # stored in the run record


# ----------------------------------------------------------------------------- backbone

def check_backbone(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import torch

    cls = registry("backbone").get(name)
    backbone = hashbench.create("backbone", name, **_params("backbone", name, cls,
                                                             {"pretrained": False, "input_size": 32}))
    assert {"mean", "std", "input_size"} <= set(backbone.data_config)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    features = backbone.features(x)
    assert features.dtype == torch.float32 and tuple(features.shape) == (2, backbone.feature_dim)
    assert torch.isfinite(features).all()


# ----------------------------------------------------------------------------- sorter

def check_sorter(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Default parameters: P (B, n, n) rows non-negative summing to 1, each row's largest weight
    on the right rank; the limit (the class's ``parameter`` -> 0, else scores spread 100 times
    wider): P @ s = sort(s, descending)."""
    import dataclasses

    import torch

    cls = registry("sorter").get(name)
    g = torch.Generator().manual_seed(0)
    scores = torch.stack([torch.randperm(7, generator=g) for _ in range(4)]).float()
    exact = scores.sort(dim=1, descending=True)
    P = hashbench.create("sorter", name)(scores)
    assert isinstance(P, torch.Tensor) and tuple(P.shape) == (4, 7, 7) and torch.isfinite(P).all()
    assert (P >= -1e-6).all()
    torch.testing.assert_close(P.sum(dim=-1), torch.ones(4, 7), atol=1e-5, rtol=0)
    assert torch.equal(P.argmax(dim=-1), exact.indices), "row r must weigh the r-th largest score most"
    parameter = getattr(cls, "parameter", None)
    if parameter in {f.name for f in dataclasses.fields(cls.Config)}:
        P, values = hashbench.create("sorter", name, **{parameter: 1e-3})(scores), scores
    else:
        P, values = hashbench.create("sorter", name)(scores * 100), scores * 100
    torch.testing.assert_close(P.sum(dim=-1), torch.ones(4, 7), atol=1e-5, rtol=0)
    spread = values.max() - values.min()
    assert ((P @ values.unsqueeze(-1)).squeeze(-1) - values.sort(dim=1, descending=True).values).abs().max() <= 0.01 * spread


# ----------------------------------------------------------------------------- loss

def check_loss(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Called with one (8, 16) float tensor in (0, 1) per positional parameter of ``forward``
    (the built-ins' convention: 2-D (batch, dim) inputs of one shape, e.g. two views)."""
    import torch

    loss = hashbench.create("loss", name)
    call = getattr(loss, "forward", None) or loss.__call__
    positional = [p for p in inspect.signature(call).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    assert positional, f"loss {name}: forward takes no tensors"
    g = torch.Generator().manual_seed(0)
    inputs = [(torch.rand(8, 16, generator=g) * 0.98 + 0.01).requires_grad_() for _ in positional]
    terms = loss(*inputs)
    assert isinstance(terms, dict) and terms, f"loss {name} returned {type(terms).__name__}"
    for term, value in terms.items():
        assert isinstance(term, str) and term, term
        assert isinstance(value, torch.Tensor) and value.dim() == 0, (term, value)
        assert torch.isfinite(value), (term, value)
    sum(terms.values()).backward()
    assert any(t.grad is not None and torch.isfinite(t.grad).all() for t in inputs)


# ----------------------------------------------------------------------------- dataset

def _image_fixtures() -> Any:
    """tests/test_image_protocols.py's tiny-file writers, loaded as a private module."""
    spec = importlib.util.spec_from_file_location("_contract_image_files", Path(__file__).parent / "test_image_protocols.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SMALL = {"queries_per_class": 2, "train_per_class": 3, "val_per_class": 1}


def _tiny_files(root: Path) -> dict[str, tuple[Callable[[], Any], dict[str, Any]]]:
    """dataset -> (write its tiny files under ``root``, the params that fit them)."""
    files = _image_fixtures()
    return {
        "fashion-mnist": (lambda: files._write_fashion(root / "fashion-mnist", gz=True), _SMALL),
        "cifar10": (lambda: files._write_cifar(root, files._cifar_batches(), archive=False), _SMALL),
        "cifar10-1k54k": (lambda: files._write_cifar(root, files._cifar_batches(), archive=False), _SMALL),
        "cifar10-cibhash": (lambda: files._write_cifar(root, files._cifar_batches(), archive=False),
                            {"queries_per_class": 1, "val_per_class": 1, "train_per_class": 3}),
        "nus-wide": (lambda: files._write_lists(root / "nus-wide", 21), {"val_size": 5}),
        "coco": (lambda: files._write_lists(root / "coco", 80, image_dir="images"), {"val_size": 5}),
    }


def check_dataset(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from hashbench.data import fashion_mnist, roots

    monkeypatch = request.getfixturevalue("monkeypatch")
    root = tmp_path / "data"
    root.mkdir(parents=True)
    monkeypatch.setenv(roots.DATA_ENV, str(root))  # nothing but the tiny files; no download
    monkeypatch.setenv(roots.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(fashion_mnist.FashionMNIST, "system_dirs", ())

    def offline(url, timeout=60.0):
        raise HashbenchError("no network in the contract test")

    monkeypatch.setattr(roots, "open_url", offline)
    write, params = _tiny_files(root).get(name, (lambda: None, {}))
    write()
    protocol = hashbench.create("dataset", name, **params)
    try:
        splits = protocol.load()
    except HashbenchError as exc:
        if name in _tiny_files(root):
            raise
        pytest.skip(f"dataset {name} cannot load offline and has no tiny files here: {exc}")
    assert isinstance(splits, Splits)
    sizes = splits.sizes()
    assert all(sizes[s] > 0 for s in ("train", "query", "database")), sizes
    for split_name in ("train", "val", "query", "database"):
        split = getattr(splits, split_name)
        assert split.index.dtype == np.int64 and split.index.ndim == 1, split_name
        if protocol.multi_label:
            assert split.labels.shape == (len(split), protocol.num_classes), split_name
            assert set(np.unique(split.labels).tolist()) <= {0, 1}, split_name
        elif len(split):
            assert split.labels.ndim == 1 and 0 <= split.labels.min() <= split.labels.max() < protocol.num_classes
    assert protocol.disjoint, f"dataset {name} declares no disjoint splits"
    for a, b in protocol.disjoint:
        shared = np.intersect1d(getattr(splits, a).index, getattr(splits, b).index)
        assert not len(shared), f"dataset {name}: splits {a} and {b} share {len(shared)} items"
    splits.check_disjoint(protocol.disjoint, name)
    again = hashbench.create("dataset", name, **params).load()
    for split_name in ("train", "val", "query", "database"):
        assert np.array_equal(getattr(again, split_name).index, getattr(splits, split_name).index), split_name


# ----------------------------------------------------------------------------- executor

#: the built-in executors as they can run here: several settings where they differ in kind
EXECUTOR_SETTINGS: dict[str, list[dict[str, Any]]] = {
    "local": [{}, {"jobs": 2}],
    "ray": [{"num_cpus": 1}],
    "slurm": [{"cluster": "debug"}, {"cluster": "local", "array_parallelism": 2, "poll_s": 0.1}],
}


def check_executor(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A module-level Python function (``describe_exit``: every worker imports it) over tasks."""
    from hashbench.executors import describe_exit

    tasks = [0, 1, 3, -9, -15, 1]
    for i, settings in enumerate(EXECUTOR_SETTINGS.get(name, [{}])):
        if name == "slurm":
            settings = {**settings, "folder": str(tmp_path / f"slurm{i}")}
        try:
            executor = hashbench.create("executor", name, **settings)
        except HashbenchError as exc:
            if "needs the" in str(exc):  # an optional package (ray, submitit) is not installed
                pytest.skip(str(exc))
            raise
        results = list(executor.map(describe_exit, tasks))
        assert sorted(results) == sorted(describe_exit(t) for t in tasks), settings
        assert list(executor.map(describe_exit, [])) == []


# ----------------------------------------------------------------------------- augmentation

def check_augmentation(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import torch

    recipe = hashbench.create("augmentation", name)
    assert isinstance(recipe.version, int) and not isinstance(recipe.version, bool)
    for size in (32, 17):
        transform = recipe.transform(size)
        image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(size))
        views = []
        for _ in range(2):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(7)
                views.append(transform(image.clone()))
        view = views[0]
        assert isinstance(view, torch.Tensor) and view.dtype == torch.float32 and tuple(view.shape) == (3, size, size)
        assert view.min() >= -1e-5 and view.max() <= 1 + 1e-5, (view.min(), view.max())  # [0, 1] up to rounding
        assert torch.equal(views[0], views[1]), "the same torch seed must give the same view"


# ----------------------------------------------------------------------------- optimizer, schedule

def _plain_data(state: dict) -> dict:
    """``state`` through torch.save and a weights-only torch.load (plain data only)."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def check_optimizer(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import torch

    weights = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    optimizer = hashbench.create("optimizer", name).build([weights], lr=0.05, weight_decay=0.01)
    assert isinstance(optimizer, torch.optim.Optimizer)
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.05 and group.get("weight_decay") == 0.01
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = weights.square().sum()
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
    assert weights.square().sum().item() < losses[0], losses
    _plain_data(optimizer.state_dict())


def check_schedule(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import torch

    def fresh():
        weights = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.SGD([weights], lr=0.1)
        return optimizer, hashbench.create("schedule", name).build(optimizer, epochs=6)

    optimizer, scheduler = fresh()
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    rates = []
    for _ in range(6):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert all(math.isfinite(r) and r >= 0 for r in rates), rates
    state = _plain_data(scheduler.state_dict())
    optimizer2, scheduler2 = fresh()
    scheduler2.load_state_dict(state)
    assert scheduler2.last_epoch == scheduler.last_epoch == 6


# ----------------------------------------------------------------------------- every kind, every name

CONTRACTS: dict[str, Callable[[str, pytest.FixtureRequest, Path], None]] = {
    "method": check_method,
    "backbone": check_backbone,
    "sorter": check_sorter,
    "loss": check_loss,
    "dataset": check_dataset,
    "executor": check_executor,
    "augmentation": check_augmentation,
    "optimizer": check_optimizer,
    "schedule": check_schedule,
}

CASES = [(kind, name) for kind in HOOKS for name in hashbench.names(kind)]


def test_every_kind_has_a_contract():
    missing = [kind for kind in HOOKS if kind not in CONTRACTS]
    assert not missing, f"kinds without a contract check in tests/test_contract.py: {', '.join(missing)}"


def test_every_kind_has_a_registered_component():
    assert {kind for kind, _ in CASES} == set(HOOKS)


@pytest.mark.parametrize("kind, name", CASES, ids=[f"{kind}-{name}" for kind, name in CASES])
def test_contract(kind, name, request, tmp_path):
    check = CONTRACTS.get(kind)
    if check is None:
        pytest.fail(f"kind {kind!r} has no contract check: add one to CONTRACTS in tests/test_contract.py")
    check(name, request, tmp_path)


def test_the_checks_catch_broken_components(with_plugin, request, tmp_path):
    """Each check fails a component that breaks its kind's promise."""
    import torch

    from hashbench.components import Executor, HashMethod
    from hashbench.data.synthetic import Synthetic
    from hashbench.sorters import Sorter

    class IntCodes(HashMethod):
        name = "int-codes"
        summary = "codes as int8 (test only)"

        def fit(self, train, val=None):
            pass

        def encode(self, x):
            return np.zeros((len(x), self.bits), dtype=np.int8)

    class Unnormalized(Sorter):
        name = "unnormalized"
        summary = "rows that do not sum to 1 (test only)"

        def _sort(self, scores):
            return torch.ones(*scores.shape, scores.shape[-1])

    class Leaky(Synthetic):
        name = "leaky"
        summary = "its first query is also in the database (test only)"

        def load(self):
            s = super().load()
            db = s.database
            leaked = Split(np.vstack([db.x, s.query.x[:1]]), np.concatenate([db.labels, s.query.labels[:1]]),
                           np.concatenate([db.index, s.query.index[:1]]))
            return Splits(train=s.train, val=s.val, query=s.query, database=leaked)

    class DropsOne(Executor):
        name = "drops-one"
        summary = "loses the first task (test only)"

        def map(self, fn, tasks):
            return (fn(task) for task in list(tasks)[1:])

    with_plugin(register_methods=lambda: [IntCodes], register_sorters=lambda: [Unnormalized],
                register_datasets=lambda: [Leaky], register_executors=lambda: [DropsOne])
    for check, name in ((check_method, "int-codes"), (check_sorter, "unnormalized"),
                        (check_dataset, "leaky"), (check_executor, "drops-one")):
        with pytest.raises(AssertionError):
            check(name, request, tmp_path / name)
