"""Attacks on what the seed cases added: a project file choosing the bigger image or a TCP
port, a policy capping ports, the TCP forwarder as a relay for anything else, a browser's
own privileges, and images a hostile block plants for ``--vision`` (links to host files, a
FIFO, a decompression bomb, escapes in a name). Real engine; the fake vLLM where a model is
involved; every test leaves no container of its session behind (``session_id``)."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import docker
import pytest
from PIL import Image

from orchestrator.languages import Language
from orchestrator.sandbox.network import OUTBOUND_NETWORK
from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import SandboxFactory, run_oi


def oi_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "OI_CONFIG_FILE": str(tmp_path / "no-config.toml"),
        **extra,
    }


# --- untrusted project files and the admin policy ----------------------------------------------


@pytest.mark.parametrize(
    ("project", "flags", "key"),
    [
        ('toolbox = "full"', [], "toolbox"),  # a repo picking the bigger image
        ('allow_hosts = ["pypi", "smtp.evil.example:25"]', ["--allow-host", "pypi"], "allow_hosts"),
        ('allow_hosts = ["pypi.org:22"]', ["--allow-host", "pypi"], "allow_hosts"),
    ],
)
def test_a_repos_oi_toml_cannot_choose_the_image_or_a_tcp_port(
    tmp_path: Path, project: str, flags: list[str], key: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "oi.toml").write_text(project + "\n")
    proc = run_oi("run", "hi", "-y", *flags, env=oi_env(tmp_path), cwd=repo, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"oi.toml: {key} = " in proc.stderr and "is refused" in proc.stderr


def test_the_policy_caps_tcp_ports_and_toolboxes_on_the_command_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('allowed_tcp_ports = [587]\nallowed_toolboxes = ["standard"]\n')
    env = oi_env(tmp_path, OI_POLICY_FILE=str(policy))
    work = tmp_path / "work"
    work.mkdir()
    proc = run_oi("exec", "sh", "--allow-host", "mail.example.org:25", "-w", str(work), env=env)
    assert proc.returncode == 2
    assert "mail.example.org:25 (plain TCP to port 25) is not allowed" in proc.stderr
    assert f"{policy} line 1: allowed_tcp_ports = [587]" in proc.stderr
    proc = run_oi("exec", "sh", "--toolbox", "full", "-w", str(work), env=env)
    assert proc.returncode == 2 and "--toolbox full is not allowed" in proc.stderr


# --- the forwarder is no relay -------------------------------------------------------------------


def listeners(api: Any, container: str) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets listening in a container (its /proc/net/tcp)."""
    exec_id = api.exec_create(container, ["cat", "/proc/net/tcp"])["Id"]
    found = set()
    for line in api.exec_start(exec_id).decode().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A":  # LISTEN
            address, port = local.split(":")
            found.add((socket.inet_ntoa(struct.pack("<I", int(address, 16))), int(port, 16)))
    return found


def test_the_forwarder_listens_only_on_the_sessions_network(
    make_sandbox: SandboxFactory, docker_client: docker.DockerClient, session_id: str
) -> None:
    sandbox = make_sandbox(allow_hosts=["mail.example.org:587"])
    try:
        network = sandbox.spec_for(Language.SHELL).host_config["network_mode"]
        (proxy,) = docker_client.api.containers(
            filters={"label": [f"oi.session={session_id}", "oi.role=proxy"]}
        )
        info = docker_client.api.inspect_container(proxy["Id"])["NetworkSettings"]["Networks"]
        inside, outside = info[network]["IPAddress"], info[OUTBOUND_NETWORK]["IPAddress"]
        found = listeners(docker_client.api, proxy["Id"])
        assert (inside, 587) in found, found  # the sandbox's way to mail.example.org:587
        assert not any(port == 587 and address != inside for address, port in found), found
        # From the proxies' shared bridge (here: the Docker host, which is on it), port 587
        # of the proxy answers nothing: it is no relay for anyone else.
        with pytest.raises(OSError), socket.create_connection((outside, 587), timeout=3):
            pass
        entries = sandbox.spec_for(Language.SHELL).host_config["extra_hosts"]
        assert entries == {"mail.example.org": inside}
    finally:
        sandbox.close()


# --- the browser has no privileges of its own --------------------------------------------------

BROWSER_PRIVILEGES = """
import os, socket
from playwright.sync_api import sync_playwright
with sync_playwright() as p:
    browser = p.chromium.launch()
    page = browser.new_page()
    page.goto("data:text/html,<title>up</title>")
    print("title", page.title())
    for pid in sorted(int(d) for d in os.listdir("/proc") if d.isdigit()):
        try:
            status = open(f"/proc/{pid}/status").read()
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
        except OSError:
            continue
        fields = dict(l.split(":\\t", 1) for l in status.splitlines() if ":\\t" in l)
        print("proc", os.path.basename(cmd.split(" ")[0]) or "?", fields.get("CapEff"), fields.get("CapBnd"),
              fields.get("NoNewPrivs"), fields.get("Seccomp"), fields.get("Uid").split()[1])
    print("interfaces", sorted(n for _, n in socket.if_nameindex()))
    try:
        page.goto("http://example.invalid/", timeout=5000)
        print("LOADED")
    except Exception as e:
        print("no network:", str(e).splitlines()[0][:80])
    browser.close()
"""


@pytest.mark.parametrize("isolation", ["runc", "gvisor"])
def test_a_browser_in_a_block_has_no_privilege_and_no_network(
    make_sandbox: SandboxFactory, isolation: str
) -> None:
    result = make_sandbox(toolbox="full", isolation=isolation, timeout=90).run(
        "python", BROWSER_PRIVILEGES
    )
    assert result.exit_code == 0, result.stderr
    assert "title up" in result.stdout
    procs = [line.split() for line in result.stdout.splitlines() if line.startswith("proc ")]
    names = {p[1] for p in procs}
    assert "chromium.real" in names, names  # the browser ran here, under oi's launcher
    assert len(procs) >= 4
    for _, name, cap_eff, cap_bnd, no_new_privs, seccomp, euid in procs:
        assert cap_eff == cap_bnd == "0000000000000000", name
        assert euid != "0", name
        if isolation == "runc":  # gVisor's /proc does not show these; its Sentry applies them
            assert (no_new_privs, seccomp) == ("1", "2"), name
    assert "interfaces ['lo']" in result.stdout
    assert "LOADED" not in result.stdout and "no network:" in result.stdout


def test_chromiums_own_sandbox_cannot_start_here_so_the_container_is_the_sandbox(
    make_sandbox: SandboxFactory,
) -> None:
    """Why --no-sandbox: without it Chromium finds no user namespaces and no setuid helper
    (no capabilities, no-new-privileges, oi's seccomp profile); with it (oi's launcher) the
    page renders. The full image has no setuid helper to lend it privileges either."""
    code = (
        "/usr/lib/chromium/chromium.real --headless=new --dump-dom 'data:text/html,<title>raw</title>' "
        "2>&1 | grep -o 'No usable sandbox' | head -1\n"
        "chromium --headless=new --dump-dom 'data:text/html,<title>ok</title>' 2>/dev/null "
        "| grep -o '<title>ok</title>'\n"
        "unshare -Ur true 2>/dev/null && echo UNSHARED\n"
        "find / -xdev -perm /6000 -type f 2>/dev/null | grep -i chrom || echo 'no setuid chromium'\n"
    )
    result = make_sandbox(toolbox="full").run("shell", code)
    lines = result.stdout.splitlines()
    assert lines == ["No usable sandbox", "<title>ok</title>", "no setuid chromium"], result


def test_the_full_image_adds_no_setuid_program(make_sandbox: SandboxFactory) -> None:
    find = "find / -xdev -perm /6000 -type f 2>/dev/null | sort"
    standard = make_sandbox().run("shell", find).stdout.split()
    full = make_sandbox(toolbox="full").run("shell", find).stdout.split()
    assert standard, "control: the shell image has the usual setuid programs (su, mount)"
    assert set(full) <= set(standard), set(full) - set(standard)


# --- images a hostile block plants for --vision ----------------------------------------------


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def bomb_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def decoded_colors(request: dict[str, Any]) -> list[tuple[int, ...]]:
    colors = []
    for message in request["messages"]:
        for part in (
            message.get("content") or [] if isinstance(message.get("content"), list) else []
        ):
            if part.get("type") == "image_url":
                data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                with Image.open(io.BytesIO(data)) as image:
                    colors.append(tuple(image.convert("RGB").getpixel((0, 0))))
    return colors


def test_vision_sends_no_host_file_and_does_not_hang_on_what_a_block_plants(
    tmp_path: Path, fake_vllm: FakeVllm
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "holiday.png"  # a host file the sandbox cannot see
    secret.write_bytes(png_bytes((1, 2, 3), (41, 31)))
    work = tmp_path / "work"
    work.mkdir()
    planter = f"""
import os
os.symlink({str(secret)!r}, "leak.png")
os.symlink({str(outside)!r}, "plots")
os.mkfifo("pipe.png")
open("bomb.png", "wb").write({bomb_header(200_000, 200_000)!r})
open("fake.jpg", "wb").write(b"not a jpeg")
open("\\x1b[2J\\x1b[31mred\\u202egnp.png", "wb").write({png_bytes((200, 0, 0))!r})
open("ok.png", "wb").write({png_bytes((0, 200, 0))!r})
print("planted")
"""
    fake_vllm.vision = True
    fake_vllm.script(
        Reply(text=f"Planting.\n\n```python\n{planter}\n```\n"), Reply(text="I see two images.")
    )
    started = time.monotonic()
    proc = run_oi(
        "run", "look", "-y", "--vision", "--workdir", str(work),
        env=oi_env(tmp_path, OI_API_BASE=fake_vllm.base_url), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 60  # the FIFO hung nothing
    second = fake_vllm.chat_requests[1]
    assert sorted(decoded_colors(second)) == [(0, 200, 0), (200, 0, 0)]  # only the block's own
    assert base64.b64encode(secret.read_bytes()).decode() not in str(fake_vllm.requests)
    text = next(
        p["text"] for m in second["messages"] if isinstance(m.get("content"), list)
        for p in m["content"] if p.get("type") == "text"
    )  # fmt: skip
    assert "bomb.png: 200000x200000 pixels is more than oi decodes" in text
    assert "fake.jpg: not a PNG, JPEG or WebP image" in text
    assert "leak.png" not in text and "holiday" not in text and "pipe.png" not in text
    # The terminal names what was sent, its escapes and bidi override made visible.
    assert "\x1b" not in proc.stderr and "\u202e" not in proc.stderr
    assert "sent to the model:" in proc.stderr and "ok.png" in proc.stderr
    with contextlib.suppress(FileNotFoundError):
        assert secret.read_bytes() == png_bytes((1, 2, 3), (41, 31))  # untouched
