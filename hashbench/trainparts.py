"""The parts of the training loop (:mod:`hashbench.train`), each usable and tested on its own.

* :class:`Checkpoint`: ``workdir/checkpoint.pt`` of one run, written atomically, read back
  only when it was written for the same config (:func:`config_hash`).
* :class:`BankBatches` and :class:`LiveBatches`: the two batch sources. Each epoch yields
  ``steps`` pairs (f1, f2) of backbone outputs of two different views of the same images: from
  the frozen backbone's view bank, or augmented and run through the backbone at every step.
* :class:`Selection`: model selection on validation mAP with patience.
* :class:`Amp`: mixed precision (autocast and gradient scaling) on CUDA, nothing on CPU.

Seed streams: every random draw of run seed s derives from ``derive_seed(s, stream, ...)``
with one of the streams below, so that the streams are independent and epoch e of a resumed
run draws exactly what it draws in an uninterrupted one: the head's init (``HEAD_STREAM``),
epoch e's shuffle and bank view choice (``ORDER_STREAM, e``), its torch generator
(``TORCH_STREAM, e``) and step t's augmentation (``AUGMENT_STREAM, e, t``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import banks
from .augment import derive_seed
from .data.images import iter_image_batches

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
HEAD_STREAM, ORDER_STREAM, TORCH_STREAM, AUGMENT_STREAM = range(4)


# ----------------------------------------------------------------------------- checkpoint

def config_hash(method: Any, data: dict[str, Any]) -> str:
    """Identity of a training run for resuming (20 hex digits): checkpoint format, method name,
    bits, seed, config fields and ``data`` (digests and sizes of the splits)."""
    identity = {"format": CHECKPOINT_FORMAT, "method": method.name, "bits": method.bits,
                "seed": method.seed, "config": dataclasses.asdict(method.config), "data": data}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


class Checkpoint:
    """``workdir/checkpoint.pt`` of the run whose :func:`config_hash` is ``config_hash``
    (nothing is read or written when ``workdir`` is None).

    :meth:`save` writes ``{"format", "config_hash", **state}`` atomically (a temporary file,
    then ``os.replace``); ``state`` holds plain data only (tensors, numbers, strings, lists,
    dicts), so that :meth:`load` reads it with ``torch.load(weights_only=True)``.
    """

    def __init__(self, workdir: Path | str | None, config_hash: str) -> None:
        self.path = Path(workdir) / CHECKPOINT if workdir is not None else None
        self.config_hash = config_hash

    def load(self) -> tuple[dict[str, Any] | None, str | None]:
        """(state, None) for a checkpoint of this config; else (None, why it is ignored): why is
        None when there is none, ``"unreadable (<exception type>)"`` or ``"written for another
        config"``."""
        if self.path is None or not self.path.is_file():
            return None, None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is replaced
            return None, f"unreadable ({type(exc).__name__})"
        if not isinstance(state, dict):
            return None, None
        if state.get("config_hash") != self.config_hash:
            return None, "written for another config"
        return state, None

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (plain data) as this run's checkpoint, replacing the previous one."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{CHECKPOINT}.{os.getpid()}.tmp")
        torch.save({"format": CHECKPOINT_FORMAT, "config_hash": self.config_hash, **state}, tmp)
        os.replace(tmp, self.path)


def module_state(module: Any) -> dict[str, Any]:
    """A CPU copy of ``module``'s state dict (tensors detached and cloned)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- batch sources

def steps_per_epoch(n: int, batch_size: int) -> int:
    """``n // batch_size`` full batches (the rest changes with the shuffle), or 1 batch of all
    ``n`` when ``n < batch_size``."""
    return n // batch_size if n >= batch_size else 1


def epoch_order(seed: int, epoch: int, n: int) -> tuple[np.random.Generator, np.ndarray]:
    """Epoch ``epoch``'s generator (stream ``ORDER_STREAM``) and the shuffle of ``n`` images it
    draws first; a source draws its further per-epoch choices from the same generator."""
    rng = np.random.default_rng(derive_seed(seed, ORDER_STREAM, epoch))
    return rng, rng.permutation(n)


def batch_indices(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """The image indices of each step of an epoch shuffled as ``order``."""
    for step in range(steps_per_epoch(len(order), batch_size)):
        yield order[step * batch_size:(step + 1) * batch_size]


def take(x: Any, idx: np.ndarray) -> Any:
    """Images ``idx`` of ``x`` as preprocess takes them (array slice, or a list read from files)."""
    if isinstance(x, np.ndarray):
        return x[idx]
    return next(iter_image_batches(x[idx], len(idx)))


class BankBatches:
    """Batches from a view bank: ``bank`` (N, A, ...) holds the backbone outputs of A >= 2
    augmented views of each of N images (float32 or float16; on the GPU when ``device`` is).

    :meth:`epoch` shuffles the images and gives each image i two different views
    ``first[i] != second[i]``, drawn uniformly, all from the epoch's generator
    (:func:`epoch_order`); it yields, per step, (f1, f2) float32 on ``device``, (B, F) or
    (B, T, C): views ``first`` and ``second`` of the step's B images.
    """

    def __init__(self, bank: np.ndarray, batch_size: int, seed: int, device: Any) -> None:
        self.bank = banks.tensor_of(bank)  # shares the (possibly read-only, cached) array; only read
        if device.type == "cuda":
            self.bank = self.bank.to(device)
        self.n, self.views = bank.shape[0], bank.shape[1]
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.steps = steps_per_epoch(self.n, batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng, order = epoch_order(self.seed, epoch, self.n)
        first = rng.integers(0, self.views, size=self.n)
        second = (first + rng.integers(1, self.views, size=self.n)) % self.views
        for idx in batch_indices(order, self.batch_size):
            rows = torch.from_numpy(idx)
            yield (self.bank[rows, torch.from_numpy(first[idx])].to(self.device, torch.float32),
                   self.bank[rows, torch.from_numpy(second[idx])].to(self.device, torch.float32))


class LiveBatches:
    """Batches augmented at every step: ``augmenter`` (:class:`hashbench.augment.Augmenter`)
    makes two views of the step's images of ``images`` (uint8 array or ImageFiles) with seed
    ``derive_seed(seed, AUGMENT_STREAM, epoch, step)``, and ``backbone`` maps them to its
    ``output`` (under ``amp``'s autocast; with gradients when the backbone is not frozen).

    :meth:`epoch` yields, per step, (f1, f2) on the backbone's device: (B, F) or (B, T, C).
    """

    def __init__(self, images: Any, augmenter: Any, backbone: Any, output: str, batch_size: int,
                 seed: int, amp: Amp) -> None:
        self.images, self.augmenter, self.backbone, self.output = images, augmenter, backbone, output
        self.batch_size, self.seed, self.amp = batch_size, seed, amp
        self.n = len(images)
        self.steps = steps_per_epoch(self.n, batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        _, order = epoch_order(self.seed, epoch, self.n)
        device = self.backbone.device
        for step, idx in enumerate(batch_indices(order, self.batch_size)):
            v1, v2 = self.augmenter.two_views(take(self.images, idx),
                                              derive_seed(self.seed, AUGMENT_STREAM, epoch, step))
            with self.amp.autocast():
                f1 = banks.forward(self.backbone, v1.to(device), self.output)
                f2 = banks.forward(self.backbone, v2.to(device), self.output)
            yield f1, f2


# ----------------------------------------------------------------------------- selection

def _no_best() -> dict[str, Any]:
    return {"epoch": None, "map": None, "head": None, "backbone": None}


@dataclass
class Selection:
    """Model selection on validation mAP with patience.

    ``best``: the best validation so far, ``{"epoch", "map", "head", "backbone"}`` (the
    snapshot's state dicts; all None before the first validation); ``bad``: validations since
    the best one. Both are checkpointed as they are.
    """

    patience: int  #: validations without improvement that stop training (0 = never)
    last_epoch: int  #: the run's last epoch: running out of patience there is no early stop
    best: dict[str, Any] = field(default_factory=_no_best)
    bad: int = 0

    def observe(self, epoch: int, value: float, snapshot: Callable[[], dict[str, Any]]) -> bool:
        """Record validation mAP ``value`` of ``epoch``; a strictly better one replaces the best
        with ``{"epoch", "map", **snapshot()}`` (snapshot: the head's and backbone's states).
        Returns True when training should stop early: ``patience`` validations in a row
        without improvement, before the last epoch."""
        if self.best["map"] is None or value > self.best["map"]:
            self.best = {"epoch": epoch, "map": value, **snapshot()}
            self.bad = 0
            return False
        self.bad += 1
        return bool(self.patience) and self.bad >= self.patience and epoch < self.last_epoch


# ----------------------------------------------------------------------------- amp

@dataclass
class Amp:
    """Mixed precision: on CUDA with ``amp`` on, autocast to bfloat16 where supported, else to
    float16 with a GradScaler; off (full precision, a disabled scaler) otherwise."""

    enabled: bool
    dtype: Any
    scaler: Any

    @classmethod
    def for_device(cls, device: Any, wanted: bool) -> Amp:
        enabled = bool(wanted) and device.type == "cuda"
        dtype = torch.bfloat16 if enabled and torch.cuda.is_bf16_supported() else torch.float16
        return cls(enabled, dtype, torch.amp.GradScaler("cuda", enabled=enabled and dtype == torch.float16))

    def autocast(self) -> Any:
        """A context: autocast on CUDA when enabled, else nothing."""
        return torch.autocast("cuda", dtype=self.dtype) if self.enabled else contextlib.nullcontext()

    def step(self, optimizer: Any, loss: torch.Tensor) -> None:
        """Backward of ``loss`` (scaled when the scaler is enabled) and one optimizer step."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state, {} when it is disabled."""
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}
