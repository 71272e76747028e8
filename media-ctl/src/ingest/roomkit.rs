//! Roomkit's own recording callback: `stream_id` (or `terminal_id`),
//! `file_name`, `user_id`, `start` and `end` in Unix milliseconds, and
//! `download_url`.

use serde_json::{Map, Value};

use super::util::Obj;
use super::{Callback, FileFormat, IngestError, Provider, Segment, Timing, check_time, checked};

pub(super) fn parse(map: &Map<String, Value>) -> Result<Callback, IngestError> {
    let o = Obj::new(map, Provider::Roomkit);
    let file_name = o.str("file_name")?;
    let seg = Segment {
        stream: o.str_any(&["stream_id", "terminal_id"])?.to_owned(),
        format: FileFormat::of_name(file_name),
        file_id: file_name.to_owned(),
        user: o.opt_str("user_id")?.map(str::to_owned),
        start: check_time("start", o.int("start")?)?,
        end: check_time("end", o.int("end")?)?,
        url: o.str("download_url")?.to_owned(),
        timing: Timing::Reported,
    };
    Ok(Callback::Segments(vec![checked(seg)?]))
}
