"""The web UI of oi serve, in headless Chromium: sign in, approve / edit / deny, live output,
Stop, images inline, CSV upload and preview, and model or block output that tries HTML."""

from __future__ import annotations

import base64
import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

import tests.fake_vllm as fake_module
from tests.server_fixtures import RUN, SAY, SLOW, OiServer, wait_for
from tests.web.conftest import ARTIFACTS, screenshot

Driver = Any


def wait(driver: Driver, check: Any, timeout: float = 40) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(check)


def text_of(driver: Driver, css: str) -> str:
    return "\n".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))


def open_ui(driver: Driver, server: OiServer) -> None:
    driver.get(server.url + "/healthz")  # same origin, no UI script that could sign in again
    driver.execute_script("sessionStorage.clear();")
    driver.get(server.url + "/")


def sign_in(driver: Driver, server: OiServer, user: str = "alice") -> None:
    open_ui(driver, server)
    driver.find_element(By.ID, "token").send_keys(server.tokens[user], Keys.ENTER)
    wait(driver, lambda d: d.find_element(By.ID, "app").is_displayed())


def new_session(driver: Driver) -> None:
    driver.find_element(By.ID, "new-session").click()
    wait(driver, lambda d: d.find_element(By.ID, "message").is_enabled())
    wait(driver, lambda d: d.find_element(By.ID, "send").is_enabled())


def send(driver: Driver, text: str) -> None:
    box = driver.find_element(By.ID, "message")
    driver.execute_script("arguments[0].value = arguments[1];", box, text)
    box.send_keys(Keys.ENTER)


def press(driver: Driver, key: str) -> None:
    driver.find_element(By.TAG_NAME, "body").send_keys(key)


def cards(driver: Driver) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, ".card")


def wait_status(driver: Driver, words: str, card: int = -1) -> str:
    def status(d: Driver) -> str | None:
        found = d.find_elements(By.CSS_SELECTOR, ".card .status")
        return found[card].text if found and words in found[card].text else None

    return str(wait(driver, status))


def only_this_server_was_asked(driver: Driver, server: OiServer) -> None:
    """Every request the page made (scripts, styles, images, API calls) went to the server."""
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert any(name.startswith(server.url + "/ui/app.js") for name in names), names
    assert [n for n in names if not n.startswith(server.url + "/")] == [], names


def pwned(driver: Driver) -> Any:
    return driver.execute_script("return window.pwned;")


def test_sign_in_and_a_wrong_token_is_refused(browser: Driver, server: OiServer) -> None:
    open_ui(browser, server)
    browser.find_element(By.ID, "token").send_keys("oi_not-a-token", Keys.ENTER)
    wait(browser, lambda d: "refused" in d.find_element(By.ID, "signin-error").text)
    assert not browser.find_element(By.ID, "app").is_displayed()
    assert "oi_not" not in browser.current_url
    screenshot(browser, "01-sign-in-refused")
    sign_in(browser, server)
    assert browser.find_element(By.ID, "who").text.startswith("alice")
    assert server.tokens["alice"] not in browser.current_url
    assert browser.execute_script("return document.cookie") == ""


SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="80" height="40" onload="top.pwned=4">'
    '<script>top.pwned=5</script><rect width="80" height="40" fill="teal"/></svg>'
)
PLOT = f"""import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.plot([1, 3, 2, 4])
plt.title("revenue")
plt.savefig("plot.png")
open("evil.svg", "w").write({SVG!r})
print("made the chart")"""


def test_a_block_is_approved_its_output_and_images_appear(
    browser: Driver, server: OiServer
) -> None:
    sign_in(browser, server)
    new_session(browser)
    send(browser, f"{RUN}python\n{PLOT}")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card .actions button"))
    head = text_of(browser, ".card .card-head")
    assert "no network" in head and "memory" in head and "workdir" in head
    assert "import matplotlib" in text_of(browser, ".card pre")
    screenshot(browser, "02-block-awaits-approval")
    press(browser, "a")  # the keyboard shortcut approves
    status = wait_status(browser, "exit code")
    assert "exit code 0" in status
    assert "made the chart" in text_of(browser, ".card .output")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".figure img")) == 2)
    sizes = browser.execute_script(
        "return [...document.querySelectorAll('.figure img')].map(i => [i.alt, i.naturalWidth])"
    )
    wait(browser, lambda d: all(w > 0 for _, w in d.execute_script(
        "return [...document.querySelectorAll('.figure img')].map(i => [i.alt, i.naturalWidth])")))  # fmt: skip
    assert {alt for alt, _ in sizes} == {"plot.png", "evil.svg"}
    time.sleep(0.3)
    assert pwned(browser) is None  # the SVG's script and onload never ran
    wait(browser, lambda d: "Done:" in text_of(d, ".msg.model"))
    screenshot(browser, "03-conversation-output-images")
    only_this_server_was_asked(browser, server)


def test_edit_then_approve_runs_the_edited_code(browser: Driver, server: OiServer) -> None:
    sign_in(browser, server)
    new_session(browser)
    send(browser, f"{RUN}python\nprint('original')")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card .actions button"))
    press(browser, "e")
    area = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".card textarea"))
    browser.execute_script("arguments[0].value = \"print('edited')\";", area)
    screenshot(browser, "04-edit")
    browser.find_element(By.XPATH, "//button[text()='Show edited code']").click()
    wait(browser, lambda d: len(cards(d)) == 2)  # the edited code is shown again
    assert "print('edited')" in cards(browser)[1].find_element(By.TAG_NAME, "pre").text
    assert "edited" in cards(browser)[0].find_element(By.CSS_SELECTOR, ".status").text
    wait(browser, lambda d: cards(d)[1].find_elements(By.CSS_SELECTOR, ".actions button"))
    cards(browser)[1].find_element(By.XPATH, ".//button[starts-with(text(), 'Approve')]").click()
    assert "exit code 0" in wait_status(browser, "exit code")
    outputs = text_of(browser, ".card .output")
    assert "edited" in outputs and "original" not in outputs


def test_deny_runs_nothing(browser: Driver, server: OiServer) -> None:
    sign_in(browser, server)
    new_session(browser)
    send(browser, f"{RUN}shell\necho should-not-run")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card .actions button"))
    browser.find_element(By.XPATH, "//button[starts-with(text(), 'Deny')]").click()
    assert "denied" in wait_status(browser, "denied")
    wait(browser, lambda d: not d.find_element(By.ID, "send").get_attribute("disabled"))
    assert not browser.find_elements(By.CSS_SELECTOR, ".card .output")


def drop_file(driver: Driver, name: str, content: str) -> None:
    driver.execute_script(
        """const dt = new DataTransfer();
        dt.items.add(new File([arguments[1]], arguments[0], {type: 'text/csv'}));
        const zone = document.getElementById('dropzone');
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));""",
        name,
        content,
    )


def test_upload_a_csv_see_it_listed_and_a_preview(browser: Driver, server: OiServer) -> None:
    sign_in(browser, server)
    new_session(browser)
    drop_file(browser, "sales.csv", "month,revenue\n2026-01,100\n2026-02,250\n2026-03,175\n")
    wait(browser, lambda d: "sales.csv" in text_of(d, "#file-list"))
    send(browser, f"{RUN}shell\nhead -3 sales.csv > top.csv && wc -l sales.csv")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card .actions button"))
    press(browser, "a")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "table.csv td"))
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "table.csv td")]
    assert cells == ["2026-01", "100", "2026-02", "250"]
    assert "top.csv" in text_of(browser, "#file-list")
    screenshot(browser, "05-files-csv")


HOSTILE = (
    'Look: <script>window.pwned=1</script> <img src=x onerror="window.pwned=2"> '
    "**bold** and a bidi \u202etrick\u202c here."
)


def test_model_text_and_names_that_try_html_are_shown_as_text(
    browser: Driver, server: OiServer
) -> None:
    sign_in(browser, server)
    new_session(browser)
    drop_file(browser, '<img src=x onerror="window.pwned=3">.csv', "a,b\n")
    wait(browser, lambda d: "<img src=x" in text_of(d, "#file-list"))
    send(browser, SAY + HOSTILE)
    wait(browser, lambda d: "here." in text_of(d, ".msg.model"))
    shown = text_of(browser, ".msg.model")
    assert "<script>window.pwned=1</script>" in shown and "onerror" in shown
    assert "\\u202e" in shown and "\u202e" not in shown  # the bidi override made visible
    assert browser.find_elements(By.CSS_SELECTOR, ".msg.model strong")  # markdown still works
    assert not browser.find_elements(By.CSS_SELECTOR, ".conversation script, .conversation img")
    assert not browser.find_elements(By.CSS_SELECTOR, "#file-list img")
    send(browser, f"{RUN}shell\nprintf '\\033]0;pwned\\007<b>out</b>\\033[2J\\n'")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card .actions button"))
    press(browser, "a")
    wait_status(browser, "exit code")
    assert "<b>out</b>" in text_of(browser, ".card .output")
    assert "\x1b" not in text_of(browser, ".card .output")
    assert browser.title == "oi"
    time.sleep(0.3)
    assert pwned(browser) is None
    screenshot(browser, "06-hostile-text")


def test_stop_kills_the_block_and_removes_its_container(
    browser: Driver, server: OiServer, docker_client: Any
) -> None:
    sign_in(browser, server)
    new_session(browser)
    send(browser, f"{RUN}shell\necho started; sleep 60")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card .actions button"))
    press(browser, "a")
    wait(browser, lambda d: "started" in text_of(d, ".card .output"))
    assert server.containers(docker_client)
    screenshot(browser, "07-running")
    started = time.monotonic()
    browser.find_element(By.XPATH, "//button[starts-with(text(), 'Stop')]").click()
    assert wait_for(lambda: not server.containers(docker_client), timeout=15)
    assert time.monotonic() - started < 10
    wait(browser, lambda d: "stopped by you" in text_of(d, ".card .status"))
    screenshot(browser, "08-stopped")


def test_phone_width_is_usable(browser: Driver, server: OiServer) -> None:
    browser.set_window_size(390, 844)
    try:
        sign_in(browser, server)
        new_session(browser)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 400, width  # nothing wider than the phone
        assert browser.find_element(By.ID, "message").is_displayed()
        screenshot(browser, "09-phone")
    finally:
        browser.set_window_size(1280, 900)


def test_measure_first_paint_and_token_to_screen(
    browser: Driver, server: OiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Figures for the report (no timed assertion): first contentful paint of the UI, and the
    time from the fake model writing a token to that token on screen."""
    sent: dict[str, float] = {}
    original = fake_module._Handler._write_event

    def recording(handler: Any, event: Any) -> None:
        original(handler, event)
        if isinstance(event, dict) and event.get("choices"):
            piece = event["choices"][0]["delta"].get("content")
            if piece:
                sent[piece] = time.time() * 1000

    monkeypatch.setattr(fake_module._Handler, "_write_event", recording)
    paints = []
    for _ in range(3):
        open_ui(browser, server)
        paints.append(wait(browser, lambda d: d.execute_script(
            "const e = performance.getEntriesByName('first-contentful-paint')[0];"
            "return e ? Math.round(e.startTime) : null"), timeout=10))  # fmt: skip
    sign_in(browser, server)
    new_session(browser)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    send(browser, SLOW + letters)
    wait(browser, lambda d: letters in text_of(d, ".msg.model"))
    shown = browser.execute_script("return window.oiPerf")
    delays = [row["shown"] - sent[row["text"]] for row in shown if row["text"] in sent]
    figures = {
        "first_contentful_paint_ms": paints,
        "token_to_screen_ms": {
            "n": len(delays),
            "median": round(statistics.median(delays), 1),
            "p90": round(sorted(delays)[int(len(delays) * 0.9) - 1], 1),
            "max": round(max(delays), 1),
        },
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "perf.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    assert len(delays) >= len(letters) - 2


def test_the_ui_hides_exactly_what_the_terminal_hides(browser: Driver, server: OiServer) -> None:
    """app.js mirrors safe_text.py: the same code points are shown as escapes."""
    from orchestrator.safe_text import _HIDDEN

    ranges = [(0, 0x3200), (0xD7F0, 0xE010), (0xFE00, 0x10000), (0x110B0, 0x110D0),
              (0x13420, 0x13450), (0x1BC90, 0x1BCB0), (0x1D160, 0x1D190), (0xE0000, 0xE0200)]  # fmt: skip
    points = [c for start, end in ranges for c in range(start, end)]
    open_ui(browser, server)
    in_browser = browser.execute_script(
        "const re = new RegExp(window.oiHidden.source, 'u');"
        "return arguments[0].filter(c => re.test(String.fromCodePoint(c)));",
        points,
    )
    in_python = [c for c in points if c not in (0x0A, 0x09) and _HIDDEN.fullmatch(chr(c))]
    assert set(in_browser) == set(in_python)
    assert 0x202E in in_browser and 0x1B in in_browser and 0x41 not in in_browser


def test_the_ui_is_served_under_its_content_security_policy(server: OiServer) -> None:
    from orchestrator.server.app import UI_CSP

    reply = requests.get(server.url + "/", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["Content-Security-Policy"] == UI_CSP
    assert "default-src 'none'" in UI_CSP and "connect-src 'self'" in UI_CSP


def session_ids(driver: Driver) -> list[str]:
    """The list's ids, top first (read in one go: the list is redrawn as sessions change)."""
    script = "return [...document.querySelectorAll('#sessions li')].map(li => li.dataset.id)"
    return list(driver.execute_script(script))


def current_session(driver: Driver) -> str:
    script = "const li = document.querySelector('#sessions li.current'); return li && li.dataset.id"
    return str(wait(driver, lambda d: d.execute_script(script)))


def click_steady(driver: Driver, css: str) -> None:
    """Click what ``css`` finds, again if the list was redrawn under the click."""

    def attempt(d: Driver) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, css).click()
        except StaleElementReferenceException:
            return False
        return True

    wait(driver, attempt)


def test_sessions_newest_first_open_an_older_one_and_delete_it(
    browser: Driver, server: OiServer
) -> None:
    sign_in(browser, server)
    new_session(browser)
    older = current_session(browser)
    send(browser, SAY + "history of the older session")
    wait(browser, lambda d: "history of the older session" in text_of(d, ".msg.model"))
    wait(browser, lambda d: not d.find_element(By.ID, "send").get_attribute("disabled"))
    new_session(browser)
    newer = wait(browser, lambda d: (cur := current_session(d)) != older and cur)
    wait(browser, lambda d: session_ids(d)[:1] == [newer])  # the newest on top
    assert session_ids(browser).index(newer) < session_ids(browser).index(older)
    assert not text_of(browser, ".msg")  # the new one is empty

    click_steady(browser, f'#sessions li[data-id="{older}"]')
    wait(browser, lambda d: current_session(d) == older)
    wait(browser, lambda d: "history of the older session" in text_of(d, ".msg.model"))
    assert SAY + "history of the older session" in text_of(browser, ".msg.user")
    screenshot(browser, "13-older-session-opened")

    click_steady(browser, f'#sessions li[data-id="{older}"] .delete')
    alert = wait(browser, lambda d: d.switch_to.alert)
    assert "Delete this session" in alert.text
    alert.accept()
    wait(browser, lambda d: older not in session_ids(d))
    assert newer in session_ids(browser)
    assert older not in [row["id"] for row in server.call("GET", "/api/sessions").json()]
    assert server.call("GET", f"/api/sessions/{older}").status_code == 404
    only_this_server_was_asked(browser, server)


def test_without_vision_an_image_is_not_attached_and_the_ui_says_why(
    browser: Driver, server: OiServer, tmp_path: Path
) -> None:
    """This server runs without --vision: attaching says so plainly, nothing is dropped
    silently, and the API refuses a message with images the same way."""
    sign_in(browser, server)
    new_session(browser)
    assert "without --vision" in browser.find_element(By.ID, "vision-note").text
    picture = tmp_path / "photo.png"
    picture.write_bytes(base64.b64decode(TINY_PNG))
    browser.find_element(By.ID, "file-input").send_keys(str(picture))
    offer = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#upload-status .attach-offer"))
    offer.click()
    wait(browser, lambda d: "not attached" in d.find_element(By.ID, "upload-status").text)
    assert "--vision" in browser.find_element(By.ID, "upload-status").text
    assert not browser.find_element(By.ID, "attachments").is_displayed()
    screenshot(browser, "14-no-vision")
    session_id = current_session(browser)
    reply = server.call(
        "POST", f"/api/sessions/{session_id}/messages", json={"text": "hi", "images": ["photo.png"]}
    )
    assert reply.status_code == 400 and "--vision" in reply.json()["detail"], reply.text


TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
