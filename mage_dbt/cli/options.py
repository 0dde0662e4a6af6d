"""Options shared by several commands, and how they turn into project settings."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mage_dbt.settings import ProjectSettings, load_settings

ProjectDir = typer.Option(
    None, "--project-dir", "-C", help="The mage_dbt project (default: the nearest folder with mage_dbt.yaml)."
)
Target = typer.Option(None, "--target", "-t", help="dbt target from profiles.yml (default: the profile's).")


def settings_for(project_dir: Optional[Path]) -> ProjectSettings:
    settings = load_settings(project_dir)
    settings.export_environment()
    return settings


def parse_vars(items: list[str] | None) -> dict:
    """`--var key=value` pairs; values are read as YAML scalars (numbers, booleans, dates stay typed)."""
    import yaml

    from mage_dbt.errors import ConfigError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--var '{item}' is not KEY=VALUE", hint="e.g. --var region=eu")
        out[key.strip()] = yaml.safe_load(value) if value else ""
    return out
