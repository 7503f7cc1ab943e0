"""The frozen-backbone speed path: disk-cached clean features and view banks.

With a frozen backbone its outputs never change, so the training loop computes them once:

* **clean features** (:func:`clean_features`): backbone outputs of unaugmented images, for
  validation and ``encode``; float32 (N, F) pooled, or (N, T, C) tokens.
* **view bank** (:func:`view_bank`): backbone outputs of ``views`` = A augmented views of each
  training image, (N, A, F) (or (N, A, T, C)); training then samples two different views per
  image and epoch instead of augmenting and running the backbone at every step.

Both are cached on disk under :func:`hashbench.data.roots.cache_root` (``features/<key>/`` and
``banks/<key>/``, written atomically with :func:`_store`), keyed by content,
not by protocol: the sha256 of the images (:func:`content_hash`), the backbone (model, weights
identity, input size), the output kind, and for banks the recipe (its name and ``version``:
the built-ins' is :data:`hashbench.augment.RECIPE_VERSION`), A and
:data:`BANK_SEED`. The bank's augmentations are drawn from the fixed ``BANK_SEED``, NOT the run
seed, so every seed and every method with the same backbone and recipe shares one bank; the
run seed only decides which two views of the bank each image gets in each epoch.

Memory: a bank whose float32 size exceeds :data:`FLOAT16_ABOVE_BYTES` (1 GiB) is stored as
float16 (training casts each batch back to float32); one that would exceed
:data:`MAX_BYTES` (4 GiB) even as float16 is not made, and training takes the unbanked path
(the log says why). Clean features larger than MAX_BYTES are not cached: ``encode`` streams.

One pass, several outputs: :func:`clean_outputs` and :func:`view_banks` compute every requested
output kind ("pooled", "tokens") that is not cached yet in ONE backbone pass over the images
and cache each under its own key (so a grid whose methods read pooled features and tokens pays
for the backbone once; :func:`hashbench.runner.warm_caches` asks for the union before a grid).
A value is the same whichever set of outputs its pass computed.

Speed without changing a value. In eval mode an image's outputs do not depend on the other
images of its batch, and to the last bit neither do they in practice, for batches of at least
:data:`MIN_FORWARD` images (the CPU convolution kernels pick another algorithm for a few images:
measured for tf_efficientnet_lite0 at 64 px, 1 and 2 threads, batches of 16 to 300 give equal
bits). So:

* the backbone runs on :data:`FORWARD_BATCH` images at a time (:func:`forward_in_chunks`: small
  batches stay in the CPU's caches, ~1.8x faster than 256 for tf_efficientnet_lite0 at 64 px),
  never on fewer than MIN_FORWARD unless the images are fewer (a short last chunk joins the one
  before); the images are still read, and a bank's views still augmented, :data:`BATCH_SIZE` at
  a time, so the augmentation seeds are unchanged;
* the chunks run in several threads whose operations use fewer threads each (:class:`Forwarder`:
  on 2 cores, two workers of one thread: no thread wake-ups between the many small operations,
  ~1.2x the throughput on a quiet machine, ~1.5x with another process busy), where that gives
  the same bits: checked on each backbone's first chunk;
* each distinct image is computed once per process: clean outputs computed earlier in this
  process (same backbone, same cache root) are copied for the images they share, found by
  their content (:func:`image_keys`), e.g. the train and val images inside the database;
* cache entries are kept in this process's memory once computed or read
  (:class:`MemoryCache`, at most :func:`memory_budget` bytes, least recently used dropped
  first), so the runs of a grid read each entry from disk at most once. Arrays served from
  memory are read-only, shared by every reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .augment import Augmenter, derive_seed
from .data.images import ImageFiles, image_count, iter_image_batches
from .data.roots import cache_root
from .errors import HashbenchError
from .models.backbones import OUTPUTS

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: the seed of the view bank's augmentations: fixed, shared by every run seed and method
BANK_SEED = 0
#: images read (and, for a bank, augmented with one seed) at a time
BATCH_SIZE = 256
#: images per backbone forward pass of the cache passes
FORWARD_BATCH = 32
#: no forward pass of the cache passes on fewer images, unless there are fewer (see the module doc)
MIN_FORWARD = 16
#: environment variable: MiB of cache entries this process keeps in memory (0: none)
MEMORY_ENV = "HASHBENCH_CACHE_MEMORY_MB"
#: a bank larger than this as float32 is kept as float16
FLOAT16_ABOVE_BYTES = 1 << 30
#: no bank (and no cached clean features) larger than this in memory
MAX_BYTES = 4 << 30


@dataclass(frozen=True)
class CacheRead:
    """Frozen-backbone outputs that a run will read from this cache (what the runner warms).

    The backbone (registry name, ``pretrained``, ``input_size``; built frozen), the ``output``
    kind, the ``splits`` (names of the protocol's splits) whose clean outputs the run reads, and
    ``bank``: (recipe, views) of a view bank of the train split, or None.
    """

    backbone: str
    pretrained: bool | str
    input_size: int | None
    output: str
    splits: tuple[str, ...] = ()
    bank: tuple[str, int] | None = None


def _file_stamp(path: Any) -> str:
    """``"<size> <mtime_ns>"`` of a file, or ``"missing"``: what identifies its content in a key."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size} {st.st_mtime_ns}"


def content_hash(x: Any) -> str:
    """24 hex digits identifying images ``x``: sha256 of a uint8 array's shape and bytes, or of
    an ImageFiles' root, paths and each file's size and mtime."""
    digest = hashlib.sha256()
    if isinstance(x, np.ndarray):
        digest.update(f"array {x.dtype} {x.shape}\n".encode())
        digest.update(np.ascontiguousarray(x).data)
    elif isinstance(x, ImageFiles):
        digest.update(f"files {x.root}\n".encode())
        for i in range(len(x)):
            digest.update(f"{x.paths[i]}\0{_file_stamp(x.path(i))}\n".encode())
    else:
        raise HashbenchError(f"images must be a uint8 array or ImageFiles, got {type(x).__name__}")
    return digest.hexdigest()[:24]


def image_keys(x: Any) -> list[bytes]:
    """One key per image of ``x``, equal for equal images: blake2b (16 bytes) of a uint8 array
    image's dtype, shape and bytes, or of an ImageFiles item's full path, size and mtime."""
    if isinstance(x, np.ndarray):
        head = f"{x.dtype} {x.shape[1:]}\n".encode()
        rows = np.ascontiguousarray(x).reshape(len(x), -1)
        return [hashlib.blake2b(head + row.tobytes(), digest_size=16).digest() for row in rows]
    if isinstance(x, ImageFiles):
        return [hashlib.blake2b(f"files {path}\0{_file_stamp(path)}".encode(), digest_size=16).digest()
                for path in map(x.path, range(len(x)))]
    raise HashbenchError(f"images must be a uint8 array or ImageFiles, got {type(x).__name__}")


def memory_budget() -> int:
    """Bytes of cache entries a process keeps in memory: ``$HASHBENCH_CACHE_MEMORY_MB`` MiB when
    set (0 keeps none), else a quarter of the machine's memory, at most MAX_BYTES (4 GiB)."""
    value = os.environ.get(MEMORY_ENV, "").strip()
    if value:
        try:
            return max(0, int(float(value) * (1 << 20)))
        except ValueError:
            raise HashbenchError(f"{MEMORY_ENV} must be a number of MiB, got {value!r}") from None
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        physical = 4 * MAX_BYTES
    return min(MAX_BYTES, physical // 4)


class MemoryCache:
    """Cache entries held in this process: (entry folder, shape, dtype) -> read-only array.

    The folder names the entry's content key (the disk cache's), so an entry is never stale: a
    key's value never changes. An entry is served only while its folder exists on disk (the
    memory mirrors the disk cache; a cleared cache is recomputed). At most
    :func:`memory_budget` bytes are kept (read at each insertion); the least recently used
    entries are dropped first, and an array larger than the budget is not kept.
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple[str, tuple[int, ...], str], np.ndarray] = OrderedDict()
        self.nbytes = 0

    @staticmethod
    def key(folder: Path, shape: tuple[int, ...], dtype: Any) -> tuple[str, tuple[int, ...], str]:
        return (str(folder), tuple(int(d) for d in shape), np.dtype(dtype).str)

    def get(self, folder: Path, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
        """The entry of ``folder`` with ``shape`` and ``dtype``, or None."""
        key = self.key(folder, shape, dtype)
        array = self.entries.get(key)
        if array is None:
            return None
        if not folder.is_dir():  # the disk entry is gone: so is this one
            self.drop(key)
            return None
        self.entries.move_to_end(key)
        return array

    def peek(self, key: tuple[str, tuple[int, ...], str]) -> np.ndarray | None:
        """The array of ``key`` if held (no recency update, no disk check)."""
        return self.entries.get(key)

    def put(self, folder: Path, array: np.ndarray) -> np.ndarray:
        """Keep ``array`` (made read-only) as the entry of ``folder``; returns it."""
        array.flags.writeable = False
        budget = memory_budget()
        key = self.key(folder, array.shape, array.dtype)
        self.drop(key)
        if array.nbytes > budget:
            return array
        self.entries[key] = array
        self.nbytes += array.nbytes
        while self.nbytes > budget:
            self.drop(next(iter(self.entries)))
        return array

    def drop(self, key: tuple[str, tuple[int, ...], str]) -> None:
        array = self.entries.pop(key, None)
        if array is not None:
            self.nbytes -= array.nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0


#: this process's cache entries in memory
MEMORY = MemoryCache()
#: clean outputs computed in this process, per (cache root, backbone identity, output):
#: image key -> (MEMORY key of the entry holding that image's output, its row)
_COMPUTED_ROWS: dict[tuple[str, str, str], dict[bytes, tuple[tuple[str, tuple[int, ...], str], int]]] = {}


def clear_memory() -> None:
    """Forget every cache entry and computed row held in this process's memory."""
    MEMORY.clear()
    _COMPUTED_ROWS.clear()


def tensor_of(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing ``array``'s memory, also for a read-only array (the caller never
    writes it: torch's warning about non-writable arrays is silenced)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def chunk_bounds(n: int, chunk: int = FORWARD_BATCH, least: int = MIN_FORWARD) -> list[tuple[int, int]]:
    """(start, stop) of the forward passes over ``n`` images: ``chunk`` at a time, a last chunk
    shorter than ``least`` joined to the one before (so none is shorter, unless n is)."""
    bounds = [(start, min(start + chunk, n)) for start in range(0, n, chunk)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < least:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def forward_in_chunks(backbone: Any, x: torch.Tensor, outputs: Sequence[str],
                      chunk: int = FORWARD_BATCH) -> dict[str, np.ndarray]:
    """Backbone outputs of a preprocessed batch ``x`` (B, 3, S, S), computed in the chunks of
    :func:`chunk_bounds`: {output: float32 numpy (B, ...)}, the values one pass of the whole
    batch gives (see the module doc)."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for start, stop in chunk_bounds(len(x), chunk):
        out = backbone.outputs(x[start:stop], tuple(outputs))
        for name in outputs:
            parts[name].append(out[name].float().cpu().numpy())
    return {name: p[0] if len(p) == 1 else np.concatenate(p) for name, p in parts.items()}


def _clean_passes(backbone: Any, images: Any, forwarder: Forwarder, write: Callable[[int, dict[str, np.ndarray]], None],
                  bar: Any) -> None:
    """The outputs of the images in order, read BATCH_SIZE at a time, as ``write(start, {output:
    float32 numpy (b, ...)})`` per forward pass (in any order); the passes cut the whole sequence
    as :func:`chunk_bounds` does (what a read batch leaves over is carried into the next one's
    first pass). ``bar`` counts the read batches."""
    import torch

    n = image_count(images)
    carry, start = None, 0
    for batch in iter_image_batches(images, BATCH_SIZE):
        x = backbone.preprocess(batch)
        x = x if carry is None else torch.cat([carry, x])
        last = start + len(x) == n
        usable = len(x) if last else len(x) // FORWARD_BATCH * FORWARD_BATCH
        for lo, hi in chunk_bounds(usable):
            forwarder.submit(x[lo:hi], lambda out, at=start + lo: write(at, out))
        carry, start = (x[usable:] if usable < len(x) else None), start + usable
        bar.update(1)


#: the most worker threads of a cache pass (:class:`Forwarder`)
MAX_FORWARD_WORKERS = 4
#: (backbone identity, intra-op threads, threads per worker) -> whether a worker's forwards give
#: the bits of this process's (checked once per process, on a first chunk)
_THREADED_FORWARD_OK: dict[tuple[str, int, int], bool] = {}


class Forwarder:
    """The backbone forwards of one cache pass: :meth:`submit` a preprocessed chunk (B, 3, S, S)
    and a callback; the callback gets ``{output: float32 numpy (B, ...)}`` (in any order, from
    any thread: callbacks write disjoint rows). Use as a context manager: leaving it waits for
    every chunk (and raises a chunk's error).

    With T = ``torch.get_num_threads()`` > 1, chunks run in W = min(T, MAX_FORWARD_WORKERS)
    worker threads whose operations use T // W threads each (on 2 cores: two workers of one
    thread), IF that gives the same bits as T threads: on the first chunk of each backbone (per
    process), both are computed and compared bit for bit (measured equal for
    tf_efficientnet_lite0 at 64 px and chunks of 16 to 47 images); otherwise every chunk runs in
    this thread with T threads, as a plain loop would. During the pass this process's torch uses
    T // W threads (preprocessing and augmentation give the same values with any count); T is
    restored when it ends.
    """

    def __init__(self, backbone: Any, outputs: Sequence[str]) -> None:
        import torch

        self.backbone, self.outputs = backbone, tuple(outputs)
        self.threads = torch.get_num_threads()
        self.workers = min(self.threads, MAX_FORWARD_WORKERS)
        self.per_worker = max(1, self.threads // self.workers)
        self.key = (json.dumps(backbone_identity(backbone), sort_keys=True), self.threads, self.per_worker)
        self.pool: ThreadPoolExecutor | None = None
        self.pending: deque[Future] = deque()
        self.threaded = self.workers > 1 and _THREADED_FORWARD_OK.get(self.key, True)

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        try:
            while self.pending:
                future = self.pending.popleft()
                if kind is None:
                    future.result()
                else:
                    future.cancel()
        finally:
            self._stop()

    def forward(self, x: Any) -> dict[str, np.ndarray]:
        """The outputs of chunk ``x`` in the calling thread (inference mode)."""
        import torch

        with torch.inference_mode():
            out = self.backbone.outputs(x, self.outputs)
            return {name: out[name].float().cpu().numpy() for name in self.outputs}

    def submit(self, x: Any, done: Callable[[dict[str, np.ndarray]], None]) -> None:
        if not self.threaded:
            done(self.forward(x))
            return
        if self.pool is None:
            if not self._start(x, done):
                return
        self.pending.append(self.pool.submit(lambda: done(self.forward(x))))
        while len(self.pending) > 2 * self.workers:  # a bounded queue: little memory in flight
            self.pending.popleft().result()

    def _start(self, x: Any, done: Callable[[dict[str, np.ndarray]], None]) -> bool:
        """Start the workers; on this backbone's first chunk ``x`` check that a worker gives the
        bits of this thread (``done`` gets them); False (and no workers) when it does not."""
        import torch

        checked = self.key in _THREADED_FORWARD_OK
        reference = None if checked else self.forward(x)
        torch.set_num_threads(self.per_worker)
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hashbench-forward")
        if checked:
            return True
        got = self.pool.submit(self.forward, x).result()
        same = all(np.array_equal(got[name], reference[name]) for name in self.outputs)
        _THREADED_FORWARD_OK[self.key] = same
        if not same:
            self._stop()
            self.threaded = False
        done(reference)
        return False

    def _stop(self) -> None:
        import torch

        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        torch.set_num_threads(self.threads)


def output_dim(backbone: Any, output: str) -> int:
    """The last dimension of a backbone output: ``token_dim`` for "tokens", else ``feature_dim``."""
    return backbone.token_dim if output == "tokens" else backbone.feature_dim


def backbone_identity(backbone: Any) -> dict[str, Any]:
    """What makes a frozen backbone's outputs: model, weights identity, input size."""
    return {"model": backbone.config.model, "weights": backbone.weights,
            "input_size": list(backbone.input_size)}


def forward(backbone: Any, x: torch.Tensor, output: str) -> torch.Tensor:
    """Backbone outputs of a preprocessed batch (B, 3, S, S): pooled (B, F) or tokens (B, T, C)."""
    return backbone.outputs(x, (output,))[output]


def output_shapes(backbone: Any, outputs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Shape of one item's backbone output per kind ((F,) or (T, C)), from a pass of zeros."""
    import torch

    h, w = backbone.input_size
    with torch.inference_mode():
        out = backbone.outputs(torch.zeros(1, 3, h, w), tuple(outputs))
    return {k: tuple(int(d) for d in v.shape[1:]) for k, v in out.items()}


def feature_batches(backbone: Any, x: Any, output: str = "pooled", batch_size: int = BATCH_SIZE,
                    desc: str | None = None) -> Iterator[np.ndarray]:
    """Backbone outputs of the clean images ``x``, batch by batch: float32 numpy (b, ...).

    Eval mode, no gradients (a trained module's mode is restored afterwards)."""
    import torch
    from tqdm.auto import tqdm

    n = image_count(x)
    module = backbone.module
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(iter_image_batches(x, batch_size), total=math.ceil(n / batch_size),
                              disable=None if desc else True, desc=desc, unit="batch", leave=False):
                yield forward(backbone, backbone.preprocess(batch), output).float().cpu().numpy()
    finally:
        module.train(was_training)


def _store(folder: Path, ids: np.ndarray, feats: np.ndarray, meta: dict[str, Any]) -> None:
    """Write a cache entry folder (index.npy, features.npy, meta.json) atomically: temp folder +
    rename; then keep ``feats`` (made read-only) in this process's :data:`MEMORY`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        np.save(tmp / "index.npy", ids)
        np.save(tmp / "features.npy", feats)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        with contextlib.suppress(FileExistsError, OSError):
            os.rename(tmp, folder)  # another process may have stored it first: keep theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if folder.is_dir():
        MEMORY.put(folder, feats)


def _key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _load(folder: Path, shape: tuple[int, ...], fetch: bool = True,
          dtype: Any = np.float32) -> np.ndarray | None:
    """The cached array of ``shape`` and ``dtype`` in ``folder``; None if absent. Served from
    this process's :data:`MEMORY` when held there (read-only); else read from disk and, with
    ``fetch``, kept in MEMORY (read-only). An unreadable or misshapen entry is removed (so that
    the recomputed one can be stored). ``fetch=False``: from disk, only the header is read; the
    array is a read-only memory map."""
    held = MEMORY.get(folder, shape, dtype)
    if held is not None:
        return held
    if not folder.exists():
        return None
    try:
        array = np.load(folder / "features.npy", allow_pickle=False, mmap_mode=None if fetch else "r")
        if tuple(array.shape) == shape and array.dtype == np.dtype(dtype):
            return MEMORY.put(folder, array) if fetch else array
    except (OSError, ValueError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _outputs(outputs: str | Sequence[str]) -> tuple[str, ...]:
    names = (outputs,) if isinstance(outputs, str) else tuple(dict.fromkeys(outputs))
    bad = [n for n in names if n not in OUTPUTS]
    if bad or not names:
        raise HashbenchError(f"backbone output must be one of {', '.join(OUTPUTS)}, got '{bad[0] if bad else ''}'")
    return names


def clean_outputs(backbone: Any, x: Any, outputs: Sequence[str], *, digest: str | None = None,
                  progress: bool = True, fetch: bool = True) -> dict[str, tuple[np.ndarray | None, dict[str, Any]]]:
    """Backbone outputs of the unaugmented images ``x`` (frozen backbone), cached on disk.

    For each kind of ``outputs``: (float32 (N, F) or (N, T, C), info) with info ``{"key",
    "cache_hit"}``; or (None, info with ``"reason"``) when it would exceed MAX_BYTES (callers
    stream with :func:`feature_batches`). The kinds not cached yet are computed in one pass.
    ``digest``: ``content_hash(x)`` if already known. ``fetch=False`` (to warm the cache): a
    cached kind is checked but not read into memory (a read-only memory map is returned).
    """
    if not backbone.config.frozen:
        raise HashbenchError("clean features are cached for frozen backbones only")
    names = _outputs(outputs)
    n = image_count(x)
    shapes = {k: (n, *v) for k, v in output_shapes(backbone, names).items()}
    images = digest or content_hash(x)
    result: dict[str, tuple[np.ndarray | None, dict[str, Any]]] = {}
    todo: dict[str, tuple[Path, dict[str, Any]]] = {}
    for name in names:
        shape = shapes[name]
        if 4 * math.prod(shape) > MAX_BYTES:
            result[name] = (None, {"key": None, "cache_hit": False,
                                   "reason": f"{shape} float32 exceeds {MAX_BYTES} bytes"})
            continue
        identity = {"kind": "clean", "images": images, "output": name, **backbone_identity(backbone)}
        key = _key(identity)
        folder = cache_root() / "features" / key
        cached = _load(folder, shape, fetch)
        if cached is not None:
            result[name] = (cached, {"key": key, "cache_hit": True})
        else:
            todo[name] = (folder, identity)
            result[name] = (np.empty(shape, np.float32), {"key": key, "cache_hit": False})
    if todo:
        import torch
        from tqdm.auto import tqdm

        keys = image_keys(x)
        rows = _reuse_rows(backbone, keys, {name: result[name][0] for name in todo})
        whole = len(rows) == n  # nothing reused: the images in order
        images = x if whole else x[rows]
        m = len(rows)
        module = backbone.module
        was_training = module.training
        module.eval()

        def write(start: int, out: dict[str, np.ndarray]) -> None:
            stop = start + len(next(iter(out.values())))
            where = slice(start, stop) if whole else rows[start:stop]
            for name in todo:
                result[name][0][where] = out[name]

        try:
            with torch.inference_mode(), tqdm(total=math.ceil(m / BATCH_SIZE), disable=None if progress else True,
                                              unit="batch", leave=False,
                                              desc=f"{'+'.join(todo)} of {m} images ({backbone.config.model})") as bar, \
                    Forwarder(backbone, tuple(todo)) as forwarder:
                _clean_passes(backbone, images, forwarder, write, bar)
        finally:
            module.train(was_training)
        for name, (folder, identity) in todo.items():
            _store(folder, np.arange(n, dtype=np.int64), result[name][0], {**identity, "shape": list(shapes[name])})
            _remember_rows(backbone, keys, name, folder, result[name][0])
    return result


def _row_scope(backbone: Any, output: str) -> tuple[str, str, str]:
    return (str(cache_root()), json.dumps(backbone_identity(backbone), sort_keys=True), output)


def _reuse_rows(backbone: Any, keys: list[bytes], dest: dict[str, np.ndarray]) -> np.ndarray:
    """Copy into each array of ``dest`` (output name -> (N, ...), one row per key) the rows of
    the images whose outputs of every kind in ``dest`` this process computed before (same cache
    root and backbone; their entries still in MEMORY); returns the rows left to compute
    (int64, ascending)."""
    n = len(keys)
    plans = {}
    for name in dest:
        table = _COMPUTED_ROWS.get(_row_scope(backbone, name))
        if not table:
            return np.arange(n, dtype=np.int64)
        plans[name] = [table.get(k) for k in keys]
    held: dict[Any, bool] = {}

    def usable(source: tuple[Any, int] | None) -> bool:
        if source is None:
            return False
        if source[0] not in held:
            held[source[0]] = MEMORY.peek(source[0]) is not None
        return held[source[0]]

    known = np.array([all(usable(plan[i]) for plan in plans.values()) for i in range(n)], dtype=bool)
    found = np.flatnonzero(known)
    for name, array in dest.items():
        by_source: dict[Any, tuple[list[int], list[int]]] = {}
        for i in found:
            memkey, row = plans[name][i]
            dst, src = by_source.setdefault(memkey, ([], []))
            dst.append(int(i))
            src.append(row)
        for memkey, (dst, src) in by_source.items():
            array[np.asarray(dst, dtype=np.int64)] = MEMORY.peek(memkey)[np.asarray(src, dtype=np.int64)]
    return np.flatnonzero(~known).astype(np.int64)


def _remember_rows(backbone: Any, keys: list[bytes], output: str, folder: Path, array: np.ndarray) -> None:
    """Note that ``array`` (MEMORY's entry of ``folder``) holds the ``output`` of the images
    ``keys``, row by row, for :func:`_reuse_rows`; nothing when MEMORY did not keep it."""
    memkey = MEMORY.key(folder, array.shape, array.dtype)
    if MEMORY.peek(memkey) is None:
        return
    table = _COMPUTED_ROWS.setdefault(_row_scope(backbone, output), {})
    table.update((k, (memkey, i)) for i, k in enumerate(keys))


def clean_features(backbone: Any, x: Any, output: str = "pooled", *, digest: str | None = None,
                   progress: bool = True) -> tuple[np.ndarray | None, dict[str, Any]]:
    """One kind of :func:`clean_outputs`: (array or None, info)."""
    return clean_outputs(backbone, x, (output,), digest=digest, progress=progress)[output]


def view_banks(backbone: Any, x: Any, recipe: str, views: int, outputs: Sequence[str], *,
               digest: str | None = None, progress: bool = True, fetch: bool = True) -> dict[str, tuple[np.ndarray | None, dict[str, Any]]]:
    """Backbone outputs of ``views`` augmented views of each image of ``x`` (frozen backbone).

    For each kind of ``outputs``: (bank (N, views, F) or (N, views, T, C), float32 or float16,
    info) with info ``{"key", "cache_hit", "views", "dtype", "recipe", "seed", "shape"}``; or
    (None, info with ``"reason"``) when too large. View a of the images in batch j
    (BATCH_SIZE images, in order) is augmented with seed ``derive_seed(BANK_SEED, a, j)``.
    Cached on disk, keyed by the images, output, recipe name and version, views, seed, dtype
    and backbone; the kinds not cached yet are computed in one pass (a progress bar shows it).
    ``fetch=False``: as in :func:`clean_outputs`.
    """
    if not backbone.config.frozen:
        raise HashbenchError("a view bank needs a frozen backbone")
    if views < 2:
        raise HashbenchError(f"bank_views must be 0 (no bank) or >= 2, got {views}")
    names = _outputs(outputs)
    augmenter = Augmenter(backbone, recipe)
    n = image_count(x)
    base = {"kind": "view-bank", "images": digest or content_hash(x), "recipe": recipe,
            "recipe_version": augmenter.version, "views": int(views), "seed": BANK_SEED,
            **backbone_identity(backbone)}
    result: dict[str, tuple[np.ndarray | None, dict[str, Any]]] = {}
    todo: dict[str, tuple[Path, dict[str, Any], np.ndarray]] = {}
    for name, item in output_shapes(backbone, names).items():
        shape = (n, int(views), *item)
        bank, info, pending = _bank_slot(shape, recipe, {**base, "output": name}, fetch)
        result[name] = (bank, info)
        if pending is not None:
            todo[name] = (*pending, bank)
    if todo:
        _fill_banks(backbone, x, augmenter, views, todo, progress)
    return result


def _bank_slot(shape: tuple[int, ...], recipe: str, identity: dict[str, Any],
               fetch: bool) -> tuple[np.ndarray | None, dict[str, Any], tuple[Path, dict[str, Any]] | None]:
    """One output's bank of ``shape`` (N, A, ...): (the cached bank, info, None), or (an empty
    array to fill, info, (cache folder, identity) to store it under), or (None, info with the
    reason, None) when too large. float16 above FLOAT16_ABOVE_BYTES as float32."""
    size32 = 4 * math.prod(shape)
    dtype = np.dtype(np.float16 if size32 > FLOAT16_ABOVE_BYTES else np.float32)
    info: dict[str, Any] = {"views": shape[1], "recipe": recipe, "seed": BANK_SEED,
                            "dtype": dtype.name, "shape": list(shape)}
    if size32 * dtype.itemsize // 4 > MAX_BYTES:
        return None, {**info, "key": None, "cache_hit": False,
                      "reason": f"bank {shape} {dtype.name} exceeds {MAX_BYTES} bytes"}, None
    identity = {**identity, "dtype": dtype.name}
    key = _key(identity)
    folder = cache_root() / "banks" / key
    cached = _load(folder, shape, fetch, dtype)
    if cached is not None:
        return cached, {**info, "key": key, "cache_hit": True}, None
    return np.empty(shape, dtype=dtype), {**info, "key": key, "cache_hit": False}, (folder, identity)


def _fill_banks(backbone: Any, x: Any, augmenter: Augmenter, views: int,
                todo: dict[str, tuple[Path, dict[str, Any], np.ndarray]], progress: bool) -> None:
    """Fill each ``todo`` bank (output name -> (folder, identity, array (N, views, ...))) in one
    pass over ``x`` (every view of a batch through the backbone once), then store them."""
    import torch
    from tqdm.auto import tqdm

    n = image_count(x)
    backbone.module.eval()
    start = 0

    def write(at: int, view: int, out: dict[str, np.ndarray]) -> None:
        stop = at + len(next(iter(out.values())))
        for name, (_, _, bank) in todo.items():
            bank[at:stop, view] = out[name]

    with torch.inference_mode(), Forwarder(backbone, tuple(todo)) as forwarder:
        batches = iter_image_batches(x, BATCH_SIZE)
        for j, batch in enumerate(tqdm(batches, total=math.ceil(n / BATCH_SIZE), unit="batch",
                                       disable=None if progress else True,
                                       desc=f"view bank ({'+'.join(todo)}): {views} views of {n} images")):
            unit = augmenter.unit(batch)
            for a in range(views):  # augmented here, in order (the seeds); forwards in the workers
                views_a = augmenter.augment(unit, derive_seed(BANK_SEED, a, j))
                for lo, hi in chunk_bounds(len(views_a)):
                    forwarder.submit(views_a[lo:hi], lambda out, at=start + lo, view=a: write(at, view, out))
            start += len(unit)
    for folder, identity, bank in todo.values():
        _store(folder, np.arange(n, dtype=np.int64), bank, {**identity, "shape": list(bank.shape)})


def view_bank(backbone: Any, x: Any, recipe: str, views: int, output: str = "pooled", *,
              digest: str | None = None, progress: bool = True) -> tuple[np.ndarray | None, dict[str, Any]]:
    """One kind of :func:`view_banks`: (bank or None, info)."""
    return view_banks(backbone, x, recipe, views, (output,), digest=digest, progress=progress)[output]
