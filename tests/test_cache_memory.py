"""The cache passes' speed paths change no value: backbone passes in small batches, each distinct
image computed once per process (rows copied between splits), cache entries kept in memory
(never stale: keyed as on disk, dropped with their disk entry, bounded, read-only)."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("torchvision")

import hashbench  # noqa: E402
from hashbench import banks  # noqa: E402
from hashbench.data.images import ImageFiles  # noqa: E402
from hashbench.errors import HashbenchError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(n: int, seed: int, side: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side)).astype(np.uint8)


def tiny_backbone(input_size: int = 32):
    return hashbench.create("backbone", "test_efficientnet", pretrained=False, input_size=input_size)


def count_passes(monkeypatch, backbone) -> list[int]:
    """Images per forward pass of ``backbone`` (passes over more than one image: not the shape probes)."""
    calls: list[int] = []
    real = backbone.outputs
    monkeypatch.setattr(backbone, "outputs", lambda x, names=("pooled",): (len(x) > 1 and calls.append(len(x))) or real(x, names))
    return calls


def one_pass(backbone, x: np.ndarray, output: str) -> np.ndarray:
    """The outputs of one forward pass over all of ``x``: the reference values."""
    with torch.inference_mode():
        return backbone.outputs(backbone.preprocess(x), (output,))[output].numpy()


def test_small_batches_give_the_values_of_one_pass():
    backbone = tiny_backbone()
    x = images(70, 0)
    chunked = banks.forward_in_chunks(backbone, backbone.preprocess(x), ("pooled", "tokens"), chunk=32)
    for output in ("pooled", "tokens"):
        np.testing.assert_array_equal(chunked[output], one_pass(backbone, x, output))
    cached, _ = banks.clean_features(backbone, x, "tokens")
    np.testing.assert_array_equal(cached, one_pass(backbone, x, "tokens"))


def test_passes_are_cut_over_the_whole_sequence_never_short(monkeypatch):
    assert banks.chunk_bounds(70, 32, 16) == [(0, 32), (32, 70)]  # 6 left over: joined
    assert banks.chunk_bounds(80, 32, 16) == [(0, 32), (32, 64), (64, 80)]
    assert banks.chunk_bounds(10, 32, 16) == [(0, 10)] and banks.chunk_bounds(0) == []
    backbone = tiny_backbone()
    calls = count_passes(monkeypatch, backbone)
    monkeypatch.setattr(banks, "BATCH_SIZE", 20)  # read 20 at a time: passes still of 32
    x = images(70, 11)
    got, _ = banks.clean_features(backbone, x, "tokens")
    assert calls == [32, 38]
    np.testing.assert_array_equal(got, one_pass(backbone, x, "tokens"))


def test_each_distinct_image_is_computed_once_and_copied_rows_are_exact(monkeypatch):
    backbone = tiny_backbone()
    calls = count_passes(monkeypatch, backbone)
    train = images(40, 1)
    database = np.concatenate([images(30, 2), train[::2], images(10, 3)])  # 20 train images inside
    banks.clean_outputs(backbone, train, ["pooled", "tokens"])
    assert sum(calls) == 40
    calls.clear()
    got = banks.clean_outputs(backbone, database, ["pooled", "tokens"])
    assert sum(calls) == 40  # 60 images, 20 of them computed before
    for output in ("pooled", "tokens"):
        np.testing.assert_array_equal(got[output][0], one_pass(backbone, database, output))
    # pooled again with another kind not computed yet: both are computed (rows need every kind)
    calls.clear()
    monkeypatch.setenv("HASHBENCH_CACHE", os.environ["HASHBENCH_CACHE"] + "-other")
    banks.clean_outputs(backbone, train[:8], ["pooled"])
    calls.clear()
    other_root = banks.clean_outputs(backbone, train[:16], ["pooled", "tokens"])
    assert sum(calls) == 16  # tokens of train[:8] unknown here: nothing copied
    np.testing.assert_array_equal(other_root["tokens"][0], one_pass(backbone, train[:16], "tokens"))


def test_rows_are_copied_only_from_the_same_backbone(monkeypatch):
    x = images(20, 4)
    banks.clean_features(tiny_backbone(32), x)
    other = tiny_backbone(40)  # another input size: other outputs
    calls = count_passes(monkeypatch, other)
    got, _ = banks.clean_features(other, x)
    assert sum(calls) == 20
    np.testing.assert_array_equal(got, one_pass(other, x, "pooled"))


def test_image_keys_follow_content():
    x = images(5, 5)
    keys = banks.image_keys(x)
    assert len(set(keys)) == 5 and banks.image_keys(x.copy()) == keys
    assert banks.image_keys(x.reshape(5, 8, 32)) != keys  # same bytes, another shape
    y = x.copy()
    y[2, 0, 0] ^= 1
    changed = banks.image_keys(y)
    assert [a == b for a, b in zip(changed, keys)] == [True, True, False, True, True]
    with pytest.raises(HashbenchError, match="uint8 array or ImageFiles"):
        banks.image_keys([x[0]])


def test_image_keys_of_files_follow_path_size_and_mtime(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    files = ImageFiles(tmp_path, ["a.png", "b.png", "a.png"])
    keys = banks.image_keys(files)
    assert keys[0] == keys[2] != keys[1]
    (tmp_path / "a.png").write_bytes(b"longer")
    assert banks.image_keys(files)[0] != keys[0]


def test_entries_are_kept_in_memory_read_only_and_shared(monkeypatch):
    backbone = tiny_backbone()
    x = images(24, 6)
    first, info = banks.clean_features(backbone, x)
    assert not info["cache_hit"] and not first.flags.writeable
    calls = count_passes(monkeypatch, backbone)
    reads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    again, info = banks.clean_features(backbone, x)
    assert info["cache_hit"] and again is first and calls == [] and reads == []  # no pass, no disk read
    with pytest.raises(ValueError):
        again[0, 0] = 1.0
    bank, _ = banks.view_bank(backbone, x, "light", 2)
    assert banks.view_bank(backbone, x, "light", 2)[0] is bank and not bank.flags.writeable
    banks.clear_memory()
    from_disk, info = banks.clean_features(backbone, x)
    assert info["cache_hit"] and len(reads) == 1 and from_disk is not first
    np.testing.assert_array_equal(from_disk, first)
    assert banks.clean_features(backbone, x)[0] is from_disk  # read once, then held


def test_a_removed_disk_entry_is_not_served_from_memory(monkeypatch):
    import shutil

    backbone = tiny_backbone()
    x = images(12, 7)
    first, info = banks.clean_features(backbone, x)
    shutil.rmtree(banks.cache_root() / "features" / info["key"])
    calls = count_passes(monkeypatch, backbone)
    again, info2 = banks.clean_features(backbone, x)
    assert not info2["cache_hit"] and sum(calls) == 12 and again is not first
    np.testing.assert_array_equal(again, first)
    assert (banks.cache_root() / "features" / info["key"]).is_dir()  # stored again


def test_memory_is_bounded_least_recently_used_first(monkeypatch):
    backbone = tiny_backbone()
    a, b, c = images(10, 8), images(10, 9), images(10, 10)
    size = banks.clean_features(backbone, a)[0].nbytes  # (10, 256) float32 each
    monkeypatch.setenv(banks.MEMORY_ENV, str(2.5 * size / (1 << 20)))
    banks.clear_memory()
    fa = banks.clean_features(backbone, a)[0]  # read from disk, held
    fb = banks.clean_features(backbone, b)[0]  # computed, held
    assert banks.clean_features(backbone, a)[0] is fa  # a is now the most recent
    banks.clean_features(backbone, c)  # over the budget: b, the least recent, goes
    assert banks.MEMORY.nbytes <= 2.5 * size
    assert banks.clean_features(backbone, a)[0] is fa
    again_b = banks.clean_features(backbone, b)[0]
    assert again_b is not fb
    np.testing.assert_array_equal(again_b, fb)
    monkeypatch.setenv(banks.MEMORY_ENV, "0")  # none kept
    banks.clear_memory()
    assert banks.clean_features(backbone, a)[0] is not banks.clean_features(backbone, a)[0]
    assert banks.MEMORY.nbytes == 0
    monkeypatch.setenv(banks.MEMORY_ENV, "lots")
    with pytest.raises(HashbenchError, match="HASHBENCH_CACHE_MEMORY_MB must be a number of MiB"):
        banks.memory_budget()


def test_default_budget_is_a_quarter_of_memory_at_most_4_gib(monkeypatch):
    monkeypatch.delenv(banks.MEMORY_ENV, raising=False)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert banks.memory_budget() == min(banks.MAX_BYTES, physical // 4)


def test_encode_of_a_held_array_never_writes_it():
    """hash_codes gets its own copy of a read-only (shared) cached array."""
    from hashbench.train import hash_features

    class Writer:
        bits, name = 4, "writer"

        def hash_codes(self, head, f):
            f.zero_()  # a careless method writing its input
            return torch.zeros(len(f), 4, dtype=torch.bool)

    held = np.ones((10, 3), np.float32)
    held.flags.writeable = False
    hash_features(Writer(), torch.nn.Identity(), [held], torch.device("cpu"))
    assert (held == 1).all()


def test_openmp_waiting_defaults_and_keeps_what_is_set():
    from hashbench.cli import SPIN_COUNT, openmp_waiting

    env: dict[str, str] = {}
    openmp_waiting(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": SPIN_COUNT}
    env = {"GOMP_SPINCOUNT": "0", "OMP_WAIT_POLICY": "ACTIVE"}
    openmp_waiting(env)
    assert env == {"GOMP_SPINCOUNT": "0", "OMP_WAIT_POLICY": "ACTIVE"}


@pytest.fixture
def two_torch_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_worker_threads_give_the_bits_of_one_pass(monkeypatch, two_torch_threads):
    """Two workers of one thread each (on a first chunk checked against two threads); the
    process's thread count is restored afterwards."""
    import threading

    backbone = tiny_backbone()
    x = images(100, 12)
    reference = {output: one_pass(backbone, x, output) for output in ("pooled", "tokens")}
    callers: list[tuple[str, int]] = []
    real = backbone.outputs
    monkeypatch.setattr(backbone, "outputs", lambda x, names=("pooled",): (
        len(x) > 1 and callers.append((threading.current_thread().name, torch.get_num_threads()))) or real(x, names))
    got = banks.clean_outputs(backbone, x, ["pooled", "tokens"])
    for output in ("pooled", "tokens"):
        np.testing.assert_array_equal(got[output][0], reference[output])
    workers = {name for name, threads in callers if name.startswith("hashbench-forward")}
    assert workers and all(threads == 1 for name, threads in callers if name in workers)
    assert banks._THREADED_FORWARD_OK[next(iter(k for k in banks._THREADED_FORWARD_OK))] is True
    assert torch.get_num_threads() == 2
    bank, _ = banks.view_bank(backbone, x[:40], "light", 2, "tokens")  # the bank's chunks in workers too
    banks.clear_memory()
    monkeypatch.setattr(banks, "MAX_FORWARD_WORKERS", 1)  # one worker: the plain loop
    monkeypatch.setenv("HASHBENCH_CACHE", os.environ["HASHBENCH_CACHE"] + "-plain")
    plain, _ = banks.view_bank(backbone, x[:40], "light", 2, "tokens")
    np.testing.assert_array_equal(bank, plain)


def test_workers_are_not_used_when_their_bits_differ(monkeypatch, two_torch_threads):
    backbone = tiny_backbone()
    x = images(100, 13)
    reference = one_pass(backbone, x, "pooled")
    real = banks.Forwarder.forward

    def skewed(self, chunk):  # a worker's forward off in the last bit
        out = real(self, chunk)
        if torch.get_num_threads() == 1:
            out = {k: np.nextafter(v, np.inf) for k, v in out.items()}
        return out

    monkeypatch.setattr(banks.Forwarder, "forward", skewed)
    got, _ = banks.clean_features(backbone, x)
    np.testing.assert_array_equal(got, reference)
    assert list(banks._THREADED_FORWARD_OK.values()) == [False] and torch.get_num_threads() == 2
