-- Every page, screen and track event with who sent it, one shape for all event tables.
-- The tables come from var('activity_event_tables') (or session_event_tables for sessions).
{% set tables = var('activity_event_tables', ['tracks', 'pages', 'screens']) %}
{% for t in tables %}
select
    message_id,
    anonymous_id,
    user_id,
    coalesce(anonymous_id, user_id) as visitor_id,
    "timestamp" as event_at,
    '{{ t }}' as event_table
from {{ source('events', t) }}
where "timestamp" is not null
{% if not loop.last %}union all{% endif %}
{% endfor %}
