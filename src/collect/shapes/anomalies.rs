//! Anomaly detection over events' daily histories ([`super::EventHistory`]).
//!
//! Days are UTC calendar days of the events' `timestamp`, from each event's first day in the
//! window to the last day any event of the source was seen (so an event that stopped shows
//! as days of zero volume). Kinds:
//!
//! - `volume`: the day's event count `x` is off the event's median daily count `m` by more
//!   than `threshold` robust standard deviations: `|x - m| / (1.4826 * MAD) > threshold`
//!   (the modified z-score of Iglewicz and Hoaglin; default threshold 3.5). When more than
//!   half the days have the same count (MAD = 0), the mean absolute deviation stands in
//!   (`1.2533 * MeanAD`). Needs at least [`MIN_VOLUME_DAYS`] days. `observed` is the count,
//!   `expected` the median, `score` the robust z-score.
//!
//! The property kinds compare a day with the event's days before it in the window (its
//! baseline, at least [`MIN_BASELINE_DAYS`] days with events):
//!
//! - `unseen_property`: present that day, never before in the window. `observed` is the
//!   day's presence rate, `expected` 0.
//! - `missing_property`: the property's usual presence rate, the median of its daily rates
//!   over the last [`BASELINE_DAYS`] days with events, is at least [`USUAL_PRESENCE`], and
//!   that day's rate is under half of it. The median keeps flagging a property that
//!   disappeared until it has been gone for most of those days. `observed` and `expected`
//!   are the day's and the usual rate.
//! - `type_change`: values of another type than the property's column that day (in its
//!   `<property>_text` sibling), none before in the window although the property was
//!   present. `observed` is the share of the day's events with such a value, `expected` 0.
//!
//! For property kinds `score` is the change in rate (0 to 1).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Date32Array, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Result as DFResult;

use super::{EventHistory, mad, median};

/// The default robust threshold (modified z-score).
pub const DEFAULT_THRESHOLD: f64 = 3.5;
/// Days of history the volume check needs.
pub const MIN_VOLUME_DAYS: usize = 5;
/// Days with events a property check needs before the day it checks.
pub const MIN_BASELINE_DAYS: usize = 3;
/// Presence rate from which a property counts as usually present.
pub const USUAL_PRESENCE: f64 = 0.9;
/// Days with events whose presence rates make a property's usual rate.
pub const BASELINE_DAYS: usize = 28;

/// One anomaly.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// Event name.
    pub event: String,
    /// The event's table.
    pub table: String,
    /// Day (days since the epoch, UTC).
    pub day: i64,
    /// The property, for property kinds.
    pub property: Option<String>,
    /// `volume`, `unseen_property`, `missing_property` or `type_change`.
    pub kind: &'static str,
    /// What the day shows.
    pub observed: f64,
    /// What was expected.
    pub expected: f64,
    /// How far off (see the module docs).
    pub score: f64,
    /// A sentence for people.
    pub detail: String,
}

/// `event_anomalies`' columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, true),
        Field::new("day", DataType::Date32, true),
        Field::new("property", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("observed", DataType::Float64, true),
        Field::new("expected", DataType::Float64, true),
        Field::new("score", DataType::Float64, true),
        Field::new("detail", DataType::Utf8, true),
    ]))
}

/// The anomalies as a batch of [`schema`].
pub fn batch(anomalies: &[Anomaly]) -> DFResult<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            anomalies.iter().map(|a| a.event.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            anomalies.iter().map(|a| a.table.as_str()),
        )),
        Arc::new(Date32Array::from_iter_values(
            anomalies.iter().map(|a| a.day as i32),
        )),
        Arc::new(StringArray::from_iter(
            anomalies.iter().map(|a| a.property.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            anomalies.iter().map(|a| a.kind),
        )),
        Arc::new(Float64Array::from_iter_values(
            anomalies.iter().map(|a| a.observed),
        )),
        Arc::new(Float64Array::from_iter_values(
            anomalies.iter().map(|a| a.expected),
        )),
        Arc::new(Float64Array::from_iter_values(
            anomalies.iter().map(|a| a.score),
        )),
        Arc::new(StringArray::from_iter_values(
            anomalies.iter().map(|a| a.detail.as_str()),
        )),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

fn date(day: i64) -> String {
    chrono::DateTime::from_timestamp(day * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| day.to_string())
}

fn percent(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// The robust scale of `v` around `m`: 1.4826 × MAD, or 1.2533 × the mean absolute
/// deviation when the MAD is 0.
fn robust_scale(v: &[f64], m: f64) -> f64 {
    let s = 1.4826 * mad(v, m);
    if s > 0.0 {
        return s;
    }
    if v.is_empty() {
        return 0.0;
    }
    1.253314 * v.iter().map(|x| (x - m).abs()).sum::<f64>() / v.len() as f64
}

/// Every anomaly of `histories`, by day, event, kind and property.
pub fn detect(histories: &[EventHistory], last_day: Option<i64>, threshold: f64) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let Some(last_day) = last_day else {
        return out;
    };
    for h in histories {
        volume(h, last_day, threshold, &mut out);
        properties(h, &mut out);
    }
    out.sort_by(|a, b| {
        (a.day, &a.event, a.kind, &a.property).cmp(&(b.day, &b.event, b.kind, &b.property))
    });
    out
}

fn volume(h: &EventHistory, last_day: i64, threshold: f64, out: &mut Vec<Anomaly>) {
    let series = h.daily_volume(last_day);
    if series.len() < MIN_VOLUME_DAYS {
        return;
    }
    let v: Vec<f64> = series.iter().map(|(_, n)| *n as f64).collect();
    let m = median(&v);
    let scale = robust_scale(&v, m);
    if scale <= 0.0 {
        return;
    }
    for (day, n) in series {
        let score = (n as f64 - m).abs() / scale;
        if score > threshold {
            out.push(Anomaly {
                event: h.event.clone(),
                table: h.table.clone(),
                day,
                property: None,
                kind: "volume",
                observed: n as f64,
                expected: m,
                score,
                detail: format!(
                    "{n} \"{}\" events on {}, usually {m} a day (robust z-score {score:.1} over {threshold})",
                    h.event,
                    date(day)
                ),
            });
        }
    }
}

fn properties(h: &EventHistory, out: &mut Vec<Anomaly>) {
    let k = h.properties.len();
    let mut base_days = 0usize;
    let mut ever_present = vec![false; k];
    let mut ever_conflict = vec![false; k];
    // Daily presence rates of the last BASELINE_DAYS days with events, per property.
    let mut recent: Vec<std::collections::VecDeque<f64>> =
        vec![std::collections::VecDeque::with_capacity(BASELINE_DAYS); k];
    for (&day, d) in &h.days {
        if d.events <= 0 {
            continue;
        }
        let n = d.events as f64;
        let checked = base_days >= MIN_BASELINE_DAYS;
        for (i, p) in h.properties.iter().enumerate() {
            let present = (d.present[i] + d.conflicts[i]).min(d.events);
            let rate = present as f64 / n;
            if checked {
                let usual = median(recent[i].make_contiguous());
                let mut push =
                    |kind: &'static str, observed: f64, expected: f64, detail: String| {
                        out.push(Anomaly {
                            event: h.event.clone(),
                            table: h.table.clone(),
                            day,
                            property: Some(p.name.clone()),
                            kind,
                            observed,
                            expected,
                            score: (observed - expected).abs(),
                            detail,
                        })
                    };
                if present > 0 && !ever_present[i] {
                    push(
                        "unseen_property",
                        rate,
                        0.0,
                        format!(
                            "\"{}\" property {} first seen on {} ({present} of {} events)",
                            h.event,
                            p.name,
                            date(day),
                            d.events
                        ),
                    );
                } else if usual >= USUAL_PRESENCE && rate < usual / 2.0 {
                    push(
                        "missing_property",
                        rate,
                        usual,
                        format!(
                            "\"{}\" property {} in {} of events on {}, usually in {}",
                            h.event,
                            p.name,
                            percent(rate),
                            date(day),
                            percent(usual)
                        ),
                    );
                }
                if d.conflicts[i] > 0 && !ever_conflict[i] && ever_present[i] {
                    let share = d.conflicts[i].min(d.events) as f64 / n;
                    push(
                        "type_change",
                        share,
                        0.0,
                        format!(
                            "\"{}\" property {} has values that are not {} on {} ({} of {} events, kept in {})",
                            h.event,
                            p.name,
                            p.ty,
                            date(day),
                            d.conflicts[i],
                            d.events,
                            p.sibling.as_deref().unwrap_or("its text column")
                        ),
                    );
                }
            }
            ever_present[i] |= present > 0;
            ever_conflict[i] |= d.conflicts[i] > 0;
            if recent[i].len() == BASELINE_DAYS {
                recent[i].pop_front();
            }
            recent[i].push_back(rate);
        }
        base_days += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Day, Property};
    use super::*;
    use std::collections::BTreeMap;

    fn history(days: &[(i64, i64, i64, i64, i64)]) -> EventHistory {
        // (day, events, coupon present, total present, total conflicts)
        let mut m = BTreeMap::new();
        for &(day, events, coupon, total, conflicts) in days {
            m.insert(
                day,
                Day {
                    events,
                    present: vec![coupon, total],
                    conflicts: vec![0, conflicts],
                },
            );
        }
        EventHistory {
            event: "Order Completed".into(),
            table: "order_completed".into(),
            properties: vec![
                Property {
                    name: "coupon".into(),
                    ty: "text".into(),
                    sibling: None,
                },
                Property {
                    name: "total".into(),
                    ty: "number".into(),
                    sibling: Some("total_text".into()),
                },
            ],
            days: m,
        }
    }

    #[test]
    fn flags_a_volume_spike_and_not_ordinary_days() {
        let mut days: Vec<(i64, i64, i64, i64, i64)> = (0..14)
            .map(|d| (d, 10 + (d % 3), 10 + (d % 3), 10 + (d % 3), 0))
            .collect();
        days[9] = (9, 60, 60, 60, 0);
        let h = history(&days);
        let a = detect(&[h], Some(13), DEFAULT_THRESHOLD);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!((a[0].kind, a[0].day), ("volume", 9));
        assert_eq!(a[0].observed, 60.0);
        assert!(a[0].score > DEFAULT_THRESHOLD);
        // A higher threshold lets it pass; constant volume has nothing to flag.
        let days: Vec<_> = (0..14).map(|d| (d, 10, 10, 10, 0)).collect();
        assert!(detect(&[history(&days)], Some(13), DEFAULT_THRESHOLD).is_empty());
    }

    #[test]
    fn an_event_that_stops_shows_zero_days() {
        let days: Vec<_> = (0..10).map(|d| (d, 20 + d % 2, 20, 20, 0)).collect();
        let a = detect(&[history(&days)], Some(12), DEFAULT_THRESHOLD);
        let zero: Vec<_> = a
            .iter()
            .filter(|a| a.kind == "volume")
            .map(|a| a.day)
            .collect();
        assert_eq!(zero, vec![10, 11, 12]);
    }

    #[test]
    fn property_changes_are_flagged_on_the_day_they_happen() {
        // coupon always present until day 6; total's strings start on day 7.
        let mut days = Vec::new();
        for d in 0..9 {
            let coupon = if d >= 6 { 0 } else { 10 };
            let conflicts = if d >= 7 { 4 } else { 0 };
            days.push((d, 10, coupon, 10 - conflicts, conflicts));
        }
        let a = detect(&[history(&days)], Some(8), DEFAULT_THRESHOLD);
        let got: Vec<_> = a
            .iter()
            .map(|a| (a.day, a.kind, a.property.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            got,
            vec![
                (6, "missing_property", "coupon".to_string()),
                (7, "missing_property", "coupon".to_string()),
                (7, "type_change", "total".to_string()),
                (8, "missing_property", "coupon".to_string()),
            ]
        );
        // A property new on day 5 is unseen that day only.
        let mut days = Vec::new();
        for d in 0..8 {
            days.push((d, 10, if d >= 5 { 3 } else { 0 }, 10, 0));
        }
        let a = detect(&[history(&days)], Some(7), DEFAULT_THRESHOLD);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!((a[0].day, a[0].kind), (5, "unseen_property"));
        assert!((a[0].observed - 0.3).abs() < 1e-9);
    }

    #[test]
    fn short_histories_flag_nothing() {
        let days: Vec<_> = vec![(0, 10, 10, 10, 0), (1, 100, 0, 10, 5)];
        assert!(detect(&[history(&days)], Some(1), DEFAULT_THRESHOLD).is_empty());
    }
}
