{% snapshot customers_snapshot %}
{{ config(unique_key='id', strategy='timestamp', updated_at='signed_up_at') }}
select id, email, plan, signed_up_at from {{ ref('raw_customers') }}
{% endsnapshot %}
