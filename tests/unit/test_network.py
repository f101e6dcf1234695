import pytest

from orchestrator.errors import ConfigError
from orchestrator.sandbox.hosts import normalize_host
from orchestrator.sandbox.network import EgressPolicy, squid_config


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("Example.ORG", "example.org"),
        ("example.org.", "example.org"),
        (" files.example.org ", "files.example.org"),
        ("https://example.org/simple/", "example.org"),
        ("a-b.example", "a-b.example"),
        ("oi-test-allowed-1a2b", "oi-test-allowed-1a2b"),
    ],
)
def test_normalize_host(text: str, host: str) -> None:
    assert normalize_host(text) == host


@pytest.mark.parametrize(
    "text",
    ["10.0.0.1", "169.254.169.254", "[::1]", "::1", "exa mple.org", "-bad.org", "", "a" * 300],
)
def test_normalize_host_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        normalize_host(text)


def rules(config: str) -> list[str]:
    return [line for line in config.splitlines() if line.startswith("http_access")]


def test_squid_config_denies_by_default_in_order() -> None:
    config = squid_config(EgressPolicy(("a.example", "b.example")))
    assert "acl allowed_hosts dstdomain -n a.example b.example" in config
    assert rules(config) == [
        "http_access deny ip_literal",
        "http_access deny !allowed_hosts",
        "http_access deny CONNECT !tls_port",
        "http_access deny !CONNECT !http_port",
        "http_access deny special",
        "http_access allow allowed_hosts",
        "http_access deny all",
    ]
    assert "169.254.0.0/16" in config and "10.0.0.0/8" in config and "127.0.0.0/8" in config


def test_squid_config_with_permitted_ranges() -> None:
    config = squid_config(EgressPolicy(("a.example",), ("172.30.0.0/16",)))
    assert "acl permitted_ranges dst 172.30.0.0/16" in config
    assert "http_access deny special !permitted_ranges" in rules(config)


def test_empty_allowlist_denies_everything() -> None:
    assert rules(squid_config(EgressPolicy(())))[1] == "http_access deny all"


def test_policy_key_changes_with_hosts() -> None:
    assert EgressPolicy(("a.example",)).key != EgressPolicy(("b.example",)).key
    assert EgressPolicy(("a.example",)).key == EgressPolicy(("a.example",)).key


def test_bad_range_is_refused() -> None:
    with pytest.raises(ConfigError):
        EgressPolicy(("a.example",), ("not-a-cidr",))
