"""The sandbox's seccomp filter: a classic-BPF program for bubblewrap's ``--seccomp FD``, built with ``struct``.

What it refuses (errno EPERM unless noted), on x86-64:

- creating namespaces: ``unshare``, ``setns``, ``clone`` with any ``CLONE_NEW*`` flag; ``clone3`` answers
  ENOSYS (its flags sit in memory a filter cannot read; the C library then falls back to ``clone``);
- looking into or driving other processes: ``ptrace``, ``process_vm_readv/writev``, ``kcmp``, ``pidfd_getfd``;
- memory that no per-process limit counts: ``memfd_create``, System V ``shmget``, and ``mmap`` of *shared
  anonymous* memory (files on the sandbox's tmpfs stay allowed: those are size-capped);
- mounting, the kernel's keyring, BPF, perf, userfaultfd, io_uring (it bypasses seccomp), file handles,
  modules, kexec, reboot, swap, clocks, accounting, raw I/O ports, and the x32 ABI.

Any other architecture's system call (e.g. 32-bit ``int 0x80``) is refused. On a machine that is not
x86-64, :func:`filter_program` returns None and the sandbox runs without a filter (the guide says so).
"""
from __future__ import annotations

import errno
import platform
import struct

# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}
_LD_W_ABS, _JEQ, _JGE, _JSET, _AND, _RET = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
CLONE_NEW_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
MAP_SHARED_ANONYMOUS = 0x01 | 0x20   # MAP_SHARED (also set in MAP_SHARED_VALIDATE) | MAP_ANONYMOUS

#: x86-64 numbers of the calls refused outright.
DENIED_X86_64 = {
    "unshare": 272, "setns": 308, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "pidfd_getfd": 438, "memfd_create": 319, "shmget": 29, "mount": 165, "umount2": 166, "pivot_root": 155,
    "chroot": 161, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_by_handle_at": 304, "name_to_handle_at": 303, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320, "reboot": 169,
    "swapon": 167, "swapoff": 168, "acct": 163, "settimeofday": 164, "clock_settime": 227, "adjtimex": 159,
    "clock_adjtime": 305, "iopl": 172, "ioperm": 173, "quotactl": 179, "syslog": 103, "vhangup": 153,
    "uselib": 134, "lookup_dcookie": 212,
}
_CLONE, _CLONE3, _MMAP = 56, 435, 9
_NR, _ARCH = 0, 4


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of argument ``index`` in struct seccomp_data (little-endian)."""
    return 16 + 8 * index


class _Program:
    """A tiny assembler: instructions with symbolic forward jumps, resolved by :meth:`bytes`."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: object = 0, jf: object = 0) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def bytes(self) -> bytes:
        out = []
        for index, (code, jt, jf, k) in enumerate(self.code):
            offsets = [self.labels[j] - index - 1 if isinstance(j, str) else j for j in (jt, jf)]
            if not all(0 <= o <= 255 for o in offsets):
                raise ValueError(f"seccomp jump out of range at instruction {index}")
            out.append(struct.pack("=HBBI", code, offsets[0], offsets[1], k))
        return b"".join(out)


def filter_program() -> bytes | None:
    """The compiled filter for this machine, or None when the architecture is not supported."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    p = _Program()
    p.op(_LD_W_ABS, _ARCH)
    p.op(_JEQ, AUDIT_ARCH_X86_64, 0, "deny")
    p.op(_LD_W_ABS, _NR)
    p.op(_JGE, X32_SYSCALL_BIT, "deny", 0)
    for number in sorted(DENIED_X86_64.values()):
        p.op(_JEQ, number, "deny", 0)
    p.op(_JEQ, _CLONE, "clone", 0)
    p.op(_JEQ, _CLONE3, "enosys", 0)
    p.op(_JEQ, _MMAP, "mmap", 0)
    p.op(_RET, _RET_ALLOW)
    p.label("clone")
    p.op(_LD_W_ABS, _arg_low(0))
    p.op(_JSET, CLONE_NEW_FLAGS, "deny", 0)
    p.op(_RET, _RET_ALLOW)
    p.label("mmap")
    p.op(_LD_W_ABS, _arg_low(3))
    p.op(_AND, MAP_SHARED_ANONYMOUS)
    p.op(_JEQ, MAP_SHARED_ANONYMOUS, "deny", 0)
    p.op(_RET, _RET_ALLOW)
    p.label("deny")
    p.op(_RET, _RET_ERRNO | errno.EPERM)
    p.label("enosys")
    p.op(_RET, _RET_ERRNO | errno.ENOSYS)
    return p.bytes()
