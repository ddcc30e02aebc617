-- Statement stream of dbt-core 1.11.16 + dbt-postgres against tally, captured by
-- scripts/capture-dbt-stream.sh; replayed by tests/it/streams.rs. Each statement is
-- preceded by a line naming the connection (1..n) and the protocol it used.
--- connection 1 simple
select 1
--- connection 2 simple
BEGIN
--- connection 2 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally"} */

    select distinct nspname from pg_namespace
--- connection 3 simple
BEGIN
--- connection 3 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "create_tally_dbtx"} */
create schema if not exists "dbtx"
--- connection 3 simple
COMMIT
--- connection 4 simple
BEGIN
--- connection 4 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx'
--- connection 4 simple
ROLLBACK
--- connection 5 simple
BEGIN
--- connection 5 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx_snapshots"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx_snapshots'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx_snapshots'
--- connection 5 simple
ROLLBACK
--- connection 6 simple
BEGIN
--- connection 6 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "master"} */
select distinct
        dependent_namespace.nspname as dependent_schema,
        dependent_class.relname as dependent_name,
        referenced_namespace.nspname as referenced_schema,
        referenced_class.relname as referenced_name

    -- Query for views: views are entries in pg_class with an entry in pg_rewrite, but we avoid
    -- a seq scan on pg_rewrite by leveraging the fact there is an "internal" row in pg_depend for
    -- the view...
    from pg_class as dependent_class
    join pg_namespace as dependent_namespace on dependent_namespace.oid = dependent_class.relnamespace
    join pg_depend as dependent_depend on dependent_depend.refobjid = dependent_class.oid
        and dependent_depend.classid = 'pg_rewrite'::regclass
        and dependent_depend.refclassid = 'pg_class'::regclass
        and dependent_depend.deptype = 'i'

    -- ... and via pg_depend (that has a row per column, hence the need for "distinct" above, and
    -- making sure to exclude the internal row to avoid a view appearing to depend on itself)...
    join pg_depend as joining_depend on joining_depend.objid = dependent_depend.objid
        and joining_depend.classid = 'pg_rewrite'::regclass
        and joining_depend.refclassid = 'pg_class'::regclass
        and joining_depend.refobjid != dependent_depend.refobjid

    -- ... we can find the tables they query from in pg_class, but excluding system tables. Note we
    -- don't need need to exclude _dependent_ system tables, because they only query from other
    -- system tables, and so are automatically excluded by excluding _referenced_ system tables
    join pg_class as referenced_class on referenced_class.oid = joining_depend.refobjid
    join pg_namespace as referenced_namespace on referenced_namespace.oid = referenced_class.relnamespace
        and referenced_namespace.nspname != 'information_schema'
        and referenced_namespace.nspname not like 'pg\_%'

    order by
        dependent_schema, dependent_name, referenced_schema, referenced_name;
--- connection 6 simple
ROLLBACK
--- connection 6 simple
BEGIN
--- connection 6 simple
COMMIT
--- connection 7 simple
BEGIN
--- connection 7 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "seed.tally_test.raw_customers"} */

    create table "tally"."dbtx"."raw_customers" ("id" integer,"email" text,"plan" text,"signed_up_at" timestamp without time zone)
--- connection 7 simple
insert into "tally"."dbtx"."raw_customers" ("id", "email", "plan", "signed_up_at") values
          (1,'Ann@Example.com','pro','2024-01-03T10:00:00'::timestamp),(2,'bob@example.com','free','2024-01-04T11:30:00'::timestamp),(3,'cy@example.com','pro','2024-02-01T09:15:00'::timestamp),(4,'di@example.com','free','2024-02-02T09:15:00'::timestamp)
--- connection 7 simple
COMMIT
--- connection 8 simple
BEGIN
--- connection 8 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "seed.tally_test.raw_orders"} */

    create table "tally"."dbtx"."raw_orders" ("order_id" integer,"customer_id" integer,"amount" float8,"ordered_at" timestamp without time zone)
--- connection 8 simple
insert into "tally"."dbtx"."raw_orders" ("order_id", "customer_id", "amount", "ordered_at") values
          (10,1,19.99,'2024-02-01T10:00:00'::timestamp),(11,1,5.00,'2024-02-03T10:00:00'::timestamp),(12,2,42.50,'2024-02-04T12:00:00'::timestamp),(13,3,7.25,'2024-02-05T08:00:00'::timestamp)
--- connection 8 simple
COMMIT
--- connection 9 simple
BEGIN
--- connection 9 simple
COMMIT
--- connection 10 simple
BEGIN
--- connection 10 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally"} */

    select distinct nspname from pg_namespace
--- connection 11 simple
BEGIN
--- connection 11 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx'
--- connection 11 simple
ROLLBACK
--- connection 12 simple
BEGIN
--- connection 12 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx_snapshots"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx_snapshots'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx_snapshots'
--- connection 12 simple
ROLLBACK
--- connection 13 simple
BEGIN
--- connection 13 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "master"} */
select distinct
        dependent_namespace.nspname as dependent_schema,
        dependent_class.relname as dependent_name,
        referenced_namespace.nspname as referenced_schema,
        referenced_class.relname as referenced_name

    -- Query for views: views are entries in pg_class with an entry in pg_rewrite, but we avoid
    -- a seq scan on pg_rewrite by leveraging the fact there is an "internal" row in pg_depend for
    -- the view...
    from pg_class as dependent_class
    join pg_namespace as dependent_namespace on dependent_namespace.oid = dependent_class.relnamespace
    join pg_depend as dependent_depend on dependent_depend.refobjid = dependent_class.oid
        and dependent_depend.classid = 'pg_rewrite'::regclass
        and dependent_depend.refclassid = 'pg_class'::regclass
        and dependent_depend.deptype = 'i'

    -- ... and via pg_depend (that has a row per column, hence the need for "distinct" above, and
    -- making sure to exclude the internal row to avoid a view appearing to depend on itself)...
    join pg_depend as joining_depend on joining_depend.objid = dependent_depend.objid
        and joining_depend.classid = 'pg_rewrite'::regclass
        and joining_depend.refclassid = 'pg_class'::regclass
        and joining_depend.refobjid != dependent_depend.refobjid

    -- ... we can find the tables they query from in pg_class, but excluding system tables. Note we
    -- don't need need to exclude _dependent_ system tables, because they only query from other
    -- system tables, and so are automatically excluded by excluding _referenced_ system tables
    join pg_class as referenced_class on referenced_class.oid = joining_depend.refobjid
    join pg_namespace as referenced_namespace on referenced_namespace.oid = referenced_class.relnamespace
        and referenced_namespace.nspname != 'information_schema'
        and referenced_namespace.nspname not like 'pg\_%'

    order by
        dependent_schema, dependent_name, referenced_schema, referenced_name;
--- connection 13 simple
ROLLBACK
--- connection 13 simple
BEGIN
--- connection 13 simple
COMMIT
--- connection 14 simple
BEGIN
--- connection 14 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_append"} */

      
  
    

  create  table "tally"."dbtx"."orders_append"
  
  
    as
  
  (
    
select order_id, customer_id, amount, ordered_at from "tally"."dbtx"."raw_orders"

  );
--- connection 14 simple
COMMIT
--- connection 15 simple
BEGIN
--- connection 15 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_delete_insert"} */

      
  
    

  create  table "tally"."dbtx"."orders_delete_insert"
  
  
    as
  
  (
    
select order_id, customer_id, amount, ordered_at from "tally"."dbtx"."raw_orders"

  );
--- connection 15 simple
COMMIT
--- connection 16 simple
BEGIN
--- connection 16 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_merge"} */

      
  
    

  create  table "tally"."dbtx"."orders_merge"
  
  
    as
  
  (
    
select order_id, customer_id, amount, ordered_at from "tally"."dbtx"."raw_orders"
  );
--- connection 16 simple
COMMIT
--- connection 17 simple
BEGIN
--- connection 17 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */

  create view "tally"."dbtx"."stg_customers__dbt_tmp"
    
    
  as (
    
with __dbt__cte__customers_clean as (

select id as customer_id, lower(email) as email, plan, signed_up_at from "tally"."dbtx"."raw_customers"
) select customer_id, email, plan, signed_up_at from __dbt__cte__customers_clean
  );
--- connection 17 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */
alter table "tally"."dbtx"."stg_customers__dbt_tmp" rename to "stg_customers"
--- connection 17 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */

    
  
  comment on view "tally"."dbtx"."stg_customers" is $dbt_comment_literal_block$Customers, cleaned.$dbt_comment_literal_block$;
--- connection 17 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'stg_customers'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 17 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'stg_customers'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 17 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */

    
  
  
    
    
    comment on column "tally"."dbtx"."stg_customers".customer_id is $dbt_comment_literal_block$The customer's id.$dbt_comment_literal_block$;
  
    
    
    comment on column "tally"."dbtx"."stg_customers".plan is $dbt_comment_literal_block$$dbt_comment_literal_block$;
--- connection 17 simple
COMMIT
--- connection 17 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */
drop view if exists "tally"."dbtx"."stg_customers__dbt_backup" cascade
--- connection 18 simple
BEGIN
--- connection 18 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */

  
    

  create  table "tally"."dbtx"."customer_orders__dbt_tmp"
  
  
    as
  
  (
    
select c.customer_id, c.email, count(o.order_id) as orders, sum(o.amount) as revenue
from "tally"."dbtx"."stg_customers" c left join "tally"."dbtx"."raw_orders" o on o.customer_id = c.customer_id
group by 1, 2
  );
--- connection 18 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */
alter table "tally"."dbtx"."customer_orders__dbt_tmp" rename to "customer_orders"
--- connection 18 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'customer_orders'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 18 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'customer_orders'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 18 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */

    
  
  
    
    
    comment on column "tally"."dbtx"."customer_orders".customer_id is $dbt_comment_literal_block$$dbt_comment_literal_block$;
--- connection 18 simple
COMMIT
--- connection 18 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */
drop table if exists "tally"."dbtx"."customer_orders__dbt_backup" cascade
--- connection 19 simple
BEGIN
--- connection 19 simple
COMMIT
--- connection 20 simple
BEGIN
--- connection 20 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx_snapshots"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx_snapshots'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx_snapshots'
--- connection 20 simple
ROLLBACK
--- connection 21 simple
BEGIN
--- connection 21 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx'
--- connection 21 simple
ROLLBACK
--- connection 22 simple
BEGIN
--- connection 22 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "master"} */
select distinct
        dependent_namespace.nspname as dependent_schema,
        dependent_class.relname as dependent_name,
        referenced_namespace.nspname as referenced_schema,
        referenced_class.relname as referenced_name

    -- Query for views: views are entries in pg_class with an entry in pg_rewrite, but we avoid
    -- a seq scan on pg_rewrite by leveraging the fact there is an "internal" row in pg_depend for
    -- the view...
    from pg_class as dependent_class
    join pg_namespace as dependent_namespace on dependent_namespace.oid = dependent_class.relnamespace
    join pg_depend as dependent_depend on dependent_depend.refobjid = dependent_class.oid
        and dependent_depend.classid = 'pg_rewrite'::regclass
        and dependent_depend.refclassid = 'pg_class'::regclass
        and dependent_depend.deptype = 'i'

    -- ... and via pg_depend (that has a row per column, hence the need for "distinct" above, and
    -- making sure to exclude the internal row to avoid a view appearing to depend on itself)...
    join pg_depend as joining_depend on joining_depend.objid = dependent_depend.objid
        and joining_depend.classid = 'pg_rewrite'::regclass
        and joining_depend.refclassid = 'pg_class'::regclass
        and joining_depend.refobjid != dependent_depend.refobjid

    -- ... we can find the tables they query from in pg_class, but excluding system tables. Note we
    -- don't need need to exclude _dependent_ system tables, because they only query from other
    -- system tables, and so are automatically excluded by excluding _referenced_ system tables
    join pg_class as referenced_class on referenced_class.oid = joining_depend.refobjid
    join pg_namespace as referenced_namespace on referenced_namespace.oid = referenced_class.relnamespace
        and referenced_namespace.nspname != 'information_schema'
        and referenced_namespace.nspname not like 'pg\_%'

    order by
        dependent_schema, dependent_name, referenced_schema, referenced_name;
--- connection 22 simple
ROLLBACK
--- connection 22 simple
BEGIN
--- connection 22 simple
COMMIT
--- connection 23 simple
BEGIN
--- connection 23 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "test.tally_test.accepted_values_stg_customers_plan__pro__free.2944e95d02"} */

    
    select
      count(*) as failures,
      count(*) != 0 as should_warn,
      count(*) != 0 as should_error
    from (
      
    
  
    
    

with all_values as (

    select
        plan as value_field,
        count(*) as n_records

    from "tally"."dbtx"."stg_customers"
    group by plan

)

select *
from all_values
where value_field not in (
    'pro','free'
)



  
  
      
    ) dbt_internal_test
--- connection 23 simple
ROLLBACK
--- connection 24 simple
BEGIN
--- connection 24 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "test.tally_test.not_null_stg_customers_customer_id.e2cfb1f9aa"} */

    
    select
      count(*) as failures,
      count(*) != 0 as should_warn,
      count(*) != 0 as should_error
    from (
      
    
  
    
    



select customer_id
from "tally"."dbtx"."stg_customers"
where customer_id is null



  
  
      
    ) dbt_internal_test
--- connection 24 simple
ROLLBACK
--- connection 25 simple
BEGIN
--- connection 25 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "test.tally_test.relationships_customer_orders_customer_id__customer_id__ref_stg_customers_.36b24f630c"} */

    
    select
      count(*) as failures,
      count(*) != 0 as should_warn,
      count(*) != 0 as should_error
    from (
      
    
  
    
    

with child as (
    select customer_id as from_field
    from "tally"."dbtx"."customer_orders"
    where customer_id is not null
),

parent as (
    select customer_id as to_field
    from "tally"."dbtx"."stg_customers"
)

select
    from_field

from child
left join parent
    on child.from_field = parent.to_field

where parent.to_field is null



  
  
      
    ) dbt_internal_test
--- connection 25 simple
ROLLBACK
--- connection 26 simple
BEGIN
--- connection 26 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "test.tally_test.unique_customer_orders_customer_id.0e9f6da4ce"} */

    
    select
      count(*) as failures,
      count(*) != 0 as should_warn,
      count(*) != 0 as should_error
    from (
      
    
  
    
    

select
    customer_id as unique_field,
    count(*) as n_records

from "tally"."dbtx"."customer_orders"
where customer_id is not null
group by customer_id
having count(*) > 1



  
  
      
    ) dbt_internal_test
--- connection 26 simple
ROLLBACK
--- connection 27 simple
BEGIN
--- connection 27 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "test.tally_test.unique_stg_customers_customer_id.c7614daada"} */

    
    select
      count(*) as failures,
      count(*) != 0 as should_warn,
      count(*) != 0 as should_error
    from (
      
    
  
    
    

select
    customer_id as unique_field,
    count(*) as n_records

from "tally"."dbtx"."stg_customers"
where customer_id is not null
group by customer_id
having count(*) > 1



  
  
      
    ) dbt_internal_test
--- connection 27 simple
ROLLBACK
--- connection 28 simple
BEGIN
--- connection 28 simple
COMMIT
--- connection 29 simple
BEGIN
--- connection 29 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally"} */

    select distinct nspname from pg_namespace
--- connection 30 simple
BEGIN
--- connection 30 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "create_tally_dbtx_snapshots"} */
create schema if not exists "dbtx_snapshots"
--- connection 30 simple
COMMIT
--- connection 31 simple
BEGIN
--- connection 31 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx_snapshots"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx_snapshots'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx_snapshots'
--- connection 31 simple
ROLLBACK
--- connection 32 simple
BEGIN
--- connection 32 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx'
--- connection 32 simple
ROLLBACK
--- connection 33 simple
BEGIN
--- connection 33 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "master"} */
select distinct
        dependent_namespace.nspname as dependent_schema,
        dependent_class.relname as dependent_name,
        referenced_namespace.nspname as referenced_schema,
        referenced_class.relname as referenced_name

    -- Query for views: views are entries in pg_class with an entry in pg_rewrite, but we avoid
    -- a seq scan on pg_rewrite by leveraging the fact there is an "internal" row in pg_depend for
    -- the view...
    from pg_class as dependent_class
    join pg_namespace as dependent_namespace on dependent_namespace.oid = dependent_class.relnamespace
    join pg_depend as dependent_depend on dependent_depend.refobjid = dependent_class.oid
        and dependent_depend.classid = 'pg_rewrite'::regclass
        and dependent_depend.refclassid = 'pg_class'::regclass
        and dependent_depend.deptype = 'i'

    -- ... and via pg_depend (that has a row per column, hence the need for "distinct" above, and
    -- making sure to exclude the internal row to avoid a view appearing to depend on itself)...
    join pg_depend as joining_depend on joining_depend.objid = dependent_depend.objid
        and joining_depend.classid = 'pg_rewrite'::regclass
        and joining_depend.refclassid = 'pg_class'::regclass
        and joining_depend.refobjid != dependent_depend.refobjid

    -- ... we can find the tables they query from in pg_class, but excluding system tables. Note we
    -- don't need need to exclude _dependent_ system tables, because they only query from other
    -- system tables, and so are automatically excluded by excluding _referenced_ system tables
    join pg_class as referenced_class on referenced_class.oid = joining_depend.refobjid
    join pg_namespace as referenced_namespace on referenced_namespace.oid = referenced_class.relnamespace
        and referenced_namespace.nspname != 'information_schema'
        and referenced_namespace.nspname not like 'pg\_%'

    order by
        dependent_schema, dependent_name, referenced_schema, referenced_name;
--- connection 33 simple
ROLLBACK
--- connection 33 simple
BEGIN
--- connection 33 simple
COMMIT
--- connection 34 simple
BEGIN
--- connection 34 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */
select * from (
        
    

    select *,
        md5(coalesce(cast(id as varchar ), '')
         || '|' || coalesce(cast(signed_up_at as varchar ), '')
        ) as dbt_scd_id,
        signed_up_at as dbt_updated_at,
        signed_up_at as dbt_valid_from,
        
  
  coalesce(nullif(signed_up_at, signed_up_at), null)
  as dbt_valid_to
from (
        

select id, email, plan, signed_up_at from "tally"."dbtx"."raw_customers"
    ) sbq



    ) as __dbt_sbq
    where false
    limit 0
--- connection 34 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */
select * from (
        select now()::timestamp without time zone as dbt_snapshot_time
    ) as __dbt_sbq
    where false
    limit 0
--- connection 34 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */

      
  
    

  create  table "tally"."dbtx_snapshots"."customers_snapshot"
  
  
    as
  
  (
    
    

    select *,
        md5(coalesce(cast(id as varchar ), '')
         || '|' || coalesce(cast(signed_up_at as varchar ), '')
        ) as dbt_scd_id,
        signed_up_at as dbt_updated_at,
        signed_up_at as dbt_valid_from,
        
  
  coalesce(nullif(signed_up_at, signed_up_at), null)
  as dbt_valid_to
from (
        

select id, email, plan, signed_up_at from "tally"."dbtx"."raw_customers"
    ) sbq



  );
--- connection 34 simple
COMMIT
--- connection 35 simple
BEGIN
--- connection 35 simple
COMMIT
--- connection 36 simple
BEGIN
--- connection 36 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally"} */

    select distinct nspname from pg_namespace
--- connection 37 simple
BEGIN
--- connection 37 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx_snapshots"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx_snapshots'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx_snapshots'
--- connection 37 simple
ROLLBACK
--- connection 38 simple
BEGIN
--- connection 38 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx'
--- connection 38 simple
ROLLBACK
--- connection 39 simple
BEGIN
--- connection 39 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "master"} */
select distinct
        dependent_namespace.nspname as dependent_schema,
        dependent_class.relname as dependent_name,
        referenced_namespace.nspname as referenced_schema,
        referenced_class.relname as referenced_name

    -- Query for views: views are entries in pg_class with an entry in pg_rewrite, but we avoid
    -- a seq scan on pg_rewrite by leveraging the fact there is an "internal" row in pg_depend for
    -- the view...
    from pg_class as dependent_class
    join pg_namespace as dependent_namespace on dependent_namespace.oid = dependent_class.relnamespace
    join pg_depend as dependent_depend on dependent_depend.refobjid = dependent_class.oid
        and dependent_depend.classid = 'pg_rewrite'::regclass
        and dependent_depend.refclassid = 'pg_class'::regclass
        and dependent_depend.deptype = 'i'

    -- ... and via pg_depend (that has a row per column, hence the need for "distinct" above, and
    -- making sure to exclude the internal row to avoid a view appearing to depend on itself)...
    join pg_depend as joining_depend on joining_depend.objid = dependent_depend.objid
        and joining_depend.classid = 'pg_rewrite'::regclass
        and joining_depend.refclassid = 'pg_class'::regclass
        and joining_depend.refobjid != dependent_depend.refobjid

    -- ... we can find the tables they query from in pg_class, but excluding system tables. Note we
    -- don't need need to exclude _dependent_ system tables, because they only query from other
    -- system tables, and so are automatically excluded by excluding _referenced_ system tables
    join pg_class as referenced_class on referenced_class.oid = joining_depend.refobjid
    join pg_namespace as referenced_namespace on referenced_namespace.oid = referenced_class.relnamespace
        and referenced_namespace.nspname != 'information_schema'
        and referenced_namespace.nspname not like 'pg\_%'

    order by
        dependent_schema, dependent_name, referenced_schema, referenced_name;
--- connection 39 simple
ROLLBACK
--- connection 39 simple
BEGIN
--- connection 39 simple
COMMIT
--- connection 40 simple
BEGIN
--- connection 40 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "seed.tally_test.raw_customers"} */
drop table if exists "tally"."dbtx"."raw_customers" cascade
--- connection 40 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "seed.tally_test.raw_customers"} */

    create table "tally"."dbtx"."raw_customers" ("id" integer,"email" text,"plan" text,"signed_up_at" timestamp without time zone)
--- connection 40 simple
insert into "tally"."dbtx"."raw_customers" ("id", "email", "plan", "signed_up_at") values
          (1,'Ann@Example.com','pro','2024-01-03T10:00:00'::timestamp),(2,'bob@example.com','pro','2024-03-01T08:00:00'::timestamp),(3,'cy@example.com','pro','2024-02-01T09:15:00'::timestamp),(4,'di@example.com','free','2024-02-02T09:15:00'::timestamp)
--- connection 40 simple
COMMIT
--- connection 41 simple
BEGIN
--- connection 41 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "seed.tally_test.raw_orders"} */
drop table if exists "tally"."dbtx"."raw_orders" cascade
--- connection 41 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "seed.tally_test.raw_orders"} */

    create table "tally"."dbtx"."raw_orders" ("order_id" integer,"customer_id" integer,"amount" float8,"ordered_at" timestamp without time zone)
--- connection 41 simple
insert into "tally"."dbtx"."raw_orders" ("order_id", "customer_id", "amount", "ordered_at") values
          (10,1,19.99,'2024-02-01T10:00:00'::timestamp),(11,1,5.00,'2024-02-03T10:00:00'::timestamp),(12,2,45.00,'2024-02-06T12:00:00'::timestamp),(13,3,7.25,'2024-02-05T08:00:00'::timestamp),(14,4,3.00,'2024-02-07T09:00:00'::timestamp)
--- connection 41 simple
COMMIT
--- connection 42 simple
BEGIN
--- connection 42 simple
COMMIT
--- connection 43 simple
BEGIN
--- connection 43 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally"} */

    select distinct nspname from pg_namespace
--- connection 44 simple
BEGIN
--- connection 44 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx'
--- connection 44 simple
ROLLBACK
--- connection 45 simple
BEGIN
--- connection 45 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx_snapshots"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx_snapshots'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx_snapshots'
--- connection 45 simple
ROLLBACK
--- connection 46 simple
BEGIN
--- connection 46 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "master"} */
select distinct
        dependent_namespace.nspname as dependent_schema,
        dependent_class.relname as dependent_name,
        referenced_namespace.nspname as referenced_schema,
        referenced_class.relname as referenced_name

    -- Query for views: views are entries in pg_class with an entry in pg_rewrite, but we avoid
    -- a seq scan on pg_rewrite by leveraging the fact there is an "internal" row in pg_depend for
    -- the view...
    from pg_class as dependent_class
    join pg_namespace as dependent_namespace on dependent_namespace.oid = dependent_class.relnamespace
    join pg_depend as dependent_depend on dependent_depend.refobjid = dependent_class.oid
        and dependent_depend.classid = 'pg_rewrite'::regclass
        and dependent_depend.refclassid = 'pg_class'::regclass
        and dependent_depend.deptype = 'i'

    -- ... and via pg_depend (that has a row per column, hence the need for "distinct" above, and
    -- making sure to exclude the internal row to avoid a view appearing to depend on itself)...
    join pg_depend as joining_depend on joining_depend.objid = dependent_depend.objid
        and joining_depend.classid = 'pg_rewrite'::regclass
        and joining_depend.refclassid = 'pg_class'::regclass
        and joining_depend.refobjid != dependent_depend.refobjid

    -- ... we can find the tables they query from in pg_class, but excluding system tables. Note we
    -- don't need need to exclude _dependent_ system tables, because they only query from other
    -- system tables, and so are automatically excluded by excluding _referenced_ system tables
    join pg_class as referenced_class on referenced_class.oid = joining_depend.refobjid
    join pg_namespace as referenced_namespace on referenced_namespace.oid = referenced_class.relnamespace
        and referenced_namespace.nspname != 'information_schema'
        and referenced_namespace.nspname not like 'pg\_%'

    order by
        dependent_schema, dependent_name, referenced_schema, referenced_name;
--- connection 46 simple
ROLLBACK
--- connection 46 simple
BEGIN
--- connection 46 simple
COMMIT
--- connection 47 simple
BEGIN
--- connection 47 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_append"} */

    
  
    

  create temporary table "orders_append__dbt_tmp050318510449"
  
  
    as
  
  (
    
select order_id, customer_id, amount, ordered_at from "tally"."dbtx"."raw_orders"
 where ordered_at > (select max(ordered_at) from "tally"."dbtx"."orders_append") 
  );
--- connection 47 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_append"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from INFORMATION_SCHEMA.columns
      where table_name = 'orders_append__dbt_tmp050318510449'
        
      order by ordinal_position
--- connection 47 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_append"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'orders_append'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 47 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_append"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'orders_append'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 47 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_append"} */

      insert into "tally"."dbtx"."orders_append" ("order_id", "customer_id", "amount", "ordered_at")
    (
        select "order_id", "customer_id", "amount", "ordered_at"
        from "orders_append__dbt_tmp050318510449"
    )
--- connection 47 simple
COMMIT
--- connection 48 simple
BEGIN
--- connection 48 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_delete_insert"} */

    
  
    

  create temporary table "orders_delete_insert__dbt_tmp050318666048"
  
  
    as
  
  (
    
select order_id, customer_id, amount, ordered_at from "tally"."dbtx"."raw_orders"
 where ordered_at >= (select max(ordered_at) from "tally"."dbtx"."orders_delete_insert") - interval '30 days' 
  );
--- connection 48 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_delete_insert"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from INFORMATION_SCHEMA.columns
      where table_name = 'orders_delete_insert__dbt_tmp050318666048'
        
      order by ordinal_position
--- connection 48 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_delete_insert"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'orders_delete_insert'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 48 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_delete_insert"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'orders_delete_insert'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 48 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_delete_insert"} */

      
        
        
        delete from "tally"."dbtx"."orders_delete_insert" as DBT_INTERNAL_DEST
        where (order_id) in (
            select distinct order_id
            from "orders_delete_insert__dbt_tmp050318666048" as DBT_INTERNAL_SOURCE
        );

    

    insert into "tally"."dbtx"."orders_delete_insert" ("order_id", "customer_id", "amount", "ordered_at")
    (
        select "order_id", "customer_id", "amount", "ordered_at"
        from "orders_delete_insert__dbt_tmp050318666048"
    )
--- connection 48 simple
COMMIT
--- connection 49 simple
BEGIN
--- connection 49 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_merge"} */

    
  
    

  create temporary table "orders_merge__dbt_tmp050318765135"
  
  
    as
  
  (
    
select order_id, customer_id, amount, ordered_at from "tally"."dbtx"."raw_orders"
  );
--- connection 49 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_merge"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from INFORMATION_SCHEMA.columns
      where table_name = 'orders_merge__dbt_tmp050318765135'
        
      order by ordinal_position
--- connection 49 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_merge"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'orders_merge'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 49 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_merge"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'orders_merge'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 49 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.orders_merge"} */

      -- back compat for old kwarg name
  
  
        
            
            
            
            
        
    

    

    merge into "tally"."dbtx"."orders_merge" as DBT_INTERNAL_DEST
        using "orders_merge__dbt_tmp050318765135" as DBT_INTERNAL_SOURCE
        on ((DBT_INTERNAL_SOURCE.order_id = DBT_INTERNAL_DEST.order_id))

    
    when matched then update set
        "order_id" = DBT_INTERNAL_SOURCE."order_id","customer_id" = DBT_INTERNAL_SOURCE."customer_id","amount" = DBT_INTERNAL_SOURCE."amount","ordered_at" = DBT_INTERNAL_SOURCE."ordered_at"
    

    when not matched then insert
        ("order_id", "customer_id", "amount", "ordered_at")
    values
        ("order_id", "customer_id", "amount", "ordered_at")
--- connection 49 simple
COMMIT
--- connection 50 simple
BEGIN
--- connection 50 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */

  create view "tally"."dbtx"."stg_customers__dbt_tmp"
    
    
  as (
    
with __dbt__cte__customers_clean as (

select id as customer_id, lower(email) as email, plan, signed_up_at from "tally"."dbtx"."raw_customers"
) select customer_id, email, plan, signed_up_at from __dbt__cte__customers_clean
  );
--- connection 50 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */
alter table "tally"."dbtx"."stg_customers__dbt_tmp" rename to "stg_customers"
--- connection 50 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */

    
  
  comment on view "tally"."dbtx"."stg_customers" is $dbt_comment_literal_block$Customers, cleaned.$dbt_comment_literal_block$;
--- connection 50 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'stg_customers'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 50 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'stg_customers'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 50 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */

    
  
  
    
    
    comment on column "tally"."dbtx"."stg_customers".customer_id is $dbt_comment_literal_block$The customer's id.$dbt_comment_literal_block$;
  
    
    
    comment on column "tally"."dbtx"."stg_customers".plan is $dbt_comment_literal_block$$dbt_comment_literal_block$;
--- connection 50 simple
COMMIT
--- connection 50 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.stg_customers"} */
drop view if exists "tally"."dbtx"."stg_customers__dbt_backup" cascade
--- connection 51 simple
BEGIN
--- connection 51 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */

  
    

  create  table "tally"."dbtx"."customer_orders__dbt_tmp"
  
  
    as
  
  (
    
select c.customer_id, c.email, count(o.order_id) as orders, sum(o.amount) as revenue
from "tally"."dbtx"."stg_customers" c left join "tally"."dbtx"."raw_orders" o on o.customer_id = c.customer_id
group by 1, 2
  );
--- connection 51 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */
alter table "tally"."dbtx"."customer_orders" rename to "customer_orders__dbt_backup"
--- connection 51 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */
alter table "tally"."dbtx"."customer_orders__dbt_tmp" rename to "customer_orders"
--- connection 51 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'customer_orders'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 51 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'customer_orders'
        
        and table_schema = 'dbtx'
        
      order by ordinal_position
--- connection 51 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */

    
  
  
    
    
    comment on column "tally"."dbtx"."customer_orders".customer_id is $dbt_comment_literal_block$$dbt_comment_literal_block$;
--- connection 51 simple
COMMIT
--- connection 51 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "model.tally_test.customer_orders"} */
drop table if exists "tally"."dbtx"."customer_orders__dbt_backup" cascade
--- connection 52 simple
BEGIN
--- connection 52 simple
COMMIT
--- connection 53 simple
BEGIN
--- connection 53 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally"} */

    select distinct nspname from pg_namespace
--- connection 54 simple
BEGIN
--- connection 54 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx'
--- connection 54 simple
ROLLBACK
--- connection 55 simple
BEGIN
--- connection 55 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx_snapshots"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx_snapshots'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx_snapshots'
--- connection 55 simple
ROLLBACK
--- connection 56 simple
BEGIN
--- connection 56 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "master"} */
select distinct
        dependent_namespace.nspname as dependent_schema,
        dependent_class.relname as dependent_name,
        referenced_namespace.nspname as referenced_schema,
        referenced_class.relname as referenced_name

    -- Query for views: views are entries in pg_class with an entry in pg_rewrite, but we avoid
    -- a seq scan on pg_rewrite by leveraging the fact there is an "internal" row in pg_depend for
    -- the view...
    from pg_class as dependent_class
    join pg_namespace as dependent_namespace on dependent_namespace.oid = dependent_class.relnamespace
    join pg_depend as dependent_depend on dependent_depend.refobjid = dependent_class.oid
        and dependent_depend.classid = 'pg_rewrite'::regclass
        and dependent_depend.refclassid = 'pg_class'::regclass
        and dependent_depend.deptype = 'i'

    -- ... and via pg_depend (that has a row per column, hence the need for "distinct" above, and
    -- making sure to exclude the internal row to avoid a view appearing to depend on itself)...
    join pg_depend as joining_depend on joining_depend.objid = dependent_depend.objid
        and joining_depend.classid = 'pg_rewrite'::regclass
        and joining_depend.refclassid = 'pg_class'::regclass
        and joining_depend.refobjid != dependent_depend.refobjid

    -- ... we can find the tables they query from in pg_class, but excluding system tables. Note we
    -- don't need need to exclude _dependent_ system tables, because they only query from other
    -- system tables, and so are automatically excluded by excluding _referenced_ system tables
    join pg_class as referenced_class on referenced_class.oid = joining_depend.refobjid
    join pg_namespace as referenced_namespace on referenced_namespace.oid = referenced_class.relnamespace
        and referenced_namespace.nspname != 'information_schema'
        and referenced_namespace.nspname not like 'pg\_%'

    order by
        dependent_schema, dependent_name, referenced_schema, referenced_name;
--- connection 56 simple
ROLLBACK
--- connection 56 simple
BEGIN
--- connection 56 simple
COMMIT
--- connection 57 simple
BEGIN
--- connection 57 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'customers_snapshot'
        
        and table_schema = 'dbtx_snapshots'
        
      order by ordinal_position
--- connection 57 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */

        
  
    

  create temporary table "customers_snapshot__dbt_tmp050321778845"
  
  
    as
  
  (
    
    
    with snapshot_query as (

        

select id, email, plan, signed_up_at from "tally"."dbtx"."raw_customers"

    ),

    snapshotted_data as (

        select *, 
    
        id as dbt_unique_key
    

        from "tally"."dbtx_snapshots"."customers_snapshot"
        where
            
                dbt_valid_to is null
            

    ),

    insertions_source_data as (

        select *, 
    
        id as dbt_unique_key
    
,
            signed_up_at as dbt_updated_at,
            signed_up_at as dbt_valid_from,
            
  
  coalesce(nullif(signed_up_at, signed_up_at), null)
  as dbt_valid_to
,
            md5(coalesce(cast(id as varchar ), '')
         || '|' || coalesce(cast(signed_up_at as varchar ), '')
        ) as dbt_scd_id

        from snapshot_query
    ),

    updates_source_data as (

        select *, 
    
        id as dbt_unique_key
    
,
            signed_up_at as dbt_updated_at,
            signed_up_at as dbt_valid_from,
            signed_up_at as dbt_valid_to

        from snapshot_query
    ),

    insertions as (

        select
            'insert' as dbt_change_type,
            source_data.*

        from insertions_source_data as source_data
        left outer join snapshotted_data
            on 
    
        snapshotted_data.dbt_unique_key = source_data.dbt_unique_key
    

            where 
    
        snapshotted_data.dbt_unique_key is null
    

            or (
    
        snapshotted_data.dbt_unique_key is not null
    
 and (
               (snapshotted_data.dbt_valid_from < source_data.signed_up_at)
            )

        )

    ),

    updates as (

        select
            'update' as dbt_change_type,
            source_data.*,
            snapshotted_data.dbt_scd_id

        from updates_source_data as source_data
        join snapshotted_data
            on 
    
        snapshotted_data.dbt_unique_key = source_data.dbt_unique_key
    

        where (
            (snapshotted_data.dbt_valid_from < source_data.signed_up_at)
        )
    )

    select * from insertions
    union all
    select * from updates

  );
--- connection 57 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from INFORMATION_SCHEMA.columns
      where table_name = 'customers_snapshot__dbt_tmp050321778845'
        
      order by ordinal_position
--- connection 57 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'customers_snapshot'
        
        and table_schema = 'dbtx_snapshots'
        
      order by ordinal_position
--- connection 57 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from INFORMATION_SCHEMA.columns
      where table_name = 'customers_snapshot__dbt_tmp050321778845'
        
      order by ordinal_position
--- connection 57 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from "tally".INFORMATION_SCHEMA.columns
      where table_name = 'customers_snapshot'
        
        and table_schema = 'dbtx_snapshots'
        
      order by ordinal_position
--- connection 57 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */

      select
          column_name,
          data_type,
          character_maximum_length,
          numeric_precision,
          numeric_scale

      from INFORMATION_SCHEMA.columns
      where table_name = 'customers_snapshot__dbt_tmp050321778845'
        
      order by ordinal_position
--- connection 57 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */
select * from (
        
    
    with snapshot_query as (

        

select id, email, plan, signed_up_at from "tally"."dbtx"."raw_customers"

    ),

    snapshotted_data as (

        select *, 
    
        id as dbt_unique_key
    

        from "tally"."dbtx_snapshots"."customers_snapshot"
        where
            
                dbt_valid_to is null
            

    ),

    insertions_source_data as (

        select *, 
    
        id as dbt_unique_key
    
,
            signed_up_at as dbt_updated_at,
            signed_up_at as dbt_valid_from,
            
  
  coalesce(nullif(signed_up_at, signed_up_at), null)
  as dbt_valid_to
,
            md5(coalesce(cast(id as varchar ), '')
         || '|' || coalesce(cast(signed_up_at as varchar ), '')
        ) as dbt_scd_id

        from snapshot_query
    ),

    updates_source_data as (

        select *, 
    
        id as dbt_unique_key
    
,
            signed_up_at as dbt_updated_at,
            signed_up_at as dbt_valid_from,
            signed_up_at as dbt_valid_to

        from snapshot_query
    ),

    insertions as (

        select
            'insert' as dbt_change_type,
            source_data.*

        from insertions_source_data as source_data
        left outer join snapshotted_data
            on 
    
        snapshotted_data.dbt_unique_key = source_data.dbt_unique_key
    

            where 
    
        snapshotted_data.dbt_unique_key is null
    

            or (
    
        snapshotted_data.dbt_unique_key is not null
    
 and (
               (snapshotted_data.dbt_valid_from < source_data.signed_up_at)
            )

        )

    ),

    updates as (

        select
            'update' as dbt_change_type,
            source_data.*,
            snapshotted_data.dbt_scd_id

        from updates_source_data as source_data
        join snapshotted_data
            on 
    
        snapshotted_data.dbt_unique_key = source_data.dbt_unique_key
    

        where (
            (snapshotted_data.dbt_valid_from < source_data.signed_up_at)
        )
    )

    select * from insertions
    union all
    select * from updates

    ) as __dbt_sbq
    where false
    limit 0
--- connection 57 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */
select * from (
        select now()::timestamp without time zone as dbt_snapshot_time
    ) as __dbt_sbq
    where false
    limit 0
--- connection 57 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "node_id": "snapshot.tally_test.customers_snapshot"} */

      update "tally"."dbtx_snapshots"."customers_snapshot"
    set dbt_valid_to = DBT_INTERNAL_SOURCE.dbt_valid_to
    from "customers_snapshot__dbt_tmp050321778845" as DBT_INTERNAL_SOURCE
    where DBT_INTERNAL_SOURCE.dbt_scd_id::text = "tally"."dbtx_snapshots"."customers_snapshot".dbt_scd_id::text
      and DBT_INTERNAL_SOURCE.dbt_change_type::text in ('update'::text, 'delete'::text)
      
        and "tally"."dbtx_snapshots"."customers_snapshot".dbt_valid_to is null;
      


    insert into "tally"."dbtx_snapshots"."customers_snapshot" ("id", "email", "plan", "signed_up_at", "dbt_updated_at", "dbt_valid_from", "dbt_valid_to", "dbt_scd_id")
    select DBT_INTERNAL_SOURCE."id",DBT_INTERNAL_SOURCE."email",DBT_INTERNAL_SOURCE."plan",DBT_INTERNAL_SOURCE."signed_up_at",DBT_INTERNAL_SOURCE."dbt_updated_at",DBT_INTERNAL_SOURCE."dbt_valid_from",DBT_INTERNAL_SOURCE."dbt_valid_to",DBT_INTERNAL_SOURCE."dbt_scd_id"
    from "customers_snapshot__dbt_tmp050321778845" as DBT_INTERNAL_SOURCE
    where DBT_INTERNAL_SOURCE.dbt_change_type::text = 'insert'::text;
--- connection 57 simple
COMMIT
--- connection 58 simple
BEGIN
--- connection 58 simple
COMMIT
--- connection 59 simple
BEGIN
--- connection 59 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx_snapshots"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx_snapshots'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx_snapshots'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx_snapshots'
--- connection 59 simple
ROLLBACK
--- connection 60 simple
BEGIN
--- connection 60 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "list_tally_dbtx"} */
select
      'tally' as database,
      tablename as name,
      schemaname as schema,
      'table' as type
    from pg_tables
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      viewname as name,
      schemaname as schema,
      'view' as type
    from pg_views
    where schemaname ilike 'dbtx'
    union all
    select
      'tally' as database,
      matviewname as name,
      schemaname as schema,
      'materialized_view' as type
    from pg_matviews
    where schemaname ilike 'dbtx'
    union all
    select distinct
     'tally' as database,
     proname as name,
     ns.nspname as schema,
     'function' as type
    from pg_proc
     join pg_namespace as ns on pronamespace = ns.oid
    where ns.nspname ilike 'dbtx'
--- connection 60 simple
ROLLBACK
--- connection 61 simple
BEGIN
--- connection 61 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "master"} */
select distinct
        dependent_namespace.nspname as dependent_schema,
        dependent_class.relname as dependent_name,
        referenced_namespace.nspname as referenced_schema,
        referenced_class.relname as referenced_name

    -- Query for views: views are entries in pg_class with an entry in pg_rewrite, but we avoid
    -- a seq scan on pg_rewrite by leveraging the fact there is an "internal" row in pg_depend for
    -- the view...
    from pg_class as dependent_class
    join pg_namespace as dependent_namespace on dependent_namespace.oid = dependent_class.relnamespace
    join pg_depend as dependent_depend on dependent_depend.refobjid = dependent_class.oid
        and dependent_depend.classid = 'pg_rewrite'::regclass
        and dependent_depend.refclassid = 'pg_class'::regclass
        and dependent_depend.deptype = 'i'

    -- ... and via pg_depend (that has a row per column, hence the need for "distinct" above, and
    -- making sure to exclude the internal row to avoid a view appearing to depend on itself)...
    join pg_depend as joining_depend on joining_depend.objid = dependent_depend.objid
        and joining_depend.classid = 'pg_rewrite'::regclass
        and joining_depend.refclassid = 'pg_class'::regclass
        and joining_depend.refobjid != dependent_depend.refobjid

    -- ... we can find the tables they query from in pg_class, but excluding system tables. Note we
    -- don't need need to exclude _dependent_ system tables, because they only query from other
    -- system tables, and so are automatically excluded by excluding _referenced_ system tables
    join pg_class as referenced_class on referenced_class.oid = joining_depend.refobjid
    join pg_namespace as referenced_namespace on referenced_namespace.oid = referenced_class.relnamespace
        and referenced_namespace.nspname != 'information_schema'
        and referenced_namespace.nspname not like 'pg\_%'

    order by
        dependent_schema, dependent_name, referenced_schema, referenced_name;
--- connection 61 simple
ROLLBACK
--- connection 62 simple
BEGIN
--- connection 62 simple
/* {"app": "dbt", "dbt_version": "1.11.16", "profile_name": "tally_test", "target_name": "dev", "connection_name": "tally.information_schema"} */

    
    

    select
        'tally' as table_database,
        sch.nspname as table_schema,
        tbl.relname as table_name,
        case tbl.relkind
            when 'v' then 'VIEW'
            when 'm' then 'MATERIALIZED VIEW'
            else 'BASE TABLE'
        end as table_type,
        tbl_desc.description as table_comment,
        col.attname as column_name,
        col.attnum as column_index,
        pg_catalog.format_type(col.atttypid, col.atttypmod) as column_type,
        col_desc.description as column_comment,
        pg_get_userbyid(tbl.relowner) as table_owner

    from pg_catalog.pg_namespace sch
    join pg_catalog.pg_class tbl on tbl.relnamespace = sch.oid
    join pg_catalog.pg_attribute col on col.attrelid = tbl.oid
    left outer join pg_catalog.pg_description tbl_desc on (tbl_desc.objoid = tbl.oid and tbl_desc.objsubid = 0)
    left outer join pg_catalog.pg_description col_desc on (col_desc.objoid = tbl.oid and col_desc.objsubid = col.attnum)
    where ((upper(sch.nspname) = upper('dbtx') and
           upper(tbl.relname) = upper('raw_orders')) or (upper(sch.nspname) = upper('dbtx') and
           upper(tbl.relname) = upper('orders_delete_insert')) or (upper(sch.nspname) = upper('dbtx') and
           upper(tbl.relname) = upper('raw_customers')) or (upper(sch.nspname) = upper('dbtx_snapshots') and
           upper(tbl.relname) = upper('customers_snapshot')) or (upper(sch.nspname) = upper('dbtx') and
           upper(tbl.relname) = upper('orders_append')) or (upper(sch.nspname) = upper('dbtx') and
           upper(tbl.relname) = upper('customer_orders')) or (upper(sch.nspname) = upper('dbtx') and
           upper(tbl.relname) = upper('orders_merge')) or (upper(sch.nspname) = upper('dbtx') and
           upper(tbl.relname) = upper('stg_customers')))
      and not pg_is_other_temp_schema(sch.oid) -- not a temporary schema belonging to another session
      and tbl.relpersistence in ('p', 'u') -- [p]ermanent table or [u]nlogged table. Exclude [t]emporary tables
      and tbl.relkind in ('r', 'v', 'f', 'p', 'm') -- o[r]dinary table, [v]iew, [f]oreign table, [p]artitioned table, [m]aterialized view. Other values are [i]ndex, [S]equence, [c]omposite type, [t]OAST table
      and col.attnum > 0 -- negative numbers are used for system columns such as oid
      and not col.attisdropped -- column as not been dropped

    order by
        sch.nspname,
        tbl.relname,
        col.attnum
--- connection 62 simple
ROLLBACK
