"""Shared test infrastructure: one real Prefect server per pytest run, a copy of the demo project per
worker, one PostgreSQL database per worker, and a helper to run the real `mage-dbt` CLI.

The Prefect server is started once by the controlling process (before xdist starts its workers),
and its URL reaches every worker through PREFECT_API_URL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import prefect_server, postgres

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytest_plugins = ["tests.gitsync_fixtures"] if (REPO / "tests" / "gitsync_fixtures.py").exists() else []

_SERVER: prefect_server.PrefectServer | None = None


def pytest_configure(config):
    global _SERVER
    if hasattr(config, "workerinput"):  # xdist worker: the controller already started the server
        return
    if os.environ.get("MAGE_DBT_TEST_NO_PREFECT_SERVER"):
        return
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="mage_dbt_prefect_"))
    _SERVER = prefect_server.start(home)
    os.environ.update(_SERVER.env)


def pytest_unconfigure(config):
    if _SERVER is not None and not hasattr(config, "workerinput"):
        _SERVER.stop()
        shutil.rmtree(_SERVER.home, ignore_errors=True)


@pytest.fixture(scope="session")
def worker_id_str(request) -> str:
    return getattr(request.config, "workerinput", {}).get("workerid", "gw0")


def copy_project(dest: Path) -> Path:
    """A fresh copy of the repository's own mage_dbt project (the demo), without generated files."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("mage_dbt.yaml", "profiles.yml"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("target", "logs", "dbt_packages", "__pycache__", ".mage_dbt")
    shutil.copytree(REPO / "flows", dest / "flows", ignore=ignore)
    (dest / "dbt_projects").mkdir(exist_ok=True)
    shutil.copytree(REPO / "dbt_projects" / "demo", dest / "dbt_projects" / "demo", ignore=ignore)
    return dest


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory) -> Path:
    """A demo project copy whose manifest cache is warm; tests copy it again to stay independent."""
    return copy_project(tmp_path_factory.mktemp("demo_template") / "project")


# Variables that mage_dbt's own code sets in its process (settings, the CLI, the local server): a test
# calling that code in-process must not hand them to the subprocesses of the tests after it on the same
# xdist worker (a leaked MAGE_DBT_DATA_DIR once sent a later test's run to another project's data folder).
PROCESS_ENV = ("MAGE_DBT_DATA_DIR", "MAGE_DBT_PROJECT_DIR", "MAGE_DBT_DBT_EXECUTOR", "DBT_WRITE_JSON",
               "PREFECT_API_URL", "PREFECT_UI_API_URL")


@pytest.fixture(autouse=True)
def _restore_process_env():
    saved = {key: os.environ.get(key) for key in PROCESS_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def demo_project(tmp_path) -> Path:
    """A private copy of the demo project (its own DuckDB file, data folder and cache)."""
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def pg_env(worker_id_str) -> dict[str, str]:
    """Env vars pointing dbt at a fresh PostgreSQL database owned by this pytest worker."""
    with postgres.temporary_database(f"mage_dbt_t_{worker_id_str}_{os.getpid()}") as env:
        yield env


def cli(project: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real `mage-dbt` console script in `project`, as a user would."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("MAGE_DBT_DATA_DIR", None)
    return subprocess.run(
        [str(BIN / "mage-dbt"), *args], cwd=project, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def run_cli():
    return cli
