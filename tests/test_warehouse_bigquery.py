"""BigQuery warehouse I/O with a MOCKED google-cloud-bigquery client.

BigQuery is unreachable from this environment, so these tests replace `bigquery.Client` with an
autospec mock (the only mock in the warehouse tests; DuckDB and Postgres run for real). They
check what would be sent to BigQuery: load job dispositions and schemas, the DELETE + INSERT
transaction script and its parameter for partition replace, the column clash check against the
table's schema, and how query results come back.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import pyarrow as pa
import pytest
from google.api_core import exceptions as google_errors
from google.cloud import bigquery

from mage_dbt.errors import BlockError
from mage_dbt.warehouse import TargetConfig, connect, resolve_target
from mage_dbt.warehouse.bigquery import BigQueryWarehouse

D1 = dt.date(2024, 3, 1)


@pytest.fixture()
def target(tmp_path: Path) -> TargetConfig:
    (tmp_path / "profiles.yml").write_text(textwrap.dedent("""
        bq:
          target: prod
          outputs:
            prod:
              type: bigquery
              method: service-account-json
              project: acme-data
              dataset: analytics
              location: EU
              keyfile_json:
                private_key: "-----BEGIN PRIVATE KEY----- not-a-real-key"
    """))
    return resolve_target(tmp_path, "bq", None)


@pytest.fixture()
def client() -> Any:
    fake = mock.create_autospec(bigquery.Client, instance=True)
    fake.project = "acme-data"
    fake.get_table.side_effect = google_errors.NotFound("no table")
    return fake


def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "id": pd.array([1, 2], dtype="Int64"), "amount": [1.5, None], "name": ["a", None],
        "flag": [True, False], "day": [D1, D1],
        "at": pd.Series([dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)] * 2),
    })


def existing_table(*fields: tuple[str, str]) -> bigquery.Table:
    return bigquery.Table("acme-data.analytics.orders",
                          schema=[bigquery.SchemaField(n, t) for n, t in fields])


def test_connect_builds_the_bigquery_adapter(target: TargetConfig, client: Any) -> None:
    wh = connect(target, client=client)
    assert isinstance(wh, BigQueryWarehouse)
    assert "not-a-real-key" not in repr(target)


def test_append_to_a_missing_table_creates_it_with_mapped_types(target: TargetConfig,
                                                                client: Any) -> None:
    with connect(target, client=client) as wh:
        assert wh.write(frame(), "orders") == 2
    loaded, ref = client.load_table_from_dataframe.call_args.args
    config = client.load_table_from_dataframe.call_args.kwargs["job_config"]
    assert (ref.project, ref.dataset_id, ref.table_id) == ("acme-data", "analytics", "orders")
    assert config.write_disposition == "WRITE_APPEND"
    assert [(f.name, f.field_type) for f in config.schema] == [
        ("id", "INT64"), ("amount", "FLOAT64"), ("name", "STRING"), ("flag", "BOOL"),
        ("day", "DATE"), ("at", "TIMESTAMP")]
    assert list(loaded.columns) == list(frame().columns) and len(loaded) == 2
    client.load_table_from_dataframe.return_value.result.assert_called_once()
    client.query.assert_not_called()


def test_replace_is_one_truncating_load(target: TargetConfig, client: Any) -> None:
    client.get_table.side_effect = None
    client.get_table.return_value = existing_table(("other", "STRING"))
    with connect(target, client=client) as wh:
        wh.write(pa.Table.from_pandas(frame(), preserve_index=False), "raw.orders",
                 mode="replace")
    ref = client.load_table_from_dataframe.call_args.args[1]
    config = client.load_table_from_dataframe.call_args.kwargs["job_config"]
    assert (ref.dataset_id, config.write_disposition) == ("raw", "WRITE_TRUNCATE")
    assert config.schema  # redefines the table, like replace on the SQL warehouses


def test_replace_partition_is_one_delete_insert_transaction(target: TargetConfig,
                                                            client: Any) -> None:
    client.get_table.side_effect = None
    client.get_table.return_value = existing_table(
        ("id", "INTEGER"), ("amount", "FLOAT"), ("name", "STRING"), ("flag", "BOOLEAN"),
        ("day", "DATE"), ("at", "TIMESTAMP"))
    with connect(target, client=client) as wh:
        wh.write(frame(), "orders", mode="replace_partition", partition_column="day",
                 partition_value="2024-03-01")
    stage = client.load_table_from_dataframe.call_args.args[1]
    assert stage.table_id.startswith("_mage_dbt_stage_orders_")
    assert client.load_table_from_dataframe.call_args.kwargs["job_config"].write_disposition \
        == "WRITE_TRUNCATE"
    script = client.query.call_args.args[0]
    assert "BEGIN TRANSACTION;" in script and "COMMIT TRANSACTION;" in script
    assert ("DELETE FROM `acme-data`.`analytics`.`orders` WHERE `day` = @partition_value;"
            in script)
    assert f"FROM `acme-data`.`analytics`.`{stage.table_id}`" in script
    assert "ROLLBACK TRANSACTION" in script
    (param,) = client.query.call_args.kwargs["job_config"].query_parameters
    assert (param.name, param.type_, param.value) == ("partition_value", "DATE", D1)
    client.delete_table.assert_called_once_with(stage, not_found_ok=True)


def test_column_clash_is_refused_before_any_job(target: TargetConfig, client: Any) -> None:
    client.get_table.side_effect = None
    client.get_table.return_value = existing_table(("id", "STRING"), ("day", "DATE"),
                                                   ("note", "STRING"))
    with connect(target, client=client) as wh, pytest.raises(BlockError) as info:
        wh.write(frame(), "orders")
    message = str(info.value)
    assert "cannot write to analytics.orders: columns clash" in message
    assert "missing from the DataFrame: note" in message
    assert "not in the table: amount, name, flag, at" in message
    assert "id (int64 into STRING)" in message
    client.load_table_from_dataframe.assert_not_called()


def test_failed_partition_script_still_drops_the_stage(target: TargetConfig,
                                                       client: Any) -> None:
    client.get_table.side_effect = None
    client.get_table.return_value = existing_table(
        ("id", "INT64"), ("amount", "FLOAT64"), ("name", "STRING"), ("flag", "BOOL"),
        ("day", "DATE"), ("at", "TIMESTAMP"))
    client.query.return_value.result.side_effect = google_errors.BadRequest("quota exceeded")
    with connect(target, client=client) as wh, pytest.raises(BlockError, match="quota exceeded"):
        wh.write(frame(), "orders", mode="replace_partition", partition_column="day",
                 partition_value=D1)
    client.delete_table.assert_called_once()


def test_read_sql_passes_parameters_and_returns_a_frame(target: TargetConfig,
                                                        client: Any) -> None:
    client.query.return_value.to_arrow.return_value = pa.table({"n": pa.array([1, None])})
    with connect(target, client=client) as wh:
        result = wh.read_sql("select n from t where day = @day and k = @k",
                             {"day": D1, "k": "x"})
    assert str(result["n"].dtype) == "Int64" and result["n"].isna().tolist() == [False, True]
    params = client.query.call_args.kwargs["job_config"].query_parameters
    assert [(p.name, p.type_, p.value) for p in params] == [("day", "DATE", D1),
                                                            ("k", "STRING", "x")]


def test_query_errors_and_unsafe_names(target: TargetConfig, client: Any) -> None:
    client.query.side_effect = google_errors.BadRequest("Syntax error: Unexpected end")
    with connect(target, client=client) as wh:
        with pytest.raises(BlockError, match="query failed on target 'prod': .*Syntax error"):
            wh.read_sql("select")
        with pytest.raises(BlockError, match="invalid BigQuery table"):
            wh.write(frame(), "orders`; drop table x; --")
    client.load_table_from_dataframe.assert_not_called()
