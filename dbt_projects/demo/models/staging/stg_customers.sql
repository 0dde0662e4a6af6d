select
    customer_id,
    first_name,
    last_name,
    lower(email) as email,
    upper(country) as country_code,
    cast(created_at as {{ dbt.type_timestamp() }}) as created_at,
    cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at
from {{ ref('raw_customers') }}
