"""Run a graph of resumable jobs on a few worker processes (used by `speechft reproduce`).

A :class:`Job` names a top-level function, its keyword arguments, the jobs it waits for and the
files that prove it done. :func:`run_jobs` skips every job already recorded as done (with its outputs
present), then runs the rest:

* ``workers == 1``: one after the other in this process, dependencies first;
* ``workers > 1``: on a pool of spawned processes, each limited to ``threads`` torch threads, the
  most urgent ready job first (:func:`_priorities`: the longer of the chain of cost estimates after
  it and the work it gates, shared among the workers).

On small CPU machines two single-thread workers beat one two-thread process: two torch threads on
2 cores ran the probe stages 1.41x slower than two concurrent single-thread processes (measured in
docs/benchmarks.md). Jobs must not share output files, except append-only JSONL logs (each record
is one ``write`` on an ``O_APPEND`` descriptor: concurrent appends never interleave).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .io import append_jsonl, read_jsonl
from .names import by_name as index_by_name

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    fn: Callable[..., object]  # a module-level function (it is pickled to reach a worker)
    kwargs: dict = field(default_factory=dict)
    deps: tuple = ()
    outputs: tuple = ()  # paths that must exist for a recorded "done" to count
    cost: float = 1.0  # rough seconds, only to order ready jobs


class Stages:
    """Bookkeeping in ``stages.jsonl``: one record per finished job (wall seconds, start, end, worker)."""

    def __init__(self, out: Path):
        self.path = Path(out) / "stages.jsonl"
        self.done = {r["stage"]: r for r in read_jsonl(self.path) if r.get("status") == "done"}

    def is_done(self, job: Job) -> bool:
        return job.name in self.done and all(Path(p).exists() for p in job.outputs)

    def record(self, name: str, started: float, finished: float, worker: Optional[int] = None) -> None:
        rec = {"stage": name, "status": "done", "seconds": round(finished - started, 1), "started": started,
               "finished": finished}
        if worker is not None:
            rec["worker"] = worker
        append_jsonl(self.path, rec)
        self.done[name] = rec


def seconds_by_stage(records) -> dict[str, list[float]]:
    """Job seconds grouped by stage, in order of first start: a job named ``"<stage> / <task>"``
    counts toward ``<stage>``. ``records``: ``stages.jsonl`` records (dicts with ``stage``, ``seconds``
    and, when known, ``started``)."""
    out: dict[str, list[float]] = {}
    for r in sorted(records, key=lambda r: r.get("started", 0.0)):
        out.setdefault(r["stage"].split(" / ")[0], []).append(r["seconds"])
    return out


@contextlib.contextmanager
def intra_op_threads(n: Optional[int]):
    """Set torch's intra-op threads to ``n`` for the block and restore the count on exit (``None``:
    leave it as it is). Many small torch ops run faster on one thread than split across several:
    the hand-offs dominate, and on a busy machine every op waits for a descheduled thread."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(workers: Optional[int] = None) -> tuple[int, int]:
    """(workers, torch threads per worker): by default one process on a GPU machine (the device is
    shared), otherwise up to 4 processes; the CPU cores are split among the workers."""
    cores = usable_cores()
    if workers is None:
        import torch

        workers = 1 if torch.cuda.is_available() else max(1, min(4, cores))
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    return workers, max(1, cores // workers)


def _priorities(jobs: dict[str, Job], workers: int = 1) -> dict[str, float]:
    """How urgent each job is (bigger = start sooner): its cost plus the larger of the longest chain of
    costs after it and the work it gates (all its descendants' costs) shared among the workers."""
    children: dict[str, list[str]] = {n: [] for n in jobs}
    for j in jobs.values():
        for d in j.deps:
            if d in children:
                children[d].append(j.name)
    chain: dict[str, float] = {}
    below: dict[str, set] = {}

    def visit(n: str) -> None:
        if n in chain:
            return
        for c in children[n]:
            visit(c)
        chain[n] = jobs[n].cost + max((chain[c] for c in children[n]), default=0.0)
        below[n] = set().union(*([{c} | below[c] for c in children[n]] or [set()]))

    for n in jobs:
        visit(n)
    return {n: jobs[n].cost + max(chain[n] - jobs[n].cost, sum(jobs[c].cost for c in below[n]) / max(1, workers))
            for n in jobs}


def _check_graph(jobs: Sequence[Job]) -> dict[str, Job]:
    by_name = index_by_name(jobs, "job")
    for j in jobs:
        missing = [d for d in j.deps if d not in by_name]
        if missing:
            raise ValueError(f"job {j.name!r} depends on unknown job(s): {', '.join(missing)}")
    seen, stack = set(), set()

    def visit(n):
        if n in stack:
            raise ValueError(f"jobs form a cycle through {n!r}")
        if n not in seen:
            stack.add(n)
            for d in by_name[n].deps:
                visit(d)
            stack.discard(n)
            seen.add(n)

    for n in by_name:
        visit(n)
    return by_name


def _init_worker(threads: int, level: int) -> None:
    import tqdm
    import tqdm.auto
    import tqdm.std

    class _Quiet(tqdm.std.tqdm):  # the parent shows one bar for the whole graph
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    tqdm.tqdm = tqdm.auto.tqdm = tqdm.std.tqdm = _Quiet
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s [worker {os.getpid()}] %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    import torch

    torch.set_num_threads(threads)


def _call(fn: Callable, kwargs: dict) -> tuple[float, float, int]:
    t0 = time.time()
    fn(**kwargs)
    return t0, time.time(), os.getpid()


def run_jobs(jobs: Sequence[Job], stages: Stages, workers: int = 1, threads: Optional[int] = None,
             progress: bool = True) -> None:
    """Run every job not yet done; a failing job stops the graph (jobs already running finish and
    are recorded, so a rerun resumes after them) and its error is raised here."""
    by_name = _check_graph(jobs)
    pending = {n: j for n, j in by_name.items() if not stages.is_done(j)}
    for n in by_name:
        if n not in pending:
            log.info("%s: done already (%.0f s), skipping", n, stages.done[n]["seconds"])
    if not pending:
        return
    prio = _priorities(by_name, workers)
    finished = {n for n in by_name if n not in pending}

    def ready() -> list[str]:
        return sorted((n for n, j in pending.items() if all(d in finished for d in j.deps)), key=lambda n: -prio[n])

    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), desc="reproduce", unit="job", disable=not progress or workers == 1)
    try:
        if workers <= 1:
            while pending:
                name = ready()[0]
                job = pending.pop(name)
                log.info("stage %s: starting", name)
                t0, t1, _ = _call(job.fn, job.kwargs)
                stages.record(name, t0, t1)
                finished.add(name)
            return
        import multiprocessing

        threads = threads or 1
        level = logging.getLogger().getEffectiveLevel()
        running: dict[Future, str] = {}
        error: Optional[BaseException] = None
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads, level)) as pool:
            while (pending or running) and not (error and not running):
                if error is None:
                    for name in ready():
                        if len(running) >= workers:
                            break
                        job = pending.pop(name)
                        log.info("stage %s: starting", name)
                        running[pool.submit(_call, job.fn, job.kwargs)] = name
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    try:
                        t0, t1, pid = fut.result()
                    except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others finish
                        log.error("stage %s failed: %s", name, exc)
                        error = error or exc
                        continue
                    stages.record(name, t0, t1, worker=pid)
                    finished.add(name)
                    log.info("stage %s: done in %.0f s", name, t1 - t0)
                    bar.update(1)
                    bar.set_postfix_str(", ".join(sorted(running.values()))[:60])
        if error is not None:
            raise error
    finally:
        bar.close()
