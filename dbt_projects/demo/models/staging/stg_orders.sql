-- One row per order status change; an order has several rows over its life.
select
    order_id,
    customer_id,
    cast(order_date as date) as order_date,
    lower(status) as status,
    cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at
from {{ ref('raw_orders') }}
