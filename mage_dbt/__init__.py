"""mage_dbt: dbt-centric pipelines on Prefect. Block files import Mage's decorators from here."""

from mage_dbt.blocks.decorators import data_exporter, data_loader, sensor, test, transformer  # noqa: F401
