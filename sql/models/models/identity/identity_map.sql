-- The identity map: one row per identifier with its profile_id, stitched by tally's
-- identity_stitch over the edges (connected components with priorities and limits).
-- To use a persisted graph instead (CREATE IDENTITY GRAPH people ...), set
-- var('identity_map_relation') to its map, e.g. 'public.people_map'.
{% if var('identity_map_relation', none) %}
select identifier_type, identifier_value, profile_id, profile_size
from {{ var('identity_map_relation') }}
{% else %}
select identifier_type, identifier_value, profile_id, profile_size
from identity_stitch('SELECT left_type, left_value, right_type, right_value FROM {{ ref("identity_edges") }}')
{% endif %}
