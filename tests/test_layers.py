"""hashbench.layers, the shared parts of the deep methods: the straight-through sign (forward
sign, backward identity, in float32 and float64; the detach form WCH's code writes, bit for bit)
and the similarity-preservation loss (by hand, its detached target, its pairings), and that
CIBHash, GreedyHash, BiHalf and WCH compose these very parts."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hashbench.layers import PAIRS, SignSTE, cosine_matrix, sign_ste, similarity_preservation  # noqa: E402

DTYPES = [torch.float32, torch.float64]


# ----------------------------------------------------------------------------- the sign

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("zero, at_zero", [(1.0, 1.0), (0.0, 0.0)])
def test_sign_forward_is_sign_and_backward_is_identity(dtype, zero, at_zero):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, generator=g, dtype=dtype) * 10, torch.tensor([0.0, -0.0, 1e-300, -1e-300], dtype=dtype)])
    x = x.reshape(6, 9).requires_grad_()
    b = sign_ste(x, zero=zero)
    assert b.dtype == dtype and b.shape == x.shape
    expected = torch.where(x.detach() > 0, 1.0, -1.0).to(dtype)
    expected[x.detach() == 0] = at_zero
    assert torch.equal(b.detach(), expected)
    upstream = torch.randn(6, 9, generator=g, dtype=dtype)
    b.backward(upstream)
    assert torch.equal(x.grad, upstream)  # bit for bit: the upstream gradient, unchanged


def test_sign_default_maps_zero_to_plus_one_and_refuses_other_zeros():
    assert sign_ste(torch.tensor([0.0, -0.0, -3.0])).tolist() == [1.0, 1.0, -1.0]
    assert torch.equal(sign_ste(torch.tensor([0.0, 2.0, -3.0]), zero=0.0), torch.tensor([0.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="zero must be one of"):
        sign_ste(torch.ones(2), zero=-1.0)
    assert SignSTE.apply(torch.tensor([0.5]), 1.0).tolist() == [1.0]


def test_sign_passes_gradcheck_identity_in_float64():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    (jacobian,) = torch.autograd.functional.jacobian(lambda t: sign_ste(t, zero=0.0), (x,))
    assert torch.equal(jacobian.reshape(12, 12), torch.eye(12, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sign_equals_the_detach_form_on_every_half_value_in_the_unit_interval(dtype):
    """WCH's released head writes ``y + (sign(y) - y).detach()`` on tanh outputs; for every
    |y| <= 1 of the 16-bit types that is exactly ``sign_ste(y, zero=0.0)``."""
    y = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    y = y[torch.isfinite(y) & (y.abs() <= 1)]
    assert torch.equal(sign_ste(y, zero=0.0), y + (torch.sign(y) - y))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sign_equals_the_detach_form_with_its_gradient(dtype):
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(200_000, generator=g, dtype=dtype) * 4
    y1 = torch.tanh(raw).requires_grad_()
    y2 = y1.detach().clone().requires_grad_()
    ours, theirs = sign_ste(y1, zero=0.0), y2 + (torch.sign(y2) - y2).detach()
    assert torch.equal(ours, theirs)
    upstream = torch.randn(200_000, generator=g, dtype=dtype)
    ours.backward(upstream)
    theirs.backward(upstream)
    assert torch.equal(y1.grad, y2.grad)


def test_sign_matches_greedyhash_and_cibhash_reference_forms():
    """GreedyHash's layer was ``where(h >= 0, 1, -1)``; CIBHash's ``hash`` Function ``torch.sign``."""
    x = torch.tensor([-2.0, -0.0, 0.0, 0.3, 1e-9, -1e-9])
    assert torch.equal(sign_ste(x), torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x)))
    assert torch.equal(sign_ste(x, zero=0.0), torch.sign(x))


# ----------------------------------------------------------------------------- similarity preservation

def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_similarity_preservation_by_hand(dtype):
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(5, 7, generator=g, dtype=dtype), torch.randn(5, 7, generator=g, dtype=dtype)
    b1, b2 = torch.randn(5, 3, generator=g, dtype=dtype).sign(), torch.randn(5, 3, generator=g, dtype=dtype).sign()
    cross = np.mean([(_cos(b1[i], b2[j]) - _cos(f1[i], f2[j])) ** 2 for i in range(5) for j in range(5)])
    halves = np.mean([np.mean([(_cos(b[i], b[i + 2]) - _cos(f[i], f[i + 2])) ** 2 for i in range(2)])
                      for f, b in ((f1, b1), (f2, b2))])
    for pairs, expected in (("cross", cross), ("halves", halves)):
        value = similarity_preservation(f1, f2, b1, b2, pairs)
        assert value.dim() == 0 and value.dtype == dtype
        assert value.item() == pytest.approx(expected, rel=1e-12 if dtype == torch.float64 else 1e-5)
    assert torch.allclose(cosine_matrix(b1, b2), torch.tensor(
        [[_cos(b1[i], b2[j]) for j in range(5)] for i in range(5)], dtype=dtype))
    assert PAIRS == ("cross", "halves")
    with pytest.raises(ValueError, match="pairs must be one of"):
        similarity_preservation(f1, f2, b1, b2, "diagonal")


@pytest.mark.parametrize("pairs", PAIRS)
def test_similarity_preservation_target_is_detached(pairs):
    f1, f2 = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    b1, b2 = torch.randn(6, 3, requires_grad=True), torch.randn(6, 3, requires_grad=True)
    similarity_preservation(f1, f2, b1, b2, pairs).backward()
    assert f1.grad is None and f2.grad is None
    assert b1.grad is not None and b2.grad is not None


def test_similarity_preservation_of_one_item_halves_is_a_connected_zero():
    b1, b2 = torch.randn(1, 3, requires_grad=True), torch.randn(1, 3, requires_grad=True)
    loss = similarity_preservation(torch.randn(1, 4), torch.randn(1, 4), b1, b2, "halves")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(b1.grad, torch.zeros(1, 3)) and torch.equal(b2.grad, torch.zeros(1, 3))


# ----------------------------------------------------------------------------- who uses them

def test_the_methods_compose_the_shared_parts():
    """One sign and one similarity loss: GreedyHash's layer module names the shared objects,
    CIBHash's training codes and WCH's head go through the shared sign."""
    import hashbench.layers as layers
    from hashbench.baselines.cibhash import model as cibhash_model
    from hashbench.baselines.greedyhash import layers as greedyhash_layers
    from hashbench.plugins.wch import model as wch_model

    assert greedyhash_layers.sign_ste is layers.sign_ste
    assert greedyhash_layers.similarity_preservation is layers.similarity_preservation
    assert greedyhash_layers.PAIRS is layers.PAIRS
    assert cibhash_model.sign_ste is layers.sign_ste and wch_model.sign_ste is layers.sign_ste
    p = torch.tensor([[0.2, 0.5, 0.9]], requires_grad=True)
    z = cibhash_model.train_codes(p, stochastic=False)
    assert z.tolist() == [[-1.0, 0.0, 1.0]] and z.grad_fn.name().endswith("SignSTEBackward")
    head = wch_model.WCHHead(4, 8, hidden=8)
    assert head(torch.randn(2, 3, 4)).grad_fn.name().endswith("SignSTEBackward")


@pytest.mark.parametrize("method", ["greedyhash", "bihalf"])
def test_greedyhash_and_bihalf_objectives_call_the_shared_similarity_loss(method, monkeypatch):
    import hashbench
    import hashbench.layers as layers

    calls = []
    shared = layers.similarity_preservation

    def spy(*args, **kwargs):
        calls.append(args[-1])
        return shared(*args, **kwargs)

    monkeypatch.setattr(layers, "similarity_preservation", spy)
    m = hashbench.create("method", method, bits=4, pairs="halves")
    head = m.build_head(6)
    terms = m.objective(head, torch.randn(4, 6), torch.randn(4, 6))
    assert calls == ["halves"] and terms["similarity"].dim() == 0


def test_plugin_option_tuples_match_the_shared_pairs():
    """The plugins keep a torch-free copy of PAIRS for their Config (they load at every command)."""
    from hashbench.baselines import bihalf, greedyhash

    assert greedyhash.PAIRS == PAIRS and bihalf.PAIRS == PAIRS
