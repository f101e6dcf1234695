"""Host-side file handling of batch and replay (``orchestrator.fsafe``, SECURITY.md 21-23): copying templates, inline
files, reading results, writing reports never follow a symlink, open a FIFO or a device."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from orchestrator.batch import TaskLog, TaskResult, prepare_out_dir, read_result
from orchestrator.errors import ConfigError
from orchestrator.fsafe import (
    adopted_owner,
    check_tree,
    copy_tree,
    remove_tree,
    write_inline_files,
)
from orchestrator.fsafe import write_atomic as write_file_atomic
from tests.deep import DEPTH, nest, shallow_stack

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, chown)")


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A host file outside every tree under test; nothing may read or change it."""
    path = tmp_path / "canary.txt"
    path.write_text("host secret\n")
    path.chmod(0o600)
    return path


def make_template(root: Path, canary: Path) -> Path:
    template = root / "template"
    (template / "sub" / "deeper").mkdir(parents=True)
    (template / "data.csv").write_text("a,b\n1,2\n")
    (template / "sub" / "script.sh").write_text("echo hi\n")
    (template / "sub" / "script.sh").chmod(0o755)
    (template / "sub" / "deeper" / "empty").touch()
    os.utime(template / "data.csv", (1_000_000_000, 1_000_000_000))
    (template / "escape").symlink_to(canary)  # absolute, outside
    (template / "inside").symlink_to("sub/script.sh")  # relative, inside
    return template


def test_copy_tree_copies_files_modes_times_and_symlinks_as_symlinks(
    tmp_path: Path, canary: Path
) -> None:
    template = make_template(tmp_path, canary)
    copy = tmp_path / "copy"
    copy_tree(template, copy)
    assert (copy / "data.csv").read_text() == "a,b\n1,2\n"
    assert (copy / "data.csv").stat().st_mtime == 1_000_000_000
    assert stat.S_IMODE((copy / "sub" / "script.sh").stat().st_mode) == 0o755
    assert (copy / "sub" / "deeper" / "empty").is_file()
    assert (copy / "escape").is_symlink() and os.readlink(copy / "escape") == str(canary)
    assert os.readlink(copy / "inside") == "sub/script.sh"
    assert canary.read_text() == "host secret\n"


def test_copy_tree_strips_setuid_and_setgid(tmp_path: Path) -> None:
    template = tmp_path / "t"
    template.mkdir()
    tool = template / "tool"
    tool.write_text("x")
    tool.chmod(0o6755)
    copy_tree(template, tmp_path / "copy")
    assert stat.S_IMODE((tmp_path / "copy" / "tool").stat().st_mode) == 0o755


@pytest.mark.timeout(10)
def test_a_fifo_in_a_template_is_refused_without_being_opened(tmp_path: Path) -> None:
    template = tmp_path / "t"
    (template / "sub").mkdir(parents=True)
    os.mkfifo(template / "sub" / "pipe")
    with pytest.raises(ConfigError, match=r"a FIFO at .*sub/pipe.*remove it"):
        check_tree(template)
    with pytest.raises(ConfigError, match="a FIFO"):
        copy_tree(template, tmp_path / "copy")


@as_root
def test_a_device_in_a_template_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "t"
    template.mkdir()
    os.mknod(template / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(ConfigError, match="a device"):
        check_tree(template)
    with pytest.raises(ConfigError, match="a device"):
        copy_tree(template, tmp_path / "copy")


@pytest.mark.parametrize("kind", ["symlink", "file", "missing"])
def test_a_template_must_be_a_real_folder(tmp_path: Path, kind: str) -> None:
    real = tmp_path / "real"
    real.mkdir()
    template = tmp_path / "template"
    if kind == "symlink":
        template.symlink_to(real)
    elif kind == "file":
        template.write_text("x")
    with pytest.raises(ConfigError, match="workdir template"):
        check_tree(template)
    with pytest.raises(ConfigError, match="workdir template"):
        copy_tree(template, tmp_path / "copy")


@as_root
def test_copy_tree_gives_the_copy_an_owner(tmp_path: Path, canary: Path) -> None:
    template = make_template(tmp_path, canary)
    copy = tmp_path / "copy"
    copy_tree(template, copy, owner=(1234, 4321))
    for path in [copy, *copy.rglob("*")]:
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (1234, 4321), path
    assert canary.stat().st_uid == 0  # the symlink was chowned, not its target


@as_root
def test_adopted_owner_as_root(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    assert adopted_owner(folder) is None  # root's folder: nothing to adopt
    os.chown(folder, 1000, 1001)
    assert adopted_owner(folder) == (1000, 1001)
    assert adopted_owner(tmp_path / "missing") is None


def test_inline_files_are_written_into_the_workdir(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("old")
    write_inline_files(workdir, [("a/b/c.txt", "deep"), ("keep.txt", "new"), ("top.md", "# t")])
    assert (workdir / "a" / "b" / "c.txt").read_text() == "deep"
    assert (workdir / "keep.txt").read_text() == "new"
    assert (workdir / "top.md").read_text() == "# t"


def test_inline_files_never_write_through_a_symlinked_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "sub").symlink_to(outside)
    with pytest.raises(ConfigError, match="sub in the workdir is not a folder"):
        write_inline_files(workdir, [("sub/x.txt", "pwned")])
    assert list(outside.iterdir()) == []


def test_inline_files_never_write_through_a_symlinked_file(tmp_path: Path, canary: Path) -> None:
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "x.txt").symlink_to(canary)
    with pytest.raises(ConfigError, match="cannot write it"):
        write_inline_files(workdir, [("x.txt", "pwned")])
    assert canary.read_text() == "host secret\n"


@pytest.mark.timeout(10)
def test_inline_files_never_open_a_fifo(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    workdir.mkdir()
    os.mkfifo(workdir / "pipe")
    with pytest.raises(ConfigError, match="pipe"):
        write_inline_files(workdir, [("pipe", "data")])


def test_inline_file_paths_must_stay_inside(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"without '\.\.'"):
        write_inline_files(tmp_path, [("../x", "y")])


def test_remove_tree_does_not_follow_symlinks_and_opens_locked_folders(
    tmp_path: Path, canary: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    tree = tmp_path / "tree"
    (tree / "locked" / "inner").mkdir(parents=True)
    (tree / "locked" / "inner" / "f").write_text("x")
    (tree / "to-dir").symlink_to(outside)
    (tree / "to-file").symlink_to(canary)
    os.mkfifo(tree / "pipe")
    (tree / "locked" / "inner").chmod(0)
    (tree / "locked").chmod(0o500)
    remove_tree(tree)
    assert not tree.exists()
    assert (outside / "precious").read_text() == "keep me"
    assert canary.read_text() == "host secret\n"
    remove_tree(tree)  # absent: nothing to do


def test_remove_tree_of_a_symlink_removes_only_the_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(outside)
    remove_tree(link)
    assert not link.is_symlink() and (outside / "precious").exists()


def test_remove_tree_removes_a_tree_deeper_than_path_max_and_the_recursion_limit(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    os.close(os.open("bottom", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=nest(tree)))
    (tree / "wide").mkdir()
    for i in range(50):
        (tree / "wide" / f"f{i}").write_text("x")
        (tree / "wide" / f"d{i}").mkdir()
    (tree / "wide" / "d7").chmod(0)
    with shallow_stack():
        remove_tree(tree)
    assert not tree.exists()


def test_remove_tree_stops_when_a_folder_is_moved_under_it(tmp_path: Path) -> None:
    """Climbing back through '..' must reach the folder it came from, or stop."""
    from orchestrator.fsafe import Descent, descend

    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    class Mover(Descent):
        def enter(self, fd: int, path: Path) -> list[str]:
            if path.name == "b":  # while oi is inside b, someone moves a's child b away
                os.rename(tree / "a" / "b", elsewhere / "b")
            return [e.name for e in os.scandir(fd) if e.is_dir(follow_symlinks=False)]

    with pytest.raises(ConfigError, match="moved while oi walked it"):
        descend(tree, Mover())


def test_copy_tree_copies_a_deep_template(tmp_path: Path) -> None:
    template = tmp_path / "template"
    template.mkdir()
    fd = nest(template, name="d")  # deeper than the stack allows, within PATH_MAX
    os.close(os.open("bottom", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    os.close(fd)
    with shallow_stack():
        copy_tree(template, tmp_path / "copy")
    bottom = tmp_path / "copy" / Path(*["d"] * DEPTH) / "bottom"
    assert bottom.is_file()
    remove_tree(tmp_path / "copy")
    remove_tree(template)


def _store(task_dir: Path, result: TaskResult) -> None:
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "result.json").write_text(json.dumps(result.to_dict()))


def test_read_result_round_trip(tmp_path: Path) -> None:
    result = TaskResult("a", "passed", "check passed", 1.0, digest="d")
    _store(tmp_path / "a", result)
    assert read_result(tmp_path / "a") == result
    assert read_result(tmp_path / "missing") is None


def test_read_result_never_follows_a_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    _store(elsewhere, TaskResult("a", "passed", "forged"))
    task_dir = tmp_path / "a"
    task_dir.mkdir()
    (task_dir / "result.json").symlink_to(elsewhere / "result.json")
    assert read_result(task_dir) is None
    link_dir = tmp_path / "b"
    link_dir.symlink_to(elsewhere)  # the task folder itself replaced by a link
    assert read_result(link_dir) is None


@pytest.mark.timeout(10)
def test_read_result_never_opens_a_fifo_for_long(tmp_path: Path) -> None:
    task_dir = tmp_path / "a"
    task_dir.mkdir()
    os.mkfifo(task_dir / "result.json")
    assert read_result(task_dir) is None


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[1, 2]", b'{"task_id": "a"}', b'{"task_id": "a", "outcome": "won"}'],
)
def test_read_result_ignores_junk(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "result.json").write_bytes(content)
    assert read_result(tmp_path) is None


def test_read_result_ignores_huge_files(tmp_path: Path) -> None:
    result = TaskResult("a", "passed", "x", output_tail="y" * (2 << 20))
    _store(tmp_path, result)
    assert read_result(tmp_path) is None


def test_write_file_atomic_replaces_a_planted_symlink_without_following_it(
    tmp_path: Path, canary: Path
) -> None:
    report = tmp_path / "report.xml"
    report.symlink_to(canary)
    write_file_atomic(report, b"<xml/>")
    assert not report.is_symlink() and report.read_bytes() == b"<xml/>"
    assert canary.read_text() == "host secret\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_write_file_atomic_says_where_it_failed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot write .*missing/report.xml"):
        write_file_atomic(tmp_path / "missing" / "report.xml", b"x")


def test_prepare_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "a" / "out"
    prepare_out_dir(out, resume=False)
    assert out.is_dir()
    prepare_out_dir(out, resume=False)  # empty: fine
    (out / "t").mkdir()
    with pytest.raises(ConfigError, match="already holds files; pass --resume"):
        prepare_out_dir(out, resume=False)
    prepare_out_dir(out, resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        prepare_out_dir(tmp_path / "file", resume=True)


def test_task_log_keeps_the_tail(tmp_path: Path) -> None:
    log = TaskLog(tmp_path / "log.txt", tail_chars=10)
    for piece in ["0123456789", "abc", "defghijkl", "mnop"]:
        log.write(piece)
    log.write_bytes("stdout", "é".encode()[:1])  # half a character waits for the rest
    log.write_bytes("stdout", "é".encode()[1:])
    log.close()
    assert log.tail() == "ghijklmnopé"[-10:]
    assert (tmp_path / "log.txt").read_text() == "0123456789abcdefghijklmnopé"


def test_task_log_refuses_a_planted_file(tmp_path: Path, canary: Path) -> None:
    (tmp_path / "log.txt").symlink_to(canary)
    with pytest.raises(OSError):
        TaskLog(tmp_path / "log.txt")
    assert canary.read_text() == "host secret\n"
