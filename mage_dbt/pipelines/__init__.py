"""Pipelines: the pipeline file format, the resolved pipeline with its execution units, its picture.

* `spec` — `flows/<name>.yaml` validated with pydantic (errors with file and line), and the dbt
  project a pipeline uses; `schedules` — checking a file's schedule values as Prefect will;
* `pipeline` — a spec plus a manifest become a validated DAG of blocks grouped into units;
* `graph` — an SVG / offline HTML picture of a pipeline DAG.
"""
