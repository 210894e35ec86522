"""Real-browser check: what a student sees when running a lab in JupyterLab (not collected by pytest).

    .venv/bin/pip install playwright        # uses Debian's Chromium: apt-get install chromium
    .venv/bin/python tests/browser/check_lab_in_jupyterlab.py [NOTEBOOK] [CELLS] [--toggle TEXT] [--out DIR]
    # Lab 1 (default): first explorer after 15 cells, toggle "symmetric"
    # Lab 2: .venv/bin/python tests/browser/check_lab_in_jupyterlab.py \
    #            solutions/lab2_kmeans/lab2_kmeans.ipynb 10 --toggle kmeans++
    # Lab 3 (ste_explorer, no toggle): .venv/bin/python tests/browser/check_lab_in_jupyterlab.py \
    #            solutions/lab3_qat/lab3_qat.ipynb 15 --toggle ""
    # Lab 4 (levels_explorer: the TWN factor slider, then "one channel"): \
    #     .venv/bin/python tests/browser/check_lab_in_jupyterlab.py solutions/lab4_binary/lab4_binary.ipynb 33 \
    #     --toggle "one channel"
    # Lab 5 (rounding_explorer: the iteration slider; no toggle): \
    #     .venv/bin/python tests/browser/check_lab_in_jupyterlab.py solutions/lab5_adaround/lab5_adaround.ipynb 39 \
    #     --toggle ""
    # Lab 6 (allocation_explorer: the budget slider, average bits per multiplication; no toggle; the 40 cells up to
    # it take about a minute): \
    #     .venv/bin/python tests/browser/check_lab_in_jupyterlab.py solutions/lab6_mixed/lab6_mixed.ipynb 40 \
    #     --toggle "" --run-timeout 600

Serves JupyterLab on 127.0.0.1 (no token, this machine only), opens NOTEBOOK (default: the Lab 1 solution),
waits for the kernel to be idle, runs the first CELLS cells with Shift+Enter, finds the first ipywidgets
explorer (the first widget view holding a slider: tqdm's progress bars are widget views too), moves its first
slider two steps left and clicks the toggle button labelled TEXT, and writes
screenshots 01_open.png, 02_ran.png, 03_widget.png, 04_changed.png to DIR. Look at them.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def start_jupyterlab(port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("NBGRADER_EXECUTION", None)
    server = subprocess.Popen([str(REPO / ".venv" / "bin" / "jupyter"), "lab", "--no-browser", "--allow-root",
                               f"--port={port}", "--ip=127.0.0.1", "--IdentityProvider.token=",
                               f"--notebook-dir={REPO}"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(120):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(1)
    server.terminate()
    sys.exit(f"JupyterLab did not start on port {port}; see {log}")


def wait_idle(page, timeout_ms: int) -> None:
    """Wait until the kernel reports idle and no cell of the notebook shows a running prompt ``[*]``."""
    time.sleep(3)
    page.wait_for_selector("[data-status=idle]", state="attached", timeout=timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    while page.locator(".jp-Notebook .jp-InputArea-prompt", has_text="[*]").count():
        if time.monotonic() > deadline:
            sys.exit("cells still running after the timeout: see the screenshots")
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", nargs="?", default="solutions/lab1_linear/lab1_linear.ipynb")
    parser.add_argument("cells", nargs="?", type=int, default=15)
    parser.add_argument("--toggle", default="symmetric", help="label of a toggle button to click in the explorer ('' for none)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/lowbit-browser-check"))
    parser.add_argument("--port", type=int, default=8899)
    parser.add_argument("--run-timeout", type=int, default=300, help="seconds to wait for the CELLS cells to finish")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    server = start_jupyterlab(args.port, args.out / "jupyterlab.log")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{args.port}/lab/tree/{args.notebook}?reset")  # no tabs from an old workspace
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            wait_idle(page, 120_000)
            page.screenshot(path=str(args.out / "01_open.png"))
            page.click(".jp-Notebook .jp-Cell >> nth=0")
            for _ in range(args.cells):
                page.keyboard.press("Shift+Enter")
                time.sleep(0.3)
            wait_idle(page, 1000 * args.run_timeout)
            page.screenshot(path=str(args.out / "02_ran.png"))
            widget = page.locator(".jupyter-widgets:has(.noUi-handle)").first
            if widget.count() == 0:
                sys.exit("no widget rendered: see 02_ran.png")
            widget.scroll_into_view_if_needed()
            time.sleep(2)
            page.screenshot(path=str(args.out / "03_widget.png"))
            handle = page.locator(".jupyter-widgets .noUi-handle").first
            print(f"slider handles: {page.locator('.jupyter-widgets .noUi-handle').count()}, first at {handle.bounding_box()}")
            handle.click()
            page.keyboard.press("ArrowLeft")
            page.keyboard.press("ArrowLeft")
            if args.toggle:
                page.locator(".jupyter-widgets button").get_by_text(args.toggle, exact=True).first.click()
            time.sleep(4)
            page.screenshot(path=str(args.out / "04_changed.png"))
            print(f"{page.locator('.jupyter-widgets').count()} widget views; screenshots in {args.out}")
            browser.close()
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
