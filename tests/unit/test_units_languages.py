from pathlib import Path

import pytest

from orchestrator.errors import UnknownLanguageError
from orchestrator.languages import Language, parse_language
from orchestrator.units import format_seconds, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1g", 1024**3),
        ("1G", 1024**3),
        ("512m", 512 * 1024**2),
        ("1.5GiB", int(1.5 * 1024**3)),
        ("2048", 2048),
        ("64k", 64 * 1024),
        ("1 gb", 1024**3),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1x", "-1g", "0", "1g2"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("num", "expected"),
    [(1024**3, "1 GiB"), (512 * 1024**2, "512 MiB"), (1536, "1.5 KiB"), (10, "10 B")],
)
def test_format_size(num: int, expected: str) -> None:
    assert format_size(num) == expected


def test_format_seconds() -> None:
    assert format_seconds(60) == "60 s"
    assert format_seconds(0.25) == "250 ms"


@pytest.mark.parametrize(
    ("name", "language"),
    [
        ("python", Language.PYTHON),
        ("py", Language.PYTHON),
        ("Python3", Language.PYTHON),
        ("javascript", Language.JAVASCRIPT),
        ("js", Language.JAVASCRIPT),
        ("node", Language.JAVASCRIPT),
        ("shell", Language.SHELL),
        ("sh", Language.SHELL),
        ("bash", Language.SHELL),
        ("zsh", Language.SHELL),
        (" BASH ", Language.SHELL),
    ],
)
def test_parse_language(name: str, language: Language) -> None:
    assert parse_language(name) is language


@pytest.mark.parametrize("name", ["ruby", "", "pythonn", "text", "r"])
def test_unknown_language_names_the_supported_ones(name: str) -> None:
    with pytest.raises(UnknownLanguageError) as info:
        parse_language(name)
    message = str(info.value)
    assert "python" in message and "javascript" in message and "shell" in message


def test_child_images_are_tagged_by_their_parents_tag_too(tmp_path: Path) -> None:
    """The shell sandbox is built on the python one: changing python's context rebuilds both."""
    from orchestrator.sandbox.images import PARENTS, ImageCatalog

    for name in ("python", "node", "shell", "proxy"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text(f"FROM scratch # {name}\n")
    catalog = ImageCatalog(None, root=tmp_path)  # type: ignore[arg-type]
    before = {name: catalog.expected_tag(name) for name in ("python", "node", "shell")}
    (tmp_path / "python" / "Dockerfile").write_text("FROM scratch # python, changed\n")
    assert catalog.expected_tag("python") == before["python"]  # hashed once per catalog
    catalog = ImageCatalog(None, root=tmp_path)  # type: ignore[arg-type]
    after = {name: catalog.expected_tag(name) for name in ("python", "node", "shell")}
    assert PARENTS["shell"] == "python"
    assert after["python"] != before["python"] and after["shell"] != before["shell"]
    assert after["node"] == before["node"]
