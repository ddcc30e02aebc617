//! Tracking plans: what a source's events are expected to look like, checked as they arrive.
//!
//! A plan is a JSON document (`CREATE TRACKING PLAN name FROM '<json or url>'`, see
//! [`statements`]):
//!
//! ```json
//! {"events": {"Order Completed": {"type": "object", "required": ["order_id"], ...}},
//!  "identify": {"type": "object", "properties": {"email": {"format": "email"}}},
//!  "group": {...},
//!  "allow_unplanned_events": true}
//! ```
//!
//! Each event name maps to a JSON Schema (draft 2020-12, formats asserted) for the event's
//! `properties`; `identify` and `group` are schemas for the traits of those calls. A track
//! event whose name the plan does not list is an `unplanned_event` violation unless
//! `allow_unplanned_events` is true (the default, as Segment Protocols). Page, screen and
//! alias calls are not checked.
//!
//! `ALTER SOURCE s SET TRACKING PLAN p MODE flag | block` puts a source under a plan. The
//! check runs in the collector's ingest path ([`super::Collector::ingest`]), after a
//! message is normalised and de-duplicated and before it is written to the write-ahead
//! log, so the outcome is part of the durable record: a flagged message carries its
//! violations in the log (and from there to the `violations` column and
//! `<source>._violations`), a blocked one is logged as a rejection (to `<source>._rejected`).
//! Checking before the log rather than in the flusher costs microseconds per message on
//! the ack path, and buys three things: a replay after a crash writes exactly what was
//! decided when the event was acknowledged, even if the plan changed since; real-time routes,
//! which read the log, never forward a blocked event; and `tally.source_stats` counts a
//! blocked event as rejected the moment it arrives. Each plan's schemas are compiled once per
//! plan revision ([`PlanCache`]), never per message.
//!
//! A plan change takes effect on the server that made it with the next request. Another
//! server on the same warehouse sees it when its catalog next refreshes, which its flusher
//! does with every micro-batch, so within about a flush interval while events flow.

pub mod report;
pub mod statements;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::{Map, Value, json};
use tally_udfs::validate::json_schema::{Validator, compile_schema_value, schema_violations};

use super::message::Kind;
use crate::catalog::{CatalogDoc, PlanMode};
use crate::error::{Result, TallyError};

/// The key under which the collector records a checked message's plan outcome in the
/// write-ahead log. A sender's own value under this key is removed first, so it cannot
/// forge or hide violations.
pub const META_KEY: &str = "_tally";

/// Most violations recorded per message; a message far off its plan says enough with these.
pub const MAX_VIOLATIONS: usize = 50;

/// Top-level keys a plan document may have. Unknown keys are refused, so that a typo
/// (`"event"` for `"events"`) is an error at CREATE rather than a plan that checks nothing.
const PLAN_KEYS: &[&str] = &[
    "events",
    "identify",
    "group",
    "allow_unplanned_events",
    "name",
    "description",
    "version",
    "$schema",
];

/// A plan document, parsed and checked: every schema is valid.
#[derive(Debug, Clone)]
pub struct PlanDoc {
    /// JSON Schema of the properties, by event name.
    pub events: Vec<(String, Value)>,
    /// JSON Schema of identify traits.
    pub identify: Option<Value>,
    /// JSON Schema of group traits.
    pub group: Option<Value>,
    /// Whether track events the plan does not list pass.
    pub allow_unplanned_events: bool,
}

fn invalid(message: String) -> TallyError {
    TallyError::InvalidValue {
        code: "22023",
        message,
    }
}

fn schema_of(value: &Value, what: &str) -> Result<()> {
    if !matches!(value, Value::Object(_) | Value::Bool(_)) {
        return Err(invalid(format!(
            "tracking plan: the schema of {what} must be a JSON object (a JSON Schema), got {value}"
        )));
    }
    compile_schema_value(value)
        .map(|_| ())
        .map_err(|e| invalid(format!("tracking plan: the schema of {what} is {e}")))
}

impl PlanDoc {
    /// Parses and checks a plan document. Text that is not JSON is 22P02; a document of the
    /// wrong shape or a schema that does not compile is 22023, naming the event.
    pub fn parse(text: &str) -> Result<PlanDoc> {
        let value: Value = serde_json::from_str(text).map_err(|e| TallyError::InvalidValue {
            code: "22P02",
            message: format!("tracking plan is not valid JSON: {e}"),
        })?;
        let Value::Object(obj) = value else {
            return Err(invalid(
                "tracking plan must be a JSON object with \"events\" (and optionally \"identify\", \"group\", \"allow_unplanned_events\")".into(),
            ));
        };
        if let Some(k) = obj.keys().find(|k| !PLAN_KEYS.contains(&k.as_str())) {
            return Err(invalid(format!(
                "tracking plan: unknown key \"{k}\" (expected {})",
                PLAN_KEYS.join(", ")
            )));
        }
        let mut events = Vec::new();
        match obj.get("events") {
            None | Some(Value::Null) => {}
            Some(Value::Object(ev)) => {
                for (name, schema) in ev {
                    if name.is_empty() {
                        return Err(invalid("tracking plan: an event name is empty".into()));
                    }
                    schema_of(schema, &format!("event \"{name}\""))?;
                    events.push((name.clone(), schema.clone()));
                }
            }
            Some(other) => {
                return Err(invalid(format!(
                    "tracking plan: \"events\" must be an object of event name to JSON Schema, got {other}"
                )));
            }
        }
        let traits = |key: &str| -> Result<Option<Value>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    schema_of(v, &format!("{key} traits"))?;
                    Ok(Some(v.clone()))
                }
            }
        };
        let identify = traits("identify")?;
        let group = traits("group")?;
        let allow_unplanned_events = match obj.get("allow_unplanned_events") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(invalid(format!(
                    "tracking plan: \"allow_unplanned_events\" must be true or false, got {other}"
                )));
            }
        };
        if events.is_empty() && identify.is_none() && group.is_none() {
            return Err(invalid(
                "tracking plan plans nothing: give \"events\", \"identify\" or \"group\"".into(),
            ));
        }
        Ok(PlanDoc {
            events,
            identify,
            group,
            allow_unplanned_events,
        })
    }

    /// The event names the plan lists, in its order.
    pub fn event_names(&self) -> Vec<String> {
        self.events.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// One way a message violates its plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    /// JSON Pointer into the message (`/properties/price`, `/traits/email`, `/event`).
    pub path: String,
    /// The property or trait concerned (`price`, `address.city`, `items[].sku`), or none
    /// for the event as a whole.
    pub property: Option<String>,
    /// What kind of violation: `type`, `required`, `additional_property`,
    /// `unplanned_event`, `enum`, `format`, `pattern`, `minimum`, ...
    pub kind: String,
    /// What is wrong, for people.
    pub message: String,
}

/// A plan with its schemas compiled, ready to check messages.
pub struct CompiledPlan {
    /// The plan's name.
    pub name: String,
    events: HashMap<String, Validator>,
    identify: Option<Validator>,
    group: Option<Validator>,
    allow_unplanned_events: bool,
}

impl std::fmt::Debug for CompiledPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPlan")
            .field("name", &self.name)
            .field("events", &self.events.len())
            .finish()
    }
}

/// The violation kind for a JSON Schema keyword: snake_case, with the property-list
/// keywords named for what they mean to a tracking plan.
fn kind_of(keyword: &str) -> String {
    match keyword {
        "additionalProperties" | "unevaluatedProperties" => "additional_property".into(),
        "falseSchema" => "not_allowed".into(),
        other => super::layout::snake_case(other),
    }
}

/// The property a JSON Pointer inside `properties`/`traits` names: segments joined with `.`,
/// array indices as `[]` (`/items/0/sku` → `items[].sku`), so violations at different
/// positions of an array count as one property. `None` for the object itself.
fn property_of(pointer: &str) -> Option<String> {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) && !out.is_empty() {
            out.push_str("[]");
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    (!out.is_empty()).then_some(out)
}

fn empty_object() -> &'static Value {
    static EMPTY: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Value::Object(Map::new()))
}

impl CompiledPlan {
    /// Compiles every schema of `doc`.
    pub fn compile(name: &str, doc: &PlanDoc) -> Result<CompiledPlan> {
        let compile = |v: &Value, what: &str| {
            compile_schema_value(v)
                .map_err(|e| invalid(format!("tracking plan {name}: the schema of {what} is {e}")))
        };
        let mut events = HashMap::with_capacity(doc.events.len());
        for (event, schema) in &doc.events {
            events.insert(
                event.clone(),
                compile(schema, &format!("event \"{event}\""))?,
            );
        }
        Ok(CompiledPlan {
            name: name.to_string(),
            events,
            identify: doc
                .identify
                .as_ref()
                .map(|v| compile(v, "identify traits"))
                .transpose()?,
            group: doc
                .group
                .as_ref()
                .map(|v| compile(v, "group traits"))
                .transpose()?,
            allow_unplanned_events: doc.allow_unplanned_events,
        })
    }

    /// The ways the normalised message `body` of type `kind` violates the plan (empty when
    /// it conforms or its type is not planned).
    pub fn check(&self, kind: Kind, body: &Map<String, Value>) -> Vec<Violation> {
        match kind {
            Kind::Track => {
                let event = body.get("event").and_then(Value::as_str).unwrap_or("");
                match self.events.get(event) {
                    Some(v) => Self::violations(v, body.get("properties"), "/properties"),
                    None if self.allow_unplanned_events => Vec::new(),
                    None => vec![Violation {
                        path: "/event".into(),
                        property: None,
                        kind: "unplanned_event".into(),
                        message: format!(
                            "event \"{event}\" is not in tracking plan \"{}\"",
                            self.name
                        ),
                    }],
                }
            }
            Kind::Identify => match &self.identify {
                Some(v) => {
                    let traits = super::layout::identify_traits(body);
                    Self::violations(v, traits.as_ref(), "/traits")
                }
                None => Vec::new(),
            },
            Kind::Group => match &self.group {
                Some(v) => Self::violations(v, body.get("traits"), "/traits"),
                None => Vec::new(),
            },
            Kind::Page | Kind::Screen | Kind::Alias => Vec::new(),
        }
    }

    fn violations(validator: &Validator, payload: Option<&Value>, prefix: &str) -> Vec<Violation> {
        let instance = match payload {
            None | Some(Value::Null) => empty_object(),
            Some(v) => v,
        };
        schema_violations(validator, instance, MAX_VIOLATIONS)
            .into_iter()
            .map(|v| Violation {
                property: property_of(&v.path),
                path: format!("{prefix}{}", v.path),
                kind: kind_of(&v.keyword),
                message: v.message,
            })
            .collect()
    }
}

/// The plan a source checks its events against right now.
#[derive(Debug, Clone)]
pub struct ActivePlan {
    /// The compiled plan.
    pub plan: Arc<CompiledPlan>,
    /// Flag or block.
    pub mode: PlanMode,
}

impl ActivePlan {
    /// The log metadata of a flagged message: the plan and its violations (an empty list for
    /// a clean message, so its tables get the `violations` column, null for it).
    pub fn meta(&self, violations: &[Violation]) -> Value {
        json!({"plan": self.plan.name, "violations": violations})
    }

    /// The `_rejected` reason of a blocked message.
    pub fn block_reason(&self, violations: &[Violation]) -> String {
        let mut s = format!("violates tracking plan \"{}\": ", self.plan.name);
        for (i, v) in violations.iter().enumerate() {
            if i > 0 {
                s.push_str("; ");
            }
            s.push_str(&v.path);
            s.push_str(": ");
            s.push_str(&v.message);
        }
        s
    }
}

/// One plan's compiled form: the revision it was compiled from, and the plan (`None` when
/// that revision does not compile).
type CachedPlan = (String, Option<Arc<CompiledPlan>>);

/// Compiled plans by name, each for one revision of its plan: a CREATE OR REPLACE makes a
/// new revision, which is compiled the first time a message needs it.
#[derive(Debug, Default)]
pub struct PlanCache {
    compiled: RwLock<HashMap<String, CachedPlan>>,
}

impl PlanCache {
    /// The plan `source` checks its events against in catalog `doc`, compiled; `None` when
    /// it has none (or its plan cannot be compiled, which is logged once per revision: the
    /// plan was checked at CREATE, so this only happens across versions of the validator,
    /// and events keep flowing unchecked rather than being refused).
    pub fn for_source(&self, doc: &CatalogDoc, source: &str) -> Option<ActivePlan> {
        let sp = doc.sources.get(source)?.tracking_plan.as_ref()?;
        let entry = doc.tracking_plans.get(&sp.plan)?;
        if let Some((rev, plan)) = self.compiled.read().get(&sp.plan)
            && *rev == entry.revision
        {
            return plan.clone().map(|plan| ActivePlan {
                plan,
                mode: sp.mode,
            });
        }
        let compiled = PlanDoc::parse(&entry.plan)
            .and_then(|doc| CompiledPlan::compile(&sp.plan, &doc))
            .map(Arc::new);
        let plan = match compiled {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(plan = %sp.plan, source, error = %e, "tracking plan cannot be compiled; events of the source are not checked");
                None
            }
        };
        self.compiled
            .write()
            .insert(sp.plan.clone(), (entry.revision.clone(), plan.clone()));
        plan.map(|plan| ActivePlan {
            plan,
            mode: sp.mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> CompiledPlan {
        CompiledPlan::compile("p", &PlanDoc::parse(text).expect("plan")).expect("compile")
    }

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    const PLAN: &str = r#"{
        "events": {"Order Completed": {"type": "object", "required": ["order_id"],
            "additionalProperties": false,
            "properties": {"order_id": {"type": "string"}, "total": {"type": "number"},
                "items": {"type": "array", "items": {"type": "object",
                    "properties": {"sku": {"type": "string"}}}}}}},
        "identify": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}},
        "allow_unplanned_events": false}"#;

    #[test]
    fn track_events_are_checked_against_their_schema() {
        let p = plan(PLAN);
        let clean = body(
            json!({"type": "track", "event": "Order Completed", "properties": {"order_id": "o1", "total": 3}}),
        );
        assert!(p.check(Kind::Track, &clean).is_empty());
        let bad = body(json!({"type": "track", "event": "Order Completed",
            "properties": {"total": "3", "coupon": "X", "items": [{"sku": 1}]}}));
        let mut got: Vec<(String, Option<String>, String)> = p
            .check(Kind::Track, &bad)
            .into_iter()
            .map(|v| (v.path, v.property, v.kind))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    "/properties/coupon".into(),
                    Some("coupon".into()),
                    "additional_property".into()
                ),
                (
                    "/properties/items/0/sku".into(),
                    Some("items[].sku".into()),
                    "type".into()
                ),
                (
                    "/properties/order_id".into(),
                    Some("order_id".into()),
                    "required".into()
                ),
                (
                    "/properties/total".into(),
                    Some("total".into()),
                    "type".into()
                ),
            ]
        );
        // No properties at all: checked as an empty object.
        let bare = body(json!({"type": "track", "event": "Order Completed"}));
        assert_eq!(p.check(Kind::Track, &bare)[0].kind, "required");
    }

    #[test]
    fn unplanned_events_and_traits() {
        let p = plan(PLAN);
        let other = body(json!({"type": "track", "event": "Signed Up"}));
        let v = p.check(Kind::Track, &other);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].kind, "unplanned_event");
        assert_eq!(v[0].path, "/event");
        let lenient = plan(r#"{"events": {"A": {}}}"#);
        assert!(lenient.check(Kind::Track, &other).is_empty());

        let id = body(json!({"type": "identify", "context": {"traits": {"email": "nope"}}}));
        let v = p.check(Kind::Identify, &id);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].path.as_str(), v[0].kind.as_str()),
            ("/traits/email", "format")
        );
        assert!(
            p.check(
                Kind::Identify,
                &body(json!({"traits": {"email": "a@example.com"}}))
            )
            .is_empty()
        );
        assert!(p.check(Kind::Page, &body(json!({"name": 1}))).is_empty());
    }

    #[test]
    fn bad_plans_are_refused_naming_the_event() {
        let e = PlanDoc::parse("{").unwrap_err();
        assert_eq!(e.sqlstate(), "22P02");
        let e = PlanDoc::parse(r#"{"events": {"Order Completed": {"type": 12}}}"#).unwrap_err();
        assert_eq!(e.sqlstate(), "22023");
        assert!(e.to_string().contains("Order Completed"), "{e}");
        assert!(PlanDoc::parse(r#"{"event": {}}"#).is_err());
        assert!(PlanDoc::parse(r#"{"events": []}"#).is_err());
        assert!(PlanDoc::parse(r#"{"events": {"A": 3}}"#).is_err());
        assert!(PlanDoc::parse(r#"{"events": {}}"#).is_err());
        assert!(PlanDoc::parse(r#"{"identify": {}, "allow_unplanned_events": "no"}"#).is_err());
        assert!(PlanDoc::parse(r#"{"identify": {"type": "object"}}"#).is_ok());
    }

    #[test]
    fn property_names_from_pointers() {
        assert_eq!(property_of("/price"), Some("price".into()));
        assert_eq!(property_of("/address/city"), Some("address.city".into()));
        assert_eq!(property_of("/items/3/sku"), Some("items[].sku".into()));
        assert_eq!(property_of("/a~1b"), Some("a/b".into()));
        assert_eq!(property_of(""), None);
    }
}
