select
    id as customer_id,
    name,
    lower(email) as email,
    plan
from {{ ref('customers') }}
