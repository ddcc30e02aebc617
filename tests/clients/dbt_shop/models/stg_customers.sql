{{ config(materialized='view') }}
select customer_id, email, plan, signed_up_at from {{ ref('customers_clean') }}
