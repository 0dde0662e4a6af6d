-- Payments are never negative, so no day, month or customer may show negative revenue.
select 'fct_daily_revenue' as model, cast(revenue_date as {{ dbt.type_string() }}) as row_key, revenue
from {{ ref('fct_daily_revenue') }}
where revenue < 0

union all

select 'mart_monthly_revenue', cast(revenue_month as {{ dbt.type_string() }}), revenue
from {{ ref('mart_monthly_revenue') }}
where revenue < 0

union all

select 'customer_ltv_daily', cast(customer_id as {{ dbt.type_string() }}), lifetime_revenue
from {{ ref('customer_ltv_daily') }}
where lifetime_revenue < 0
