//! nginx-rtmp-module notifications, following the module's "Directives"
//! document (`on_publish`, `on_publish_done`, `on_record_done`, `recorder`,
//! `record_suffix`, `record_unique`) and its notify module's source for
//! the exact fields. The body is `application/x-www-form-urlencoded`:
//! the session's `app`, `flashver`, `swfurl`, `tcurl`, `pageurl`, `addr`,
//! `clientid`, then `call` and the call's own fields (`name`, `type` for
//! `publish`; `recorder`, `name`, `path` for `record_done`), then the
//! publisher's own query arguments.
//!
//! Because those arguments come last and are the publisher's to choose
//! (`rtmp://host/app/name?call=record_done&path=/etc/passwd`), the first
//! occurrence of a field wins: what nginx wrote cannot be overridden.
//!
//! * `publish` / `publish_done`: the stream `app/name` is up / down.
//! * `record_done`, a recorded file at `path`: with `record_unique on` the
//!   file name is the stream name, `-` and the Unix second the file was
//!   opened, then `record_suffix` (`live/room42-1700000000.flv`). That
//!   time starts the segment and the callback's arrival (sent when the
//!   file is closed) ends it: [`Timing::StartOnly`]. Without it (or with
//!   an `strftime` suffix, in the server's time zone) both are the
//!   arrival: [`Timing::OnArrival`].
//! * Other calls (`connect`, `play`, `play_done`, `done`, `update_*`,
//!   `disconnect`) are [`Callback::Ignored`].

use super::util::{basename, clean, secs_ms, seen_keys, stream_event};
use super::{Callback, FileFormat, IngestError, Millis, Provider, Segment, Timing, Track, checked};
use crate::input::excerpt;

/// The most fields a form body may have.
const MAX_FIELDS: usize = 256;

fn decode(part: &str) -> Result<String, IngestError> {
    let b = part.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let byte = b.get(i + 1).copied().and_then(hex).zip(b.get(i + 2).copied().and_then(hex));
                let (hi, lo) =
                    byte.ok_or_else(|| IngestError::Form(format!("bad percent escape in {:?}", excerpt(part, 64))))?;
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| IngestError::Form(format!("{:?} is not UTF-8 once decoded", excerpt(part, 64))))
}

/// The fields of a form body, in order.
pub(super) fn form(body: &[u8]) -> Result<Vec<(String, String)>, IngestError> {
    let text = std::str::from_utf8(body).map_err(|_| IngestError::Form("the body is not UTF-8".to_owned()))?;
    let mut fields = Vec::new();
    for pair in text.trim_end_matches(['\r', '\n']).split('&').filter(|p| !p.is_empty()) {
        if fields.len() == MAX_FIELDS {
            return Err(IngestError::Form(format!("more than {MAX_FIELDS} fields")));
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        fields.push((decode(k)?, decode(v)?));
    }
    Ok(fields)
}

/// The first value of `key`: what nginx wrote, never the publisher's
/// arguments appended after it.
fn first<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `name` escaped as nginx escapes it into a record path
/// (`NGX_ESCAPE_URI_COMPONENT`: everything but unreserved characters).
fn escaped(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Unix second `record_unique` put after the stream name, if any.
pub(super) fn name_time(path: &str, name: &str) -> Option<i64> {
    let base = basename(path);
    [name.to_owned(), escaped(name)].iter().find_map(|n| {
        let rest = base.strip_prefix(n.as_str())?.strip_prefix('-')?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        // 9 to 11 digits: 1973 to 5138; a calendar date (8 or 14 digits
        // from an strftime suffix) is not a Unix time.
        (9..=11).contains(&digits).then(|| rest[..digits].parse().ok()).flatten()
    })
}

pub(super) fn parse(body: &[u8], received_at: Millis) -> Result<Callback, IngestError> {
    let fields = form(body)?;
    let Some(call) = first(&fields, "call") else {
        let seen = seen_keys(fields.iter().map(|(k, _)| k.as_str()));
        return Err(IngestError::UnknownShape { seen: format!("a form body with {}", seen.replace("top-level ", "")) });
    };
    let field = |field: &'static str| IngestError::Field { provider: Provider::NginxRtmp, field };
    if !matches!(call, "publish" | "publish_done" | "record_done") {
        return Ok(Callback::Ignored {
            provider: Provider::NginxRtmp,
            why: format!("call={} carries no recorded file or stream change", clean(call, 64)),
        });
    }
    let app = first(&fields, "app").unwrap_or("");
    let name = first(&fields, "name").filter(|n| !n.is_empty()).ok_or_else(|| field("name"))?;
    let stream = if app.is_empty() { name.to_owned() } else { format!("{app}/{name}") };
    match call {
        "record_done" => {
            let path = first(&fields, "path").filter(|p| !p.is_empty()).ok_or_else(|| field("path"))?;
            let (start, timing) = match name_time(path, name) {
                Some(secs) => (secs_ms("path", secs, 0)?, Timing::StartOnly),
                None => (received_at, Timing::OnArrival),
            };
            let seg = Segment {
                stream,
                file_id: path.to_owned(),
                user: None,
                start,
                end: received_at,
                url: path.to_owned(),
                format: FileFormat::of_name(path),
                timing,
            };
            Ok(Callback::Segments(vec![checked(seg)?]))
        }
        _ => {
            let detail = first(&fields, "addr").filter(|a| !a.is_empty()).map(|a| clean(&format!("from {a}"), 256));
            let e = stream_event(Provider::NginxRtmp, stream, None, Track::All, None, received_at, detail)?;
            Ok(if call == "publish" { Callback::StreamUp(e) } else { Callback::StreamDown(e) })
        }
    }
}
