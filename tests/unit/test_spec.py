import json
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.languages import Language
from orchestrator.loading import sandbox_config
from orchestrator.policy import Policy
from orchestrator.sandbox.gc import is_orphan
from orchestrator.sandbox.grant import SANDBOX_GID, SANDBOX_UID
from orchestrator.sandbox.seccomp import docker_security_opt, gvisor_profile, seccomp_profile
from orchestrator.sandbox.spec import (
    BASE_ENVIRONMENT,
    CA_IN_SANDBOX,
    GVISOR_PATH,
    Identity,
    NetworkAttachment,
    build_spec,
    check_workdir,
    resolve_identity,
    sandbox_environment,
)
from orchestrator.settings import Settings

IDENTITY = Identity(uid=1000, gid=1000, owner_uid=1000, pid=4242, pid_start="777")


def make_spec(tmp_path: Path, attachment: NetworkAttachment | None = None, **overrides: object):
    settings = sandbox_config(Settings(workdir=tmp_path, **overrides), Policy())  # type: ignore[arg-type]
    if attachment is None and settings.network != "none":
        attachment = NetworkAttachment("bridge")
    return build_spec(
        Language.PYTHON,
        "oi-sandbox-python:abc",
        settings,
        IDENTITY,
        "sess-1",
        {"OI_API_KEY": "secret", "PATH": "/usr/bin", "WANTED": "yes"},
        created=1.5,
        attachment=attachment,
    )


def test_defaults_follow_security_md(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    hc = spec.host_config
    assert hc["network_mode"] == "none"
    assert hc["cap_drop"] == ["ALL"]
    assert hc["security_opt"] == ["no-new-privileges", docker_security_opt()]
    assert hc["privileged"] is False
    assert hc["read_only"] is True
    assert hc["tmpfs"] == {"/tmp": f"rw,nosuid,nodev,size={256 * 1024**2}"}
    assert hc["pids_limit"] == 256
    assert hc["mem_limit"] == hc["memswap_limit"] == 1024**3
    assert hc["nano_cpus"] == 1_000_000_000
    assert {u["Name"] for u in hc["ulimits"]} == {"nofile", "fsize"}
    assert hc["init"] is True
    assert hc["log_config"]["Type"] == "none"
    assert hc["binds"] == {str(tmp_path): {"bind": "/workspace", "mode": "rw"}}
    assert "runtime" not in hc
    assert spec.user == "1000:1000"
    assert spec.working_dir == "/"  # only the program's process enters /workspace
    kwargs = spec.create_kwargs()
    assert kwargs["stdin_open"] and not kwargs["detach"] and not kwargs["tty"]
    assert kwargs["use_config_proxy"] is False
    assert kwargs["network_disabled"] is True


def test_no_host_environment_leaks(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    assert spec.environment == dict(BASE_ENVIRONMENT)
    assert "OI_API_KEY" not in spec.environment


@pytest.mark.parametrize(
    ("isolation", "host_env", "path"),
    [
        ("runc", {}, None),  # the image's own PATH
        ("gvisor", {}, GVISOR_PATH),  # busybox ls/stat first
        ("gvisor", {"PATH": "/mine"}, "/mine"),  # an allowlisted PATH wins
    ],
)
def test_path_under_gvisor(
    tmp_path: Path, isolation: str, host_env: dict[str, str], path: str | None
) -> None:
    settings = sandbox_config(
        Settings(workdir=tmp_path, isolation=isolation, env=list(host_env)), Policy()
    )
    spec = build_spec(Language.SHELL, "img", settings, IDENTITY, "s", host_env)
    assert spec.environment.get("PATH") == path


def test_env_allowlist_passes_only_named_variables() -> None:
    env = sandbox_environment(["WANTED", "MISSING"], {"WANTED": "yes", "OTHER": "no"})
    assert env["WANTED"] == "yes"
    assert "OTHER" not in env and "MISSING" not in env


def test_labels_for_reaping(tmp_path: Path) -> None:
    labels = make_spec(tmp_path).labels
    assert labels == {
        "oi.managed": "1",
        "oi.session": "sess-1",
        "oi.owner": "1000",
        "oi.pid": "4242",
        "oi.pid_start": "777",
        "oi.created": "1.500",
        "oi.language": "python",
    }


@pytest.mark.parametrize(
    ("overrides", "key", "value"),
    [
        ({"memory": "512m"}, "mem_limit", 512 * 1024**2),
        ({"memory": "512m"}, "memswap_limit", 512 * 1024**2),
        ({"cpus": 0.5}, "nano_cpus", 500_000_000),
        ({"pids": 64}, "pids_limit", 64),
        ({"pids": 64, "isolation": "gvisor"}, "pids_limit", 64 * 12 + 128),
        ({"isolation": "gvisor"}, "runtime", "runsc"),
        ({"isolation": "gvisor", "network": "open"}, "runtime", "runsc-host"),
        ({"tmp_size": "10m"}, "tmpfs", {"/tmp": f"rw,nosuid,nodev,size={10 * 1024**2}"}),
    ],
)
def test_limits_map_to_host_config(
    tmp_path: Path, overrides: dict, key: str, value: object
) -> None:
    assert make_spec(tmp_path, **overrides).host_config[key] == value


@pytest.mark.parametrize("network", ["none", "open"])
@pytest.mark.parametrize("isolation", ["runc", "gvisor"])
def test_every_sandbox_gets_oi_seccomp_profile(
    tmp_path: Path, isolation: str, network: str
) -> None:
    # runc applies the whole profile; runsc (registered with --oci-seccomp, which the runner
    # checks) only the setuid/setgid denials (see build_spec).
    security_opt = make_spec(tmp_path, isolation=isolation, network=network).host_config[
        "security_opt"
    ]
    assert security_opt[0] == "no-new-privileges"
    assert len(security_opt) == 2 and security_opt[1].startswith("seccomp={")
    expected = seccomp_profile() if isolation == "runc" else gvisor_profile()
    assert json.loads(security_opt[1].removeprefix("seccomp=")) == expected


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("isolation", ["runc", "gvisor"])
def test_spec_runs_the_bootstrap_under_every_runtime(
    tmp_path: Path, language: Language, isolation: str
) -> None:
    from orchestrator.sandbox import bootstrap

    settings = sandbox_config(Settings(workdir=tmp_path, isolation=isolation), Policy())
    spec = build_spec(language, "img", settings, IDENTITY, "s", {})
    assert spec.command == bootstrap.bootstrap_command(language)


@pytest.mark.parametrize(
    ("isolation", "nproc"),
    [("runc", None), ("gvisor", 64)],  # on the host, nproc would count every process of the uid
)
def test_pids_are_enforced_inside_gvisor_as_nproc(
    tmp_path: Path, isolation: str, nproc: int | None
) -> None:
    ulimits = make_spec(tmp_path, pids=64, isolation=isolation).host_config["ulimits"]
    found = [u for u in ulimits if u["Name"] == "nproc"]
    assert found == ([] if nproc is None else [{"Name": "nproc", "Soft": nproc, "Hard": nproc}])


@pytest.mark.parametrize(
    ("uid", "gid", "wd_uid", "wd_gid", "expected", "grant"),
    [
        (1000, 1000, 1000, 1000, (1000, 1000), False),
        (1000, 100, 0, 0, (1000, 100), False),  # a normal user keeps their own ids
        (0, 0, 1001, 1002, (1001, 1002), False),  # root: the workdir owner's ids
        (0, 0, 0, 0, (SANDBOX_UID, SANDBOX_GID), True),  # never uid 0: the dedicated ids
    ],
)
def test_resolve_identity(uid, gid, wd_uid, wd_gid, expected, grant) -> None:
    ident = resolve_identity(
        uid=uid, gid=gid, workdir_uid=wd_uid, workdir_gid=wd_gid, pid=1, pid_start="1"
    )
    assert (ident.uid, ident.gid) == expected
    assert ident.owner_uid == uid
    assert ident.grant == grant
    assert ident.uid != 0


@pytest.mark.parametrize(
    "relative",
    ["", ".ssh", ".aws/creds", ".config", ".docker"],
)
def test_check_workdir_refuses_home_and_secrets(tmp_path: Path, relative: str) -> None:
    home = tmp_path / "home"
    target = home / relative if relative else home
    target.mkdir(parents=True)
    with pytest.raises(ConfigError):
        check_workdir(target, home=home)


def test_check_workdir_refuses_root_and_ancestors_of_home(tmp_path: Path) -> None:
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    with pytest.raises(ConfigError):
        check_workdir(Path("/"), home=home)
    with pytest.raises(ConfigError):
        check_workdir(tmp_path / "home", home=home)
    with pytest.raises(ConfigError):
        check_workdir(Path("/var/run"), home=home)


def test_check_workdir_accepts_a_project_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    project = home / "src" / "project"
    project.mkdir(parents=True)
    check_workdir(project, home=home)
    with pytest.raises(ConfigError):
        check_workdir(project / "missing", home=home)


@pytest.mark.parametrize(
    ("labels", "alive", "orphan"),
    [
        ({"oi.pid": "10", "oi.pid_start": "5"}, {10: "5"}, False),
        ({"oi.pid": "10", "oi.pid_start": "5"}, {}, True),  # process gone
        ({"oi.pid": "10", "oi.pid_start": "5"}, {10: "9"}, True),  # pid reused
        ({"oi.pid": "x"}, {}, True),
        ({}, {}, True),
    ],
)
def test_is_orphan(labels: dict, alive: dict, orphan: bool) -> None:
    assert is_orphan(labels, alive.get) is orphan


def test_open_tier_joins_the_bridge(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, network="open")
    assert spec.host_config["network_mode"] == "bridge"
    assert spec.create_kwargs()["network_disabled"] is False
    assert "HTTPS_PROXY" not in spec.environment


def test_allowlist_tier_uses_the_internal_network_and_proxy(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("certs")
    attachment = NetworkAttachment("oi-allow-abc", "http://oi-proxy:3128", ca)
    spec = make_spec(tmp_path, attachment, network="allowlist")
    assert spec.host_config["network_mode"] == "oi-allow-abc"
    env = spec.environment
    assert env["HTTPS_PROXY"] == env["http_proxy"] == "http://oi-proxy:3128"
    assert env["PIP_CERT"] == CA_IN_SANDBOX and env["NODE_EXTRA_CA_CERTS"] == CA_IN_SANDBOX
    assert spec.host_config["binds"][str(ca)] == {"bind": CA_IN_SANDBOX, "mode": "ro"}


def test_network_tier_without_attachment_fails_closed(tmp_path: Path) -> None:
    settings = sandbox_config(Settings(workdir=tmp_path, network="allowlist"), Policy())
    with pytest.raises(ConfigError):
        build_spec(Language.SHELL, "img", settings, IDENTITY, "s", {})


def test_none_tier_ignores_an_attachment(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, NetworkAttachment("bridge", "http://p:1"), network="none")
    assert spec.host_config["network_mode"] == "none"
    assert "HTTP_PROXY" not in spec.environment


@pytest.mark.parametrize(
    ("text", "container", "read_only"),
    [
        ("{d}", "/mnt/data", True),
        ("{d}:/mnt/in", "/mnt/in", True),
        ("{d}:/mnt/out:rw", "/mnt/out", False),
        ("{d}:rw", "/mnt/data", False),
        ("{d}/file.csv", "/mnt/file.csv", True),
    ],
)
def test_parse_mount(tmp_path: Path, text: str, container: str, read_only: bool) -> None:
    from orchestrator.sandbox.spec import parse_mount

    data = tmp_path / "data"
    data.mkdir()
    (data / "file.csv").write_text("x")
    mount = parse_mount(text.format(d=data), home=tmp_path / "home")
    assert mount.container == container and mount.read_only is read_only


@pytest.mark.parametrize(
    "text",
    [
        "/",
        "{home}",
        "{home}/.ssh",
        "/var/run/docker.sock",
        "{d}:/workspace",
        "{d}:/tmp/x",
        "{d}:rel",
        "{d}:/etc",
        "{d}/missing",
        "{d}:/a:/b",
    ],
)
def test_parse_mount_refuses(tmp_path: Path, text: str) -> None:
    from orchestrator.sandbox.spec import parse_mount

    data = tmp_path / "data"
    data.mkdir()
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    with pytest.raises(ConfigError):
        parse_mount(text.format(d=data, home=home), home=home)


def test_extra_mounts_are_read_only_by_default(tmp_path: Path) -> None:
    from orchestrator.sandbox.spec import ExtraMount

    settings = sandbox_config(Settings(workdir=tmp_path), Policy())
    spec = build_spec(
        Language.SHELL,
        "img",
        settings,
        IDENTITY,
        "s",
        {},
        extra_mounts=(ExtraMount(Path("/srv/data"), "/mnt/data", True),),
    )
    assert spec.host_config["binds"]["/srv/data"] == {"bind": "/mnt/data", "mode": "ro"}


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_FUNC_ls%%", "GCONV_PATH"])
def test_start_hooks_are_never_passed_in(tmp_path: Path, name: str) -> None:
    """They would act in the pre-started wrappers before any block is approved."""
    with pytest.raises(ConfigError, match=f"--env {name}"):
        sandbox_environment([name], {name: "/workspace/evil.so"})
