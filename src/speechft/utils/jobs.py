"""Run a graph of resumable jobs on a few worker processes (used by `speechft reproduce`).

A :class:`Job` names a top-level function, its keyword arguments, the jobs it waits for and the
files that prove it done. Each job has a provenance key (:func:`job_key`): its function, keyword
arguments, extra ``inputs`` (e.g. the weight fingerprint of a model it reads) and the *results* of
the jobs it consumes (what a job function returns, e.g. the content digest of the model it wrote).
:func:`run_jobs` skips every job recorded as done with an equal key (and its outputs present); a job
whose key changed runs again, after the folders it ``owns`` are cleared (so a fine-tuning never
resumes from a checkpoint made with other settings), and so, through its new result, does
everything downstream of it. Cheap ``always`` jobs (data preparation, dropping scratch features)
run on every call, in this process, and are recorded only when their result changed, so resuming a
finished graph appends nothing to ``stages.jsonl``. The rest runs:

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
import json
import logging
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .io import append_jsonl, read_jsonl
from .names import by_name as index_by_name
from .provenance import changes, key_of

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    fn: Callable[..., object]  # a module-level function (it is pickled to reach a worker)
    kwargs: dict = field(default_factory=dict)
    deps: tuple = ()
    outputs: tuple = ()  # paths that must exist for a recorded "done" to count
    cost: float = 1.0  # rough seconds, only to order ready jobs
    inputs: dict = field(default_factory=dict)  # more provenance (JSON-able), e.g. {"model": <fingerprint>}
    owns: tuple = ()  # folders only this job writes: removed before it runs with a new key
    always: bool = False  # cheap jobs (data preparation, itself cached) that run every time: their result feeds keys
    # Keyword arguments that cannot change the result, only where content-keyed scratch data lives (a
    # feature cache folder): passed to the function like ``kwargs`` but not part of the key, so moving
    # a cache never reruns a job.
    unkeyed: dict = field(default_factory=dict)

    def call_kwargs(self) -> dict:
        """Everything the function is called with: ``kwargs`` and ``unkeyed``."""
        return {**self.kwargs, **self.unkeyed}


def job_key(job: Job, results: dict) -> str:
    """Provenance key of ``job``: its function, kwargs, inputs and the results of its dependencies
    (``results``: dep name -> what that job returned, or its key when it returned nothing)."""
    return key_of(job_provenance(job, results))


def job_provenance(job: Job, results: dict) -> dict:
    return {"fn": f"{job.fn.__module__}.{job.fn.__qualname__}", "kwargs": job.kwargs, "inputs": job.inputs,
            "deps": {d: results[d] for d in job.deps}}


class Stages:
    """Bookkeeping in ``stages.jsonl``: a record when a job starts (its key) and one when it is done
    (key, result, wall seconds, start, end, worker)."""

    def __init__(self, out: Path):
        self.path = Path(out) / "stages.jsonl"
        recs = read_jsonl(self.path)
        self.done = {r["stage"]: r for r in recs if r.get("status") == "done"}
        self.started = {r["stage"]: r for r in recs if r.get("status") == "started"}

    def is_done(self, job: Job, key: Optional[str] = None) -> bool:
        rec = self.done.get(job.name)
        return rec is not None and (key is None or rec.get("key") == key) and all(Path(p).exists() for p in job.outputs)

    def last_key(self, name: str) -> Optional[str]:
        """The key the job last started or finished with (None: never run, or run before keys)."""
        recs = [r for r in (self.done.get(name), self.started.get(name)) if r]
        return max(recs, key=lambda r: r.get("started", 0.0)).get("key") if recs else None

    def start(self, name: str, key: Optional[str], provenance: Optional[dict] = None) -> None:
        rec = {"stage": name, "status": "started", "key": key, "started": time.time()}
        if provenance is not None:
            rec["provenance"] = provenance
        append_jsonl(self.path, rec)
        self.started[name] = rec

    def record(self, name: str, started: float, finished: float, worker: Optional[int] = None,
               key: Optional[str] = None, result=None, provenance: Optional[dict] = None) -> None:
        rec = {"stage": name, "status": "done", "seconds": round(finished - started, 1), "started": started,
               "finished": finished, "key": key, "result": result}
        if worker is not None:
            rec["worker"] = worker
        if provenance is not None:
            rec["provenance"] = provenance
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


def _call(fn: Callable, kwargs: dict) -> tuple[float, float, int, object]:
    t0 = time.time()
    result = fn(**kwargs)
    return t0, time.time(), os.getpid(), result


def _as_json(value):
    """``value`` as it reads back from ``stages.jsonl`` (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


def _clear_owned(job: Job, stages: Stages, key: str, provenance: dict) -> None:
    """Before a job runs with a key other than the one it last ran with (or with no record of
    running), remove what it owns, so it starts from nothing instead of resuming stale state."""
    last = stages.last_key(job.name)
    if last == key:
        return
    for p in job.owns:
        p = Path(p)
        if p.exists():
            old = (stages.started.get(job.name) or stages.done.get(job.name) or {}).get("provenance")
            why = "; ".join(changes(old, provenance)) if old else "no record of its inputs"
            log.info("%s: inputs changed (%s): removing %s and starting again", job.name, why, p)
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_jobs(jobs: Sequence[Job], stages: Stages, workers: int = 1, threads: Optional[int] = None,
             progress: bool = True) -> dict[str, object]:
    """Run every job not done with its current key; returns ``{job name: result}``.

    A job's key is computed once its dependencies have finished (it includes their results). A job
    recorded as done with that key is skipped; otherwise it runs. A failing job stops the graph
    (jobs already running finish and are recorded, so a rerun resumes after them) and its error is
    raised here."""
    by_name = _check_graph(jobs)
    prio = _priorities(by_name, workers)
    results: dict[str, object] = {}
    keys: dict[str, str] = {}
    waiting = dict(by_name)  # not yet finished or skipped
    running: dict = {}  # handle -> name

    def take_ready() -> list[str]:
        """Skip the ready jobs already done with their key and run the cheap ``always`` jobs here;
        return the others, most urgent first."""
        while True:
            ready = [n for n, j in waiting.items() if n not in running.values() and all(d in results for d in j.deps)]
            settled = False
            for n in ready:
                job = by_name[n]
                keys[n] = job_key(job, results)
                if job.always:
                    run_here(n)
                    settled = True
                elif stages.is_done(job, keys[n]):
                    rec = stages.done[n]
                    log.info("%s: done already with the same inputs (%.0f s), skipping", n, rec["seconds"])
                    settle(n, rec.get("result"))
                    settled = True
            if not settled:
                return sorted(ready, key=lambda n: -prio[n])

    def launch(name: str) -> Job:
        job = by_name[name]
        prov = job_provenance(job, results)
        _clear_owned(job, stages, keys[name], prov)
        stages.start(name, keys[name], prov)
        log.debug("stage %s: starting", name)  # the bar names the running jobs; one line when each is done
        return job

    def run_here(name: str) -> None:
        """Run an ``always`` job in this process. It is recorded only when its result differs from
        the one recorded with the same key: resuming a finished run appends nothing to
        ``stages.jsonl``, however often it is resumed."""
        job = by_name[name]
        prov = job_provenance(job, results)
        _clear_owned(job, stages, keys[name], prov)
        t0, t1, _, result = _call(job.fn, job.call_kwargs())
        if stages.is_done(job, keys[name]) and stages.done[name].get("result") == _as_json(result):
            settle(name, result)
            return
        stages.start(name, keys[name], prov)
        finish(name, t0, t1, None, result)

    def finish(name: str, t0: float, t1: float, pid: Optional[int], result) -> None:
        stages.record(name, t0, t1, worker=pid, key=keys[name], result=result,
                      provenance=job_provenance(by_name[name], results))
        settle(name, result)

    def settle(name: str, result) -> None:
        """``name`` is finished: run, run here (``always``) or skipped; what it returned (else its key)
        feeds the keys of the jobs that consume it."""
        results[name] = result if result is not None else keys[name]
        del waiting[name]
        bar.update(1)  # every job counts once

    from tqdm.auto import tqdm

    bar = tqdm(total=len(waiting), desc="reproduce", unit="job", disable=not progress or workers == 1)
    try:
        if workers <= 1:
            while waiting:
                ready = take_ready()
                if not ready:
                    break
                name = ready[0]
                job = launch(name)
                t0, t1, _, result = _call(job.fn, job.call_kwargs())
                finish(name, t0, t1, None, result)
            return results
        import multiprocessing

        threads = threads or 1
        level = logging.getLogger().getEffectiveLevel()
        error: Optional[BaseException] = None
        if not take_ready():  # everything done already (or run here): no worker processes to start
            return results
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads, level)) as pool:
            while waiting:
                if error is None:
                    for name in take_ready():
                        if len(running) >= workers:
                            break
                        job = launch(name)
                        running[pool.submit(_call, job.fn, job.call_kwargs())] = name
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    try:
                        t0, t1, pid, result = fut.result()
                    except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others finish
                        log.error("stage %s failed: %s", name, exc)
                        error = error or exc
                        continue
                    finish(name, t0, t1, pid, result)
                    log.info("stage %s: done in %.0f s", name, t1 - t0)
                    bar.set_postfix_str(", ".join(sorted(running.values()))[:60])
        if error is not None:
            raise error
        return results
    finally:
        bar.close()
