"""`llasm demo` in a real browser: headless Chromium (selenium) records from a fake microphone fed with espeak-ng
speech, uploads a file, and waits for streamed answers. Needs Debian `chromium` + `chromium-driver` (installed by
scripts/install.sh), espeak-ng, gradio and selenium; skipped with the reason when one is missing.

The model is the tiny random test model unless `LLASM_DEMO_MODEL` names another; `LLASM_DEMO_SCREENSHOT=PATH`
also saves the answered page there (docs/images/demo.png was made with
`LLASM_DEMO_MODEL=~/.cache/llasm/llasm-tiny-base LLASM_DEMO_SCREENSHOT=docs/images/demo.png`).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tiny_llasm import build_tiny_llasm

from modeling_llasm.demo import EMPTY_ANSWER

pytestmark = pytest.mark.browser

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
# offline: nothing of Chromium's own may reach out (no sync, updates, safe browsing, QUIC probes)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1000",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
)  # fmt: skip
WAIT_S = 180  # generous: a loaded CI machine; never an assertion on speed


def _missing() -> str | None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver; scripts/install.sh does)"
    if shutil.which("espeak-ng") is None:
        return "needs espeak-ng for the fake microphone's speech"
    for module in ("gradio", "selenium"):
        try:
            __import__(module)
        except ImportError:
            return f"needs {module} (pip install 'modeling_llasm[demo,test]')"
    return None


if _missing():
    pytest.skip(_missing(), allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def say(text: str, path: Path) -> Path:
    # 16-bit PCM mono WAV, which Chromium's fake capture device accepts
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    return say("What is the capital of France?", tmp_path_factory.mktemp("speech") / "question.wav")


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    """`llasm demo MODEL --port P` in a subprocess; yields its URL."""
    root = tmp_path_factory.mktemp("demo")
    model_dir = os.environ.get("LLASM_DEMO_MODEL")
    if model_dir is None:
        model, processor = build_tiny_llasm()
        model_dir = root / "tiny-llasm"
        model.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
    port = free_port()
    log = open(root / "demo.log", "w+")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio"), "NO_PROXY": "127.0.0.1,localhost"}
    server = subprocess.Popen(
        [sys.executable, "-m", "modeling_llasm.cli", "demo", str(model_dir), "--port", str(port), "--max-new-tokens", "24"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"llasm demo exited with {server.returncode}:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llasm demo did not answer HTTP in time")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(speech, tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument(f"--use-file-for-fake-audio-capture={speech}")
    # executable_path: selenium then never tries to download a driver
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, message: str, timeout: float = WAIT_S):
    # Gradio re-renders the chat while it updates: an element found a moment ago may be gone, so poll again
    return WebDriverWait(driver, timeout, poll_frequency=0.25, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: condition(d), message=message
    )


def bot_texts(driver) -> list[str]:
    # read in one script so a message removed between finding and reading (e.g. by Clear) cannot go stale
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#chatbot [data-testid=\"bot\"]')).map(e => e.innerText.trim())"
    )


def user_audio_count(driver) -> int:
    # Gradio labels each message for screen readers: "user's message: a component of type audio"
    return len(driver.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="user"][aria-label*="type audio"]'))


def send_and_wait_for_answer(driver) -> str:
    """Click Send and wait until a new answer is complete (Send is enabled again) and shows text."""
    answers_before = len(bot_texts(driver))
    send = driver.find_element(By.CSS_SELECTOR, "#send")
    send.click()
    wait_for(driver, lambda d: len(bot_texts(d)) > answers_before and d.find_element(By.CSS_SELECTOR, "#send").is_enabled(),
             "no complete answer appeared")  # fmt: skip
    answer = bot_texts(driver)[-1]
    assert answer and answer != EMPTY_ANSWER.strip("*")
    return answer


def open_demo(driver, url: str) -> None:
    driver.get(url)
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#audio-input button.record-button"), "the page did not load")


def test_record_from_microphone_then_upload_then_clear(browser, demo_url, speech, tmp_path):
    open_demo(browser, demo_url)
    assert "Model:" in browser.find_element(By.CSS_SELECTOR, "#model-info").text

    # 1. microphone: the fake device plays the espeak-ng question
    browser.find_element(By.CSS_SELECTOR, "#audio-input button.record-button").click()
    time.sleep(3)  # speak for a while: the length of the recording, not an assertion on speed
    browser.find_element(By.CSS_SELECTOR, "#audio-input button.stop-button").click()
    # the recording is uploaded to the server once stopped; its player appears when that is done
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#audio-input audio, #audio-input #waveform"),
             "the recording did not come back")  # fmt: skip
    send_and_wait_for_answer(browser)
    assert user_audio_count(browser) == 1

    # 2. upload, in the same conversation: the first clip stays
    browser.find_element(By.CSS_SELECTOR, '#audio-input button[aria-label="Upload file"]').click()
    browser.find_element(By.CSS_SELECTOR, "#audio-input input[type=file]").send_keys(str(speech))
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#audio-input audio, #audio-input #waveform"),
             "the upload did not load")  # fmt: skip
    browser.find_element(By.CSS_SELECTOR, "#text-input textarea").send_keys("Answer in one sentence.")
    send_and_wait_for_answer(browser)
    assert len(bot_texts(browser)) == 2 and user_audio_count(browser) == 2

    browser.save_screenshot(str(tmp_path / "demo.png"))
    if os.environ.get("LLASM_DEMO_SCREENSHOT"):
        Path(os.environ["LLASM_DEMO_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(os.environ["LLASM_DEMO_SCREENSHOT"])

    # every resource the page loaded came from the demo itself (no CDN, fonts, analytics)
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    origin = demo_url.rstrip("/")
    assert any(r.startswith(origin) for r in resources)
    assert [r for r in resources if not r.startswith((origin, "data:", "blob:"))] == []

    browser.find_element(By.CSS_SELECTOR, "#clear").click()
    wait_for(browser, lambda d: not bot_texts(d), "clear left messages behind")
    # a turn after clearing starts a new conversation
    browser.find_element(By.CSS_SELECTOR, "#text-input textarea").send_keys("Hello")
    send_and_wait_for_answer(browser)
    assert len(bot_texts(browser)) == 1 and user_audio_count(browser) == 0


def test_sending_nothing_shows_an_error(browser, demo_url):
    open_demo(browser, demo_url)
    browser.find_element(By.CSS_SELECTOR, "#send").click()
    wait_for(browser, lambda d: "Record or upload" in d.find_element(By.TAG_NAME, "body").text, "no error was shown")
    assert bot_texts(browser) == []


def test_talk_into_the_streaming_microphone_and_see_the_first_word_time(browser, demo_url):
    """The streaming microphone: the speech is sent in chunks while it is recorded, the answer comes when the
    recording stops, and the page says how long after the end of speech the first word came."""
    open_demo(browser, demo_url)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#talk-input button.record-button"), "no streaming microphone")
    browser.find_element(By.CSS_SELECTOR, "#talk-input button.record-button").click()
    time.sleep(3)  # speak for a while: the length of the recording, not an assertion on speed
    browser.find_element(By.CSS_SELECTOR, "#talk-input button.stop-button").click()
    wait_for(browser, lambda d: "after you stopped speaking" in d.find_element(By.CSS_SELECTOR, "#first-word").text,
             "no answer with its first-word time")  # fmt: skip
    wait_for(browser, lambda d: bot_texts(d) and bot_texts(d)[-1], "the answer did not appear")
    assert user_audio_count(browser) == 1
