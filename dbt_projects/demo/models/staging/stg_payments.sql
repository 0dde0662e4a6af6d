select
    payment_id,
    order_id,
    lower(payment_method) as payment_method,
    cast(amount as numeric(10, 2)) as amount,
    cast(paid_at as {{ dbt.type_timestamp() }}) as paid_at
from {{ ref('raw_payments') }}
