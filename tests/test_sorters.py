"""Differentiable sorters: shapes, descending order, the limit to the exact permutation, gradients."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest
import torch

import hashbench
from hashbench import registry as registry_module
from hashbench import sorters as sorters_module
from hashbench.cli import main
from hashbench.errors import HashbenchError

SORTERS = ["exact", "softsort", "neuralsort", "torchsort"]
SOFT = ["softsort", "neuralsort", "torchsort"]

#: a decreasing sequence of each sorter's parameter (its ``parameter`` field)
SCHEDULE = {
    "exact": [1.0, 0.1, 0.01],
    "softsort": [1.0, 0.3, 0.1, 0.03, 0.01, 0.003],
    "neuralsort": [1.0, 0.3, 0.1, 0.03, 0.01, 0.003],
    "torchsort": [1.0, 0.3, 0.1, 0.03, 0.01, 0.003],
}


@pytest.fixture(autouse=True)
def sorters_registered():
    """The sorters through their entry point, or registered here until it exists."""
    if "softsort" not in registry_module.registry("sorter"):
        registry_module.reload(extra_plugins={"hashbench.sorters": sorters_module})


def needs(name: str) -> None:
    if name == "torchsort":
        pytest.importorskip("torchsort")


def make(name: str, value: float | None = None, **params):
    needs(name)
    if value is not None:
        params[hashbench.registry.registry("sorter").get(name).parameter] = value
    return hashbench.create("sorter", name, **params)


def distinct_scores(batch: int = 4, n: int = 12, seed: int = 0) -> torch.Tensor:
    """Scores whose values differ by at least 0.15 within each row, in random order."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(n, generator=g).double() * 0.2 + torch.rand(n, generator=g, dtype=torch.float64) * 0.05
            for _ in range(batch)]
    return (torch.stack(rows) - 1.0).float()


def hard_permutation(scores: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    return torch.nn.functional.one_hot(order, scores.shape[-1]).to(scores.dtype)


def test_registered_and_listed(capsys):
    assert set(hashbench.names("sorters")) >= set(SORTERS)
    assert main(["list", "sorters"]) == 0
    out = capsys.readouterr().out
    for name in SORTERS:
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert "hashbench.sorters" in row
    assert "Prillo" in out and "Grover" in out and "Blondel" in out


def test_module_does_not_import_torch(tmp_path):
    code = "import sys, hashbench.sorters, hashbench.losses; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", SORTERS)
def test_shape_rows_and_descending_sort(name):
    torch.manual_seed(0)
    scores = torch.randn(5, 9)
    P = make(name, SCHEDULE[name][-1])(scores)
    assert P.shape == (5, 9, 9) and P.dtype == scores.dtype
    assert torch.allclose(P.sum(-1), torch.ones(5, 9), atol=1e-5)
    assert (P >= 0).all()
    approx = (P @ scores[..., None]).squeeze(-1)
    assert torch.allclose(approx, scores.sort(dim=-1, descending=True).values, atol=1e-3)


@pytest.mark.parametrize("name", SOFT)
def test_default_parameter_is_soft_but_row_stochastic(name):
    scores = distinct_scores()
    P = make(name)(scores)
    assert torch.allclose(P.sum(-1), torch.ones(P.shape[:2]), atol=1e-5)
    assert (P - hard_permutation(scores)).abs().max() > 0.05  # a real relaxation at the default


@pytest.mark.parametrize("name", SORTERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_defaults_sort_well_separated_scores(name, dtype):
    """The contract at DEFAULT parameters: 12 scores 100 apart, in random order, are sorted by
    P @ s to within 5 % of the gap (torchsort once put e^-1 of each row on each neighbouring
    rank: 29 % off)."""
    gap = 100.0
    g = torch.Generator().manual_seed(3)
    scores = torch.stack([torch.randperm(12, generator=g) for _ in range(3)]).to(dtype) * gap
    approx = (make(name)(scores) @ scores[..., None]).squeeze(-1)
    error = (approx - scores.sort(dim=-1, descending=True).values).abs().max().item()
    assert error <= 0.05 * gap, (name, error / gap)


def test_torchsort_kernel_temperature_is_in_rank_units():
    """On exact integer ranks (strength below every gap), the neighbour weight is
    exp(-1 / temperature), whatever the scale of the scores."""
    for scale in (1.0, 1000.0):
        scores = torch.arange(6, dtype=torch.float64)[None] * scale
        P = make("torchsort", 1e-3, temperature=0.5)(scores)
        # rank 2 of scores 0..5 (descending) is item 3; items 2 and 4 are one rank away
        assert P[0, 2, 2].item() / P[0, 2, 3].item() == pytest.approx(math.exp(-1 / 0.5), rel=1e-6)
        assert P[0, 2, 4].item() / P[0, 2, 3].item() == pytest.approx(math.exp(-1 / 0.5), rel=1e-6)
    assert hashbench.create("sorter", "torchsort").config.temperature == 0.05


@pytest.mark.parametrize("name", SORTERS)
def test_limit_is_the_exact_permutation(name):
    scores = distinct_scores()
    hard = hard_permutation(scores)
    gaps = [(make(name, t)(scores) - hard).abs().max().item() for t in SCHEDULE[name]]
    assert all(b <= a + 1e-7 for a, b in itertools.pairwise(gaps)), gaps
    assert gaps[-1] < 1e-3, gaps
    if name != "exact":
        assert gaps[0] > 10 * gaps[-1], gaps


@pytest.mark.parametrize("name", SORTERS)
def test_each_row_peaks_at_the_right_item_for_any_parameter(name):
    """A relaxation, not a different order: row i's largest entry is the item at rank i."""
    scores = distinct_scores(seed=1)
    order = scores.argsort(dim=-1, descending=True)
    for value in (10.0, 3.0, 1.0, 0.3, 0.1, 0.03):
        assert torch.equal(make(name, value)(scores).argmax(dim=-1), order), value


def test_exact_is_the_hard_permutation_with_ties_by_index():
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0]], requires_grad=True)
    P = make("exact")(scores)
    order = [1, 2, 4, 0, 3]
    assert torch.equal(P.detach(), torch.eye(5)[order][None])  # bit for bit, not approximately
    assert torch.equal((P @ scores[..., None]).squeeze(-1).detach(), torch.tensor([[2.0, 2.0, 2.0, 1.0, 0.0]]))


def test_softsort_matches_the_paper_formula():
    torch.manual_seed(1)
    scores = torch.randn(3, 6, dtype=torch.float64)
    for power in (1.0, 2.0):
        P = make("softsort", 0.7, power=power)(scores)
        for b in range(3):
            desc = sorted(scores[b].tolist(), reverse=True)
            for i in range(6):
                logits = torch.tensor([-abs(desc[i] - s) ** power / 0.7 for s in scores[b].tolist()])
                assert torch.allclose(P[b, i], logits.softmax(0).double(), atol=1e-12)


def test_neuralsort_matches_the_authors_formula():
    """P_max[i, :] = softmax(((n + 1 - 2i) s - A_s 1) / tau), built as in the authors' code (O(n^3))."""
    torch.manual_seed(2)
    scores = torch.randn(3, 7, dtype=torch.float64)
    tau = 0.5
    s = scores.unsqueeze(-1)  # (B, n, 1)
    n = s.shape[1]
    one = torch.ones(n, 1, dtype=s.dtype)
    A = (s - s.permute(0, 2, 1)).abs()
    B = A @ (one @ one.T)
    scaling = (n + 1 - 2 * (torch.arange(n) + 1)).to(s.dtype)
    C = s @ scaling.unsqueeze(0)
    expected = ((C - B).permute(0, 2, 1) / tau).softmax(-1)
    assert torch.allclose(make("neuralsort", tau)(scores), expected, atol=1e-12)


@pytest.mark.parametrize("name", SORTERS)
def test_gradient_reaches_the_scores(name):
    torch.manual_seed(3)
    scores = torch.randn(4, 10, requires_grad=True)
    weights = torch.randn(4, 10)
    P = make(name)(scores)
    loss = ((P @ scores[..., None]).squeeze(-1) * weights).sum()
    loss.backward()
    grad = scores.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 1e-3


def test_exact_gradient_is_softsorts():
    """The straight-through path: exact's gradient through P equals SoftSort's at that temperature."""
    torch.manual_seed(4)
    scores = torch.randn(2, 8)
    upstream = torch.randn(2, 8, 8)
    grads = []
    for name in ("exact", "softsort"):
        s = scores.clone().requires_grad_(True)
        (make(name, 0.5, power=2.0)(s) * upstream).sum().backward()
        grads.append(s.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert make("exact")(scores).grad_fn is None  # no soft path without requires_grad
    with torch.no_grad():
        assert make("exact")(scores.requires_grad_(True)).grad_fn is None  # nor under no_grad


def test_torchsort_parameters():
    needs("torchsort")
    scores = distinct_scores()
    hard = hard_permutation(scores)
    tight = make("torchsort", 1.0, temperature=1e-3)(scores)  # ranks soft, kernel narrow
    assert tight.shape == hard.shape
    kl = make("torchsort", 1e-3, regularization="kl")(scores)
    assert (kl - hard).abs().max() < 1e-3
    flat = make("torchsort", 1e4)(scores)  # every rank ~ (n + 1) / 2: uniform rows
    assert torch.allclose(flat, torch.full_like(flat, 1 / 12), atol=1e-3)
    with pytest.raises(HashbenchError, match="regularization must be one of l2, kl"):
        make("torchsort", regularization="l1")


def test_torchsort_missing_is_one_line_with_the_install_command(monkeypatch):
    present = None
    try:
        present = make("torchsort")
    except pytest.skip.Exception:
        pass
    monkeypatch.setitem(sys.modules, "torchsort", None)  # import torchsort -> ImportError
    with pytest.raises(HashbenchError) as info:
        hashbench.create("sorter", "torchsort", regularization_strength=0.1)
    message = str(info.value)
    assert "\n" not in message
    assert "not installed" in message
    assert "pip install --no-build-isolation --no-deps torchsort==0.1.10" in message
    if present is not None:  # built before the package went away, called after
        with pytest.raises(HashbenchError, match="torchsort==0.1.10"):
            present(torch.randn(2, 3))


def test_torchsort_missing_through_the_cli(monkeypatch, capsys):
    """Listing needs no torchsort: it registers even when the package is absent."""
    monkeypatch.setitem(sys.modules, "torchsort", None)
    assert main(["list", "sorters"]) == 0
    assert "torchsort" in capsys.readouterr().out


@pytest.mark.parametrize("name", SORTERS)
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_scores_must_be_2d(name, shape):
    sorter = make(name)
    with pytest.raises(HashbenchError, match=r"scores must be 2-D \(batch, n\)") as info:
        sorter(torch.randn(shape))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", SORTERS)
def test_other_bad_scores(name):
    sorter = make(name)
    with pytest.raises(HashbenchError, match="must be a float tensor"):
        sorter(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(HashbenchError, match="must be a torch tensor"):
        sorter([[1.0, 2.0]])


@pytest.mark.parametrize("name", SORTERS)
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_parameter_must_be_positive(name, value):
    needs(name)
    field = hashbench.registry.registry("sorter").get(name).parameter
    with pytest.raises(HashbenchError, match=rf"sorter {name}: {field} must be (a finite number )?> 0") as info:
        hashbench.create("sorter", name, **{field: value})
    assert "\n" not in str(info.value)


def test_unknown_parameter_and_power():
    with pytest.raises(HashbenchError, match="no parameter 'temprature'.*Did you mean: temperature"):
        hashbench.create("sorter", "softsort", temprature=0.1)
    with pytest.raises(HashbenchError, match="power must be > 0"):
        hashbench.create("sorter", "softsort", power=0)
    assert repr(hashbench.create("sorter", "softsort", temperature=2)) == "SoftSortSorter(temperature=2.0, power=1.0)"


def test_large_and_float64_inputs_stay_finite():
    torch.manual_seed(5)
    scores = torch.randn(2, 64, dtype=torch.float64) * 100
    for name in SORTERS:
        try:
            P = make(name, 1e-4)(scores)
        except pytest.skip.Exception:
            continue
        assert P.dtype == torch.float64 and torch.isfinite(P).all()
        assert torch.allclose(P, hard_permutation(scores), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", SORTERS)
def test_cuda_matches_cpu(name):
    scores = distinct_scores()
    sorter = make(name, 0.5)
    try:
        on_gpu = sorter(scores.cuda())
    except HashbenchError as exc:  # torchsort built without its CUDA extension
        pytest.skip(str(exc))
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), sorter(scores), atol=1e-5)


def test_torchsort_without_cuda_extension_is_one_line(monkeypatch):
    needs("torchsort")
    import torchsort

    def no_cuda(*args, **kwargs):
        raise ImportError("You are trying to use the torchsort CUDA extension, but it looks like it is not available.")

    monkeypatch.setattr(torchsort, "soft_rank", no_cuda)
    with pytest.raises(HashbenchError, match="no CUDA extension.*--force-reinstall --no-cache-dir torchsort==0.1.10"):
        make("torchsort")(torch.randn(2, 3))
