"""A Selenium block in the full toolbox: start headless Chromium, load a page saved in the
workdir, take a screenshot, quit. Median wall time per block, as the person waits for it (from
sending the program to its result), with the pool of pre-started containers and without it,
under runc and gVisor; and the time inside the block (Chromium's own start and the page), which
the container's start does not touch. The playwright variant of the same block too.

Usage: python bench/browser.py [--runs N] [--isolations runc,gvisor]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.latency import refilled, sandbox
from orchestrator.languages import Language
from orchestrator.sandbox.docker import connect

PAGE = "<html><head><title>Local page</title></head><body><h1>Hello 你好</h1></body></html>"
SELENIUM = """
import time
started = time.perf_counter()
from selenium import webdriver
options = webdriver.ChromeOptions()
options.add_argument("--headless=new")
driver = webdriver.Chrome(options=options)
driver.get("file:///workspace/page.html")
assert driver.title == "Local page"
driver.save_screenshot("shot.png")
driver.quit()
print(f"{time.perf_counter() - started:.3f}")
"""
PLAYWRIGHT = """
import time
started = time.perf_counter()
from playwright.sync_api import sync_playwright
with sync_playwright() as p:
    browser = p.chromium.launch()
    page = browser.new_page()
    page.goto("file:///workspace/page.html")
    assert page.title() == "Local page"
    page.screenshot(path="shot.png")
    browser.close()
print(f"{time.perf_counter() - started:.3f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--isolations", default="runc,gvisor")
    args = parser.parse_args()
    client = connect()
    workdir = Path(tempfile.mkdtemp(prefix="oi-bench-browser-"))
    (workdir / "page.html").write_text(PAGE)
    print(f"median of {args.runs} runs (after one warm-up); block = whole block, inside = in it")
    print(f"{'isolation':<9} {'library':<11} {'pool':<8} {'block s':>8} {'inside s':>9}")
    for isolation in args.isolations.split(","):
        for library, code in (("selenium", SELENIUM), ("playwright", PLAYWRIGHT)):
            for pooled in (True, False):
                with sandbox(
                    client, workdir, isolation=isolation, pool=pooled, toolbox="full", timeout=120
                ) as box:
                    wait = refilled(box, Language.PYTHON) if pooled else (lambda: None)
                    block, inside = [], []
                    for attempt in range(args.runs + 1):
                        wait()
                        started = time.perf_counter()
                        result = box.run(Language.PYTHON, code)
                        elapsed = time.perf_counter() - started
                        assert result.exit_code == 0, result.stderr
                        if attempt:  # the first is a warm-up (page cache)
                            block.append(elapsed)
                            inside.append(float(result.stdout.split()[-1]))
                label = "pool" if pooled else "no pool"
                print(
                    f"{isolation:<9} {library:<11} {label:<8} "
                    f"{statistics.median(block):>8.2f} {statistics.median(inside):>9.2f}"
                )


if __name__ == "__main__":
    main()
