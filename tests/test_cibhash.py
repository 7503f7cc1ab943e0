"""CIBHash (hashbench.baselines.cibhash): head, codes, loss terms, config, end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("torchvision")

import hashbench.baselines.cibhash as cibhash_plugin  # noqa: E402
from hashbench.baselines.cibhash import CIBHash  # noqa: E402
from hashbench.baselines.cibhash.model import train_codes  # noqa: E402

import hashbench  # noqa: E402
from hashbench import registry as registry_module  # noqa: E402
from hashbench.components import Split  # noqa: E402
from hashbench.config import Experiment, parse_set  # noqa: E402
from hashbench.errors import HashbenchError  # noqa: E402
from hashbench.evaluate import map_at_k, pack_codes  # noqa: E402


@pytest.fixture(autouse=True)
def _registered():
    """Register the plugin when the installed entry points do not (yet) list it."""
    if "cibhash" not in hashbench.names("method"):
        registry_module.reload(extra_plugins={"cibhash-test": cibhash_plugin})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quadrants(n: int, seed: int, offset: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.integers(0, 60, size=(n, 16, 16)).astype(np.uint8)
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, 8 * r:8 * r + 8, 8 * q:8 * q + 8] += 180
    return Split(x=x, labels=y, index=np.arange(n) + offset)


def test_registered_config_and_set_override():
    entry = registry_module.registry("method").entry("cibhash")
    assert entry.cls is CIBHash and "IJCAI 2021" in entry.summary
    method = hashbench.create("method", "cibhash", bits=16, seed=0, kl_weight=0.01)
    assert method.config.kl_weight == 0.01 and method.config.temperature == 0.3
    assert method.config.stochastic is False  # the reference code's sign(p - 0.5), not the paper's sampling
    assert method.term_weights() == {"nt_xent": 1.0, "bernoulli_kl": 0.01}
    assert hashbench.create("method", "cibhash", bits=16).term_weights()["bernoulli_kl"] == 0.001
    overrides = parse_set(["cibhash.kl_weight=0.01", "cibhash.stochastic=true"])
    [run] = Experiment(methods=["cibhash"], datasets=["fashion-mnist"], bits=[32], seeds=[0],
                       overrides=overrides).grid()
    assert run.method_params["kl_weight"] == 0.01 and run.method_params["stochastic"] is True
    with pytest.raises(HashbenchError, match="kl_weight"):
        hashbench.create("method", "cibhash", bits=16, kl_weight="much")
    with pytest.raises(HashbenchError, match="temperature must be > 0"):
        hashbench.create("method", "cibhash", bits=16, temperature=0)


def test_head_shapes_and_test_codes():
    method = CIBHash(bits=16, seed=0)
    head = method.build_head(20)
    linear1, relu, linear2 = head
    assert (linear1.in_features, linear1.out_features) == (20, 1024) and isinstance(relu, torch.nn.ReLU)
    assert (linear2.in_features, linear2.out_features) == (1024, 16)
    f = torch.randn(5, 20)
    p = method.probabilities(head, f)
    assert p.shape == (5, 16) and ((p > 0) & (p < 1)).all()
    codes = method.hash_codes(head, f)
    assert codes.dtype == torch.bool and torch.equal(codes, p >= 0.5)


def test_training_codes_deterministic_stochastic_and_straight_through():
    p = torch.tensor([[0.1, 0.5, 0.9, 0.3]], requires_grad=True)
    det = train_codes(p, stochastic=False)
    assert torch.equal(det, torch.tensor([[-1.0, 0.0, 1.0, -1.0]]))  # sign(p - 0.5)
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.5, 0.9]).expand(20000, 3)
    sto = train_codes(probs, stochastic=True)
    assert set(sto.unique().tolist()) == {-1.0, 1.0}
    b = (sto + 1) / 2  # the paper's Bernoulli code
    np.testing.assert_allclose(b.mean(0).numpy(), [0.1, 0.5, 0.9], atol=0.015)
    assert not torch.equal(train_codes(probs[:8], True), train_codes(probs[:8], True))
    weights = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    (train_codes(p, stochastic=True) * weights).sum().backward()
    assert torch.equal(p.grad, weights)  # straight-through: identity gradient


def _nt_xent_direct(z1, z2, t):
    z = torch.cat([z1, z2]).double()
    n2 = len(z)
    total = 0.0
    for a in range(n2):
        pos = (a + n2 // 2) % n2
        sims = [float(z[a] @ z[b] / (z[a].norm() * z[b].norm())) / t for b in range(n2)]
        denom = sum(math.exp(s) for b, s in enumerate(sims) if b != a)
        total += -math.log(math.exp(sims[pos]) / denom)
    return total / n2


def _kl_direct(p, q):
    out = 0.0
    for i in range(p.shape[0]):
        for k in range(p.shape[1]):
            a, b = float(p[i, k]), float(q[i, k])
            out += a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))
    return out / p.shape[0]


def test_loss_terms_match_a_direct_computation():
    method = CIBHash(bits=4, seed=0, stochastic=False, temperature=0.5)
    head = torch.nn.Identity()  # p = sigmoid(f): the features are the logits
    f1 = torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 0.2, 2.0, -0.7], [0.3, 0.4, -0.5, -2.0]])
    f2 = torch.tensor([[0.8, -1.0, -0.5, 2.0], [-2.0, 0.6, 1.0, 0.7], [0.1, -0.4, -0.9, -1.0]])
    terms = method.objective(head, f1, f2)
    assert set(terms) == {"nt_xent", "bernoulli_kl"}
    p1, p2 = torch.sigmoid(f1), torch.sigmoid(f2)
    z1, z2 = torch.sign(p1 - 0.5), torch.sign(p2 - 0.5)
    assert float(terms["nt_xent"]) == pytest.approx(_nt_xent_direct(z1, z2, 0.5), rel=1e-5)
    kl = 0.5 * (_kl_direct(p1, p2) + _kl_direct(p2, p1))
    assert float(terms["bernoulli_kl"]) == pytest.approx(kl, rel=1e-4)
    # stop-gradient: the KL pulls each view toward the other, never the target
    f1g, f2g = f1.clone().requires_grad_(), f2.clone().requires_grad_()
    method.objective(head, f1g, f2g)["bernoulli_kl"].backward()
    p1g, p2g = torch.sigmoid(f1g.detach()), torch.sigmoid(f2g.detach())
    # d/dp KL(p || sg q) = log(p/q) - log((1-p)/(1-q)); chain through sigmoid and the 1/2, mean over 3
    expect = 0.5 * (torch.log(p1g / p2g) - torch.log((1 - p1g) / (1 - p2g))) * p1g * (1 - p1g) / 3
    torch.testing.assert_close(f1g.grad, expect, rtol=1e-4, atol=1e-6)


def test_fit_encode_end_to_end_beats_chance(tmp_path):
    train, val, database = quadrants(64, 0), quadrants(32, 1, 1000), quadrants(40, 2, 2000)
    method = hashbench.create(
        "method", "cibhash", bits=16, seed=0, backbone="tf_efficientnet_lite0", input_size=32,
        bank_views=4, epochs=15, batch_size=16, val_every=5, stochastic=False,
    )
    method.workdir = tmp_path
    method.fit(train, val)
    codes = method.encode(database.x)
    assert codes.dtype == np.bool_ and codes.shape == (40, 16)
    report = method.report()
    assert report["banked"] and report["epochs_run"] >= 5 and set(report["epochs"][0]["terms"]) == {"nt_xent", "bernoulli_kl"}
    # chance: identical codes (ties broken by index) and random codes
    rng = np.random.default_rng(0)
    chance = max(
        map_at_k(pack_codes(np.zeros((32, 16), bool)), pack_codes(np.zeros((64, 16), bool)), val.labels,
                 train.labels, bits=16, topk=64),
        map_at_k(pack_codes(rng.random((32, 16)) < 0.5), pack_codes(rng.random((64, 16)) < 0.5), val.labels,
                 train.labels, bits=16, topk=64),
    )
    assert report["best_val_map"] > chance + 0.15
    query = quadrants(20, 3, 3000)
    q = method.encode(query.x)
    assert map_at_k(pack_codes(q), pack_codes(codes), query.labels, database.labels, bits=16, topk=40) > chance + 0.15
