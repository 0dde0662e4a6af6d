"""The deployment's parameter form as analysts see it in the Prefect UI: labels, choices, defaults.

Prefect builds the form from the flow's signature and docstring (types, defaults, descriptions).
`describe_parameters` adds, per deployment: a readable title for every field; the dbt target as a
choice among the targets of the pipeline's dbt profile (profiles.yml), filled in with the target a
run uses when left alone (the pipeline's `target:`, else the profile's); the execution date as a
plain date-time field (the UI shows a date picker; left empty, the run uses its scheduled time). The server enforces the schema
(`enforce_parameter_schema`), so a target that is not in the profile is refused before a run exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# How the parameters are labelled in the Prefect UI form (descriptions come from the flow docstring).
PARAMETER_TITLES = {
    "pipeline": "Pipeline",
    "execution_date": "Execution date",
    "full_refresh": "Full refresh",
    "select": "Select blocks",
    "target": "dbt target",
    "vars": "dbt vars",
    "ref": "dbt project revision",
    "full_refresh_select": "Full refresh only",
    "check_drift": "Check drift",
}


def profile_targets(profiles_dir: Path, profile: str) -> list[str]:
    """The target names (outputs) of `profile` in profiles_dir/profiles.yml; [] when unreadable."""
    try:
        data = yaml.safe_load((Path(profiles_dir) / "profiles.yml").read_text()) or {}
        outputs = (data.get(profile) or {}).get("outputs") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    return sorted(str(name) for name in outputs) if isinstance(outputs, dict) else []


def target_choices(settings: Any, pipeline: str) -> tuple[list[str], str | None]:
    """(the profile's targets, the one a run of `pipeline` uses by default) for the form."""
    from mage_dbt.blocks.support import profile_name
    from mage_dbt.errors import MageDbtError
    from mage_dbt.pipelines.spec import dbt_project_ref, load_pipeline_spec
    from mage_dbt.warehouse import resolve_target

    spec = load_pipeline_spec(settings.flows_dir, pipeline)
    ref = dbt_project_ref(settings, spec, None)
    try:
        profile = profile_name(ref.project_dir)
    except MageDbtError:
        return [], None
    names = profile_targets(ref.profiles_dir, profile)
    default = spec.target
    if default is None:
        try:  # the profile's `target:` may use env_var(): render it the way dbt does
            default = resolve_target(ref.profiles_dir, profile, None).target_name
        except MageDbtError:
            default = None
    return names, default if default in names else None


def describe_parameters(schema: Any, targets: list[str], default_target: str | None) -> None:
    """Titles, the target choice and the date field's hints, written into a parameter schema."""
    properties = schema.properties if schema is not None else {}
    for name, field in properties.items():
        field["title"] = PARAMETER_TITLES.get(name) or name.replace("_", " ").capitalize()
    if "target" in properties and targets:
        field = properties["target"]
        choice = {"type": "string", "enum": list(targets)}
        if default_target:  # a plain choice, filled in: the UI shows a select with it chosen
            field.pop("anyOf", None)
            field.update(choice, default=default_target)
        else:
            field["anyOf"] = [choice, {"type": "null"}]
        field["description"] = (f"The dbt target (connection) from profiles.yml: one of {', '.join(targets)}"
                                + (f"; a run uses {default_target} unless you choose another." if default_target
                                   else "; empty means the profile's default."))
    if "execution_date" in properties:
        # A plain date-time field (the UI shows a date picker, not a "date-time | None" switch); left
        # empty it is not sent, and the flow's default (the scheduled time) applies.
        field = properties["execution_date"]
        field.pop("anyOf", None)
        field.pop("default", None)
        field.update(type="string", format="date-time", examples=["2024-02-01T00:00:00Z"])
