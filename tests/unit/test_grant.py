"""The workdir grant for blocks of root (grant.py): what each entry gets, and what it never
touches. Changing a file's group needs root; those tests skip for a normal user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.fsafe import remove_tree
from orchestrator.sandbox.grant import SANDBOX_GID, check_dedicated, grant_workdir, granted_mode
from tests.deep import DEPTH, nest, shallow_stack

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's group needs root")


@pytest.mark.parametrize(
    ("mode", "directory", "expected"),
    [
        (0o755, True, 0o775),  # a folder: group may enter, list, create
        (0o700, True, 0o770),
        (0o644, False, 0o664),  # a file: group may read and write
        (0o600, False, 0o660),
        (0o755, False, 0o775),  # executable for the owner: for the group too
        (0o744, False, 0o774),
        (0o2755, True, 0o2775),  # a folder's setgid bit stays
        (0o1777, True, 0o1777),  # sticky stays
    ],
)
def test_granted_mode(mode: int, directory: bool, expected: int) -> None:
    assert (
        granted_mode(mode | (stat.S_IFDIR if directory else stat.S_IFREG), directory=directory)
        == expected
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@ROOT
def test_grant_gives_folders_and_files_the_group_and_nothing_else(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "data.csv").write_text("a,b\n")
    (work / "run.sh").write_text("#!/bin/sh\n")
    (work / "run.sh").chmod(0o700)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    (work / "link-dir").symlink_to(outside)
    (work / "link-file").symlink_to(outside / "secret")
    os.mkfifo(work / "fifo")
    setuid = work / "tool"
    setuid.write_text("")
    setuid.chmod(0o4755)
    elsewhere = outside / "linked"
    elsewhere.write_text("outside the workdir")
    os.link(elsewhere, work / "hardlink")  # one file, a name outside too

    result = grant_workdir(work)

    for path, expected in [
        (work, 0o775),
        (work / "sub", 0o775),
        (work / "sub" / "data.csv", 0o664),
        (work / "run.sh", 0o770),
    ]:
        assert path.lstat().st_gid == SANDBOX_GID, path
        assert mode(path) == expected, (path, oct(mode(path)))
        assert path.lstat().st_uid == 0  # owners unchanged
    assert (outside / "secret").lstat().st_gid != SANDBOX_GID  # links are never followed
    assert outside.lstat().st_gid != SANDBOX_GID
    assert (work / "fifo").lstat().st_gid != SANDBOX_GID  # nor FIFOs opened
    assert mode(setuid) == 0o4755 and setuid.lstat().st_gid != SANDBOX_GID  # left alone
    assert elsewhere.lstat().st_gid != SANDBOX_GID and mode(elsewhere) == 0o644  # and this
    assert (result.changed, result.skipped) == (4, 2)

    again = grant_workdir(work)
    assert again.changed == 0 and again.entries == result.entries  # idempotent


def test_a_missing_workdir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        grant_workdir(tmp_path / "absent")


def test_check_dedicated_refuses_ids_an_account_has() -> None:
    check_dedicated()  # nobody on this host has the sandbox's ids
    with pytest.raises(ConfigError, match="root"):
        check_dedicated(0, 0)


def test_a_tree_deeper_than_path_max_is_granted_to_the_bottom(tmp_path: Path) -> None:
    """A block may nest folders as deep as it likes; the next session's grant still works."""
    work = tmp_path / "work"
    work.mkdir()
    fd = nest(work)
    os.close(os.open("bottom", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    try:
        assert os.stat("bottom", dir_fd=fd).st_gid != SANDBOX_GID
        with shallow_stack():
            result = grant_workdir(work)
        assert result.entries == 1 + DEPTH + 1
        bottom = os.stat("bottom", dir_fd=fd)
        assert bottom.st_gid == SANDBOX_GID and stat.S_IMODE(bottom.st_mode) == 0o664
    finally:
        os.close(fd)
        remove_tree(work)  # pytest's own clean-up recurses


@pytest.mark.skipif(os.geteuid() != 0, reason="changing another user's file needs root")
def test_another_users_files_and_folders_are_left_alone(tmp_path: Path) -> None:
    """In a shared folder (root's oi in /tmp, say), another user's private file must not be
    opened to the blocks through the group; nor anything in a folder of theirs."""
    work = tmp_path / "work"
    (work / "theirs").mkdir(parents=True)
    mine, private, inside = work / "mine.txt", work / "private.txt", work / "theirs" / "a.txt"
    for path in (mine, private, inside):
        path.write_text("x")
        path.chmod(0o600)
    os.chown(private, 12345, 12345)
    os.chown(work / "theirs", 12345, 12345)
    (work / "theirs").chmod(0o700)
    before = {p: os.lstat(p) for p in (private, work / "theirs", inside)}
    result = grant_workdir(work)
    for path, was in before.items():
        now = os.lstat(path)
        assert (now.st_gid, now.st_mode) == (was.st_gid, was.st_mode), path
    assert os.lstat(mine).st_gid == SANDBOX_GID  # the owner's own file is granted
    assert result.skipped == 2
