"""Network tiers against the real engine (checklist 29-31 and the allowlist proxy).

Following SECURITY.md's rules, the allowed and denied hosts are HTTP server containers these
tests start themselves; the only outside traffic is one real install from the package index
through the proxy. Nothing is aimed at public, private-range or metadata addresses."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.languages import Language
from orchestrator.sandbox.network import INHIBIT_IPV4, OUTBOUND_NETWORK
from orchestrator.sandbox.runner import Sandbox
from tests.sandbox_fixtures import SandboxFactory, catalog

SERVER = (
    "import http.server, socketserver\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = ('hello from ' + self.headers['Host']).encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "socketserver.TCPServer(('0.0.0.0', 80), H).serve_forever()\n"
)


@dataclass(frozen=True)
class FakeHosts:
    allowed: str
    denied: str
    allowed_ip: str
    subnet: str


@pytest.fixture(scope="module")
def test_hosts(docker_client: docker.DockerClient) -> Iterator[FakeHosts]:
    api = docker_client.api
    if not api.networks(names=[OUTBOUND_NETWORK]):
        api.create_network(
            OUTBOUND_NETWORK, driver="bridge", labels={"oi.managed": "1", "oi.role": "egress"}
        )
    image = catalog(docker_client).resolve_name("python").tag
    suffix = uuid.uuid4().hex[:6]
    names = [f"oi-test-allowed-{suffix}", f"oi-test-denied-{suffix}"]
    ids = []
    try:
        for name in names:
            created = api.create_container(
                image,
                ["python3", "-c", SERVER],
                name=name,
                user="0:0",
                labels={"oi.test": "1"},
                host_config=api.create_host_config(network_mode=OUTBOUND_NETWORK, read_only=True),
            )
            ids.append(created["Id"])
            api.start(created["Id"])
        info = api.inspect_container(ids[0])
        ip = info["NetworkSettings"]["Networks"][OUTBOUND_NETWORK]["IPAddress"]
        subnet = api.inspect_network(OUTBOUND_NETWORK)["IPAM"]["Config"][0]["Subnet"]
        yield FakeHosts(names[0], names[1], ip, subnet)
    finally:
        for container_id in ids:
            api.remove_container(container_id, force=True)


FETCH = (
    "import sys, urllib.request, urllib.error\n"
    "for url in sys.argv[1:] or {urls!r}:\n"
    "    try:\n"
    "        r = urllib.request.urlopen(url, timeout=10)\n"
    "        print(url, r.status, r.read().decode())\n"
    "    except urllib.error.HTTPError as e:\n"
    "        print(url, e.code)\n"
    "    except Exception as e:\n"
    "        print(url, 'failed', type(e).__name__)\n"
)


def allowlist(make_sandbox: SandboxFactory, hosts: FakeHosts, *, permit: bool = True, **extra):
    return make_sandbox(
        network="allowlist",
        allow_hosts=[hosts.allowed],
        egress_ranges=[hosts.subnet] if permit else [],
        **extra,
    )


@pytest.mark.parametrize("isolation", ["runc", "gvisor"])
def test_31_allowlist_lets_the_named_host_through_and_denies_the_rest(
    make_sandbox: SandboxFactory, test_hosts: FakeHosts, isolation: str
) -> None:
    sandbox = allowlist(make_sandbox, test_hosts, isolation=isolation)
    urls = [
        f"http://{test_hosts.allowed}/",
        f"http://{test_hosts.denied}/",
        f"http://{test_hosts.allowed_ip}/",
    ]
    try:
        result = sandbox.run("python", FETCH.format(urls=urls))
    finally:
        sandbox.close()
    lines = result.stdout.splitlines()
    assert lines[0] == f"{urls[0]} 200 hello from {test_hosts.allowed}", result
    assert lines[1] == f"{urls[1]} 403"  # not on the list: the proxy says no
    assert lines[2] == f"{urls[2]} 403"  # IP literal: refused even for an allowed host


def test_31_connect_only_to_443(make_sandbox: SandboxFactory, test_hosts: FakeHosts) -> None:
    code = (
        "import socket\n"
        "s = socket.create_connection(('oi-proxy', 3128), timeout=10)\n"
        f"s.sendall(b'CONNECT {test_hosts.allowed}:80 HTTP/1.1\\r\\nHost: {test_hosts.allowed}:80\\r\\n\\r\\n')\n"
        "print(s.recv(200).split(b'\\r\\n')[0].decode())\n"
    )
    sandbox = allowlist(make_sandbox, test_hosts)
    try:
        result = sandbox.run("python", code)
    finally:
        sandbox.close()
    assert " 403 " in result.stdout, result


def network_of(sandbox: Sandbox) -> str:
    return str(sandbox.spec_for(Language.PYTHON).host_config["network_mode"])


def test_31_no_route_around_the_proxy(
    make_sandbox: SandboxFactory, test_hosts: FakeHosts, docker_client: docker.DockerClient
) -> None:
    code = (
        "import socket, os\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
        "try:\n"
        f"    socket.create_connection(('{test_hosts.allowed_ip}', 80), timeout=3)\n"
        "    print('DIRECT')\n"
        "except OSError as e:\n"
        "    print('no route', type(e).__name__)\n"
    )
    sandbox = allowlist(make_sandbox, test_hosts)
    try:
        result = sandbox.run("python", code)
        # Enforcement comes from the network, not the proxy variables: it is internal, and the
        # host has no address on it.
        network = docker_client.api.inspect_network(network_of(sandbox))
        assert network["Internal"] is True
        assert network["Options"].get(INHIBIT_IPV4) == "true"
    finally:
        sandbox.close()
    assert "DIRECT" not in result.stdout
    assert "no route" in result.stdout
    assert result.stdout.splitlines()[0] == "['eth0', 'lo']"


def test_31_private_destinations_are_denied_unless_permitted(
    make_sandbox: SandboxFactory, test_hosts: FakeHosts
) -> None:
    sandbox = allowlist(make_sandbox, test_hosts, permit=False)
    try:
        result = sandbox.run("python", FETCH.format(urls=[f"http://{test_hosts.allowed}/"]))
    finally:
        sandbox.close()
    # The allowed name resolves to a private address the admin did not permit.
    assert result.stdout.strip().endswith(" 403"), result


def test_proxy_logs_each_decision_and_goes_away_with_its_session(
    make_sandbox: SandboxFactory,
    test_hosts: FakeHosts,
    docker_client: docker.DockerClient,
    session_id: str,
) -> None:
    sandbox = allowlist(make_sandbox, test_hosts)
    urls = [f"http://{test_hosts.allowed}/", f"http://{test_hosts.denied}/"]
    sandbox.run("python", FETCH.format(urls=urls))
    logs = sandbox.proxy_log()
    assert f"TCP_MISS/200 GET http://{test_hosts.allowed}/" in logs
    assert f"TCP_DENIED/403 GET http://{test_hosts.denied}/" in logs
    network = network_of(sandbox)
    labels = {"label": f"oi.session={session_id}"}
    roles = [c["Labels"].get("oi.role") for c in docker_client.api.containers(filters=labels)]
    assert roles.count("proxy") == 1  # its own proxy, labelled with the session (and oi's pid)
    sandbox.close()
    assert docker_client.api.containers(all=True, filters=labels) == []
    assert docker_client.api.networks(names=[network]) == []


def pypi_reachable() -> bool:
    """Whether this machine reaches the package index at all (the one outside host the
    tests use, and only for an install)."""
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


def test_31_real_install_from_the_package_index(make_sandbox: SandboxFactory) -> None:
    if not pypi_reachable():
        pytest.skip("pypi.org:443 does not answer from this machine: no real install to try")
    sandbox = make_sandbox(network="allowlist", allow_hosts=["pypi"], timeout=180)
    try:
        result = sandbox.run(
            "python",
            "import subprocess, sys\n"
            "p = subprocess.run([sys.executable, '-m', 'pip', 'install', '--user', '--no-cache-dir',"
            " '--break-system-packages', 'six==1.16.0'], capture_output=True, text=True)\n"
            "print(p.stdout[-300:], p.stderr[-500:])\n"
            "import site; sys.path.insert(0, site.getusersitepackages())\n"
            "import six; print('six', six.__version__)\n",
        )
    finally:
        sandbox.close()
    assert "six 1.16.0" in result.stdout, result


def test_open_tier_has_a_route_out(make_sandbox: SandboxFactory) -> None:
    code = (
        "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))\n"
        "print('default route' if any(l.split()[1] == '00000000' for l in open('/proc/net/route').readlines()[1:]) else 'none')\n"
    )
    result = make_sandbox(network="open").run("python", code)
    assert "eth0" in result.stdout and "default route" in result.stdout


# --- 42: per-session networks; the Docker host only through the proxy ------------------------

PROBE = (
    "import socket, sys\n"
    "for host in sys.argv[1:] or {hosts!r}:\n"
    "    try:\n"
    "        socket.create_connection((host, {port}), timeout=3).close()\n"
    "        print(host, 'REACHED')\n"
    "    except OSError as e:\n"
    "        print(host, 'unreachable', type(e).__name__)\n"
)


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP listener on the Docker host's 0.0.0.0 (every address the host has)."""
    server = socket.create_server(("0.0.0.0", 0))
    server.listen(16)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                server.accept()[0].close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


def gateways(docker_client: docker.DockerClient, network: str) -> list[str]:
    """The gateway Docker records for a network, or its subnet's first address (the default
    bridge records none)."""
    found = []
    for config in docker_client.api.inspect_network(network)["IPAM"]["Config"] or []:
        subnet = ipaddress.ip_network(config["Subnet"])
        found.append(config.get("Gateway") or str(next(subnet.hosts())))
    return found


def host_addresses(docker_client: docker.DockerClient, network: str) -> list[str]:
    """Every address at which a container could hope to find the host: the gateway Docker
    records for ``network`` (the host has none on it), the default bridge's and the proxies'
    way out's gateways, the host's own addresses."""
    found = []
    for name in (network, "bridge", OUTBOUND_NETWORK):
        found += gateways(docker_client, name)
    with contextlib.suppress(OSError):
        found += socket.gethostbyname_ex(socket.gethostname())[2]
    return sorted(set(found))


@pytest.mark.parametrize("isolation", ["runc", "gvisor"])
def test_42_the_docker_host_is_unreachable_from_an_allowlist_sandbox(
    make_sandbox: SandboxFactory,
    test_hosts: FakeHosts,
    docker_client: docker.DockerClient,
    host_listener: int,
    isolation: str,
) -> None:
    # Positive control: in the open tier the same listener answers at the bridge's gateway.
    (gateway,) = gateways(docker_client, "bridge")
    opened = make_sandbox(network="open", isolation=isolation)
    control = opened.run("python", PROBE.format(hosts=[gateway], port=host_listener))
    opened.close()
    assert f"{gateway} REACHED" in control.stdout, control

    sandbox = allowlist(make_sandbox, test_hosts, isolation=isolation)
    try:
        hosts = host_addresses(docker_client, network_of(sandbox))
        result = sandbox.run("python", PROBE.format(hosts=hosts, port=host_listener))
    finally:
        sandbox.close()
    assert "REACHED" not in result.stdout, result.stdout
    assert result.stdout.count("unreachable") == len(hosts), result


SERVE_ONCE = (  # listens until someone comes, the test says it is done, or 30 s pass
    "import os, socket, time\n"
    "s = socket.create_server(('0.0.0.0', 8080))\n"
    "print(socket.gethostbyname(socket.gethostname()), flush=True)\n"
    "s.settimeout(0.2)\n"
    "end = time.monotonic() + 30\n"
    "while time.monotonic() < end and not os.path.exists('/workspace/probe-done'):\n"
    "    try:\n"
    "        s.accept()\n"
    "        print('SOMEONE CONNECTED')\n"
    "        break\n"
    "    except OSError:\n"
    "        pass\n"
    "else:\n"
    "    print('nobody came')\n"
)


def test_42_two_sessions_with_the_same_allowlist_cannot_reach_each_other(
    make_sandbox: SandboxFactory,
    test_hosts: FakeHosts,
    docker_client: docker.DockerClient,
    workdir: Path,
) -> None:
    """Another session (here: another oi process's, any user's) with the very same allowlist
    gets its own network: its sandbox is not reachable, directly or through the proxy."""
    first = allowlist(make_sandbox, test_hosts, timeout=30)
    config = dataclasses.replace(first.config)
    second = Sandbox(
        docker_client,
        config,
        catalog(docker_client, config),
        first.identity,
        session_id="test-" + uuid.uuid4().hex[:10],
    )
    address: list[str] = []
    seen = threading.Event()

    def heard(stream: str, data: bytes) -> None:
        if stream == "stdout" and not address:
            address.append(data.decode().split()[0])
            seen.set()

    results: list[Any] = []
    server = threading.Thread(
        target=lambda: results.append(first.run("python", SERVE_ONCE, on_output=heard))
    )
    server.start()
    try:
        assert seen.wait(30), "the first session's listener did not start"
        probe = PROBE + (
            "import urllib.request\n"
            "try:\n"
            "    urllib.request.urlopen('http://{address}:8080/', timeout=5)\n"
            "    print('VIA PROXY')\n"
            "except Exception as e:\n"
            "    print('proxy said no', getattr(e, 'code', type(e).__name__))\n"
        )
        result = second.run(
            "python", probe.format(hosts=[address[0]], port=8080, address=address[0])
        )
        assert network_of(first) != network_of(second)
    finally:
        (workdir / "probe-done").touch()  # the listener may stop now
        server.join(60)
        second.close()
        remove_session(docker_client, second.session_id)
        first.close()
    assert f"{address[0]} unreachable" in result.stdout, result
    assert "proxy said no 403" in result.stdout, result
    assert results and "nobody came" in results[0].stdout, results  # nothing reached it
    assert results and "nobody came" in results[0].stdout, results


def remove_session(client: docker.DockerClient, session: str) -> None:
    """What the session_id fixture checks for its own session, for a second one."""
    labels = {"label": f"oi.session={session}"}
    left = client.api.containers(all=True, filters=labels)
    nets = client.api.networks(filters=labels)
    for container in left:
        client.api.remove_container(container["Id"], force=True)
    for network in nets:
        client.api.remove_network(network["Id"])
    assert not left and not nets, (left, nets)
