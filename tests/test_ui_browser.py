"""The Prefect UI in a real headless Chromium: a deployed, served pipeline shows its schedule (with
timezone) and parameter form, and a run triggered through the API with parameters shows as completed
with one task run per dbt node. Screenshots go to test-artifacts/ui/.

Skipped outside CI only when Chromium is missing (`make services` installs it); under CI=true a
missing Chromium fails the test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO
from tests.support.deployments import (
    FLOW_NAME, Background, child_env, deployment, unique, wait_for_final_state, wait_until, write_pipeline,
)
from tests.support.runs import task_runs

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = REPO / "test-artifacts" / "ui"
UI_WAIT = 90  # seconds the browser may take to render a page on a busy machine (a deadline, not a sleep)


def _require_chromium() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.isfile(p)]
    if not missing:
        return
    message = f"Chromium not installed ({', '.join(missing)} missing): apt-get install -y chromium chromium-driver"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: the UI check must run)", pytrace=False)
    pytest.skip(message + " (or `make services`)")


@pytest.fixture
def browser(tmp_path):
    _require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _page_shows(driver, *texts: str, what: str) -> str:
    """Wait until the page's visible text contains every one of `texts`; return that text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def body(d):
        text = d.find_element(By.TAG_NAME, "body").text
        return text if all(t in text for t in texts) else False

    try:
        return WebDriverWait(driver, UI_WAIT, poll_frequency=0.5).until(body)
    except TimeoutException:
        shot = _screenshot(driver, "failed-" + what)
        text = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"{what}: page never showed {texts}; screenshot {shot}; text:\n{text[:3000]}") from None


def _screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def test_prefect_ui_shows_deployment_schedule_form_and_completed_run_with_task_runs(demo_project, browser, tmp_path):
    from prefect.deployments import run_deployment
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    api = os.environ["PREFECT_API_URL"]
    ui = api[: -len("/api")]
    assert os.environ.get("PREFECT_UI_API_URL") == api  # the UI must call this server's API

    name = unique("ui_shop")
    write_pipeline(demo_project, name, description="Shop facts for the UI check",
                   schedule={"cron": "0 6 * * *", "timezone": "Europe/Berlin"})
    serve = Background([str(BIN / "mage-dbt"), "serve", name], cwd=demo_project, env=child_env(),
                       log=tmp_path / "serve.log")
    try:
        def registered():
            serve.assert_alive()
            return deployment(name)

        dep = wait_until(registered, 120, f"`mage-dbt serve` to register {name}")
        run = run_deployment(f"{FLOW_NAME}/{name}", parameters={"execution_date": "2024-02-01"}, timeout=0)
        run = wait_for_final_state(run.id, process=serve)
        assert run.state.type.value == "COMPLETED", (run.state.message, serve.output()[-3000:])
        runs = task_runs(str(run.id), batches=True)  # the UI counts every task run, batches too
        assert "fct_orders" in runs and {r.state.type.value for r in runs.values()} == {"COMPLETED"}

        # The deployment page: its schedule, and the completed run with its task run count.
        browser.get(f"{ui}/deployments/deployment/{dep.id}")
        _page_shows(browser, name, "Schedules", "At 06:00 AM every day", f"{name}-2024-02-01",
                    "Completed", f"{len(runs)} Task runs", what="deployment page")
        card = browser.find_element(By.CSS_SELECTOR, ".deployment-schedule-card__content")
        ActionChains(browser).move_to_element(card).perform()  # the schedule's tooltip names its timezone
        _page_shows(browser, "At 06:00 AM every day (Europe/Berlin)", what="schedule tooltip")
        _screenshot(browser, "deployment")

        # The form an analyst fills in to start a run: typed fields with titles and help texts.
        browser.get(f"{ui}/deployments/deployment/{dep.id}/run")
        _page_shows(browser, "Execution date", "scheduled start time is used", "Full refresh",
                    "Select blocks", "dbt target", "dbt vars", what="custom run form")
        _screenshot(browser, "run-form")

        # The flow run page: completed, one task run per block; find fct_orders among them.
        browser.get(f"{ui}/runs/flow-run/{run.id}")
        _page_shows(browser, f"{name}-2024-02-01", "Completed", f"{len(runs)} Task runs", what="flow run page")
        WebDriverWait(browser, UI_WAIT).until(lambda d: d.find_elements(By.ID, "task-runs"))[0].click()
        _page_shows(browser, f"({len(runs)} Completed)", what="task runs tab")
        search = WebDriverWait(browser, UI_WAIT).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "input[placeholder='Search by run name']"))[0]
        search.send_keys("fct_orders")
        matching = sorted(n for n in runs if "fct_orders" in n)
        _page_shows(browser, f"{len(matching)} Task runs", what="task run search")  # the filtered count
        link = WebDriverWait(browser, UI_WAIT).until(
            lambda d: d.find_elements(By.XPATH, "//a[normalize-space(.)='fct_orders']"))[0]
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", link)
        shown = {a.text.strip() for a in browser.find_elements(By.XPATH, "//a[contains(., 'fct_orders')]")}
        assert "fct_orders" in shown and shown <= set(matching), shown
        _screenshot(browser, "flow-run-task-runs")
    finally:
        serve.stop()
