"""Set up and run the lowbit course's JupyterHub (run as root): accounts, course directory, exchange, the hub.

    python course/hub/hubctl.py demo [--port 8000] [--students 3]    # `make hub`: a hub on 127.0.0.1 with test users
    python course/hub/hubctl.py users --instructor NAME --students A,B,C [--password-file FILE]
    python course/hub/hubctl.py course --instructor NAME [--labs lab1_linear ...]   # course dir + exchange folders
    python course/hub/hubctl.py up --instructors NAME --students A,B,C              # run the hub (foreground)
    python course/hub/hubctl.py remove-users NAME ...                               # delete accounts and homes
    python course/hub/hubctl.py stage-feedback LAB        # as the instructor: autograder feedback -> nbgrader's tree

The hub's configuration is ``course/hub/jupyterhub_config.py``; the instructor guide's "Running the course on
JupyterHub" section is the walk-through. The end-to-end test (tests/test_hub_end_to_end.py) drives these
functions; nothing here is test-only.
"""
from __future__ import annotations

import argparse
import grp
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

HUB_DIR = Path(__file__).resolve().parent
REPO = HUB_DIR.parents[1]
INSTRUCTORS_GROUP = "lowbit-instructors"
COURSE_DIR = "lowbit-course"
#: The instructor's own temporary folder (TMPDIR): the autograder caches its answer-free build of the course
#: package under $TMPDIR, and a shared /tmp holds another account's copy that this one cannot write.
PRIVATE_TMP = ".cache/lowbit-tmp"
DEFAULT_LABS = ("lab1_linear",)


@dataclass
class Hub:
    """Where a hub keeps its state and listens, and who its users are."""
    state: Path
    exchange: Path
    instructors: list[str]
    students: list[str]
    course_id: str = "lowbit"
    port: int = 8000
    api_port: int = 8081
    proxy_api_port: int = 8001
    env_bin: Path = field(default_factory=lambda: Path(sys.executable).parent)
    service_token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """The environment ``jupyterhub -f course/hub/jupyterhub_config.py`` reads its settings from."""
        path = os.pathsep.join([str(self.env_bin), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                                "/sbin", "/bin"])
        return {**os.environ, "PATH": path, "LOWBIT_HUB_STATE": str(self.state),
                "LOWBIT_HUB_PORT": str(self.port), "LOWBIT_HUB_API_PORT": str(self.api_port),
                "LOWBIT_PROXY_API_PORT": str(self.proxy_api_port), "LOWBIT_INSTRUCTORS": ",".join(self.instructors),
                "LOWBIT_STUDENTS": ",".join(self.students), "LOWBIT_EXCHANGE": str(self.exchange),
                "LOWBIT_COURSE_ID": self.course_id, "LOWBIT_COURSE_DIR": COURSE_DIR,
                "LOWBIT_ENV_BIN": str(self.env_bin), "LOWBIT_HUB_SERVICE_TOKEN": self.service_token}


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run(*command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a system command; on failure raise with its output (what failed and why)."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if check and result.returncode:
        output = result.stderr.strip() or result.stdout
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {output}")
    return result


# --- accounts ----------------------------------------------------------------------------------------------
def _known(lookup, name: str) -> bool:
    try:
        lookup(name)
        return True
    except KeyError:
        return False


def user_exists(name: str) -> bool:
    return _known(pwd.getpwnam, name)


def group_exists(name: str) -> bool:
    return _known(grp.getgrnam, name)


def ensure_instructors_group() -> None:
    if not group_exists(INSTRUCTORS_GROUP):
        run("groupadd", "--system", INSTRUCTORS_GROUP)


def create_user(name: str, password: str, instructor: bool) -> None:
    """A system account with its own group, a private home (0700) and a password PAM accepts; instructors are also
    members of ``lowbit-instructors``, the group that owns ``inbound/`` and so every submission in it. (A member,
    not their primary group: groupdel refuses to delete an account's primary group, and the deleted accounts'
    entries can linger in the enumeration groupdel checks, which left the group behind after a class.)"""
    if user_exists(name):
        raise RuntimeError(f"account {name!r} exists already: pick other names or remove it first "
                           f"(python course/hub/hubctl.py remove-users {name})")
    if instructor:
        ensure_instructors_group()
    groups = ["-G", INSTRUCTORS_GROUP] if instructor else []
    run("useradd", "-m", "-s", "/bin/bash", "-U", *groups, name)
    Path(pwd.getpwnam(name).pw_dir).chmod(0o700)
    run("chpasswd", input=f"{name}:{password}\n")


def user_pids(name: str) -> list[int]:
    """Processes running as ``name`` (read from /proc)."""
    return uid_pids(pwd.getpwnam(name).pw_uid)


def uid_pids(uid: int) -> list[int]:
    """Processes whose /proc entry belongs to ``uid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                pass
    return pids


def remove_user(name: str) -> None:
    """Stop what still runs as ``name`` (by pid), then delete the account and its home."""
    if not user_exists(name):
        return
    for _ in range(20):
        pids = user_pids(name)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    # -r: home and mail spool (a missing spool is fine)
    delete_until_gone(["userdel", "-r", "-f", name], lambda: user_exists(name), f"account {name!r}", tries=5)


def remove_group(name: str) -> None:
    """Delete the group ``name`` (no account has it as its primary group: instructors are members of it)."""
    if group_exists(name):
        delete_until_gone(["groupdel", name], lambda: group_exists(name), f"group {name!r}", tries=10)


def delete_until_gone(command: list[str], still_there, what: str, tries: int) -> None:
    """Run ``command`` (userdel, groupdel) until ``still_there()`` is false, 0.5 s apart: they fail (exit 1/10)
    while another tool holds the lock on /etc/passwd or /etc/group. Raises with every attempt's error."""
    attempts = []
    for _ in range(tries):
        result = run(*command, check=False)
        if not still_there():
            return
        attempts.append(f"exit {result.returncode}: {result.stderr.strip()}")
        time.sleep(0.5)
    raise RuntimeError(f"could not delete {what} (run `{' '.join(command)}`): " + "; ".join(attempts))


# --- the course directory and the exchange -----------------------------------------------------------------
def chown_tree(path: Path, user: str, group: str | None = None) -> None:
    run("chown", "-R", f"{user}:{group}" if group else user, str(path))


def prepare_exchange(hub: Hub, instructor: str) -> Path:
    """The exchange root (root's, 1777) and the course's folders in it, created before any student can squat
    the course id: ``<course>/`` 0755, ``outbound/`` 0755, ``inbound/`` 2733 (students write, nobody lists,
    group ``lowbit-instructors`` inherited by each submission), ``feedback/`` 0711 (readable by exact name)."""
    hub.exchange.mkdir(parents=True, exist_ok=True)
    hub.exchange.chmod(0o1777)
    course = hub.exchange / hub.course_id
    gid = grp.getgrnam(INSTRUCTORS_GROUP).gr_gid
    uid = pwd.getpwnam(instructor).pw_uid
    for path, mode in ((course, 0o755), (course / "outbound", 0o755), (course / "inbound", 0o2733),
                       (course / "feedback", 0o711)):
        path.mkdir(exist_ok=True)
        os.chown(path, uid, gid)
        path.chmod(mode)
    return course


def prepare_course(instructor: str, labs: list[str]) -> Path:
    """``~instructor/lowbit-course``: each lab's nbgrader source and released version copied from this checkout,
    private to the instructor (0700). Returns the course directory."""
    home = Path(pwd.getpwnam(instructor).pw_dir)
    course = home / COURSE_DIR
    for lab in labs:
        source, released = REPO / "solutions" / lab / f"{lab}.ipynb", REPO / "labs" / lab
        if not source.is_file() or not released.is_dir():
            raise FileNotFoundError(f"lab {lab!r}: {source} or {released} is missing; run `make release` first")
        (course / "solutions" / lab).mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, course / "solutions" / lab / source.name)
        shutil.copytree(released, course / "labs" / lab, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    (home / PRIVATE_TMP).mkdir(parents=True, exist_ok=True)
    chown_tree(home / ".cache", instructor, INSTRUCTORS_GROUP)
    chown_tree(course, instructor, INSTRUCTORS_GROUP)
    course.chmod(0o700)
    home.chmod(0o700)
    return course


def stage_feedback(course: Path, lab: str) -> list[str]:
    """Put ``autograder grade``'s ``grading/<lab>/feedback/<student>/<lab>.html`` where nbgrader's release_feedback
    takes it: ``feedback/<student>/<lab>/<lab>.html`` with the submission's timestamp.txt and
    submission_secret.txt (the secret names the file in the exchange). Returns the students staged."""
    graded = course / "grading" / lab / "feedback"
    if not graded.is_dir():
        raise FileNotFoundError(f"{graded} does not exist: grade first (autograder grade {lab} "
                                f"{course / 'submitted'} --out {course / 'grading' / lab})")
    staged = []
    for html in sorted(graded.glob(f"*/{lab}.html")):
        student = html.parent.name
        submitted = course / "submitted" / student / lab
        if not (submitted / "timestamp.txt").is_file():
            raise FileNotFoundError(f"{submitted}/timestamp.txt is missing: feedback of {student!r} has no collected "
                                    "submission to belong to (collect with nbgrader first)")
        target = course / "feedback" / student / lab
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(html, target / f"{lab}.html")
        for name in ("timestamp.txt", "submission_secret.txt"):
            if (submitted / name).is_file():
                shutil.copyfile(submitted / name, target / name)
        staged.append(student)
    return staged


# --- read access the users' servers need, and what they must not read ---------------------------------------
def grant_traverse(paths: list[Path]) -> list[tuple[Path, int]]:
    """Give others search permission (o+x) on every ancestor folder of ``paths`` that lacks it (e.g. /root when
    the Python environment lives under it), so the users' servers can run that environment. Returns the
    (folder, old mode) pairs for ``restore_modes``."""
    changed = []
    for path in paths:
        for folder in [*reversed(Path(path).resolve().parents), Path(path).resolve()]:
            mode = folder.stat().st_mode
            if folder.is_dir() and not mode & stat.S_IXOTH and all(folder != c for c, _ in changed):
                folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
                changed.append((folder, stat.S_IMODE(mode)))
    return changed


def hide_from_others(paths: list[Path]) -> list[tuple[Path, int]]:
    """Remove every permission of group and others on ``paths`` (the checkout's ``solutions/``: a hub served from
    a checkout must not hand students the instructor's source). Returns (path, old mode) for ``restore_modes``."""
    changed = []
    for path in paths:
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            path.chmod(mode & 0o700)
            changed.append((path, mode))
    return changed


def restore_modes(changed: list[tuple[Path, int]]) -> None:
    for path, mode in reversed(changed):
        path.chmod(mode)


def environment_paths() -> list[Path]:
    """What the users' servers must be able to read: the Python installation, the environment, this checkout."""
    return [Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).parent, REPO]


# --- the hub process ---------------------------------------------------------------------------------------
def start_hub(hub: Hub, log: Path, timeout: float = 120) -> subprocess.Popen:
    """Start JupyterHub (and, through it, configurable-http-proxy) in its own process group; wait for its API."""
    if shutil.which("configurable-http-proxy", path=hub.environment()["PATH"]) is None:
        raise FileNotFoundError("configurable-http-proxy is not on PATH: apt-get install nodejs npm && "
                                "npm install -g configurable-http-proxy")
    for program in ("jupyterhub", "jupyterhub-singleuser"):
        if not (hub.env_bin / program).exists():
            raise FileNotFoundError(f"{hub.env_bin / program} is missing: install JupyterHub into this environment "
                                    "(pip install -e '.[course,dev]')")
    hub.state.mkdir(parents=True, exist_ok=True)
    hub.state.chmod(0o700)
    process = subprocess.Popen([str(hub.env_bin / "jupyterhub"), "-f", str(HUB_DIR / "jupyterhub_config.py")],
                               cwd=hub.state, env=hub.environment(), stdout=log.open("ab"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterHub exited with {process.returncode} while starting; see {log}")
        try:
            if requests.get(f"{hub.url}/hub/api/", timeout=2).ok:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_hub(process)
    raise TimeoutError(f"JupyterHub did not answer on {hub.url} within {timeout:.0f} s; see {log}")


def stop_hub(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM the hub (it stops every user's server and its proxy), then kill its process group if needed."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)      # the proxy it started shares the group
    except ProcessLookupError:
        pass
    process.wait()


def stray_proxy(hub: Hub) -> int | None:
    """The pid of this hub's configurable-http-proxy if it still runs (its pid file names it; the pid must still
    be a configurable-http-proxy process, not an unrelated one that got the number since)."""
    pid_file = hub.state / "proxy.pid"
    if not pid_file.is_file() or not pid_file.read_text().strip().isdigit():
        return None
    pid = int(pid_file.read_text())
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"configurable-http-proxy" in command else None


def stop_stray_proxy(hub: Hub) -> None:
    pid = stray_proxy(hub)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class HubAPI:
    """A thin client of JupyterHub's REST API (``/hub/api``) with one token."""

    def __init__(self, url: str, token: str):
        self.url, self.session = url, requests.Session()
        self.session.headers["Authorization"] = f"token {token}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self.session.request(method, f"{self.url}/hub/api{path}", timeout=60, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} /hub/api{path}: HTTP {response.status_code} {response.text[:500]}")
        return response

    def user_token(self, name: str, note: str) -> str:
        return self.request("POST", f"/users/{name}/tokens", json={"note": note, "expires_in": 3600}).json()["token"]

    def start_server(self, name: str) -> None:
        self.request("POST", f"/users/{name}/server")

    def wait_ready(self, name: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.request("GET", f"/users/{name}").json().get("servers", {}).get("")
            if server and server.get("ready"):
                return
            time.sleep(1)
        raise TimeoutError(f"the server of {name!r} was not ready within {timeout:.0f} s")

    def stop_server(self, name: str) -> None:
        self.request("DELETE", f"/users/{name}/server")


@contextmanager
def running_class(scratch: Path, instructor: str, students: list[str], passwords: dict[str, str],
                  labs: list[str], course_id: str = "lowbit") -> Iterator[Hub]:
    """Accounts, course directory, exchange and a running hub (with a service token) under ``scratch``; on exit,
    however it is left, the hub and every process of these accounts stop, the accounts and their homes are
    deleted and the permissions changed for the hub are restored. ``scratch`` must be reachable by everyone."""
    accounts, changed, process, hub = [instructor, *students], [], None, None
    group_existed = group_exists(INSTRUCTORS_GROUP)
    try:
        for name in accounts:
            create_user(name, passwords[name], instructor=name == instructor)
        changed += grant_traverse(environment_paths()) + hide_from_others([REPO / "solutions"])
        api_port, port, proxy_api_port = free_ports(3)
        hub = Hub(state=scratch / "state", exchange=scratch / "exchange", instructors=[instructor],
                  students=list(students), course_id=course_id, port=port, api_port=api_port,
                  proxy_api_port=proxy_api_port, service_token=secrets.token_hex(32))
        prepare_course(instructor, labs)
        prepare_exchange(hub, instructor)
        process = start_hub(hub, scratch / "jupyterhub.log")
        yield hub
    finally:
        steps = [(stop_hub, process)] if process is not None else []
        steps += [(stop_stray_proxy, hub)] if hub is not None else []
        steps += [(remove_user, name) for name in accounts]
        steps += [] if group_existed else [(remove_group, INSTRUCTORS_GROUP)]
        run_every_step(steps + [(restore_modes, changed)])


def run_every_step(steps: list[tuple]) -> None:
    """Clean-up: run every ``(function, argument)`` even when an earlier one fails; then report all failures."""
    failures = []
    for function, argument in steps:
        try:
            function(argument)
        except Exception as error:  # noqa: BLE001 -- collected and raised below, none is lost
            failures.append(f"{function.__name__}: {error}")
    if failures:
        raise RuntimeError("cleaning up the class hub left work undone:\n  " + "\n  ".join(failures))


# --- command line ------------------------------------------------------------------------------------------
def _require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("run as root: the hub creates accounts and starts each user's server as that user")


def demo(port: int, n_students: int, state: Path, exchange: Path) -> None:
    """``make hub``: an instructor and students with fresh passwords, Lab 1 in the course, the hub on 127.0.0.1."""
    _require_root()
    instructor, students = "lowbit-teacher", [f"lowbit-student{i}" for i in range(1, n_students + 1)]
    passwords = {}
    for name in [instructor, *students]:
        if not user_exists(name):
            passwords[name] = secrets.token_urlsafe(9)
            create_user(name, passwords[name], instructor=name == instructor)
    hub = Hub(state=state, exchange=exchange, instructors=[instructor], students=students, port=port)
    prepare_course(instructor, list(DEFAULT_LABS))
    prepare_exchange(hub, instructor)
    changed = grant_traverse(environment_paths()) + hide_from_others([REPO / "solutions"])
    print(f"accounts of the hub on {hub.url} (password shown once, when created):")
    for name in [instructor, *students]:
        print(f"  {name:20s} {passwords.get(name, '(existing account: password unchanged)')}")
    print("The instructor releases lab1_linear from Nbgrader > Formgrader; students fetch it from Nbgrader > "
          "Assignments. Ctrl-C stops the hub; `python course/hub/hubctl.py remove-users "
          f"{instructor} {' '.join(students)}` deletes the accounts.")
    try:
        serve(hub)
    finally:
        restore_modes(changed)


def serve(hub: Hub) -> None:
    """Run the hub in the foreground until it exits or Ctrl-C; then stop it and every user's server."""
    log = hub.state / "jupyterhub.log"
    process = start_hub(hub, log)
    print(f"JupyterHub on {hub.url} (log: {log}); Ctrl-C stops it")
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_hub(process)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="a hub on 127.0.0.1 with an instructor and test students (make hub)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--students", type=int, default=3)
    p.add_argument("--state", type=Path, default=Path("/srv/lowbit-hub"))
    p.add_argument("--exchange", type=Path, default=Path("/srv/nbgrader/exchange"))
    p = sub.add_parser("users", help="create the instructor's and the students' accounts")
    p.add_argument("--instructor", required=True)
    p.add_argument("--students", required=True, help="comma-separated account names")
    p.add_argument("--password-file", type=Path, help="write name:password lines here (mode 0600)")
    p = sub.add_parser("course", help="the instructor's course directory and the exchange's course folders")
    p.add_argument("--instructor", required=True)
    p.add_argument("--labs", nargs="+", default=list(DEFAULT_LABS))
    p.add_argument("--exchange", type=Path, default=Path("/srv/nbgrader/exchange"))
    p.add_argument("--course-id", default="lowbit")
    p = sub.add_parser("up", help="run the hub in the foreground")
    p.add_argument("--instructors", required=True)
    p.add_argument("--students", required=True)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--state", type=Path, default=Path("/srv/lowbit-hub"))
    p.add_argument("--exchange", type=Path, default=Path("/srv/nbgrader/exchange"))
    p.add_argument("--course-id", default="lowbit")
    p = sub.add_parser("remove-users", help="delete accounts and their homes")
    p.add_argument("names", nargs="+")
    p = sub.add_parser("stage-feedback", help="(instructor) autograder feedback -> nbgrader's feedback/ tree")
    p.add_argument("lab")
    p.add_argument("--course", type=Path, default=Path.home() / COURSE_DIR)
    args = parser.parse_args(argv)

    if args.command == "stage-feedback":
        print("staged:", ", ".join(stage_feedback(args.course, args.lab)) or "nobody")
        return
    _require_root()
    if args.command == "demo":
        demo(args.port, args.students, args.state, args.exchange)
    elif args.command == "users":
        lines = []
        for name in [args.instructor, *args.students.split(",")]:
            password = secrets.token_urlsafe(12)
            create_user(name, password, instructor=name == args.instructor)
            lines.append(f"{name}:{password}")
        if args.password_file:
            args.password_file.touch(mode=0o600)
            args.password_file.write_text("\n".join(lines) + "\n")
        else:
            print("\n".join(lines))
    elif args.command == "course":
        hub = Hub(state=Path("/nonexistent"), exchange=args.exchange, instructors=[args.instructor], students=[],
                  course_id=args.course_id)
        print(prepare_course(args.instructor, args.labs), prepare_exchange(hub, args.instructor))
    elif args.command == "up":
        hub = Hub(state=args.state, exchange=args.exchange, instructors=args.instructors.split(","),
                  students=args.students.split(","), course_id=args.course_id, port=args.port)
        serve(hub)
    elif args.command == "remove-users":
        for name in args.names:
            remove_user(name)


if __name__ == "__main__":
    main()
