{{ config(materialized='table') }}
select c.customer_id, c.email, count(o.order_id) as orders, sum(o.amount) as revenue
from {{ ref('stg_customers') }} c left join {{ ref('raw_orders') }} o on o.customer_id = c.customer_id
group by 1, 2
