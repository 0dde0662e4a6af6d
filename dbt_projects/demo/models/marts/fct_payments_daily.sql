{#
  Payments captured per day and payment method - a microbatch model (dbt 1.9+).

  dbt splits its work into one batch per day of `paid_date` and filters stg_payments (whose
  `event_time` is paid_at) to each batch's window. mage_dbt passes the run's interval as that
  window: a run for execution date D (re)writes exactly D's batch; `mage-dbt backfill` over
  D1..D2 writes every day of the range in ONE dbt invocation, one batch per day.
  unique_key: dbt-postgres merges each batch on it; dbt-duckdb refuses one (it replaces the
  batch's window).
#}
{%- set merge_key = ['paid_date', 'payment_method'] if target.type == 'postgres' else none -%}
{{
  config(
    materialized='incremental',
    incremental_strategy='microbatch',
    event_time='paid_date',
    batch_size='day',
    begin='2024-01-01',
    lookback=1,
    unique_key=merge_key
  )
}}

select
    cast(paid_at as date) as paid_date,
    payment_method,
    count(*) as payments,
    cast(sum(amount) as numeric(12, 2)) as amount
from {{ ref('stg_payments') }}
group by 1, 2
