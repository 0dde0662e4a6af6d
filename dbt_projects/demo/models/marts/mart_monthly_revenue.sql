-- Monthly roll-up of the days loaded into fct_daily_revenue.
select
    cast({{ dbt.date_trunc('month', 'revenue_date') }} as date) as revenue_month,
    count(*) as days_loaded,
    sum(orders_placed) as orders_placed,
    sum(payments_captured) as payments_captured,
    cast(sum(revenue) as numeric(14, 2)) as revenue
from {{ ref('fct_daily_revenue') }}
group by 1
