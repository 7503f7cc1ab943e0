"""Peak memory of one WCH training step at ViT-B/16 token size: batch 32, 196 patches, 768 dims.

Run:  python benchmarks/bench_wch_memory.py [--batch 32 --bits 64 --chunk-mib 64 --no-backbone]

Cases, each in a fresh subprocess (so that one case's allocations cannot hide another's):

* ``head``: the step of a frozen backbone (the token bank's path): two views' tokens
  (batch, 196, 768) float32 as timm's ``vit_base_patch16_224`` gives them (random weights,
  random images; computed beforehand, not counted), then ``method.objective`` (mutual attention,
  weighted targets over the batch in chunks of ``chunk_mib``, hash head, loss), backward, Adam.
* ``head-unchunked``: the same with ``chunk_mib`` so large that the whole
  (batch, batch, 196, 196) similarity is one chunk: the cost that chunking avoids.
* ``finetune``: the paper's setting: ``vit_base_patch16_224`` (random weights) trained end to
  end: both views' forward with gradients, the objective, backward, one Adam step over the
  backbone and the head (``--no-backbone`` skips it: ~1-2 min on 2 CPU cores).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the step (after a reset); on the
CPU the process's peak resident set during the step (Linux: ``VmHWM`` after resetting it
through ``/proc/self/clear_refs``) minus the resident set just before it. Both count what the
step allocates on top of the inputs and the model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spin-waiting hurts shared CPUs
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MIB = 1 << 20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(case: str, batch: int, bits: int, chunk_mib: float, patches: int, dim: int) -> dict:
    """Run one case in this process; returns {case, peak_mib, seconds, ...}."""
    import torch

    import hashbench
    from hashbench import registry as registry_module
    from hashbench.losses import weighted_sum

    if "wch" not in hashbench.names("method"):
        from hashbench.plugins import wch

        registry_module.reload(extra_plugins={"bench-wch": wch})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    side = round(patches ** 0.5) * 16
    backbone = hashbench.create("backbone", "vit_base_patch16_224", pretrained=False, input_size=side,
                                frozen=case != "finetune")
    assert backbone.token_dim == dim, backbone.token_dim
    images = torch.randn(2, batch, 3, side, side)
    chunk = 1e9 if case == "head-unchunked" else chunk_mib
    method = hashbench.create("method", "wch", bits=bits, chunk_mib=chunk, frozen=case != "finetune")
    head = method.build_head(dim).to(device)
    params = list(head.parameters())
    if case == "finetune":
        params += list(backbone.module.parameters())
        backbone.module.train()
        x1, x2 = images[0].to(device), images[1].to(device)
    else:
        with torch.no_grad():
            t1, t2 = backbone.tokens(images[0]), backbone.tokens(images[1])
        assert tuple(t1.shape) == (batch, patches, dim), t1.shape
        del backbone
    optimizer = torch.optim.Adam(params, lr=1e-5)
    optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset = _reset_peak()
        before = _status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    if case == "finetune":
        f1, f2 = backbone.tokens(x1), backbone.tokens(x2)
    else:
        f1, f2 = t1, t2
    terms = method.objective(head, f1, f2)
    loss, _ = weighted_sum(terms, method.term_weights())
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        how = "torch.cuda.max_memory_allocated"
    else:
        peak = _status_kib("VmHWM") * 1024 - before
        how = "VmHWM - VmRSS (peak reset)" if reset else "VmHWM - VmRSS (peak not resettable: upper bound)"
    return {"case": case, "peak_mib": peak / MIB, "seconds": time.perf_counter() - t0,
            "loss": float(loss), "device": str(device), "measured_as": how}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--patches", type=int, default=196)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--chunk-mib", type=float, default=64.0)
    parser.add_argument("--no-backbone", action="store_true", help="skip the fine-tuning case")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    shape = (args.batch, args.patches, args.dim)
    if args.case:
        print(json.dumps(measure(args.case, args.batch, args.bits, args.chunk_mib, args.patches, args.dim)))
        return
    import torch

    print(f"WCH step peak memory, tokens {shape} float32, {args.bits} bits; torch {torch.__version__}, "
          f"{platform.machine()}, {torch.get_num_threads()} threads")
    full = args.batch * args.batch * args.patches * args.patches * 4 / MIB
    print(f"the whole (n, n, p, p) similarity: {full:.0f} MiB; chunks of at most {args.chunk_mib:g} MiB")
    cases = ["head", "head-unchunked"] + ([] if args.no_backbone else ["finetune"])
    results = {}
    for case in cases:
        cmd = [sys.executable, __file__, "--case", case, "--batch", str(args.batch), "--bits", str(args.bits),
               "--patches", str(args.patches), "--dim", str(args.dim), "--chunk-mib", str(args.chunk_mib)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"{case:15s} failed:\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results[case] = r
        print(f"{case:15s} peak {r['peak_mib']:8.0f} MiB  step {r['seconds']:6.2f} s  ({r['device']}, {r['measured_as']})")
    if "head" in results and "head-unchunked" in results:
        print(f"chunked / unchunked peak: {results['head']['peak_mib'] / results['head-unchunked']['peak_mib']:.2f}x")
    for case, r in results.items():
        fits = "fits" if r["peak_mib"] <= 4096 else "does NOT fit"
        print(f"{case}: {fits} in 4 GiB")


if __name__ == "__main__":
    main()
