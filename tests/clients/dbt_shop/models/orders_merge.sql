{{ config(materialized='incremental', unique_key='order_id', incremental_strategy='merge') }}
select order_id, customer_id, amount, ordered_at from {{ ref('raw_orders') }}
