-- One row per customer with their paid orders (the ephemeral paid_orders is inlined).
with totals as (
    select customer_id, count(*) as order_count, sum(amount) as revenue,
           max(updated_at) as last_order_at
    from {{ ref('paid_orders') }}
    group by customer_id
)
select c.customer_id, c.name, c.plan,
       coalesce(t.order_count, 0) as order_count,
       coalesce(t.revenue, 0) as revenue,
       t.last_order_at
from {{ ref('stg_customers') }} c
left join totals t on t.customer_id = c.customer_id
