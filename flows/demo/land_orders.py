"""Land the day's orders in the warehouse, where the dbt source `landing.orders` reads them.

`replace_partition` deletes the execution date's rows and inserts the new ones in one
transaction, so re-running a date gives the same table.
"""

if "data_exporter" not in globals():
    from mage_dbt import data_exporter


@data_exporter
def land_orders(orders, *, warehouse, source, execution_date, logger, **kwargs) -> dict:
    landing = source("landing", "orders")
    rows = warehouse.write(orders, landing.table, schema=landing.schema, mode="replace_partition",
                           partition_column="change_date", partition_value=execution_date.date())
    logger.info("landed %d rows in %s", rows, landing)
    return {"table": str(landing), "rows": rows, "partition": execution_date.date().isoformat()}
