"""``autograder grade --scheduler tcp://HOST:8786``: one Dask task per submission on a ``dask.distributed`` cluster.

The client (``autograder grade``) keeps everything that decides what the outputs are: discovery, the result
cache, the reference timing, the time budget and the writing of ``results/``, ``grades.csv``, feedback and
gradebook. Workers only grade: each runs :func:`autograder.runner.grade_submission` in the same sandbox with
the same checks as a local run, so a result is the same wherever it was computed.

Start-up check: :class:`CourseCheck` is a Dask worker plugin registered for the run. On every worker (those
present and those that join later) it loads the lab from the worker's own copy of the course and compares
:func:`course_fingerprint` with the client's: the lab's fingerprint (notebooks, checks, contract, grader code,
secret tag), the course package sources (``lowbit``), the course's sandbox packages and the torch version. A
worker that differs refuses: the registration fails with a message naming the worker and what differs, and a
task that lands on a worker that joined later with another course raises :class:`CourseMismatch`, which stops
the run. A long-lived worker process also refuses when the packages or grader code it imported in an earlier
run differ from its course's files now (Python keeps imported code; a restart imports it afresh); a check module
that changed is simply imported again.

A worker process that dies mid-task loses nothing: the scheduler runs its tasks again on another worker
(up to ``distributed.scheduler.allowed-failures`` deaths per task), and results reach disk only on the client,
atomically, as each task finishes — a re-run of the same command grades only what is missing.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import defaultdict
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Iterator

from .grade import CourseMismatch, grade_one, prepare_grader_process
from .runner import Course, Lab
from .sandbox import Limits, bwrap_problem, course_package_dirs

try:  # dask.distributed is optional: only --scheduler needs it
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - exercised on installs without the dev extra
    _WorkerPlugin = object

PLUGIN_PREFIX = "lowbit-course-"
#: Worker resource that, when every worker declares it (``dask worker --resources grader=1``), each task asks
#: for one unit of: a worker then runs as many gradings at once as it has units, whatever its thread count.
RESOURCE = "grader"
WAIT_FOR_WORKERS = 300.0  # seconds to wait for the first worker


#: What this worker process has imported, part by part, at the first run that loaded it: the course and sandbox
#: packages and the grader code. Python keeps imported modules for the life of a process, so a later run whose
#: files differ (another course, or files changed since) would grade with the old code although its fingerprint,
#: read from disk, matches the client's: such a run is refused.
_IMPORTED: dict[str, str] = {}


def _tree_digest(folders: list[Path]) -> str:
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def course_fingerprint(lab: Lab, imported: dict[str, str]) -> dict[str, str]:
    """What a worker must share with the client, part by part (so a refusal can say which part differs):
    the lab's grading fingerprint, ``imported`` (:func:`imported_code`: the course packages' files, the course's
    sandbox packages) and torch's version."""
    import torch
    return {"lab": lab.fingerprint(), **imported, "torch": torch.__version__}


def imported_code(course: Course) -> dict[str, str]:
    """Digests of the code a grading process imports once and keeps: course packages, sandbox packages."""
    return {"course packages": _tree_digest(course_package_dirs()),
            "sandbox packages": _tree_digest(list(course.sandbox_paths))}


class CourseCheck(_WorkerPlugin):
    """Dask worker plugin: load the lab on the worker and refuse a course that differs from the client's.

    ``course_root``: the course on the *worker's* file system; ``expected``: :func:`course_fingerprint` on the
    client; ``mode``: the client's sandbox mode (a worker without a usable bwrap refuses a ``bwrap`` run).
    """

    def __init__(self, course_root: str, lab: str, secret: bytes | None, practice: bool, mode: str,
                 expected: dict[str, str]) -> None:
        self.course_root, self.lab_name, self.secret, self.practice = course_root, lab, secret, practice
        self.mode, self.expected = mode, expected
        self.name = PLUGIN_PREFIX + hashlib.sha256(repr(sorted(expected.items())).encode()).hexdigest()[:16]
        self.lab: Lab | None = None
        self.course: Course | None = None
        self.problem: str | None = None
        self.lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(lab=None, course=None, problem=None, lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def setup(self, worker=None) -> None:
        """Called by Dask on each worker; raises :class:`CourseMismatch` (the registration then fails)."""
        where = getattr(worker, "address", "this worker")
        try:
            prepare_grader_process()
            if self.mode == "bwrap" and bwrap_problem() is not None:
                raise CourseMismatch(f"cannot sandbox student code: {bwrap_problem()}; install bubblewrap there")
            self.course = Course.load(self.course_root)
            self.lab = Lab.load(self.course, self.lab_name, self.secret, self.practice)
            imported = imported_code(self.course)
            found = course_fingerprint(self.lab, imported)
        except CourseMismatch as exc:
            self.problem = f"worker {where} refuses to grade: {exc}"
        except Exception as exc:  # noqa: BLE001 - anything that stops the worker loading the lab is a refusal
            self.problem = (f"worker {where} refuses to grade: cannot load {self.lab_name} from its course "
                            f"{self.course_root} ({type(exc).__name__}: {exc})")
        else:
            differs = [part for part in self.expected if found.get(part) != self.expected[part]]
            if differs:
                self.problem = (f"worker {where} refuses to grade: its course at {self.course_root} is not the "
                                f"client's (different {', '.join(differs)}: " + "; ".join(
                                    f"{p} {found.get(p, '?')[:12]} here, {self.expected[p][:12]} on the client"
                                    for p in differs)
                                + "). Install the same course version (same commit, `make release`) on every "
                                  "worker, or point --worker-course at it.")
        if self.problem is None:
            stale = _stale_imports(imported)
            if stale:
                self.problem = (f"worker {where} refuses to grade: this worker process imported other code in "
                                f"an earlier run (its {', '.join(stale)} differ from the files now: another course, "
                                "or files changed since), and Python keeps imported code for the life of a "
                                "process. Restart the workers (`Client.restart()`, or start `dask worker` again), "
                                "then grade.")
        if self.problem:
            raise CourseMismatch(self.problem)


def _stale_imports(imported: dict[str, str]) -> list[str]:
    """The parts of the code this process imported at its first run that differ from ``imported``
    (:func:`imported_code` of this run's course) and the grader code now (see _IMPORTED; check modules are
    re-imported when they change, see autograder.checks.load_check_module)."""
    from .runner import _grader_source_bytes
    now = {**imported, "grader code": hashlib.sha256(_grader_source_bytes()).hexdigest()}
    return [part for part, value in now.items() if _IMPORTED.setdefault(part, value) != value]


def grade_on_worker(plugin_name: str, student_id: str, data: bytes, mode: str, limits: Limits) -> tuple[str, dict]:
    """The Dask task: grade one submission with the lab the worker's :class:`CourseCheck` loaded."""
    from distributed import get_worker
    plugin = get_worker().plugins.get(plugin_name)
    if plugin is None or plugin.lab is None:
        raise CourseMismatch(getattr(plugin, "problem", None) or f"worker {get_worker().address} has no course "
                             "loaded for this run (its start-up check did not run)")
    with plugin.lock:  # one grading per worker process: the grader seeds process-wide RNGs
        return student_id, grade_one(plugin.lab, plugin.course, student_id, data, mode, limits)


class DaskGrader:
    """Submits gradings to a Dask cluster as :class:`concurrent.futures.Future` objects (via the client's
    ``get_executor``), so :func:`autograder.grade._grade_pending` drives the local pool and the cluster alike."""

    def __init__(self, client, plugin: CourseCheck) -> None:
        self.client, self.plugin = client, plugin
        try:  # an HPC or Kubernetes cluster may still be starting its workers
            client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
        except TimeoutError:
            raise CourseMismatch(f"the Dask scheduler {client.scheduler.address} has had no worker for "
                                 f"{WAIT_FOR_WORKERS:g} s; start some (`dask worker tcp://HOST:8786 --nworkers N "
                                 "--nthreads 1`)") from None
        info = client.scheduler_info(n_workers=-1)["workers"]
        slots = {addr: w.get("resources", {}).get(RESOURCE) for addr, w in info.items()}
        use_resource = all(v for v in slots.values())
        kwargs = {"pure": False}
        if use_resource:
            kwargs["resources"] = {RESOURCE: 1}
        self.executor: Executor = client.get_executor(**kwargs)
        self.slots = int(sum(slots.values())) if use_resource else len(info)
        self.load = _cluster_load(client, info)

    def submit(self, student_id: str, data: bytes, mode: str, limits: Limits) -> Future:
        return self.executor.submit(grade_on_worker, self.plugin.name, student_id, data, mode, limits)


def _cluster_load(client, info: dict) -> float:
    """Concurrent gradings per core on the busiest host (worker processes grade one at a time each)."""
    cores = client.run(os.cpu_count)
    per_host: dict[str, list[int]] = defaultdict(lambda: [0, 1])
    for addr, worker in info.items():
        host = worker.get("host", addr)
        per_host[host][0] += 1
        per_host[host][1] = cores.get(addr) or 1
    return max(n / c for n, c in per_host.values())


@contextlib.contextmanager
def dask_grader(scheduler: str, worker_course: Path, lab: Lab, course: Course, mode: str) -> Iterator[DaskGrader]:
    """Connect to ``scheduler``, check every worker's course (see :class:`CourseCheck`), yield the grader."""
    try:
        from distributed import Client
    except ImportError:
        raise CourseMismatch("--scheduler needs dask.distributed: pip install 'dask[distributed]'") from None
    expected = course_fingerprint(lab, imported_code(course))
    plugin = CourseCheck(str(worker_course), lab.name, lab.secret, lab.practice, mode, expected)
    try:
        client = Client(scheduler, timeout="30s")
    except OSError as exc:
        raise CourseMismatch(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    with client:
        try:
            client.register_plugin(plugin, name=plugin.name)
        except Exception as exc:  # noqa: BLE001 - a setup error comes back as the worker's exception
            # A refused plugin stays registered on the scheduler (and would run on every worker that joins
            # later): take it off before saying why.
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(plugin.name)
            if isinstance(exc, CourseMismatch):
                raise
            raise CourseMismatch(str(exc)) from None
        try:
            yield DaskGrader(client, plugin)
        finally:
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(plugin.name)
