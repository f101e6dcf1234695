"""The languages oi runs, their aliases, and how a block of each is started. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from orchestrator.errors import UnknownLanguageError


class Language(enum.StrEnum):
    PYTHON = "python"
    JAVASCRIPT = "javascript"
    SHELL = "shell"


@dataclass(frozen=True)
class LanguageInfo:
    language: Language
    image: str  # short name of the sandbox image (sandbox-images/<image>)
    filename: str  # where the block is written inside the container's /tmp
    interpreter: tuple[str, ...]
    aliases: tuple[str, ...]


LANGUAGES: dict[Language, LanguageInfo] = {
    Language.PYTHON: LanguageInfo(
        Language.PYTHON, "python", "main.py", ("python3", "-u"), ("py", "python3")
    ),
    Language.JAVASCRIPT: LanguageInfo(
        Language.JAVASCRIPT, "node", "main.js", ("node",), ("js", "node", "nodejs")
    ),
    Language.SHELL: LanguageInfo(
        Language.SHELL, "shell", "main.sh", ("bash",), ("sh", "bash", "zsh", "shell-session")
    ),
}

_BY_NAME: dict[str, Language] = {
    name: info.language
    for info in LANGUAGES.values()
    for name in (info.language.value, *info.aliases)
}


def supported_names() -> str:
    """Human list of the accepted names, e.g. for error messages and help text."""
    return ", ".join(
        f"{info.language.value} ({', '.join(info.aliases)})" for info in LANGUAGES.values()
    )


def parse_language(name: str) -> Language:
    """Map a language name or alias (case-insensitive) to a ``Language``.

    An unknown name is an error that lists the supported ones: oi never guesses.
    """
    key = name.strip().lower()
    try:
        return _BY_NAME[key]
    except KeyError:
        raise UnknownLanguageError(
            f"unknown language {name!r}; oi runs: {supported_names()}"
        ) from None
