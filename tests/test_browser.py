"""The monitoring page in a real browser (headless Chromium) against a running gateway.

The gateway and simulated terminals run as the commands an operator types (``gateway run``,
``simulator terminal``); the page is open before the terminals enrol anyone, so what the test
sees arrived over the live stream and the polled figures. Screenshots go to build/screenshots/:
charts.png (the top of the page: terminal grid, charts, events), user.png (a user's detail, with
where each value came from and its history) and layout-1280.png, layout-412.png.
"""

import shutil
from pathlib import Path

import pytest

from processes import Process, start_gateway

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "build" / "screenshots"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
TERMINAL, OTHER, THIRD, ABSENT = 101, 102, 103, 104
ENROLLED = f"{TERMINAL}-00000"  # the simulator's first enrolment at terminal 101
DEVICE_UPDATE = "User update succeeded (Device)"
SERVER_UPDATE = "User update succeeded (Server)"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="Chromium and its driver are not installed (make test installs them: packages chromium, chromium-driver)"
)


@pytest.fixture
def gateway(tmp_path):
    names = {TERMINAL: "Front door", OTHER: "Back door", THIRD: "Lobby", ABSENT: "Loading dock"}
    process, tcp_port, page = start_gateway(tmp_path, names)
    try:
        yield page, tcp_port
    finally:
        process.stop()


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


def screenshot(browser, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / name))


def test_enrolments_at_a_terminal_appear_live_in_events_grid_charts_and_the_user_view(gateway, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(seconds, condition, what):
        return WebDriverWait(browser, seconds).until(condition, message=what)

    def shown(selector, text, seconds=15):
        wait(seconds, seen.text_to_be_present_in_element((By.CSS_SELECTOR, selector), text), f"{text!r} in {selector}")

    def text(selector):
        found = browser.execute_script("const found = document.querySelector(arguments[0]); return found && found.textContent;", selector)
        assert found is not None, f"nothing at {selector}"
        return found

    def attribute(selector, name):
        # Read in one script: the grid and the charts are redrawn every 2 s, so elements go stale.
        script = "const found = document.querySelector(arguments[0]); return found && found.getAttribute(arguments[1]);"
        return lambda driver: driver.execute_script(script, selector, name)

    page, tcp_port = gateway
    browser.get(page)
    shown("#stream-state", "connected")
    shown(f'#terminal-grid .tile[data-id="{ABSENT}"]', "never connected")  # configured, never seen: red

    terminals = [
        Process("simulator.cli", "terminal", "--gateway", f"127.0.0.1:{tcp_port}", "--id", str(t), "--secret", f"secret-{t}", *enrolls)
        for t, enrolls in [(OTHER, ()), (THIRD, ()), (TERMINAL, ("--enroll", "40", "--interval", "0.25"))]
    ]
    try:
        row = f'#events tbody tr[data-type="{DEVICE_UPDATE}"]'
        shown(row, f"{TERMINAL}-")  # the newest of them is first
        shown(f'#users tbody tr[data-id="{ENROLLED}"]', ENROLLED, 10)
        for t in (TERMINAL, OTHER, THIRD):  # online; maybe a few changes behind while enrolments stream in
            wait(10, lambda d, t=t: attribute(f'#terminal-grid .tile[data-id="{t}"]', "data-state")(d) in ("online", "lagging"), f"tile {t} online")
        assert attribute(f'#terminal-grid .tile[data-id="{ABSENT}"]', "data-state")(browser) == "offline"
        shown("#fleet-summary", "3 of 4 terminals online")
        # The other terminals received the user from the server: the second sync event.
        shown(f'#events tbody tr[data-type="{SERVER_UPDATE}"]', f"{TERMINAL}-")

        assert "device-update" in attribute(row, "class")(browser).split()  # highlighted as a sync event
        assert "SIM-1" in text(f'#terminals tbody tr[data-id="{TERMINAL}"]')

        # Highlighted (bold) event times are shown whole, not cut off.
        cut = browser.execute_script(
            "return [...document.querySelectorAll('#events tbody tr.sync td:nth-child(2)')]"
            ".filter(td => td.scrollWidth > td.clientWidth).map(td => td.textContent)")
        assert cut == []

        type_filter = browser.find_element(By.ID, "event-type")
        type_filter.find_element(By.CSS_SELECTOR, 'option[value="sync"]').click()
        classes = browser.execute_script("return [...document.querySelectorAll('#events tbody tr')].map(tr => tr.className)")
        assert classes and all("sync" in c.split() for c in classes)
        type_filter.find_element(By.CSS_SELECTOR, 'option[value=""]').click()

        # The charts: drawn by uPlot, fed by /api/activity, headlines follow the figures.
        for figure in ("chart-stored", "chart-deliveries", "chart-propagation", "chart-failures"):
            wait(10, lambda d, f=figure: d.find_elements(By.CSS_SELECTOR, f"#{f} .plot canvas"), f"{figure} drawn")
        wait(20, lambda d: int(attribute("#chart-deliveries", "data-total")(d) or 0) >= 20, "deliveries counted")
        wait(20, lambda d: int(attribute("#chart-stored", "data-total")(d) or 0) >= 20, "stored events counted")
        shown("#chart-propagation .headline", " ms", 20)
        assert attribute("#chart-failures", "data-total")(browser) == "0"
        wait(30, lambda d: int(attribute("#chart-deliveries", "data-total")(d) or 0) >= 80, "40 enrolments delivered to 2 terminals each")
        for t in (TERMINAL, OTHER, THIRD):
            shown(f'#terminal-grid .tile[data-id="{t}"]', "in sync", 10)
        screenshot(browser, "charts.png")

        # A user's detail: credentials, and every terminal holding the current version.
        def click_user(driver):
            driver.find_element(By.CSS_SELECTOR, f'#users tbody tr[data-id="{ENROLLED}"]').click()
            return True

        WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,)).until(click_user)  # the list may be redrawn meanwhile
        wait(10, lambda d: d.find_element(By.ID, "user-detail").get_attribute("open") is not None, "the user view open")
        assert "Fingerprints" in text("#user-credentials")
        for t in (TERMINAL, OTHER, THIRD):
            wait(10, lambda d, t=t: attribute(f'#user-holders .tile[data-id="{t}"]', "data-state")(d) == "holds", f"terminal {t} holds the user")
        assert attribute(f'#user-holders .tile[data-id="{ABSENT}"]', "data-state")(browser) == "offline"
        shown("#user-version", "3 of 4")
        # Where each value came from, and the history: enrolled at the keypad, taken whole as a new user.
        shown("#user-provenance tbody", f"terminal {TERMINAL}")
        shown("#user-provenance tbody", "new user")
        shown("#user-history tbody", "new user")
        assert text("#user-history tbody tr td:first-child") == "1"
        screenshot(browser, "user.png")
        browser.find_element(By.ID, "user-close").click()
    finally:
        for terminal in terminals:
            terminal.stop()
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


LONG_ID = 3349079302  # a ZK device's id as `gateway run --zk` derives it: ten digits
BUS_NAME = "RS-485 ttyUSB0 address 12"


@pytest.fixture
def quiet_gateway(tmp_path):
    process, _, page = start_gateway(tmp_path, {LONG_ID: "ZK 127.0.0.1:4370", 7: BUS_NAME, 8: "Front door"})
    try:
        yield page
    finally:
        process.stop()


@pytest.mark.parametrize("width", [1280, 412])
def test_the_page_fits_a_laptop_and_a_phone_without_cutting_ids_or_names(quiet_gateway, browser, width):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(width, 900)
    browser.get(quiet_gateway)
    WebDriverWait(browser, 15).until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, f'#terminal-grid .tile[data-id="{LONG_ID}"]'),
                                                                        "never connected"), message="the tiles drawn")
    overflow = browser.execute_script("""
        const cut = (e) => e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1;
        return {
          page: Math.max(0, document.documentElement.scrollWidth - document.documentElement.clientWidth),
          ids: [...document.querySelectorAll('#terminal-grid .tile-id')].filter(cut).map(e => e.textContent),
          names: [...document.querySelectorAll('#terminal-grid .tile-name')].filter(cut).map(e => e.textContent),
        };""")
    assert overflow == {"page": 0, "ids": [], "names": []}
    screenshot(browser, f"layout-{width}.png")
