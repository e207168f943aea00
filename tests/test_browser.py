"""The monitoring page in a real browser (headless Chromium) against a running gateway.

The gateway and a simulated terminal run as the commands an operator types (``gateway run``,
``simulator terminal``); the page is open before the terminal enrols anyone, so what the test
sees arrived over the live stream. The screenshot goes to build/screenshots/monitoring.png.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.loadtest.gateway_process import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "build" / "screenshots" / "monitoring.png"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
TERMINAL, OTHER = 101, 102
ENROLLED = f"{TERMINAL}-00000"  # the simulator's first enrolment at terminal 101
DEVICE_UPDATE = "User update succeeded (Device)"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="Chromium and its driver are not installed (make test installs them: packages chromium, chromium-driver)"
)


class Simulator:
    """A ``simulator`` command running as a child process, its output in the test's folder."""

    def __init__(self, folder: Path, *args: str):
        self.log = folder / f"simulator-{args[args.index('--id') + 1]}.log"
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen([sys.executable, "-m", "simulator.cli", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


@pytest.fixture
def gateway(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        'tcp_host = "127.0.0.1"\napi_token = "browser-test"\n'
        + "".join(f'\n[[terminals]]\nid = {t}\nsecret = "secret-{t}"\nname = "{name}"\n' for t, name in [(TERMINAL, "Front door"), (OTHER, "Back door")])
    )
    process = GatewayProcess(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}", config_file=config)
    try:
        process.start(timeout=30)
        yield f"http://127.0.0.1:{process.http_port}/", process.tcp_port
    finally:
        process.stop(10)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def test_an_enrolment_at_a_terminal_appears_on_the_page_within_seconds(gateway, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    page, tcp_port = gateway
    browser.get(page)
    WebDriverWait(browser, 15).until(seen.text_to_be_present_in_element((By.ID, "stream-state"), "connected"))

    terminals = [
        Simulator(tmp_path, "terminal", "--gateway", f"127.0.0.1:{tcp_port}", "--id", str(t), "--secret", f"secret-{t}", *enrolls)
        for t, enrolls in [(OTHER, ()), (TERMINAL, ("--enroll", "1", "--interval", "0.5"))]
    ]
    try:
        row = f'#events tbody tr[data-type="{DEVICE_UPDATE}"]'
        WebDriverWait(browser, 15).until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, row), ENROLLED))
        WebDriverWait(browser, 10).until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, f'#users tbody tr[data-id="{ENROLLED}"]'), ENROLLED))
        for t in (TERMINAL, OTHER):
            WebDriverWait(browser, 10).until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, f'#terminals tbody tr[data-id="{t}"]'), "online"))
        # The other terminal received the user from the server: the second sync event.
        applied = '#events tbody tr[data-type="User update succeeded (Server)"]'
        WebDriverWait(browser, 10).until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, applied), ENROLLED))

        event = browser.find_element(By.CSS_SELECTOR, row)
        assert "device-update" in event.get_attribute("class").split()  # highlighted as a sync event
        assert "SIM-1" in browser.find_element(By.CSS_SELECTOR, f'#terminals tbody tr[data-id="{TERMINAL}"]').text

        type_filter = browser.find_element(By.ID, "event-type")
        type_filter.find_element(By.CSS_SELECTOR, 'option[value="sync"]').click()
        shown = browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")
        assert shown and all("sync" in r.get_attribute("class").split() for r in shown)
        type_filter.find_element(By.CSS_SELECTOR, 'option[value=""]').click()

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT))
    finally:
        for terminal in terminals:
            terminal.stop()
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
