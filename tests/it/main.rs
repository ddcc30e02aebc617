//! Integration tests: one binary (one link on two cores), each module a feature, every test
//! against a real `tally serve` on ephemeral ports through real clients.

mod activate;
mod collect;
mod common;
mod copy_from;
mod cte;
mod destinations_saas;
mod enrich;
mod identity;
mod identity_graph;
mod models;
mod persistence;
mod pull;
mod routes;
mod scheduler;
mod slt;
mod storage;
mod streams;
mod sync_resume;
mod syncs;
mod tracking_plans;
mod wire;
