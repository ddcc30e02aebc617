//! tally's SQL function library: validation, PII, enrichment and identity functions as
//! DataFusion functions. It depends on DataFusion only, never on the tally server, so the
//! same functions register in any DataFusion program and on Ballista executors.
//!
//! Modules: [`validate`] (input validation and normalisation), [`pii`] (hashing, masking,
//! redaction), [`transform`] (user agents, URLs, sampling), [`enrich`] (lookups in outside
//! APIs over HTTP), [`identity`] (identity stitching).

pub mod enrich;
pub mod identity;
pub mod pii;
pub mod transform;
pub mod validate;

use datafusion::prelude::SessionContext;

/// Registers every tally function on `ctx`.
pub fn register_all(ctx: &SessionContext) {
    for udf in validate::functions() {
        ctx.register_udf(udf);
    }
    for udf in pii::functions() {
        ctx.register_udf(udf);
    }
    for udf in transform::functions() {
        ctx.register_udf(udf);
    }
    identity::register(ctx);
}
