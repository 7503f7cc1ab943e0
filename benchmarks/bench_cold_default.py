"""The cold default, old vs new: each commit's ``hashbench run`` (the default grid: no arguments)
from an empty cache and an empty results folder, back to back on this machine (issue 14 item 1).

Run (from the repository root, with the project's venv; ~20-30 min on 2 cores; a quiet machine):

    .venv/bin/python benchmarks/bench_cold_default.py
    .venv/bin/python benchmarks/bench_cold_default.py --old <commit> --new <commit> --order new-old
    .venv/bin/python benchmarks/bench_cold_default.py --quick   # a 2-run grid: checks the script
    .venv/bin/python benchmarks/bench_cold_default.py --grid "--bits 32 --seeds 0"   # a smaller case

Defaults: ``--old`` is :data:`BEFORE`, the commit before the first change of the speed-up (issue
14 item 1); ``--new`` is HEAD. Uncommitted changes are not measured: commit first.

How each commit is installed, in isolation (``--workdir``, default
``$TMPDIR/hashbench-bench-cold``, reused between calls):

1. a git worktree of the commit (``git worktree add --detach``; removed with ``--clean``);
2. a venv of its own (``python -m venv --without-pip``) whose site-packages holds only the
   commit's editable install (``pip --python <venv> install --no-deps --no-build-isolation -e
   <worktree>``, run by this interpreter's pip) and a file ``zz-hashbench-bench-base.pth`` naming
   this interpreter's site-packages (the project's venv: torch, timm, numpy, ...): a plain path
   line, so that folder comes AFTER the venv's own on ``sys.path`` and none of its ``.pth`` files
   runs (the project's own editable hashbench there is never installed as a finder);
3. a check, in that venv, that ``hashbench`` and every module named by the ``hashbench`` entry
   points (the plugins the registry loads; they differ between commits) import from the
   worktree, that its ``hashbench`` script exists, and that ``importlib.metadata`` reports the
   worktree's distribution first.

Each run: ``<venv>/bin/hashbench run`` with no argument (``--quick``: a 2-run grid), in an empty
folder (its ``results/``), with ``HASHBENCH_CACHE`` an empty folder, ``HF_HUB_OFFLINE=1`` and
``PYTHONHASHSEED=0`` (as tox's run environment), every inherited ``OMP_*``, ``GOMP_*``,
``MKL_*`` and ``HASHBENCH_*`` variable removed (each commit's CLI sets its own defaults),
stderr to ``<workdir>/<label>.log``. Measured: wall time; CPU time and peak RSS of the command
(``getrusage`` of its process tree, through a small wrapper process); the split: start-up +
features (process start -> the last ``features/`` cache entry written), the view bank (-> the
last ``banks/`` entry), the runs (-> the last record's end; and the sum of the records'
``seconds``, per method), the tables; and the load average before and after. The cache and
results of each run are deleted afterwards unless ``--keep``.

The report (``--out``, default ``benchmarks/results/cold_default.md``) has both commits' figures,
the ratio new/old of the wall time (the goal: at most :data:`GOAL`), the mAP of each method and
bit length of each run beside the reference results (``results/reference/tables/map.md`` of the
new commit; the goal: no method's mAP at any bit length more than 1 point from it), and the
last lines of the new run's log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the commit before the first change of issue 14 item 1 (the cold default's speed-up)
BEFORE = "cc5cf702abadc3a4fb5047d983937479b489c625"
#: the goal: the new cold default at most this fraction of the old one's wall time
GOAL = 0.65
#: the goal: no method's mAP at any bit length moves by more than this from the reference
MAP_TOLERANCE = 0.01
#: the grid of --quick (checks the script in a few minutes, not the goal)
QUICK = ["--methods", "itq,cibhash", "--bits", "32", "--seeds", "0", "--set", "cibhash.epochs=1"]
#: environment variables a run does not inherit (each commit's CLI sets its own)
DROPPED_ENV = ("OMP_", "GOMP_", "MKL_", "KMP_", "HASHBENCH_")
REFERENCE = Path("results/reference/tables/map.md")

#: the wrapper that runs the command and reports its process tree's resource use as JSON
RUSAGE_WRAPPER = """
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"returncode": code, "maxrss_kb": r.ru_maxrss, "user_s": r.ru_utime, "sys_s": r.ru_stime}, f)
sys.exit(code)
"""


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def resolve(commit: str) -> str:
    return git("rev-parse", "--verify", f"{commit}^{{commit}}")


# ----------------------------------------------------------------------------- install

def site_packages(python: Path | str = sys.executable) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out)


def install(commit: str, workdir: Path) -> tuple[Path, Path]:
    """(worktree, venv) of ``commit``, created if absent, checked either way."""
    short = commit[:12]
    tree, venv = workdir / f"tree-{short}", workdir / f"venv-{short}"
    if tree.exists() and git("rev-parse", "HEAD", cwd=tree) != commit:
        shutil.rmtree(tree)
        git("worktree", "prune")
    if not tree.exists():
        git("worktree", "add", "--detach", str(tree), commit)
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        own = site_packages(python)
        (own / "zz-hashbench-bench-base.pth").write_text(f"{site_packages()}\n")
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                        "--no-deps", "--no-build-isolation", "-e", str(tree)], check=True)
    check_install(python, tree)
    return tree, venv


CHECK = """
import importlib, importlib.metadata as md, json, sys
import hashbench
eps = [ep for ep in md.entry_points(group="hashbench")  # what the registry loads
       if ep.dist is None or ep.dist.name.lower() == "hashbench"]
mods = {ep.value.split(":")[0] for ep in eps}
files = {m: importlib.import_module(m).__file__ for m in sorted(mods)}
dist = md.distribution("hashbench")
print(json.dumps({"hashbench": hashbench.__file__, "modules": files,
                  "dist": str(dist.locate_file("")), "direct_url": dist.read_text("direct_url.json")}))
"""


def check_install(python: Path, tree: Path) -> None:
    """Raise unless hashbench, every entry point's module and the first distribution found are
    the worktree's, and the venv has its own hashbench script."""
    out = json.loads(subprocess.run([str(python), "-c", CHECK], check=True, capture_output=True, text=True,
                                    cwd=tempfile.gettempdir(), env=run_env({})).stdout)
    where = tree.resolve()
    outside = [f"{name}: {path}" for name, path in [("hashbench", out["hashbench"]), *out["modules"].items()]
               if not Path(path).resolve().is_relative_to(where)]
    if outside:
        raise SystemExit(f"{python}: modules outside the worktree {where}: {outside}")
    if str(where) not in (out["direct_url"] or ""):
        raise SystemExit(f"{python}: the hashbench distribution found first is not the worktree's ({out['direct_url']})")
    if not (python.parent / "hashbench").exists():
        raise SystemExit(f"{python.parent}: no hashbench script")


# ----------------------------------------------------------------------------- one run

def run_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV)}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}, **extra)
    return env


def mtimes(folder: Path) -> list[float]:
    """The time each cache entry under ``folder`` was written (its newest file)."""
    if not folder.is_dir():
        return []
    return [max(f.stat().st_mtime for f in entry.iterdir()) for entry in folder.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and any(entry.iterdir())]


def parse_time(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


def run_default(label: str, venv: Path, workdir: Path, args: list[str], keep: bool) -> dict:
    """One cold run of ``hashbench run`` (+ ``args``) in ``venv``: its figures."""
    here = workdir / f"run-{label}"
    shutil.rmtree(here, ignore_errors=True)
    cache, folder = here / "cache", here / "work"
    cache.mkdir(parents=True)
    folder.mkdir()
    log = workdir / f"{label}.log"
    usage_file = here / "rusage.json"
    cmd = [sys.executable, "-c", RUSAGE_WRAPPER, str(usage_file), str(venv / "bin" / "hashbench"), "run", *args]
    load_before = os.getloadavg()
    start = time.time()
    t0 = time.perf_counter()
    with open(log, "w") as err, open(here / "stdout.txt", "w") as out:
        code = subprocess.call(cmd, cwd=folder, stdout=out, stderr=err,
                               env=run_env({"HASHBENCH_CACHE": str(cache), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}))
    wall = time.perf_counter() - t0
    end = time.time()
    usage = json.loads(usage_file.read_text())
    records = [json.loads(p.read_text()) for p in sorted((folder / "results" / "runs").glob("*.json"))]
    features_end = max(mtimes(cache / "features"), default=None)
    bank_end = max(mtimes(cache / "banks"), default=None)
    run_ends = [parse_time(r.get("finished_at")) for r in records]
    runs_end = max((t for t in run_ends if t is not None), default=None)
    per_method: dict[str, float] = defaultdict(float)
    for r in records:
        per_method[r["config"]["method"]] += float(r.get("seconds") or 0.0)
    table = folder / "results" / "tables" / "map.md"
    result = {
        "label": label, "returncode": code, "wall_s": wall, "cpu_s": usage["user_s"] + usage["sys_s"],
        "maxrss_gb": usage["maxrss_kb"] / 2**20, "load_before": load_before, "load_after": os.getloadavg(),
        "runs": len(records), "failed": sum(r.get("status") != "done" for r in records),
        "run_seconds": sum(per_method.values()), "per_method": dict(sorted(per_method.items())),
        "features_s": (features_end - start) if features_end else None,
        "bank_s": (bank_end - max(features_end or start, start)) if bank_end else None,
        "runs_s": (runs_end - max(bank_end or features_end or start, start)) if runs_end else None,
        "tail_s": (end - runs_end) if runs_end else None,
        "map_table": table.read_text() if table.exists() else "",
        "log_tail": log.read_text().splitlines()[-25:],
    }
    if not keep:
        shutil.rmtree(here, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- the report

CELL = re.compile(r"\*{0,2}(\d+\.\d+)(\s*±|\*{0,2}$)")


def map_cells(markdown: str, backbone: str = "tf_efficientnet_lite0") -> dict[tuple[str, int], float]:
    """{(method, bits): mean mAP} of a map.md table's columns on ``backbone`` features
    (plain method rows only: ablation rows, ``method[...]``, are left out)."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    if not lines:
        return {}
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = {}
    for line in lines[2:]:
        row = [c.strip() for c in line.strip("|").split("|")]
        method = row[0]
        if "[" in method:
            continue
        for name, value in zip(header[1:], row[1:]):
            found = CELL.match(value)
            bits = re.search(r"(\d+)b$", name)
            if found and bits and backbone in name:
                cells[(method, int(bits.group(1)))] = float(found.group(1))
    return cells


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    minutes, secs = divmod(value, 60)
    return f"{int(minutes)} min {secs:04.1f} s" if minutes else f"{secs:.1f} s"


def report(old: dict, new: dict, commits: dict[str, str], reference: str, args: argparse.Namespace) -> str:
    ratio = new["wall_s"] / old["wall_s"]
    ref, cells = map_cells(reference), {k: map_cells(r["map_table"]) for k, r in (("old", old), ("new", new))}
    moves = {k: max((abs(v - ref[key]) for key, v in c.items() if key in ref), default=float("nan"))
             for k, c in cells.items()}
    same = cells["old"] == cells["new"] and bool(cells["new"])
    grid = (f"`hashbench run {' '.join(args.grid_args)}` (not the goal's grid)" if args.grid_args
            else "the default grid (`hashbench run`, no arguments)")
    lines = [
        "# The cold default, old vs new (issue 14 item 1)",
        "",
        f"Written by `benchmarks/bench_cold_default.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: "
        f"{grid}, each commit from an empty cache and results folder, {args.order.replace('-', ' then ')}, back to back.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), "
        f"{memory_gb():.0f} GB RAM, Python {platform.python_version()}.",
        "",
        f"- old: `{commits['old'][:12]}` {git('log', '-1', '--format=%s', commits['old'])[:100]}",
        f"- new: `{commits['new'][:12]}` {git('log', '-1', '--format=%s', commits['new'])[:100]}",
        "",
        f"**new / old wall time: {ratio:.3f}** (goal: at most {GOAL}: {'met' if ratio <= GOAL else 'NOT met'}); "
        f"largest mAP move from the reference: old {100 * moves['old']:.2f}, new {100 * moves['new']:.2f} points "
        f"(goal: at most {100 * MAP_TOLERANCE:.0f}: {'met' if moves['new'] <= MAP_TOLERANCE else 'NOT met'}); "
        f"new table {'equal to old in every cell' if same else 'NOT equal to old in every cell'}.",
        "",
        "| | old | new | new / old |",
        "|---|---|---|---|",
    ]

    def row(name: str, key: str, fmt=seconds, ratio_too: bool = True) -> None:
        a, b = old.get(key), new.get(key)
        r = f"{b / a:.3f}" if ratio_too and a and b is not None else ""
        lines.append(f"| {name} | {fmt(a)} | {fmt(b)} | {r} |")

    row("wall time", "wall_s")
    row("CPU time (user + sys)", "cpu_s")
    row("start-up + backbone features of the splits", "features_s")
    row("view bank", "bank_s")
    row("the runs (after the bank to the last record)", "runs_s")
    row("sum of the runs' seconds", "run_seconds")
    row("tables and exit", "tail_s")
    row("peak RSS", "maxrss_gb", fmt=lambda v: "–" if v is None else f"{v:.2f} GB")
    lines.append(f"| runs done / failed | {old['runs'] - old['failed']} / {old['failed']} | "
                 f"{new['runs'] - new['failed']} / {new['failed']} | |")
    lines.append(f"| exit code | {old['returncode']} | {new['returncode']} | |")
    lines.append(f"| load average before -> after (1 min) | {old['load_before'][0]:.2f} -> {old['load_after'][0]:.2f} "
                 f"| {new['load_before'][0]:.2f} -> {new['load_after'][0]:.2f} | |")
    lines += ["", "Seconds of the runs, by method (the records' `seconds`):", "",
              "| method | old | new | new / old |", "|---|---|---|---|"]
    for method in sorted(set(old["per_method"]) | set(new["per_method"])):
        a, b = old["per_method"].get(method), new["per_method"].get(method)
        lines.append(f"| {method} | {seconds(a)} | {seconds(b)} | {f'{b / a:.3f}' if a and b else ''} |")
    lines += ["", "mAP (mean over seeds) beside the reference (`results/reference/tables/map.md`), "
              "differences in points:", "",
              "| method | bits | reference | old | new | new - reference | new - old |", "|---|---|---|---|---|---|---|"]
    for key in sorted(set(ref) | set(cells["new"]) | set(cells["old"])):
        r, a, b = ref.get(key), cells["old"].get(key), cells["new"].get(key)
        if a is None and b is None:
            continue
        fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        diff = lambda x, y: "–" if x is None or y is None else f"{100 * (x - y):+.2f}"  # noqa: E731
        lines.append(f"| {key[0]} | {key[1]} | {fmt(r)} | {fmt(a)} | {fmt(b)} | {diff(b, r)} | {diff(b, a)} |")
    lines += ["", "The new run's log (stderr), last lines:", "", "```", *new["log_tail"], "```", ""]
    lines += ["Raw figures:", "", "```json", json.dumps({"old": strip(old), "new": strip(new)}, indent=1), "```", ""]
    return "\n".join(lines)


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("map_table", "log_tail")}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default=BEFORE, help=f"the commit before (default {BEFORE[:12]})")
    parser.add_argument("--new", default="HEAD", help="the commit after (default HEAD)")
    parser.add_argument("--order", choices=["old-new", "new-old"], default="old-new")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "hashbench-bench-cold")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cold_default.md")
    parser.add_argument("--quick", action="store_true", help=f"the grid {' '.join(QUICK)} (checks the script)")
    parser.add_argument("--grid", default=None,
                        help="other arguments of hashbench run, e.g. '--bits 32 --seeds 0' (a smaller case, not the goal's)")
    parser.add_argument("--keep", action="store_true", help="keep each run's cache and results")
    parser.add_argument("--clean", action="store_true", help="remove the worktrees and venvs afterwards")
    args = parser.parse_args()

    commits = {"old": resolve(args.old), "new": resolve(args.new)}
    args.workdir.mkdir(parents=True, exist_ok=True)
    installs = {label: install(commit, args.workdir) for label, commit in commits.items()}
    print(f"installed: {', '.join(f'{k} {v[:12]} -> {installs[k][1]}' for k, v in commits.items())}", flush=True)
    grid = QUICK if args.quick else shlex.split(args.grid) if args.grid else []
    args.grid_args = grid
    results = {}
    for label in args.order.split("-"):
        print(f"{label}: hashbench run {' '.join(grid)} (cold) ...", flush=True)
        results[label] = run_default(label, installs[label][1], args.workdir, grid, args.keep)
        r = results[label]
        print(f"{label}: {seconds(r['wall_s'])} wall, exit {r['returncode']}, {r['runs']} runs, "
              f"peak RSS {r['maxrss_gb']:.2f} GB", flush=True)
    reference = (installs["new"][0] / REFERENCE).read_text()
    text = report(results["old"], results["new"], commits, reference, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"report: {args.out}")
    if args.clean:
        for tree, venv in installs.values():
            git("worktree", "remove", "--force", str(tree))
            shutil.rmtree(venv, ignore_errors=True)


if __name__ == "__main__":
    main()
