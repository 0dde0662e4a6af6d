-- Reconcile the dbt revenue fact with the landed orders: every order placed on the execution
-- date must have landed. Written in Postgres' dialect (`::date`); on DuckDB, sqlglot translates it.
-- The block option `check: reconciled` fails the block when a row is not reconciled.
select
    r.revenue_date,
    r.orders_placed,
    coalesce(l.orders_placed, 0) as landed_orders_placed,
    coalesce(l.status_changes, 0) as landed_status_changes,
    r.payments_captured,
    r.revenue,
    r.orders_placed = coalesce(l.orders_placed, 0) as reconciled
from {{ ref('fct_daily_revenue') }} as r
left join {{ ref('landed_orders_daily') }} as l
    on l.change_date = r.revenue_date
where r.revenue_date = '{{ execution_date }}'::date
