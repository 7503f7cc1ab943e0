"""Conformance: each headline objective, at its DEFAULT config, equals its authors' code.

For CIBHash (zexuanqiu/CIBHash, ``model/CIBHash.py``), NSH (kamwoh/sdc, ``models/loss/nsh.py``,
``models/layers/softsort.py``, ``models/arch/nsh.py``, ``configs/model/nsh.yaml``) and WCH
(RosieYuu/WCH, ``TransformerModel/modeling.py``, ``train.py`` ``CL``), the reference loss is
written here from the formula as that code states it, in float64, from the head's parameter
tensors: no helper of the plugins is called. The method's ``objective`` (through
``term_weights`` and ``weighted_sum``, as the training loop calls it) must equal it in value
and in gradient w.r.t. the inputs and every head parameter, with the plugin's own head and with
a plain function as the head (the contract takes any callable).

The hand examples at the end pin the two places where the plugins once differed from the
reference (NSH's score, WCH's target normalization): there the variants give different numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import hashbench
from hashbench.losses import weighted_sum

DOUBLE = torch.float64


def _inputs(n: int, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randn(n, *shape, generator=g, dtype=DOUBLE)
    f2 = f1 + 0.5 * torch.randn(n, *shape, generator=g, dtype=DOUBLE)  # two views: related, not equal
    return f1.requires_grad_(), f2.requires_grad_()


def _objective_total(method, head, f1, f2) -> torch.Tensor:
    total, _ = weighted_sum(method.objective(head, f1, f2), method.term_weights())
    return total


def _check_equal_in_value_and_gradient(total, reference, tensors) -> None:
    assert total.dtype == DOUBLE, "float64 inputs must give a float64 objective"
    torch.testing.assert_close(total, reference, rtol=1e-10, atol=1e-12)
    got = torch.autograd.grad(total, tensors, allow_unused=True)
    want = torch.autograd.grad(reference, tensors, allow_unused=True, retain_graph=True)
    for index, (a, b) in enumerate(zip(got, want)):
        assert b is not None and b.abs().sum() > 0, f"the reference has no gradient for tensor {index}"
        assert a is not None, f"the objective has no gradient for tensor {index}"
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11, msg=lambda m, i=index: f"tensor {i}: {m}")


# ----------------------------------------------------------------------------- CIBHash

def _cibhash_reference(W1, b1, W2, b2, x_i, x_j, temperature=0.3, weight=0.001) -> torch.Tensor:
    """zexuanqiu/CIBHash ``CIBHash.forward`` after the (frozen) VGG: encoder, hash_layer, KL,
    NtXentLoss, ``contra_loss + weight * kl_loss``."""

    class HashLayer(torch.autograd.Function):  # the code's ``hash``: sign forward, identity backward
        @staticmethod
        def forward(ctx, x):
            return torch.sign(x)

        @staticmethod
        def backward(ctx, grad):
            return grad

    def encoder(x):
        return F.linear(F.relu(F.linear(x, W1, b1)), W2, b2)

    prob_i = torch.sigmoid(encoder(x_i))
    z_i = HashLayer.apply(prob_i - 0.5)
    prob_j = torch.sigmoid(encoder(x_j))
    z_j = HashLayer.apply(prob_j - 0.5)

    def compute_kl(prob, prob_v):
        prob_v = prob_v.detach()
        kl = prob * (torch.log(prob + 1e-8) - torch.log(prob_v + 1e-8)) + (1 - prob) * (
            torch.log(1 - prob + 1e-8) - torch.log(1 - prob_v + 1e-8))
        return torch.mean(torch.sum(kl, axis=1))

    kl_loss = (compute_kl(prob_i, prob_j) + compute_kl(prob_j, prob_i)) / 2
    batch = z_i.shape[0]
    N = 2 * batch
    z = torch.cat((z_i, z_j), dim=0)
    sim = F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2) / temperature
    mask = torch.ones((N, N), dtype=bool).fill_diagonal_(0)
    for i in range(batch):
        mask[i, batch + i] = 0
        mask[batch + i, i] = 0
    positives = torch.cat((torch.diag(sim, batch), torch.diag(sim, -batch)), dim=0).view(N, 1)
    negatives = sim[mask].view(N, -1)
    logits = torch.cat((positives, negatives), dim=1)
    contra_loss = F.cross_entropy(logits, torch.zeros(N).long(), reduction="sum") / N
    return contra_loss + weight * kl_loss


def _cibhash_case():
    method = hashbench.create("method", "cibhash", bits=6, seed=0)
    torch.manual_seed(0)
    module = method.build_head(5).double()
    W1, b1, W2, b2 = (p for _, p in module.named_parameters())
    return method, module, (W1, b1, W2, b2)


def test_cibhash_objective_equals_the_reference_code():
    method, module, params = _cibhash_case()
    assert method.config.stochastic is False  # the code's sign(p - 0.5)
    f1, f2 = _inputs(7, (5,), seed=1)
    W1, b1, W2, b2 = params

    def function_head(f):
        return F.linear(F.relu(F.linear(f, W1, b1)), W2, b2)

    reference = _cibhash_reference(*params, f1, f2)
    for head in (module, function_head):
        total = _objective_total(method, head, f1, f2)
        _check_equal_in_value_and_gradient(total, reference, (f1, f2, *params))
    codes = method.hash_codes(function_head, f1)
    assert codes.dtype == torch.bool and torch.equal(codes, torch.sigmoid(function_head(f1)) >= 0.5)


# ----------------------------------------------------------------------------- NSH

def _nsh_reference(Wb, bb, Wz, bz, x1, x2, m=2, quan=1.0, tau=0.3) -> torch.Tensor:
    """kamwoh/sdc: NSH's heads (``hash_encoder`` Linear + Tanh, ``latent_encoder`` Linear + L2Norm),
    ``SoftSort(tau=1/nbit)`` and ``NSHLoss.forward``, with its ``cossim`` (a dot product of the
    unnormalized E with z2) and ONE softmax per positive (sdc applies a second one inside
    ``cross_entropy``: a bug hashbench does not copy, see methods.md)."""
    x = torch.cat([x1, x2])
    b = torch.tanh(F.linear(x, Wb, bb))
    z = F.normalize(F.linear(x, Wz, bz), dim=-1)
    b1, b2 = b[: b.size(0) // 2], b[b.size(0) // 2:]
    z1, z2 = z[: z.size(0) // 2], z[z.size(0) // 2:]
    s = (b1 @ b2.t()) / (2 * b.size(1)) + 0.5
    # SoftSort(tau=1/nbit, hard=False, pow=1.0).forward
    scores = s.unsqueeze(-1)
    ordered = scores.sort(descending=True, dim=1)[0]
    p = ((scores.transpose(1, 2) - ordered).abs().pow(1.0).neg() / (1.0 / b.size(1))).softmax(-1)
    e = torch.einsum("ijk,kd->ijd", p, z1)
    cossim = torch.einsum("ijd,id->ij", e, z2)
    labels = torch.zeros(b1.size(0)).long()
    ce_loss = torch.zeros((), dtype=b.dtype)
    for i in range(m):
        pos, neg = cossim[:, i:i + 1], cossim[:, m:]
        ce_loss = ce_loss + F.cross_entropy(torch.cat([pos, neg], dim=1) / tau, labels) / m
    quan_loss = F.mse_loss(b, b.sign())
    return ce_loss + quan * quan_loss


def test_nsh_objective_equals_the_reference_code():
    method = hashbench.create("method", "nsh", bits=8, seed=0, latent_dim=6)
    assert (method.config.score, method.config.sorter, method.sort_temperature) == ("dot", "softsort", 1 / 8)
    torch.manual_seed(0)
    module = method.build_head(5).double()
    Wb, bb = module.hash[0].weight, module.hash[0].bias
    Wz, bz = module.latent.weight, module.latent.bias
    params = (Wb, bb, Wz, bz)
    f1, f2 = _inputs(7, (5,), seed=2)

    def function_head(f):
        return torch.tanh(F.linear(f, Wb, bb)), F.normalize(F.linear(f, Wz, bz), dim=-1)

    reference = _nsh_reference(*params, f1, f2)
    for head in (module, function_head):
        total = _objective_total(method, head, f1, f2)
        _check_equal_in_value_and_gradient(total, reference, (f1, f2, *params))
    codes = method.hash_codes(function_head, f1)
    assert torch.equal(codes, torch.tanh(F.linear(f1, Wb, bb)) >= 0)


def test_nsh_dot_and_cosine_scores_differ_by_hand():
    """Two items, one anchor row spread half/half by P: E = (z_a + z_b) / 2 has norm
    cos(45 deg) = 0.7071 for orthogonal unit latents, so the dot product with z2 = z_a is 0.5 and
    the cosine 0.7071."""
    from hashbench.plugins.nsh.loss import ranked_cosines, ranked_dots

    P = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]], dtype=DOUBLE)
    z1 = torch.eye(2, dtype=DOUBLE)
    z2 = torch.tensor([[1.0, 0.0]], dtype=DOUBLE)
    torch.testing.assert_close(ranked_dots(P, z1, z2), torch.tensor([[0.5, 0.5]], dtype=DOUBLE))
    torch.testing.assert_close(ranked_cosines(P, z1, z2), torch.full((1, 2), 1 / math.sqrt(2), dtype=DOUBLE))
    # and the objective follows the config: the two scores give different losses
    f1, f2 = _inputs(6, (4,), seed=3)
    totals = {}
    for score in ("dot", "cosine"):
        method = hashbench.create("method", "nsh", bits=8, seed=0, latent_dim=5, score=score)
        torch.manual_seed(0)
        head = method.build_head(4).double()
        totals[score] = _objective_total(method, head, f1, f2).item()
    assert abs(totals["dot"] - totals["cosine"]) > 1e-3, totals


# ----------------------------------------------------------------------------- WCH

def _wch_reference(ln_w, ln_b, W1, b1, W2, b2, x1, x2, bits) -> torch.Tensor:
    """RosieYuu/WCH: ``VisionTransformer.train_forward`` after the transformer (cross_attention
    T=1, weighted T=0.2, fc_norm of the mean token, hash_head) and ``CL.forward``."""
    def cross_attention(x1, x2, T=1):
        sim = torch.einsum("nid,njd->nij", F.normalize(x1, dim=-1), F.normalize(x2, dim=-1))
        sim1 = torch.softmax(sim.permute(0, 2, 1) / T, dim=-1)
        sim2 = torch.softmax(sim / T, dim=-1)
        return torch.einsum("nid,ndj->nij", sim1, x1), torch.einsum("nid,ndj->nij", sim2, x2)

    def weighted(x1, x2, T=0.2):
        sim = torch.einsum("nid,mjd->nmij", F.normalize(x1, dim=-1), F.normalize(x2, dim=-1))
        sim = sim.max(-1)[0].mean(-1)
        sim = torch.softmax(sim / T, dim=-1)
        scale = torch.einsum("ni,ni->n", torch.eye(sim.size(0), dtype=sim.dtype), sim)
        return sim / scale  # broadcasting: column m over scale[m]

    def hash_head(x):
        x = torch.tanh(F.linear(F.relu(F.linear(x, W1, b1)), W2, b2))
        return x + torch.detach(x.sign() - x)

    x1, x2 = cross_attention(x1, x2)
    target = weighted(x1, x2)
    h1 = hash_head(F.layer_norm(x1.mean(dim=1), (x1.shape[-1],), ln_w, ln_b, eps=1e-6))
    h2 = hash_head(F.layer_norm(x2.mean(dim=1), (x2.shape[-1],), ln_w, ln_b, eps=1e-6))
    logits = torch.einsum("ik,jk->ij", h1, h2) / bits / 0.3
    balance_logits = h1.sum(0) / h1.size(0)
    reg = F.mse_loss(balance_logits, torch.zeros_like(balance_logits)) - F.mse_loss(h1, torch.zeros_like(h1))
    return F.cross_entropy(logits, target) + reg


def test_wch_objective_equals_the_reference_code():
    method = hashbench.create("method", "wch", bits=8, seed=0, hidden_dim=7)
    assert method.config.target_normalization == "column"
    torch.manual_seed(0)
    module = method.build_head(5).double()
    params = (module.norm.weight, module.norm.bias, module.fc.weight, module.fc.bias,
              module.code.weight, module.code.bias)
    ln_w, ln_b, W1, b1, W2, b2 = params
    f1, f2 = _inputs(6, (3, 5), seed=4)  # (n, p, d) tokens

    def function_head(tokens):
        x = F.layer_norm(tokens.mean(dim=1), (tokens.shape[-1],), ln_w, ln_b, eps=1e-6)
        y = torch.tanh(F.linear(F.relu(F.linear(x, W1, b1)), W2, b2))
        return y + (y.sign() - y).detach()

    reference = _wch_reference(*params, f1, f2, bits=8)
    for head in (module, function_head):
        total = _objective_total(method, head, f1, f2)
        _check_equal_in_value_and_gradient(total, reference, (f1, f2, *params))
    codes = method.hash_codes(function_head, f1)
    assert torch.equal(codes, function_head(f1) >= 0)


def test_wch_column_and_row_normalizations_give_different_objectives():
    f1, f2 = _inputs(5, (3, 4), seed=5)
    totals = {}
    for normalization in ("column", "row"):
        method = hashbench.create("method", "wch", bits=8, seed=0, hidden_dim=6,
                                  target_normalization=normalization)
        torch.manual_seed(0)
        head = method.build_head(4).double()
        totals[normalization] = _objective_total(method, head, f1, f2).item()
    assert abs(totals["column"] - totals["row"]) > 1e-3, totals
