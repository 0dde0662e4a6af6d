"""`mage-dbt deploy` against a real Prefect server: schedules with timezones, the parameter form,
the scheduled full-refresh deployment, idempotent re-deploys, removed schedules, bad input, the
generated prefect.yaml registered by `prefect deploy`, and `mage-dbt server` on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml

from tests.conftest import BIN, cli
from tests.support import postgres
from tests.support.deployments import (
    Background, child_env, deployment, flow_runs_of, unique, wait_until, write_pipeline,
)
from tests.support.prefect_server import free_port

BERLIN = {"cron": "0 6 * * *", "timezone": "Europe/Berlin"}
SUNDAY_3AM = {"cron": "0 3 * * sun", "timezone": "Europe/Berlin"}


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The one-line error of a failed CLI call (exit 2, no traceback)."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_deploy_registers_schedules_form_and_full_refresh_variant_idempotently(demo_project):
    name = unique("shop")
    write_pipeline(demo_project, name, description="Daily shop facts", tags=["shop", "daily"],
                   schedule=BERLIN, full_refresh_schedule=SUNDAY_3AM)
    out = _ok(cli(demo_project, "deploy", name))
    assert name in out and f"{name}-full-refresh" in out

    main, full = deployment(name), deployment(f"{name}-full-refresh")
    assert main is not None and full is not None
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in main.schedules] == [("0 6 * * *", "Europe/Berlin", True)]
    assert [(s.schedule.cron, s.schedule.timezone) for s in full.schedules] == [("0 3 * * sun", "Europe/Berlin")]
    # Scheduled runs carry no execution date: the flow uses the run's scheduled time.
    assert main.parameters == {"pipeline": name, "full_refresh": False}
    assert full.parameters == {"pipeline": name, "full_refresh": True}
    assert main.description == "Daily shop facts" and "full refresh" in full.description.lower()
    assert {"mage-dbt", "shop", "daily"} <= set(main.tags) and "full-refresh" in full.tags
    assert main.entrypoint == "mage_dbt.flows.pipeline_flow" and main.enforce_parameter_schema

    # The parameter form: typed fields with readable titles and descriptions; the pipeline is fixed.
    props = main.parameter_openapi_schema["properties"]
    assert props["pipeline"]["enum"] == [name] and props["pipeline"]["readOnly"] is True
    assert (props["execution_date"]["type"], props["execution_date"]["format"]) == ("string", "date-time")
    assert props["full_refresh"]["type"] == "boolean"
    assert {"items": {"type": "string"}, "type": "array"} in props["select"]["anyOf"]
    # The dbt target is a choice among the profile's targets, filled in with the one a run uses.
    assert (props["target"]["type"], props["target"]["enum"]) == ("string", ["duckdb", "pg"])
    assert props["target"]["default"] == "duckdb" and "one of duckdb, pg" in props["target"]["description"]
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    with get_client(sync_client=True) as client, pytest.raises(PrefectHTTPStatusError, match="nosuch"):
        client.create_flow_run_from_deployment(main.id, parameters={"target": "nosuch"})  # not in the profile
    assert any(t.get("type") == "object" for t in props["vars"]["anyOf"])
    titles = {p: props[p]["title"] for p in props}
    assert titles.items() >= {
        "pipeline": "Pipeline", "execution_date": "Execution date", "full_refresh": "Full refresh",
        "select": "Select blocks", "target": "dbt target", "vars": "dbt vars",
    }.items()
    assert all("_" not in t for t in titles.values()), titles  # every field has a readable label
    assert all(len(props[p].get("description", "")) > 20 for p in props), props
    assert "scheduled" in props["execution_date"]["description"]

    # Re-deploying changes nothing: same deployments, one schedule each; a paused one runs again.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.pause_deployment(main.id)  # what stopping `mage-dbt serve` does
    _ok(cli(demo_project, "deploy", name))
    again, full_again = deployment(name), deployment(f"{name}-full-refresh")
    assert (again.id, full_again.id) == (main.id, full.id)
    assert len(again.schedules) == 1 and len(full_again.schedules) == 1
    assert again.paused is False

    # Switch to an interval schedule and drop the full refresh: Prefect follows the file.
    write_pipeline(demo_project, name, schedule={"interval_seconds": 3600, "timezone": "UTC"})
    out = _ok(cli(demo_project, "deploy", name))
    assert "removed" in out
    changed = deployment(name)
    assert changed.id == main.id
    assert [s.schedule.interval for s in changed.schedules] == [timedelta(hours=1)]
    assert deployment(f"{name}-full-refresh") is None

    # No schedule at all: the deployment stays (runnable from the UI) without schedules.
    write_pipeline(demo_project, name)
    _ok(cli(demo_project, "deploy", name))
    assert deployment(name).id == main.id and deployment(name).schedules == []


def test_server_schedules_runs_at_local_times_with_full_refresh_defaults(demo_project):
    """The Prefect scheduler turns the deployed schedules into runs: 06:00 Berlin daily and 03:00
    Berlin on Sundays (with full_refresh true), none carrying an execution date."""
    name = unique("sched")
    write_pipeline(demo_project, name, schedule=BERLIN, full_refresh_schedule=SUNDAY_3AM)
    _ok(cli(demo_project, "deploy", name))
    berlin = ZoneInfo("Europe/Berlin")
    for variant, full_refresh in ((name, False), (f"{name}-full-refresh", True)):
        dep = deployment(variant)
        runs = wait_until(lambda: flow_runs_of(dep.id), 90, f"the scheduler to create runs of {variant}")
        for run in runs:
            local = run.expected_start_time.astimezone(berlin)
            assert (local.hour, local.minute) == ((3, 0) if full_refresh else (6, 0)), local
            if full_refresh:
                assert local.strftime("%a") == "Sun", local
            assert run.state.type.value == "SCHEDULED"
            assert run.parameters == {"pipeline": name, "full_refresh": full_refresh}


@pytest.mark.parametrize(
    "schedule, field, says",
    [
        ({"cron": "61 * * * *"}, "schedule.cron", "not a valid cron expression"),
        ({"cron": "0 6 * * *", "timezone": "Mars/Olympus_Mons"}, "schedule.timezone", "unknown timezone"),
        ({"cron": "0 6 * * *", "interval_seconds": 60}, "schedule", "exactly one of"),
    ],
    ids=["invalid-cron", "unknown-timezone", "cron-and-interval"],
)
def test_bad_schedule_fails_with_file_and_line_before_anything_is_registered(demo_project, schedule, field, says):
    good, bad = unique("good"), unique("bad")
    write_pipeline(demo_project, good, schedule=BERLIN)
    write_pipeline(demo_project, bad, schedule=schedule)
    line = _error_line(cli(demo_project, "deploy", good, bad))
    assert f"flows/{bad}.yaml:" in line and f"'{field}'" in line and says in line, line
    assert deployment(good) is None and deployment(bad) is None


def test_deploy_names_an_unreachable_server_and_how_to_start_one(demo_project):
    url = f"http://127.0.0.1:{free_port()}/api"
    line = _error_line(cli(demo_project, "deploy", env={"PREFECT_API_URL": url}))
    assert url in line and "mage-dbt server" in line and "PREFECT_API_URL" in line, line


def test_deploy_to_a_missing_work_pool_says_how_to_create_it(demo_project):
    pool = unique("nopool")
    write_pipeline(demo_project, unique("p"))
    line = _error_line(cli(demo_project, "deploy", "--work-pool", pool))
    assert f"prefect work-pool create {pool} --type process" in line, line


def test_generated_prefect_yaml_registers_with_prefect_deploy(demo_project, tmp_path):
    """`--prefect-yaml` writes deployments as code; Prefect's own `prefect deploy` registers them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    name, pool = unique("yaml"), unique("pool")
    write_pipeline(demo_project, name, schedule=BERLIN, full_refresh_schedule=SUNDAY_3AM, tags=["shop"])
    target = tmp_path / "deploy" / "prefect.yaml"
    _ok(cli(demo_project, "deploy", name, "--work-pool", pool, "--prefect-yaml", str(target)))
    assert deployment(name) is None  # writing the file registers nothing
    data = yaml.safe_load(target.read_text())
    assert data["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(demo_project)}}]
    entries = {d["name"]: d for d in data["deployments"]}
    assert set(entries) == {name, f"{name}-full-refresh"}
    assert entries[name]["schedules"] == [{"timezone": "Europe/Berlin", "active": True, "cron": "0 6 * * *"}]
    assert entries[f"{name}-full-refresh"]["parameters"] == {"pipeline": name, "full_refresh": True}

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    result = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(target)],
        cwd=demo_project, env=child_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for variant, full_refresh in ((name, False), (f"{name}-full-refresh", True)):
        dep = deployment(variant)
        assert dep is not None and dep.work_pool_name == pool
        assert dep.parameters == {"pipeline": name, "full_refresh": full_refresh}
        assert dep.pull_steps == data["pull"]
        assert dep.job_variables["env"] == {"MAGE_DBT_PROJECT_DIR": str(demo_project)}
    assert deployment(name).schedules[0].schedule.cron == "0 6 * * *"


def test_server_command_keeps_prefect_state_in_postgres(demo_project, tmp_path):
    """`mage-dbt server` with PREFECT_API_DATABASE_CONNECTION_URL: deployments land in PostgreSQL."""
    db = unique("mage_dbt_prefect_db")
    with postgres.temporary_database(db) as pg:
        port = free_port()
        url = f"postgresql+asyncpg://{pg['PGUSER']}@{pg['PGHOST']}:{pg['PGPORT']}/{db}"
        home = tmp_path / "prefect_home"
        home.mkdir()
        env = child_env(PREFECT_HOME=str(home), PREFECT_API_DATABASE_CONNECTION_URL=url)
        server = Background([str(BIN / "mage-dbt"), "server", "--port", str(port)],
                            cwd=tmp_path, env=env, log=tmp_path / "server.log")
        try:
            def healthy():
                server.assert_alive()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                        return r.status == 200
                except OSError:
                    return False

            wait_until(healthy, 180, "the Postgres-backed Prefect server")
            assert f"database: {url}" in server.output()
            name = unique("pgstate")
            write_pipeline(demo_project, name, schedule=BERLIN)
            _ok(cli(demo_project, "deploy", name, env={"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}))
            rows = postgres.query(pg, "select d.name, s.schedule->>'cron' from deployment d "
                                      "join deployment_schedule s on s.deployment_id = d.id")
            assert rows == [(name, "0 6 * * *")]
            assert not (home / "prefect.db").exists()  # nothing went to SQLite
        finally:
            server.stop()


def test_server_command_defaults_to_sqlite_and_points_the_ui_at_its_api(monkeypatch):
    from mage_dbt.deploy.serve import describe_database, mask_password, server_command

    monkeypatch.delenv("PREFECT_UI_API_URL", raising=False)
    argv, env = server_command("0.0.0.0", 4299)
    assert argv[1:] == ["server", "start", "--host", "0.0.0.0", "--port", "4299"] and os.path.isfile(argv[0])
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4299/api"  # the UI calls this server's API
    assert "PREFECT_API_URL" not in env
    assert describe_database({"PREFECT_HOME": "/srv/prefect"}).startswith("SQLite at /srv/prefect/prefect.db")
    assert mask_password("postgresql+asyncpg://u:s3cret@db:5432/p") == "postgresql+asyncpg://u:***@db:5432/p"


def test_prefect_yaml_for_container_pools_runs_in_the_image_project_folder(demo_project, tmp_path):
    name = unique("img")
    write_pipeline(demo_project, name, schedule=BERLIN)
    target = tmp_path / "prefect.yaml"
    image = "registry.example.com/shop/mage-dbt:1.0"
    _ok(cli(demo_project, "deploy", name, "--work-pool", "k8s", "--image", image, "--prefect-yaml", str(target)))
    data = yaml.safe_load(target.read_text())
    assert data["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/mage_dbt/project"}}]
    [entry] = data["deployments"]
    assert entry["work_pool"] == {"name": "k8s", "work_queue_name": None, "job_variables": {
        "env": {"MAGE_DBT_PROJECT_DIR": "/opt/mage_dbt/project"}, "image": image}}
    assert "&id" not in target.read_text()
    assert "--image" in _error_line(cli(demo_project, "deploy", name, "--image", image))
    assert "--work-pool" in _error_line(cli(demo_project, "deploy", name, "--prefect-yaml", str(target)))
