"""What the grading sandbox enforces on this machine, measured: each probe runs inside a real sandbox.

    .venv/bin/python benchmarks/sandbox_enforcement.py            # as the current user
    .venv/bin/python benchmarks/sandbox_enforcement.py --as-user 65534 [--python /usr/bin/python3]
                                             # root only: also as an unprivileged uid (non-root grading)

Prints one row per probe (held / NOT held, with what the sandbox saw), the memory limit in force (cgroup v2,
v1 or RLIMIT_DATA only) and whether the seccomp filter is on. The instructor guide's trust-model table is
these rows, for root and non-root grading.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autograder import wire  # noqa: E402
from autograder.sandbox import Breach, Limits, Sandbox, bwrap_problem, enforcement  # noqa: E402

MIB = 1 << 20
PROBE = r'''
import ctypes, mmap, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
def outcome(call):
    try:
        return "allowed: " + str(call())
    except (OSError, MemoryError, ValueError) as exc:
        return f"refused: {type(exc).__name__} {getattr(exc, 'errno', '') or ''}".strip()
def checked(fn, *args):
    if fn(*args) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return 0
def fill(path, mib):
    done = 0
    try:
        for index in range(mib // 16 + 1):
            with open(f"{path}{index}", "wb") as sink:
                for _ in range(16):
                    sink.write(b"x" * (1 << 20))
                    done += 1
                    if done >= mib:
                        return f"{done} MiB"
    except OSError as exc:
        return f"stopped at {done} MiB ({exc.strerror})"
    return f"{done} MiB"
def private(gib):
    block = bytearray(gib << 30)
    return f"{gib} GiB"
probe = {
    "unshare(CLONE_NEWUSER)": outcome(lambda: checked(libc.unshare, 0x10000000)),
    "ptrace(PTRACE_TRACEME)": outcome(lambda: checked(libc.ptrace, 0, 0, None, None)),
    "memfd_create": outcome(lambda: os.memfd_create("x")),
    "mmap(MAP_SHARED|MAP_ANONYMOUS)": outcome(lambda: len(mmap.mmap(-1, 1 << 20))),
    "network (TCP to 127.0.0.1:22)": outcome(lambda: socket.create_connection(("127.0.0.1", 22), timeout=1)
                                             and "connected"),
    "write 1 GiB to /tmp": fill("/tmp/f", 1024),
    "write 1 GiB to /dev/shm": fill("/dev/shm/f", 1024),
    "write 1 GiB to /scratch": fill("/scratch/f", 1024),
    "allocate 4 GiB privately": outcome(lambda: private(4)),
    "host paths visible": [p for p in HOST_PATHS if os.path.exists(p)],
    "uid": os.getuid(), "python": sys.executable,
}
'''


TMPFS_HOARD = "probe = {'2 GiB /tmp, 512 MiB memory limit': fill('/tmp/f', 2048)}"


def run_probe(limits: Limits, source: str) -> dict:
    host = [sys.base_prefix, sys.prefix, str(REPO), str(Path.home())]
    sandbox = Sandbox("bwrap", limits)
    try:
        sandbox.send({"cells": [{"key": "probe", "source": f"HOST_PATHS = {host!r}\n" + source, "student": True}],
                      "protected": [], "sys_path": sandbox.sys_path()})
        while sandbox.receive(120).get("event") != "ready":
            pass
        return wire.decode(sandbox.request("get", name="probe", timeout=30)["value"])
    except Breach as exc:
        return {"sandbox ended": f"{exc.status}: {exc.reason}"}
    finally:
        sandbox.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-user", type=int, help="root only: rerun this script as that uid (non-root grading)")
    parser.add_argument("--python", default=sys.executable,
                        help="with --as-user: an interpreter that uid can run (the probe needs no packages)")
    parser.add_argument("--json", action="store_true", help="print the raw probe result as JSON")
    args = parser.parse_args()
    if args.as_user is not None:
        env = {**os.environ, "HOME": "/tmp", "PYTHONPATH": str(REPO)}
        done = subprocess.run(["setpriv", f"--reuid={args.as_user}", f"--regid={args.as_user}", "--clear-groups",
                               args.python, __file__, *(["--json"] if args.json else [])], env=env)
        sys.exit(done.returncode)
    problem = bwrap_problem()
    if problem:
        print(f"no sandbox here: {problem}")
        return
    limits = Limits(memory_bytes=3 << 30)
    enforced = enforcement("bwrap")
    print(f"uid {os.geteuid()}; memory: {enforced['memory']}; seccomp: {enforced['seccomp']}")
    print(f"limits: memory {limits.memory_bytes // MIB} MiB, /scratch {limits.scratch_bytes // MIB} MiB, "
          f"/tmp {limits.tmp_bytes // MIB} MiB, /dev/shm {limits.shm_bytes // MIB} MiB, "
          f"{limits.file_bytes // MIB} MiB per file")
    result = run_probe(limits, PROBE)
    small = Limits(memory_bytes=512 * MIB, tmp_bytes=4 << 30)  # tmpfs larger than the memory limit
    result.update({f"2 GiB to /tmp, memory limit 512 MiB: {k}": v
                   for k, v in run_probe(small, PROBE.split("probe = {")[0] + TMPFS_HOARD).items()})
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for name, value in result.items():
        print(f"  {name:34s} {value}")


if __name__ == "__main__":
    main()
