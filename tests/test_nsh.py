"""NSH (hashbench.plugins.nsh): SortedNCE, similarity, soft gather, gradients through every
sorter, config, and a tiny fit/encode through the shared training loop."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import torch.nn.functional as F  # noqa: E402

import hashbench  # noqa: E402
import hashbench.plugins.nsh as nsh_plugin  # noqa: E402
from hashbench import registry as registry_module  # noqa: E402
from hashbench.components import build_config  # noqa: E402
from hashbench.config import Experiment, parse_set  # noqa: E402
from hashbench.errors import HashbenchError  # noqa: E402
from hashbench.evaluate import map_at_k, pack_codes  # noqa: E402
from hashbench.plugins.nsh import NSH  # noqa: E402
from hashbench.plugins.nsh.loss import (  # noqa: E402
    NSHHead,
    code_similarity,
    ranked_cosines,
    row_quadratic_form,
    soft_gather,
    sorted_nce,
)

SOFT = ["softsort", "neuralsort", "torchsort"]
HAS_TORCHSORT = importlib.util.find_spec("torchsort") is not None


@pytest.fixture(autouse=True)
def _registered():
    """Register the plugin when the installed entry points do not (yet) list it."""
    if "nsh" not in hashbench.names("method"):
        registry_module.reload(extra_plugins={"nsh-test": nsh_plugin})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def needs(sorter: str) -> None:
    if sorter == "torchsort" and not HAS_TORCHSORT:
        pytest.skip("torchsort is not installed")


def features(batch: int = 8, dim: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, dim, generator=g)
    return base + 0.3 * torch.randn(batch, dim, generator=g), base + 0.3 * torch.randn(batch, dim, generator=g)


# ----------------------------------------------------------------------------- SortedNCE

def _sorted_nce_loop(c: torch.Tensor, m: int) -> float:
    """The definition, anchor by anchor, with explicit exp and log (float64)."""
    c = c.double().tolist()
    total = 0.0
    for row in c:
        negatives = sum(math.exp(v) for v in row[m:])
        total += sum(-math.log(math.exp(row[k]) / (math.exp(row[k]) + negatives)) for k in range(m)) / m
    return total / len(c)


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_sorted_nce_matches_a_per_anchor_loop(m):
    g = torch.Generator().manual_seed(m)
    c = torch.randn(4, 6, generator=g) * 3
    assert sorted_nce(c, m).item() == pytest.approx(_sorted_nce_loop(c, m), rel=1e-6)


def test_sorted_nce_by_hand():
    c = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    neg = math.exp(0.0) + math.exp(-1.0)
    m1 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1) + neg))
    m2 = 0.5 * (-math.log(math.exp(2) / (math.exp(2) + neg)) - math.log(math.exp(1) / (math.exp(1) + neg)))
    assert sorted_nce(c, 1).item() == pytest.approx(m1, rel=1e-6)
    assert sorted_nce(c, 2).item() == pytest.approx(m2, rel=1e-6)


def test_sorted_nce_is_one_softmax_not_two():
    g = torch.Generator().manual_seed(3)
    c = torch.randn(5, 7, generator=g) * 2
    m = 2
    target = torch.zeros(5, dtype=torch.long)
    once = sum(F.cross_entropy(torch.cat([c[:, k:k + 1], c[:, m:]], dim=1), target) for k in range(m)) / m
    twice = sum(F.cross_entropy(torch.cat([c[:, k:k + 1], c[:, m:]], dim=1).softmax(-1), target)
                for k in range(m)) / m
    value = sorted_nce(c, m)
    assert value.item() == pytest.approx(once.item(), rel=1e-6)
    assert abs(value.item() - twice.item()) > 0.1  # the re-implementations' double softmax differs


def test_sorted_nce_is_stable_and_checks_positives():
    c = torch.tensor([[300.0, 0.0, -300.0], [-300.0, 0.0, 300.0]])
    assert math.isfinite(sorted_nce(c, 1).item())
    for m in (0, 3):
        with pytest.raises(ValueError, match="positives"):
            sorted_nce(c, m)


# ----------------------------------------------------------------------------- similarity and gather

def test_similarity_is_one_minus_normalized_hamming_for_sign_codes():
    g = torch.Generator().manual_seed(0)
    bits = 12
    b1 = torch.randint(0, 2, (5, bits), generator=g).float() * 2 - 1
    b2 = torch.randint(0, 2, (7, bits), generator=g).float() * 2 - 1
    s = code_similarity(b1, b2)
    hamming = (b1[:, None, :] != b2[None, :, :]).sum(-1).float()
    assert s.shape == (5, 7)
    torch.testing.assert_close(s, 1 - hamming / bits)
    assert torch.allclose(code_similarity(b1, b1).diagonal(), torch.ones(5))


def _one_hot_permutations(scores: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(scores, dim=-1, descending=True)
    return F.one_hot(order, scores.shape[-1]).float(), order


def test_soft_gather_with_an_exact_permutation_reorders_latents_exactly():
    g = torch.Generator().manual_seed(1)
    scores, z = torch.randn(4, 6, generator=g), torch.randn(6, 5, generator=g)
    P, order = _one_hot_permutations(scores)
    E = soft_gather(P, z)
    assert E.shape == (4, 6, 5)
    for i in range(4):
        assert torch.equal(E[i], z[order[i]])
    # the exact sorter of the registry gives the same permutation
    assert torch.equal(hashbench.create("sorter", "exact")(scores), P)


def test_ranked_cosines_equal_the_direct_gather_and_cosine():
    g = torch.Generator().manual_seed(2)
    b = 6
    z1 = F.normalize(torch.randn(b, 9, generator=g), dim=-1)
    z2 = F.normalize(torch.randn(b, 9, generator=g), dim=-1)
    scores = torch.randn(b, b, generator=g)
    for P in (hashbench.create("sorter", "softsort", temperature=0.5)(scores), _one_hot_permutations(scores)[0]):
        direct = F.cosine_similarity(soft_gather(P, z1), z2[:, None, :], dim=-1)
        torch.testing.assert_close(ranked_cosines(P, z1, z2), direct, rtol=1e-5, atol=1e-6)
    P, order = _one_hot_permutations(scores)
    expected = torch.stack([z1[order[i]] @ z2[i] for i in range(b)])
    torch.testing.assert_close(ranked_cosines(P, z1, z2), expected, rtol=1e-5, atol=1e-6)


def test_ranked_cosines_gradients_equal_the_direct_ones():
    g = torch.Generator().manual_seed(4)
    b, d = 5, 7
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    z2 = torch.randn(b, d, generator=g, dtype=torch.float64)
    P = torch.randn(b, b, b, generator=g, dtype=torch.float64).softmax(-1)
    w = torch.randn(b, b, generator=g, dtype=torch.float64)

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in (P, z1, z2)]
        (fn(*leaves) * w).sum().backward()
        return [t.grad for t in leaves]

    fast = grads(ranked_cosines)
    direct = grads(lambda p, a, c: F.cosine_similarity(soft_gather(p, a), c[:, None, :], dim=-1))
    for got, expected in zip(fast, direct):
        torch.testing.assert_close(got, expected)


def test_row_quadratic_form_passes_gradcheck():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    P = torch.randn(2, 4, 4, generator=g, dtype=torch.float64).softmax(-1).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, a: row_quadratic_form(p, a @ a.T), (P, z))
    gram = (z @ z.T).detach()
    torch.testing.assert_close(row_quadratic_form(P, gram), torch.einsum("irk,kl,irl->ir", P, gram, P))


@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_objective_by_hand_matches_the_pieces(score):
    method = NSH(bits=8, positives=2, temperature=0.5, score=score)
    torch.manual_seed(0)
    head = method.build_head(10)
    f1, f2 = features(6, 10)
    terms = method.objective(head, f1, f2)
    b1, z1 = head(f1)
    b2, z2 = head(f2)
    P = hashbench.create("sorter", "softsort", temperature=1 / 8)(code_similarity(b1, b2))
    E = soft_gather(P, z1)
    if score == "dot":
        c = (E * z2[:, None, :]).sum(-1) / 0.5
    else:
        c = F.cosine_similarity(E, z2[:, None, :], dim=-1) / 0.5
    assert terms["sorted_nce"].item() == pytest.approx(_sorted_nce_loop(c.detach(), 2), rel=1e-5)
    b = torch.cat([b1, b2])
    assert terms["quantization"].item() == pytest.approx(F.mse_loss(b, b.sign()).item(), rel=1e-6)


# ----------------------------------------------------------------------------- gradients

def _hash_weight_grad(method: NSH, term: str = "sorted_nce") -> tuple[torch.Tensor | None, torch.Tensor | None]:
    torch.manual_seed(0)
    head = method.build_head(20)
    f1, f2 = features()
    method.objective(head, f1, f2)[term].backward()
    return head.hash[0].weight.grad, head.latent.weight.grad


@pytest.mark.parametrize("sorter", SOFT + ["exact"])
def test_hash_head_gets_a_gradient_through_the_sorter(sorter):
    needs(sorter)
    method = NSH(bits=16, sorter=sorter, quantization_weight=0.0)
    assert method.term_weights()["quantization"] == 0.0
    grad, latent_grad = _hash_weight_grad(method, "sorted_nce")
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0, f"{sorter}: no gradient reaches the hash head through the sorter"
    assert latent_grad is not None and latent_grad.abs().sum() > 0


@pytest.mark.parametrize("sorter", SOFT + ["exact"])
def test_control_a_detached_sorter_output_gives_the_hash_head_no_sorted_nce_gradient(sorter, monkeypatch):
    needs(sorter)
    method = NSH(bits=16, sorter=sorter)
    real = method.sorter
    monkeypatch.setattr(method, "_sorter", lambda s: real(s).detach())
    grad, latent_grad = _hash_weight_grad(method, "sorted_nce")
    assert grad is None or torch.count_nonzero(grad) == 0
    assert latent_grad is not None and latent_grad.abs().sum() > 0  # the loss itself is alive


def test_both_terms_together_train_every_parameter():
    method = NSH(bits=16)
    torch.manual_seed(0)
    head = method.build_head(20)
    terms = method.objective(head, *features())
    assert set(terms) == set(method.term_weights()) == {"sorted_nce", "quantization"}
    total, logged = hashbench.losses.weighted_sum(terms, method.term_weights())
    assert set(logged) == {"sorted_nce", "quantization", "total"}
    total.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_objective_under_autocast_runs_the_loss_in_float32():
    """The loop runs the objective under autocast on CUDA; bfloat16 on the CPU stands in here."""
    method = NSH(bits=16)
    torch.manual_seed(0)
    head = method.build_head(20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = method.objective(head, *features())
        loss = sum(method.term_weights()[k] * v for k, v in terms.items())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    loss.backward()
    assert torch.isfinite(head.hash[0].weight.grad).all() and head.hash[0].weight.grad.abs().sum() > 0


def test_small_batches_clamp_positives():
    method = NSH(bits=8, positives=4)
    assert [method.positives_for(b) for b in (2, 3, 5, 6, 64)] == [1, 2, 4, 4, 4]
    torch.manual_seed(0)
    head = method.build_head(20)
    f1, f2 = features(3)
    terms = method.objective(head, f1, f2)  # m = 2, one negative
    assert all(torch.isfinite(v) for v in terms.values())
    with pytest.raises(HashbenchError, match="at least 2"):
        method.objective(head, f1[:1], f2[:1])


# ----------------------------------------------------------------------------- head and codes

def test_head_shapes_and_codes():
    method = NSH(bits=16, latent_dim=32)
    head = method.build_head(20)
    assert isinstance(head, NSHHead)
    assert (head.hash[0].in_features, head.hash[0].out_features) == (20, 16)
    assert (head.latent.in_features, head.latent.out_features) == (20, 32)
    f = torch.randn(7, 20)
    b, z = head(f)
    assert b.shape == (7, 16) and ((b > -1) & (b < 1)).all()
    assert z.shape == (7, 32) and torch.allclose(z.norm(dim=-1), torch.ones(7))
    codes = method.hash_codes(head, f)
    assert codes.dtype == torch.bool and codes.shape == (7, 16)
    assert torch.equal(codes, b.detach() >= 0)
    assert torch.equal(method.hash_codes(head, f[2:3]), codes[2:3])


# ----------------------------------------------------------------------------- config

def test_registered_with_defaults():
    entry = registry_module.registry("method").entry("nsh")
    assert entry.cls is NSH and "IJCAI 2022" in entry.summary and len(entry.summary.splitlines()) == 1
    method = hashbench.create("method", "nsh", bits=32)
    cfg = method.config
    assert (cfg.sorter, cfg.sort_temperature, cfg.positives, cfg.temperature, cfg.latent_dim,
            cfg.quantization_weight) == ("softsort", None, 2, 0.3, 1024, 1.0)
    assert (cfg.backbone, cfg.input_size, cfg.frozen, cfg.bank_views, cfg.batch_size) == (
        "tf_efficientnet_lite0", 64, True, 8, 64)
    assert method.term_weights() == {"sorted_nce": 1.0, "quantization": 1.0}
    assert method.sorter.name == "softsort" and method.sorter.config.temperature == 1 / 32
    assert method.input == "images"


@pytest.mark.parametrize("sorter", SOFT + ["exact"])
def test_sort_temperature_goes_to_the_sorters_parameter(sorter):
    needs(sorter)
    parameter = registry_module.registry("sorter").get(sorter).parameter
    default = hashbench.create("method", "nsh", bits=16, sorter=sorter)
    assert default.sort_parameter == parameter and getattr(default.sorter.config, parameter) == 1 / 16
    set_ = hashbench.create("method", "nsh", bits=16, sorter=sorter, sort_temperature=0.2)
    assert getattr(set_.sorter.config, parameter) == 0.2


def test_overrides_with_set():
    overrides = parse_set(["nsh.positives=4", "nsh.sorter=neuralsort", "nsh.quantization_weight=0.1"])
    [run] = Experiment(methods=["nsh"], datasets=["fashion-mnist"], bits=[32], seeds=[0],
                       overrides=overrides).grid()
    params = run.method_params
    assert (params["positives"], params["sorter"], params["quantization_weight"]) == (4, "neuralsort", 0.1)
    method = hashbench.create("method", "nsh", bits=32, **params)
    assert method.config.positives == 4 and method.sorter.name == "neuralsort"
    assert method.term_weights()["quantization"] == 0.1
    cfg = build_config(NSH.Config, {"temperature": 1, "latent_dim": 64}, "method nsh")
    assert cfg.temperature == 1.0 and isinstance(cfg.temperature, float) and cfg.latent_dim == 64


@pytest.mark.parametrize("params, match", [
    ({"sorter": "softsrot"}, r"method nsh: sorter must be a registered sorter, got 'softsrot'\. Did you mean: softsort"),
    ({"sorter": "neural"}, "Did you mean: neuralsort"),
    ({"positives": 0}, r"method nsh: positives must be >= 1, got 0"),
    ({"positives": 64}, r"method nsh: positives must be <= batch_size - 1 = 63, got 64"),
    ({"positives": 8, "batch_size": 8}, r"= 7, got 8"),
    ({"positives": 2.5}, "expects int"),
    ({"temperature": 0}, "temperature must be"),
    ({"sort_temperature": -1.0}, "sort_temperature must be"),
    ({"sort_temperature": float("nan")}, "sort_temperature must be"),
    ({"latent_dim": 0}, "latent_dim must be"),
    ({"quantization_weight": -1}, "quantization_weight must be"),
    ({"sortre": "exact"}, "no parameter 'sortre'.*sorter"),
])
def test_bad_config_is_a_one_line_hashbench_error(params, match):
    with pytest.raises(HashbenchError, match=match) as info:
        hashbench.create("method", "nsh", bits=16, **params)
    assert "\n" not in str(info.value)
    assert hashbench.create("method", "nsh", bits=16, positives=8, batch_size=9).config.positives == 8


def test_plugin_module_does_not_import_torch(tmp_path):
    """The registry imports plugins at every command start: torch only where it is used."""
    code = ("import sys, hashbench.plugins.nsh as n; n.NSH.Config(); n.NSH(bits=16); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- end to end

def _tiny_fit(patterned_images, tmp_path, epochs: int = 4, **params):
    data = patterned_images
    x, y, query, val, train, split = data.x, data.y, data.query, data.val, data.train, data.split
    method = hashbench.create("method", "nsh", bits=16, seed=0, backbone="vit_tiny_patch16_224", pretrained=False,
                              input_size=32, epochs=epochs, batch_size=16, bank_views=2, val_every=2, patience=0,
                              **params)
    method.workdir = tmp_path
    method.fit(split(train), split(val))
    return method, x, y, query, train


def test_tiny_fit_and_encode_beats_chance(patterned_images, tmp_path):
    """Random-init vit_tiny at 32 px (frozen, view bank), 60 images, 4 epochs: better than chance."""
    method, x, y, query, train = _tiny_fit(patterned_images, tmp_path)
    cq, cd = method.encode(x[query]), method.encode(x[train])
    assert cq.dtype == bool and cq.shape == (12, 16) and cd.shape == (len(train), 16)
    assert len(np.unique(cd, axis=0)) > 1
    log = method.report()
    assert log["banked"] and set(log["epochs"][-1]["terms"]) == {"sorted_nce", "quantization"}
    score = map_at_k(pack_codes(cq), pack_codes(cd), y[query], y[train], bits=16, topk=None)
    rng = np.random.default_rng(0)
    chance = np.mean([
        map_at_k(pack_codes(rng.random((12, 16)) < 0.5), pack_codes(rng.random((len(train), 16)) < 0.5),
                 y[query], y[train], bits=16, topk=None)
        for _ in range(20)
    ])
    assert score > chance + 0.2, (score, chance)


def test_tiny_fit_with_neuralsort_runs(patterned_images, tmp_path):
    method, x, y, query, train = _tiny_fit(patterned_images, tmp_path, epochs=2, sorter="neuralsort")
    codes = method.encode(x[query])
    assert codes.dtype == bool and codes.shape == (12, 16)
    assert all(math.isfinite(e["loss"]) for e in method.report()["epochs"])
