"""refresh_cmds: commands registered on the mage-dbt app (filled in by its feature)."""

from mage_dbt.cli import app  # noqa: F401
