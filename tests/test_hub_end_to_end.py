"""A class on a real JupyterHub, end to end: release -> fetch -> submit -> collect -> grade -> feedback.

Real components only: system accounts (an instructor, three students), JupyterHub with configurable-http-proxy,
one JupyterLab server per user started by JupyterHub's LocalProcessSpawner, nbgrader's exchange (with the
course's private submit, course/hub/lowbit_exchange.py), `autograder grade` in the bubblewrap sandbox. Everything
is driven through JupyterHub's REST API and each user's server API with tokens. The module fixture builds the
whole class once; the tests check what it produced and what the students cannot reach. Needs root (accounts);
skipped with the reason where the machine cannot create users.
"""
from __future__ import annotations

import csv
import grp
import importlib.util
import json
import os
import pwd
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAB = "lab1_linear"
COURSE_ID = "lowbit"
MAX_AUTOGRADED = 86.0      # Lab 1's autograded points (course/instructor-guide.md, grades.csv)

_spec = importlib.util.spec_from_file_location("hubctl", REPO / "course" / "hub" / "hubctl.py")
hubctl = sys.modules["hubctl"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hubctl)


def _cannot_create_users() -> str | None:
    if os.geteuid() != 0:
        return "creating the test's system accounts needs root (useradd); run as root, e.g. in CI (.ci/run)"
    missing = [tool for tool in ("useradd", "userdel", "chpasswd", "runuser") if shutil.which(tool) is None]
    if missing:
        return f"this machine has no {', '.join(missing)}: cannot create the test's system accounts"
    return None


pytestmark = [pytest.mark.xdist_group("hub"),
              pytest.mark.skipif(_cannot_create_users() is not None, reason=_cannot_create_users() or "")]


@dataclass
class Server:
    """One user's JupyterLab server behind the hub's proxy, called with that user's token."""
    hub_url: str
    user: str
    token: str

    def call(self, method: str, path: str, expect: int | tuple = (200, 201), **kwargs):
        import requests
        response = requests.request(method, f"{self.hub_url}/user/{self.user}/{path.lstrip('/')}",
                                    headers={"Authorization": f"token {self.token}"}, timeout=180, **kwargs)
        expected = (expect,) if isinstance(expect, int) else expect
        assert response.status_code in expected, \
            f"{method} {path} as {self.user}: HTTP {response.status_code} {response.text[:800]}"
        return response

    def nbgrader(self, path: str, **kwargs) -> dict:
        """A formgrader / assignment-list call; nbgrader answers HTTP 200 with success false on failure."""
        result = self.call("POST", path, **kwargs).json()
        if isinstance(result, dict) and "success" in result:
            assert result["success"], f"{path} as {self.user} failed: {result.get('error') or result}"
        return result


@dataclass
class ClassRun:
    hub: "hubctl.Hub"
    instructor: str
    students: dict[str, str]                  # role ("correct", "partly_wrong", "blank") -> account
    servers: dict[str, Server] = field(default_factory=dict)
    course: Path = Path()
    inbound: dict[str, Path] = field(default_factory=dict)       # account -> its submission folder in inbound/
    fetched_feedback: dict[str, bytes] = field(default_factory=dict)
    feedback_paths: dict[str, Path] = field(default_factory=dict)              # account -> its fetched copy
    released_feedback: dict[str, Path] = field(default_factory=dict)
    listing: dict[str, list] = field(default_factory=dict)
    usage: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def as_user(user: str, *command: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``command`` as ``user`` with a login-like environment and this Python environment's bin/ on PATH."""
    home = pwd.getpwnam(user).pw_dir
    env = ["HOME=" + home, "USER=" + user, "LOGNAME=" + user, "LANG=C.UTF-8",
           f"PATH={Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
           f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS=1",
           f"TMPDIR={Path(home) / hubctl.PRIVATE_TMP}"]
    result = subprocess.run(["runuser", "-u", user, "--", "env", "-i", *env, *command], cwd="/",
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(command)} as {user}: {result.returncode}\n{result.stderr[-3000:]}"
    return result


def read_as(user: str, path: Path, listing: bool = False) -> str:
    """What ``user`` gets trying to read (or list) ``path``: 'ok' or the error's name (PermissionError, ...)."""
    action = "os.listdir(p)" if listing else "open(p, 'rb').read()"
    code = f"import os, sys\np = sys.argv[1]\ntry:\n    {action}\n    print('ok')\nexcept OSError as e:\n" \
           "    print(type(e).__name__)"
    return as_user(user, sys.executable, "-c", code, str(path)).stdout.strip()


def answers_for(role: str, released: bytes) -> bytes:
    """The notebook a student of ``role`` submits: the solution, the solution with one wrong cell, or nothing."""
    from autograder.mutants import load_catalogue, mutant_submission
    from autograder.submissions import fill_answers, solution_answers
    source = (REPO / "solutions" / LAB / f"{LAB}.ipynb").read_bytes()
    if role == "correct":
        return fill_answers(released, solution_answers(source))
    if role == "partly_wrong":
        mutant = next(m for m in load_catalogue(REPO / "tests" / "mutants" / f"{LAB}.py")
                      if m.function == "linear_quantize")
        return mutant_submission(source, released, mutant)
    return released


def server_usage(user: str) -> dict:
    """Resident memory (PSS where readable) and CPU seconds of every process running as ``user``."""
    import psutil
    pss = rss = cpu = 0.0
    for pid in hubctl.user_pids(user):
        try:
            proc = psutil.Process(pid)
            info = proc.memory_full_info()
            pss, rss = pss + getattr(info, "pss", info.rss), rss + info.rss
            times = proc.cpu_times()
            cpu += times.user + times.system
        except psutil.Error:
            pass
    return {"pss_mib": round(pss / 2**20, 1), "rss_mib": round(rss / 2**20, 1), "cpu_s": round(cpu, 2)}


def _log_tail(scratch: Path) -> str:
    log_file = scratch / "jupyterhub.log"
    return log_file.read_text(errors="replace")[-6000:] if log_file.exists() else "(no log)"


@pytest.fixture(scope="module")
def class_run():
    """The whole class, once: accounts, hub, servers, release, fetch, submit, collect, grade, feedback.
    Afterwards (also when a step failed): nothing of the hub or of the accounts may be left."""
    tag = secrets.token_hex(2)
    instructor = f"lbh{tag}t"
    students = {"correct": f"lbh{tag}a", "partly_wrong": f"lbh{tag}b", "blank": f"lbh{tag}c"}
    accounts = [instructor, *students.values()]
    passwords = {name: secrets.token_urlsafe(12) for name in accounts}
    scratch = Path(tempfile.mkdtemp(prefix="lowbit-hub-"))
    scratch.chmod(0o755)                      # the exchange lives here: every account must reach it
    uids, hub = [], None
    group_existed = hubctl.group_exists(hubctl.INSTRUCTORS_GROUP)
    try:
        with hubctl.running_class(scratch, instructor, list(students.values()), passwords, [LAB], COURSE_ID) as hub:
            uids = [pwd.getpwnam(name).pw_uid for name in accounts]
            run = ClassRun(hub=hub, instructor=instructor, students=students,
                           course=Path(pwd.getpwnam(instructor).pw_dir) / hubctl.COURSE_DIR)
            try:
                drive_class(run)
            except BaseException:
                print(f"--- end of the hub's log ---\n{_log_tail(scratch)}")
                raise
            yield run
    finally:
        cleanup_said = repr(sys.exc_info()[1])   # what running_class's clean-up raised, if anything
        leftovers = [pid for uid in uids for pid in hubctl.uid_pids(uid)]
        proxy = hubctl.stray_proxy(hub) if hub else None
        log = _log_tail(scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        assert not leftovers and proxy is None, f"left running: processes {leftovers}, proxy {proxy}\n{log}"
        left = [name for name in accounts if hubctl.user_exists(name)]
        assert not left, f"test accounts left behind: {left}; the clean-up said: {cleanup_said}"
        group_left = hubctl.group_exists(hubctl.INSTRUCTORS_GROUP) and not group_existed
        assert not group_left, f"the instructors' group left behind; the clean-up said: {cleanup_said}"


def drive_class(run: ClassRun) -> None:
    """Everything a class does, through JupyterHub's REST API and each user's server API."""
    started = time.monotonic()
    hub, instructor, students = run.hub, run.instructor, run.students
    api = hubctl.HubAPI(hub.url, hub.service_token)
    for name in [instructor, *students.values()]:   # start all four servers, then wait: they come up in parallel
        api.start_server(name)
    for name in [instructor, *students.values()]:
        api.wait_ready(name)
        run.servers[name] = Server(hub.url, name, api.user_token(name, "lowbit end-to-end test"))
    run.timings["servers ready"] = time.monotonic() - started
    teacher = run.servers[instructor]

    teacher.nbgrader(f"formgrader/api/assignment/{LAB}/release")
    for role, name in students.items():
        server = run.servers[name]
        run.listing[name] = server.call("GET", "assignments", params={"course_id": COURSE_ID}).json()["value"]
        server.nbgrader("assignments/fetch", json={"course_id": COURSE_ID, "assignment_id": LAB})
        notebook = server.call("GET", f"api/contents/{LAB}/{LAB}.ipynb", params={"content": "1"}).json()
        released = json.dumps(notebook["content"]).encode()
        answered = json.loads(answers_for(role, released))
        server.call("PUT", f"api/contents/{LAB}/{LAB}.ipynb",
                    json={"type": "notebook", "format": "json", "content": answered})
        server.nbgrader("assignments/submit", json={"course_id": COURSE_ID, "assignment_id": LAB})
        run.usage[name] = server_usage(name)
    for path in (hub.exchange / COURSE_ID / "inbound").iterdir():
        run.inbound[path.name.split("+")[0]] = path
    teacher.nbgrader(f"formgrader/api/assignment/{LAB}/collect")
    run.timings["submitted and collected"] = time.monotonic() - started

    grading = run.course / "grading" / LAB
    as_user(instructor, str(Path(sys.executable).parent / "autograder"), "secret", "--out", str(grading))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    graded = as_user(instructor, str(Path(sys.executable).parent / "autograder"), "grade", LAB,
                     str(run.course / "submitted"), "--out", str(grading), "--course", str(run.course), "--jobs", "2",
                     timeout=400)
    print(f"\nautograder grade: {graded.stderr.strip().splitlines()[-1:]}")
    run.timings["graded"] = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.timings["grading CPU seconds"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    as_user(instructor, sys.executable, str(REPO / "course" / "hub" / "hubctl.py"), "stage-feedback", LAB)
    teacher.nbgrader(f"formgrader/api/assignment/{LAB}/release_feedback")
    run.released_feedback = {p.name: p for p in (hub.exchange / COURSE_ID / "feedback").iterdir()}
    for name in students.values():
        server = run.servers[name]
        server.nbgrader("assignments/fetch_feedback", json={"course_id": COURSE_ID, "assignment_id": LAB})
        folder = server.call("GET", f"api/contents/{LAB}/feedback").json()["content"]
        assert len(folder) == 1, f"{name}: expected one feedback folder (one submission), got {folder}"
        html = server.call("GET", f"api/contents/{folder[0]['path']}/{LAB}.html", params={"content": "1"}).json()
        run.fetched_feedback[name] = html["content"].encode()
        run.feedback_paths[name] = Path(pwd.getpwnam(name).pw_dir) / folder[0]["path"] / f"{LAB}.html"
    run.timings["feedback fetched"] = time.monotonic() - started
    print(f"\nhub end-to-end timings (s): {json.dumps({k: round(v, 1) for k, v in run.timings.items()})}")
    print(f"per-student server usage after submitting: {json.dumps(run.usage)}")


def read_grades_csv(run: ClassRun) -> dict[str, dict]:
    with (run.course / "grading" / LAB / "grades.csv").open() as handle:
        return {row["student_id"]: row for row in csv.DictReader(handle)}


def test_grades_follow_the_answers(class_run):
    rows = read_grades_csv(class_run)
    assert set(rows) == set(class_run.students.values())
    scores = {role: float(rows[name]["score"]) for role, name in class_run.students.items()}
    assert all(rows[name]["status"] == "ok" and rows[name]["sandbox"] != "unsafe" for name in rows), rows
    assert scores["correct"] == float(rows[class_run.students["correct"]]["max_score"]) == MAX_AUTOGRADED
    assert 0 < scores["partly_wrong"] < scores["correct"]
    assert scores["blank"] == 0
    wrong = rows[class_run.students["partly_wrong"]]
    assert float(wrong["test_linear_quantize"]) == 0
    assert float(rows[class_run.students["correct"]]["test_linear_quantize"]) > 0


def test_gradebook_equals_grades_csv(class_run):
    from nbgrader.api import Gradebook
    rows = read_grades_csv(class_run)
    cells = [c for c in next(iter(rows.values())) if c.startswith("test_")]
    db = class_run.course / "grading" / LAB / "gradebook.db"
    with Gradebook(f"sqlite:///{db}") as gradebook:
        assert sorted(s.id for s in gradebook.students) == sorted(rows)
        for student, row in rows.items():
            submission = gradebook.find_submission_notebook(LAB, LAB, student)
            assert round(submission.score, 2) == float(row["score"]), student
            for cell in cells:
                grade = gradebook.find_grade(cell, LAB, LAB, student)
                assert round(grade.score, 2) == float(row[cell]), (student, cell)


def test_each_student_fetched_their_own_feedback(class_run):
    grading = class_run.course / "grading" / LAB / "feedback"
    assert len(class_run.released_feedback) == 3
    for name in class_run.students.values():
        own = (grading / name / f"{LAB}.html").read_bytes()
        assert class_run.fetched_feedback[name] == own
        others = [(grading / other / f"{LAB}.html").read_bytes() for other in class_run.students.values()
                  if other != name]
        assert all(class_run.fetched_feedback[name] != other for other in others)


def test_release_reached_every_student_through_the_exchange(class_run):
    for name, listing in class_run.listing.items():
        assert [(a["assignment_id"], a["status"]) for a in listing] == [(LAB, "released")], listing
    assert sorted(class_run.inbound) == sorted(class_run.students.values())
    collected = sorted(p.name for p in (class_run.course / "submitted").iterdir())
    assert collected == sorted(class_run.students.values())


def test_a_student_cannot_reach_another_students_submission_or_feedback(class_run):
    me, other = class_run.students["blank"], class_run.students["correct"]
    exchange = class_run.hub.exchange / COURSE_ID
    assert read_as(me, exchange / "inbound", listing=True) == "PermissionError"
    assert read_as(me, exchange / "feedback", listing=True) == "PermissionError"
    theirs = class_run.inbound[other]
    for path in (theirs, ):
        assert read_as(me, path, listing=True) == "PermissionError"
    for name in (f"{LAB}.ipynb", "submission_secret.txt", "timestamp.txt"):
        assert read_as(other, theirs / name) == "ok"           # the path is right: its owner reads it
        assert read_as(me, theirs / name) == "PermissionError"  # even knowing the exact path
    home = Path(pwd.getpwnam(other).pw_dir)
    assert read_as(me, home / LAB / f"{LAB}.ipynb") == "PermissionError"
    assert read_as(other, class_run.feedback_paths[other]) == "ok"
    assert read_as(me, class_run.feedback_paths[other]) == "PermissionError"
    assert read_as(me, home, listing=True) == "PermissionError"
    # through the servers: my token opens neither another student's server nor the instructor's formgrader
    mine = class_run.servers[me]
    Server(mine.hub_url, other, mine.token).call("GET", "api/contents", expect=(403, 404))
    Server(mine.hub_url, class_run.instructor, mine.token).call("GET", "formgrader/api/assignments", expect=(403, 404))
    # the student's server has no formgrader at all
    mine.call("GET", "formgrader/api/assignments", expect=404)


def test_a_student_cannot_read_the_instructors_source_or_gradebook(class_run):
    me = class_run.students["correct"]
    course = class_run.course
    for path in (course / "solutions" / LAB / f"{LAB}.ipynb", course / "grading" / LAB / "gradebook.db",
                 course / "grading" / LAB / "grades.csv", course / "grading" / LAB / "grading-secret",
                 course / "gradebook.db", REPO / "solutions" / LAB / f"{LAB}.py"):
        assert read_as(me, path) == "PermissionError", path
    assert read_as(class_run.instructor, course / "grading" / LAB / "grades.csv") == "ok"


def test_instructor_collects_through_the_instructors_group(class_run):
    """The private submit keeps submissions readable by the instructors' group: collect copied every one."""
    for name, folder in class_run.inbound.items():
        assert (folder.stat().st_mode & 0o777) == 0o770
        for path in folder.iterdir():
            assert path.stat().st_mode & 0o777 == 0o640, path
            assert path.stat().st_gid == grp.getgrnam(hubctl.INSTRUCTORS_GROUP).gr_gid, path
        collected = class_run.course / "submitted" / name / LAB / f"{LAB}.ipynb"
        assert collected.read_bytes() == (folder / f"{LAB}.ipynb").read_bytes()


def test_clean_up_runs_every_step_and_reports_each_failure():
    """One failing clean-up step (a hub that will not stop, an account that will not go) neither hides the other
    failures nor skips the steps after it."""
    ran = []

    def fails(what):
        ran.append(what)
        raise OSError(f"{what} is busy")

    with pytest.raises(RuntimeError) as raised:
        hubctl.run_every_step([(fails, "hub"), (ran.append, "account"), (fails, "group"), (ran.append, "modes")])
    assert ran == ["hub", "account", "group", "modes"]
    assert "fails: hub is busy" in str(raised.value) and "fails: group is busy" in str(raised.value)
