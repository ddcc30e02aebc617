{{ config(materialized='ephemeral') }}

select order_id, customer_id, amount, updated_at
from {{ ref('stg_orders') }}
where amount > {{ var('min_amount') }}
  and status <> 'returned'
