"""The one training loop of every deep method (the contract is :mod:`hashbench.deep`).

``fit(method, train, val, workdir) -> TrainState`` and ``encode(method, state, x) -> bool (N, bits)``.

* Config: the method's :class:`hashbench.trainconfig.TrainConfig` (limits checked when the
  method is built; :func:`check_config`).
* Backbone ``create("backbone", cfg.backbone, pretrained=, input_size=, frozen=False)``, or when
  frozen the process's shared :func:`hashbench.features.frozen_backbone` (built once); head
  ``method.build_head(dim)`` (dim: ``feature_dim``, or ``token_dim`` for ``backbone_output =
  "tokens"``), initialized under ``torch.manual_seed`` derived from the run seed; the registered
  optimizer ``cfg.optimizer`` (:mod:`hashbench.optim`; adam, sgd with momentum 0.9, ...) over
  the head, plus the backbone when not frozen, with the same lr; the registered schedule
  ``cfg.schedule`` (constant, cosine, ...) stepped per epoch.
* Data: frozen backbone and ``bank_views`` >= 2: the view bank of :mod:`hashbench.banks`
  (pooled features, or tokens when the bank fits in memory); each epoch every training image
  contributes two different bank views. Otherwise every step augments two views of the batch
  images (:class:`hashbench.augment.Augmenter`, recipe ``cfg.augment``) and runs the backbone
  (with gradients when not frozen). Batches: ``N // batch_size`` full batches per epoch (the rest changes with the
  shuffle), or one batch of all N when N <= batch_size.
* Every step: ``terms = method.objective(head, f1, f2)``, loss = sum of weight * term with
  ``method.term_weights()`` (default 1) by :func:`hashbench.losses.weighted_sum` (weight 0
  drops the term from the loss and the log); a NaN or infinite loss raises
  ``HashbenchError("training diverged: loss is nan at epoch E step S (terms: ...)")``.
* Model selection and early stopping on ``val`` only: every ``val_every`` epochs and at the
  last one, mAP@min(1000, N) of val codes (queries) against train codes (database), from clean
  features; the best head (and trained backbone) is kept; ``patience`` validations without
  improvement stop training (0 = never). Without ``val`` the last epoch is kept.
* Checkpoint ``workdir/checkpoint.pt`` after every epoch (atomic; plain data, loads with
  ``torch.load(path, weights_only=True)``); a run with a checkpoint of the same config hash
  resumes at the next epoch. All randomness of epoch e (shuffle, view choice, augmentation,
  the objective's own sampling through torch's generator) is derived from (run seed, e), so a
  resumed run gives exactly the codes and log of an uninterrupted one.
* CUDA when available (autocast with ``amp``: bfloat16 where supported, else float16 with a
  GradScaler); CPU otherwise.

The parts (checkpoint, batch sources, model selection, mixed precision) are in
:mod:`hashbench.trainparts`; :class:`Trainer` puts them together and runs the epoch loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import banks
from .augment import Augmenter, derive_seed
from .components import Split
from .errors import HashbenchError
from .evaluate import map_at_k, pack_codes
from .features import frozen_backbone
from .losses import weighted_sum
from .registry import create
from .trainconfig import TrainConfig, check_config
from .trainparts import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    HEAD_STREAM,
    TORCH_STREAM,
    Amp,
    BankBatches,
    Checkpoint,
    LiveBatches,
    Selection,
    config_hash,
    module_state,
)

__all__ = ["CHECKPOINT", "CHECKPOINT_FORMAT", "TrainConfig", "TrainState", "Trainer", "cache_reads",
           "check_config", "config_hash", "encode", "fit", "hash_features"]

ENCODE_BATCH = 1024


@dataclass
class TrainState:
    """What ``fit`` leaves for ``encode``: the selected head (eval mode, on the backbone's
    device), the backbone (trained or frozen), and the JSON-serializable training log."""

    head: Any
    backbone: Any
    log: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- pieces

def _devices(device: Any) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _weights(terms: dict[str, Any], weights: dict[str, float]) -> dict[str, float]:
    """Each term's weight: ``term_weights()``, default 1.0; a weight-0 term the objective skipped
    is fine, a nonzero weight naming no term is an error (in ``weighted_sum``)."""
    full = {k: 1.0 for k in terms}
    full.update({k: w for k, w in weights.items() if k in terms or w != 0})
    return full


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _diverged(total: float, epoch: int, step: int, terms: dict[str, Any]) -> HashbenchError:
    shown = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
    return HashbenchError(f"training diverged: loss is {'nan' if math.isnan(total) else 'inf'} "
                          f"at epoch {epoch} step {step + 1} (terms: {shown})")


def _as_codes(codes: Any, method: Any, n: int) -> np.ndarray:
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.bool or tuple(codes.shape) != (n, method.bits):
        got = f"{getattr(codes, 'dtype', type(codes).__name__)} {tuple(getattr(codes, 'shape', ()))}"
        raise HashbenchError(f"method {method.name}: hash_codes must return a bool tensor ({n}, {method.bits}), got {got}")
    return codes.cpu().numpy()


def hash_features(method: Any, head: Any, batches: Iterable[Any], device: Any) -> np.ndarray:
    """Codes of feature batches (numpy or tensors (b, ...)): bool numpy (N, bits), head in eval mode."""
    was_training = head.training
    head.eval()
    out = []
    try:
        with torch.no_grad():
            for f in batches:
                for i in range(0, len(f), ENCODE_BATCH):
                    part = f[i:i + ENCODE_BATCH]
                    if isinstance(part, np.ndarray) and not part.flags.writeable:
                        part = part.copy()  # a cached array, shared by every run: hash_codes gets its own
                    chunk = torch.as_tensor(part).to(device, torch.float32)
                    out.append(_as_codes(method.hash_codes(head, chunk), method, len(chunk)))
    finally:
        head.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, method.bits), dtype=bool)


def _clean(backbone: Any, x: Any, output: str, digest: str | None = None) -> Iterable[Any]:
    """Clean features of ``x`` as batches: the disk cache (frozen) or the backbone, streamed."""
    if backbone.config.frozen:
        feats, _ = banks.clean_features(backbone, x, output, digest=digest)
        if feats is not None:
            return [feats]
    return banks.feature_batches(backbone, x, output, desc="encoding")


def cache_reads(method: Any) -> list[banks.CacheRead]:
    """What ``fit`` and ``encode`` read from the frozen-backbone cache: clean outputs of every
    split (train and val to validate, query and database to encode) and, with ``bank_views``,
    the view bank of the train split. Empty when the backbone trains (nothing is cached)."""
    cfg = check_config(method)
    if not cfg.frozen:
        return []
    bank = (cfg.augment, int(cfg.bank_views)) if cfg.bank_views > 0 else None
    return [banks.CacheRead(cfg.backbone, cfg.pretrained, cfg.input_size, method.backbone_output,
                            splits=("train", "val", "query", "database"), bank=bank)]


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    """One training run of ``method`` on ``train``, selected on ``val`` (see the module doc).

    Building it builds the parts: backbone, head, optimizer and schedule, mixed precision, the
    batch source, model selection, the checkpoint of ``workdir`` and the log.
    :meth:`resume` continues from that checkpoint, :meth:`run_epochs` trains, :meth:`finish`
    restores the selected head and returns the :class:`TrainState`.
    """

    def __init__(self, method: Any, train: Split, val: Split | None, workdir: Path | str | None) -> None:
        self.clock = time.perf_counter()  # seconds since are added to log["seconds"]
        self.method, self.cfg = method, check_config(method)
        if len(train) < 2:
            raise HashbenchError(f"method {method.name}: training needs at least 2 images, got {len(train)}")
        self.train, self.val = train, (val if val is not None and len(val) > 0 else None)
        if self.cfg.frozen:  # shared by the grid's preflight, cache warm-up and runs in this process
            self.backbone = frozen_backbone(self.cfg.backbone, self.cfg.pretrained, self.cfg.input_size)
        else:
            self.backbone = create("backbone", self.cfg.backbone, pretrained=self.cfg.pretrained,
                                   input_size=self.cfg.input_size, frozen=False)
        self.device, self.output = self.backbone.device, method.backbone_output
        self.digests = {"train": banks.content_hash(train.x),
                        "val": banks.content_hash(self.val.x) if self.val is not None else None}
        self.checkpoint = Checkpoint(workdir, config_hash(method, {
            **self.digests, "train_n": len(train), "val_n": len(self.val) if self.val is not None else 0}))
        self.head = self._build_head()
        self.optimizer, self.scheduler = self._build_optimizer()
        self.amp = Amp.for_device(self.device, self.cfg.amp)
        self.batches, self.bank_info = self._batch_source()
        self.weights = method.term_weights()
        self.selection = Selection(self.cfg.patience, self.cfg.epochs)
        self.log = self._new_log()
        self.start, self.finished = 1, False
        self.clean: dict[str, list[Any]] = {}  # clean features of the frozen backbone, by split

    # ---- building ------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return banks.output_dim(self.backbone, self.output)

    def _build_head(self) -> Any:
        """``method.build_head(feature_dim)`` under the run's head seed, on the device."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.method.seed, HEAD_STREAM))
            head = self.method.build_head(self.feature_dim)
        return head.to(self.device)

    def _build_optimizer(self) -> tuple[Any, Any]:
        """The registered optimizer over the head (and the backbone when it trains), and the
        registered schedule of it."""
        params = list(self.head.parameters())
        if not self.cfg.frozen:
            params += [p for p in self.backbone.module.parameters() if p.requires_grad]
        optimizer = create("optimizer", self.cfg.optimizer).build(params, self.cfg.lr, self.cfg.weight_decay)
        return optimizer, create("schedule", self.cfg.schedule).build(optimizer, self.cfg.epochs)

    def _batch_source(self) -> tuple[BankBatches | LiveBatches, dict[str, Any] | None]:
        """The view bank's batches (frozen backbone, ``bank_views`` > 0, bank not too large),
        else live augmentation; and the bank's info for the log (None without a bank)."""
        cfg, seed = self.cfg, self.method.seed
        bank, info = None, None
        if cfg.frozen and cfg.bank_views > 0:
            bank, info = banks.view_bank(self.backbone, self.train.x, cfg.augment, cfg.bank_views,
                                         self.output, digest=self.digests["train"])
        if bank is not None:
            return BankBatches(bank, cfg.batch_size, seed, self.device), info
        augmenter = Augmenter(self.backbone, cfg.augment)
        return LiveBatches(self.train.x, augmenter, self.backbone, self.output, cfg.batch_size, seed, self.amp), info

    def _new_log(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "banked": self.banked, "bank": self.bank_info, "device": str(self.device), "amp": self.amp.enabled,
            "backbone": {**banks.backbone_identity(self.backbone), "frozen": cfg.frozen, "output": self.output,
                         "feature_dim": self.feature_dim},
            "steps_per_epoch": self.batches.steps, "epochs": [], "val": [], "best_epoch": None,
            "best_val_map": None, "selected": "best val mAP" if self.val is not None else "last epoch",
            "stopped_early": False, "epochs_run": 0, "resumed_from": None, "seconds": 0.0,
        }

    @property
    def banked(self) -> bool:
        return isinstance(self.batches, BankBatches)

    # ---- checkpoint ----------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        """CPU copies of the head's and (when it trains) the backbone's states."""
        return {"head": module_state(self.head),
                "backbone": None if self.cfg.frozen else module_state(self.backbone.module)}

    def resume(self) -> None:
        """Continue from the checkpoint of this config if there is one (``log["resumed_from"]``);
        a checkpoint that is unreadable or of another config is noted as ``checkpoint_ignored``."""
        state, ignored = self.checkpoint.load()
        if ignored is not None:
            self.log["checkpoint_ignored"] = ignored
        if state is None:
            return
        self.head.load_state_dict(state["head"])
        if state.get("backbone") is not None:
            self.backbone.module.load_state_dict(state["backbone"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.amp.scaler.load_state_dict(state["scaler"])
        self.selection.best, self.selection.bad = state["best"], int(state["bad"])
        self.start, self.finished = int(state["epoch"]) + 1, bool(state["finished"])
        self.log = {**state["log"], "banked": self.banked, "bank": self.bank_info, "device": str(self.device),
                    "resumed_from": int(state["epoch"])}

    def save(self, epoch: int) -> None:
        """Checkpoint the state after ``epoch`` (nothing without a workdir)."""
        if self.checkpoint.path is None:
            return
        self.checkpoint.save({
            "epoch": epoch, "finished": self.finished, **self._snapshot(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.amp.state_dict(), "best": self.selection.best, "bad": self.selection.bad,
            "log": self.log,
        })

    # ---- the epoch loop ------------------------------------------------------------------
    def run_epochs(self, on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        """Epochs ``start``..``epochs`` until finished: train, validate when due (model
        selection, early stop), log, checkpoint, then ``on_epoch_end(epoch, log)``."""
        cfg = self.cfg
        bar = self._progress_bar()
        try:
            for epoch in range(self.start, cfg.epochs + 1):
                if self.finished:
                    break
                entry = self.train_epoch(epoch, bar)
                if self.val is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
                    self.validate_epoch(epoch, entry, bar)
                self.finished = self.finished or epoch == cfg.epochs
                self.log["epochs"].append(entry)
                self.log["epochs_run"] = epoch
                self._add_seconds()
                self.save(epoch)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, self.log)
        finally:
            bar.close()

    def train_epoch(self, epoch: int, bar: Any) -> dict[str, Any]:
        """One epoch of steps over the batch source; returns its log entry
        ``{epoch, loss, terms, lr, seconds, val_map}`` (means over the steps; lr of the epoch)."""
        t0 = time.perf_counter()
        self.head.train()
        if not self.cfg.frozen:
            self.backbone.module.train()
        lr = float(self.optimizer.param_groups[0]["lr"])
        sums: dict[str, float] = {}
        with torch.random.fork_rng(devices=_devices(self.device)):
            torch.manual_seed(derive_seed(self.method.seed, TORCH_STREAM, epoch))
            for step, (f1, f2) in enumerate(self.batches.epoch(epoch)):
                for k, v in self.step(epoch, step, f1, f2).items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(1)
                bar.set_postfix({"epoch": epoch, **{k: f"{v / (step + 1):.4f}" for k, v in sums.items()}},
                                refresh=False)
        self.scheduler.step()
        steps = self.batches.steps
        return {"epoch": epoch, "loss": _finite(sums["loss"] / steps),
                "terms": {k: _finite(v / steps) for k, v in sums.items() if k != "loss"},
                "lr": lr, "seconds": time.perf_counter() - t0, "val_map": None}

    def step(self, epoch: int, step: int, f1: Any, f2: Any) -> dict[str, float]:
        """One optimizer step on the views (f1, f2); returns ``{"loss": total, **terms}`` as
        floats (weight-0 terms left out); a NaN or infinite loss raises "training diverged"."""
        with self.amp.autocast():
            terms = self.method.objective(self.head, f1, f2)
            loss, logged = weighted_sum(terms, _weights(terms, self.weights))
        values = {k: float(v) for k, v in logged.items()}
        total = values.pop("total")
        if not math.isfinite(total):
            raise _diverged(total, epoch, step, terms)
        self.amp.step(self.optimizer, loss)
        return {"loss": total, **values}

    def validate_epoch(self, epoch: int, entry: dict[str, Any], bar: Any) -> None:
        """Validate after ``epoch``: mAP into ``entry`` and ``log["val"]``, model selection, and
        the early stop when patience ran out."""
        m = self.validate()
        entry["val_map"] = m
        self.log["val"].append({"epoch": epoch, "map": m})
        if self.selection.observe(epoch, m, self._snapshot):
            self.log["stopped_early"] = True
            self.finished = True
        bar.set_postfix({"epoch": epoch, "val_map": f"{m:.4f}",
                         **{k: f"{v:.4f}" for k, v in entry["terms"].items() if v is not None}})

    def validate(self) -> float:
        """mAP@min(1000, N) of val codes (queries) against train codes (database), from clean features."""
        assert self.val is not None
        vc, tc = self.codes_of(self.val, "val"), self.codes_of(self.train, "train")
        return map_at_k(pack_codes(vc), pack_codes(tc), self.val.labels, self.train.labels,
                        bits=self.method.bits, topk=min(1000, len(self.train)))

    def codes_of(self, split: Split, name: str) -> np.ndarray:
        """Codes of ``split`` from clean features (a frozen backbone's are computed once per fit)."""
        if not self.cfg.frozen:
            return hash_features(self.method, self.head, _clean(self.backbone, split.x, self.output), self.device)
        if name not in self.clean:
            self.clean[name] = list(_clean(self.backbone, split.x, self.output, self.digests.get(name)))
        return hash_features(self.method, self.head, self.clean[name], self.device)

    def _progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        steps, epochs = self.batches.steps, self.cfg.epochs
        return tqdm(total=steps * epochs, initial=min(self.start - 1, epochs) * steps, disable=None,
                    desc=f"{self.method.name} {self.method.bits} bits", unit="step", dynamic_ncols=True,
                    leave=False)

    def _add_seconds(self) -> None:
        now = time.perf_counter()
        self.log["seconds"] = float(self.log["seconds"]) + (now - self.clock)
        self.clock = now

    # ---- the end -------------------------------------------------------------------------
    def finish(self) -> TrainState:
        """Restore the selected head (and trained backbone), complete the log, eval mode."""
        best = self.selection.best
        if best["head"] is not None:
            self.head.load_state_dict(best["head"])
            if best["backbone"] is not None:
                self.backbone.module.load_state_dict(best["backbone"])
            self.log["best_epoch"], self.log["best_val_map"] = best["epoch"], best["map"]
        else:
            self.log["best_epoch"] = self.log["epochs_run"]
        self._add_seconds()
        self.head.eval()
        self.backbone.module.eval()
        return TrainState(head=self.head, backbone=self.backbone, log=self.log)


# ----------------------------------------------------------------------------- fit, encode

def fit(method: Any, train: Split, val: Split | None = None, workdir: Path | str | None = None, *,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> TrainState:
    """Train ``method``'s head (and backbone when not frozen) on ``train``; select on ``val``.

    ``train.x``/``val.x``: uint8 images (N, H, W[, 3]) or ImageFiles; labels as in Split.
    ``on_epoch_end(epoch, log)`` is called after each epoch's checkpoint (epochs count from 1).
    Returns the TrainState with the selected head; ``state.log`` is described in the module doc
    and holds: epochs [{epoch, loss, terms, lr, seconds, val_map}], val [{epoch, map}],
    best_epoch, best_val_map, selected, stopped_early, epochs_run, resumed_from, banked, bank,
    seconds, device, amp, backbone, steps_per_epoch (and checkpoint_ignored when a checkpoint
    in ``workdir`` was not resumed).
    """
    trainer = Trainer(method, train, val, workdir)
    trainer.resume()
    trainer.run_epochs(on_epoch_end)
    return trainer.finish()


def encode(method: Any, state: TrainState | None, x: Any) -> np.ndarray:
    """Codes of images ``x`` (uint8 array or ImageFiles): bool numpy (N, bits).

    Clean backbone features (disk-cached when the backbone is frozen) -> ``method.hash_codes``
    of the selected head, in batches."""
    if state is None:
        raise HashbenchError(f"method {method.name}: encode called before fit")
    if len(x) == 0:
        return np.zeros((0, method.bits), dtype=bool)
    return hash_features(method, state.head, _clean(state.backbone, x, method.backbone_output),
                         state.backbone.device)
