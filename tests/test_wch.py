"""WCH (hashbench.plugins.wch): mutual attention, weighted targets (chunked), loss terms, head,
config, and tiny fits through the shared training loop."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import hashbench.plugins.wch as wch_plugin
import torch.nn.functional as F
from hashbench.plugins.wch import WCH
from hashbench.plugins.wch.model import (
    WCHHead,
    best_match_similarity,
    chunk_rows,
    mutual_attention,
    wch_loss_terms,
    weighted_targets,
)

import hashbench
from hashbench import registry as registry_module
from hashbench.components import build_config
from hashbench.config import Experiment, parse_set
from hashbench.deep import TrainConfig
from hashbench.errors import HashbenchError
from hashbench.evaluate import map_at_k, pack_codes
from hashbench.losses import weighted_sum

E = math.e


@pytest.fixture(autouse=True)
def _registered():
    """Register the plugin when the installed entry points do not (yet) list it."""
    if "wch" not in hashbench.names("method"):
        registry_module.reload(extra_plugins={"wch-test": wch_plugin})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tokens(n: int = 4, p: int = 3, d: int = 5, seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views: shared per-image tokens plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, p, d, generator=g, dtype=dtype)
    return (base + 0.5 * torch.randn(n, p, d, generator=g, dtype=dtype),
            base + 0.5 * torch.randn(n, p, d, generator=g, dtype=dtype))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


# ----------------------------------------------------------------------------- mutual attention

def _mutual_attention_loop(x1: torch.Tensor, x2: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition, one image and token at a time, with explicit exp (float64)."""
    x1, x2 = x1.double(), x2.double()
    n, p, _ = x1.shape
    r1, r2 = torch.zeros_like(x1), torch.zeros_like(x2)
    for k in range(n):
        s = [[_cos(x1[k, i], x2[k, j]) for j in range(p)] for i in range(p)]
        for j in range(p):  # x1r[j] = sum_i softmax_i(S[i, j]) x1[i]
            z = sum(math.exp(s[i][j] / t) for i in range(p))
            r1[k, j] = sum(math.exp(s[i][j] / t) / z * x1[k, i] for i in range(p))
        for i in range(p):  # x2r[i] = sum_j softmax_j(S[i, j]) x2[j]
            z = sum(math.exp(s[i][j] / t) for j in range(p))
            r2[k, i] = sum(math.exp(s[i][j] / t) / z * x2[k, j] for j in range(p))
    return r1, r2


@pytest.mark.parametrize("t", [1.0, 0.5])
def test_mutual_attention_matches_a_triple_loop(t):
    x1, x2 = tokens(2, 3, 4)
    r1, r2 = mutual_attention(x1, x2, t)
    e1, e2 = _mutual_attention_loop(x1, x2, t)
    assert r1.shape == r2.shape == (2, 3, 4) and r1.dtype == torch.float32
    torch.testing.assert_close(r1.double(), e1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r2.double(), e2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t", [1.0, 0.5])
def test_mutual_attention_by_hand(t):
    # S = cos(x1_i, x2_j) = [[1, 1], [0, 0]]: not symmetric, so S and S^T give different results
    x1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    x2 = torch.tensor([[[2.0, 0.0], [0.5, 0.0]]])
    r1, r2 = mutual_attention(x1, x2, t)
    a = math.exp(1 / t)
    # x1r[j]: softmax over i of column j = (1, 0) -> (a, 1) / (a + 1), for both j
    torch.testing.assert_close(r1, torch.tensor([[[a / (a + 1), 1 / (a + 1)]] * 2]))
    # x2r[i]: softmax over j of row i: (1, 1) and (0, 0) -> (1/2, 1/2): 0.5 * 2 + 0.5 * 0.5
    torch.testing.assert_close(r2, torch.tensor([[[1.25, 0.0], [1.25, 0.0]]]))


def test_mutual_attention_passes_gradcheck():
    x1, x2 = tokens(2, 3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: mutual_attention(a, b, 0.7),
                                    (x1.requires_grad_(), x2.requires_grad_()))


# ----------------------------------------------------------------------------- weighted targets

def _weighted_targets_loop(x1: torch.Tensor, x2: torch.Tensor, t: float, normalization: str) -> torch.Tensor:
    x1, x2 = x1.double(), x2.double()
    n, p, _ = x1.shape
    w = [[sum(max(_cos(x1[a, i], x2[b, j]) for j in range(p)) for i in range(p)) / p for b in range(n)]
         for a in range(n)]
    soft = [[math.exp(v / t) / sum(math.exp(u / t) for u in w[a]) for v in w[a]] for a in range(n)]
    out = torch.zeros(n, n, dtype=torch.float64)
    for a in range(n):
        for b in range(n):
            # column: the released A / diag(A) broadcast, each column over ITS diagonal entry
            out[a, b] = soft[a][b] / (soft[b][b] if normalization == "column" else soft[a][a])
    return out


@pytest.mark.parametrize("p", [2, 3])
@pytest.mark.parametrize("normalization", ["column", "row"])
def test_weighted_targets_match_a_loop(p, normalization):
    x1, x2 = tokens(3, p, 4, seed=p)
    W = weighted_targets(x1, x2, 0.2, normalization=normalization)
    expected = _weighted_targets_loop(x1, x2, 0.2, normalization)
    assert W.shape == (3, 3) and W.dtype == torch.float32
    torch.testing.assert_close(W.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(W.diagonal(), torch.ones(3))  # exactly 1
    # not renormalized: with "row", row n sums to 1 / softmax[n, n] > 1; with "column", column m
    # sums to (sum_n softmax[n, m]) / softmax[m, m]
    soft = torch.softmax(best_match_similarity(x1, x2) / 0.2, dim=1)
    if normalization == "row":
        torch.testing.assert_close(W.sum(1), 1 / soft.diagonal())
        assert (W.sum(1) > 1.01).all()
    else:
        torch.testing.assert_close(W.sum(0), soft.sum(0) / soft.diagonal())


def test_weighted_targets_normalizations_by_hand(monkeypatch):
    """A = softmax over m of w / T: the released column form and the row form differ."""
    import hashbench.plugins.wch.model as model

    # w = log A with A = [[1/2, 1/2], [1/4, 3/4]] (rows sum to 1), so softmax at T = 1 gives A back
    a = torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=torch.float64)
    monkeypatch.setattr(model, "best_match_similarity", lambda *_: a.log())
    x = torch.zeros(2, 1, 1, dtype=torch.float64)
    column = weighted_targets(x, x, 1.0, normalization="column")
    row = weighted_targets(x, x, 1.0, normalization="row")
    # column: W[n, m] = A[n, m] / A[m, m]; row: W[n, m] = A[n, m] / A[n, n]
    torch.testing.assert_close(column, torch.tensor([[1.0, 2 / 3], [0.5, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(row, torch.tensor([[1.0, 1.0], [1 / 3, 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="normalization"):
        weighted_targets(x, x, normalization="diagonal")


def test_chunk_rows():
    assert chunk_rows(64, 196, 196, 64.0) == 6  # floor(64 MiB / (4 * 64 * 196 * 196) B)
    assert chunk_rows(64, 4, 4, 64.0) == 16384
    assert chunk_rows(32, 196, 196, 1e-6) == 1


def test_weighted_targets_chunked_equal_unchunked_in_values_and_gradients():
    x1, x2 = tokens(5, 4, 3, seed=1)
    assert chunk_rows(5, 4, 4, 1e-6) == 1 and chunk_rows(5, 4, 4, 64.0) >= 5
    upstream = torch.randn(5, 5, generator=torch.Generator().manual_seed(2))

    def run(chunk_mib):
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        W = weighted_targets(a, b, 0.2, chunk_mib)
        (W * upstream).sum().backward()
        return W.detach(), a.grad, b.grad

    one, whole = run(1e-6), run(64.0)
    for got, expected in zip(one, whole):
        torch.testing.assert_close(got, expected)
    for g in one[1:]:  # W is not detached: gradients reach both views
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_weighted_targets_backward_keeps_no_whole_chunk_of_similarities():
    """``max(-1).values`` saves only indices for backward (``amax`` would save each chunk's G)."""
    n, p, d = 6, 8, 2
    x1, x2 = (t.requires_grad_() for t in tokens(n, p, d, seed=3))
    chunk = chunk_rows(n, p, p, 1e-6) * n * p * p  # elements of one chunk's G (one row)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        W = weighted_targets(x1, x2, 0.2, 1e-6)
    assert saved and max(saved) < chunk, (max(saved), chunk)
    W.sum().backward()
    assert x1.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- loss terms

def test_loss_terms_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    n, bits = 5, 12
    h1 = torch.randn(n, bits, generator=g).sign()
    h2 = torch.randn(n, bits, generator=g).sign()
    W = torch.rand(n, n, generator=g) + torch.eye(n)
    terms = wch_loss_terms(h1, h2, W, 0.3)
    assert set(terms) == {"weighted_ce", "balance", "magnitude"}
    ce = 0.0
    for a in range(n):
        logits = [float(h1[a] @ h2[b]) / bits / 0.3 for b in range(n)]
        lse = math.log(sum(math.exp(v) for v in logits))
        ce += -sum(float(W[a, b]) * (logits[b] - lse) for b in range(n))
    assert terms["weighted_ce"].item() == pytest.approx(ce / n, rel=1e-5)
    balance = sum(float(h1[:, k].mean()) ** 2 for k in range(bits)) / bits
    assert terms["balance"].item() == pytest.approx(balance, rel=1e-5)
    assert terms["magnitude"].item() == pytest.approx(float((h1 ** 2).mean()), rel=1e-6)


def test_loss_terms_by_hand():
    h1 = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    h2 = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    W = torch.tensor([[1.0, 0.5], [0.25, 1.0]])
    terms = wch_loss_terms(h1, h2, W, 0.3)
    # logits = h1 h2^T / 2 / 0.3 = [[10/3, 0], [0, -10/3]]
    c = 10 / 3
    row0 = -(1.0 * (c - math.log(E ** c + 1)) + 0.5 * (0 - math.log(E ** c + 1)))
    row1 = -(0.25 * (0 - math.log(1 + E ** -c)) + 1.0 * (-c - math.log(1 + E ** -c)))
    assert terms["weighted_ce"].item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert terms["balance"].item() == pytest.approx(0.5)  # batch mean (1, 0)
    assert terms["magnitude"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("params, weights", [
    ({}, (1.0, 1.0, -1.0)),
    ({"balance_weight": 0.5, "magnitude_weight": 2.0}, (1.0, 0.5, -2.0)),
])
def test_term_weights_give_ce_plus_balance_minus_magnitude(params, weights):
    method = WCH(bits=8, **params)
    assert method.term_weights() == dict(zip(("weighted_ce", "balance", "magnitude"), weights))
    torch.manual_seed(0)
    head = method.build_head(5)
    terms = method.objective(head, *tokens())
    total, logged = weighted_sum(terms, method.term_weights())
    expected = (terms["weighted_ce"] + weights[1] * terms["balance"] + weights[2] * terms["magnitude"])
    torch.testing.assert_close(total, expected)
    assert set(logged) == {"weighted_ce", "balance", "magnitude", "total"}


def test_zero_weights_drop_terms():
    method = WCH(bits=8, magnitude_weight=0.0, balance_weight=0.0)
    weights = method.term_weights()
    assert weights["magnitude"] == 0.0 and math.copysign(1, weights["magnitude"]) == 1  # not -0.0
    torch.manual_seed(0)
    terms = method.objective(method.build_head(5), *tokens())
    total, logged = weighted_sum(terms, weights)
    assert set(logged) == {"weighted_ce", "total"}
    torch.testing.assert_close(total, terms["weighted_ce"])


# ----------------------------------------------------------------------------- objective

def test_objective_matches_the_pieces_and_trains_every_head_parameter():
    method = WCH(bits=8, hidden_dim=16, attention_temperature=0.5, target_temperature=0.3, code_temperature=0.4)
    torch.manual_seed(0)
    head = method.build_head(5)
    f1, f2 = tokens()
    seen = []
    hook = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    terms = method.objective(head, f1, f2)
    hook.remove()
    x1, x2 = mutual_attention(f1, f2, 0.5)
    W = weighted_targets(x1, x2, 0.3)
    expected = wch_loss_terms(head(x1), head(x2), W, 0.4)
    for k in expected:
        torch.testing.assert_close(terms[k], expected[k])
    # the head gets the refined tokens of both views, not the raw ones
    [given] = seen
    torch.testing.assert_close(given, torch.cat([x1, x2]))
    assert not torch.allclose(x1, f1, atol=0.1)
    total, _ = weighted_sum(terms, method.term_weights())
    total.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_objective_gradients_reach_trainable_tokens_through_the_targets():
    """With frozen=False the tokens carry gradients: W is not detached, so CE's gradient has a
    part through W (the gradient changes when W is detached)."""
    method = WCH(bits=8, hidden_dim=16)
    torch.manual_seed(0)
    head = method.build_head(5)

    def grad(detach_w):
        f1, f2 = (t.requires_grad_() for t in tokens())
        x1, x2, W = method.refine(f1, f2)
        if detach_w:
            W = W.detach()
        wch_loss_terms(head(x1), head(x2), W, 0.3)["weighted_ce"].backward()
        return f1.grad

    full, detached = grad(False), grad(True)
    assert full.abs().sum() > 0 and not torch.allclose(full, detached)
    f1, f2 = (t.requires_grad_() for t in tokens())
    method.objective(head, f1, f2)["weighted_ce"].backward()
    torch.testing.assert_close(f1.grad, full)


def test_objective_under_autocast_runs_the_loss_in_float32():
    """The loop runs the objective under autocast on CUDA; bfloat16 on the CPU stands in here."""
    method = WCH(bits=8, hidden_dim=16)
    torch.manual_seed(0)
    head = method.build_head(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, W = method.refine(*tokens())
        terms = method.objective(head, *tokens())
        loss, _ = weighted_sum(terms, method.term_weights())
    assert W.dtype == torch.float32
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    loss.backward()
    assert torch.isfinite(head.fc.weight.grad).all() and head.fc.weight.grad.abs().sum() > 0


def test_adam_steps_on_a_fixed_batch_lower_the_loss_and_separate_clusters():
    """The loss trains the head: tokens of 4 clusters; after 60 Adam steps the loss is lower and
    codes of different clusters, half-equal at initialization, are about uncorrelated."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 4, 8, generator=g)
    labels = torch.arange(16) % 4
    f1, f2 = (centers[labels] + 0.3 * torch.randn(16, 4, 8, generator=g) for _ in range(2))
    same = labels[:, None] == labels[None, :]
    method = WCH(bits=16, hidden_dim=32)
    torch.manual_seed(0)
    head = method.build_head(8)

    def agreement():
        h = method.hash_codes(head, f1).float() * 2 - 1
        a = h @ h.T / 16
        return a[same].mean().item(), a[~same].mean().item()

    _, different0 = agreement()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss, _ = weighted_sum(method.objective(head, f1, f2), method.term_weights())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    same1, different1 = agreement()
    assert losses[-1] < 0.85 * losses[0], (losses[0], losses[-1])
    assert different0 > 0.4 and different1 < 0.2 and same1 > 0.9, (different0, different1, same1)


def test_objective_rejects_pooled_features():
    method = WCH(bits=8, hidden_dim=16)
    head = method.build_head(5)
    with pytest.raises(HashbenchError, match=r"method wch: the objective needs tokens \(n, p, d\)"):
        method.objective(head, torch.randn(4, 5), torch.randn(4, 5))


# ----------------------------------------------------------------------------- head and codes

def test_head_shapes_and_initialization():
    head = WCH(bits=16, hidden_dim=1024).build_head(20)
    assert isinstance(head, WCHHead)
    assert head.norm.normalized_shape == (20,) and head.norm.eps == 1e-6
    assert (head.fc.in_features, head.fc.out_features) == (20, 1024)
    assert (head.code.in_features, head.code.out_features) == (1024, 16)
    # kaiming_uniform_(mode="fan_out"): bound sqrt(2) * sqrt(3 / fan_out) (fan_in would be far wider)
    for layer, fan_out in ((head.fc, 1024), (head.code, 16)):
        bound = math.sqrt(6 / fan_out)
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
    assert head.fc.bias.std().item() == pytest.approx(1.0, abs=0.1)  # normal_, std 1
    assert head.code.bias.abs().min() > 0 and head.code.bias.abs().max() > 0.3


def test_head_is_straight_through():
    torch.manual_seed(0)
    head = WCHHead(6, 8, hidden=16)
    x = torch.randn(5, 3, 6)
    h = head(x)
    y = head.relaxed(x)
    assert h.shape == y.shape == (5, 8) and ((y > -1) & (y < 1)).all()
    torch.testing.assert_close(h, y.sign(), rtol=0, atol=1e-6)  # +-1 in value
    weights = torch.randn(5, 8)

    def grads(fn):
        head.zero_grad()
        (fn(x) * weights).sum().backward()
        return [p.grad.clone() for p in head.parameters()]

    for got, expected in zip(grads(head), grads(head.relaxed)):
        torch.testing.assert_close(got, expected)  # the tanh path's gradient


def test_hash_codes_come_from_the_raw_pooled_tokens():
    method = WCH(bits=16, hidden_dim=32)
    torch.manual_seed(0)
    head = method.build_head(6)
    f = torch.randn(7, 4, 6)
    codes = method.hash_codes(head, f)
    assert codes.dtype == torch.bool and codes.shape == (7, 16) and not codes.requires_grad
    with torch.no_grad():
        y = torch.tanh(head.code(torch.relu(head.fc(F.layer_norm(f.mean(1), (6,), head.norm.weight,
                                                                 head.norm.bias, 1e-6)))))
    assert torch.equal(codes, y >= 0)
    assert torch.equal(method.hash_codes(head, f[:, torch.randperm(4)]), codes)  # pooled
    assert torch.equal(method.hash_codes(head, f[2:3]), codes[2:3])


# ----------------------------------------------------------------------------- config

def test_registered_with_defaults():
    assert "wch" in hashbench.names("method")
    entry = registry_module.registry("method").entry("wch")
    assert entry.cls is WCH and "ACCV 2022" in entry.summary and len(entry.summary.splitlines()) == 1
    method = hashbench.create("method", "wch", bits=32)
    cfg = method.config
    assert (cfg.attention_temperature, cfg.target_temperature, cfg.code_temperature, cfg.hidden_dim,
            cfg.balance_weight, cfg.magnitude_weight, cfg.chunk_mib) == (1.0, 0.2, 0.3, 1024, 1.0, 1.0, 64.0)
    # TrainConfig's fields and defaults, unchanged (the default CPU protocol: frozen lite0 tokens)
    base = TrainConfig()
    assert all(getattr(cfg, f.name) == getattr(base, f.name) for f in dataclasses.fields(TrainConfig))
    assert cfg.frozen and cfg.bank_views >= 2
    assert method.term_weights() == {"weighted_ce": 1.0, "balance": 1.0, "magnitude": -1.0}
    assert method.input == "images" and method.backbone_output == "tokens"
    assert not hasattr(cfg, "alpha")


def test_overrides_with_set():
    overrides = parse_set(["wch.target_temperature=0.5", "wch.magnitude_weight=0.1", "wch.hidden_dim=256",
                           "wch.frozen=false"])
    [run] = Experiment(methods=["wch"], datasets=["fashion-mnist"], bits=[32], seeds=[0],
                       overrides=overrides).grid()
    params = run.method_params
    assert (params["target_temperature"], params["magnitude_weight"], params["hidden_dim"], params["frozen"]) == (
        0.5, 0.1, 256, False)
    method = hashbench.create("method", "wch", bits=32, **params)
    assert method.config.target_temperature == 0.5 and not method.config.frozen
    assert method.term_weights()["magnitude"] == -0.1
    cfg = build_config(WCH.Config, {"code_temperature": 1, "chunk_mib": 8}, "method wch")
    assert cfg.code_temperature == 1.0 and isinstance(cfg.code_temperature, float) and cfg.chunk_mib == 8.0


@pytest.mark.parametrize("params, match", [
    ({"attention_temperature": 0}, r"method wch: attention_temperature must be > 0, got 0"),
    ({"target_temperature": -0.2}, "target_temperature must be > 0"),
    ({"code_temperature": float("inf")}, "code_temperature must be a finite number > 0"),
    ({"chunk_mib": float("nan")}, "chunk_mib must be a finite number > 0"),
    ({"hidden_dim": 0}, r"hidden_dim must be >= 1, got 0"),
    ({"hidden_dim": 2.5}, "expects int"),
    ({"balance_weight": -1}, "balance_weight must be >= 0"),
    ({"magnitude_weight": float("nan")}, "magnitude_weight must be a finite number >= 0"),
    ({"alpha": 0.1}, "no parameter 'alpha'"),
])
def test_bad_config_is_a_one_line_hashbench_error(params, match):
    with pytest.raises(HashbenchError, match=match) as info:
        hashbench.create("method", "wch", bits=16, **params)
    assert "\n" not in str(info.value) and str(info.value).startswith("method wch")


def test_plugin_module_does_not_import_torch(tmp_path):
    """The registry imports plugins at every command start: torch only where it is used."""
    code = ("import sys, hashbench.plugins.wch as w; w.WCH.Config(); w.WCH(bits=16).term_weights(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- end to end

TINY = {"backbone": "vit_tiny_patch16_224", "pretrained": False, "input_size": 32, "batch_size": 16,
        "val_every": 2, "patience": 0, "hidden_dim": 64}


def _tiny_fit(patterned_images, tmp_path, epochs: int = 4, **params):
    data = patterned_images
    x, y, query, val, train, split = data.x, data.y, data.query, data.val, data.train, data.split
    method = hashbench.create("method", "wch", bits=16, seed=0, epochs=epochs, **{**TINY, **params})
    method.workdir = tmp_path
    method.fit(split(train), split(val))
    return method, x, y, query, train


def test_tiny_fit_and_encode_beats_chance(patterned_images, tmp_path):
    """Random-init vit_tiny at 32 px (2 x 2 tokens, frozen, view bank), 60 images: better than chance."""
    method, x, y, query, train = _tiny_fit(patterned_images, tmp_path, bank_views=2)
    cq, cd = method.encode(x[query]), method.encode(x[train])
    assert cq.dtype == bool and cq.shape == (12, 16) and cd.shape == (len(train), 16)
    assert len(np.unique(cd, axis=0)) > 1
    log = method.report()
    assert log["banked"] and log["backbone"]["output"] == "tokens" and len(log["bank"]["shape"]) == 4
    assert set(log["epochs"][-1]["terms"]) == {"weighted_ce", "balance", "magnitude"}
    score = map_at_k(pack_codes(cq), pack_codes(cd), y[query], y[train], bits=16, topk=None)
    rng = np.random.default_rng(0)
    chance = np.mean([
        map_at_k(pack_codes(rng.random((12, 16)) < 0.5), pack_codes(rng.random((len(train), 16)) < 0.5),
                 y[query], y[train], bits=16, topk=None)
        for _ in range(20)
    ])
    assert score > chance + 0.2, (score, chance)


@pytest.mark.parametrize("frozen", [True, False])
def test_tiny_fit_unbanked_runs(patterned_images, tmp_path, frozen):
    """bank_views=0: augmentation and the backbone at every step; frozen=False fine-tunes it."""
    method, x, _, query, _ = _tiny_fit(patterned_images, tmp_path, epochs=1, bank_views=0, frozen=frozen, lr=1e-3)
    log = method.report()
    assert not log["banked"] and log["epochs_run"] == 1
    assert all(math.isfinite(v) for v in log["epochs"][0]["terms"].values())
    codes = method.encode(x[query])
    assert codes.dtype == bool and codes.shape == (12, 16)
    if not frozen:
        fresh = hashbench.create("backbone", TINY["backbone"], pretrained=False, input_size=32)
        before, after = fresh.module.state_dict(), method._state.backbone.module.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
