"""Real-browser check of the course hub: a student logs in, opens the assignment list and fetches Lab 1.

    .venv/bin/python tests/browser/check_hub_assignment_list.py [--out DIR]     # as root; Debian's chromium

Not collected by pytest (tests/test_hub_end_to_end.py drives the same hub through its APIs). Creates an
instructor and a student account (deleted afterwards, whatever happens), starts the course hub with
``course/hub/hubctl.py``, releases ``lab1_linear`` through the instructor's formgrader API, then in Chromium:
the hub's login page (PAM password), the student's JupyterLab, the Nbgrader menu (it must not offer the
formgrader or the course list to a student), Nbgrader > Assignment List, "Fetch". Writes 01_login.png,
02_lab.png, 03_menu.png, 04_assignments.png, 05_fetched.png to DIR and checks that the fetched notebook is in the
student's home. Look at the screenshots.
"""
from __future__ import annotations

import argparse
import importlib.util
import pwd
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[2]
LAB = "lab1_linear"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
_spec = importlib.util.spec_from_file_location("hubctl", REPO / "course" / "hub" / "hubctl.py")
hubctl = sys.modules["hubctl"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hubctl)


def release_lab(hub, instructor: str) -> None:
    import requests
    api = hubctl.HubAPI(hub.url, hub.service_token)
    api.start_server(instructor)
    api.wait_ready(instructor)
    token = api.user_token(instructor, "browser check")
    result = requests.post(f"{hub.url}/user/{instructor}/formgrader/api/assignment/{LAB}/release",
                           headers={"Authorization": f"token {token}"}, timeout=120).json()
    if not result.get("success"):
        sys.exit(f"release of {LAB} failed: {result}")
    api.stop_server(instructor)


def browse(hub, student: str, password: str, out: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(240_000)
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", student)
        page.fill("#password_input", password)
        page.screenshot(path=str(out / "01_login.png"))
        page.click("#login_submit")
        page.wait_for_url(f"**/user/{student}/lab**")
        page.wait_for_selector(".jp-LabShell")
        page.wait_for_selector(".jp-DirListing-content")
        page.screenshot(path=str(out / "02_lab.png"))
        page.locator(".lm-MenuBar-itemLabel", has_text="Nbgrader").click()
        page.locator(".lm-Menu-itemLabel", has_text="Assignment List").wait_for()
        items = page.locator(".lm-Menu-itemLabel").all_inner_texts()
        page.screenshot(path=str(out / "03_menu.png"))
        if any("Formgrader" in item or "Course List" in item for item in items):
            sys.exit(f"a student's Nbgrader menu offers instructor tools: {items}")
        page.locator(".lm-Menu-itemLabel", has_text="Assignment List").click()
        released = page.locator("#released_assignments_list")
        released.get_by_text(LAB).wait_for()
        page.screenshot(path=str(out / "04_assignments.png"))
        released.get_by_role("button", name="Fetch").click()
        page.locator("#fetched_assignments_list").get_by_text(LAB).first.wait_for()
        page.screenshot(path=str(out / "05_fetched.png"))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/lowbit-hub-browser-check"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(2)
    instructor, student = f"lbw{tag}t", f"lbw{tag}s"
    passwords = {instructor: secrets.token_urlsafe(12), student: secrets.token_urlsafe(12)}
    scratch = Path(tempfile.mkdtemp(prefix="lowbit-hub-browser-"))
    scratch.chmod(0o755)
    try:
        with hubctl.running_class(scratch, instructor, [student], passwords, [LAB]) as hub:
            release_lab(hub, instructor)
            try:
                browse(hub, student, passwords[student], args.out)
            finally:
                (args.out / "jupyterhub.log").write_bytes((scratch / "jupyterhub.log").read_bytes())
            fetched = Path(pwd.getpwnam(student).pw_dir) / LAB / f"{LAB}.ipynb"
            if not fetched.is_file():
                sys.exit(f"the browser showed the fetch, but {fetched} does not exist")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"fetched {LAB} as {student} through the browser; screenshots in {args.out} — look at them")


if __name__ == "__main__":
    main()
