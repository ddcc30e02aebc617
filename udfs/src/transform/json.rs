//! The JSON functions of `datafusion-functions-json` (0.55, the release line built for
//! DataFusion 55): `json_get`, `json_get_str`, `json_get_int`, `json_get_float`,
//! `json_get_bool`, `json_get_json`, `json_get_array`, `json_as_text`, `json_contains`,
//! `json_length`, `json_object_keys`, `json_from_scalar`, `json_union_to_text`. They parse
//! JSON text with `jiter` without building a document tree, which is what event properties
//! stored as JSON text need.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::SessionContext;
use datafusion_functions_json::udfs;

/// The JSON functions, for registration with the other scalar functions.
pub fn functions() -> Vec<ScalarUDF> {
    [
        udfs::json_get_udf(),
        udfs::json_get_str_udf(),
        udfs::json_get_int_udf(),
        udfs::json_get_float_udf(),
        udfs::json_get_bool_udf(),
        udfs::json_get_json_udf(),
        udfs::json_get_array_udf(),
        udfs::json_as_text_udf(),
        udfs::json_contains_udf(),
        udfs::json_length_udf(),
        udfs::json_object_keys_udf(),
        udfs::json_from_scalar_udf(),
        udfs::json_union_to_text_udf(),
    ]
    .into_iter()
    .map(Arc::unwrap_or_clone)
    .collect()
}

/// Registers the crate's operator support on `ctx` as well: the `->`, `->>` and `?`
/// operators (an expression planner) and the rewrite that turns `json_get(...)::text` into
/// `json_get_str(...)`. These are session-level hooks, not functions, so
/// [`crate::register_all`] cannot add them through [`super::functions`]; a session that
/// wants PostgreSQL-style JSON operators calls this once after `register_all`.
pub fn register_json_operators(ctx: &SessionContext) -> Result<()> {
    let state = ctx.state_ref();
    let mut state = state.write();
    datafusion_functions_json::register_all(&mut *state)
}
