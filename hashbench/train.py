"""The one training loop of every deep method (the contract is :mod:`hashbench.deep`).

``fit(method, train, val, workdir) -> TrainState`` and ``encode(method, state, x) -> bool (N, bits)``.

* Backbone ``create("backbone", cfg.backbone, pretrained=, input_size=, frozen=)``; head
  ``method.build_head(dim)`` (dim: ``feature_dim``, or ``token_dim`` for ``backbone_output =
  "tokens"``), initialized under ``torch.manual_seed`` derived from the run seed; optimizer
  (adam | sgd with momentum 0.9) over the head, plus the backbone when not frozen, with the same
  lr; schedule (constant | cosine) stepped per epoch.
* Data: frozen backbone and ``bank_views`` >= 2: the view bank of :mod:`hashbench.banks`
  (pooled features, or tokens when the bank fits in memory); each epoch every training image
  contributes two different bank views. Otherwise every step augments two views of the batch
  images (:class:`hashbench.augment.Augmenter`) and runs the backbone (with gradients when not
  frozen). Batches: ``N // batch_size`` full batches per epoch (the rest changes with the
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from . import banks
from .augment import Augmenter, check_recipe, derive_seed
from .components import Split
from .data.images import iter_image_batches
from .deep import TrainConfig
from .errors import HashbenchError
from .evaluate import map_at_k, pack_codes
from .losses import weighted_sum
from .registry import create

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
ENCODE_BATCH = 1024
#: seed streams: derive_seed(run seed, stream, ...) keeps them independent
_HEAD, _ORDER, _TORCH, _AUGMENT = range(4)


@dataclass
class TrainState:
    """What ``fit`` leaves for ``encode``: the selected head (eval mode, on the backbone's
    device), the backbone (trained or frozen), and the JSON-serializable training log."""

    head: Any
    backbone: Any
    log: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- pieces

def check_config(method: Any) -> TrainConfig:
    """The method's TrainConfig, checked; one-line HashbenchError for bad names or values."""
    cfg = method.config
    owner = f"method {method.name}"
    if not isinstance(cfg, TrainConfig):
        raise HashbenchError(f"{owner}: its Config must subclass hashbench.deep.TrainConfig")
    if cfg.optimizer not in OPTIMIZERS:
        raise HashbenchError(f"{owner}: unknown optimizer '{cfg.optimizer}' (optimizers: {', '.join(OPTIMIZERS)})")
    if cfg.schedule not in SCHEDULES:
        raise HashbenchError(f"{owner}: unknown schedule '{cfg.schedule}' (schedules: {', '.join(SCHEDULES)})")
    try:
        check_recipe(cfg.augment)
    except HashbenchError as exc:
        raise HashbenchError(f"{owner}: {exc}") from None
    if method.backbone_output not in banks.OUTPUTS:
        raise HashbenchError(f"{owner}: backbone_output must be one of {', '.join(banks.OUTPUTS)}")
    checks = [
        (cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}"),
        (cfg.batch_size >= 2, f"batch_size must be >= 2, got {cfg.batch_size}"),
        (cfg.bank_views == 0 or cfg.bank_views >= 2, f"bank_views must be 0 (no bank) or >= 2, got {cfg.bank_views}"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}"),
        (cfg.val_every >= 1, f"val_every must be >= 1, got {cfg.val_every}"),
        (cfg.patience >= 0, f"patience must be >= 0, got {cfg.patience}"),
    ]
    for ok, message in checks:
        if not ok:
            raise HashbenchError(f"{owner}: {message}")
    return cfg


def config_hash(method: Any, data: dict[str, Any]) -> str:
    """Identity of a training run for resuming: method, bits, seed, config, data digests."""
    identity = {"format": CHECKPOINT_FORMAT, "method": method.name, "bits": method.bits,
                "seed": method.seed, "config": dataclasses.asdict(method.config), "data": data}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _optimizer(cfg: TrainConfig, params: list[Any]) -> Any:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def _schedule(cfg: TrainConfig, optimizer: Any) -> Any:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _state(module: Any) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _devices(device: Any) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _take(x: Any, idx: np.ndarray) -> Any:
    """Images ``idx`` of ``x`` as preprocess takes them (array slice, or a list read from files)."""
    if isinstance(x, np.ndarray):
        return x[idx]
    return next(iter_image_batches(x[idx], len(idx)))


def _weights(terms: dict[str, Any], weights: dict[str, float]) -> dict[str, float]:
    """Each term's weight: ``term_weights()``, default 1.0; a weight-0 term the objective skipped
    is fine, a nonzero weight naming no term is an error (in ``weighted_sum``)."""
    full = {k: 1.0 for k in terms}
    full.update({k: w for k, w in weights.items() if k in terms or w != 0})
    return full


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


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
                    chunk = torch.as_tensor(f[i:i + ENCODE_BATCH]).to(device, torch.float32)
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


# ----------------------------------------------------------------------------- fit

def fit(method: Any, train: Split, val: Split | None = None, workdir: Path | str | None = None, *,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> TrainState:
    """Train ``method``'s head (and backbone when not frozen) on ``train``; select on ``val``.

    ``train.x``/``val.x``: uint8 images (N, H, W[, 3]) or ImageFiles; labels as in Split.
    ``on_epoch_end(epoch, log)`` is called after each epoch's checkpoint (epochs count from 1).
    Returns the TrainState with the selected head; ``state.log`` is described in the module doc
    and holds: epochs [{epoch, loss, terms, lr, seconds, val_map}], val [{epoch, map}],
    best_epoch, best_val_map, selected, stopped_early, epochs_run, resumed_from, banked, bank,
    seconds, device, amp, backbone, steps_per_epoch.
    """
    from tqdm.auto import tqdm

    t_session = time.perf_counter()
    cfg = check_config(method)
    output = method.backbone_output
    n = len(train)
    if n < 2:
        raise HashbenchError(f"method {method.name}: training needs at least 2 images, got {n}")
    if val is not None and len(val) == 0:
        val = None
    backbone = create("backbone", cfg.backbone, pretrained=cfg.pretrained, input_size=cfg.input_size,
                      frozen=cfg.frozen)
    device = backbone.device
    digests = {"train": banks.content_hash(train.x),
               "val": banks.content_hash(val.x) if val is not None else None}
    chash = config_hash(method, {**digests, "train_n": n, "val_n": len(val) if val is not None else 0})

    feature_dim = backbone.token_dim if output == "tokens" else backbone.feature_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(method.seed, _HEAD))
        head = method.build_head(feature_dim)
    head = head.to(device)
    params = list(head.parameters())
    if not cfg.frozen:
        params += [p for p in backbone.module.parameters() if p.requires_grad]
    optimizer = _optimizer(cfg, params)
    scheduler = _schedule(cfg, optimizer)
    use_amp = bool(cfg.amp) and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    # ---- data: the view bank (frozen), else augmentation + backbone at every step
    bank, bank_info = None, None
    if cfg.frozen and cfg.bank_views > 0:
        bank, bank_info = banks.view_bank(backbone, train.x, cfg.augment, cfg.bank_views, output,
                                          digest=digests["train"])
    banked = bank is not None
    if banked:
        bank_t = torch.from_numpy(bank)
        if device.type == "cuda":
            bank_t = bank_t.to(device)
    augmenter = None if banked else Augmenter(backbone, cfg.augment)
    bs = cfg.batch_size
    steps = n // bs if n >= bs else 1
    weights = method.term_weights()

    log: dict[str, Any] = {
        "banked": banked, "bank": bank_info, "device": str(device), "amp": use_amp,
        "backbone": {**banks.backbone_identity(backbone), "frozen": cfg.frozen, "output": output,
                     "feature_dim": feature_dim},
        "steps_per_epoch": steps, "epochs": [], "val": [], "best_epoch": None, "best_val_map": None,
        "selected": "best val mAP" if val is not None else "last epoch", "stopped_early": False,
        "epochs_run": 0, "resumed_from": None, "seconds": 0.0,
    }
    best: dict[str, Any] = {"epoch": None, "map": None, "head": None, "backbone": None}
    bad, start, finished = 0, 1, False

    ckpt_path = Path(workdir) / CHECKPOINT if workdir is not None else None
    if ckpt_path is not None and ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is replaced
            ckpt = None
            log["checkpoint_ignored"] = f"unreadable ({type(exc).__name__})"
        if isinstance(ckpt, dict) and ckpt.get("config_hash") != chash:
            log["checkpoint_ignored"] = "written for another config"
        elif isinstance(ckpt, dict):
            head.load_state_dict(ckpt["head"])
            if ckpt.get("backbone") is not None:
                backbone.module.load_state_dict(ckpt["backbone"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            best, bad, finished = ckpt["best"], int(ckpt["bad"]), bool(ckpt["finished"])
            start = int(ckpt["epoch"]) + 1
            log = {**ckpt["log"], "banked": banked, "bank": bank_info, "device": str(device),
                   "resumed_from": int(ckpt["epoch"])}

    def checkpoint(epoch: int) -> None:
        if ckpt_path is None:
            return
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "format": CHECKPOINT_FORMAT, "config_hash": chash, "epoch": epoch, "finished": finished,
            "head": _state(head), "backbone": None if cfg.frozen else _state(backbone.module),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "best": best, "bad": bad, "log": log,
        }
        tmp = ckpt_path.with_name(f".{CHECKPOINT}.{os.getpid()}.tmp")
        torch.save(data, tmp)
        os.replace(tmp, ckpt_path)

    clean: dict[str, np.ndarray] = {}

    def codes_of(split: Split, name: str) -> np.ndarray:
        if cfg.frozen:  # clean features never change: compute (or read) them once per fit
            if name not in clean:
                clean[name] = list(_clean(backbone, split.x, output, digests.get(name)))
            return hash_features(method, head, clean[name], device)
        return hash_features(method, head, _clean(backbone, split.x, output), device)

    def validate() -> float:
        assert val is not None
        vc, tc = codes_of(val, "val"), codes_of(train, "train")
        return map_at_k(pack_codes(vc), pack_codes(tc), val.labels, train.labels,
                        bits=method.bits, topk=min(1000, n))

    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else None
    bar = tqdm(total=steps * cfg.epochs, initial=min(start - 1, cfg.epochs) * steps, disable=None,
               desc=f"{method.name} {method.bits} bits", unit="step", dynamic_ncols=True, leave=False)
    try:
        for epoch in range(start, cfg.epochs + 1):
            if finished:
                break
            t0 = time.perf_counter()
            rng = np.random.default_rng(derive_seed(method.seed, _ORDER, epoch))
            order = rng.permutation(n)
            if banked:
                a = bank.shape[1]
                first = rng.integers(0, a, size=n)
                second = (first + rng.integers(1, a, size=n)) % a
            head.train()
            if not cfg.frozen:
                backbone.module.train()
            lr = float(optimizer.param_groups[0]["lr"])
            sums: dict[str, float] = {}
            with torch.random.fork_rng(devices=_devices(device)):
                torch.manual_seed(derive_seed(method.seed, _TORCH, epoch))
                for step in range(steps):
                    idx = order[step * bs:(step + 1) * bs]
                    with autocast() if autocast else contextlib.nullcontext():
                        if banked:
                            rows = torch.from_numpy(idx)
                            f1 = bank_t[rows, torch.from_numpy(first[idx])].to(device, torch.float32)
                            f2 = bank_t[rows, torch.from_numpy(second[idx])].to(device, torch.float32)
                        else:
                            v1, v2 = augmenter.two_views(_take(train.x, idx),
                                                         derive_seed(method.seed, _AUGMENT, epoch, step))
                            f1 = banks.forward(backbone, v1.to(device), output)
                            f2 = banks.forward(backbone, v2.to(device), output)
                        terms = method.objective(head, f1, f2)
                        loss, logged = weighted_sum(terms, _weights(terms, weights))
                    values = {k: float(v) for k, v in logged.items()}
                    total = values.pop("total")
                    if not math.isfinite(total):
                        shown = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                        raise HashbenchError(
                            f"training diverged: loss is {'nan' if math.isnan(total) else 'inf'} "
                            f"at epoch {epoch} step {step + 1} (terms: {shown})"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    for k, v in {"loss": total, **values}.items():
                        sums[k] = sums.get(k, 0.0) + v
                    bar.update(1)
                    bar.set_postfix({"epoch": epoch, **{k: f"{v / (step + 1):.4f}" for k, v in sums.items()}},
                                    refresh=False)
            scheduler.step()
            entry: dict[str, Any] = {
                "epoch": epoch, "loss": _finite(sums["loss"] / steps),
                "terms": {k: _finite(v / steps) for k, v in sums.items() if k != "loss"},
                "lr": lr, "seconds": time.perf_counter() - t0, "val_map": None,
            }
            if val is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
                m = validate()
                entry["val_map"] = m
                log["val"].append({"epoch": epoch, "map": m})
                if best["map"] is None or m > best["map"]:
                    best = {"epoch": epoch, "map": m, "head": _state(head),
                            "backbone": None if cfg.frozen else _state(backbone.module)}
                    bad = 0
                else:
                    bad += 1
                    if cfg.patience and bad >= cfg.patience and epoch < cfg.epochs:
                        log["stopped_early"] = True
                        finished = True
                bar.set_postfix({"epoch": epoch, "val_map": f"{m:.4f}",
                                 **{k: f"{v:.4f}" for k, v in entry["terms"].items() if v is not None}})
            finished = finished or epoch == cfg.epochs
            log["epochs"].append(entry)
            log["epochs_run"] = epoch
            log["seconds"] = float(log["seconds"]) + (time.perf_counter() - t_session)
            t_session = time.perf_counter()
            checkpoint(epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch, log)
    finally:
        bar.close()

    if best["head"] is not None:
        head.load_state_dict(best["head"])
        if best["backbone"] is not None:
            backbone.module.load_state_dict(best["backbone"])
        log["best_epoch"], log["best_val_map"] = best["epoch"], best["map"]
    else:
        log["best_epoch"] = log["epochs_run"]
    log["seconds"] = float(log["seconds"]) + (time.perf_counter() - t_session)
    head.eval()
    backbone.module.eval()
    return TrainState(head=head, backbone=backbone, log=log)


# ----------------------------------------------------------------------------- encode

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
