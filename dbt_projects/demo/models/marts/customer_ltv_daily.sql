{#
  Lifetime value of every customer as of the execution date: one row per (as_of_date, customer_id).

  Only events on or before the execution date count, so each day's rows depend on that date alone
  and a full refresh followed by a day-by-day rebuild reproduces the table's history exactly.
  delete+insert on as_of_date replaces one day's snapshot at a time.
#}
{{
  config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key='as_of_date',
    on_schema_change='fail'
  )
}}

with customers as (

    select customer_id
    from {{ ref('stg_customers') }}
    where cast(created_at as date) <= {{ execution_date() }}

),

orders as (

    select distinct order_id, customer_id, order_date
    from {{ ref('stg_orders') }}
    where order_date <= {{ execution_date() }}

),

payments as (

    select order_id, amount
    from {{ ref('stg_payments') }}
    where cast(paid_at as date) <= {{ execution_date() }}

)

select
    {{ execution_date() }} as as_of_date,
    c.customer_id,
    count(distinct o.order_id) as lifetime_orders,
    cast(coalesce(sum(p.amount), 0) as numeric(12, 2)) as lifetime_revenue,
    min(o.order_date) as first_order_date,
    max(o.order_date) as last_order_date
from customers as c
left join orders as o
    on o.customer_id = c.customer_id
left join payments as p
    on p.order_id = o.order_id
group by c.customer_id
