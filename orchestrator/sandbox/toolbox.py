"""Which image a block runs in: the toolbox the user or admin chose, and the block's language.
Pure.

``standard`` (the default) is the images a code interpreter is expected to have: python (with
the scientific libraries), node, shell (python's image plus Node and the command-line tools).
``full`` adds a headless browser and media tools for python and shell blocks: the ``full``
image is the shell image plus Debian's Chromium and chromedriver, Selenium, Playwright pointed
at that Chromium, ffmpeg with libass, sox, Python's media libraries and CJK fonts (see
``sandbox-images/full``). It is larger (about 2.8 GB) but starts as fast: the pool pre-starts
its containers the same way.

The model never chooses: the toolbox is a setting (``toolbox``), which a project file may only
narrow (``standard`` < ``full``) and the admin policy may restrict (``allowed_toolboxes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from orchestrator.languages import LANGUAGES, Language

Toolbox = Literal["standard", "full"]

TOOLBOX_ORDER: tuple[Toolbox, ...] = ("standard", "full")
"""Toolboxes from the smallest image to the biggest (a project file may only go down)."""

FULL_IMAGE = "full"

_FULL: Mapping[Language, str] = {Language.PYTHON: FULL_IMAGE, Language.SHELL: FULL_IMAGE}
"""The languages the full toolbox runs in its own image; the rest keep their standard one."""


def image_for(language: Language, toolbox: Toolbox = "standard") -> str:
    """The short name of the sandbox image (``sandbox-images/<name>``) a block runs in."""
    if toolbox == "full" and language in _FULL:
        return _FULL[language]
    return LANGUAGES[language].image


LANGUAGE_NOTES: Mapping[Toolbox, tuple[tuple[str, str], ...]] = {
    "standard": (
        (
            "python",
            "python3 with numpy, pandas, matplotlib, scipy, sklearn, seaborn, sympy, requests, "
            "bs4, lxml, openpyxl, PIL, yaml, tabulate",
        ),
        ("javascript", "Node.js, built-in modules only"),
        (
            "shell",
            "bash; python3 (same libraries), node, npm, git, sqlite3, zip, jq, curl, msmtp, make",
        ),
    ),
    "full": (
        (
            "python",
            "python3 with numpy, pandas, matplotlib, scipy, sklearn, seaborn, sympy, requests, "
            "bs4, lxml, openpyxl, PIL, yaml, tabulate; a headless Chromium for selenium "
            "(webdriver.Chrome with --headless=new) and playwright (chromium.launch()); "
            "imageio, av, pydub, soundfile",
        ),
        ("javascript", "Node.js, built-in modules only"),
        (
            "shell",
            "bash; python3 (same libraries), node, npm, git, sqlite3, zip, jq, curl, msmtp, make; "
            "ffmpeg (with subtitles), ffprobe, sox, chromium, chromedriver",
        ),
    ),
}
"""What the model is told each language's sandbox has, per toolbox."""


def language_notes(toolbox: Toolbox = "standard") -> tuple[tuple[str, str], ...]:
    return LANGUAGE_NOTES[toolbox]
