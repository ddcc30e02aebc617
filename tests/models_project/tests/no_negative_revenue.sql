-- Singular test: rows returned are failures.
select customer_id, revenue
from {{ ref('customer_orders') }}
where revenue < 0
