"""Project settings: where a mage_dbt project lives and what its `mage_dbt.yaml` says.

A mage_dbt project is a folder holding `mage_dbt.yaml`, `flows/`, `dbt_projects/` and `git_sync/`.
This module finds that folder, validates the settings file, and resolves every path the rest of
the package needs (dbt projects, profiles, the data folder for caches, outputs and DuckDB files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from mage_dbt.errors import ConfigError

SETTINGS_FILE = "mage_dbt.yaml"
PROJECT_DIR_ENV = "MAGE_DBT_PROJECT_DIR"
DATA_DIR_ENV = "MAGE_DBT_DATA_DIR"
DBT_EXECUTOR_ENV = "MAGE_DBT_DBT_EXECUTOR"  # overrides dbt_executor (benchmarks, one-off runs)


class SettingsFile(BaseModel):
    """The validated content of `mage_dbt.yaml`."""

    model_config = ConfigDict(extra="forbid")

    dbt_projects_dir: str = "dbt_projects"
    default_dbt_project: str = "demo"
    profiles_dir: str = "."
    data_dir: str = ".mage_dbt"
    output_retention_days: int = Field(default=14, ge=0)
    target_concurrency: dict[str, PositiveInt] = Field(default_factory=dict)  # dbt target -> most runs at once
    # How dbt runs a group of nodes (mage_dbt.dbt.executor_choice): in this process, the dbt CLI read
    # through its JSON log, a dbt worker process started with the run, or auto (the worker for local
    # backfills on warehouses other than DuckDB, in this process otherwise).
    dbt_executor: Literal["auto", "in_process", "json_log", "worker"] = "auto"


@dataclass(frozen=True)
class ProjectSettings:
    """Absolute paths and options of one mage_dbt project."""

    root: Path
    file: SettingsFile

    @property
    def flows_dir(self) -> Path:
        return self.root / "flows"

    @property
    def dbt_projects_dir(self) -> Path:
        return self.root / self.file.dbt_projects_dir

    @property
    def profiles_dir(self) -> Path:
        override = os.environ.get("DBT_PROFILES_DIR")
        return Path(override).resolve() if override else (self.root / self.file.profiles_dir).resolve()

    @property
    def data_dir(self) -> Path:
        override = os.environ.get(DATA_DIR_ENV)
        return Path(override).resolve() if override else (self.root / self.file.data_dir).resolve()

    @property
    def dbt_executor(self) -> str:
        """How dbt runs node groups: MAGE_DBT_DBT_EXECUTOR, else mage_dbt.yaml's `dbt_executor`
        (checked by mage_dbt.dbt.executor_choice)."""
        return os.environ.get(DBT_EXECUTOR_ENV) or self.file.dbt_executor

    def dbt_project_dir(self, name: str | None = None) -> Path:
        """The folder of dbt project `name` (default: the project's default dbt project)."""
        name = name or self.file.default_dbt_project
        path = self.dbt_projects_dir / name
        if not (path / "dbt_project.yml").is_file():
            available = sorted(
                p.name for p in self.dbt_projects_dir.glob("*") if (p / "dbt_project.yml").is_file()
            )
            raise ConfigError(
                f"dbt project '{name}' not found: no {path / 'dbt_project.yml'}",
                hint=f"available dbt projects: {', '.join(available) or 'none'}",
            )
        return path

    def export_environment(self) -> None:
        """Make the data folder known to dbt profiles (`env_var('MAGE_DBT_DATA_DIR')`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.environ[DATA_DIR_ENV] = str(self.data_dir)


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: env or cwd) holding `mage_dbt.yaml`."""
    if start is None:
        start = Path(os.environ.get(PROJECT_DIR_ENV) or Path.cwd())
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / SETTINGS_FILE).is_file():
            return folder
    raise ConfigError(
        f"no {SETTINGS_FILE} found in {start} or any parent folder",
        hint="run mage-dbt inside a mage_dbt project, pass --project-dir, or create one with `mage-dbt init DIR`",
    )


def load_settings(start: Path | None = None) -> ProjectSettings:
    """Find the project and validate its settings file."""
    root = find_project_root(start)
    path = root / SETTINGS_FILE
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    try:
        settings = SettingsFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: '{field}' {first['msg'].lower()}", hint="see README for the keys") from None
    return ProjectSettings(root=root, file=settings)
