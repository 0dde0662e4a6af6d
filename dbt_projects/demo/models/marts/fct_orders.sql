{#
  Current state of every order, upserted from the day's status changes.

  merge on order_id: an order placed on one day and shipped on another is first inserted, then
  updated in place. Postgres supports MERGE from version 15 (dbt-postgres uses it for this
  strategy); dbt-duckdb supports it on DuckDB >= 1.4.
#}
{{
  config(
    materialized='incremental',
    incremental_strategy='merge',
    unique_key='order_id',
    on_schema_change='fail'
  )
}}

with changes_of_the_day as (

    select
        order_id,
        customer_id,
        order_date,
        status,
        updated_at,
        row_number() over (partition by order_id order by updated_at desc) as change_rank
    from {{ ref('stg_orders') }}
    where cast(updated_at as date) = {{ execution_date() }}

),

payments_so_far as (

    select
        order_id,
        sum(amount) as amount_paid,
        count(*) as payment_count
    from {{ ref('stg_payments') }}
    where cast(paid_at as date) <= {{ execution_date() }}
    group by order_id

)

select
    c.order_id,
    c.customer_id,
    c.order_date,
    c.status,
    c.updated_at as status_updated_at,
    cast(coalesce(p.amount_paid, 0) as numeric(12, 2)) as amount_paid,
    coalesce(p.payment_count, 0) as payment_count,
    {{ execution_date() }} as loaded_for_date
from changes_of_the_day as c
left join payments_so_far as p
    on p.order_id = c.order_id
where c.change_rank = 1
