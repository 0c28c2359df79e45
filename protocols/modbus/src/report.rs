//! What a poll publishes: the quality of a sample, publish-on-change with a deadband, and the
//! JSON payloads (`{"ts":..., "value":..., "quality":...}` per point, or one object per device).
//!
//! Owns the comparison with the last published sample of each point. Never publishes and never
//! reads a clock (the caller passes the timestamp).

use crate::point::Point;
use crate::value::Value;
use serde_json::{json, Map, Value as Json};
use std::borrow::Cow;

/// How good a sample is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Read.
    Good,
    /// The device did not answer in time.
    Timeout,
    /// The device answered with this Modbus exception code.
    Exception(u8),
    /// No connection (refused, unreachable, serial port missing).
    Unreachable,
    /// The answer was malformed (wrong length, wrong unit id, wrong function, bad CRC).
    BadResponse,
}

impl Quality {
    /// The JSON word: `good`, `timeout`, `exception:<code>`, `unreachable`, `bad_response`.
    pub fn as_str(self) -> Cow<'static, str> {
        match self {
            Quality::Good => Cow::Borrowed("good"),
            Quality::Timeout => Cow::Borrowed("timeout"),
            Quality::Exception(code) => Cow::Owned(format!("exception:{code}")),
            Quality::Unreachable => Cow::Borrowed("unreachable"),
            Quality::BadResponse => Cow::Borrowed("bad_response"),
        }
    }
}

/// A point's reading: a value when the quality is good.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The value (none unless good).
    pub value: Option<Value>,
    /// Its quality.
    pub quality: Quality,
}

impl Sample {
    /// A good reading.
    pub fn good(value: Value) -> Sample {
        Sample {
            value: Some(value),
            quality: Quality::Good,
        }
    }

    /// A failed reading.
    pub fn failed(quality: Quality) -> Sample {
        Sample {
            value: None,
            quality,
        }
    }
}

/// When samples are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishOn {
    /// When the value moved past the point's deadband or the quality changed (default).
    #[default]
    Change,
    /// After every poll.
    Poll,
}

/// The last published sample of each point of a device.
#[derive(Debug, Clone, Default)]
pub struct Reporter {
    last: Vec<Option<Sample>>,
}

impl Reporter {
    /// For a device of `points` points.
    pub fn new(points: usize) -> Reporter {
        Reporter {
            last: vec![None; points],
        }
    }

    /// Whether `sample` of point `index` is published under `mode`; when it is, it becomes
    /// the one later samples are compared with.
    pub fn offer(&mut self, index: usize, point: &Point, sample: &Sample, mode: PublishOn) -> bool {
        let Some(slot) = self.last.get_mut(index) else {
            return false;
        };
        let publish = match (mode, slot.as_ref()) {
            (PublishOn::Poll, _) | (_, None) => true,
            (PublishOn::Change, Some(last)) => changed(point, last, sample),
        };
        if publish {
            *slot = Some(sample.clone());
        }
        publish
    }
}

fn changed(point: &Point, last: &Sample, now: &Sample) -> bool {
    if last.quality != now.quality {
        return true;
    }
    match (&last.value, &now.value) {
        (Some(a), Some(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if x.is_nan() || y.is_nan() => x.is_nan() != y.is_nan(),
            (Some(x), Some(y)) if point.deadband > 0.0 => (x - y).abs() > point.deadband,
            _ => a != b,
        },
        (None, None) => false,
        _ => true,
    }
}

/// One point's payload: `{"ts": ms, "value": v|null, "quality": "...", "unit": "..."}` (unit
/// only when the point has one).
pub fn point_json(ts_ms: u64, point: &Point, sample: &Sample) -> Json {
    let mut object = Map::new();
    object.insert("ts".into(), json!(ts_ms));
    object.insert("value".into(), value_json(sample));
    object.insert("quality".into(), json!(sample.quality.as_str()));
    if let Some(unit) = &point.unit {
        object.insert("unit".into(), json!(unit));
    }
    Json::Object(object)
}

/// One device's payload: `{"ts": ms, "points": {name: {"value":..., "quality":...}, ...}}`.
pub fn device_json<'a>(
    ts_ms: u64,
    samples: impl IntoIterator<Item = (&'a Point, &'a Sample)>,
) -> Json {
    let mut points = Map::new();
    for (point, sample) in samples {
        let mut entry = Map::new();
        entry.insert("value".into(), value_json(sample));
        entry.insert("quality".into(), json!(sample.quality.as_str()));
        if let Some(unit) = &point.unit {
            entry.insert("unit".into(), json!(unit));
        }
        points.insert(point.name.clone(), Json::Object(entry));
    }
    json!({ "ts": ts_ms, "points": points })
}

fn value_json(sample: &Sample) -> Json {
    sample.value.as_ref().map_or(Json::Null, Value::to_json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::{DataType, Table};

    fn point(deadband: f64) -> Point {
        Point {
            deadband,
            unit: Some("V".into()),
            ..Point::new("v", Table::InputRegister, 0, DataType::F32)
        }
    }

    #[test]
    fn change_mode_publishes_past_the_deadband_and_on_quality_changes() {
        let p = point(0.5);
        let mut r = Reporter::new(1);
        let f = |v: f64| Sample::good(Value::Float(v));
        assert!(
            r.offer(0, &p, &f(230.0), PublishOn::Change),
            "the first sample"
        );
        assert!(!r.offer(0, &p, &f(230.4), PublishOn::Change));
        assert!(
            !r.offer(0, &p, &f(229.6), PublishOn::Change),
            "compared with the published one"
        );
        assert!(r.offer(0, &p, &f(230.6), PublishOn::Change));
        assert!(r.offer(0, &p, &Sample::failed(Quality::Timeout), PublishOn::Change));
        assert!(!r.offer(0, &p, &Sample::failed(Quality::Timeout), PublishOn::Change));
        assert!(r.offer(0, &p, &f(230.6), PublishOn::Change), "back to good");
        assert!(r.offer(0, &p, &f(f64::NAN), PublishOn::Change));
        assert!(!r.offer(0, &p, &f(f64::NAN), PublishOn::Change));
        assert!(r.offer(0, &p, &f(230.6), PublishOn::Poll));
        assert!(!r.offer(7, &p, &f(1.0), PublishOn::Poll), "no such point");
    }

    #[test]
    fn without_a_deadband_any_change_counts() {
        let p = point(0.0);
        let mut r = Reporter::new(1);
        assert!(r.offer(0, &p, &Sample::good(Value::Float(1.0)), PublishOn::Change));
        assert!(r.offer(
            0,
            &p,
            &Sample::good(Value::Float(1.000001)),
            PublishOn::Change
        ));
        let text = Point::new("t", Table::InputRegister, 0, DataType::String(2));
        assert!(r.offer(
            0,
            &text,
            &Sample::good(Value::Text("a".into())),
            PublishOn::Change
        ));
        assert!(!r.offer(
            0,
            &text,
            &Sample::good(Value::Text("a".into())),
            PublishOn::Change
        ));
    }

    #[test]
    fn payloads_have_the_documented_shape() {
        let p = point(0.0);
        let good = point_json(1_700_000_000_000, &p, &Sample::good(Value::Float(12.5)));
        assert_eq!(
            good,
            json!({"ts": 1_700_000_000_000u64, "value": 12.5, "quality": "good", "unit": "V"})
        );
        let failed = point_json(5, &p, &Sample::failed(Quality::Exception(2)));
        assert_eq!(failed["value"], Json::Null);
        assert_eq!(failed["quality"], "exception:2");
        let device = device_json(5, [(&p, &Sample::good(Value::UInt(3)))]);
        assert_eq!(device["points"]["v"]["value"], 3);
    }
}
