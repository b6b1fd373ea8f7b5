"""The page at `GET /` in a real headless Chromium: upload, record, and an error.

Driven with Selenium through the system's ChromeDriver (Debian's `chromium` and
`chromium-driver`); nothing is downloaded. The microphone is Chromium's fake capture
device playing a committed speech fixture, so a recording holds real speech and travels
as the browser's own WebM/Opus, which the service must decode.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
if missing:
    pytest.skip(
        f"browser tests need Debian's chromium and chromium-driver; missing: {', '.join(missing)}",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402 - only once the browser is known to be there
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.speech import SPEECH_DIR  # noqa: E402

SPEECH_FIXTURE = SPEECH_DIR / "fox_dog.wav"  # "The quick brown fox jumps over the lazy dog."
DONE_DEADLINE_S = 120  # one transcription on a busy 2-core machine
RECORD_S = 4.5  # the fixture (3.3 s) and some silence after it


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        # A microphone without a person: allowed without a prompt, playing the fixture
        # once (%noloop), then silence.
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={SPEECH_FIXTURE}%noloop",
    ):
        options.add_argument(flag)
    # Both paths are given, so Selenium Manager has nothing to look up; keep it offline anyway.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(
            options=options, service=Service(executable_path=str(CHROMEDRIVER))
        )
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser: WebDriver, service: str) -> None:
    browser.get(f"{service}/")
    assert browser.title == "Speech to text"


def status_line(browser: WebDriver):
    return browser.find_element(By.ID, "status")


def wait_for_result(browser: WebDriver) -> tuple[str, str]:
    """Poll until the request has finished: (status text, status class)."""

    def finished(driver: WebDriver):
        # Text and class in one read: two WebDriver calls could straddle an update.
        text, css_class = driver.execute_script(
            "const el = document.getElementById('status'); return [el.textContent, el.className];"
        )
        if text.startswith("Transcribing") or text.startswith("Recording"):
            return False
        if text.startswith("Done") or css_class == "error":
            return text, css_class
        return False

    return WebDriverWait(browser, DONE_DEADLINE_S, poll_frequency=0.5).until(
        finished, message=f"the status line never said Done or showed an error: "
        f"{status_line(browser).text!r}"
    )


def segment_rows(browser: WebDriver) -> list[list[str]]:
    rows = browser.find_elements(By.CSS_SELECTOR, "#segments tbody tr")
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def assert_segments(browser: WebDriver) -> None:
    rows = segment_rows(browser)
    assert rows, "no segment rows"
    for start, end, text in rows:
        # clock() renders seconds as HH:MM:SS.ss
        assert start.count(":") == 2 and end.count(":") == 2, (start, end)
        assert start <= end and text.strip()


def test_upload_a_file(browser: WebDriver, service: str, tmp_path: Path) -> None:
    open_page(browser, service)
    browser.find_element(By.ID, "file").send_keys(str(SPEECH_FIXTURE))
    browser.find_element(By.ID, "send").click()
    text, css_class = wait_for_result(browser)
    assert css_class != "error" and text.startswith("Done: 3."), text  # 3.3 s of audio
    assert "fox" in browser.find_element(By.ID, "transcript").text.lower()
    assert_segments(browser)
    # The words, each with its times, light up as the audio reaches them.
    words = browser.find_elements(By.CSS_SELECTOR, "#transcript .word")
    assert len(words) >= 8 and "fox" in " ".join(w.text.lower() for w in words)
    fox = next(w for w in words if "fox" in w.text.lower())
    start, end = float(fox.get_attribute("data-start")), float(fox.get_attribute("data-end"))
    assert 0 <= start < end <= 3.4
    browser.execute_script(f"highlight({(start + end) / 2})")
    lit = browser.find_elements(By.CSS_SELECTOR, "#transcript .word.now")
    assert [w.text for w in lit] == [fox.text]
    assert browser.find_element(By.ID, "player").is_displayed()
    browser.save_screenshot(str(tmp_path / "webpage.png"))  # kept with pytest's tmp dirs


def test_record_from_the_microphone(browser: WebDriver, service: str) -> None:
    open_page(browser, service)
    stop = browser.find_element(By.ID, "stop")
    assert not stop.is_enabled()
    browser.find_element(By.ID, "record").click()
    WebDriverWait(browser, 30).until(
        lambda d: status_line(d).text == "Recording ..." and stop.is_enabled(),
        message=f"recording did not start: {status_line(browser).text!r}",
    )
    time.sleep(RECORD_S)
    stop.click()
    text, css_class = wait_for_result(browser)
    assert css_class != "error" and text.startswith("Done"), text
    # What the browser sent is its own recording format, not anything of ours.
    mime_type = browser.execute_script("return recorder.mimeType")
    assert mime_type.startswith("audio/webm") and "opus" in mime_type, mime_type
    seconds = float(re.match(r"Done: ([0-9.]+) s of audio", text).group(1))
    assert RECORD_S - 1.5 < seconds < RECORD_S + 2.0, text
    transcript = browser.find_element(By.ID, "transcript").text.lower()
    assert "fox" in transcript and "dog" in transcript, transcript
    assert_segments(browser)
    assert browser.find_element(By.ID, "record").is_enabled() and not stop.is_enabled()


def test_errors_show_on_the_status_line(browser: WebDriver, service: str, tmp_path: Path) -> None:
    open_page(browser, service)
    browser.find_element(By.ID, "send").click()  # no file chosen yet
    assert status_line(browser).text == "Choose a file first."
    assert status_line(browser).get_attribute("class") == "error"

    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("These are notes, not audio.\n" * 20)
    browser.find_element(By.ID, "file").send_keys(str(not_audio))
    browser.find_element(By.ID, "send").click()
    text, css_class = wait_for_result(browser)
    assert css_class == "error"
    assert text.startswith("Error 415: The file is not audio in a supported format"), text
    assert browser.find_element(By.ID, "transcript").text == ""
    assert segment_rows(browser) == []

