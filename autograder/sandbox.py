"""Launch the sandbox worker (bubblewrap, or an unsafe plain subprocess) and talk to it with deadlines.

Isolation (bwrap mode): new pid/net/ipc/uts/cgroup namespaces (no network), a fresh root with read-only
binds of only the Python prefix(es), /usr, the course package and the worker, a size-capped tmpfs as the
only writable place (/scratch, also HOME and cwd) and a tmpfs /tmp. When the grader runs as root the worker
drops to a per-sandbox unprivileged uid (root is exempt from RLIMIT_NPROC, so a fork bomb could not be
contained otherwise). rlimits: CPU seconds, data segment (RLIMIT_AS breaks torch's import), file size,
process count, no core files. The trusted side adds a wall-clock deadline and kills the whole process group.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import wire

HERE = Path(__file__).resolve().parent
WORKER_FILES = (HERE / "sandbox_worker.py", HERE / "wire.py")
SANDBOX_GRADER_DIR = "/opt/grader"
BREACHES = ("timeout", "memory", "crashed")


@dataclass(frozen=True)
class Limits:
    """Per-submission resource limits."""

    wall_seconds: float = 600.0   # whole submission: start-up + student cells + all calls
    call_seconds: float = 60.0    # one call of a student function
    cpu_seconds: int = 600
    memory_bytes: int = 3 << 30   # RLIMIT_DATA
    file_bytes: int = 32 << 20
    processes: int = 64
    scratch_bytes: int = 256 << 20
    message_bytes: int = 64 << 20


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create namespaces here."""


class Breach(BaseException):
    """The sandbox hit a limit or died; ``status`` is one of timeout | memory | crashed."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def course_package_dirs(names: tuple[str, ...] = ("lowbit",)) -> list[Path]:
    """Folders of the importable course packages (editable installs live outside site-packages)."""
    dirs = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            dirs.extend(Path(p).resolve() for p in spec.submodule_search_locations)
    return dirs


def _python_roots() -> list[Path]:
    roots = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.exec_prefix).resolve()}
    return sorted(r for r in roots if not str(r).startswith("/usr"))


def _bwrap_prefix(scratch_bytes: int) -> list[str]:
    cmd = ["bwrap", "--die-with-parent", "--new-session", "--clearenv"]
    if os.geteuid() == 0:  # keep the host uid map; the worker drops to an unprivileged uid (see module doc)
        cmd += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    else:
        cmd += ["--unshare-all"]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for name in ("lib", "lib64", "lib32", "bin", "sbin"):
        host = Path("/") / name
        if host.is_symlink():
            cmd += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            cmd += ["--ro-bind", str(host), f"/{name}"]
    for etc in ("/etc/ld.so.cache", "/etc/localtime"):
        if Path(etc).exists():
            cmd += ["--ro-bind", etc, etc]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--size", str(scratch_bytes), "--perms", "0777", "--tmpfs", "/scratch"]
    return cmd


def _mkdirs(cmd: list[str], path: Path, made: set[str]) -> None:
    for parent in reversed(path.parents):
        if str(parent) != "/" and str(parent) not in made:
            cmd += ["--perms", "0755", "--dir", str(parent)]
            made.add(str(parent))


def bwrap_command(extra_paths: list[Path], uid: int, limits: Limits, package_view=None) -> list[str]:
    """The full bwrap command line running the worker (Python from this interpreter).

    ``package_view(path) -> path`` (from :mod:`autograder.student_build`) swaps each course package for its
    answer-free copy, mounted where the original would be.
    """
    view = package_view or (lambda path: path)
    cmd = _bwrap_prefix(limits.scratch_bytes)
    made: set[str] = set()
    for path in _python_roots():
        _mkdirs(cmd, path, made)
        cmd += ["--ro-bind", str(path), str(path)]
    for path in course_package_dirs():
        _mkdirs(cmd, path, made)
        cmd += ["--ro-bind", str(view(path)), str(path)]
    _mkdirs(cmd, Path(SANDBOX_GRADER_DIR) / "x", made)
    for file in WORKER_FILES:
        cmd += ["--ro-bind", str(file), f"{SANDBOX_GRADER_DIR}/{file.name}"]
    for index, path in enumerate(extra_paths):
        _mkdirs(cmd, Path(f"/opt/packages/{index}"), made)
        cmd += ["--ro-bind", str(view(Path(path).resolve())), f"/opt/packages/{index}"]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/scratch", "TMPDIR": "/tmp", "NBGRADER_EXECUTION": "autograde",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    cmd += ["--chdir", "/scratch"]
    if os.geteuid() == 0:
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "/usr/bin/setpriv",
                f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
    return cmd + [str(sandbox_python()), "-I", f"{SANDBOX_GRADER_DIR}/sandbox_worker.py"]


def sandbox_python() -> Path:
    """This interpreter as seen inside the sandbox, where only the *resolved* prefixes are mounted (a venv
    reached through a symlink, e.g. a worktree's ``.venv``, would otherwise be missing: exit code 127)."""
    executable = Path(sys.executable)
    for prefix in (sys.prefix, sys.exec_prefix, sys.base_prefix):
        try:
            return Path(prefix).resolve() / executable.relative_to(prefix)
        except ValueError:
            continue
    return executable.resolve()


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """None when bwrap works here, else a sentence saying why not (checked once per process)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    if os.geteuid() == 0 and not Path("/usr/bin/setpriv").exists():
        return "setpriv (util-linux) is missing: the sandbox needs it to drop root"
    probe = bwrap_command([], 60000, Limits())[:-3] + ["/usr/bin/true"] if os.geteuid() != 0 else \
        bwrap_command([], 60000, Limits())[:-3] + ["/usr/bin/true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not start: {exc}"
    if done.returncode != 0:
        return f"bwrap cannot create a sandbox here: {done.stderr.strip()[:300]}"
    return None


def _limit_resources(limits: Limits, limit_processes: bool = True) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    if limit_processes:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Sandbox:
    """One worker process for one submission. ``mode`` is "bwrap" or "unsafe"."""

    def __init__(self, mode: str, limits: Limits, extra_paths: list[Path] | None = None, package_view=None) -> None:
        self.mode, self.limits, self.package_view = mode, limits, package_view
        self.extra_paths = [Path(p) for p in (extra_paths or [])]
        self.deadline = time.monotonic() + limits.wall_seconds
        self.stderr_file = tempfile.TemporaryFile()
        self._buffer = b""
        self._next_id = 0
        self._scratch: tempfile.TemporaryDirectory | None = None
        self.tripwire_hits: list[str] = []
        self.uid: int | None = None
        self.proc = self._launch()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)

    def _launch(self) -> subprocess.Popen:
        limits = self.limits
        if self.mode == "bwrap":
            uid = self.uid = 100_000 + os.getpid() % 50_000  # one uid per grading process: NPROC counts per uid
            cmd, cwd, env = bwrap_command(self.extra_paths, uid, limits, self.package_view), "/", {}
        else:
            self._scratch = tempfile.TemporaryDirectory(prefix="lowbit-unsafe-")
            cwd = self._scratch.name
            cmd = [sys.executable, "-I", str(HERE / "sandbox_worker.py")]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": cwd, "NBGRADER_EXECUTION": "autograde",
                   "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        # Unsafe mode runs as the caller's uid: RLIMIT_NPROC would count all of their processes.
        limit_processes = self.mode == "bwrap"

        def preexec() -> None:
            _limit_resources(limits, limit_processes)

        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr_file,
                                cwd=cwd, env=env, preexec_fn=preexec, start_new_session=True)

    def sys_path(self) -> list[str]:
        # Course packages come first, from where they are mounted (bwrap) or their answer-free copy (unsafe).
        if self.mode == "bwrap":
            course = [str(p.parent) for p in course_package_dirs()] if self.package_view else []
            return course + [f"/opt/packages/{i}" for i in range(len(self.extra_paths))]
        view = self.package_view or (lambda path: path)
        course = [str(view(p).parent) for p in course_package_dirs()] if self.package_view else []
        return course + [str(view(p.resolve())) for p in self.extra_paths]

    # -- protocol -------------------------------------------------------------------------------------
    def send(self, message: dict) -> None:
        try:
            self.proc.stdin.write(wire.dumps(message))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._death("the notebook's process ended")

    def receive(self, timeout: float) -> dict:
        end = min(time.monotonic() + timeout, self.deadline)
        while b"\n" not in self._buffer:
            remaining = end - time.monotonic()
            if remaining <= 0:
                self.kill()
                which = "the submission's time limit" if end >= self.deadline else "the time limit of one call"
                raise Breach("timeout", f"{which} ({self.limits.wall_seconds if end >= self.deadline else self.limits.call_seconds:g} s) was exceeded")
            if not self.selector.select(remaining):
                continue
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                raise self._death("the notebook's process ended unexpectedly")
            self._buffer += chunk
            if len(self._buffer) > self.limits.message_bytes:
                self.kill()
                raise Breach("crashed", f"a reply exceeded {self.limits.message_bytes >> 20} MiB")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = wire.loads(line)
        except (ValueError, wire.WireError):
            self.kill()
            raise Breach("crashed", "the notebook's process broke the grading protocol (malformed reply)")
        hits = message.get("tripwire", [])
        if isinstance(hits, list):
            self.tripwire_hits.extend(str(h) for h in hits)
        return message

    def request(self, op: str, timeout: float | None = None, **fields) -> dict:
        self._next_id += 1
        self.send({"id": self._next_id, "op": op, **fields})
        reply = self.receive(self.limits.call_seconds if timeout is None else timeout)
        if reply.get("id") != self._next_id:
            self.kill()
            raise Breach("crashed", "the notebook's process broke the grading protocol (reply id mismatch)")
        return reply

    def _death(self, what: str) -> Breach:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait()
        tail = self.stderr_tail()
        signum = -code if code < 0 else code - 128 if code > 128 else 0
        if signum == signal.SIGXCPU:
            return Breach("timeout", f"CPU time limit ({self.limits.cpu_seconds} s) exceeded")
        if "MemoryError" in tail or "can't allocate memory" in tail or signum == signal.SIGKILL:
            return Breach("memory", f"{what}: out of memory (limit {self.limits.memory_bytes >> 20} MiB)")
        detail = f"signal {signal.Signals(signum).name}" if signum in signal.valid_signals() and signum else \
            f"exit code {code}"
        return Breach("crashed", f"{what} ({detail})")

    def finish(self, timeout: float = 2.0) -> bool:
        """Ask the worker to exit; True if it sent anything beyond the replies it owed (protocol violation)."""
        try:
            self.send({"op": "exit"})
        except Breach:
            pass
        extra = self._buffer.strip()
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.selector.select(max(0.0, end - time.monotonic())):
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                break
            extra += chunk.strip()
            if len(extra) > 1 << 20:
                break
        return bool(extra)

    def stderr_tail(self, limit: int = 2000) -> str:
        self.stderr_file.seek(0, os.SEEK_END)
        size = self.stderr_file.tell()
        self.stderr_file.seek(max(0, size - limit))
        return self.stderr_file.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "exit"})
                self.proc.wait(timeout=5)
            except (Breach, subprocess.TimeoutExpired):
                pass
        self.kill()
        self.selector.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.stderr_file.close()
        if self._scratch is not None:
            self._scratch.cleanup()

