"""Network tiers against the real engine (checklist 29-31 and the allowlist proxy).

Following SECURITY.md's rules, the allowed and denied hosts are HTTP server containers these
tests start themselves; the only outside traffic is one real install from the package index
through the proxy. Nothing is aimed at public, private-range or metadata addresses."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest

from orchestrator.sandbox.network import EGRESS_NETWORK, EgressManager, EgressPolicy
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
    if not api.networks(names=[EGRESS_NETWORK]):
        api.create_network(
            EGRESS_NETWORK, driver="bridge", labels={"oi.managed": "1", "oi.role": "egress"}
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
                host_config=api.create_host_config(network_mode=EGRESS_NETWORK, read_only=True),
            )
            ids.append(created["Id"])
            api.start(created["Id"])
        info = api.inspect_container(ids[0])
        ip = info["NetworkSettings"]["Networks"][EGRESS_NETWORK]["IPAddress"]
        subnet = api.inspect_network(EGRESS_NETWORK)["IPAM"]["Config"][0]["Subnet"]
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
    policy = EgressPolicy((test_hosts.allowed,), (test_hosts.subnet,))
    try:
        result = sandbox.run("python", code)
        # Enforcement comes from the network, not the proxy variables: it is internal.
        network = docker_client.api.inspect_network(f"oi-allow-{policy.key}")
        assert network["Internal"] is True
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


def test_proxy_logs_each_decision_and_goes_away_when_idle(
    make_sandbox: SandboxFactory, test_hosts: FakeHosts, docker_client: docker.DockerClient
) -> None:
    sandbox = allowlist(make_sandbox, test_hosts)
    policy = EgressPolicy((test_hosts.allowed,), (test_hosts.subnet,))
    urls = [f"http://{test_hosts.allowed}/", f"http://{test_hosts.denied}/"]
    sandbox.run("python", FETCH.format(urls=urls))
    manager = EgressManager(docker_client, catalog(docker_client))
    logs = manager.proxy_logs(policy)
    assert f"TCP_MISS/200 GET http://{test_hosts.allowed}/" in logs
    assert f"TCP_DENIED/403 GET http://{test_hosts.denied}/" in logs
    sandbox.close()
    assert docker_client.api.containers(all=True, filters={"name": f"oi-proxy-{policy.key}"}) == []
    assert docker_client.api.networks(names=[f"oi-allow-{policy.key}"]) == []


def test_31_real_install_from_the_package_index(make_sandbox: SandboxFactory) -> None:
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
