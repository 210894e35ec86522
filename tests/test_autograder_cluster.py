"""``autograder grade --scheduler``: a Dask LocalCluster on loopback (2 worker processes) grades a class exactly as
``--jobs 2`` does, loses nothing when a worker is killed mid-run, resumes only what is missing, and refuses
workers whose course differs from the client's.

None of this depends on which lab is graded (the tests compare where grading ran, never what it computed), so the
class is the fixture course's small lab: an honest, a blank and a mutant submission, graded once locally with
``--jobs 2`` (the peer every Dask run is compared with), then on one 2-worker cluster shared by the Dask runs."""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import pytest

distributed = pytest.importorskip("distributed")

from autograder.grade import GradingRefused, grade_class  # noqa: E402
from autograder.sandbox import TimeBudget, bwrap_problem  # noqa: E402

from autograder_helpers import (FIXTURE_COURSE, FIXTURE_LAB, TEST_LIMITS, fixture_lab,  # noqa: E402
                                honest_blank_mutants, write_class)

pytestmark = pytest.mark.xdist_group("autograder-cluster")
UNSAFE = bwrap_problem() is not None
LAB, COURSE = FIXTURE_LAB, FIXTURE_COURSE
#: Generous budgets: on a machine shared with other jobs a submission must not turn `slow` (or time out) in one
#: run and not in another; what these tests compare is where grading ran, not how fast.
#: Worker processes with one thread each, every socket (scheduler, workers, their HTTP servers) on loopback.
LOOPBACK = {"threads_per_worker": 1, "processes": True, "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0",
            "worker_dashboard_address": "127.0.0.1:0"}
PATIENT = TimeBudget(factor=50.0, total_factor=50.0, total_floor_seconds=600.0, slow_factor=100.0)


def _outputs(out) -> dict[str, bytes]:
    """grades.csv and every feedback page, by path relative to ``out``."""
    files = [out / "grades.csv", *sorted((out / "feedback").rglob("*.html"))]
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def _gradebook(out) -> list[tuple]:
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gradebook:
        return sorted((g.student.id, g.name, g.auto_score, g.needs_manual_grade)
                      for s in gradebook.assignment_submissions(LAB) for n in s.notebooks for g in n.grades)


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    """The fixture lab's honest, blank and mutant submissions, graded locally with --jobs 2 (the peer)."""
    root = tmp_path_factory.mktemp("cluster")
    submissions = write_class(root / "class", LAB, honest_blank_mutants(fixture_lab(), mutants=1))
    grade_class(LAB, submissions, root / "local", COURSE, jobs=2, progress=False, unsafe=UNSAFE, time_budget=PATIENT)
    return root, submissions


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, **LOOPBACK) as local_cluster:
        yield local_cluster


def test_dask_run_matches_jobs_2_byte_for_byte(classroom, cluster):
    root, submissions = classroom
    results = grade_class(LAB, submissions, root / "dask", COURSE, progress=False, unsafe=UNSAFE,
                          scheduler=cluster.scheduler_address, time_budget=PATIENT)
    assert _outputs(root / "dask") == _outputs(root / "local")
    assert _gradebook(root / "dask") == _gradebook(root / "local")
    assert results["honest"]["score"] == results["honest"]["max_score"] > 0
    assert results["blank"]["score"] == 0.0
    assert 0 < results["mutant0"]["score"] < results["mutant0"]["max_score"]


def _kill_a_busy_worker(client, killed: dict, stop: threading.Event) -> None:
    """SIGKILL the first worker process seen grading a submission (not the reference: it is cached)."""
    pids = client.run(os.getpid)
    while not stop.is_set():
        busy = {addr: keys for addr, keys in client.processing().items() if keys}
        if busy:
            addr, keys = next(iter(busy.items()))
            killed.update(address=addr, keys=list(keys))
            os.kill(pids[addr], signal.SIGKILL)
            return
        time.sleep(0.02)


def test_killed_worker_loses_nothing_and_rerun_grades_only_the_missing(classroom, cluster, capsys):
    root, submissions = classroom
    out = root / "killed"
    out.mkdir()
    shutil.copy(root / "local" / "reference.json", out / "reference.json")  # same key: graded tasks only
    killed, stop = {}, threading.Event()
    with distributed.Client(cluster.scheduler_address) as client:
        killer = threading.Thread(target=_kill_a_busy_worker, args=(client, killed, stop))
        killer.start()
        try:
            grade_class(LAB, submissions, out, COURSE, progress=False, unsafe=UNSAFE,
                        scheduler=cluster.scheduler_address, time_budget=PATIENT)
        finally:
            stop.set()
            killer.join()
        assert killed, "no worker was seen grading: the kill did not happen mid-run"
        assert killed["address"] not in client.run(os.getpid), "the killed worker is still there"
    assert _outputs(out) == _outputs(root / "local")
    (out / "results" / "mutant0.json").unlink()
    capsys.readouterr()
    grade_class(LAB, submissions, out, COURSE, progress=False, unsafe=UNSAFE, scheduler=cluster.scheduler_address,
                time_budget=PATIENT)
    assert "1 graded now (2 reused)" in capsys.readouterr().err
    assert _outputs(out) == _outputs(root / "local")


def test_worker_with_another_course_version_refuses(tmp_path):
    """The workers' course (--worker-course) has one changed line in a check module: nothing is graded."""
    other = shutil.copytree(FIXTURE_COURSE, tmp_path / "other-course")
    checks = other / "checks" / f"{FIXTURE_LAB}.py"
    checks.write_text(checks.read_text() + "\n# edited after the client's copy\n")
    lab = fixture_lab()
    submissions = write_class(tmp_path / "class", FIXTURE_LAB, {"honest": lab.released_bytes})
    with distributed.LocalCluster(n_workers=1, **LOOPBACK) as small:
        with pytest.raises(GradingRefused, match=r"refuses to grade: its course at .*other-course is not the "
                                                 r"client's \(different lab:"):
            grade_class(FIXTURE_LAB, submissions, tmp_path / "out", FIXTURE_COURSE, limits=TEST_LIMITS,
                        progress=False, unsafe=UNSAFE, scheduler=small.scheduler_address, worker_course=other)
    assert not list((tmp_path / "out" / "results").glob("*.json"))


def test_a_worker_that_imported_older_code_refuses_until_restarted(tmp_path):
    """A long-lived worker grades the course, then a reference in the course's package is edited on disk and the
    client grades with the edited course: the fingerprints agree (both read the files), but the worker process
    still holds the old module, so it refuses; once restarted, it grades."""
    course = shutil.copytree(FIXTURE_COURSE, tmp_path / "course")
    lab = fixture_lab()
    submissions = write_class(tmp_path / "class", FIXTURE_LAB, {"honest": lab.released_bytes})
    run = dict(limits=TEST_LIMITS, progress=False, unsafe=UNSAFE, worker_course=course, time_budget=PATIENT)
    with distributed.LocalCluster(n_workers=1, **LOOPBACK) as small:
        grade_class(FIXTURE_LAB, submissions, tmp_path / "first", course, scheduler=small.scheduler_address, **run)
        reference = course / "pkg" / "fixref" / "__init__.py"
        reference.write_text(reference.read_text() + "\n# edited while the worker was running\n")
        with pytest.raises(GradingRefused, match=r"imported other code in an earlier run \(its sandbox packages "
                                                 r"differ"):
            grade_class(FIXTURE_LAB, submissions, tmp_path / "second", course, scheduler=small.scheduler_address,
                        **run)
        assert not list((tmp_path / "second" / "results").glob("*.json"))
        with distributed.Client(small.scheduler_address) as client:
            client.restart()
        grade_class(FIXTURE_LAB, submissions, tmp_path / "second", course, scheduler=small.scheduler_address, **run)
    assert len(list((tmp_path / "second" / "results").glob("*.json"))) == 1
