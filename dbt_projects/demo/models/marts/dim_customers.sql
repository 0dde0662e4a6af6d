-- Customer attributes plus their most recent lifetime-value figures.
with latest_ltv as (

    select *
    from {{ ref('customer_ltv_daily') }}
    where as_of_date = (select max(as_of_date) from {{ ref('customer_ltv_daily') }})

)

select
    c.customer_id,
    c.first_name,
    c.last_name,
    c.email,
    c.country_code,
    c.created_at,
    l.as_of_date as ltv_as_of_date,
    coalesce(l.lifetime_orders, 0) as lifetime_orders,
    cast(coalesce(l.lifetime_revenue, 0) as numeric(12, 2)) as lifetime_revenue,
    l.first_order_date,
    l.last_order_date
from {{ ref('stg_customers') }} as c
left join latest_ltv as l
    on l.customer_id = c.customer_id
