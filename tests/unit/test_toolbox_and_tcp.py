"""The seed cases' pure parts: which image (the toolbox), ``HOST:PORT`` allowlist entries and
the proxy's rules for them, and how settings, the trust model and the admin policy treat both."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ConfigError, PolicyError
from orchestrator.languages import Language
from orchestrator.loading import load, sandbox_config
from orchestrator.policy import Policy, apply_policy, parse_policy
from orchestrator.presets import expand_hosts
from orchestrator.sandbox.hosts import TcpTarget, normalize_entry, split_entries
from orchestrator.sandbox.images import ALL_IMAGES, BUILD_CA_NAME, PARENTS, ImageCatalog
from orchestrator.sandbox.network import (
    EgressPolicy,
    EgressRoute,
    forward_environment,
    proxy_address,
    squid_config,
)
from orchestrator.sandbox.spec import Identity, NetworkAttachment, build_spec
from orchestrator.sandbox.toolbox import image_for, language_notes
from orchestrator.settings import Settings

# --- which image ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "toolbox", "image"),
    [
        (Language.PYTHON, "standard", "python"),
        (Language.JAVASCRIPT, "standard", "node"),
        (Language.SHELL, "standard", "shell"),
        (Language.PYTHON, "full", "full"),
        (Language.SHELL, "full", "full"),
        (Language.JAVASCRIPT, "full", "node"),  # Node's image has no browser: unchanged
    ],
)
def test_image_for(language: Language, toolbox: Any, image: str) -> None:
    assert image_for(language, toolbox) == image


def test_the_full_image_is_built_on_the_shell_one_and_listed() -> None:
    assert PARENTS["full"] == "shell" and PARENTS["shell"] == "python"
    assert "full" in ALL_IMAGES
    assert "selenium" in dict(language_notes("full"))["python"]
    assert "selenium" not in dict(language_notes("standard"))["python"]
    assert "ffmpeg" in dict(language_notes("full"))["shell"]


def test_build_context_carries_the_ca_bundle_but_the_tag_does_not(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "full" / "helper.py").write_text("print(1)\n")
    for name in ("python", "shell"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text(f"FROM scratch # {name}\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    other = tmp_path / "other.crt"
    other.write_text("another\n")
    catalog = ImageCatalog(None, root=tmp_path, ca_bundle=ca)  # type: ignore[arg-type]
    with tarfile.open(fileobj=io.BytesIO(catalog.build_context("full"))) as tar:
        names = sorted(tar.getnames())
        extracted = tar.extractfile(BUILD_CA_NAME)
        assert extracted is not None and extracted.read() == ca.read_bytes()
    assert names == sorted(["Dockerfile", "helper.py", BUILD_CA_NAME])
    again = ImageCatalog(None, root=tmp_path, ca_bundle=other)  # type: ignore[arg-type]
    assert catalog.expected_tag("full") == again.expected_tag("full")


# --- HOST:PORT entries ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("mail.example.org:587", "mail.example.org:587"),
        ("Mail.Example.ORG.:0465", "mail.example.org:465"),
        (" db.internal:5432 ", "db.internal:5432"),
        ("example.org", "example.org"),
        ("https://example.org:8443/x", "example.org"),  # a URL: HTTPS through the proxy
        ("oi-test-mail-1a2b:25", "oi-test-mail-1a2b:25"),
    ],
)
def test_normalize_entry(text: str, entry: str) -> None:
    assert normalize_entry(text) == entry


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.5:25", "IP addresses are not allowed"),
        ("[::1]:25", "IP addresses are not allowed"),
        ("::1", "IP addresses are not allowed"),
        ("169.254.169.254:80", "IP addresses are not allowed"),
        ("mail.example.org:0", "from 1 to 65535"),
        ("mail.example.org:70000", "from 1 to 65535"),
        ("mail.example.org:smtp", "from 1 to 65535"),
        ("mail.example.org:", "from 1 to 65535"),
        ("mail.example.org:3128", "the egress proxy's own"),
        ("localhost:25", "names the sandbox or its proxy"),
        ("x.localhost:25", "names the sandbox or its proxy"),
        ("oi-proxy:25", "names the sandbox or its proxy"),
        ("exa mple.org:25", "not a host name"),
    ],
)
def test_normalize_entry_refuses(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        normalize_entry(text)


def test_split_entries_and_one_host_per_port() -> None:
    hosts, targets = split_entries(["b.example", "mail.test:587", "a.example", "db.test:5432"])
    assert hosts == ("a.example", "b.example")
    assert targets == (TcpTarget("db.test", 5432), TcpTarget("mail.test", 587))
    assert str(targets[1]) == "mail.test:587"
    assert split_entries(["mail.test:587", "mail.test:587", "mail.test:25"])[1] == (
        TcpTarget("mail.test", 25),
        TcpTarget("mail.test", 587),
    )
    with pytest.raises(ConfigError, match="share port 587"):
        split_entries(["a.test:587", "b.test:587"])


def http_rules(config: str) -> list[str]:
    return [line for line in config.splitlines() if line.startswith("http_access")]


def test_squid_forwards_exactly_each_tcp_host_and_port() -> None:
    policy = EgressPolicy(("pypi.org", "mail.test:587", "db.test:5432"))
    assert policy.web_hosts == ("pypi.org",)
    config = squid_config(policy)
    assert "acl allowed_hosts dstdomain -n pypi.org\n" in config
    assert "acl tcp_hosts dstdomain -n db.test mail.test\n" in config
    assert "acl tcp0_host dstdomain -n db.test\nacl tcp0_port port 5432\n" in config
    assert "acl tcp1_host dstdomain -n mail.test\nacl tcp1_port port 587\n" in config
    assert http_rules(config) == [
        "http_access deny ip_literal",
        "http_access deny !allowed_hosts !tcp_hosts",  # nothing else is even resolved
        "http_access deny special",  # a TCP host that points inside is refused
        "http_access allow CONNECT tcp0_host tcp0_port",
        "http_access allow CONNECT tcp1_host tcp1_port",
        "http_access deny !allowed_hosts",  # a TCP host gets no HTTP, and no other port
        "http_access deny CONNECT !tls_port",
        "http_access deny !CONNECT !http_port",
        "http_access deny special",
        "http_access allow allowed_hosts",
        "http_access deny all",
    ]


def test_squid_with_tcp_hosts_only_and_permitted_ranges() -> None:
    config = squid_config(EgressPolicy(("mail.test:587",), ("172.30.0.0/16",)))
    assert "allowed_hosts" not in config
    assert http_rules(config)[:4] == [
        "http_access deny ip_literal",
        "http_access deny !tcp_hosts",
        "http_access deny special !permitted_ranges",
        "http_access allow CONNECT tcp0_host tcp0_port",
    ]
    assert http_rules(config)[4] == "http_access deny all"


def test_without_tcp_hosts_the_rules_are_as_before() -> None:
    assert "tcp" not in squid_config(EgressPolicy(("a.example",)))


def test_forwarders_and_the_sandbox_hosts_entries() -> None:
    policy = EgressPolicy(("pypi.org", "mail.test:587"))
    assert proxy_address("198.18.4.32/27") == "198.18.4.34"
    assert forward_environment(policy, "198.18.4.34") == {
        "OI_TCP_FORWARDS": "mail.test:587",
        "OI_FORWARD_ADDRESS": "198.18.4.34",
    }
    assert forward_environment(EgressPolicy(("pypi.org",)), "x") == {}
    route = EgressRoute("net", "http://oi-proxy:3128", "p", "198.18.4.34", ("mail.test",))
    assert route.extra_hosts == (("mail.test", "198.18.4.34"),)
    with pytest.raises(ConfigError, match="share port"):
        EgressPolicy(("a.test:25", "b.test:25"))


IDENTITY = Identity(uid=1000, gid=1000, owner_uid=1000, pid=1, pid_start="1")


def test_the_sandbox_resolves_tcp_hosts_to_its_proxy_only_on_an_allowlist(tmp_path: Path) -> None:
    attachment = NetworkAttachment(
        "oi-allow-x", "http://oi-proxy:3128", None, (("mail.test", "198.18.0.2"),)
    )
    config = sandbox_config(Settings(workdir=tmp_path, allow_hosts=["mail.test:587"]), Policy())
    spec = build_spec(Language.SHELL, "img", config, IDENTITY, "s", {}, attachment=attachment)
    assert spec.host_config["extra_hosts"] == {"mail.test": "198.18.0.2"}
    none = sandbox_config(Settings(workdir=tmp_path), Policy())
    spec = build_spec(Language.SHELL, "img", none, IDENTITY, "s", {}, attachment=attachment)
    assert "extra_hosts" not in spec.host_config


# --- settings, trust, policy ---------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("OI_"):
            monkeypatch.delenv(name)
    user = tmp_path / "user.toml"
    user.write_text("")
    monkeypatch.setenv("OI_CONFIG_FILE", str(user))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return project


def user_config(text: str) -> None:
    Path(os.environ["OI_CONFIG_FILE"]).write_text(text + "\n")


@pytest.mark.parametrize(
    ("user", "project"),
    [
        ("", 'toolbox = "full"'),  # the bigger image: wider
        ('allow_hosts = ["pypi"]', 'allow_hosts = ["pypi", "mail.evil.example:25"]'),
        ('allow_hosts = ["mail.test:587"]', 'allow_hosts = ["mail.test:25"]'),  # another port
        ('allow_hosts = ["mail.test"]', 'allow_hosts = ["mail.test:25"]'),  # HTTP is not TCP
    ],
)
def test_a_project_file_cannot_take_the_bigger_image_or_more_tcp(
    home: Path, user: str, project: str
) -> None:
    user_config(user)
    (home / "oi.toml").write_text(project + "\n")
    key = project.split(" ", 1)[0]
    with pytest.raises(ConfigError, match=f"oi.toml: {key} = .* is refused"):
        load({}, policy=Policy())


@pytest.mark.parametrize(
    ("user", "project", "key", "value"),
    [
        ('toolbox = "full"', 'toolbox = "standard"', "toolbox", "standard"),
        (
            'allow_hosts = ["pypi", "mail.test:587"]',
            'allow_hosts = ["mail.test:587"]',
            "allow_hosts",
            ["mail.test:587"],
        ),
        ("", "vision = true", "vision", True),  # harmless: the user's own endpoint
    ],
)
def test_a_project_file_may_narrow_them(
    home: Path, user: str, project: str, key: str, value: Any
) -> None:
    user_config(user)
    (home / "oi.toml").write_text(project + "\n")
    assert getattr(load({}, policy=Policy()).settings, key) == value


def test_tcp_entries_reach_the_sandbox_config(home: Path) -> None:
    loaded = load({"allow_hosts": ["pypi", "Mail.Test:587"], "toolbox": "full"}, policy=Policy())
    config = loaded.sandbox_config()
    assert config.network == "allowlist" and config.toolbox == "full"
    assert "mail.test:587" in config.allow_hosts and "pypi.org" in config.allow_hosts


def policy_of(text: str) -> Policy:
    return Policy({k: [r] for k, r in parse_policy(text, Path("/etc/oi/policy.toml")).items()})


def test_the_policy_restricts_toolboxes(tmp_path: Path) -> None:
    only_standard = policy_of('allowed_toolboxes = ["standard"]\n')
    with pytest.raises(PolicyError, match=r"--toolbox full is not allowed .*line 1"):
        apply_policy(Settings(workdir=tmp_path, toolbox="full"), only_standard)
    assert apply_policy(Settings(workdir=tmp_path), only_standard).toolbox == "standard"
    both = policy_of('allowed_toolboxes = ["standard", "full"]\n')
    assert apply_policy(Settings(workdir=tmp_path, toolbox="full"), both).toolbox == "full"


def test_the_policy_caps_tcp_ports_and_hosts(tmp_path: Path) -> None:
    ports = policy_of("allowed_tcp_ports = [587, 465]\n")
    ok = Settings(workdir=tmp_path, allow_hosts=["pypi", "mail.test:587"])
    assert apply_policy(ok, ports).allow_hosts == ["pypi", "mail.test:587"]
    with pytest.raises(PolicyError, match=r"mail.test:25 \(plain TCP to port 25\) is not allowed"):
        apply_policy(Settings(workdir=tmp_path, allow_hosts=["mail.test:25"]), ports)
    no_tcp = policy_of("allowed_tcp_ports = []\n")
    with pytest.raises(PolicyError, match="allowed_tcp_ports = \\[\\]"):
        apply_policy(Settings(workdir=tmp_path, allow_hosts=["mail.test:587"]), no_tcp)
    hosts = policy_of('allowed_hosts = ["pypi", "smtp.corp.example:587"]\n')
    apply_policy(Settings(workdir=tmp_path, allow_hosts=["smtp.corp.example:587"]), hosts)
    with pytest.raises(PolicyError, match=r"smtp\.corp\.example:25 is not allowed"):
        apply_policy(Settings(workdir=tmp_path, allow_hosts=["smtp.corp.example:25"]), hosts)
    with pytest.raises(PolicyError, match=r"smtp\.corp\.example is not allowed"):  # HTTP: not TCP
        apply_policy(Settings(workdir=tmp_path, allow_hosts=["smtp.corp.example"]), hosts)


def test_two_hosts_on_one_port_are_refused_for_a_session_not_in_a_policy(
    home: Path, tmp_path: Path
) -> None:
    both = policy_of('allowed_hosts = ["smtp.a.example:587", "smtp.b.example:587"]\n')
    one = load({"allow_hosts": ["smtp.a.example:587"]}, policy=both)  # either may be chosen
    assert one.sandbox_config().allow_hosts == ("smtp.a.example:587",)
    two = load({"allow_hosts": ["smtp.a.example:587", "smtp.b.example:587"]}, policy=Policy())
    with pytest.raises(ConfigError, match="share port 587"):
        two.sandbox_config()


def test_model_download_presets(tmp_path: Path) -> None:
    empty = tmp_path / "root"
    empty.mkdir()
    whisper = set(expand_hosts(["whisper"], None, empty))
    assert {"pypi.org", "files.pythonhosted.org", "openaipublic.azureedge.net"} <= whisper
    assert {"huggingface.co", "cdn-lfs.hf.co", "cas-bridge.xethub.hf.co"} <= whisper
    assert set(expand_hosts(["huggingface"], None, empty)) < whisper
    table = {"whisper": ("mirror.corp.example",)}  # the admin's own table wins
    assert expand_hosts(["whisper"], table, empty) == ("mirror.corp.example",)
