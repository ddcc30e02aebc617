-- Identity edges: which identifiers were seen together. anonymous_id <-> user_id from every
-- event, user_id <-> email from identify calls (when an email trait is collected).
{{ config(materialized='view') }}
select distinct 'anonymous_id' as left_type, anonymous_id as left_value,
                'user_id' as right_type, user_id as right_value
from {{ ref('stg_activity') }}
where anonymous_id is not null and user_id is not null
union
select distinct 'anonymous_id', anonymous_id, 'user_id', user_id
from {{ source('events', 'identifies') }}
where anonymous_id is not null and user_id is not null
{% if 'email' in var('profile_traits', []) %}
union
select distinct 'user_id', user_id, 'email', lower(email)
from {{ source('events', 'identifies') }}
where user_id is not null and email is not null
{% endif %}
