"""BigQuery warehouse: load jobs for writes, query jobs (Arrow results) for reads.

append / replace are one load job each (`WRITE_APPEND` / `WRITE_TRUNCATE`; a load job is
atomic). replace_partition loads the rows into a staging table, then runs one multi-statement
transaction `DELETE ... WHERE col = @partition_value; INSERT ... SELECT FROM staging`, so the
partition is swapped atomically whatever the table's partitioning; the staging table is dropped
afterwards. Identifiers reach SQL only backtick-quoted after validation; values are parameters.

Credentials follow dbt-bigquery's `method`s: oauth (application default credentials),
service-account (keyfile), service-account-json (keyfile_json), oauth-secrets.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import uuid
from typing import Any

import pandas as pd
import pyarrow as pa
from google.api_core import exceptions as google_errors
from google.cloud import bigquery

from mage_dbt.errors import BlockError, ConfigError
from mage_dbt.warehouse.base import Frame, Params, WriteMode, WriteRequest, prepare_write
from mage_dbt.warehouse.frames import arrow_family, check_columns, first_line, to_pandas
from mage_dbt.warehouse.profile import TargetConfig, scrub

_BQ_TYPES: dict[str, str] = {
    "int": "INT64", "float": "FLOAT64", "decimal": "NUMERIC", "text": "STRING", "bool": "BOOL",
    "date": "DATE", "timestamp": "DATETIME", "timestamptz": "TIMESTAMP", "time": "TIME",
    "binary": "BYTES", "null": "STRING",
}
_FAMILIES: dict[str, str] = {
    "INTEGER": "int", "INT64": "int", "FLOAT": "float", "FLOAT64": "float",
    "NUMERIC": "decimal", "BIGNUMERIC": "decimal", "DECIMAL": "decimal",
    "BIGDECIMAL": "decimal", "STRING": "text", "BOOLEAN": "bool", "BOOL": "bool",
    "DATE": "date", "DATETIME": "timestamp", "TIMESTAMP": "timestamptz", "TIME": "time",
    "BYTES": "binary",
}
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
_SCOPES = ("https://www.googleapis.com/auth/bigquery",
           "https://www.googleapis.com/auth/cloud-platform")


def bq_quote(name: str, what: str = "identifier") -> str:
    """A backtick-quoted BigQuery identifier; names that could escape the quotes are refused."""
    if not _NAME.match(name):
        raise BlockError(f"invalid BigQuery {what} {name!r} (letters, digits, _ and - only)")
    return f"`{name}`"


def bq_schema(table: pa.Table) -> list[bigquery.SchemaField]:
    fields = []
    for field in table.schema:
        family = arrow_family(field.type)
        if family not in _BQ_TYPES:
            raise BlockError(f"column {field.name!r} has Arrow type {field.type}, which write() "
                             f"cannot load into BigQuery")
        fields.append(bigquery.SchemaField(field.name, _BQ_TYPES[family]))
    return fields


def _param_type(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, int):
        return "INT64"
    if isinstance(value, float):
        return "FLOAT64"
    if isinstance(value, decimal.Decimal):
        return "NUMERIC"
    if isinstance(value, dt.datetime):
        return "TIMESTAMP" if value.tzinfo else "DATETIME"
    if isinstance(value, dt.date):
        return "DATE"
    if isinstance(value, bytes):
        return "BYTES"
    return "STRING"


def query_parameters(params: Params) -> list[bigquery.ScalarQueryParameter]:
    """`@name` parameters from a mapping, `?` parameters from a sequence."""
    if params is None:
        return []
    if isinstance(params, dict) or hasattr(params, "items"):
        return [bigquery.ScalarQueryParameter(k, _param_type(v), v) for k, v in params.items()]
    return [bigquery.ScalarQueryParameter(None, _param_type(v), v) for v in params]


def make_client(target: TargetConfig) -> bigquery.Client:
    """A BigQuery client from the target's dbt-bigquery `method` and fields."""
    import google.auth
    from google.auth import exceptions as auth_errors
    from google.oauth2 import credentials as user_credentials, service_account

    method, scopes = target.get("method"), tuple(target.get("scopes") or _SCOPES)
    try:
        if method == "oauth":
            creds, _ = google.auth.default(scopes=scopes)
        elif method == "service-account":
            creds = service_account.Credentials.from_service_account_file(
                str(target.get("keyfile")), scopes=scopes)
        elif method == "service-account-json":
            creds = service_account.Credentials.from_service_account_info(
                dict(target.get("keyfile_json") or {}), scopes=scopes)
        elif method == "oauth-secrets":
            creds = user_credentials.Credentials(
                token=target.get("token"), refresh_token=target.get("refresh_token"),
                client_id=target.get("client_id"), client_secret=target.get("client_secret"),
                token_uri=target.get("token_uri"), scopes=scopes)
        else:
            raise ConfigError(f"BigQuery target {target.target_name!r}: method {method!r} is not "
                              f"supported (oauth, service-account, service-account-json, "
                              f"oauth-secrets)")
    except (auth_errors.GoogleAuthError, ValueError, OSError) as exc:
        raise ConfigError(f"BigQuery target {target.target_name!r}: cannot load {method} "
                          f"credentials: {scrub(first_line(str(exc)), target.secret_values())}"
                          ) from None
    project = target.get("execution_project") or target.database
    return bigquery.Client(project=project, credentials=creds, location=target.get("location"))


class BigQueryWarehouse:
    """Warehouse I/O on a BigQuery target; `client` may be injected (tests, shared clients)."""

    def __init__(self, target: TargetConfig, client: bigquery.Client | None = None) -> None:
        self.target = target
        self._client = client
        self._owns_client = client is None

    def __enter__(self) -> "BigQueryWarehouse":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        if self._client is None:
            self._client = make_client(self.target)

    def close(self) -> None:
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    @property
    def client(self) -> bigquery.Client:
        self.open()
        assert self._client is not None
        return self._client

    def read_sql(self, query: str, params: Params = None) -> pd.DataFrame:
        """Run `query` (`@name` or `?` parameters) and return the rows via Arrow."""
        config = bigquery.QueryJobConfig(query_parameters=query_parameters(params))
        try:
            return to_pandas(self.client.query(query, job_config=config).to_arrow())
        except google_errors.GoogleAPIError as exc:
            raise BlockError(f"query failed on target {self.target.target_name!r}: "
                             f"{first_line(str(exc))}") from None

    def write(self, data: Frame, table: str, schema: str | None = None,
              mode: WriteMode = "append", partition_column: str | None = None,
              partition_value: Any = None) -> int:
        """Load `data` into `dataset.table` (same modes and guarantees as the SQL adapters)."""
        req = prepare_write(self.target, data, table, schema, mode, partition_column,
                            partition_value)
        ref = self._ref(req.schema, req.table)
        try:
            existing = self._existing(ref)
            if existing is not None and req.mode != "replace":
                check_columns(req.where, existing, req.data)
            if req.mode == "replace_partition" and existing is not None:
                self._replace_partition(req, ref)
            else:
                disposition = "WRITE_TRUNCATE" if req.mode == "replace" else "WRITE_APPEND"
                self._load(req, ref, disposition, with_schema=existing is None or
                           req.mode == "replace")
        except google_errors.GoogleAPIError as exc:
            raise BlockError(f"writing to {req.where} failed: {first_line(str(exc))}") from None
        return req.data.num_rows

    def _ref(self, dataset: str, table: str) -> bigquery.TableReference:
        project = str(self.target.database or self.client.project)
        for name, what in ((project, "project"), (dataset, "dataset"), (table, "table")):
            bq_quote(name, what)
        return bigquery.TableReference(bigquery.DatasetReference(project, dataset), table)

    def _existing(self, ref: bigquery.TableReference) -> dict[str, tuple[str, str]] | None:
        try:
            table = self.client.get_table(ref)
        except google_errors.NotFound:
            return None
        return {f.name: ("other" if f.mode == "REPEATED" else _FAMILIES.get(f.field_type, "other"),
                         f.field_type) for f in table.schema}

    def _load(self, req: WriteRequest, ref: bigquery.TableReference, disposition: str,
              with_schema: bool) -> None:
        config = bigquery.LoadJobConfig(write_disposition=disposition,
                                        create_disposition="CREATE_IF_NEEDED")
        if with_schema:
            config.schema = bq_schema(req.data)
        job = self.client.load_table_from_dataframe(to_pandas(req.data), ref, job_config=config)
        job.result()

    def _replace_partition(self, req: WriteRequest, ref: bigquery.TableReference) -> None:
        stage = bigquery.TableReference(bigquery.DatasetReference(ref.project, ref.dataset_id),
                                        f"_mage_dbt_stage_{req.table}_{uuid.uuid4().hex[:12]}")
        self._load(req, stage, "WRITE_TRUNCATE", with_schema=True)
        target_sql = ".".join(bq_quote(p) for p in (ref.project, ref.dataset_id, ref.table_id))
        stage_sql = ".".join(bq_quote(p) for p in (ref.project, ref.dataset_id, stage.table_id))
        columns = ", ".join(bq_quote(c, "column") for c in req.data.column_names)
        column = bq_quote(str(req.partition_column), "column")
        script = (
            "BEGIN\n  BEGIN TRANSACTION;\n"
            f"  DELETE FROM {target_sql} WHERE {column} = @partition_value;\n"
            f"  INSERT INTO {target_sql} ({columns}) SELECT {columns} FROM {stage_sql};\n"
            "  COMMIT TRANSACTION;\n"
            "EXCEPTION WHEN ERROR THEN\n  ROLLBACK TRANSACTION;\n"
            "  RAISE USING MESSAGE = @@error.message;\nEND;")
        family = arrow_family(req.data.schema.field(str(req.partition_column)).type)
        param = bigquery.ScalarQueryParameter("partition_value", _BQ_TYPES.get(family, "STRING"),
                                              req.partition_value)
        try:
            config = bigquery.QueryJobConfig(query_parameters=[param])
            self.client.query(script, job_config=config).result()
        finally:
            self.client.delete_table(stage, not_found_ok=True)
