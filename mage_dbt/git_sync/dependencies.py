"""Whether a new revision needs `dbt deps`, and carrying installed packages over when it does not.

Every revision is a fresh checkout, so its `dbt_packages/` starts empty. When the package files
(`packages.yml`, `package-lock.yml`, `dependencies.yml`) are unchanged since the current revision,
the packages installed there are copied into the new revision and `dbt deps` is not needed. A
package folder holding symlinks (dbt's `local:` packages) is not copied: those links may point into
the old revision, so the caller re-runs `dbt deps` instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import yaml

from mage_dbt.git_sync.repository import CacheRepository

PACKAGE_FILES = ("packages.yml", "package-lock.yml", "dependencies.yml")
DBT_OUTPUT_DIRS = ("target", "logs", "dbt_packages")


def package_paths(subdirectory: str | None) -> list[str]:
    return [f"{subdirectory}/{name}" if subdirectory else name for name in PACKAGE_FILES]


def excluded_patterns(subdirectory: str | None, marker: str) -> list[str]:
    """What dbt writes into a project folder: not local edits (`info/exclude` syntax, anchored)."""
    prefix = f"/{subdirectory}" if subdirectory else ""
    patterns = [f"/{marker}"]
    patterns += [f"{prefix}/{name}/" for name in DBT_OUTPUT_DIRS]
    patterns.append(f"{prefix}/package-lock.yml")  # written by `dbt deps` when not committed
    return patterns


def packages_install_dir(project_dir: Path) -> Path | None:
    """`packages-install-path` of the dbt project (default `dbt_packages`), if it stays inside it."""
    try:
        config = yaml.safe_load((project_dir / "dbt_project.yml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    value = config.get("packages-install-path", "dbt_packages") if isinstance(config, dict) else None
    if not isinstance(value, str) or "{" in value:
        return None
    relative = PurePosixPath(value)
    if relative.is_absolute() or ".." in relative.parts:
        return None
    return project_dir / relative


def deps_needed(cache: CacheRepository, *, old: str | None, new: str, subdirectory: str | None) -> bool:
    """True when the package files differ between `old` and `new` (or `new` is the first and has some)."""
    paths = package_paths(subdirectory)
    if old is None or not cache.has_commit(old):  # first sync, or the old commit is gone (re-cloned)
        return cache.paths_exist(new, paths)
    return old != new and cache.paths_differ(old, new, paths)


def carry_over_packages(old_project: Path, new_project: Path) -> bool:
    """Copy installed packages from the old revision; False when they cannot be reused as they are."""
    source, target = packages_install_dir(old_project), packages_install_dir(new_project)
    if source is None or target is None or not source.is_dir():
        return True  # nothing installed before: nothing to carry, nothing newly missing
    if target.exists():
        return True
    if any(path.is_symlink() for path in source.rglob("*")):
        return False
    shutil.copytree(source, target, symlinks=True)
    return True
