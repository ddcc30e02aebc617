-- Example cohort: profiles seen in the last var('active_days') (7) days. A view, so it is
-- always current; sync it with CREATE SYNC ... AS COPY (SELECT ... FROM cohort_recently_active).
select profile_id, email, last_seen, event_count
from {{ ref('profiles') }}
where last_seen >= now() - interval '{{ var("active_days", 7) }} days'
