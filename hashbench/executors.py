"""The built-in executors: ``local`` (in this process, or ``--jobs N`` worker processes),
``ray`` (one Ray task per run) and ``slurm`` (one submitit job array per grid).

Every executor ships the same function, :func:`hashbench.runner.execute`, which writes the run
record itself, so all of them write the same records. When the process running a run dies
(killed, out of memory, node lost), the driver records that run as failed with
:func:`hashbench.runner.record_lost_run` and the grid goes on; the next ``hashbench run`` redoes
it. ray and submitit are imported only when their executor is used: this module is imported by
every command, through the registry.

Each Config field is declared with :func:`hashbench.params.param` (limits and a one-line doc,
checked by :func:`hashbench.components.build_config`) and is an option of ``hashbench run`` and
``hashbench ablate``: ``--<field-with-dashes>``, or the flag a class names in ``cli_options``
(``ray``'s ``address`` is ``--ray-address``); see :func:`hashbench.cli.executor_flags`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import shutil
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing.connection import wait as wait_ready
from pathlib import Path
from typing import Any, ClassVar

from . import hookimpl
from .components import Executor
from .errors import HashbenchError
from .params import param


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _require(module: str, extra: str, executor: str) -> Any:
    """Import an optional dependency, or raise a one-line error with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise HashbenchError(
            f"executor {executor} needs the {module} package: pip install 'hashbench[{extra}]'"
        ) from None


def _lost(task: Any, error: str, started_at: str | None, t0: float | None) -> dict[str, Any]:
    """The driver's side of a run whose worker died: record it failed (see record_lost_run)."""
    from .runner import record_lost_run

    seconds = None if t0 is None else time.perf_counter() - t0
    return record_lost_run(task, error, started_at=started_at, seconds=seconds)


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


# ----------------------------------------------------------------------------- local

def describe_exit(exitcode: int | None) -> str:
    """``killed by signal 9 (SIGKILL)``, ``exit code 3``: how a worker process ended."""
    if exitcode is None:
        return "no exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-exitcode} ({name})"
    return f"exit code {exitcode}"


def _worker_loop(fn: Callable[[Any], Any], conn: Any) -> None:
    """A worker process of ``local --jobs N``: run the tasks the driver sends, send back results."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the driver stops the workers
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the driver is gone
            return
        if task is None:
            return
        try:
            message = ("result", fn(task))
        except Exception as exc:  # noqa: BLE001 -- execute records a failing run itself; this is anything else
            message = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        try:
            conn.send(message)
        except OSError:  # BrokenPipeError: the driver was killed; the run's record is on disk
            return


class _Worker:
    """One worker process, the driver's end of its pipe, and the task it is running."""

    def __init__(self, ctx: Any, fn: Callable[[Any], Any]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_loop, args=(fn, child), name="hashbench-worker", daemon=True)
        self.process.start()
        child.close()
        self.task: Any = None
        self.started_at: str | None = None
        self.t0: float | None = None

    def assign(self, task: Any) -> bool:
        """Send ``task``; False if the worker is already gone (the task was not started)."""
        try:
            self.conn.send(task)
        except OSError:  # BrokenPipeError: it died while idle
            return False
        self.task, self.started_at, self.t0 = task, _now(), time.perf_counter()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        if self.task is None and self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(timeout)
        if self.process.is_alive():  # busy (interrupted grid) or not stopping: its run stays undone
            self.process.terminate()
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.conn.close()


def pool_map(fn: Callable[[Any], Any], tasks: Sequence[Any], jobs: int,
             start_method: str = "spawn") -> Iterator[Any]:
    """Run ``fn`` over ``tasks`` in ``jobs`` worker processes; yield results as they complete.

    Each worker has its own pipe, so the driver always knows which task each one runs. A worker
    that dies (its pipe closes or its process ends) gets its task recorded as failed, with the
    signal or exit code, and is replaced while tasks remain. Workers are started with ``spawn``
    (torch may be loaded in the driver; a spawned worker inherits its environment and sys.path,
    so it loads the same plugins from entry points).
    """
    ctx = multiprocessing.get_context(start_method)
    queue = deque(tasks)
    workers: list[_Worker] = []

    def feed(worker: _Worker) -> None:
        """Give ``worker`` the next task; replace it if it is gone; stop it if none is left."""
        while queue:
            task = queue.popleft()
            if worker.assign(task):
                return
            queue.appendleft(task)
            worker.stop(timeout=1.0)
            workers.remove(worker)
            worker = _Worker(ctx, fn)
            workers.append(worker)
        worker.task = None

    try:
        for _ in range(min(jobs, len(queue))):
            workers.append(_Worker(ctx, fn))
            feed(workers[-1])
        while True:
            busy = [w for w in workers if w.task is not None]
            if not busy:
                break
            ready = set(wait_ready([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                message = None
                if worker.conn in ready:
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):  # its end of the pipe closed: it died
                        pass
                elif worker.process.sentinel not in ready:
                    continue
                if message is None:  # the worker died while running worker.task
                    worker.process.join(5.0)
                    if worker.process.is_alive():  # pipe closed but alive: not a worker any more
                        worker.process.kill()
                        worker.process.join(5.0)
                    lost, started_at, t0 = worker.task, worker.started_at, worker.t0
                    error = f"worker died: {describe_exit(worker.process.exitcode)}"
                    worker.task = None
                    worker.stop(timeout=1.0)
                    workers.remove(worker)
                    if queue:  # a replacement takes the next task
                        workers.append(_Worker(ctx, fn))
                        feed(workers[-1])
                    yield _lost(lost, error, started_at, t0)
                    continue
                task = worker.task
                worker.task = None
                if message[0] == "error":  # as the sequential executor would, stop the grid
                    raise RuntimeError(
                        f"run {getattr(getattr(task, 'config', None), 'run_id', task)}: a worker raised "
                        f"{message[1]}\n\nin the worker: {message[2]}"
                    )
                feed(worker)
                yield message[1]
    finally:
        for worker in workers:
            worker.stop(timeout=5.0)


class LocalExecutor(Executor):
    """Runs the tasks in this process, in order; or in ``jobs`` worker processes."""

    name = "local"
    summary = "run the grid on this machine: sequentially in this process, or in --jobs N worker processes"

    @dataclass(frozen=True)
    class Config:
        jobs: int = param(1, ge=1, doc="worker processes; 1 runs the grid in this process, one run after another")

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        if self.config.jobs == 1:
            for task in tasks:
                yield fn(task)
            return
        yield from pool_map(fn, list(tasks), self.config.jobs)


# ----------------------------------------------------------------------------- ray

#: environment variables a joined Ray cluster's workers get from the driver
FORWARDED_ENV_PREFIXES = ("HASHBENCH_", "HF_", "OMP_", "TORCH_HOME")


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def _ray_error(exc: BaseException) -> str:
    """One line for a Ray task that did not return: its worker died, or (rarely) it raised."""
    cause = getattr(exc, "cause", None)
    if type(exc).__name__.startswith("RayTaskError") and cause is not None:
        return f"worker raised {type(cause).__name__}: {_first_line(str(cause))}"
    return f"worker died: {type(exc).__name__}: {_first_line(str(exc))}"


class RayExecutor(Executor):
    """One Ray task per run, each with its resource request."""

    name = "ray"
    summary = "one Ray task per run, on a local Ray instance or a cluster (--ray-address); needs hashbench[ray]"

    #: ``address`` keeps the flag it has always had
    cli_options: ClassVar[dict[str, str | None]] = {"address": "--ray-address"}

    @dataclass(frozen=True)
    class Config:
        address: str | None = param(None, doc="join this Ray cluster (e.g. ray://head:10001 or auto); "
                                    "unset: start a local Ray instance")
        num_cpus: int | None = param(None, ge=1, doc="CPUs of the local Ray instance (unset: all); "
                                     "ignored when joining a cluster")
        cpus_per_run: float = param(1.0, gt=0, doc="CPUs per run")
        gpus_per_run: float = param(0.0, ge=0, doc="GPUs per run")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        _require("ray", "ray", self.name)

    def _init(self, ray: Any) -> bool:
        """Start or join Ray unless this process already did; True if this call did."""
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
        if self.config.address:
            kwargs.update(address=self.config.address, runtime_env={"env_vars": _forwarded_env()})
        else:
            kwargs.update(num_cpus=self.config.num_cpus, include_dashboard=False)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"join the Ray cluster at {self.config.address}" if self.config.address else "start Ray"
            raise HashbenchError(f"executor ray: cannot {where}: {_first_line(str(exc))}") from None
        return True

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        ray = _require("ray", "ray", self.name)
        started = self._init(ray)
        pending: dict[Any, tuple[Any, str, float]] = {}
        try:
            remote = ray.remote(fn).options(
                num_cpus=self.config.cpus_per_run, num_gpus=self.config.gpus_per_run, max_retries=0)
            for task in tasks:
                pending[remote.remote(task)] = (task, _now(), time.perf_counter())
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task, started_at, t0 = pending.pop(ref)
                    try:
                        summary = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # WorkerCrashedError, RayTaskError, ...
                        summary = _lost(task, _ray_error(exc), started_at, t0)
                    yield summary
        finally:
            if started:
                ray.shutdown()  # also stops what is still running (an interrupted grid)
            else:
                for ref in pending:
                    ray.cancel(ref, force=True)


# ----------------------------------------------------------------------------- slurm

SUBMITIT_CLUSTERS = ("slurm", "local", "debug")


def _submitit_error(job: Any, exc: BaseException, cluster: str) -> str:
    """One line for a submitit job that did not return a summary."""
    kind = type(exc).__name__
    if kind == "UncompletedJobError":  # no result: killed, out of memory, timed out, node lost
        state = ""
        if cluster == "slurm":
            with contextlib.suppress(Exception):  # sacct cannot be asked
                state = f" (Slurm state {job.state})"
        return f"worker died: job {job.job_id} ended without a result{state}"
    if kind == "FailedJobError" and "----------------------" in str(exc):  # the function raised
        trace = [line.strip() for line in str(exc).split("----------------------")[1].splitlines() if line.strip()]
        return f"job {job.job_id} raised {trace[-1] if trace else '?'}"
    return f"job {job.job_id} raised {kind}: {_first_line(str(exc))}"


class SlurmExecutor(Executor):
    """One submitit job per run, submitted as one job array per grid."""

    name = "slurm"
    summary = "one Slurm job array per grid through submitit (cluster=local: on this machine); needs hashbench[slurm]"

    @dataclass(frozen=True)
    class Config:
        partition: str | None = param(None, doc="the Slurm partition (unset: the cluster's default)")
        cpus_per_run: int = param(1, ge=1, doc="CPUs per run")
        gpus_per_run: int = param(0, ge=0, doc="GPUs per run")
        time: int = param(60, ge=1, doc="time limit of each run, in minutes")
        mem_gb: int | None = param(None, ge=1, doc="memory of each run in GB (unset: the cluster's default)")
        cluster: str = param("slurm", choices=SUBMITIT_CLUSTERS,
                             doc="where the jobs run: slurm; local: processes on this machine; debug: in this process")
        array_parallelism: int | None = param(None, ge=1, doc="runs at once: Slurm's array throttle (unset: "
                                              "submitit's default); on a local cluster, unset is the CPU count")
        folder: str | None = param(None, doc="where submitit writes its job files and logs "
                                   "(unset: <results dir>/slurm)")
        poll_s: float = param(1.0, gt=0, doc="seconds between polls of the jobs' state")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        c = self.config
        _require("submitit", "slurm", self.name)
        if c.cluster == "slurm" and shutil.which("sbatch") is None:
            raise HashbenchError("executor slurm: no Slurm here (sbatch not found); --cluster local (or the "
                                 "experiment file's executor_params: {cluster: local}) runs the jobs on this machine")

    def _executor(self, folder: Path) -> Any:
        submitit = _require("submitit", "slurm", self.name)
        c = self.config
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=c.cluster)
        except (RuntimeError, ValueError) as exc:
            raise HashbenchError(f"executor slurm: cannot use cluster {c.cluster}: {_first_line(str(exc))}") from None
        params: dict[str, Any] = {"name": "hashbench", "timeout_min": c.time, "cpus_per_task": c.cpus_per_run,
                                  "gpus_per_node": c.gpus_per_run}
        if c.mem_gb is not None:
            params["mem_gb"] = c.mem_gb
        if c.partition is not None:
            params["slurm_partition"] = c.partition
        if c.array_parallelism is not None:
            params["slurm_array_parallelism"] = c.array_parallelism
        executor.update_parameters(**params)
        return executor

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        c = self.config
        pending = deque(tasks)
        if not pending:
            return
        folder = Path(c.folder) if c.folder else Path(pending[0].results_dir) / "slurm"
        executor = self._executor(folder)
        # Slurm gets the whole grid as one array (it throttles it itself); a local cluster would
        # start every job at once, so it gets chunks that keep array_parallelism jobs running
        limit = c.array_parallelism or os.cpu_count() or 1
        running: dict[str, tuple[Any, Any, str, float]] = {}
        try:
            while pending or running:
                room = len(pending) if c.cluster == "slurm" else min(len(pending), limit - len(running))
                if room > 0:
                    batch = [pending.popleft() for _ in range(room)]
                    jobs = executor.map_array(fn, batch)
                    started_at, t0 = _now(), time.perf_counter()
                    for job, task in zip(jobs, batch):
                        if c.cluster != "slurm":  # no shared filesystem to wait for
                            job._results_timeout_s = 0
                        running[job.job_id] = (job, task, started_at, t0)
                finished = [job_id for job_id, (job, *_) in running.items() if job.done()]
                if not finished:
                    time.sleep(c.poll_s)
                    continue
                for job_id in finished:
                    job, task, started_at, t0 = running.pop(job_id)
                    try:
                        summary = job.result()
                    except Exception as exc:  # noqa: BLE001 -- UncompletedJobError (died), FailedJobError (raised)
                        summary = _lost(task, _submitit_error(job, exc, c.cluster), started_at, t0)
                    yield summary
        finally:
            for job, *_ in running.values():  # an interrupted grid: stop what it submitted
                with contextlib.suppress(Exception):
                    job.cancel(check=False)


@hookimpl
def register_executors():
    return [LocalExecutor, RayExecutor, SlurmExecutor]
