//! Field access with the provider named in every error, checked time
//! conversions, and file-name parsing shared by the providers' parsers.

use serde_json::{Map, Value};

use super::{IngestError, MAX_FILES_PER_CALLBACK, Millis, Provider, check_time};
use crate::input::excerpt;

/// A JSON object of a known provider.
#[derive(Clone, Copy)]
pub(super) struct Obj<'a> {
    map: &'a Map<String, Value>,
    provider: Provider,
}

/// An integer from a JSON number (integral floats included) or a numeric
/// string (protobuf JSON writes 64-bit integers as strings), saturated to
/// the `i64` range so that an absurd value is reported as out of range
/// rather than as the wrong type.
fn int_value(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|_| i64::MAX)).or_else(|| {
            let f = n.as_f64()?;
            // `as` saturates (and maps NaN to 0, which is_finite excludes).
            (f.is_finite() && f.fract() == 0.0).then_some(f as i64)
        }),
        Value::String(s) => {
            let wide: i128 = s.trim().parse().ok()?;
            Some(wide.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
        }
        _ => None,
    }
}

impl<'a> Obj<'a> {
    pub(super) fn new(map: &'a Map<String, Value>, provider: Provider) -> Self {
        Obj { map, provider }
    }

    pub(super) fn field(&self, field: &'static str) -> IngestError {
        IngestError::Field { provider: self.provider, field }
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|v| !v.is_null())
    }

    /// A required string: the first of `names` present.
    pub(super) fn str_any(&self, names: &[&'static str]) -> Result<&'a str, IngestError> {
        names.iter().find_map(|n| self.map.get(*n).and_then(Value::as_str)).ok_or_else(|| self.field(names[0]))
    }

    /// A required string.
    pub(super) fn str(&self, name: &'static str) -> Result<&'a str, IngestError> {
        self.str_any(&[name])
    }

    /// A required non-empty string.
    pub(super) fn nonempty(&self, name: &'static str) -> Result<&'a str, IngestError> {
        self.str(name).and_then(|s| if s.is_empty() { Err(self.field(name)) } else { Ok(s) })
    }

    /// An optional string (absent or null: `None`; another type: an error).
    pub(super) fn opt_str(&self, name: &'static str) -> Result<Option<&'a str>, IngestError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.field(name)),
        }
    }

    /// An optional non-empty string, or a number written as text.
    pub(super) fn opt_text(&self, name: &'static str) -> Result<Option<String>, IngestError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(self.field(name)),
        }
    }

    /// A required id, given as a string or a number (TRTC room ids are
    /// either, like the client's).
    pub(super) fn id(&self, name: &'static str) -> Result<String, IngestError> {
        self.opt_text(name)?.ok_or_else(|| self.field(name))
    }

    /// A required integer.
    pub(super) fn int(&self, name: &'static str) -> Result<i64, IngestError> {
        self.opt_int(name)?.ok_or_else(|| self.field(name))
    }

    /// An optional integer (absent or null: `None`; not an integer: an
    /// error).
    pub(super) fn opt_int(&self, name: &'static str) -> Result<Option<i64>, IngestError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => int_value(v).map(Some).ok_or_else(|| self.field(name)),
        }
    }

    /// An optional boolean.
    pub(super) fn opt_bool(&self, name: &'static str) -> Result<Option<bool>, IngestError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.field(name)),
        }
    }

    /// A required object.
    pub(super) fn obj(&self, name: &'static str) -> Result<Obj<'a>, IngestError> {
        self.opt_obj(name)?.ok_or_else(|| self.field(name))
    }

    /// An optional object.
    pub(super) fn opt_obj(&self, name: &'static str) -> Result<Option<Obj<'a>>, IngestError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Obj { map: m, provider: self.provider })),
            Some(_) => Err(self.field(name)),
        }
    }

    /// An optional list of objects, at most [`MAX_FILES_PER_CALLBACK`].
    pub(super) fn objects(&self, name: &'static str) -> Result<Vec<Obj<'a>>, IngestError> {
        let list = match self.map.get(name) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(self.field(name)),
        };
        if list.len() > MAX_FILES_PER_CALLBACK {
            return Err(IngestError::TooManyFiles { count: list.len(), max: MAX_FILES_PER_CALLBACK });
        }
        list.iter()
            .map(|v| match v {
                Value::Object(m) => Ok(Obj { map: m, provider: self.provider }),
                _ => Err(self.field(name)),
            })
            .collect()
    }
}

/// Seconds plus a sub-second part in milliseconds, checked.
pub(super) fn secs_ms(field: &'static str, secs: i64, extra_ms: i64) -> Result<Millis, IngestError> {
    let ms = secs.checked_mul(1000).and_then(|m| m.checked_add(extra_ms));
    match ms {
        Some(ms) if (0..=super::MAX_TIME_MS).contains(&ms) => Ok(ms),
        _ => Err(IngestError::TimeOutOfRange { field, value: secs }),
    }
}

/// Nanoseconds to milliseconds (rounded down), checked.
pub(super) fn ns_ms(field: &'static str, ns: i64) -> Result<Millis, IngestError> {
    if ns < 0 {
        return Err(IngestError::TimeOutOfRange { field, value: ns });
    }
    check_time(field, ns / 1_000_000).map_err(|_| IngestError::TimeOutOfRange { field, value: ns })
}

/// Text a provider wrote, for a message: control characters replaced,
/// at most `max` bytes.
pub(super) fn clean(s: &str, max: usize) -> String {
    let cleaned: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    excerpt(&cleaned, max)
}

/// What an unknown object looked like: its first top-level field names.
pub(super) fn seen_keys<'k>(keys: impl Iterator<Item = &'k str>) -> String {
    let mut names: Vec<String> = Vec::new();
    let mut more = 0usize;
    for k in keys {
        if names.len() < 8 {
            names.push(format!("{:?}", clean(k, 32)));
        } else {
            more += 1;
        }
    }
    match (names.is_empty(), more) {
        (true, _) => "an empty object".to_owned(),
        (false, 0) => format!("top-level fields {}", names.join(", ")),
        (false, n) => format!("top-level fields {} and {n} more", names.join(", ")),
    }
}

/// The last component of a path.
pub(super) fn basename(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// The value of the last run of ASCII digits in `s` whose length is in
/// `lens` (a run is maximal: digits on neither side).
pub(super) fn last_digit_run(s: &str, lens: std::ops::RangeInclusive<usize>) -> Option<i64> {
    let b = s.as_bytes();
    let mut end = b.len();
    while end > 0 {
        if !b[end - 1].is_ascii_digit() {
            end -= 1;
            continue;
        }
        let mut start = end;
        while start > 0 && b[start - 1].is_ascii_digit() {
            start -= 1;
        }
        if lens.contains(&(end - start)) {
            return s[start..end].parse().ok();
        }
        end = start;
    }
    None
}

/// A stream event with its ids checked; `at` is the provider's time, or
/// `None` for the arrival.
pub(super) fn stream_event(
    provider: Provider,
    stream: String,
    user: Option<String>,
    track: super::Track,
    at: Option<Millis>,
    received_at: Millis,
    detail: Option<String>,
) -> Result<super::StreamEvent, IngestError> {
    let bad = |field: &'static str| move |error| IngestError::Input { field, error };
    crate::input::check_id("stream id", &stream).map_err(bad("stream id"))?;
    if let Some(user) = &user {
        crate::input::check_id("user id", user).map_err(bad("user id"))?;
    }
    Ok(super::StreamEvent {
        provider,
        stream,
        user,
        track,
        at: at.unwrap_or(received_at),
        timed_on_arrival: at.is_none(),
        detail,
    })
}
