{{ config(materialized='table') }}

-- Summary of the orders landed by the demo pipeline, one row per landed day.
select
    change_date,
    count(*) as status_changes,
    count(case when status = 'placed' then 1 end) as orders_placed,
    count(case when status = 'cancelled' then 1 end) as orders_cancelled,
    max(updated_at) as last_change_at
from {{ source('landing', 'orders') }}
group by change_date
