"""Expected figures for the demo project, computed from its seed CSVs with pandas (not with dbt)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SEEDS = Path(__file__).resolve().parents[2] / "dbt_projects" / "demo" / "seeds"


def orders() -> pd.DataFrame:
    return pd.read_csv(SEEDS / "raw_orders.csv", parse_dates=["updated_at"])


def customers() -> pd.DataFrame:
    return pd.read_csv(SEEDS / "raw_customers.csv", parse_dates=["created_at"])


def expected_fct_orders_rows(dates: list[str]) -> int:
    """Orders whose status changed on any of `dates` (fct_orders merges them by order_id)."""
    frame = orders()
    changed = frame[frame["updated_at"].dt.strftime("%Y-%m-%d").isin(dates)]
    return changed["order_id"].nunique()


def expected_ltv_rows(dates: list[str]) -> int:
    """customer_ltv_daily: one row per customer existing on each as-of date."""
    frame = customers()
    return sum(int((frame["created_at"].dt.strftime("%Y-%m-%d") <= d).sum()) for d in dates)
