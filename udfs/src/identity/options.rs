//! Options of `identity_stitch`: which identifier names a profile, how many identifiers of a
//! type one profile may hold, which values are junk, when an identifier is too shared to
//! merge, and which edge kinds are explicit merges.
//!
//! Options arrive as a JSON object (the second argument of `identity_stitch`). Every key is
//! optional; an unknown key is an error, so that a typo never silently falls back to a
//! default:
//!
//! ```json
//! {
//!   "priority":          ["user_id", "email", "phone", "device_id", "anonymous_id"],
//!   "limits":            {"user_id": 1, "email": 5, "phone": 3},
//!   "blocklist":         ["test@example.com"]  or  {"*": ["guest"], "email": ["test@example.com"]},
//!   "default_blocklist": true,
//!   "max_degree":        100  or  {"*": 100, "user_id": 1000}  or  null,
//!   "merge_edges":       [["user_id", "user_id"]]
//! }
//! ```
//!
//! `limits: null` (or `{}`), `max_degree: null` and `default_blocklist: false` switch the
//! respective protection off; with all three off, `identity_stitch` computes plain connected
//! components.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Values that never identify anyone, refused for every identifier type unless
/// `default_blocklist` is false. Compared after trimming and ASCII lower-casing. Values made
/// only of `0` and `-` (all-zero ids such as the zero UUID or an all-zero IDFA) are refused
/// as well.
pub const DEFAULT_BLOCKLIST: &[&str] = &["", "null", "undefined", "anonymous", "0", "-1"];

/// The default identifier-type priority: the first listed type that a profile holds names
/// the profile (see [`crate::identity::IdentityGraph`] for the profile id rule).
pub const DEFAULT_PRIORITY: &[&str] = &["user_id", "email", "phone", "device_id", "anonymous_id"];

/// Default per-profile limits, as Segment Unify applies them: one user id (a second one
/// joins only through an explicit merge edge), a few emails and phones.
pub const DEFAULT_LIMITS: &[(&str, u32)] = &[("user_id", 1), ("email", 5), ("phone", 3)];

/// Default maximum number of distinct neighbours of one identifier. A kiosk device or a
/// shared test account touches hundreds of people; a real device or user id touches a
/// handful. Above this degree an identifier stays on its own instead of merging everyone.
pub const DEFAULT_MAX_DEGREE: u32 = 100;

/// Default explicit-merge edge kinds: an alias (`user_id`–`user_id`, a legacy id joined to a
/// new one) is an explicit statement that two ids are one person, so limits never block it.
pub const DEFAULT_MERGE_EDGES: &[(&str, &str)] = &[("user_id", "user_id")];

/// An invalid options document, with what is wrong and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("identity_stitch: invalid options: {0}")]
pub struct OptionsError(pub String);

/// Parsed `identity_stitch` options. Construct with [`StitchOptions::default`] or
/// [`StitchOptions::from_json`]; fields are public so Rust callers (the incremental graph
/// statements) can adjust them directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StitchOptions {
    /// Identifier types in priority order. A profile is named after its identifier of the
    /// first listed type; unlisted types rank after listed ones, by name.
    pub priority: Vec<String>,
    /// Maximum identifiers of a type per profile. A merge that would put more than this many
    /// identifiers of the type in one profile is refused, unless the edge is an explicit
    /// merge (see `merge_edges`).
    pub limits: BTreeMap<String, u32>,
    /// Refused values per identifier type (`"*"`: every type), trimmed and lower-cased.
    pub blocklist: BTreeMap<String, BTreeSet<String>>,
    /// Whether [`DEFAULT_BLOCKLIST`] and all-zero ids are refused too.
    pub default_blocklist: bool,
    /// Maximum distinct neighbours per identifier type (`"*"`: every other type); `None`
    /// means unbounded. An identifier above its maximum does not merge through ordinary
    /// edges.
    pub max_degree: BTreeMap<String, Option<u32>>,
    /// Unordered identifier-type pairs whose edges are explicit merges (aliases): they are
    /// applied first and never refused by limits or degree.
    pub merge_edges: Vec<(String, String)>,
}

impl Default for StitchOptions {
    fn default() -> Self {
        StitchOptions {
            priority: DEFAULT_PRIORITY.iter().map(|s| s.to_string()).collect(),
            limits: DEFAULT_LIMITS
                .iter()
                .map(|(t, n)| (t.to_string(), *n))
                .collect(),
            blocklist: BTreeMap::new(),
            default_blocklist: true,
            max_degree: BTreeMap::from([("*".to_string(), Some(DEFAULT_MAX_DEGREE))]),
            merge_edges: DEFAULT_MERGE_EDGES
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }
}

impl StitchOptions {
    /// Options with every protection off: no limits, no blocklist, unbounded degree, no
    /// merge edges. The result is plain connected components.
    pub fn unrestricted() -> Self {
        StitchOptions {
            limits: BTreeMap::new(),
            default_blocklist: false,
            max_degree: BTreeMap::new(),
            merge_edges: Vec::new(),
            ..StitchOptions::default()
        }
    }

    /// Parses a JSON options document over the defaults. An empty string means defaults.
    pub fn from_json(text: &str) -> Result<Self, OptionsError> {
        let mut opts = StitchOptions::default();
        if text.trim().is_empty() {
            return Ok(opts);
        }
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| OptionsError(format!("not valid JSON ({e})")))?;
        let Value::Object(map) = doc else {
            return Err(OptionsError("expected a JSON object".into()));
        };
        for (key, value) in map {
            match key.as_str() {
                "priority" => opts.priority = string_list(&key, &value)?,
                "limits" => {
                    opts.limits = BTreeMap::new();
                    match &value {
                        Value::Null => {}
                        Value::Object(m) => {
                            for (t, n) in m {
                                let n = n.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                                    OptionsError(format!(
                                        "limits.{t} must be a positive integer, got {n}"
                                    ))
                                })?;
                                opts.limits
                                    .insert(t.clone(), u32::try_from(n).unwrap_or(u32::MAX));
                            }
                        }
                        other => {
                            return Err(OptionsError(format!(
                                "limits must be an object of type: count, got {other}"
                            )));
                        }
                    }
                }
                "blocklist" => {
                    opts.blocklist = BTreeMap::new();
                    match &value {
                        Value::Null => {}
                        Value::Array(_) => {
                            opts.blocklist
                                .insert("*".into(), normalised(string_list(&key, &value)?));
                        }
                        Value::Object(m) => {
                            for (t, list) in m {
                                let values = string_list(&format!("blocklist.{t}"), list)?;
                                opts.blocklist.insert(t.clone(), normalised(values));
                            }
                        }
                        other => {
                            return Err(OptionsError(format!(
                                "blocklist must be a list of values or an object of type: list, got {other}"
                            )));
                        }
                    }
                }
                "default_blocklist" => {
                    opts.default_blocklist = value.as_bool().ok_or_else(|| {
                        OptionsError(format!(
                            "default_blocklist must be true or false, got {value}"
                        ))
                    })?
                }
                "max_degree" => {
                    opts.max_degree = BTreeMap::new();
                    match &value {
                        Value::Object(m) => {
                            for (t, n) in m {
                                opts.max_degree
                                    .insert(t.clone(), degree(&format!("max_degree.{t}"), n)?);
                            }
                        }
                        other => {
                            opts.max_degree
                                .insert("*".into(), degree("max_degree", other)?);
                        }
                    }
                }
                "merge_edges" => {
                    let Value::Array(pairs) = &value else {
                        return Err(OptionsError(format!(
                            "merge_edges must be a list of [type, type] pairs, got {value}"
                        )));
                    };
                    opts.merge_edges = pairs
                        .iter()
                        .map(|p| match p.as_array().map(|a| a.as_slice()) {
                            Some([Value::String(a), Value::String(b)]) => {
                                Ok((a.clone(), b.clone()))
                            }
                            _ => Err(OptionsError(format!(
                                "merge_edges entries must be [type, type] pairs, got {p}"
                            ))),
                        })
                        .collect::<Result<_, _>>()?;
                }
                other => {
                    return Err(OptionsError(format!(
                        "unknown option \"{other}\" (expected priority, limits, blocklist, \
                         default_blocklist, max_degree or merge_edges)"
                    )));
                }
            }
        }
        Ok(opts)
    }

    /// The maximum degree for identifiers of `type_name`, if bounded.
    pub fn max_degree_for(&self, type_name: &str) -> Option<u32> {
        match self.max_degree.get(type_name) {
            Some(d) => *d,
            None => self.max_degree.get("*").copied().flatten(),
        }
    }

    /// Whether edges between these two types are explicit merges.
    pub fn is_merge_edge(&self, a: &str, b: &str) -> bool {
        self.merge_edges
            .iter()
            .any(|(x, y)| (x == a && y == b) || (x == b && y == a))
    }
}

fn string_list(key: &str, value: &Value) -> Result<Vec<String>, OptionsError> {
    let Value::Array(items) = value else {
        return Err(OptionsError(format!(
            "{key} must be a list of strings, got {value}"
        )));
    };
    items
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| OptionsError(format!("{key} must hold strings only, got {v}")))
        })
        .collect()
}

fn normalised(values: Vec<String>) -> BTreeSet<String> {
    values
        .into_iter()
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

fn degree(key: &str, value: &Value) -> Result<Option<u32>, OptionsError> {
    match value {
        Value::Null => Ok(None),
        v => match v.as_u64() {
            Some(0) => Ok(None),
            Some(n) => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
            None => Err(OptionsError(format!(
                "{key} must be a non-negative integer or null, got {v}"
            ))),
        },
    }
}

/// Whether `value` is refused by the built-in blocklist: one of [`DEFAULT_BLOCKLIST`] after
/// trimming and lower-casing, or made of `0` and `-` only.
pub fn default_blocked(value: &str) -> bool {
    let v = value.trim();
    if v.len() > 9 {
        // Longer than any listed value: only the all-zero rule can apply.
        return all_zero(v);
    }
    DEFAULT_BLOCKLIST.iter().any(|b| v.eq_ignore_ascii_case(b)) || all_zero(v)
}

fn all_zero(v: &str) -> bool {
    v.bytes().any(|b| b == b'0') && v.bytes().all(|b| b == b'0' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let d = StitchOptions::from_json("").unwrap();
        assert_eq!(d, StitchOptions::default());
        assert_eq!(d.max_degree_for("device_id"), Some(DEFAULT_MAX_DEGREE));
        let o = StitchOptions::from_json(
            r#"{"priority":["email"],"limits":{"email":2},"blocklist":{"email":[" X@Y "]},
               "default_blocklist":false,"max_degree":{"*":10,"user_id":null},
               "merge_edges":[["a","b"]]}"#,
        )
        .unwrap();
        assert_eq!(o.priority, vec!["email"]);
        assert_eq!(o.limits.get("email"), Some(&2));
        assert_eq!(o.limits.get("user_id"), None);
        assert!(o.blocklist["email"].contains("x@y"));
        assert_eq!(o.max_degree_for("device_id"), Some(10));
        assert_eq!(o.max_degree_for("user_id"), None);
        assert!(o.is_merge_edge("b", "a"));
        assert!(!o.is_merge_edge("user_id", "user_id"));
        let off = StitchOptions::from_json(r#"{"limits":null,"max_degree":null}"#).unwrap();
        assert!(off.limits.is_empty());
        assert_eq!(off.max_degree_for("x"), None);
    }

    #[test]
    fn errors_name_the_problem() {
        for (doc, needle) in [
            ("{", "not valid JSON"),
            ("[]", "expected a JSON object"),
            (r#"{"limit":{}}"#, "unknown option \"limit\""),
            (
                r#"{"limits":{"email":0}}"#,
                "limits.email must be a positive integer",
            ),
            (r#"{"max_degree":"x"}"#, "max_degree must be"),
            (r#"{"merge_edges":[["a"]]}"#, "merge_edges entries"),
            (r#"{"priority":[1]}"#, "priority must hold strings"),
        ] {
            let e = StitchOptions::from_json(doc).unwrap_err().to_string();
            assert!(e.contains(needle), "{doc}: {e}");
        }
    }

    #[test]
    fn default_blocklist_values() {
        for v in [
            "",
            " ",
            "null",
            "NULL",
            "undefined",
            "Anonymous",
            "0",
            "-1",
            "000000",
            "00000000-0000-0000-0000-000000000000",
        ] {
            assert!(default_blocked(v), "{v:?}");
        }
        for v in ["usr_00000000", "a@b.c", "10", "-", "1-0", "anonymous1"] {
            assert!(!default_blocked(v), "{v:?}");
        }
    }
}
