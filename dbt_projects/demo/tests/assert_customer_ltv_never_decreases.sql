-- Lifetime value is cumulative: for each customer it may only grow from one loaded day to the next.
with ordered as (

    select
        customer_id,
        as_of_date,
        lifetime_revenue,
        lifetime_orders,
        lag(lifetime_revenue) over (partition by customer_id order by as_of_date) as previous_revenue,
        lag(lifetime_orders) over (partition by customer_id order by as_of_date) as previous_orders
    from {{ ref('customer_ltv_daily') }}

)

select *
from ordered
where lifetime_revenue < previous_revenue
   or lifetime_orders < previous_orders
