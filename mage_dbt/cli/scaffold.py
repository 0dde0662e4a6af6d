"""`mage-dbt init`: scaffold a new mage_dbt project from the jinja2 templates in templates/init/.

Writes into a new or empty folder only (never overwrites a user's files); everything is rendered
first and written afterwards, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import re
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from mage_dbt.errors import ConfigError

# template name -> path in the new project ({p} = dbt project name)
LAYOUT = {
    "mage_dbt.yaml.j2": "mage_dbt.yaml",
    "profiles.yml.j2": "profiles.yml",
    "flows_example.yaml.j2": "flows/example.yaml",
    "dbt_project.yml.j2": "dbt_projects/{p}/dbt_project.yml",
    "example_model.sql.j2": "dbt_projects/{p}/models/example.sql",
    "repositories.example.yaml.j2": "git_sync/repositories.example.yaml",
    "gitignore.j2": ".gitignore",
    "README.md.j2": "README.md",
}
EMPTY_DIRS = ("examples", "dbt_projects/{p}/seeds", "tests")


def scaffold(directory: Path, dbt_project: str) -> list[Path]:
    """Create the project layout in `directory`; return the files written."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", dbt_project):
        raise ConfigError(
            f"'{dbt_project}' is not a valid dbt project name",
            hint="use lower-case letters, digits and underscores, starting with a letter",
        )
    directory = directory.resolve()
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty", hint="choose a new or empty folder")
    env = Environment(loader=PackageLoader("mage_dbt", "templates/init"), undefined=StrictUndefined,
                      keep_trailing_newline=True)
    rendered = {
        directory / target.format(p=dbt_project): env.get_template(name).render(dbt_project=dbt_project)
        for name, target in LAYOUT.items()
    }
    for path, text in rendered.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in EMPTY_DIRS:
        (directory / folder.format(p=dbt_project)).mkdir(parents=True, exist_ok=True)
    return sorted(rendered)
