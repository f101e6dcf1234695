"""Point Playwright at the system Chromium: link it where Playwright looks for the browsers it
would download (``$PLAYWRIGHT_BROWSERS_PATH/<name>-<revision>/...``, from the installed
package's browsers.json) and where ``channel="chrome"`` looks, so ``chromium.launch()`` works
with no download. Run once at image build time: ``python3 oi-playwright-links.py BROWSER``."""

import json
import os
import sys
from pathlib import Path

import playwright

browser = sys.argv[1]
root = Path(os.environ["PLAYWRIGHT_BROWSERS_PATH"])
package = Path(playwright.__file__).parent / "driver" / "package" / "browsers.json"
revisions = {b["name"]: b["revision"] for b in json.loads(package.read_text())["browsers"]}
# Where each Playwright version has looked for them on Linux (x86_64 and arm64).
layouts = {
    "chromium": ["chrome-linux64/chrome", "chrome-linux-arm64/chrome", "chrome-linux/chrome"],
    "chromium-headless-shell": [
        "chrome-headless-shell-linux64/chrome-headless-shell",
        "chrome-headless-shell-linux-arm64/chrome-headless-shell",
        "chrome-linux/headless_shell",
    ],
}
links = [Path("/opt/google/chrome/chrome")]
for name, paths in layouts.items():
    folder = root / f"{name.replace('-', '_')}-{revisions[name]}"
    links += [folder / p for p in paths]
for link in links:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(browser)
    print(f"{link} -> {browser}")
