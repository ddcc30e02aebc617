{{ config(materialized='ephemeral') }}
select id as customer_id, lower(email) as email, plan, signed_up_at from {{ ref('raw_customers') }}
