"""Mount paths never lead through a link a block could have made (spec.check_no_block_links,
fsafe.symlinks_on_the_way)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.fsafe import symlinks_on_the_way
from orchestrator.sandbox.grant import SANDBOX_UID
from orchestrator.sandbox.spec import check_no_block_links, parse_mount


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path.resolve()
    (root / "work" / "real").mkdir(parents=True)
    (root / "elsewhere" / "deep").mkdir(parents=True)
    (root / "work" / "data").symlink_to(root / "elsewhere")  # as a block would leave it
    (root / "home-link").symlink_to(root / "work")  # the user's own layout, outside
    (root / "work" / "rel").symlink_to("real")
    return root


@pytest.mark.parametrize(
    ("path", "links"),
    [
        ("work/real", []),
        ("work/data/deep", ["work/data"]),
        ("home-link/real", ["home-link"]),
        ("home-link/data/deep", ["home-link", "work/data"]),  # named where each really is
        ("home-link/rel", ["home-link", "work/rel"]),
        ("work/real/../data", ["work/data"]),
        ("work/absent/more", []),
    ],
)
def test_the_links_met_on_the_way(tree: Path, path: str, links: list[str]) -> None:
    assert symlinks_on_the_way(tree / path) == [tree / link for link in links]


def test_a_loop_of_links_ends(tree: Path) -> None:
    (tree / "a").symlink_to(tree / "b")
    (tree / "b").symlink_to(tree / "a")
    assert len(symlinks_on_the_way(tree / "a" / "x")) == 41


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("work/real", False),
        ("home-link/real", False),  # a link outside the writable folders: the user's own
        ("work/data/deep", True),  # a link inside the workdir: a block may have made it
        ("home-link/data", True),
    ],
)
def test_links_inside_the_writable_folders_are_refused(
    tree: Path, path: str, refused: bool
) -> None:
    if refused:
        with pytest.raises(ConfigError, match=r"symlink inside .*where blocks write"):
            check_no_block_links("m", tree / path, [tree / "work"])
    else:
        check_no_block_links("m", tree / path, [tree / "work"])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a link as the sandbox uid")
def test_a_link_the_sandbox_uid_owns_is_refused_anywhere(tree: Path) -> None:
    link = tree / "made-by-a-block"
    link.symlink_to(tree / "elsewhere")
    os.lchown(link, SANDBOX_UID, SANDBOX_UID)
    with pytest.raises(ConfigError, match="made by a block"):
        check_no_block_links("m", link / "deep", [])


def test_parse_mount_refuses_a_redirected_folder_and_names_the_fix(tree: Path) -> None:
    home = tree / "home"
    home.mkdir()
    with pytest.raises(ConfigError) as refused:
        parse_mount(f"{tree}/work/data:/mnt/data:rw", home, [tree / "work"])
    message = str(refused.value)
    assert f"{tree}/work/data is a symlink" in message and str(tree / "elsewhere") in message
    assert "mount the folder it leads to by its own path" in message
    mount = parse_mount(f"{tree}/elsewhere:/mnt/data:rw", home, [tree / "work"])
    assert mount.host == tree / "elsewhere" and not mount.read_only
