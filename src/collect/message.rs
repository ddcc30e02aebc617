//! One tracking-API message: validation and normalisation as the Segment HTTP Tracking API
//! specifies them (and the RudderStack data plane repeats). A message that passes comes out
//! with `type`, `messageId`, `receivedAt`, `sentAt`, `originalTimestamp` and a skew-corrected
//! `timestamp` filled in, ready for the write-ahead log; one that fails comes out as a
//! [`Rejection`] with the reason, which goes to `<source>._rejected`, never to the floor.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// Largest message the Tracking API accepts (32 KB).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Largest batch request the Tracking API accepts (500 KB).
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// The message types of the tracking spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `track`: a user action, with `event` and `properties`.
    Track,
    /// `identify`: who the user is, with `traits`.
    Identify,
    /// `page`: a web page view.
    Page,
    /// `screen`: a mobile screen view.
    Screen,
    /// `group`: the user joins an account, with `groupId` and `traits`.
    Group,
    /// `alias`: `previousId` and `userId` are the same person.
    Alias,
}

impl Kind {
    /// Parses the `type` field (case-insensitive, as SDKs differ).
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s.to_ascii_lowercase().as_str() {
            "track" => Kind::Track,
            "identify" => Kind::Identify,
            "page" => Kind::Page,
            "screen" => Kind::Screen,
            "group" => Kind::Group,
            "alias" => Kind::Alias,
            _ => return None,
        })
    }

    /// The spec's name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Track => "track",
            Kind::Identify => "identify",
            Kind::Page => "page",
            Kind::Screen => "screen",
            Kind::Group => "group",
            Kind::Alias => "alias",
        }
    }

    /// The warehouse table of every message of this type.
    pub fn table(self) -> &'static str {
        match self {
            Kind::Track => "tracks",
            Kind::Identify => "identifies",
            Kind::Page => "pages",
            Kind::Screen => "screens",
            Kind::Group => "groups",
            Kind::Alias => "aliases",
        }
    }
}

/// Why a message cannot be stored as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// A short machine-readable code (`missing_id`, `too_large`, ...).
    pub code: &'static str,
    /// What is wrong, for the sender and for `_rejected.reason`.
    pub message: String,
}

impl Rejection {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

/// A message that passed validation, in its normalised form.
#[derive(Debug, Clone)]
pub struct Normalized {
    /// The message type.
    pub kind: Kind,
    /// The messageId (given or generated).
    pub message_id: String,
    /// Whether the sender gave the messageId (only those are de-duplicated).
    pub id_given: bool,
    /// The full message, with the server's fields filled in.
    pub body: Map<String, Value>,
}

/// Fields of a batch request that apply to each of its messages unless a message has its own.
#[derive(Debug, Clone, Default)]
pub struct BatchDefaults {
    /// The batch's `sentAt`.
    pub sent_at: Option<Value>,
    /// The batch's `context`, merged under each message's own.
    pub context: Option<Map<String, Value>>,
}

/// Formats a time as the tracking spec does (RFC 3339, UTC, milliseconds).
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 / ISO 8601 timestamp as SDKs send them.
pub fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    let s = v.as_str()?;
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // Some SDKs omit the zone ("2024-05-01T10:00:00.000"), meaning UTC.
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

/// An id field as text: SDKs send user ids as strings or numbers.
fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Validates and normalises one message. `kind` is the type the endpoint implies (`None`
/// for `/v1/batch`, where each message carries its own); `raw_len` is the message's size
/// in bytes as received.
pub fn normalize(
    value: Value,
    kind: Option<Kind>,
    defaults: &BatchDefaults,
    received_at: DateTime<Utc>,
    raw_len: usize,
) -> Result<Normalized, Rejection> {
    if raw_len > MAX_MESSAGE_BYTES {
        return Err(Rejection::new(
            "too_large",
            format!("message is {raw_len} bytes, over the limit of {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let Value::Object(mut body) = value else {
        return Err(Rejection::new(
            "invalid_message",
            "message is not a JSON object",
        ));
    };
    let kind = match kind {
        Some(k) => k,
        None => match body.get("type") {
            Some(Value::String(t)) => Kind::parse(t).ok_or_else(|| {
                Rejection::new("invalid_type", format!("unknown message type '{t}'"))
            })?,
            _ => return Err(Rejection::new("invalid_type", "message has no type")),
        },
    };
    body.insert("type".into(), Value::String(kind.as_str().into()));

    for field in ["userId", "anonymousId", "previousId", "groupId"] {
        if let Some(v) = body.get(field) {
            match id_text(Some(v)) {
                Some(s) => {
                    body.insert(field.into(), Value::String(s));
                }
                None if v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty()) => {
                    body.remove(field);
                }
                None => {
                    return Err(Rejection::new(
                        "invalid_id",
                        format!("{field} must be a string or a number"),
                    ));
                }
            }
        }
    }
    if !body.contains_key("userId") && !body.contains_key("anonymousId") {
        return Err(Rejection::new(
            "missing_id",
            "message has neither userId nor anonymousId",
        ));
    }
    match kind {
        Kind::Track => match body.get("event") {
            Some(Value::String(e)) if !e.trim().is_empty() => {}
            _ => {
                return Err(Rejection::new(
                    "missing_event",
                    "track message has no event name",
                ));
            }
        },
        Kind::Group if !body.contains_key("groupId") => {
            return Err(Rejection::new(
                "missing_group_id",
                "group message has no groupId",
            ));
        }
        Kind::Alias if !body.contains_key("previousId") || !body.contains_key("userId") => {
            return Err(Rejection::new(
                "missing_id",
                "alias message needs both previousId and userId",
            ));
        }
        _ => {}
    }
    for field in ["properties", "traits", "context"] {
        match body.get(field) {
            None | Some(Value::Object(_)) => {}
            Some(Value::Null) => {
                body.remove(field);
            }
            Some(_) => {
                return Err(Rejection::new(
                    "invalid_message",
                    format!("{field} must be a JSON object"),
                ));
            }
        }
    }
    // The batch's context fills in what the message's own context lacks.
    if let Some(ctx) = &defaults.context {
        let own = body
            .entry("context")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(own) = own {
            for (k, v) in ctx {
                own.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }

    let (message_id, id_given) = match id_text(body.get("messageId")) {
        Some(id) => (id, true),
        None => (uuid::Uuid::new_v4().to_string(), false),
    };
    body.insert("messageId".into(), Value::String(message_id.clone()));

    // Clock-skew correction, as the spec describes: the device's clock may be wrong, but the
    // time between the event and sending it is right, so
    // timestamp = receivedAt - (sentAt - originalTimestamp).
    let original = match body
        .get("originalTimestamp")
        .or_else(|| body.get("timestamp"))
    {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_time(v).ok_or_else(|| {
            Rejection::new(
                "invalid_timestamp",
                format!("timestamp {v} is not an ISO 8601 time"),
            )
        })?),
    };
    let sent_at = match body.get("sentAt").or(defaults.sent_at.as_ref()) {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_time(v).ok_or_else(|| {
            Rejection::new(
                "invalid_timestamp",
                format!("sentAt {v} is not an ISO 8601 time"),
            )
        })?),
    };
    let timestamp = match (original, sent_at) {
        (Some(o), Some(s)) => received_at - (s - o),
        (Some(o), None) => o,
        (None, _) => received_at,
    };
    body.insert("receivedAt".into(), Value::String(format_time(received_at)));
    body.insert("timestamp".into(), Value::String(format_time(timestamp)));
    body.insert(
        "originalTimestamp".into(),
        Value::String(format_time(original.unwrap_or(timestamp))),
    );
    match sent_at {
        Some(s) => body.insert("sentAt".into(), Value::String(format_time(s))),
        None => body.remove("sentAt"),
    };
    // The write key is a credential: it never reaches the tables.
    body.remove("writeKey");
    Ok(Normalized {
        kind,
        message_id,
        id_given,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        parse_time(&json!(s)).expect("valid time")
    }

    #[test]
    fn skew_is_corrected_from_sent_at() {
        let msg = json!({"userId": "u1", "event": "E", "timestamp": "2024-01-01T00:00:00.000Z",
            "sentAt": "2024-01-01T00:00:10.000Z"});
        let received = at("2024-01-01T01:00:10.000Z");
        let n = normalize(
            msg,
            Some(Kind::Track),
            &BatchDefaults::default(),
            received,
            10,
        )
        .expect("valid");
        assert_eq!(n.body["timestamp"], "2024-01-01T01:00:00.000Z");
        assert_eq!(n.body["originalTimestamp"], "2024-01-01T00:00:00.000Z");
        assert_eq!(n.body["receivedAt"], "2024-01-01T01:00:10.000Z");
    }

    #[test]
    fn batch_sent_at_applies_and_missing_message_id_is_generated() {
        let defaults = BatchDefaults {
            sent_at: Some(json!("2024-01-01T00:00:05.000Z")),
            context: None,
        };
        let msg = json!({"type": "identify", "anonymousId": "a", "timestamp": "2024-01-01T00:00:00.000Z"});
        let n = normalize(msg, None, &defaults, at("2024-01-01T00:00:05.000Z"), 10).expect("ok");
        assert_eq!(n.kind, Kind::Identify);
        assert!(!n.id_given);
        assert_eq!(n.message_id.len(), 36);
        assert_eq!(n.body["timestamp"], "2024-01-01T00:00:00.000Z");
    }

    #[test]
    fn rejections_name_the_problem() {
        let now = Utc::now();
        let d = BatchDefaults::default();
        let r = normalize(json!({"event": "E"}), Some(Kind::Track), &d, now, 5).unwrap_err();
        assert_eq!(r.code, "missing_id");
        let r = normalize(json!({"userId": "u"}), Some(Kind::Track), &d, now, 5).unwrap_err();
        assert_eq!(r.code, "missing_event");
        let r = normalize(json!({"userId": "u", "type": "nope"}), None, &d, now, 5).unwrap_err();
        assert_eq!(r.code, "invalid_type");
        let r = normalize(json!({"userId": "u"}), Some(Kind::Alias), &d, now, 5).unwrap_err();
        assert_eq!(r.code, "missing_id");
        let r = normalize(
            json!({"userId": "u", "event": "E"}),
            Some(Kind::Track),
            &d,
            now,
            40_000,
        )
        .unwrap_err();
        assert_eq!(r.code, "too_large");
        let r = normalize(
            json!({"userId": "u", "event": "E", "timestamp": "yesterday"}),
            Some(Kind::Track),
            &d,
            now,
            5,
        )
        .unwrap_err();
        assert_eq!(r.code, "invalid_timestamp");
    }

    #[test]
    fn numeric_user_ids_become_text_and_write_key_is_dropped() {
        let n = normalize(
            json!({"userId": 42, "event": "E", "writeKey": "secret"}),
            Some(Kind::Track),
            &BatchDefaults::default(),
            Utc::now(),
            5,
        )
        .expect("ok");
        assert_eq!(n.body["userId"], "42");
        assert!(!n.body.contains_key("writeKey"));
    }
}
