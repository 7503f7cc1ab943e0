"""Progress a log can show: one line per finished step of a long command, when stderr is not a
terminal (a log file, CI, Slurm), where progress bars stay silent.

:class:`StepLog` prints ``hashbench: <what> done (<i>/<n> <unit>): <detail>; elapsed <t>, about
<t> left`` after each step. The estimate of what remains is the mean cost per unit of work of
the finished steps (work: images for a cache pass, runs for a grid; a run is weighted by what
finished runs of the same method took) times the work left, scaled by wall time over the summed
step times (so parallel workers count).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO


def logs_progress(progress: bool = True, stream: TextIO | None = None) -> bool:
    """Whether to print progress lines: ``progress`` asked for and ``stream`` (stderr) is no terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(progress) and not (isatty is not None and isatty())


def duration(seconds: float) -> str:
    """``42.0s``, ``3m05s`` or ``1h02m``: seconds for a log line."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class StepLog:
    """Lines for ``steps`` = [(key, group, work)], each step's ``work`` (> 0; e.g. images) in
    units of ``unit``; ``group``: steps of one group cost alike (a method's runs), None for none.

    ``done(key, seconds, detail)`` prints the line of a finished step (``seconds``: what the step
    itself took, None when unknown, e.g. a cache hit costs ~0 and says so in ``detail``).
    Disabled (prints nothing) when ``enabled`` is false.
    """

    def __init__(self, what: str, steps: Sequence[tuple[str, Any, float]], unit: str,
                 enabled: bool = True, stream: TextIO | None = None) -> None:
        self.what, self.unit, self.enabled = what, unit, enabled
        self.stream = stream
        self.pending = {key: (group, float(work)) for key, group, work in steps}
        self.total = len(self.pending)
        self.finished = 0
        self.spent: dict[Any, list[float]] = {}  # group -> [seconds, work] of finished steps
        self.step_seconds = 0.0
        self.start = time.perf_counter()

    def done(self, key: str, seconds: float | None = None, detail: str = "") -> None:
        group, work = self.pending.pop(key, (None, 0.0))
        self.finished += 1
        if seconds is not None:
            spent = self.spent.setdefault(group, [0.0, 0.0])
            spent[0] += seconds
            spent[1] += work
            self.step_seconds += seconds
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        left = self.estimate_left(elapsed)
        tail = f"; elapsed {duration(elapsed)}" + (f", about {duration(left)} left" if left is not None else "")
        stream = sys.stderr if self.stream is None else self.stream
        print(f"hashbench: {self.what} {self.finished}/{self.total} done: {detail or key}{tail}",
              file=stream, flush=True)

    def estimate_left(self, elapsed: float) -> float | None:
        """Seconds the pending steps should take (None before any step with a cost finished)."""
        if not self.pending:
            return 0.0
        seconds = sum(s for s, _ in self.spent.values())
        work = sum(w for _, w in self.spent.values())
        if work <= 0 or seconds <= 0:
            return None
        rate = seconds / work
        left = 0.0
        for group, step_work in self.pending.values():
            s, w = self.spent.get(group, (0.0, 0.0))
            left += step_work * (s / w if group is not None and w > 0 else rate)
        return left * (elapsed / self.step_seconds if self.step_seconds > 0 else 1.0)
