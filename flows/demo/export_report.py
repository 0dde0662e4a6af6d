"""Write the day's revenue report as Parquet: <data folder>/reports/demo/revenue_<date>.parquet."""

import os

if "data_exporter" not in globals():
    from mage_dbt import data_exporter, test


@data_exporter
def export_report(reconciliation, *, execution_date, data_dir, **kwargs) -> dict:
    folder = data_dir / "reports" / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"revenue_{execution_date:%Y-%m-%d}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    reconciliation.to_parquet(tmp, index=False)
    os.replace(tmp, path)  # readers never see half a report
    return {"path": str(path), "rows": len(reconciliation)}


@test
def test_report_written(output, **kwargs) -> None:
    assert output["rows"] == 1, f"expected one row for the day, got {output['rows']}"
    assert os.path.isfile(output["path"])
