-- profiles: the unified customer profile, one row per profile_id.
--
-- Runs as plain SQL (tally or any DataFusion session) and, once it exists, under the
-- dbt-style model runner as the model `profiles`.
--
-- Inputs (the names the runner binds; create views with these names to adapt other
-- warehouses):
--   identity_map(identifier_type text, identifier_value text, profile_id text, profile_size bigint)
--       the output of identity_stitch, e.g.
--       CREATE TABLE identity_map AS SELECT * FROM identity_stitch('identity_edges');
--   tracks(anonymous_id text, user_id text, "timestamp" timestamp, event text, revenue double)
--       Segment-style track calls; revenue is the `revenue` property (null when absent);
--       orders are the 'Order Completed' events.
--   identifies(anonymous_id text, user_id text, "timestamp" timestamp,
--              email text, phone text, name text, plan text)
--       Segment-style identify calls with their traits as columns (null when not sent).
--
-- Output columns:
--   profile_id, profile_size,
--   user_ids, emails, phones, anonymous_ids, device_ids   identifiers per type (sorted lists),
--   email, phone, name, plan                               latest traits: per trait the last
--                                                          non-null value by event timestamp,
--   first_seen, last_seen                                  over tracks and identifies,
--   event_count, order_count, revenue                      over tracks.
--
-- An event belongs to the profile of its user_id when that is in the map, else to the
-- profile of its anonymous_id; events whose ids are in no profile are left out.

WITH events AS (
    SELECT anonymous_id, user_id, "timestamp" AS ts, event, revenue,
           CAST(NULL AS text) AS email, CAST(NULL AS text) AS phone,
           CAST(NULL AS text) AS name, CAST(NULL AS text) AS plan,
           true AS is_track
    FROM tracks
    UNION ALL
    SELECT anonymous_id, user_id, "timestamp" AS ts, CAST(NULL AS text) AS event,
           CAST(NULL AS double) AS revenue, email, phone, name, plan,
           false AS is_track
    FROM identifies
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
           last_value(email ORDER BY ts) FILTER (WHERE email IS NOT NULL) AS email,
           last_value(phone ORDER BY ts) FILTER (WHERE phone IS NOT NULL) AS phone,
           last_value(name ORDER BY ts) FILTER (WHERE name IS NOT NULL) AS name,
           last_value(plan ORDER BY ts) FILTER (WHERE plan IS NOT NULL) AS plan
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
       a.email, a.phone, a.name, a.plan,
       a.first_seen, a.last_seen,
       coalesce(a.event_count, 0) AS event_count,
       coalesce(a.order_count, 0) AS order_count,
       coalesce(a.revenue, 0) AS revenue
FROM identifiers i
LEFT JOIN activity a ON a.profile_id = i.profile_id
