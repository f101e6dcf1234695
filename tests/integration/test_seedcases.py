"""The seed's workloads 2, 3 and 5 end to end (real engine; the fake vLLM over real HTTP where a
model is involved): a headless browser in the full toolbox (Selenium and Playwright on a page in
the workdir, and a page served through the allowlist), ffmpeg burning subtitles, mail through
an allowlisted ``HOST:PORT``, and the images a block made sent back to a vision model.

Test servers (a web page, SMTP) are containers these tests start on ``oi-egress``, the proxies'
own bridge, with names of their own; the admin permits that bridge's range (as a company
would its mail server's), so the proxy may reach them. Nothing else is contacted."""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from PIL import Image, ImageChops, ImageStat

from orchestrator.approval import Approval
from orchestrator.drive import drive
from orchestrator.events import Event, Notice
from orchestrator.loading import load
from orchestrator.policy import Policy, PolicyRule
from orchestrator.sandbox.network import OUTBOUND_NETWORK
from orchestrator.wiring import open_session
from tests.fake_vllm import FakeVllm, Reply
from tests.sandbox_fixtures import SandboxFactory, catalog, run_oi

INDEX = """<html><head><title>Search</title></head><body>
<h1>搜索 Search</h1>
<form action="result.html"><input name="q" id="q"><button id="go" type="submit">Go</button></form>
<a id="first" href="result.html">Qwen3 Technical Report</a>
</body></html>"""
RESULT = """<html><head><title>Qwen3 Technical Report</title></head>
<body><h1>Qwen3 技术报告</h1><p>The first result.</p></body></html>"""

SELENIUM = """
from selenium import webdriver
from selenium.webdriver.common.by import By

options = webdriver.ChromeOptions()
options.add_argument("--headless=new")
options.add_argument("--window-size=1280,800")
driver = webdriver.Chrome(options=options)
try:
    driver.get("file:///workspace/site/index.html")
    box = driver.find_element(By.NAME, "q")
    box.send_keys("Qwen3 technical whitepaper")
    print("Typed:", box.get_attribute("value"))
    driver.find_element(By.ID, "first").click()
    print("Title:", driver.title)
    driver.save_screenshot("screenshot.png")
finally:
    driver.quit()
""".strip()

PLAYWRIGHT = """
from playwright.sync_api import sync_playwright

with sync_playwright() as p:
    browser = p.chromium.launch()
    page = browser.new_page()
    page.goto("file:///workspace/site/index.html")
    page.fill("#q", "Qwen3 technical whitepaper")
    print("Typed:", page.input_value("#q"))
    page.click("#first")
    print("Title:", page.title())
    page.screenshot(path="playwright.png")
    browser.close()
""".strip()


def fence(language: str, code: str) -> str:
    return f"I will do that.\n\n```{language}\n{code}\n```\n"


def site(workdir: Path) -> None:
    (workdir / "site").mkdir()
    (workdir / "site" / "index.html").write_text(INDEX)
    (workdir / "site" / "result.html").write_text(RESULT)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes: a whole, real PNG
        return image.size


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process sessions read no config file of the machine's user."""
    monkeypatch.setenv("OI_CONFIG_FILE", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def agent_env(tmp_path: Path, fake_vllm: FakeVllm) -> dict[str, str]:
    return {
        "OI_API_BASE": fake_vllm.base_url,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "OI_CONFIG_FILE": str(tmp_path / "no-config.toml"),
    }


# --- case 3: a headless browser -----------------------------------------------------------------


def test_selenium_block_written_as_a_model_writes_it(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    site(workdir)

    def after(request: dict[str, Any]) -> Reply:
        result = str(request["messages"][-1]["content"])
        assert "exit code 0" in result, result
        assert "Typed: Qwen3 technical whitepaper" in result
        assert "Title: Qwen3 Technical Report" in result
        return Reply(text="The screenshot is in screenshot.png.")

    fake_vllm.script(Reply(text=fence("python", SELENIUM)), after)
    proc = run_oi(
        "run", "open the page, search, click the first result, screenshot", "-y",
        "--toolbox", "full", "--workdir", str(workdir), env=agent_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert fake_vllm.pending_replies == 0
    width, height = png_size(workdir / "screenshot.png")
    assert width >= 1000 and height >= 500
    assert "oi-sandbox-full:" in proc.stderr  # the approval screen names the image


def test_playwright_block_uses_the_system_chromium(
    make_sandbox: SandboxFactory, workdir: Path
) -> None:
    site(workdir)
    result = make_sandbox(toolbox="full").run("python", PLAYWRIGHT)
    assert result.exit_code == 0, result.stderr
    assert "Typed: Qwen3 technical whitepaper" in result.stdout
    assert "Title: Qwen3 Technical Report" in result.stdout
    assert png_size(workdir / "playwright.png") == (1280, 720)
    assert "oi-sandbox-full:" in result.image


def test_the_standard_toolbox_has_no_browser(make_sandbox: SandboxFactory) -> None:
    """The default image stays small: the browser is there only when the user chose it."""
    result = make_sandbox().run("python", "import selenium")
    assert result.exit_code == 1 and "No module named 'selenium'" in result.stderr
    assert "oi-sandbox-python:" in result.image


def test_the_full_toolbox_has_fonts_for_chinese_text(make_sandbox: SandboxFactory) -> None:
    """The seed's users search in Chinese: a screenshot must show the text, not boxes."""
    result = make_sandbox(toolbox="full").run("shell", "fc-list :lang=zh family")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip(), "no font in the full image covers Chinese (fc-list :lang=zh)"
    assert "oi-sandbox-full:" in result.image


WEB_SERVER = (
    "import http.server, socketserver\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = ('<html><head><title>Served by ' + self.headers['Host'].split(':')[0]"
    " + '</title></head><body>secret-marker</body></html>').encode()\n"
    "        self.send_response(200); self.send_header('Content-Type', 'text/html')\n"
    "        self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "socketserver.TCPServer(('0.0.0.0', 80), H).serve_forever()\n"
)


@dataclass(frozen=True)
class ServerSet:
    names: dict[str, str]  # role -> container name (its DNS name on oi-egress)
    ids: list[str]
    subnet: str


def start_servers(client: docker.DockerClient, roles: dict[str, tuple[str, ...]]) -> ServerSet:
    """One container per role (python image), on oi-egress, running ``command``."""
    api = client.api
    if not api.networks(names=[OUTBOUND_NETWORK]):
        api.create_network(
            OUTBOUND_NETWORK, driver="bridge", labels={"oi.managed": "1", "oi.role": "egress"}
        )
    image = catalog(client).resolve_name("python").tag
    suffix = uuid.uuid4().hex[:6]
    names: dict[str, str] = {}
    ids: list[str] = []
    try:
        for role, command in roles.items():
            name = f"oi-test-{role}-{suffix}.test"
            created = api.create_container(
                image,
                list(command),
                name=name,
                user="0:0",
                labels={"oi.test": "1"},
                host_config=api.create_host_config(network_mode=OUTBOUND_NETWORK, read_only=True),
            )
            ids.append(created["Id"])
            api.start(created["Id"])
            names[role] = name
        subnet = api.inspect_network(OUTBOUND_NETWORK)["IPAM"]["Config"][0]["Subnet"]
    except BaseException:
        for container_id in ids:
            api.remove_container(container_id, force=True)
        raise
    return ServerSet(names, ids, subnet)


@pytest.fixture
def web_servers(docker_client: docker.DockerClient) -> Iterator[ServerSet]:
    servers = start_servers(
        docker_client,
        {"web": ("python3", "-c", WEB_SERVER), "other": ("python3", "-c", WEB_SERVER)},
    )
    yield servers
    for container_id in servers.ids:
        docker_client.api.remove_container(container_id, force=True)


def test_the_browser_reaches_only_what_the_allowlist_allows(
    make_sandbox: SandboxFactory, web_servers: ServerSet
) -> None:
    allowed, denied = web_servers.names["web"], web_servers.names["other"]
    code = (
        "from playwright.sync_api import sync_playwright\n"
        "with sync_playwright() as p:\n"
        "    page = p.chromium.launch().new_page()\n"
        f"    for host in ({allowed!r}, {denied!r}):\n"
        "        response = page.goto(f'http://{host}/')\n"
        "        print(host, response.status, page.title(), 'secret-marker' in page.content())\n"
    )
    sandbox = make_sandbox(
        toolbox="full",
        network="allowlist",
        allow_hosts=[allowed],
        egress_ranges=[web_servers.subnet],
    )
    try:
        result = sandbox.run("python", code)
        log = sandbox.proxy_log()
    finally:
        sandbox.close()
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{allowed} 200 Served by {allowed} True", result.stdout
    assert lines[1].startswith(f"{denied} 403 ") and lines[1].endswith(" False"), result.stdout
    assert f"TCP_MISS/200 GET http://{allowed}/" in log
    assert f"TCP_DENIED/403 GET http://{denied}/" in log


# --- case 2: media tools ----------------------------------------------------------------------

FFMPEG = r"""
set -e
ffmpeg -hide_banner -loglevel error -f lavfi -i testsrc=duration=2:size=320x240:rate=10 \
  -pix_fmt yuv420p clip.mp4
printf '1\n00:00:00,000 --> 00:00:02,000\nHello 字幕\n' > clip.srt
ffmpeg -hide_banner -loglevel error -i clip.mp4 \
  -vf "subtitles=clip.srt:force_style='FontSize=40'" out.mp4
ffprobe -v error -show_entries format=duration -of csv=p=0 out.mp4
for f in clip out; do
  ffmpeg -hide_banner -loglevel error -ss 1 -i $f.mp4 -frames:v 1 $f-frame.png
done
"""


def test_ffmpeg_makes_a_clip_and_burns_subtitles_into_it(
    make_sandbox: SandboxFactory, workdir: Path
) -> None:
    result = make_sandbox(toolbox="full").run("shell", FFMPEG)
    assert result.exit_code == 0, result.stderr
    assert abs(float(result.stdout.strip()) - 2.0) < 0.15, result.stdout
    with Image.open(workdir / "clip-frame.png") as a, Image.open(workdir / "out-frame.png") as b:
        diff = ImageChops.difference(a.convert("L"), b.convert("L"))
        width, height = diff.size
        top = ImageStat.Stat(diff.crop((0, 0, width, height // 3))).mean[0]
        bottom = ImageStat.Stat(diff.crop((0, 2 * height // 3, width, height))).mean[0]
    # Re-encoding alone changes a pixel by a little; the burnt-in text, a lot, at the bottom.
    assert bottom > 4 * max(top, 1.0), (top, bottom)


# --- case 5: mail through an allowlisted HOST:PORT ----------------------------------------------

SMTP_SERVER = r"""
import asyncio, base64, sys
PORT = int(sys.argv[1])
async def handle(reader, writer):
    def send(line):
        writer.write((line + "\r\n").encode())
    peer = writer.get_extra_info("peername")[0]
    print("CONNECTION", PORT, peer, flush=True)
    send("220 oi-test ESMTP")
    user, data, lines = None, False, []
    while True:
        await writer.drain()
        raw = await reader.readline()
        if not raw:
            break
        line = raw.decode(errors="replace").rstrip("\r\n")
        if data:
            if line == ".":
                data = False
                print("MESSAGE", json_dumps({"auth": user, "lines": lines}), flush=True)
                lines = []
                send("250 2.0.0 queued")
            else:
                lines.append(line[1:] if line.startswith("..") else line)
            continue
        verb = line.split(" ", 1)[0].upper()
        if verb in ("EHLO", "HELO"):
            send("250-oi-test")
            send("250-AUTH PLAIN LOGIN")
            send("250 8BITMIME")
        elif verb == "AUTH":
            words = line.split()
            if words[1].upper() == "PLAIN":
                token = words[2] if len(words) > 2 else None
                if token is None:
                    send("334 ")
                    await writer.drain()
                    token = (await reader.readline()).decode().strip()
                _, name, secret = base64.b64decode(token).decode().split("\0")
            else:
                send("334 VXNlcm5hbWU6")
                await writer.drain()
                name = base64.b64decode((await reader.readline()).strip()).decode()
                send("334 UGFzc3dvcmQ6")
                await writer.drain()
                secret = base64.b64decode((await reader.readline()).strip()).decode()
            user = name + ":" + secret
            send("235 2.7.0 Authentication successful")
        elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
            send("250 2.1.0 OK")
        elif verb == "DATA":
            data = True
            send("354 End data with <CR><LF>.<CR><LF>")
        elif verb == "QUIT":
            send("221 2.0.0 Bye")
            await writer.drain()
            break
        else:
            send("502 5.5.1 not implemented")
    writer.close()
from json import dumps as json_dumps
async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", PORT)
    print("LISTENING", PORT, flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


@pytest.fixture
def mail_servers(docker_client: docker.DockerClient) -> Iterator[ServerSet]:
    servers = start_servers(
        docker_client,
        {
            "mail": ("python3", "-c", SMTP_SERVER, "587"),
            "relay": ("python3", "-c", SMTP_SERVER, "25"),
        },
    )
    yield servers
    for container_id in servers.ids:
        docker_client.api.remove_container(container_id, force=True)


def server_log(client: docker.DockerClient, servers: ServerSet, role: str) -> str:
    index = list(servers.names).index(role)
    return client.api.logs(servers.ids[index]).decode(errors="replace")


def admin_permits(subnet: str) -> Policy:
    """A system policy that lets the proxy reach ``subnet`` (as an admin would a mail server)."""
    rule = PolicyRule("egress_ranges", [subnet], Path("/etc/oi/policy.toml"), 1)
    return Policy({"egress_ranges": [rule]})


def run_agent(
    workdir: Path,
    fake_vllm: FakeVllm,
    session_id: str,
    client: docker.DockerClient,
    task: str,
    policy: Policy,
    **flags: Any,
) -> tuple[str, list[Event], str]:
    """One ``oi run -y`` in process: every settings source (none here but the flags and the
    policy), the production wiring, the real model client against the fake vLLM. The end
    status, the events, the proxy's log."""
    loaded = load(
        {"api_base": fake_vllm.base_url, "workdir": workdir, "auto_run": True, **flags},
        policy=policy,
        environ={},
        read_project=False,
    )
    events: list[Event] = []
    record = workdir.parent / f"{session_id}.jsonl"
    with open_session(
        loaded, session_id=session_id, record_path=record, docker_client=client
    ) as opened:
        status = drive(
            opened.session.send(task),
            render=events.append,
            approve=lambda _proposal: Approval("run"),
        )
        log = opened.sandbox.proxy_log(200)
    return status, events, log


MAIL_BLOCK = r"""
cat > report.txt <<'EOF'
From: oi@example.org
To: ops@example.org
Subject: nightly results

mean=3.875 max=9
EOF
curl --silent --show-error --url "smtp://{mail}:587" --user "oi:$SMTP_PASSWORD" \
  --mail-from oi@example.org --mail-rcpt ops@example.org --upload-file report.txt \
  && echo "curl: sent"
cat > "$HOME/.msmtprc" <<EOF
account default
host {mail}
port 587
auth plain
user oi
password $SMTP_PASSWORD
tls off
from oi@example.org
EOF
chmod 600 "$HOME/.msmtprc"
msmtp ops@example.org < report.txt && echo "msmtp: sent"
echo "--- port 25 of another server:"
curl --silent --show-error --max-time 3 --url "smtp://{relay}:25" --mail-from a@b.c \
  --mail-rcpt d@e.f --upload-file report.txt || echo "by name: refused"
curl --silent --show-error --max-time 5 --proxy http://oi-proxy:3128 --proxytunnel \
  --url "smtp://{relay}:25" --mail-from a@b.c --mail-rcpt d@e.f --upload-file report.txt \
  || echo "through the proxy: refused"
curl --silent --show-error --max-time 5 --url "smtp://{mail}:25" --mail-from a@b.c \
  --mail-rcpt d@e.f --upload-file report.txt || echo "the allowed host on 25: refused"
""".strip()

SMTPLIB_BLOCK = """
import os, smtplib
from email.message import EmailMessage

message = EmailMessage()
message["From"], message["To"], message["Subject"] = "oi@example.org", "ops@example.org", "py"
message.set_content("sent by smtplib")
with smtplib.SMTP("{mail}", 587, timeout=10) as server:
    server.login("oi", os.environ["SMTP_PASSWORD"])
    server.send_message(message)
print("smtplib: sent")
""".strip()


def test_mail_goes_to_the_allowlisted_host_port_and_nowhere_else(
    workdir: Path,
    fake_vllm: FakeVllm,
    session_id: str,
    docker_client: docker.DockerClient,
    mail_servers: ServerSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mail, relay = mail_servers.names["mail"], mail_servers.names["relay"]
    monkeypatch.setenv("SMTP_PASSWORD", "s3cret-from-env")
    seen: list[str] = []

    def next_block(request: dict[str, Any]) -> Reply:
        seen.append(str(request["messages"][-1]["content"]))
        return Reply(text=fence("python", SMTPLIB_BLOCK.format(mail=mail)))

    def done(request: dict[str, Any]) -> Reply:
        seen.append(str(request["messages"][-1]["content"]))
        return Reply(text="The results were mailed.")

    fake_vllm.script(
        Reply(text=fence("bash", MAIL_BLOCK.format(mail=mail, relay=relay))), next_block, done
    )
    status, events, log = run_agent(
        workdir, fake_vllm, session_id, docker_client, "mail the results", admin_permits(
            mail_servers.subnet
        ),
        allow_hosts=[f"{mail}:587"], env=["SMTP_PASSWORD"],
    )  # fmt: skip
    assert status == "finished", [e for e in events if isinstance(e, Notice)]
    shell_result, python_result = seen
    assert "curl: sent" in shell_result and "msmtp: sent" in shell_result, shell_result
    assert "by name: refused" in shell_result  # no DNS name, no route
    assert "through the proxy: refused" in shell_result  # CONNECT relay:25 -> 403
    assert "the allowed host on 25: refused" in shell_result  # only 587 is forwarded
    assert "smtplib: sent" in python_result, python_result
    received = [
        json.loads(line.split(" ", 1)[1])
        for line in server_log(docker_client, mail_servers, "mail").splitlines()
        if line.startswith("MESSAGE ")
    ]
    assert len(received) == 3, received
    assert all(m["auth"] == "oi:s3cret-from-env" for m in received)
    assert any("mean=3.875 max=9" in m["lines"] for m in received)
    assert "sent by smtplib" in json.dumps(received)
    relay_log = server_log(docker_client, mail_servers, "relay")
    assert "CONNECTION" not in relay_log and "LISTENING 25" in relay_log  # up, never reached
    # The proxy logged each connection it forwarded, and the one it refused.
    assert log.count(f"TCP_TUNNEL/200 CONNECT {mail}:587") == 3, log
    assert f"TCP_DENIED/403 CONNECT {relay}:25" in log, log


def test_a_tcp_host_that_resolves_to_a_private_address_is_refused(
    workdir: Path,
    fake_vllm: FakeVllm,
    session_id: str,
    docker_client: docker.DockerClient,
    mail_servers: ServerSet,
) -> None:
    """Without the admin's permission for its range, the proxy does not forward to the test
    server (a private address): the same rule as for HTTPS."""
    mail = mail_servers.names["mail"]
    seen: list[str] = []

    def done(request: dict[str, Any]) -> Reply:
        seen.append(str(request["messages"][-1]["content"]))
        return Reply(text="It did not go through.")

    block = (
        f"curl --silent --show-error --max-time 10 --url smtp://{mail}:587 "
        "--mail-from a@b.c --mail-rcpt d@e.f --upload-file /etc/hostname || echo REFUSED"
    )
    fake_vllm.script(Reply(text=fence("bash", block)), done)
    status, _, log = run_agent(
        workdir, fake_vllm, session_id, docker_client, "mail", Policy(),
        allow_hosts=[f"{mail}:587"],
    )  # fmt: skip
    assert status == "finished"
    assert "REFUSED" in seen[0], seen
    assert "CONNECTION" not in server_log(docker_client, mail_servers, "mail")
    assert f"TCP_DENIED/403 CONNECT {mail}:587" in log, log


# --- vision --------------------------------------------------------------------------------------

CHART = """
import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [3, 1, 2])
plt.title("Monthly revenue")
plt.savefig("chart.png")
print("saved chart.png")
""".strip()


def image_urls(request: dict[str, Any]) -> list[str]:
    return [
        part["image_url"]["url"]
        for message in request["messages"]
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]


@pytest.mark.parametrize("vision", [True, False])
def test_vision_sends_the_chart_the_block_saved(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str], vision: bool
) -> None:
    fake_vllm.vision = True
    fake_vllm.script(Reply(text=fence("python", CHART)), Reply(text="The line dips in month 2."))
    flags = ["--vision"] if vision else []
    proc = run_oi(
        "run", "plot and describe", "-y", *flags, "--workdir", str(workdir), env=agent_env
    )
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "chart.png").exists()  # the block made one either way
    first, second = fake_vllm.chat_requests
    assert image_urls(first) == []
    if vision:
        (url,) = image_urls(second)
        assert url.startswith("data:image/png;base64,")
        assert "sent to the model: chart.png (640x480" in proc.stderr  # the terminal names it
    else:
        assert image_urls(second) == []
        assert "sent to the model" not in proc.stderr


def test_a_server_that_refuses_images_is_named_once(
    workdir: Path, fake_vllm: FakeVllm, agent_env: dict[str, str]
) -> None:
    photo = workdir.parent / "photo.png"
    Image.new("RGB", (64, 48), (255, 0, 0)).save(photo)
    fake_vllm.script(  # a text-only model: its server refuses every request with an image
        Reply(text=fence("python", CHART)),
        Reply(text=fence("python", CHART.replace("chart.png", "chart2.png"))),
        Reply(text="Done without looking."),
    )
    proc = run_oi(
        "run", "plot", "-y", "--image", str(photo), "--workdir", str(workdir), env=agent_env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("does not take images") == 1, proc.stderr
    requests = fake_vllm.chat_requests
    refused = [r for r in requests if image_urls(r)]
    assert len(refused) == 1  # the first request, with the person's image, then none
    assert [image_urls(r) for r in requests if r not in refused] == [[], [], []]
    assert os.path.exists(workdir / "chart2.png")  # the session went on


def test_mail_through_the_allowlist_under_gvisor(
    make_sandbox: SandboxFactory, docker_client: docker.DockerClient, mail_servers: ServerSet
) -> None:
    """The forwarder and the sandbox's hosts entry work the same under gVisor's network stack."""
    mail = mail_servers.names["mail"]
    sandbox = make_sandbox(
        isolation="gvisor",
        allow_hosts=[f"{mail}:587"],
        egress_ranges=[mail_servers.subnet],
        env=["SMTP_PASSWORD"],
        host_env={"SMTP_PASSWORD": "under-gvisor"},
    )
    code = (
        "printf 'Subject: g\\n\\nfrom gvisor\\n' > m.txt\n"
        f'curl --silent --show-error --url smtp://{mail}:587 --user "oi:$SMTP_PASSWORD" '
        "--mail-from a@example.org --mail-rcpt b@example.org --upload-file m.txt && echo sent"
    )
    try:
        result = sandbox.run("shell", code)
    finally:
        sandbox.close()
    assert result.stdout.strip() == "sent", result
    log = server_log(docker_client, mail_servers, "mail")
    assert '"auth": "oi:under-gvisor"' in log and "from gvisor" in log, log
