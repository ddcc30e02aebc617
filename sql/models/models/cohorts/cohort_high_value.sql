-- Example cohort: profiles whose completed orders add up to var('high_value_revenue') (100)
-- or more, highest first.
select profile_id, email, order_count, revenue
from {{ ref('profiles') }}
where revenue >= {{ var('high_value_revenue', 100) }}
