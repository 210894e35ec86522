"""Launch the sandbox worker (bubblewrap, or an unsafe plain subprocess) and talk to it with deadlines.

Isolation (bwrap mode): new pid/net/ipc/uts/cgroup namespaces (no network), a fresh root with read-only
binds of /usr and, behind neutral mount points, the Python installation (/opt/python, /opt/site-packages/N),
the course packages (/opt/course/N) and the worker (/opt/grader); size-capped tmpfs for /scratch (also HOME
and cwd), /tmp and /dev/shm are the only writable places; a seccomp filter (:mod:`autograder.seccomp`)
refuses namespace creation, ptrace and other calls a notebook has no use for. When the grader runs as root
the worker drops to a per-sandbox unprivileged uid (root is exempt from RLIMIT_NPROC, so a fork bomb could
not be contained otherwise). Memory: a cgroup per sandbox where the machine allows it
(:mod:`autograder.cgroups`), and RLIMIT_DATA (RLIMIT_AS breaks torch's import); also CPU seconds, file
size, process count, no core files. The trusted side gives every write and read a deadline, a watchdog
thread kills the sandbox at its wall-clock limit even when nothing is being exchanged, and a breach's
status says what happened (timeout, memory, crashed).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import resource
import selectors
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import seccomp, wire
from .cgroups import MemoryCgroup, memory_cgroups

HERE = Path(__file__).resolve().parent
#: Bound read-only into the sandbox side by side (by file name); the worker imports the other two.
WORKER_FILES = (HERE / "sandbox_worker.py", HERE / "wire.py", HERE.parent / "lowbit" / "_vjp.py")
SANDBOX_GRADER_DIR = "/opt/grader"
SANDBOX_PYTHON = "/opt/python"
SANDBOX_SITE = "/opt/site-packages"
SANDBOX_COURSE = "/opt/course"
BREACHES = ("timeout", "memory", "crashed")


@dataclass(frozen=True)
class Limits:
    """Per-submission resource limits. The time limits here are ceilings; :func:`autograder.runner.budget`
    derives a lab's own (much shorter) budget from its reference solution's measured time."""

    wall_seconds: float = 600.0   # whole submission: start-up + student cells + all calls
    call_seconds: float = 60.0    # one call of a student function
    cell_seconds: float = 600.0   # one setup/answer cell in the sandbox (default for cells without a budget)
    cell_budgets: tuple[tuple[str, float], ...] = ()  # (cell key, seconds) from the reference's timing
    slow_seconds: float = 0.0     # a submission graded in more than this is flagged `slow` (0: never)
    cpu_seconds: int = 600
    memory_bytes: int = 3 << 30   # cgroup memory.max where available, and RLIMIT_DATA
    file_bytes: int = 32 << 20
    processes: int = 64
    scratch_bytes: int = 256 << 20
    tmp_bytes: int = 256 << 20
    shm_bytes: int = 64 << 20
    message_bytes: int = 8 << 20  # one reply (a lab's largest is a few hundred KiB)


@dataclass(frozen=True)
class TimeBudget:
    """How a lab's time limits follow from its reference solution's measured grading time (generous: a
    correct but naive answer may well be several times slower than the reference)."""

    factor: float = 10.0              # each sandbox cell and each call: this many times the reference's time
    floor_seconds: float = 10.0       # ... but never less than this
    total_factor: float = 5.0         # the whole submission: this many times the reference's grading time
    total_floor_seconds: float = 60.0  # ... but never less than this
    slow_factor: float = 3.0          # slower than this many times the reference (+ floor_seconds): `slow`


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


@dataclass(frozen=True)
class _Layout:
    """Host path -> sandbox path of everything bound read-only, and the interpreter to run."""

    binds: tuple[tuple[str, str], ...]
    python: str
    sys_path: tuple[str, ...]       # the worker puts these first on sys.path
    env: tuple[tuple[str, str], ...]


def _site_packages() -> list[Path]:
    """The virtual environment's site-packages (empty when not running in one)."""
    if sys.prefix == sys.base_prefix:
        return []
    return [Path(p).resolve() for p in site.getsitepackages([sys.prefix]) if Path(p).is_dir()]


def sandbox_layout(extra_paths: list[Path], package_view=None) -> _Layout:
    """Where the Python installation, its packages and the course packages appear inside the sandbox:
    neutral paths under /opt (nothing of the host's home, checkout or venv location shows), /usr as is.

    ``package_view(path) -> path`` (from :mod:`autograder.student_build`) swaps each course package for its
    answer-free copy, mounted where the original would be.
    """
    view = package_view or (lambda path: path)
    binds, sys_path, env = [], [], []
    executable = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    base = Path(sys.base_prefix).resolve()
    if not executable.is_relative_to(base):  # e.g. a prefix this user cannot list: the binary's own prefix
        base = executable.parent.parent
    if str(base).startswith("/usr"):
        python = str(executable)
    else:
        binds.append((str(base), SANDBOX_PYTHON))
        python = f"{SANDBOX_PYTHON}/{executable.relative_to(base)}" if executable.is_relative_to(base) \
            else str(executable)
        env.append(("LD_LIBRARY_PATH", f"{SANDBOX_PYTHON}/lib"))  # a shared libpython's RUNPATH names the host
    for index, path in enumerate(course_package_dirs()):
        binds.append((str(view(path)), f"{SANDBOX_COURSE}/{index}/{path.name}"))
        sys_path.append(f"{SANDBOX_COURSE}/{index}")
    for index, path in enumerate(extra_paths):
        binds.append((str(view(Path(path).resolve())), f"/opt/packages/{index}"))
        sys_path.append(f"/opt/packages/{index}")
    for index, path in enumerate(_site_packages()):
        binds.append((str(path), f"{SANDBOX_SITE}/{index}"))
        sys_path.append(f"{SANDBOX_SITE}/{index}")
    return _Layout(tuple(binds), python, tuple(sys_path), tuple(env))


def _bwrap_prefix(limits: Limits) -> list[str]:
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
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--size", str(limits.shm_bytes), "--perms", "1777", "--tmpfs", "/dev/shm",
            "--size", str(limits.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp",
            "--size", str(limits.scratch_bytes), "--perms", "0777", "--tmpfs", "/scratch"]
    return cmd


def _mkdirs(cmd: list[str], path: Path, made: set[str]) -> None:
    for parent in reversed(path.parents):
        if str(parent) != "/" and str(parent) not in made:
            cmd += ["--perms", "0755", "--dir", str(parent)]
            made.add(str(parent))


def bwrap_command(extra_paths: list[Path], uid: int, limits: Limits, seccomp_fd: int | None = None,
                  package_view=None) -> list[str]:
    """The full bwrap command line running the worker (this interpreter, behind neutral paths; course packages
    through ``package_view``, see :func:`sandbox_layout`)."""
    cmd = _bwrap_prefix(limits)
    made: set[str] = set()
    layout = sandbox_layout(extra_paths, package_view)
    for host, inside in layout.binds:
        _mkdirs(cmd, Path(inside), made)
        cmd += ["--ro-bind", host, inside]
    _mkdirs(cmd, Path(SANDBOX_GRADER_DIR) / "x", made)
    for file in WORKER_FILES:
        cmd += ["--ro-bind", str(file), f"{SANDBOX_GRADER_DIR}/{file.name}"]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/scratch", "TMPDIR": "/tmp", "NBGRADER_EXECUTION": "autograde",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "LANG": "C.UTF-8", **dict(layout.env)}
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    cmd += ["--chdir", "/scratch"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    if os.geteuid() == 0:
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "/usr/bin/setpriv",
                f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
    return cmd + [layout.python, "-I", f"{SANDBOX_GRADER_DIR}/sandbox_worker.py"]


def seccomp_file() -> int | None:
    """A fresh file descriptor holding the compiled seccomp filter (bwrap reads it once), or None."""
    program = seccomp.filter_program()
    if program is None:
        return None
    fd = os.memfd_create("lowbit-seccomp", 0) if hasattr(os, "memfd_create") else os.open(
        tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR, 0o600)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """None when bwrap works here, else a sentence saying why not (checked once per process)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    if os.geteuid() == 0 and not Path("/usr/bin/setpriv").exists():
        return "setpriv (util-linux) is missing: the sandbox needs it to drop root"
    fd = seccomp_file()
    probe = bwrap_command([], 60000, Limits(), fd)[:-3] + ["/usr/bin/true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30, pass_fds=() if fd is None else (fd,))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not start: {exc}"
    finally:
        if fd is not None:
            os.close(fd)
    if done.returncode != 0:
        return f"bwrap cannot create a sandbox here: {done.stderr.strip()[:300]}"
    return None


def enforcement(mode: str) -> dict[str, str]:
    """What this machine enforces in ``mode`` (for the run's summary and each result)."""
    if mode != "bwrap":
        return {"memory": "RLIMIT_DATA only (unsafe mode: no sandbox)", "seccomp": "none"}
    return {"memory": memory_cgroups(),
            "seccomp": "on" if seccomp.filter_program() is not None else "none (architecture not supported)"}


def _limit_resources(limits: Limits, limit_processes: bool = True) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    if limit_processes:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Sandbox:
    """One worker process for one submission. ``mode`` is "bwrap" or "unsafe".

    Every exchange has a deadline: the earlier of the call's own and the submission's wall-clock limit.
    Writes are non-blocking under that clock (a worker that stops reading cannot stall the grader), and a
    watchdog thread kills the sandbox at the wall-clock limit whatever the trusted side is doing.
    """

    def __init__(self, mode: str, limits: Limits, extra_paths: list[Path] | None = None, package_view=None) -> None:
        self.mode, self.limits, self.package_view = mode, limits, package_view
        self.extra_paths = [Path(p) for p in (extra_paths or [])]
        self.started = time.monotonic()
        self.deadline = self.started + limits.wall_seconds
        self.stderr_file = tempfile.TemporaryFile()
        self.reader = wire.LineReader(limits.message_bytes)
        self._next_id = 0
        self._scratch: tempfile.TemporaryDirectory | None = None
        self.tripwire_hits: list[str] = []
        self.uid: int | None = None
        self.expired = False      # set by the watchdog
        self.cgroup = MemoryCgroup.create(limits.memory_bytes) if mode == "bwrap" else None
        try:
            self.proc = self._launch()
        except BaseException:
            if self.cgroup is not None:
                self.cgroup.remove()
            raise
        os.set_blocking(self.proc.stdin.fileno(), False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.write_selector = selectors.DefaultSelector()
        self.write_selector.register(self.proc.stdin, selectors.EVENT_WRITE)
        self.watchdog = threading.Timer(limits.wall_seconds, self._expire)
        self.watchdog.daemon = True
        self.watchdog.start()

    def _launch(self) -> subprocess.Popen:
        limits, cgroup = self.limits, self.cgroup
        fd = None
        if self.mode == "bwrap":
            uid = self.uid = 100_000 + os.getpid() % 50_000  # one uid per grading process: NPROC counts per uid
            fd = seccomp_file()
            cmd, cwd, env = bwrap_command(self.extra_paths, uid, limits, fd, self.package_view), "/", {}
        else:
            self._scratch = tempfile.TemporaryDirectory(prefix="lowbit-unsafe-")
            cwd = self._scratch.name
            grader = Path(cwd) / "grader"  # the worker's files side by side, as bwrap binds them
            grader.mkdir()
            for file in WORKER_FILES:
                shutil.copyfile(file, grader / file.name)
            cmd = [sys.executable, "-I", str(grader / "sandbox_worker.py")]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": cwd, "NBGRADER_EXECUTION": "autograde",
                   "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        # Unsafe mode runs as the caller's uid: RLIMIT_NPROC would count all of their processes.
        limit_processes = self.mode == "bwrap"

        def preexec() -> None:
            if cgroup is not None:
                cgroup.join_self()
            _limit_resources(limits, limit_processes)

        try:
            return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr_file,
                                    cwd=cwd, env=env, preexec_fn=preexec, start_new_session=True,
                                    pass_fds=() if fd is None else (fd,))
        finally:
            if fd is not None:
                os.close(fd)

    def sys_path(self) -> list[str]:
        if self.mode == "bwrap":
            return list(sandbox_layout(self.extra_paths).sys_path)
        # unsafe: the answer-free copies of the course packages first, then the extra paths (through the view too)
        view = self.package_view or (lambda path: path)
        course = [str(view(p).parent) for p in course_package_dirs()] if self.package_view else []
        return course + [str(view(p.resolve())) for p in self.extra_paths]

    # -- deadlines ------------------------------------------------------------------------------------
    def _expire(self) -> None:
        """Watchdog: the submission's wall-clock limit is up, whatever the grader is doing."""
        self.expired = True
        self._signal_kill()

    def _end(self, timeout: float | None) -> float:
        return self.deadline if timeout is None else min(time.monotonic() + timeout, self.deadline)

    def _overdue(self, end: float, what: str, seconds: float | None) -> Breach:
        self.kill()
        if self.expired or end >= self.deadline or seconds is None:
            return Breach("timeout", f"the submission's time limit ({self.limits.wall_seconds:g} s) was exceeded")
        return Breach("timeout", f"the time limit of {what} ({seconds:g} s) was exceeded")

    # -- protocol -------------------------------------------------------------------------------------
    def send(self, message: dict, timeout: float | None = None, what: str = "one call") -> None:
        """Write one request, never blocking past the deadline (the worker may have stopped reading)."""
        self._write(wire.dumps(message), self._end(timeout), what, timeout)

    def receive(self, timeout: float | None, what: str = "one call") -> dict:
        """Read one reply before the deadline; parse it only within the size and item caps."""
        return self._read(self._end(timeout), what, timeout)

    def request(self, op: str, timeout: float | None = None, **fields) -> dict:
        """One call/get under one clock: the request's write and its reply's read share the call's limit."""
        self._next_id += 1
        seconds = self.limits.call_seconds if timeout is None else timeout
        end = self._end(seconds)
        self._write(wire.dumps({"id": self._next_id, "op": op, **fields}), end, "one call", seconds)
        reply = self._read(end, "one call", seconds)
        if reply.get("id") != self._next_id:
            self.kill()
            raise Breach("crashed", "the notebook's process broke the grading protocol (reply id mismatch)")
        return reply

    def _write(self, payload: bytes, end: float, what: str, seconds: float | None) -> None:
        data = memoryview(payload)
        fd = self.proc.stdin.fileno()
        while data:
            remaining = end - time.monotonic()
            if remaining <= 0 or self.expired:
                raise self._overdue(end, what, seconds)
            if not self.write_selector.select(remaining):
                continue
            try:
                written = os.write(fd, data)
            except BlockingIOError:
                continue
            except OSError:
                raise self._death("the notebook's process ended") from None
            data = data[written:]

    def _read(self, end: float, what: str, seconds: float | None) -> dict:
        while True:
            try:
                line = self.reader.line()
            except wire.WireError as exc:
                self.kill()
                raise Breach("crashed", f"the notebook's process broke the grading protocol ({exc})") from None
            if line is not None:
                break
            remaining = end - time.monotonic()
            if remaining <= 0 or self.expired:
                raise self._overdue(end, what, seconds)
            if not self.selector.select(remaining):
                continue
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                raise self._death("the notebook's process ended unexpectedly")
            self.reader.feed(chunk)
        try:
            message = wire.loads(line)
        except (ValueError, wire.WireError) as exc:
            self.kill()
            detail = exc if isinstance(exc, wire.WireError) else "malformed reply"
            raise Breach("crashed", f"the notebook's process broke the grading protocol ({detail})") from None
        hits = message.get("tripwire", [])
        if isinstance(hits, list):
            self.tripwire_hits.extend(str(h) for h in hits[:100])
        return message

    def _death(self, what: str) -> Breach:
        """The worker ended on its own (or was killed): say what happened, from what we know, not a guess."""
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait()
        if self.expired:
            return Breach("timeout", f"the submission's time limit ({self.limits.wall_seconds:g} s) was exceeded")
        if self.cgroup is not None and self.cgroup.oom_kills():
            return Breach("memory", f"{what}: out of memory (limit {self.limits.memory_bytes >> 20} MiB, "
                                    "shared memory and files in memory included)")
        tail = self.stderr_tail()
        signum = -code if code < 0 else code - 128 if code > 128 else 0
        if signum == signal.SIGXCPU:
            return Breach("timeout", f"CPU time limit ({self.limits.cpu_seconds} s) exceeded")
        if "MemoryError" in tail or "can't allocate memory" in tail:
            return Breach("memory", f"{what}: out of memory (limit {self.limits.memory_bytes >> 20} MiB)")
        if signum == signal.SIGKILL:
            return Breach("crashed", f"{what} (killed by SIGKILL, not by the grader: e.g. the CPU limit's hard "
                                     "stop or the host's out-of-memory killer)")
        detail = f"signal {signal.Signals(signum).name}" if signum in signal.valid_signals() and signum else \
            f"exit code {code}"
        return Breach("crashed", f"{what} ({detail})")

    def finish(self, timeout: float = 2.0) -> bool:
        """Ask the worker to exit; True if it sent anything beyond the replies it owed (protocol violation)."""
        try:
            self.send({"op": "exit"}, timeout)
        except Breach:
            pass
        extra = bytes(self.reader.buffer).strip()
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

    def _signal_kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self._signal_kill()
            self.proc.wait()

    def close(self) -> None:
        self.watchdog.cancel()
        if self.proc.poll() is None:
            try:
                self.send({"op": "exit"}, 2.0)
                self.proc.wait(timeout=5)
            except (Breach, subprocess.TimeoutExpired):
                pass
        self.kill()
        self.selector.close()
        self.write_selector.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.stderr_file.close()
        if self.cgroup is not None:
            self.cgroup.remove()
        if self._scratch is not None:
            self._scratch.cleanup()
