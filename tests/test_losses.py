"""Loss terms against hand computations and explicit loops; weighted_sum's contract."""

from __future__ import annotations

import math

import pytest
import torch

import hashbench
from hashbench import losses as losses_module
from hashbench import registry as registry_module
from hashbench.cli import main
from hashbench.errors import HashbenchError
from hashbench.losses import weighted_sum

LOSSES = ["nt_xent", "bernoulli_kl", "quantization", "bit_balance"]


@pytest.fixture(autouse=True)
def losses_registered():
    """The losses through their entry point, or registered here until it exists."""
    if "nt_xent" not in registry_module.registry("loss"):
        registry_module.reload(extra_plugins={"hashbench.losses": losses_module})


def test_registered_and_listed(capsys):
    assert set(hashbench.names("losses")) >= set(LOSSES)
    assert main(["list", "losses"]) == 0
    out = capsys.readouterr().out
    for name in LOSSES:
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert "hashbench.losses" in row


# ----------------------------------------------------------------------------- NT-Xent

def nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """SimCLR's loss, one anchor at a time, in plain Python floats."""
    z = [list(map(float, row)) for row in torch.cat([z1, z2])]
    n2 = len(z)
    b = n2 // 2

    def cos(u, v):
        return sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))

    total = 0.0
    for a in range(n2):
        positive = (a + b) % n2
        denom = sum(math.exp(cos(z[a], z[k]) / t) for k in range(n2) if k != a)
        total += -math.log(math.exp(cos(z[a], z[positive]) / t) / denom)
    return total / n2


@pytest.mark.parametrize("t", [0.3, 1.0])
def test_nt_xent_matches_a_per_anchor_loop(t):
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    loss = hashbench.create("loss", "nt_xent", temperature=t)
    out = loss(z1, z2)
    assert set(out) == {"nt_xent"} and out["nt_xent"].dim() == 0
    assert out["nt_xent"].item() == pytest.approx(nt_xent_loop(z1, z2, t), rel=1e-10)
    assert loss.forward(z1, z2)["nt_xent"].item() == out["nt_xent"].item()


def test_nt_xent_defaults_and_behaviour():
    loss = hashbench.create("loss", "nt_xent")
    assert loss.config.temperature == 0.3  # CIBHash
    torch.manual_seed(1)
    z = torch.randn(6, 8)
    same = loss(z, z)["nt_xent"]
    other = loss(z, torch.randn(6, 8))["nt_xent"]
    assert same < other
    assert loss(z, 3 * z)["nt_xent"].item() == pytest.approx(same.item(), rel=1e-5)  # cosine: scale-free
    z1 = torch.randn(6, 8, requires_grad=True)
    loss(z1, z)["nt_xent"].backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- Bernoulli KL

def kl_bernoulli(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_bernoulli_kl_matches_the_closed_form():
    p1 = torch.tensor([[0.1, 0.7, 0.5], [0.9, 0.2, 0.4]], dtype=torch.float64)
    p2 = torch.tensor([[0.3, 0.6, 0.5], [0.5, 0.8, 0.1]], dtype=torch.float64)
    expected = sum(
        0.5 * (kl_bernoulli(a, b) + kl_bernoulli(b, a))
        for r1, r2 in zip(p1.tolist(), p2.tolist()) for a, b in zip(r1, r2)
    ) / 2  # summed over bits, averaged over the 2 items
    out = hashbench.create("loss", "bernoulli_kl")(p1, p2)
    assert set(out) == {"bernoulli_kl"}
    assert out["bernoulli_kl"].item() == pytest.approx(expected, rel=1e-6)
    assert hashbench.create("loss", "bernoulli_kl")(p1, p1)["bernoulli_kl"].item() == pytest.approx(0, abs=1e-12)


def test_bernoulli_kl_stops_gradient_on_the_target_side():
    """d/dp1 of 1/2 [KL(p1 || sg p2) + KL(p2 || sg p1)] is only the first KL's source-side derivative."""
    p1 = torch.tensor([[0.2, 0.6], [0.7, 0.4]], dtype=torch.float64, requires_grad=True)
    p2 = torch.tensor([[0.5, 0.3], [0.1, 0.9]], dtype=torch.float64, requires_grad=True)
    hashbench.create("loss", "bernoulli_kl", eps=1e-15)(p1, p2)["bernoulli_kl"].backward()
    batch = 2
    for grad, p, q in ((p1.grad, p1.detach(), p2.detach()), (p2.grad, p2.detach(), p1.detach())):
        source_side = torch.log(p / q) - torch.log((1 - p) / (1 - q))  # d KL(p || q) / dp
        assert torch.allclose(grad, 0.5 * source_side / batch, atol=1e-9)
        target_side = -q / p + (1 - q) / (1 - p)  # d KL(q || p) / dp: what sg removes
        assert not torch.allclose(grad, 0.5 * (source_side + target_side) / batch, atol=1e-3)


def test_bernoulli_kl_is_finite_at_0_and_1():
    p1 = torch.tensor([[0.0, 1.0, 0.0, 1.0]], requires_grad=True)
    p2 = torch.tensor([[1.0, 0.0, 0.0, 1.0]], requires_grad=True)
    value = hashbench.create("loss", "bernoulli_kl")(p1, p2)["bernoulli_kl"]
    value.backward()
    assert torch.isfinite(value) and value > 0
    assert torch.isfinite(p1.grad).all() and torch.isfinite(p2.grad).all()


# ----------------------------------------------------------------------------- quantization, balance

def test_quantization_by_hand():
    h = torch.tensor([[0.5, -0.2], [1.0, -1.0]], requires_grad=True)
    out = hashbench.create("loss", "quantization")(h)
    assert set(out) == {"quantization"}
    assert out["quantization"].item() == pytest.approx((0.5 ** 2 + 0.8 ** 2) / 4)
    out["quantization"].backward()
    # d/dh mean((h - sign h)^2) = 2 (h - sign h) / 4: sign is a constant target
    assert torch.allclose(h.grad, torch.tensor([[-0.25, 0.4], [0.0, 0.0]]))


def test_bit_balance_by_hand():
    h = torch.tensor([[1.0, -1.0, 0.5], [1.0, 1.0, -0.5], [1.0, 0.0, 0.3]])
    out = hashbench.create("loss", "bit_balance")(h)
    assert set(out) == {"bit_balance"}
    assert out["bit_balance"].item() == pytest.approx((1.0 + 0.0 + 0.01) / 3)
    balanced = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert hashbench.create("loss", "bit_balance")(balanced)["bit_balance"].item() == 0.0


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("name", LOSSES)
def test_inputs_must_be_2d_float(name):
    loss = hashbench.create("loss", name)
    args = 2 if name in ("nt_xent", "bernoulli_kl") else 1
    with pytest.raises(HashbenchError, match=rf"loss {name}: .* must be a 2-D float tensor") as info:
        loss(*[torch.rand(4)] * args)
    assert "\n" not in str(info.value)
    with pytest.raises(HashbenchError, match="2-D float tensor"):
        loss(*[torch.ones(4, 3, dtype=torch.int64)] * args)
    if args == 2:
        with pytest.raises(HashbenchError, match="inputs differ in shape"):
            loss(torch.rand(4, 3), torch.rand(4, 5))


def test_bad_parameters():
    with pytest.raises(HashbenchError, match="temperature must be > 0"):
        hashbench.create("loss", "nt_xent", temperature=0)
    with pytest.raises(HashbenchError, match="eps must be > 0"):
        hashbench.create("loss", "bernoulli_kl", eps=-1.0)
    with pytest.raises(HashbenchError, match="no parameter 'temp'"):
        hashbench.create("loss", "nt_xent", temp=0.5)
    with pytest.raises(HashbenchError, match="at least 2 items"):
        hashbench.create("loss", "nt_xent")(torch.rand(1, 3), torch.rand(1, 3))


# ----------------------------------------------------------------------------- weighted_sum

def test_weighted_sum_combines_and_logs():
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    total, logged = weighted_sum({"a": a, "b": b}, {"a": 1.0, "b": -0.5})
    assert total.item() == pytest.approx(0.5)
    total.backward()
    assert a.grad.item() == 1.0 and b.grad.item() == -0.5
    assert set(logged) == {"a", "b", "total"}
    assert logged["b"].item() == 3.0 and not logged["b"].requires_grad  # unweighted, detached
    assert logged["total"].item() == pytest.approx(0.5)


def test_weighted_sum_zero_weight_drops_the_term():
    total, logged = weighted_sum({"a": torch.tensor(2.0), "bad": torch.tensor(float("nan"))}, {"a": 3, "bad": 0})
    assert total.item() == 6.0 and "bad" not in logged
    total, logged = weighted_sum({"a": torch.tensor(2.0)}, {"a": 0.0})
    assert total.item() == 0.0 and logged == {"total": total}


def test_weighted_sum_errors():
    terms = {"nt_xent": torch.tensor(1.0), "bernoulli_kl": torch.tensor(2.0)}
    with pytest.raises(HashbenchError, match="'bernoulli_kl' has no weight"):
        weighted_sum(terms, {"nt_xent": 1.0})
    with pytest.raises(HashbenchError, match="'bernouli_kl' names no term. Did you mean: bernoulli_kl"):
        weighted_sum(terms, {"nt_xent": 1.0, "bernoulli_kl": 1.0, "bernouli_kl": 1.0})
    with pytest.raises(HashbenchError, match="must be a finite number"):
        weighted_sum(terms, {"nt_xent": 1.0, "bernoulli_kl": float("nan")})
    with pytest.raises(HashbenchError, match="must be a scalar tensor"):
        weighted_sum({"x": torch.ones(3)}, {"x": 1.0})
    with pytest.raises(HashbenchError, match="at least one"):
        weighted_sum({}, {})


def test_cibhash_objective_end_to_end():
    """The CIBHash objective: NT-Xent on codes + 0.001 * symmetric KL on their probabilities."""
    torch.manual_seed(2)
    logits1 = torch.randn(8, 16, requires_grad=True)
    logits2 = torch.randn(8, 16, requires_grad=True)
    p1, p2 = logits1.sigmoid(), logits2.sigmoid()
    b1 = p1 + ((p1 > 0.5).float() - p1).detach()  # straight-through codes in {0, 1}
    b2 = p2 + ((p2 > 0.5).float() - p2).detach()
    terms = {**hashbench.create("loss", "nt_xent")(b1, b2), **hashbench.create("loss", "bernoulli_kl")(p1, p2)}
    total, logged = weighted_sum(terms, {"nt_xent": 1.0, "bernoulli_kl": 0.001})
    total.backward()
    assert set(logged) == {"nt_xent", "bernoulli_kl", "total"}
    assert torch.isfinite(logits1.grad).all() and logits1.grad.abs().sum() > 0
