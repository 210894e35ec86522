"""A memory cgroup per sandbox: the limit that also counts shared memory, tmpfs files and page cache.

``RLIMIT_DATA`` only counts a process's private writable mappings: shared anonymous memory, memfd and tmpfs
files escape it. A memory cgroup counts them all. We use cgroup v2 (``memory.max``) when this process sits
in a v2 hierarchy whose memory controller we may enable for a child, else a cgroup v1 memory controller
(``memory.limit_in_bytes``) we may write to, else nothing (:func:`memory_cgroups` says which, and why not).
"""
from __future__ import annotations

import functools
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

_COUNTER = itertools.count()


@dataclass(frozen=True)
class _Hierarchy:
    version: int
    parent: Path          # the folder children are created in


def _own_cgroups() -> dict[str, str]:
    """controller list (``""`` for v2) -> this process's cgroup path."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        paths[controllers] = path
    return paths


def _mounts() -> list[tuple[str, str, str]]:
    rows = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4:
            rows.append((fields[1], fields[2], fields[3]))
    return rows


def _writable_dir(path: Path) -> bool:
    probe = path / f"lowbit-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


def _v2() -> _Hierarchy | None:
    own = _own_cgroups().get("")
    mount = next((Path(m) for m, fs, _ in _mounts() if fs == "cgroup2"), None)
    if own is None or mount is None:
        return None
    parent = mount / own.lstrip("/")
    try:
        if "memory" not in (parent / "cgroup.controllers").read_text().split():
            return None
        if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
            (parent / "cgroup.subtree_control").write_text("+memory")
    except OSError:
        return None
    return _Hierarchy(2, parent) if _writable_dir(parent) else None


def _v1() -> _Hierarchy | None:
    own = next((p for c, p in _own_cgroups().items() if "memory" in c.split(",")), None)
    mount = next((Path(m) for m, fs, opts in _mounts() if fs == "cgroup" and "memory" in opts.split(",")), None)
    if own is None or mount is None:
        return None
    parent = mount / own.lstrip("/")
    if not (parent / "memory.limit_in_bytes").exists():
        return None
    return _Hierarchy(1, parent) if _writable_dir(parent) else None


@functools.lru_cache(maxsize=1)
def _hierarchy() -> _Hierarchy | None:
    try:
        return _v2() or _v1()
    except (OSError, ValueError):
        return None


def memory_cgroups() -> str:
    """Which memory limit the sandbox gets here: a sentence for the instructor (also in the run's summary)."""
    found = _hierarchy()
    if found is None:
        return "RLIMIT_DATA per process (no writable memory cgroup here: shared memory is capped only by the " \
               "sandbox's sized tmpfs and seccomp)"
    name = "memory.max" if found.version == 2 else "memory.limit_in_bytes"
    return f"cgroup v{found.version} {name} per sandbox (+ RLIMIT_DATA per process)"


class MemoryCgroup:
    """One child cgroup with a memory limit; processes join it with :meth:`join_self` (in ``preexec_fn``)."""

    def __init__(self, hierarchy: _Hierarchy, limit_bytes: int) -> None:
        self.version = hierarchy.version
        self.path = hierarchy.parent / f"lowbit-{os.getpid()}-{next(_COUNTER)}"
        self.path.mkdir()
        try:
            if self.version == 2:
                (self.path / "memory.max").write_text(str(limit_bytes))
                if (self.path / "memory.swap.max").exists():
                    (self.path / "memory.swap.max").write_text("0")
            else:
                (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                swap = self.path / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    swap.write_text(str(limit_bytes))
        except OSError:
            self.remove()
            raise
        self.procs = str(self.path / "cgroup.procs")

    @classmethod
    def create(cls, limit_bytes: int) -> "MemoryCgroup | None":
        """A new limited cgroup, or None when this machine gives us none."""
        hierarchy = _hierarchy()
        if hierarchy is None:
            return None
        try:
            return cls(hierarchy, limit_bytes)
        except OSError:
            return None

    def join_self(self) -> None:
        """Move the calling process into the cgroup (children inherit it). Safe in ``preexec_fn``."""
        fd = os.open(self.procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding this cgroup's limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
            if self.version == 1:  # kernels before 4.13 have no oom_kill counter
                return int((self.path / "memory.failcnt").read_text()) and 1
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        """Delete the cgroup (its processes must be gone; retried briefly while the kernel reaps them)."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
