//! Bounds under extreme input: times at i64::MIN/MAX and beyond, huge
//! counts, long and hostile strings. Nothing panics, nothing wraps: every
//! answer is a typed error or within its bounds, and the ingestor and its
//! timelines agree with simple reference models.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use room_core::Timestamp;
use room_media_ctl::ffmpeg::{FfmpegError, render_graph};
use room_media_ctl::ingest::{
    Callback, FileFormat, IngestError, IngestLimits, Ingested, Ingestor, MAX_BODY_BYTES, MAX_SEGMENT_MS, MAX_TIME_MS,
    Segment, Span, Timing, parse_callback,
};
use room_media_ctl::input::{InputError, InputPolicy};
use room_media_ctl::layout::{Canvas, Input, InputKind, Limits, Rgb, Template};
use room_media_ctl::orchestrate::{HostEvent, OrchestrateError, Orchestrator, OrchestratorConfig, StreamKind};
use room_media_ctl::plan::{GapFill, LayoutSwitch, MAX_AXIS_MS, Output, PlanError, PlanRequest, plan};

/// Numbers as JSON text: the extremes, the edges of the accepted range,
/// values past i64 and floats.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0i64..=MAX_TIME_MS).prop_map(|n| n.to_string()),
        (1_600_000_000i64..1_800_000_000).prop_map(|n| n.to_string()),
        (1_600_000_000_000i64..1_800_000_000_000).prop_map(|n| n.to_string()),
        Just(i64::MIN.to_string()),
        Just(i64::MAX.to_string()),
        Just("9000000000000000000".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just(MAX_TIME_MS.to_string()),
        Just((MAX_TIME_MS + 1).to_string()),
        Just("1e300".to_owned()),
        Just("-1e300".to_owned()),
        Just("1.5".to_owned()),
        Just("\"123\"".to_owned()),
        Just("\"99999999999999999999999\"".to_owned()),
        Just("\"x\"".to_owned()),
        Just("null".to_owned()),
    ]
}

/// Callback bodies of every provider with numbers in every time field.
fn body(shape: u8, a: &str, b: &str, c: &str) -> String {
    // In a file name, a number is text.
    let name = b.replace('"', "");
    match shape % 12 {
        0 => {
            format!(r#"{{"stream_id":"s","file_name":"a.flv","start":{a},"end":{b},"download_url":"https://x/a.flv"}}"#)
        }
        1 => format!(
            r#"{{"event_type":100,"stream_id":"s","file_id":"f","start_time":{a},"end_time":{b},"start_time_usec":{c},"video_url":"https://x/a.flv"}}"#
        ),
        2 => format!(r#"{{"event_type":{c},"stream_id":"s","event_time":{a}}}"#),
        3 => format!(
            r#"{{"EventGroupId":3,"EventType":310,"EventInfo":{{"RoomId":1,"Payload":{{"FileMessage":[{{"FileName":"a.mp4","UserId":"u","StartTimeStamp":{a},"EndTimeStamp":{b}}}]}}}}}}"#
        ),
        4 => format!(
            r#"{{"EventGroupId":2,"EventType":201,"EventInfo":{{"RoomId":1,"UserId":"u","EventMsTs":{a},"EventTs":{b}}}}}"#
        ),
        5 => format!(
            r#"{{"noticeId":"n","productId":3,"eventType":31,"notifyMs":{c},"payload":{{"cname":"c","sendts":{b},"details":{{"fileList":[{{"fileName":"a.mp4","uid":"1","sliceStartTime":{a}}},{{"fileName":"b.mp4","uid":"1","sliceStartTime":{c}}}]}}}}}}"#
        ),
        6 => format!(
            r#"{{"noticeId":"n","productId":3,"eventType":44,"payload":{{"cname":"c","sendts":{b},"details":{{"streamUid":"1","state":{c},"UtcMs":{a}}}}}}}"#
        ),
        7 => format!(
            r#"{{"event":"egress_ended","egressInfo":{{"egressId":"E","roomName":"r","fileResults":[{{"filename":"a.mp4","startedAt":{a},"endedAt":{b},"duration":{c}}}]}},"createdAt":{c}}}"#
        ),
        8 => format!(
            r#"{{"event":"track_published","room":{{"name":"r"}},"participant":{{"identity":"p"}},"track":{{"type":{c}}},"createdAt":{a}}}"#
        ),
        9 => format!(r#"{{"action":"on_hls","app":"live","stream":"s","duration":{a},"file":"s-{name}.ts"}}"#),
        10 => format!(r#"{{"action":"on_dvr","app":"live","stream":"s","duration":{a},"file":"s.{name}.flv"}}"#),
        _ => format!("app=live&call=record_done&name=s&path=%2Frec%2Fs-{a}.flv&x={b}"),
    }
}

fn assert_bounded(cb: &Callback) -> Result<(), TestCaseError> {
    match cb {
        Callback::Segments(segs) => {
            for s in segs {
                prop_assert!(0 <= s.start && s.start <= s.end && s.end <= MAX_TIME_MS, "{:?}", s);
                prop_assert!(s.end - s.start <= MAX_SEGMENT_MS, "{:?}", s);
            }
        }
        Callback::StreamUp(e) | Callback::StreamDown(e) => {
            prop_assert!((0..=MAX_TIME_MS).contains(&e.at), "{:?}", e);
        }
        _ => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Any number in any time field of any provider, any arrival time:
    /// a typed answer, and an accepted one is within bounds.
    #[test]
    fn extreme_times_give_typed_errors_or_bounded_results(
        shape in 0u8..12,
        a in number(),
        b in number(),
        c in number(),
        received_at in prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1i64), any::<i64>(), 0..=MAX_TIME_MS, Just(1_700_000_000_000i64)],
    ) {
        let body = body(shape, &a, &b, &c);
        match parse_callback(body.as_bytes(), received_at) {
            Ok(cb) => {
                prop_assert!((0..=MAX_TIME_MS).contains(&received_at));
                assert_bounded(&cb)?;
            }
            Err(IngestError::Json(e)) => prop_assert!(false, "valid JSON refused as JSON: {} {}", e, body),
            Err(IngestError::TimeOutOfRange { field: "received_at", .. }) => {
                prop_assert!(!(0..=MAX_TIME_MS).contains(&received_at));
            }
            Err(_) => {}
        }
    }

    /// Long and hostile strings in ids and URLs: typed errors, never a
    /// panic, and whatever is accepted is short and clean.
    #[test]
    fn hostile_strings_are_refused_or_clean(s in prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\\x7f]{1,4}",
        Just("x".repeat(300)),
        Just("é".repeat(200)),
        Just("concat:a|b".to_owned()),
    ], which in 0u8..3) {
        let json = serde_json::to_string(&s).expect("a JSON string");
        let body = match which {
            0 => format!(r#"{{"stream_id":{json},"file_name":"a.flv","start":1,"end":2,"download_url":"https://x/a"}}"#),
            1 => format!(r#"{{"stream_id":"s","file_name":{json},"start":1,"end":2,"download_url":"https://x/a"}}"#),
            _ => format!(r#"{{"stream_id":"s","file_name":"a.flv","start":1,"end":2,"download_url":{json}}}"#),
        };
        match parse_callback(body.as_bytes(), 0) {
            Ok(cb) => {
                for seg in cb.into_segments() {
                    for text in [&seg.stream, &seg.file_id, &seg.url] {
                        prop_assert!(!text.is_empty() && text.len() <= 4096 && !text.chars().any(char::is_control));
                    }
                    prop_assert!(seg.stream.len() <= 256);
                }
            }
            Err(IngestError::Input { .. } | IngestError::UnknownShape { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}

fn seg(stream: &str, file: &str, start: i64, end: i64) -> Segment {
    Segment {
        stream: stream.into(),
        file_id: file.into(),
        user: None,
        start,
        end,
        url: format!("https://x/{file}"),
        format: FileFormat::Flv,
        timing: Timing::Reported,
    }
}

/// The reference ingestor: a map of (stream, file) to segment, the same
/// rules written plainly.
#[derive(Default)]
struct Model {
    held: BTreeMap<(String, String), Segment>,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    New,
    Duplicate,
    Invalid,
    Conflict,
    TooManyStreams,
    TooManySegments,
}

impl Model {
    fn add(&mut self, s: Segment, limits: IngestLimits) -> Outcome {
        let valid = (0..=MAX_TIME_MS).contains(&s.start)
            && (0..=MAX_TIME_MS).contains(&s.end)
            && s.start <= s.end
            && s.end - s.start <= MAX_SEGMENT_MS;
        if !valid {
            return Outcome::Invalid;
        }
        let key = (s.stream.clone(), s.file_id.clone());
        if let Some(held) = self.held.get(&key) {
            return if *held == s { Outcome::Duplicate } else { Outcome::Conflict };
        }
        let streams: BTreeSet<&String> = self.held.keys().map(|k| &k.0).collect();
        if !streams.contains(&s.stream) && streams.len() >= limits.max_streams {
            return Outcome::TooManyStreams;
        }
        if self.held.keys().filter(|k| k.0 == s.stream).count() >= limits.max_segments_per_stream {
            return Outcome::TooManySegments;
        }
        self.held.insert(key, s);
        Outcome::New
    }
}

/// Gaps by merging intervals.
fn reference_gaps(segs: &[(i64, i64)]) -> Vec<Span> {
    let mut sorted = segs.to_vec();
    sorted.sort();
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (s, e) in sorted {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged.windows(2).map(|w| Span { from: w[0].1, to: w[1].0 }).collect()
}

/// Instants covered by at least two segments, counted one by one.
fn reference_doubly_covered(segs: &[(i64, i64)]) -> BTreeSet<i64> {
    (0..300).filter(|t| segs.iter().filter(|(s, e)| s <= t && t < e).count() >= 2).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The ingestor against the reference model, with small limits and
    /// times that are sometimes far out of range; its timelines' gaps and
    /// overlaps against brute force.
    #[test]
    fn the_ingestor_matches_its_reference_model(
        ops in proptest::collection::vec((0u8..4, 0u8..6, prop_oneof![0i64..250, Just(i64::MIN), Just(i64::MAX), Just(-5i64)], 0i64..60), 1..60),
        max_streams in 1usize..4,
        max_segments in 1usize..6,
    ) {
        let limits = IngestLimits { max_streams, max_segments_per_stream: max_segments };
        let mut ing = Ingestor::with_limits(limits);
        let mut model = Model::default();
        for (stream, file, start, len) in ops {
            let s = seg(&format!("s{stream}"), &format!("f{file}"), start, start.saturating_add(len));
            let want = model.add(s.clone(), limits);
            let got = match ing.add(s) {
                Ok(Ingested::New) => Outcome::New,
                Ok(Ingested::Duplicate) => Outcome::Duplicate,
                Ok(other) => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
                Err(IngestError::TimeOutOfRange { .. } | IngestError::EndBeforeStart { .. } | IngestError::AbsurdDuration { .. }) => Outcome::Invalid,
                Err(IngestError::Conflict { .. }) => Outcome::Conflict,
                Err(IngestError::TooManyStreams { .. }) => Outcome::TooManyStreams,
                Err(IngestError::TooManySegments { .. }) => Outcome::TooManySegments,
                Err(other) => return Err(TestCaseError::fail(format!("unexpected {other}"))),
            };
            prop_assert_eq!(got, want);
        }
        let held: BTreeMap<(String, String), Segment> = ing
            .timelines()
            .values()
            .flat_map(|t| t.segments())
            .map(|s| ((s.stream.clone(), s.file_id.clone()), s.clone()))
            .collect();
        prop_assert_eq!(&held, &model.held);
        prop_assert!(ing.timelines().len() <= max_streams);
        for t in ing.timelines().values() {
            prop_assert!(t.len() <= max_segments);
            let spans: Vec<(i64, i64)> = t.segments().map(|s| (s.start, s.end)).collect();
            prop_assert_eq!(t.gaps(), reference_gaps(&spans));
            let covered: BTreeSet<i64> = t.overlaps().iter().flat_map(|o| o.from..o.to).collect();
            prop_assert_eq!(covered, reference_doubly_covered(&spans));
        }
    }

    /// Layout switches anywhere in i64 and any frame rate: a plan whose
    /// layouts tile its axis, or a typed error.
    #[test]
    fn plans_survive_extreme_switch_times(
        times in proptest::collection::vec(prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), 0i64..20_000], 1..6),
        fps in prop_oneof![1u32..=60, Just(0u32), Just(u32::MAX)],
        span in prop_oneof![1i64..100_000, Just(MAX_AXIS_MS), Just(MAX_AXIS_MS + 1), Just(MAX_SEGMENT_MS)],
    ) {
        let mut ing = Ingestor::new();
        let base = 1_700_000_000_000i64;
        // Contiguous day-long segments up to `span`.
        let mut t = base;
        let mut n = 0;
        while t < base + span {
            let end = (t + MAX_SEGMENT_MS).min(base + span);
            ing.add(seg("s0", &format!("f{n}"), t, end)).expect("valid");
            t = end;
            n += 1;
        }
        let req = PlanRequest {
            canvas: Canvas { width: 320, height: 180, color: Rgb(0, 0, 0) },
            fps,
            inputs: vec![Input { id: "s0".into(), kind: InputKind::Video, width: 320, height: 180 }],
            switches: times.iter().map(|at| LayoutSwitch { at: *at, template: Template::Single { input: "s0".into() } }).collect(),
            fill: GapFill::RepeatLastFrame,
            watermark: None,
            outputs: vec![Output::Mp4],
            limits: Limits::default(),
        };
        match plan(&req, ing.timelines()) {
            Ok(p) => {
                let axis = p.duration_ms();
                prop_assert!(axis > 0 && axis <= MAX_AXIS_MS);
                prop_assert_eq!(p.layouts.first().map(|l| l.span.from), Some(0));
                prop_assert_eq!(p.layouts.last().map(|l| l.span.to), Some(axis));
                for w in p.layouts.windows(2) {
                    prop_assert_eq!(w[0].span.to, w[1].span.from);
                }
                prop_assert_eq!(p.frame_at(i64::MAX), (i64::MAX as u64).saturating_mul(u64::from(fps)).div_ceil(1000));
                prop_assert_eq!(p.frame_at(i64::MIN), 0);
            }
            Err(PlanError::BadFps(f)) => prop_assert!(!(1..=60).contains(&f)),
            Err(PlanError::TooLong { span_ms, max_ms }) => prop_assert!(span_ms > max_ms),
            // Recordings shorter than one frame have nothing to render.
            Err(PlanError::TooShort { span_ms, fps: f }) => {
                prop_assert_eq!(f, fps);
                prop_assert!(span_ms.saturating_mul(i64::from(fps)) < 1000, "{} ms at {} fps", span_ms, fps);
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
        }
    }

    /// A render plan edited by hand with extreme numbers: a graph or a
    /// typed refusal, never a panic or a wrapped time.
    #[test]
    fn hand_built_render_plans_with_extreme_numbers_are_refused(
        which in 0u8..9,
        value in prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1i64), any::<i64>()],
        frames in prop_oneof![Just(u64::MAX), Just(0u64), any::<u64>(), 1u64..100],
        fps in prop_oneof![Just(0u32), Just(u32::MAX), 1u32..=60],
    ) {
        let mut ing = Ingestor::new();
        ing.add(seg("s0", "f", 1_000, 5_000)).expect("valid");
        let req = PlanRequest {
            canvas: Canvas { width: 320, height: 180, color: Rgb(0, 0, 0) },
            fps: 25,
            inputs: vec![Input { id: "s0".into(), kind: InputKind::Image, width: 320, height: 180 }],
            switches: vec![LayoutSwitch { at: 0, template: Template::Single { input: "s0".into() } }],
            fill: GapFill::RepeatLastFrame,
            watermark: None,
            outputs: vec![Output::Mp4],
            limits: Limits::default(),
        };
        let mut p = plan(&req, ing.timelines()).expect("a plan");
        match which {
            0 => p.inputs[0].pieces[0].at = value,
            1 => p.inputs[0].pieces[0].skip = value,
            2 => p.inputs[0].pieces[0].duration = value,
            3 => p.inputs[0].first = value,
            4 => p.inputs[0].last = value,
            5 => p.layouts[0].span.to = value,
            6 => p.frames = frames,
            7 => p.fps = fps,
            _ => {
                p.frames = frames;
                p.fps = fps;
            }
        }
        let _ = p.duration_ms();
        let _ = p.frame_at(value);
        prop_assert!(p.duration_ms() >= 0);
        match render_graph(&p, &InputPolicy::network_only()) {
            Ok((_, graph, _)) => {
                // Accepted only when every number holds together.
                let axis = p.duration_ms();
                prop_assert!((1..=60).contains(&p.fps) && p.frames > 0);
                for x in &p.inputs[0].pieces {
                    prop_assert!(x.at >= 0 && x.skip >= 0 && x.duration > 0 && x.at + x.duration <= axis, "{:?}", x);
                }
                prop_assert!(!graph.contains("=-"), "a negative time in {}", graph);
            }
            Err(FfmpegError::BadPlan(_)) => {}
            Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
        }
    }
}

#[test]
fn a_start_of_9e18_ms_is_a_typed_error() {
    let body = br#"{"stream_id":"s","file_name":"a.flv","start":9000000000000000000,"end":9000000000000000100,"download_url":"https://x/a"}"#;
    assert_eq!(
        parse_callback(body, 0),
        Err(IngestError::TimeOutOfRange { field: "start", value: 9_000_000_000_000_000_000 })
    );
    let mut ing = Ingestor::new();
    assert_eq!(
        ing.add(seg("s", "f", 9_000_000_000_000_000_000, i64::MAX)),
        Err(IngestError::TimeOutOfRange { field: "start", value: 9_000_000_000_000_000_000 })
    );
    // Tencent seconds whose milliseconds would overflow.
    let tencent = br#"{"event_type":100,"stream_id":"s","file_id":"f","start_time":9000000000000000000,"end_time":9000000000000000001,"video_url":"https://x/a"}"#;
    assert_eq!(
        parse_callback(tencent, 0),
        Err(IngestError::TimeOutOfRange { field: "start_time", value: 9_000_000_000_000_000_000 })
    );
    // An SRS arrival time at the edge with a duration before it.
    let srs = br#"{"action":"on_hls","app":"a","stream":"s","duration":10,"file":"x.ts"}"#;
    assert_eq!(parse_callback(srs, 5_000), Err(IngestError::TimeOutOfRange { field: "start", value: -5_000 }));
    assert_eq!(
        parse_callback(srs, i64::MIN),
        Err(IngestError::TimeOutOfRange { field: "received_at", value: i64::MIN })
    );
}

#[test]
fn counts_are_bounded() {
    // Segments per stream.
    let mut ing = Ingestor::new();
    let limits = ing.limits();
    assert_eq!((limits.max_streams, limits.max_segments_per_stream), (64, 10_000));
    for n in 0..10_000 {
        ing.add(seg("s", &format!("f{n}"), n * 10, n * 10 + 10)).expect("within the bound");
    }
    assert_eq!(
        ing.add(seg("s", "one-more", 0, 1)),
        Err(IngestError::TooManySegments { stream: "s".into(), max: 10_000 })
    );
    // A repeat of a held segment is still a duplicate at the bound.
    assert_eq!(ing.add(seg("s", "f0", 0, 10)), Ok(Ingested::Duplicate));
    // Streams per session.
    let mut ing = Ingestor::new();
    for n in 0..64 {
        ing.add(seg(&format!("s{n}"), "f", 0, 10)).expect("within the bound");
    }
    assert_eq!(ing.add(seg("s64", "f", 0, 10)), Err(IngestError::TooManyStreams { max: 64 }));
    // A callback listing too many files, and one too large, change nothing.
    let files: Vec<String> = (0..1_001)
        .map(|n| {
            format!(
                r#"{{"FileName":"f{n}.mp4","UserId":"u","StartTimeStamp":{},"EndTimeStamp":{}}}"#,
                n * 10,
                n * 10 + 10
            )
        })
        .collect();
    let body = format!(
        r#"{{"EventGroupId":3,"EventType":310,"EventInfo":{{"RoomId":1,"Payload":{{"FileMessage":[{}]}}}}}}"#,
        files.join(",")
    );
    assert_eq!(parse_callback(body.as_bytes(), 0), Err(IngestError::TooManyFiles { count: 1_001, max: 1_000 }));
    let huge = vec![b' '; MAX_BODY_BYTES + 1];
    assert_eq!(parse_callback(&huge, 0), Err(IngestError::TooLarge { len: MAX_BODY_BYTES + 1, max: MAX_BODY_BYTES }));
    // A multi-file callback is all or nothing: one bad file, nothing held.
    let mut ing = Ingestor::new();
    let mixed = r#"{"EventGroupId":3,"EventType":310,"EventInfo":{"RoomId":1,"Payload":{"FileMessage":[{"FileName":"a.mp4","UserId":"u","StartTimeStamp":0,"EndTimeStamp":10},{"FileName":"b.mp4","UserId":"u","StartTimeStamp":20,"EndTimeStamp":10}]}}}"#;
    assert!(matches!(ing.ingest(mixed.as_bytes(), 0), Err(IngestError::EndBeforeStart { .. })));
    assert!(ing.timelines().is_empty());
}

#[test]
fn stream_ids_are_checked_everywhere() {
    let long = "s".repeat(257);
    let body =
        format!(r#"{{"stream_id":"{long}","file_name":"a.flv","start":1,"end":2,"download_url":"https://x/a"}}"#);
    assert!(matches!(
        parse_callback(body.as_bytes(), 0),
        Err(IngestError::Input { field: "stream id", error: InputError::TooLong { len: 257, max: 256, .. } })
    ));
    let nul = br#"{"action":"on_publish","app":"live","stream":"a\u0000b"}"#;
    assert!(matches!(
        parse_callback(nul, 0),
        Err(IngestError::Input { error: InputError::ControlCharacter { .. }, .. })
    ));
    let mut o = Orchestrator::new(OrchestratorConfig::default());
    let now = Timestamp::from_millis(1_000);
    o.handle_host(now, HostEvent::ClassStarted).expect("starts");
    for bad in ["", "a\nb", long.as_str()] {
        let r = o.handle_host(now, HostEvent::StreamUp { stream: bad.into(), kind: StreamKind::TeacherCamera });
        assert!(matches!(r, Err(OrchestrateError::BadStreamId(_))), "{bad:?}: {r:?}");
    }
}
