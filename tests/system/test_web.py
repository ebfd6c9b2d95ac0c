"""The web page at GET /, driven in real headless Chromium (Debian's) by Playwright, against a live server.

Every test checks what a person would see: the captions the API gives for the same image, the preview's alt
text, the error message from the JSON body. The page must load nothing from anywhere but the server.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import http.server
import io
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops
from playwright.sync_api import Browser, Page, expect, sync_playwright

from captioner.http.web import CONTENT_SECURITY_POLICY
from tests.support.images import photo
from tests.support.model import tiny_settings
from tests.support.paths import REPO_ROOT
from tests.support.servers import API_KEY, LiveServer

CHROMIUM = "/usr/bin/chromium"
# What a root CI box needs: no sandbox (root), and no background traffic to Google's hosts (no network here).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert shutil.which("chromium") or os.path.exists(CHROMIUM), "chromium is missing: run `make system-deps`"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    # Loopback URLs are allowed here so the URL test can fetch from a local file server.
    settings = tiny_settings(
        tiny_model_dir,
        url_input={"allow_private_networks": True},
        generation={"num_captions": 1, "max_num_captions": 3},
    )
    with LiveServer(settings) as live:
        yield live


class PageOnServer:
    """A fresh browser context on the page, recording every URL the page requests."""

    def __init__(self, browser: Browser, server: LiveServer) -> None:
        self.server = server
        self.context = browser.new_context(base_url=server.url)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        self.page: Page = self.context.new_page()
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)
        self.page.goto("/")

    def foreign_requests(self) -> list[str]:
        allowed = (self.server.url + "/", "blob:", "data:")
        return [url for url in self.requests if not url.startswith(allowed)]


@pytest.fixture
def web(browser: Browser, server: LiveServer) -> Iterator[PageOnServer]:
    on_page = PageOnServer(browser, server)
    yield on_page
    on_page.context.close()


def api_captions(server: LiveServer, image: bytes, num_captions: int, **headers: str) -> list[dict[str, Any]]:
    response = httpx.post(
        server.url + "/api/v1/caption",
        params={"num_captions": num_captions},
        files={"image": ("x.png", image, "image/png")},
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    captions: list[dict[str, Any]] = response.json()["captions"]
    return captions


def shown_captions(page: Page) -> list[str]:
    return page.locator("#captions .caption-text").all_inner_texts()


def test_page_is_served_with_its_assets_and_settings(server: LiveServer) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert 'data-max-captions="3"' in page.text and 'data-default-captions="1"' in page.text
    assert "{{" not in page.text  # every placeholder filled
    assets = (("/static/app.js", "javascript"), ("/static/feedback.js", "javascript"), ("/static/app.css", "text/css"))
    for asset, kind in assets:
        response = httpx.get(server.url + asset)
        assert response.status_code == 200 and kind in response.headers["content-type"], asset
    assert httpx.get(server.url + "/static/nope.js").status_code == 404


def test_upload_shows_the_captions_and_sets_the_alt_text(web: PageOnServer, tmp_path: Path) -> None:
    image = photo(11)
    path = tmp_path / "photo.png"
    path.write_bytes(image)
    expected = api_captions(web.server, image, num_captions=3)
    page = web.page

    page.select_option("#num-captions", "3")
    page.set_input_files("#file", str(path))

    expect(page.locator("#captions li")).to_have_count(len(expected))
    assert shown_captions(page) == [c["text"] for c in expected]
    expect(page.locator("#preview")).to_have_attribute("alt", expected[0]["text"])
    expect(page.locator("#figure")).to_be_visible()
    bars = page.locator("#captions meter")
    for index, caption in enumerate(expected):
        assert float(bars.nth(index).get_attribute("value") or "nan") == pytest.approx(caption["confidence"])
    expect(page.locator("#status")).to_contain_text(expected[0]["text"])
    expect(page.locator("#error")).to_be_empty()
    assert web.foreign_requests() == []
    assert web.console_errors == []


def test_text_file_shows_the_servers_error_message(web: PageOnServer, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("this is not an image\n")
    page = web.page

    page.set_input_files("#file", str(path))

    error = page.locator("#error")
    expect(error).to_contain_text("not a recognised image")
    expect(error).to_contain_text("invalid_image")
    expect(page.locator("#captions li")).to_have_count(0)
    expect(page.locator("#figure")).to_be_hidden()
    assert error.get_attribute("role") == "alert"


def test_changing_the_number_of_suggestions_asks_again(web: PageOnServer, tmp_path: Path) -> None:
    image = photo(12)
    path = tmp_path / "photo.png"
    path.write_bytes(image)
    page = web.page
    page.set_input_files("#file", str(path))
    expect(page.locator("#captions li")).to_have_count(1)

    page.select_option("#num-captions", "2")

    expected = api_captions(web.server, image, num_captions=2)
    expect(page.locator("#captions li")).to_have_count(2)
    assert shown_captions(page) == [c["text"] for c in expected]
    assert page.locator("#num-captions option").all_inner_texts() == ["1", "2", "3"]


def test_drag_and_drop(web: PageOnServer) -> None:
    image = photo(13)
    expected = api_captions(web.server, image, num_captions=1)
    page = web.page
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
            return transfer;
        }""",
        base64.b64encode(image).decode(),
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})

    expect(page.locator("#preview")).to_have_attribute("alt", expected[0]["text"])
    assert shown_captions(page) == [expected[0]["text"]]


@pytest.fixture
def image_host(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP file server on loopback, as the 'internet' for the URL input."""
    (tmp_path / "remote.png").write_bytes(photo(14))
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_pasted_url_is_captioned_by_the_server(web: PageOnServer, image_host: str) -> None:
    expected = api_captions(web.server, photo(14), num_captions=1)
    page = web.page

    page.fill("#url", image_host + "/remote.png")
    page.press("#url", "Enter")  # keyboard only: Enter submits the URL form

    expect(page.locator("#preview")).to_have_attribute("alt", expected[0]["text"])
    assert shown_captions(page) == [expected[0]["text"]]

    page.fill("#url", image_host + "/missing.png")
    page.press("#url", "Enter")
    expect(page.locator("#error")).to_contain_text("url_fetch_failed")


def test_copy_button_puts_the_caption_on_the_clipboard(browser: Browser, server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(photo(15))
    web = PageOnServer(browser, server)
    try:
        web.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
        page = web.page
        page.set_input_files("#file", str(path))
        first = page.locator("#captions .caption-text").first
        expect(first).not_to_be_empty()

        copy = page.get_by_role("button", name="Copy caption 1")
        copy.focus()
        page.keyboard.press("Enter")  # a real button: the keyboard works

        expect(copy).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == first.inner_text()
    finally:
        web.context.close()


def test_feedback_buttons_rate_and_correct_captions(web: PageOnServer, tmp_path: Path) -> None:
    image = photo(18)
    path = tmp_path / "photo.png"
    path.write_bytes(image)
    server, page = web.server, web.page
    good, bad = (server.metric("captioner_feedback_total", f'rating="{r}"') for r in (5, 1))
    page.select_option("#num-captions", "2")
    page.set_input_files("#file", str(path))
    expect(page.locator("#captions li")).to_have_count(2)
    first, second = page.locator("#captions li").nth(0), page.locator("#captions li").nth(1)
    shown = shown_captions(page)

    first.get_by_role("button", name="Good caption: caption 1").click()
    second.get_by_role("button", name="Correct caption 2").click()
    second.get_by_label("Corrected caption 2", exact=True).fill("a red circle on a blue square")
    second.get_by_role("button", name="Send the corrected caption 2").click()

    expect(first.locator(".feedback-status")).to_have_text("Thanks: marked as a good caption.")
    expect(first.get_by_role("button", name="Good caption: caption 1")).to_have_attribute("aria-pressed", "true")
    expect(first.get_by_role("button", name="Wrong caption: caption 1")).to_be_disabled()  # one rating each
    expect(second.locator(".feedback-status")).to_have_text("Thanks: correction sent.")
    assert server.metric("captioner_feedback_total", 'rating="5"') == good + 1
    assert server.metric("captioner_feedback_total", 'rating="1"') == bad + 1
    with ThreadPoolExecutor(1) as thread:  # Playwright's own loop runs on this one
        records = thread.submit(asyncio.run, server.app.state.captioner.feedback.store.records()).result()
    assert sorted((r.caption, r.rating, r.correction, r.image_sha256) for r in records[-2:]) == sorted(
        [
            (shown[0], 5, None, hashlib.sha256(image).hexdigest()),
            (shown[1], 1, "a red circle on a blue square", hashlib.sha256(image).hexdigest()),
        ]
    )
    assert web.foreign_requests() == []
    assert web.console_errors == []


def test_every_control_has_a_label(web: PageOnServer) -> None:
    page = web.page
    for control in ("#file", "#url", "#num-captions", "#api-key"):
        control_id = control.removeprefix("#")
        assert page.locator(f"label[for='{control_id}']").count() == 1, control
    expect(page.locator("#captions")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#status")).to_have_attribute("aria-live", "polite")
    # Tab reaches the file chooser first (after the skip link), so the page works without a mouse.
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file"


def test_api_key_is_sent_and_kept_for_the_tab(browser: Browser, keyed_server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(photo(16))
    web = PageOnServer(browser, keyed_server)
    try:
        page = web.page
        page.set_input_files("#file", str(path))
        expect(page.locator("#error")).to_contain_text("unauthorized")
        assert page.evaluate("document.activeElement.id") == "api-key"  # 401 sends the user to the key field

        page.fill("#api-key", API_KEY)
        page.set_input_files("#file", [])
        page.set_input_files("#file", str(path))
        expect(page.locator("#captions li")).to_have_count(1)
        expect(page.locator("#error")).to_be_empty()
        assert page.evaluate("sessionStorage.getItem('captioner.apiKey')") == API_KEY

        page.get_by_role("button", name="Wrong caption: caption 1").click()  # feedback carries the key too
        expect(page.locator("#captions .feedback-status")).to_have_text("Thanks: marked as a wrong caption.")

        page.reload()  # same tab: the key is still there
        expect(page.locator("#api-key")).to_have_value(API_KEY)
    finally:
        web.context.close()


def test_screenshot(web: PageOnServer, tmp_path: Path) -> None:
    """Renders the page with results; CAPTIONER_WEB_SCREENSHOT=docs/web.png also refreshes the README's picture."""
    path = tmp_path / "photo.png"
    image = photo(17, size=(320, 240))
    path.write_bytes(image)
    expected = api_captions(web.server, image, num_captions=3)
    page = web.page
    page.set_viewport_size({"width": 1100, "height": 760})
    empty = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    page.select_option("#num-captions", "3")
    page.set_input_files("#file", str(path))
    expect(page.locator("#captions li")).to_have_count(len(expected))
    target = Path(os.environ.get("CAPTIONER_WEB_SCREENSHOT", str(tmp_path / "web.png")))
    page.screenshot(path=str(target), full_page=True)
    shot = Image.open(target)
    assert shot.format == "PNG" and shot.width == 1100 and shot.height >= 760
    shot = shot.convert("RGB")
    # The results are in the picture: it differs from the empty page over at least the area of the photo's
    # preview plus the captions, not in a few pixels.
    changed = ImageChops.difference(shot.crop((0, 0, *empty.size)), empty).getbbox()
    assert changed is not None
    left, top, right, bottom = changed
    assert right - left >= 300 and bottom - top >= 200, changed


def test_static_files_ship_in_the_package() -> None:
    import fnmatch
    import tomllib

    import captioner

    root = REPO_ROOT
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["captioner"]
    package = Path(captioner.__file__).parent
    static = package / "http" / "static"
    files = sorted(p.relative_to(package).as_posix() for p in static.rglob("*") if p.is_file())
    assert {"http/static/index.html", "http/static/app.js", "http/static/feedback.js", "http/static/app.css"} <= set(
        files
    )
    unshipped = [f for f in files if not any(fnmatch.fnmatchcase(f, pattern) for pattern in patterns)]
    assert unshipped == []  # a wheel without them would serve 404s for its own page
