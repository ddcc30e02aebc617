-- Daily active users: distinct people with at least one track, page or screen event that
-- day. A person is their profile in the identity map (so a visitor who signs in counts
-- once), else the anonymous visitor.
select
    cast(a.event_at as date) as activity_date,
    count(distinct coalesce(u.profile_id, v.profile_id, a.visitor_id)) as active_users,
    count(distinct a.user_id) as identified_users,
    count(*) as events
from {{ ref('stg_activity') }} a
left join {{ ref('identity_map') }} u
       on u.identifier_type = 'user_id' and u.identifier_value = a.user_id
left join {{ ref('identity_map') }} v
       on v.identifier_type = 'anonymous_id' and v.identifier_value = a.anonymous_id
group by cast(a.event_at as date)
