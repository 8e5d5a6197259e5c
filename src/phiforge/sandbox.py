"""Run model-written Python in a contained child process.

Layers, outermost first (each one is a backstop for the next):
1. Process: its own session / process group (`start_new_session`), a fresh temp dir as cwd and HOME, a
   minimal environment, `python -I` (no user site, no PYTHON* variables). On a wall-clock timeout the
   whole group is SIGKILLed, so children and grandchildren die too.
2. Kernel limits (setrlimit in the child before the candidate runs): CPU seconds, address space (memory),
   file size, number of processes, no core dumps.
3. Network: the child tries to enter a new user + network namespace (unshare(CLONE_NEWUSER|CLONE_NEWNET),
   the same as `unshare -rn`); inside it only a downed loopback exists. Where the kernel forbids
   unprivileged user namespaces (some distributions, most containers) this step is skipped and
   `network_isolated()` says so; the audit hook below still refuses socket calls.
4. A Python audit hook (PEP 578; it cannot be removed once installed) that refuses: opening files for
   writing outside the temp dir, reading files outside the temp dir and the Python installation,
   deleting/renaming/chmod or listing directories outside the temp dir, fork/exec/subprocess/os.system
   (and importing _posixsubprocess, whose fork_exec raises no event of its own), sockets, and ctypes
   (which could call libc behind the hook's back).

The kernel exempts root from RLIMIT_NPROC (and the namespace maps root to itself), so when eval runs as root
the process cap is the audit hook's refusal to fork plus the wall-clock kill of the group.

What is guaranteed: the caller survives and gets a verdict within timeout + ~1 s; memory, CPU time, file
size and process count are capped by the kernel; children are killed with the candidate. What is best effort:
filesystem confinement is enforced by the audit hook, not by the kernel, so a C extension that the candidate
can import without ctypes (none in the stdlib writes files) could bypass it; for hostile code at scale, run
the whole evaluation inside a container or VM as well.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

STATUSES = ("passed", "failed", "timeout", "memory", "error")


@dataclass
class ExecResult:
    status: str  # passed | failed (assertion) | timeout | memory | error (any other exception / kill)
    detail: str = ""  # last line of stderr, or why it was killed
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Limits:
    timeout: float = 10.0  # wall clock seconds
    cpu_seconds: int = 10
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    file_mb: int = 16  # largest file it may write
    nproc: int = 1  # processes the candidate may create (the audit hook refuses forks anyway)
    network: bool = False  # True = do not isolate the network
    guard: bool = True  # the audit hook; tests switch it off to check the kernel limits alone


# Runs first in the child, as trusted code: limits, namespaces, audit hook, then the candidate as __main__.
# argv: BOOT prog.py cpu mem_bytes file_bytes nproc net guard
_BOOT = r"""
import os, resource, sys
prog, cpu, mem, fsize, nproc, net, guard = sys.argv[1], *map(int, sys.argv[2:])
sandbox = os.path.dirname(os.path.abspath(prog))
if not net:
    try:  # new user + network namespace: only a downed loopback inside
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(0x10000000 | 0x40000000) == 0:  # CLONE_NEWUSER | CLONE_NEWNET
            for f, s in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                try:
                    with open(f"/proc/self/{f}", "w") as fh:
                        fh.write(s)
                except OSError:
                    pass
            os.environ["PHIFORGE_SANDBOX_NET"] = "isolated"
    except Exception:
        pass
# users may already run more than `nproc` processes: the kernel counts per user, so allow current + nproc
try:
    used = sum(1 for p in os.listdir("/proc") if p.isdigit() and os.stat(f"/proc/{p}").st_uid == os.getuid())
except OSError:
    used = 256
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # soft < hard: SIGXCPU first, not SIGKILL
for lim, val in ( (resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, fsize),
                 (resource.RLIMIT_NPROC, used + nproc), (resource.RLIMIT_CORE, 0)):
    try:
        resource.setrlimit(lim, (val, val))
    except (ValueError, OSError):
        pass
if guard:
    allowed_read = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                          os.path.dirname(os.__file__))} | {sandbox, "/dev/null", "/dev/urandom"})
    writes = ("w", "a", "x", "+")
    denied = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.kill",
              "os.killpg", "subprocess.Popen", "socket.socket", "socket.__new__", "socket.connect",
              "socket.bind", "socket.getaddrinfo", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
              "ctypes.call_function", "os.chdir", "os.symlink", "os.link",
              "pty.spawn", "resource.setrlimit", "os.setuid"}
    one_path = {"os.remove", "os.rmdir", "os.chmod", "os.chown", "os.mkdir", "shutil.rmtree", "os.truncate",
                "os.utime"}
    two_paths = {"os.rename", "shutil.copyfile", "shutil.move"}
    listing = {"os.listdir", "os.scandir"}
    # spawns a process with no audit event of its own (subprocess.Popen raises one, its helper does not)
    no_import = {"_posixsubprocess", "_xxsubinterpreters"}
    realpath, join, isabs = os.path.realpath, os.path.join, os.path.isabs

    def inside(p, roots):
        if isinstance(p, int):
            return True  # an already-open descriptor
        p = os.fsdecode(p)
        p = realpath(p if isabs(p) else join(sandbox, p))
        return any(p == r or p.startswith(r + os.sep) for r in roots)

    def hook(event, args):
        if event in denied or event.startswith("socket."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args[0], args[1], args[2] if isinstance(args[2], int) else 0
            write = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
            write = write or (isinstance(mode, str) and any(c in mode for c in writes))
            if path is not None and not inside(path, (sandbox,) if write else allowed_read):
                raise PermissionError(f"sandbox: may not {'write' if write else 'read'} {path}")
        elif event in one_path or event in two_paths:
            for p in args[: 2 if event in two_paths else 1]:
                if p is not None and not inside(p, (sandbox,)):
                    raise PermissionError(f"sandbox: {event} outside the sandbox: {p}")
        elif event in listing:
            if args[0] is not None and not inside(args[0], allowed_read):
                raise PermissionError(f"sandbox: may not list {args[0]}")
        elif event == "import" and args[0] in no_import:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")

    sys.addaudithook(hook)
sys.argv = [prog]
import runpy
runpy.run_path(prog, run_name="__main__")
"""


def _verdict(rc: int, stderr: str) -> tuple[str, str]:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1][:300] if lines else ""
    if rc == 0:
        return "passed", ""
    if rc < 0:
        sig = -rc
        if sig == 24:  # SIGXCPU: CPU-time limit
            return "timeout", "CPU time limit (SIGXCPU)"
        if sig == 9:
            return "memory", "killed (SIGKILL): out of memory (kernel OOM killer)"
        return "error", f"killed by signal {sig}"
    if "MemoryError" in last or "Cannot allocate memory" in stderr:
        return "memory", last or "MemoryError"
    if last.startswith("AssertionError") or last == "AssertionError":
        return "failed", last
    if "RecursionError" in last:
        return "error", last
    return "error", last or f"exit code {rc}"


def run_program(
    program: str, limits: Limits | None = None, files: dict[str, str] | None = None
) -> ExecResult:
    """Run `program` (Python source) in a fresh sandbox; `files` are extra files written into its dir."""
    lim = limits or Limits()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="phiforge-sbx-") as d:
        prog = os.path.join(d, "candidate.py")
        with open(prog, "w", encoding="utf-8") as f:
            f.write(program)
        for name, text in (files or {}).items():
            with open(os.path.join(d, os.path.basename(name)), "w", encoding="utf-8") as f:
                f.write(text)
        env = {"PATH": "/usr/bin:/bin", "HOME": d, "TMPDIR": d, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        argv = [sys.executable, "-I", "-c", _BOOT, prog, str(lim.cpu_seconds)]
        argv += [str(lim.memory_mb << 20), str(lim.file_mb << 20), str(lim.nproc)]
        argv += [str(int(lim.network)), str(int(lim.guard))]
        p = subprocess.Popen(
            argv,
            cwd=d,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own session and process group: killpg reaches every descendant
        )
        try:
            _, err = p.communicate(timeout=lim.timeout)
            status, detail = _verdict(p.returncode, err.decode("utf-8", "replace")[-4000:])
        except subprocess.TimeoutExpired:
            _killpg(p.pid)
            try:
                p.communicate(timeout=5)
            except subprocess.TimeoutExpired:  # stderr kept open by an orphan that escaped the group
                p.kill()
            status, detail = "timeout", f"wall-clock timeout after {lim.timeout:g}s"
        finally:
            _killpg(p.pid)  # leftover children of a finished candidate
    return ExecResult(status, detail, time.perf_counter() - t0)


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, 9)


def run_many(
    programs: Sequence[str],
    limits: Limits | None = None,
    workers: int | None = None,
    on_done: Callable[[int, ExecResult], None] | None = None,
) -> list[ExecResult]:
    """Run programs in parallel sandboxes (threads only wait on children); results in input order."""
    workers = workers or max(1, os.cpu_count() or 1)
    out: list[ExecResult | None] = [None] * len(programs)

    def one(i: int) -> None:
        out[i] = run_program(programs[i], limits)
        if on_done:
            on_done(i, out[i])

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, range(len(programs))))
    return out  # type: ignore[return-value]


_NET: bool | None = None


def network_isolated() -> bool:
    """Whether this OS lets the sandbox drop the network (unprivileged user + network namespaces)."""
    global _NET
    if _NET is None:
        prog = "import os, sys; sys.exit(0 if os.environ.get('PHIFORGE_SANDBOX_NET') == 'isolated' else 1)"
        _NET = run_program(prog, Limits(guard=False)).passed
    return _NET
