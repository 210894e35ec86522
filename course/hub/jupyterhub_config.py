"""JupyterHub configuration for a lowbit class: PAM accounts, one local server per user, nbgrader's exchange.

Started by ``course/hub/hubctl.py`` (``make hub``, the end-to-end test) with the settings below in the
environment; run by hand with ``jupyterhub -f course/hub/jupyterhub_config.py`` after exporting them.

    LOWBIT_HUB_STATE        folder of the hub's database, cookie secret and pid files (root only, 0700)
    LOWBIT_HUB_IP / _PORT   public address of the proxy (default 127.0.0.1:8000)
    LOWBIT_HUB_API_PORT     the hub's own port (default 8081); LOWBIT_PROXY_API_PORT the proxy's API (8001)
    LOWBIT_INSTRUCTORS      comma-separated system accounts of the instructors (JupyterHub group "instructors")
    LOWBIT_STUDENTS         comma-separated system accounts of the students (group "students")
    LOWBIT_EXCHANGE         nbgrader's exchange root (Exchange.root), LOWBIT_COURSE_ID the course id
    LOWBIT_COURSE_DIR       the instructor's course directory, relative to their home (default lowbit-course)
    LOWBIT_ENV_BIN          bin/ of the Python environment the users' servers run from (default: this Python's)
    LOWBIT_HUB_SERVICE_TOKEN  optional: the API token of the "lowbit-course" service (scripts, the test)
    LOWBIT_HUB_DEBUG        1: debug logs of the hub and the users' servers

Roles: each user's server gets JUPYTER_CONFIG_PATH=course/hub/roles/<role>, which holds that role's
nbgrader_config.py and enables nbgrader's extensions for it: the formgrader (and create-assignment, course
list) for instructors, only the assignment list and validate for students.
"""
import os
import pwd
import sys
from pathlib import Path

c = get_config()  # noqa: F821  (injected by traitlets when JupyterHub loads this file)

HERE = Path(__file__).resolve().parent
ENV = os.environ
sys.path.insert(0, str(HERE))
from hubctl import COURSE_DIR, PRIVATE_TMP  # noqa: E402  (the course directory's and TMPDIR's names, one place)
STATE = Path(ENV.get("LOWBIT_HUB_STATE", "/srv/lowbit-hub"))
ENV_BIN = Path(ENV.get("LOWBIT_ENV_BIN", str(Path(sys.executable).parent)))


def _names(variable: str) -> list[str]:
    return [name.strip() for name in ENV.get(variable, "").split(",") if name.strip()]


INSTRUCTORS, STUDENTS = _names("LOWBIT_INSTRUCTORS"), _names("LOWBIT_STUDENTS")
if not INSTRUCTORS:
    raise SystemExit("LOWBIT_INSTRUCTORS is empty: name the instructors' system accounts (comma-separated)")
if set(INSTRUCTORS) & set(STUDENTS):
    raise SystemExit(f"accounts both instructor and student: {sorted(set(INSTRUCTORS) & set(STUDENTS))}")

# --- the hub, its proxy (configurable-http-proxy from npm, started by the hub) and its state ---------------
c.JupyterHub.ip = ENV.get("LOWBIT_HUB_IP", "127.0.0.1")
c.JupyterHub.port = int(ENV.get("LOWBIT_HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(ENV.get("LOWBIT_HUB_API_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{int(ENV.get('LOWBIT_PROXY_API_PORT', '8001'))}"
c.ConfigurableHTTPProxy.pid_file = str(STATE / "proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(STATE / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True          # stopping the hub stops every user's server
c.JupyterHub.cleanup_proxy = True
c.JupyterHub.log_level = "DEBUG" if ENV.get("LOWBIT_HUB_DEBUG") == "1" else "INFO"

# --- who may log in: the course's system accounts, through PAM ----------------------------------------------
c.JupyterHub.authenticator_class = "pam"
c.Authenticator.allowed_users = set(INSTRUCTORS + STUDENTS)
c.Authenticator.manage_groups = False
c.JupyterHub.load_groups = {"instructors": {"users": INSTRUCTORS}, "students": {"users": STUDENTS}}

# --- each user's server: a local process running as that user -----------------------------------------------
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [str(ENV_BIN / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
c.Spawner.start_timeout = 180                # a loaded 2-core machine starts JupyterLab in 10-40 s
c.Spawner.http_timeout = 180
c.Spawner.debug = ENV.get("LOWBIT_HUB_DEBUG") == "1"
EXCHANGE, COURSE_ID = ENV.get("LOWBIT_EXCHANGE", "/srv/nbgrader/exchange"), ENV.get("LOWBIT_COURSE_ID", "lowbit")
c.Spawner.environment = {
    # nbgrader runs alembic in a subprocess: the environment's bin/ must be on PATH
    "PATH": f"{ENV_BIN}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
    "LOWBIT_EXCHANGE": EXCHANGE,
    "LOWBIT_COURSE_ID": COURSE_ID,
    "LOWBIT_COURSE_DIR": ENV.get("LOWBIT_COURSE_DIR", COURSE_DIR),
    "PYTHONPATH": str(HERE),                 # lowbit_exchange (nbgrader's submit with private permissions)
    "OMP_NUM_THREADS": "1",                  # one student must not take every core of a shared machine
    "MKL_NUM_THREADS": "1",
}


def role_of(username: str) -> str:
    """``instructor`` or ``student``: the role folder under course/hub/roles/ a user's server is configured from."""
    if username in INSTRUCTORS:
        return "instructor"
    if username in STUDENTS:
        return "student"
    raise ValueError(f"{username!r} is neither in LOWBIT_INSTRUCTORS nor in LOWBIT_STUDENTS")


def configure_role(spawner) -> None:
    """Point the user's server at its role's Jupyter config (nbgrader config, enabled extensions); give
    instructors a private TMPDIR (``autograder grade`` caches its answer-free build there; made by hubctl)."""
    role = role_of(spawner.user.name)
    spawner.environment["JUPYTER_CONFIG_PATH"] = str(HERE / "roles" / role)
    if role == "instructor":
        spawner.environment["TMPDIR"] = str(Path(pwd.getpwnam(spawner.user.name).pw_dir) / PRIVATE_TMP)


c.Spawner.pre_spawn_hook = configure_role

# --- an optional service account for scripts and the end-to-end test ---------------------------------------
if ENV.get("LOWBIT_HUB_SERVICE_TOKEN"):
    c.JupyterHub.services = [{"name": "lowbit-course", "api_token": ENV["LOWBIT_HUB_SERVICE_TOKEN"]}]
    c.JupyterHub.load_roles = [{
        "name": "lowbit-course",
        "description": "start and stop the course's servers, issue tokens to its users",
        "scopes": ["admin:users", "admin:servers", "tokens", "list:users", "read:users", "read:groups"],
        "services": ["lowbit-course"],
    }]
