"""The runs of a comparison in worker processes on this machine, or as Ray tasks on a cluster.

Both run :func:`losskit.arena.runner.run_one`, the code a single process runs, so seeding,
checkpoints and the rules for reading them are the same. The results do not depend on how the
runs are scheduled: each run seeds its own RNG, takes its batch order from ``(seed, epoch)``,
and computes with ``threads`` threads (see :mod:`losskit.arena.runner`).

**Worker processes** (``jobs > 1``): a :class:`concurrent.futures.ProcessPoolExecutor` with the
spawn start method (a fresh interpreter per worker: no state copied from the parent, and the
same on Linux, macOS and Windows). The task travels to the workers by pickling. Each worker
ignores Ctrl-C (the main process stops every run through an event that each run checks before
every step, so an interrupted run ends after its last complete epoch and checkpoint), and exits
as soon as the main process is gone, even killed with ``kill -9``, so that no orphan keeps
writing checkpoints that a resumed comparison reads. Warnings raised in a worker (a checkpoint
that is not used) are shown by the main process.

**Ray** (``executor="ray"``): every run is a Ray task asking for ``threads`` CPUs, on the
cluster at ``address`` (or ``ray.init()``'s default: a running local cluster, or a new one that
is shut down at the end). The cluster's nodes need this losskit installed, and ``out`` must be a
folder every node can write (a shared file system), since each run writes its checkpoints
there; a run on a node that cannot see it fails and says so.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import socket
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from losskit.arena.runner import Job, _OtherSettings, _Setup, describe_error, new_run, run_one

__all__ = ["prepare"]

Done = Callable[[dict[str, Any]], None]
_STOP: Any = None  # in a worker process: the main process's stop event


def prepare(setup: _Setup, address: str | None) -> Callable[[list[Job], Done, Any], None]:
    """The function that runs a comparison's jobs on ``setup.executor``, after checking, before
    anything trains, that the task can travel to the workers and that the Ray cluster answers."""
    if setup.executor == "ray":
        return _RayRunner(_connect_ray(address))
    try:
        pickle.dumps(setup.task)
    except Exception as error:  # pickle raises PicklingError, AttributeError or TypeError for local functions
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"jobs {setup.jobs}: the task goes to worker processes by pickling, and this one cannot be "
                         f"pickled ({first[:160]}); define its functions at module level, or use jobs=1") from None
    return _run_pool


# --- worker processes -------------------------------------------------------------------------


def _start_worker(stop: Any, threads: int) -> None:
    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the main process, which stops the runs
    torch.set_num_threads(threads)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True).start()


def _exit_with_parent(sentinel: int) -> None:
    """Wait until the main process is gone, then end this worker at once (mid-run: its checkpoints
    are written atomically, so the last complete one stays usable)."""
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _work(job: Job) -> tuple[dict[str, Any], list[tuple[str, type[Warning]]]]:
    with warnings.catch_warnings(record=True) as caught:
        run = run_one(job, new_run(job.spec, job.seed), stop=_STOP.is_set if _STOP is not None else None)
    return run, [(str(w.message), w.category) for w in caught]


def _collect(future: Future, job: Job, done: Done, bar: Any) -> None:
    """Record a finished future's run (a worker that died makes a failed run); show its warnings."""
    try:
        run, caught = future.result()
    except BrokenProcessPool:
        run, caught = new_run(job.spec, job.seed), []
        run.update(status="failed", error="its worker process ended abruptly (killed, or out of memory)")
    for message, category in caught:
        warnings.warn(message, category, stacklevel=2)
    done(run)
    if bar is not None:
        bar.run_done(run)


def _run_pool(jobs: list[Job], done: Done, bars: Any) -> None:
    if not jobs:
        return
    setup = jobs[0].setup
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    bar = bars.overall(len(jobs), f"in {setup.jobs} processes") if bars is not None else None
    pool = ProcessPoolExecutor(max_workers=setup.jobs, mp_context=context, initializer=_start_worker,
                               initargs=(stop, setup.threads))
    futures = {pool.submit(_work, job): job for job in jobs}
    waiting = set(futures)
    try:
        while waiting:
            finished, waiting = wait(waiting, return_when=FIRST_COMPLETED)
            for future in finished:
                _collect(future, futures[future], done, bar)
    except BaseException:
        # Ctrl-C, or a run that found a checkpoint of other settings: stop every run at its next
        # step, drop those not started, and record what the running ones did.
        stop.set()
        for future in waiting:
            future.cancel()
        for future in wait(waiting).done:
            if not future.cancelled() and future.exception() is None:
                _collect(future, futures[future], done, bar)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- Ray ------------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
    except ModuleNotFoundError:
        raise ModuleNotFoundError("No module named 'ray'", name="ray") from None
    return ray


def _connect_ray(address: str | None) -> bool:
    """Connect to the Ray cluster (or start a local one); whether this call started Ray."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as error:  # ConnectionError, RuntimeError, ValueError: the address does not answer
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        where = f"at {address!r}" if address else "(ray.init() with no address)"
        raise ValueError(f"executor ray: cannot connect to a Ray cluster {where}: {first[:200]}") from None
    return True


def _ray_work(job: Job) -> tuple[dict[str, Any], list[tuple[str, type[Warning]]]]:
    torch.set_num_threads(job.setup.threads)
    if not (job.setup.out / "results.json").exists():  # written by the driver before any run starts
        run = new_run(job.spec, job.seed)
        run.update(status="failed", error=f"the output folder {job.setup.out} is not visible on node "
                   f"{socket.gethostname()}; executor ray needs an --out on a file system every node shares")
        return run, []
    with warnings.catch_warnings(record=True) as caught:
        run = run_one(job, new_run(job.spec, job.seed))
    return run, [(str(w.message), w.category) for w in caught]


class _RayRunner:
    def __init__(self, started: bool) -> None:
        self.started = started

    def __call__(self, jobs: list[Job], done: Done, bars: Any) -> None:
        ray = _import_ray()
        try:
            if jobs:
                self._run(ray, jobs, done, bars)
        finally:
            if self.started:
                ray.shutdown()

    def _run(self, ray: Any, jobs: list[Job], done: Done, bars: Any) -> None:
        remote = ray.remote(_ray_work).options(num_cpus=jobs[0].setup.threads, max_retries=0)
        bar = bars.overall(len(jobs), "as Ray tasks") if bars is not None else None
        pending = {remote.remote(job): job for job in jobs}
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ref)
                try:
                    run, caught = ray.get(ref)
                except ray.exceptions.RayError as error:
                    cause = getattr(error, "cause", None)
                    if isinstance(cause, _OtherSettings):
                        raise ValueError(str(cause)) from None
                    run, caught = new_run(job.spec, job.seed), []
                    run.update(status="failed", error=describe_error(cause if cause is not None else error))
                for message, category in caught:
                    warnings.warn(message, category, stacklevel=2)
                done(run)
                if bar is not None:
                    bar.run_done(run)
        except BaseException:
            for ref, job in pending.items():  # their checkpoints stay; --resume continues them
                ray.cancel(ref)
                done({**new_run(job.spec, job.seed), "status": "interrupted"})
            raise
