"""Load the day's raw orders: the order status changes that happened on the execution date.

A stand-in for an API or a production database: it reads the demo shop's order change log
(the `raw_orders` seed of dbt_projects/demo) and keeps the rows of the execution date.
"""

from pathlib import Path

import pandas as pd

if "data_loader" not in globals():
    from mage_dbt import data_loader, test

CHANGE_LOG = Path(__file__).resolve().parents[2] / "dbt_projects" / "demo" / "seeds" / "raw_orders.csv"


@data_loader
def load_orders(*, execution_date, logger, **kwargs) -> pd.DataFrame:
    changes = pd.read_csv(CHANGE_LOG, parse_dates=["updated_at"])
    day = execution_date.date()
    orders = changes[changes["updated_at"].dt.date == day].copy()
    orders["order_date"] = pd.to_datetime(orders["order_date"]).dt.date
    orders["change_date"] = day
    logger.info("%d order status changes on %s", len(orders), day)
    return orders.reset_index(drop=True)


@test
def test_one_day_only(output, *, execution_date, **kwargs) -> None:
    assert (output["change_date"] == execution_date.date()).all(), "rows of another day"
    assert output["order_id"].notna().all(), "order_id is missing"
