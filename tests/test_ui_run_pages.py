"""What an analyst sees in the Prefect UI after a run, in a real headless Chromium: the flow run page
with the run summary artifact, the artifact itself (block table, what failed and the retry command),
an asset materialization with its upstream assets (the lineage Prefect's open-source UI shows: the
event page of the asset; it has no asset graph page) and the deployment form with the dbt target
choice. Screenshots go to test-artifacts/ui/.

Skipped outside CI only when Chromium is missing (`make services` installs it)."""

from __future__ import annotations

import contextlib
import json
import os

from tests.conftest import cli, copy_project
from tests.support import dbt_changes
from tests.support.asset_events import materializations, upstream
from tests.support.deployments import deployment, flow_runs_of, unique, wait_until, write_pipeline
from tests.support.runs import flow_run_id
from tests.test_run_artifacts import run_artifacts
from tests.test_ui_browser import UI_WAIT, _page_shows, _screenshot, browser  # noqa: F401 (fixture)


def _click_tab(driver, tab_id: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, UI_WAIT).until(lambda d: d.find_elements("id", tab_id))[0].click()


def _submit(driver, created):
    """Click the form's Submit button once it is clickable; the flow runs it created. A click that
    leaves the page on the form without a run (CI once waited 90 s for a run that never came) is
    repeated, twice at most; the failure names the page the browser was on."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    form_url = driver.current_url
    for _ in range(3):
        if driver.current_url == form_url:
            submit = WebDriverWait(driver, UI_WAIT).until(expected_conditions.element_to_be_clickable(
                (By.XPATH, "//button[normalize-space(.)='Submit']")))
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", submit)
            submit.click()
        with contextlib.suppress(AssertionError):  # no run yet: submit again if still on the form
            return wait_until(created, UI_WAIT / 3, "the form's flow run")
    text = " ".join(driver.find_element(By.TAG_NAME, "body").text.split())[:500]
    raise AssertionError(f"no flow run after 3 submits; the browser is on {driver.current_url}: {text}")


def test_run_page_artifact_asset_lineage_and_deployment_form_in_the_browser(browser, tmp_path_factory):
    from selenium.webdriver.common.by import By

    api = os.environ["PREFECT_API_URL"]
    ui = api[: -len("/api")]
    project = copy_project(tmp_path_factory.mktemp("ui_pages") / "project")
    dbt_changes.add_failing_model(project)
    result = cli(project, "run", "demo", "--execution-date", "2024-02-01")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = flow_run_id(result.stdout)
    summary = json.loads((project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())["results"]

    # The flow run page: its Artifacts tab lists the run summary.
    [artifact] = run_artifacts(run_id)
    browser.get(f"{ui}/runs/flow-run/{run_id}")
    _page_shows(browser, "demo-2024-02-01", "Failed", what="flow run page")
    _click_tab(browser, "artifacts")
    _page_shows(browser, "mage-dbt-run-demo", what="artifacts tab")
    _screenshot(browser, "flow-run-artifacts")

    # The artifact: the block table and, for the failed model, its error and the retry command.
    browser.get(f"{ui}/artifacts/artifact/{artifact.id}")
    _page_shows(browser, "What failed and what to do next", "fct_broken", "Could not convert string",
                f"mage-dbt retry --run {run_id}", "compiled SQL", "skipped", what="run summary artifact")
    _screenshot(browser, "run-summary-artifact")

    # An asset and its lineage: fct_orders' materialization names its upstream assets.
    expected = sum(1 for r in summary.values() if r["kind"] in ("dbt_model", "dbt_seed", "dbt_snapshot")
                   and r["status"] in ("success", "failed")) + 1
    found = materializations(run_id, expected)
    event = found["duckdb://demo/main/fct_orders"]
    ups = sorted(upstream(event))
    assert ups, event
    browser.get(f"{ui}/events/event/{event['occurred'][:10]}/{event['id']}")
    _page_shows(browser, "prefect.asset.materialization.succeeded", "duckdb://demo/main/fct_orders",
                *ups, what="asset materialization event")
    _screenshot(browser, "asset-lineage")

    # The deployment form: the target is a choice of the profile's targets, the date a picker.
    name = unique("ui_form")
    write_pipeline(project, name, description="Shop facts for the form check")
    deployed = cli(project, "deploy", name)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    dep = deployment(name)
    browser.get(f"{ui}/deployments/deployment/{dep.id}/run")
    _page_shows(browser, "Execution date", "dbt target", "one of duckdb, pg", "Full refresh",
                what="deployment run form")
    label = browser.find_element(By.XPATH, "//*[normalize-space(text())='Execution date (Optional)']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", label)
    # The target is a select with the run's default chosen; the date a picker, not a None switch.
    select = browser.find_element(By.XPATH, "//*[normalize-space(text())='dbt target (Optional)']/following::*"
                                            "[self::select or contains(@class, 'p-select')][1]")
    assert "duckdb" in select.text or select.get_attribute("value") == "duckdb", select.get_attribute("outerHTML")[:500]
    assert not browser.find_elements(By.XPATH, "//*[normalize-space(text())='date-time']")  # no type switch
    _screenshot(browser, "deployment-form")
    # Left as it is (no date), the form submits: the run gets the target filled in, no execution date.
    runs = _submit(browser, lambda: flow_runs_of(dep.id))
    assert runs[0].parameters.get("target") == "duckdb" and runs[0].parameters.get("execution_date") is None, \
        runs[0].parameters
