"""The web UI in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium; ``make setup`` installs them), against a real ``oi serve`` with the fake
vLLM and the real Docker engine. Screenshots go to ``test-artifacts/web/`` (git-ignored)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_vllm import FakeVllm
from tests.sandbox_fixtures import docker_client
from tests.server_fixtures import OiServer, scripted_model, start_server, stop_server

__all__ = ["docker_client"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="module")
def model() -> Iterator[FakeVllm]:
    with FakeVllm() as fake:
        fake.script(*[scripted_model] * 200)
        yield fake


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model: FakeVllm) -> Iterator[OiServer]:
    running = start_server(
        tmp_path_factory.mktemp("web"), model.base_url, args=("--no-pool", "--timeout", "90")
    )
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are missing: run 'make setup' (as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: object, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    path.unlink(missing_ok=True)  # a stale one from an earlier run proves nothing
    assert driver.save_screenshot(str(path)), f"no screenshot saved at {path}"  # type: ignore[attr-defined]
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, (
        f"{path} is not a screenshot ({len(data)} bytes)"
    )
    return path
