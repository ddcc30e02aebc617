-- Sessions from page and screen events: a visitor's (anonymous_id, else user_id) events in
-- time order, a new session whenever var('session_gap_minutes') (30) or more pass without
-- an event.
with events as (
    {% for t in var('session_event_tables', ['pages', 'screens']) %}
    select
        coalesce(anonymous_id, user_id) as visitor_id,
        user_id,
        "timestamp" as event_at
    from {{ source('events', t) }}
    where "timestamp" is not null
      and coalesce(anonymous_id, user_id) is not null
    {% if not loop.last %}union all{% endif %}
    {% endfor %}
),
gaps as (
    select
        visitor_id,
        user_id,
        event_at,
        lag(event_at) over (partition by visitor_id order by event_at) as previous_at
    from events
),
starts as (
    select
        visitor_id,
        user_id,
        event_at,
        case
            when previous_at is null then 1
            when event_at >= previous_at + interval '{{ var("session_gap_minutes", 30) }} minutes' then 1
            else 0
        end as is_session_start
    from gaps
),
numbered as (
    select
        visitor_id,
        user_id,
        event_at,
        sum(is_session_start) over (
            partition by visitor_id order by event_at
            rows between unbounded preceding and current row
        ) as session_number
    from starts
)
select
    visitor_id || '-' || cast(session_number as varchar) as session_id,
    visitor_id,
    max(user_id) as user_id,
    session_number,
    min(event_at) as session_start,
    max(event_at) as session_end,
    count(*) as event_count
from numbered
group by visitor_id, session_number
