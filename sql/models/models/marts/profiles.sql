-- profiles: the unified customer profile, one row per profile_id.
--
-- A model of tally's shipped project (sql/models): run it with `tally models run --project
-- sql/models` or with dbt against `tally serve`.
--
-- Inputs:
--   ref('identity_map')   identifier_type, identifier_value, profile_id, profile_size
--                         (identity_stitch over the identity edges, or a persisted graph's map)
--   source tracks         Segment-style track calls; revenue comes from the order event
--                         table (var('order_event_table'), joined on message_id)
--   source identifies     identify calls, traits as columns: var('profile_traits')
--
-- Output columns:
--   profile_id, profile_size,
--   user_ids, emails, phones, anonymous_ids, device_ids   identifiers per type (sorted lists),
--   one column per trait of var('profile_traits')         latest traits: per trait the last
--                                                          non-null value by event timestamp,
--   first_seen, last_seen                                  over tracks and identifies,
--   event_count, order_count, revenue                      over tracks.
--
-- An event belongs to the profile of its user_id when that is in the map, else to the
-- profile of its anonymous_id; events whose ids are in no profile are left out.
{% set traits = var('profile_traits', ['email', 'phone', 'name', 'plan']) %}
{% set orders = var('order_event_table', 'order_completed') %}

WITH tracks AS (
    SELECT t.anonymous_id, t.user_id, t."timestamp", t.event_text AS event,
           {% if orders %}CAST(o.revenue AS double){% else %}CAST(NULL AS double){% endif %} AS revenue
    FROM {{ source('events', 'tracks') }} t
    {% if orders %}
    LEFT JOIN {{ source('events', 'orders') }} o ON o.message_id = t.message_id
    {% endif %}
),
identity_map AS (
    SELECT * FROM {{ ref('identity_map') }}
),
events AS (
    SELECT anonymous_id, user_id, "timestamp" AS ts, event, revenue,
           {% for t in traits %}CAST(NULL AS text) AS {{ t }},{% endfor %}
           true AS is_track
    FROM tracks
    UNION ALL
    SELECT anonymous_id, user_id, "timestamp" AS ts, CAST(NULL AS text) AS event,
           CAST(NULL AS double) AS revenue,
           {% for t in traits %}CAST({{ t }} AS text) AS {{ t }},{% endfor %}
           false AS is_track
    FROM {{ source('events', 'identifies') }}
),
resolved AS (
    SELECT coalesce(u.profile_id, a.profile_id) AS profile_id, e.*
    FROM events e
    LEFT JOIN identity_map u
           ON u.identifier_type = 'user_id' AND u.identifier_value = e.user_id
    LEFT JOIN identity_map a
           ON a.identifier_type = 'anonymous_id' AND a.identifier_value = e.anonymous_id
),
activity AS (
    SELECT profile_id,
           min(ts) AS first_seen,
           max(ts) AS last_seen,
           count(*) FILTER (WHERE is_track) AS event_count,
           count(*) FILTER (WHERE is_track AND event = 'Order Completed') AS order_count,
           coalesce(sum(revenue) FILTER (WHERE is_track AND event = 'Order Completed'), 0) AS revenue,
           {% for t in traits %}last_value({{ t }} ORDER BY ts) FILTER (WHERE {{ t }} IS NOT NULL) AS {{ t }}{% if not loop.last %},{% endif %}
           {% endfor %}
    FROM resolved
    WHERE profile_id IS NOT NULL
    GROUP BY profile_id
),
identifiers AS (
    SELECT profile_id,
           max(profile_size) AS profile_size,
           array_agg(identifier_value ORDER BY identifier_value) FILTER (WHERE identifier_type = 'user_id') AS user_ids,
           array_agg(identifier_value ORDER BY identifier_value) FILTER (WHERE identifier_type = 'email') AS emails,
           array_agg(identifier_value ORDER BY identifier_value) FILTER (WHERE identifier_type = 'phone') AS phones,
           array_agg(identifier_value ORDER BY identifier_value) FILTER (WHERE identifier_type = 'anonymous_id') AS anonymous_ids,
           array_agg(identifier_value ORDER BY identifier_value) FILTER (WHERE identifier_type = 'device_id') AS device_ids
    FROM identity_map
    GROUP BY profile_id
)
SELECT i.profile_id,
       i.profile_size,
       i.user_ids, i.emails, i.phones, i.anonymous_ids, i.device_ids,
       {% for t in traits %}a.{{ t }},{% endfor %}
       a.first_seen, a.last_seen,
       coalesce(a.event_count, 0) AS event_count,
       coalesce(a.order_count, 0) AS order_count,
       coalesce(a.revenue, 0) AS revenue
FROM identifiers i
LEFT JOIN activity a ON a.profile_id = i.profile_id
