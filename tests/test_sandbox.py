"""Sandbox containment: every hostile program is stopped, reported with a reason, and the caller survives."""

from __future__ import annotations

import os
import time

import pytest

from phiforge.eval.tasks.code import humaneval_program, load_humaneval
from phiforge.sandbox import Limits, network_isolated, run_many, run_program

FAST = Limits(timeout=3, cpu_seconds=3, memory_mb=512)


def _group_gone(pgid: int) -> bool:
    for _ in range(50):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow  # all 164 HumanEval solutions through the sandbox, ~10 s
def test_humaneval_canonical_solutions_all_pass_with_workers():
    items = load_humaneval(None, None, 0)
    assert len(items) == 164
    progs = [humaneval_program(it, it.meta["canonical_solution"]) for it in items]
    res = run_many(progs, Limits(timeout=20, cpu_seconds=20), workers=4)
    failed = [(it.id, r.status, r.detail) for it, r in zip(items, res, strict=True) if not r.passed]
    assert not failed, failed[:5]


def test_wrong_solution_fails_with_assertion():
    it = load_humaneval(None, 1, 0)[0]  # has_close_elements
    r = run_program(humaneval_program(it, "    return False\n"), FAST)
    assert r.status == "failed" and "AssertionError" in r.detail


def test_exception_is_an_error_not_a_failure():
    r = run_program("def f():\n    return 1 / 0\nf()\n", FAST)
    assert r.status == "error" and "ZeroDivisionError" in r.detail


def test_infinite_loop_times_out():
    t0 = time.perf_counter()
    r = run_program("while True:\n    pass\n", Limits(timeout=1.5, cpu_seconds=30))
    assert r.status == "timeout" and "wall-clock" in r.detail
    assert time.perf_counter() - t0 < 10


def test_sleeping_child_is_killed_with_the_group(tmp_path):
    # the candidate spawns a grandchild that would outlive it; guard off so the fork is allowed
    pidfile = tmp_path / "pids"
    prog = (
        "import os, time\n"
        f"pid = os.fork()\nopen({str(pidfile)!r}, 'a').write(f'{{os.getpid()}} {{pid}}\\n')\n"
        "if pid == 0:\n    time.sleep(60)\nwhile True:\n    pass\n"
    )
    r = run_program(prog, Limits(timeout=1.5, cpu_seconds=30, nproc=4, guard=False))
    assert r.status == "timeout"
    pids = [int(x) for x in pidfile.read_text().split()]
    lines = [tuple(pids[i : i + 2]) for i in range(0, len(pids), 2)]
    leader = next(me for me, forked in lines if forked != 0)  # Popen's child: its pid is the group id
    assert _group_gone(leader)
    for pid in {p for p in pids if p}:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_cpu_limit_reports_timeout():
    r = run_program("while True:\n    pass\n", Limits(timeout=20, cpu_seconds=1))
    assert r.status == "timeout" and "CPU" in r.detail


@pytest.mark.parametrize("guard", [True, False])
def test_fork_bomb_is_contained(guard, tmp_path):
    if not guard and os.getuid() == 0:
        pytest.skip(
            "RLIMIT_NPROC does not bind root: without the audit hook a real fork bomb would be bounded only by the wall clock"
        )
    pidfile = tmp_path / "pgid"
    prog = f"import os\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\n" if not guard else ""
    prog += "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = run_program(prog, Limits(timeout=2, cpu_seconds=5, nproc=8, guard=guard))
    if guard:  # an uncaught refused fork is an error that names it
        e = run_program("import os\nos.fork()\n", FAST)
        assert e.status == "error" and "os.fork" in e.detail
    assert not r.passed
    # with the audit hook every fork is refused; without it RLIMIT_NPROC caps the tree; either way the
    # bomb spins (it swallows the errors) until the wall-clock timeout kills the whole process group
    assert r.status == "timeout", r
    if not guard:  # the candidate led its own process group: nothing of it is left
        assert _group_gone(int(pidfile.read_text()))


def test_memory_hog_is_stopped():
    r = run_program("x = bytearray(8 << 30)\n", FAST)
    assert r.status == "memory"
    r = run_program("xs = []\nwhile True:\n    xs.append(bytearray(50 << 20))\n", FAST)
    assert r.status == "memory"


def test_write_outside_its_directory_is_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    for prog in (
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
        f"import shutil\nshutil.copyfile('candidate.py', {str(target)!r})",
    ):
        r = run_program(prog, FAST)
        assert r.status == "error" and "sandbox" in r.detail, (prog, r)
    assert not target.exists()
    r = run_program(f"import os\nos.remove({str(tmp_path)!r})", FAST)
    assert r.status == "error" and tmp_path.exists()


def test_reading_callers_files_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    r = run_program(f"print(open({str(secret)!r}).read())", FAST)
    assert r.status == "error" and "may not read" in r.detail


def test_no_process_spawning_behind_the_hook(tmp_path):
    for prog in (
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
        "import _posixsubprocess",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
        "import ctypes\nctypes.CDLL(None).fork()",
    ):
        r = run_program(prog, FAST)
        assert r.status == "error" and "sandbox" in r.detail, (prog, r)
    r = run_program(f"import os\nos.listdir({str(tmp_path)!r})", FAST)
    assert r.status == "error" and "may not list" in r.detail


def test_own_directory_is_writable_and_stdlib_importable():
    prog = (
        "import collections, heapq, itertools, json, math, re, string, fractions\n"
        "open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n"
    )
    assert run_program(prog, FAST).passed


def test_no_network():
    r = run_program("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)", FAST)
    assert r.status == "error" and "socket" in r.detail
    if not network_isolated():
        pytest.skip("this kernel refuses unprivileged network namespaces; only the audit hook blocks sockets")
    r = run_program(
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)", Limits(timeout=5, guard=False)
    )
    assert r.status == "error" and ("unreachable" in r.detail.lower() or "OSError" in r.detail), r
