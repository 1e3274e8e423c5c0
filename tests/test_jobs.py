"""The job graph runner behind `speechft reproduce`: order, resume, parallel workers, failures."""
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from speechft.utils.io import append_jsonl, read_jsonl
from speechft.utils.jobs import Job, Stages, run_jobs


def _log(path, name, seconds=0.0, fail=False):
    t0 = time.time()
    time.sleep(seconds)
    if fail:
        raise RuntimeError(f"{name} failed on purpose")
    append_jsonl(path, {"name": name, "start": t0, "end": time.time(), "pid": os.getpid()})


def _jobs(path, fail=()):
    return [
        Job("c", _log, dict(path=path, name="c"), deps=("a", "b")),
        Job("a", _log, dict(path=path, name="a", seconds=0.3, fail="a" in fail)),
        Job("b", _log, dict(path=path, name="b", seconds=0.3, fail="b" in fail)),
    ]


def test_one_worker_runs_dependencies_first_and_resume_skips(tmp_path):
    log = tmp_path / "log.jsonl"
    run_jobs(_jobs(log), Stages(tmp_path), workers=1)
    order = [r["name"] for r in read_jsonl(log)]
    assert order[-1] == "c" and sorted(order) == ["a", "b", "c"]
    assert {r["stage"] for r in read_jsonl(tmp_path / "stages.jsonl") if r["status"] == "done"} == {"a", "b", "c"}
    run_jobs(_jobs(log), Stages(tmp_path), workers=1)  # everything recorded: nothing runs again
    assert len(read_jsonl(log)) == 3


def test_unkeyed_arguments_reach_the_function_but_not_the_key(tmp_path):
    log = tmp_path / "log.jsonl"

    def job(where):
        return [Job("a", _log, dict(path=log, name="a"), unkeyed={"seconds": where})]

    run_jobs(job(0.0), Stages(tmp_path), workers=1)
    assert len(read_jsonl(log)) == 1
    run_jobs(job(0.01), Stages(tmp_path), workers=1)  # only an unkeyed argument changed: done already
    assert len(read_jsonl(log)) == 1
    with pytest.raises(TypeError):  # ...and it is passed: an argument the function lacks fails the call
        run_jobs([Job("b", _log, dict(path=log, name="b"), unkeyed={"nowhere": 1})], Stages(tmp_path), workers=1)


def _read(path, log):
    append_jsonl(log, {"name": "read"})
    return [path.read_text()]


def test_always_jobs_run_every_time_but_are_recorded_only_when_their_result_changes(tmp_path):
    src, log, stages = tmp_path / "src.txt", tmp_path / "log.jsonl", tmp_path / "stages.jsonl"
    src.write_text("one")

    def jobs():
        return [Job("prepare", _read, dict(path=src, log=log), always=True),
                Job("use", _log, dict(path=log, name="use"), deps=("prepare",))]

    run_jobs(jobs(), Stages(tmp_path), workers=1)
    lines = len(read_jsonl(stages))
    run_jobs(jobs(), Stages(tmp_path), workers=1)  # ran again (it is cheap and may see new data), same result
    assert [r["name"] for r in read_jsonl(log)] == ["read", "use", "read"]
    assert len(read_jsonl(stages)) == lines  # a resume of a finished graph writes nothing
    src.write_text("two")  # a new result is recorded, and what consumes it runs again
    run_jobs(jobs(), Stages(tmp_path), workers=1)
    assert [r["name"] for r in read_jsonl(log)][3:] == ["read", "use"]
    done = [r for r in read_jsonl(stages) if r["stage"] == "prepare" and r["status"] == "done"]
    assert [r["result"] for r in done] == [["one"], ["two"]]


def _meet(path, name, other, timeout=60.0):
    """Wait until job ``other`` has started too: only possible when both run at the same time (a
    fixed sleep is not: a second worker process can take longer to start than the first one's job)."""
    t0 = time.time()
    (path.parent / f"{name}.started").touch()
    while not (path.parent / f"{other}.started").exists():
        if time.time() - t0 > timeout:
            raise RuntimeError(f"{name}: {other} did not start within {timeout:.0f} s")
        time.sleep(0.01)
    append_jsonl(path, {"name": name, "start": t0, "end": time.time(), "pid": os.getpid()})


def test_two_workers_run_independent_jobs_at_once(tmp_path):
    log = tmp_path / "log.jsonl"
    jobs = [Job("c", _log, dict(path=log, name="c"), deps=("a", "b")),
            Job("a", _meet, dict(path=log, name="a", other="b")),
            Job("b", _meet, dict(path=log, name="b", other="a"))]
    run_jobs(jobs, Stages(tmp_path), workers=2, threads=1, progress=False)
    recs = {r["name"]: r for r in read_jsonl(log)}
    a, b, c = recs["a"], recs["b"], recs["c"]
    assert a["pid"] != os.getpid() and a["pid"] != b["pid"]  # two worker processes
    assert max(a["start"], b["start"]) < min(a["end"], b["end"])  # a and b overlapped in time
    assert c["start"] >= max(a["end"], b["end"])  # c waited for both
    stages = {r["stage"]: r for r in read_jsonl(tmp_path / "stages.jsonl") if r["status"] == "done"}
    assert set(stages) == {"a", "b", "c"} and all("worker" in r and "started" in r for r in stages.values())


def test_a_failing_job_stops_the_graph_and_keeps_what_finished(tmp_path):
    log = tmp_path / "log.jsonl"
    with pytest.raises(RuntimeError, match="b failed on purpose"):
        run_jobs(_jobs(log, fail=("b",)), Stages(tmp_path), workers=2, threads=1, progress=False)
    recs = read_jsonl(tmp_path / "stages.jsonl")
    assert {r["stage"] for r in recs if r["status"] == "done"} == {"a"}  # a finished and is recorded
    assert {r["stage"] for r in recs if r["status"] == "started"} == {"a", "b"}  # c never started
    run_jobs(_jobs(log), Stages(tmp_path), workers=2, threads=1, progress=False)  # the rerun does b and c only
    assert [r["name"] for r in read_jsonl(log)].count("a") == 1
    assert {r["stage"] for r in read_jsonl(tmp_path / "stages.jsonl") if r["status"] == "done"} == {"a", "b", "c"}


def test_a_done_job_whose_output_vanished_runs_again(tmp_path):
    log, out = tmp_path / "log.jsonl", tmp_path / "out.txt"
    jobs = [Job("a", _log, dict(path=log, name="a"), outputs=(out,))]
    out.write_text("x")
    run_jobs(jobs, Stages(tmp_path))
    out.unlink()
    run_jobs(jobs, Stages(tmp_path))
    assert len(read_jsonl(log)) == 2


@pytest.mark.parametrize("jobs, message", [
    ([Job("a", _log), Job("a", _log)], "duplicate job .a."),
    ([Job("a", _log, deps=("zz",))], "unknown job"),
    ([Job("a", _log, deps=("b",)), Job("b", _log, deps=("a",))], "cycle"),
])
def test_bad_graphs_are_refused_before_anything_runs(tmp_path, jobs, message):
    with pytest.raises(ValueError, match=message):
        run_jobs(jobs, Stages(tmp_path))
    assert not (tmp_path / "stages.jsonl").exists()


def _append_many(path, tag, n):
    for i in range(n):
        append_jsonl(path, {"tag": tag, "i": i, "pad": tag * 20000})  # 20 kB lines: more than one buffer


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "shared.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, tag, 60)) for tag in "xy"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 120
    recs = [json.loads(line) for line in lines]  # every line is one whole record
    assert sorted((r["tag"], r["i"]) for r in recs) == sorted((t, i) for t in "xy" for i in range(60))


def test_jobs_that_gate_more_work_start_first():
    from speechft.utils.jobs import _priorities

    # "gate" is short but five jobs wait for it; "long" is longer with nothing after it
    jobs = {"gate": Job("gate", _log, cost=10), "long": Job("long", _log, cost=50)}
    for i in range(5):
        jobs[f"k{i}"] = Job(f"k{i}", _log, deps=("gate",), cost=30)
    prio = _priorities(jobs, workers=2)
    assert prio["gate"] > prio["long"] > prio["k0"]
    assert prio["gate"] == 10 + 5 * 30 / 2


def _write(path, value, owned=None):
    """A job whose result is the value it wrote (downstream keys depend on it)."""
    if owned is not None:
        Path(owned).mkdir(parents=True, exist_ok=True)
        (Path(owned) / "stale").write_text("x")
    with open(path, "a") as f:
        f.write(f"{value}\n")
    return value


def _runs(path):
    return Path(path).read_text().split() if Path(path).exists() else []


def test_a_changed_input_reruns_that_job_and_what_consumes_its_result_only(tmp_path):
    la, lb, lc, owned = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt", tmp_path / "owned"

    def graph(a_value, b_value):
        return [Job("a", _write, dict(path=str(la), value=a_value)),
                Job("b", _write, dict(path=str(lb), value=b_value, owned=str(owned)), owns=(owned,)),
                Job("c", _write, dict(path=str(lc), value="c"), deps=("a",))]

    run_jobs(graph("a1", "b1"), Stages(tmp_path))
    run_jobs(graph("a1", "b1"), Stages(tmp_path))  # unchanged: nothing runs
    assert (_runs(la), _runs(lb), _runs(lc)) == (["a1"], ["b1"], ["c"])
    (owned / "leftover").write_text("from the old inputs")
    run_jobs(graph("a2", "b2"), Stages(tmp_path))  # a's result changed: c reruns although its kwargs did not
    assert (_runs(la), _runs(lb), _runs(lc)) == (["a1", "a2"], ["b1", "b2"], ["c", "c"])
    assert not (owned / "leftover").exists()  # b's folder was cleared before b ran with other inputs
    run_jobs(graph("a2", "b2"), Stages(tmp_path))
    assert len(_runs(lc)) == 2
