"""mage_dbt."""
