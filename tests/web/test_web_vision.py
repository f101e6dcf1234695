"""The web UI and API of a server started with ``--vision --network open``: an uploaded image
attached to a message reaches the (fake) vision model, names that leave the workdir, links and
non-images are refused, and the open network is marked in red on a block's card."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from selenium.webdriver.common.by import By

from tests.fake_vllm import FakeVllm, image_parts
from tests.server_fixtures import RUN, SAY, OiServer, scripted_model, start_server, stop_server
from tests.web.conftest import screenshot
from tests.web.test_web_ui import cards, new_session, send, sign_in, text_of, wait, wait_status

Driver = Any


@pytest.fixture(scope="module")
def vision_model() -> Iterator[FakeVllm]:
    with FakeVllm(vision=True) as fake:
        fake.script(*[scripted_model] * 100)
        yield fake


@pytest.fixture(scope="module")
def vision_server(
    tmp_path_factory: pytest.TempPathFactory, vision_model: FakeVllm
) -> Iterator[OiServer]:
    args = ("--no-pool", "--vision", "--network", "open")
    running = start_server(tmp_path_factory.mktemp("web-vision"), vision_model.base_url, args=args)
    yield running
    stop_server(running)


def png_bytes(colour: str = "teal") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, "PNG")
    return out.getvalue()


def image_urls(request: dict[str, Any]) -> list[str]:
    return [str(part["image_url"]["url"]) for part in image_parts(request)]


def newest_message_images(request: dict[str, Any]) -> list[dict[str, Any]]:
    return image_parts({"messages": request["messages"][-1:]})


def test_uploaded_images_are_attached_and_sent_to_the_vision_model(
    browser: Driver, vision_server: OiServer, vision_model: FakeVllm, tmp_path: Path
) -> None:
    sign_in(browser, vision_server)
    new_session(browser)
    chart, photo = tmp_path / "chart.png", tmp_path / "photo.jpg"
    chart.write_bytes(png_bytes())
    Image.new("RGB", (40, 30), "orange").save(photo, "JPEG")
    picker = browser.find_element(By.ID, "file-input")
    picker.send_keys(str(chart))  # attached from the upload's own offer
    offer = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#upload-status .attach-offer"))
    offer.click()
    wait(browser, lambda d: "chart.png" in text_of(d, "#attachments .chip"))
    picker.send_keys(str(photo))  # ... and from the files list
    listed = "//ul[@id='file-list']/li[span[text()='photo.jpg']]/button[text()='attach']"
    wait(browser, lambda d: d.find_element(By.XPATH, listed)).click()
    wait(browser, lambda d: "photo.jpg" in text_of(d, "#attachments .chip"))
    screenshot(browser, "10-images-attached")
    before = len(vision_model.chat_requests)
    send(browser, "What does this chart show?")
    wait(browser, lambda d: "Hello" in text_of(d, ".msg.model"))
    sent = vision_model.chat_requests[before:]
    urls = [url for request in sent for url in image_urls(request)]
    assert len(urls) == 2, sent
    assert re.fullmatch(r"data:image/png;base64,[A-Za-z0-9+/=]+", urls[0]), urls[0][:80]
    assert urls[1].startswith("data:image/jpeg;base64,"), urls[1][:80]
    # the attachments went with the message they were attached to, and only once
    assert "with images: chart.png, photo.jpg" in text_of(browser, ".msg.user")
    assert not browser.find_element(By.ID, "attachments").is_displayed()
    chips = "return document.querySelectorAll('#attachments .chip').length"
    assert browser.execute_script(chips) == 0
    assert not browser.find_element(By.ID, "vision-note").is_displayed()
    send(browser, "SAY and now without them")
    wait(browser, lambda d: "and now without them" in text_of(d, ".msg.model"))
    assert not newest_message_images(vision_model.chat_requests[-1])
    screenshot(browser, "11-images-sent")


def test_an_open_network_is_marked_in_red(browser: Driver, vision_server: OiServer) -> None:
    sign_in(browser, vision_server)
    new_session(browser)
    send(browser, f"{RUN}shell\necho never-run")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card .actions button"))
    marker = cards(browser)[-1].find_element(By.CSS_SELECTOR, ".card-head .net-open")
    assert "network OPEN" in marker.text
    red, green, blue = map(int, re.findall(r"\d+", marker.value_of_css_property("color"))[:3])
    assert red >= 150 and green <= 90 and blue <= 90, (red, green, blue)
    screenshot(browser, "12-network-open")
    browser.find_element(By.XPATH, "//button[starts-with(text(), 'Deny')]").click()
    wait_status(browser, "denied")


def upload(server: OiServer, session_id: str, name: str, data: bytes) -> None:
    reply = server.call(
        "PUT", f"/api/sessions/{session_id}/files", params={"path": name}, data=data
    )
    assert reply.status_code == 201, reply.text


def post_message(server: OiServer, session_id: str, images: list[str]) -> Any:
    body = {"text": "look at these", "images": images}
    return server.call("POST", f"/api/sessions/{session_id}/messages", json=body)


@pytest.mark.parametrize(
    ("name", "status", "words"),
    [
        ("../ok.png", 400, "'..'"),
        ("/etc/passwd", 400, "relative"),
        ("link.png", 404, "link"),
        ("notes.txt", 400, "not a .png"),
        ("fake.png", 400, "not a PNG, JPEG or WebP image"),
        ("missing.png", 404, "no file"),
        ("hard.png", 404, "hard links"),  # a second name of a file outside the workdir
    ],
)
def test_message_images_must_be_image_files_inside_the_workdir(
    vision_server: OiServer,
    vision_model: FakeVllm,
    tmp_path: Path,
    name: str,
    status: int,
    words: str,
) -> None:
    session_id = vision_server.new_session()
    upload(vision_server, session_id, "ok.png", png_bytes())
    upload(vision_server, session_id, "notes.txt", b"just text\n")
    upload(vision_server, session_id, "fake.png", b"<svg>not a png</svg>\n")
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes("red"))
    workdir = vision_server.workspaces / "alice" / "work" / session_id
    (workdir / "link.png").symlink_to(outside)
    os.link(outside, workdir / "hard.png")
    before = len(vision_model.chat_requests)

    # a good image with a bad one: refused whole, and the good one is not kept for later
    reply = post_message(vision_server, session_id, ["ok.png", name])
    assert reply.status_code == status, reply.text
    detail = reply.json()["detail"]
    assert isinstance(detail, str) and words in detail, detail
    assert len(vision_model.chat_requests) == before  # nothing reached the model
    events = list(vision_server.events(session_id, SAY + "plain"))
    assert events[-1]["event"] == "end", events[-1]
    assert not newest_message_images(vision_model.chat_requests[-1])
