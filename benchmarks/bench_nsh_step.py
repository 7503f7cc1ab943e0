"""Benchmark one NSH training step against one CIBHash step on the same backbone output.

Run:  python benchmarks/bench_nsh_step.py [--batch 64 --bits 32 --repeats 20 --sorters ... --scores dot,cosine --backbone]

One step = what ``hashbench.train.fit`` does per batch: ``method.objective(head, f1, f2)``,
``weighted_sum`` with ``method.term_weights()``, ``zero_grad``, ``backward``, Adam ``step``
(lr 1e-3) over the head's parameters. Both methods get the same inputs: banked features of two
views, random float32 (batch, 1280) tensors standing for tf_efficientnet_lite0's pooled output
(the default protocol's view bank), and the same batch and bits.

* time: wall clock (time.perf_counter; on CUDA after torch.cuda.synchronize) of one step, best
  of --repeats after --warmup steps; the methods are interleaved within every repeat (CIBHash,
  then NSH with each sorter), so a slow moment of a shared machine hits all of them;
* ratio: NSH time / CIBHash time, measured in this run (the target is <= 1.3x for the default score and sorter);
* ``--backbone``: also the unbanked step (``bank_views=0``), i.e. the frozen backbone's forward
  of both views (images 64 x 64 through tf_efficientnet_lite0 at 64 px, offline ImageNet
  weights; the views are augmented once beforehand: augmentation time is not counted) plus the
  step; the ratio then shows NSH's cost next to the backbone's.

NSH's P is (batch, batch, batch) floats (64^3 * 4 B = 1 MiB); its scores come from the Gram
matrix z2 z1^T (``ranked_dots``, the default ``score="dot"``; ``ranked_cosines`` adds the norms
of E for ``score="cosine"``), not from the (batch, batch, 1024) soft gather.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spin-waiting hurts shared CPUs
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import hashbench  # noqa: E402
from hashbench import registry as registry_module  # noqa: E402
from hashbench.errors import HashbenchError  # noqa: E402
from hashbench.losses import weighted_sum  # noqa: E402

SORTERS = ("softsort", "neuralsort", "torchsort", "exact")


def ensure_registered() -> None:
    """Use the installed entry points when they list the methods, else register the modules."""
    missing = {}
    if "cibhash" not in hashbench.names("method"):
        import hashbench.baselines.cibhash as cibhash

        missing["bench-cibhash"] = cibhash
    if "nsh" not in hashbench.names("method"):
        import hashbench.plugins.nsh as nsh

        missing["bench-nsh"] = nsh
    if missing:
        registry_module.reload(extra_plugins=missing)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stepper:
    """One method's head and optimizer; ``step(f1, f2)`` is one training step."""

    def __init__(self, method, feature_dim: int, device: torch.device) -> None:
        self.method = method
        torch.manual_seed(0)
        self.head = method.build_head(feature_dim).to(device)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=1e-3)
        self.weights = method.term_weights()

    def step(self, f1: torch.Tensor, f2: torch.Tensor) -> None:
        terms = self.method.objective(self.head, f1, f2)
        weights = {k: self.weights.get(k, 1.0) for k in terms}
        loss, _ = weighted_sum(terms, weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--feature-dim", type=int, default=1280, help="banked feature size (lite0: 1280)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sorters", default=",".join(SORTERS), help="comma-separated sorter names")
    ap.add_argument("--scores", default="dot",
                    help="comma-separated NSH scores (dot: the default, sdc's; cosine: the ablation)")
    ap.add_argument("--backbone", action="store_true",
                    help="also time the unbanked step: both views through frozen tf_efficientnet_lite0 at 64 px")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    ensure_registered()
    device = torch.device(args.device)
    notes: list[str] = []
    steppers: dict[str, Stepper] = {
        "cibhash": Stepper(hashbench.create("method", "cibhash", bits=args.bits, batch_size=args.batch),
                           args.feature_dim, device)}
    scores = [s.strip() for s in args.scores.split(",") if s.strip()]
    for score in scores:
        for name in [s.strip() for s in args.sorters.split(",") if s.strip()]:
            label = f"nsh/{name}" if scores == ["dot"] else f"nsh/{name}/{score}"
            try:
                method = hashbench.create("method", "nsh", bits=args.bits, batch_size=args.batch, sorter=name,
                                          score=score)
            except HashbenchError as exc:
                notes.append(f"{label}: not run ({exc})")
                continue
            steppers[label] = Stepper(method, args.feature_dim, device)

    g = torch.Generator().manual_seed(args.seed)
    f1 = torch.randn(args.batch, args.feature_dim, generator=g).relu().to(device)
    f2 = (f1.cpu() + 0.1 * torch.randn(args.batch, args.feature_dim, generator=g)).relu().to(device)

    backbone = views = None
    if args.backbone:
        from hashbench.augment import Augmenter
        from hashbench.banks import forward

        backbone = hashbench.create("backbone", "tf_efficientnet_lite0", pretrained=True, input_size=64,
                                    frozen=True)
        rng = np.random.default_rng(args.seed)
        images = rng.integers(0, 256, size=(args.batch, 64, 64, 3), dtype=np.uint8)
        views = Augmenter(backbone, "light").two_views(images, args.seed)
        views = tuple(v.to(backbone.device) for v in views)

        def features_of_views():
            return forward(backbone, views[0], "pooled"), forward(backbone, views[1], "pooled")

    modes = ["banked"] + (["backbone"] if args.backbone else [])
    best = {(mode, name): float("inf") for mode in modes for name in steppers}
    for r in range(args.warmup + args.repeats):
        for mode in modes:
            for name, stepper in steppers.items():
                sync(device)
                t0 = time.perf_counter()
                if mode == "banked":
                    stepper.step(f1, f2)
                else:
                    stepper.step(*features_of_views())
                sync(device)
                if r >= args.warmup:
                    best[mode, name] = min(best[mode, name], time.perf_counter() - t0)

    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")
    print(f"One training step (objective + backward + Adam step), batch {args.batch}, {args.bits} bits, "
          f"features {args.feature_dim}-d float32; best of {args.repeats} after {args.warmup} warm-up")
    print(f"device {device} ({where}); python {platform.python_version()}, torch {torch.__version__}")
    print()
    header = "| method | banked ms | ratio to cibhash |" + (" + backbone ms | ratio to cibhash |" if args.backbone else "")
    print(header)
    print("|---|---:|---:|" + ("---:|---:|" if args.backbone else ""))
    for name in steppers:
        row = f"| {name} |"
        for mode in modes:
            t, base = best[mode, name], best[mode, "cibhash"]
            row += f" {t * 1e3:.2f} | {t / base:.2f}x |"
        print(row)
    if args.backbone:
        print()
        print("backbone: both views (2 x batch images at 64 px) through frozen tf_efficientnet_lite0 "
              "(augmentation done beforehand, not timed)")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
