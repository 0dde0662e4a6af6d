{#
  One row per day: orders placed and payments captured on the execution date.
  delete+insert on revenue_date, so re-running a day replaces exactly that day's row.
#}
{{
  config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key='revenue_date',
    on_schema_change='fail'
  )
}}

with orders_placed as (

    select distinct order_id, customer_id
    from {{ ref('stg_orders') }}
    where order_date = {{ execution_date() }}

),

payments_captured as (

    select payment_id, amount
    from {{ ref('stg_payments') }}
    where cast(paid_at as date) = {{ execution_date() }}

)

-- Scalar sub-queries so that a day without any order still gets its (zero) row.
select
    {{ execution_date() }} as revenue_date,
    (select count(*) from orders_placed) as orders_placed,
    (select count(distinct customer_id) from orders_placed) as ordering_customers,
    (select count(*) from payments_captured) as payments_captured,
    cast((select coalesce(sum(amount), 0) from payments_captured) as numeric(12, 2)) as revenue
