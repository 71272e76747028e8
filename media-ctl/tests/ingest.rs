//! Callback ingestion: shuffled, repeated delivery gives the timelines of
//! in-order single delivery; bad callbacks get typed errors.

use proptest::prelude::*;
use room_media_ctl::ingest::{IngestError, Ingested, Ingestor, Provider, Span, Timing};
use room_media_ctl::input::{InputError, Purpose};

/// A callback body in one of the provider shapes.
fn callback(shape: u8, stream: &str, n: usize, start_s: i64, len_s: i64) -> String {
    match shape % 2 {
        0 => format!(
            r#"{{"event_type":100,"stream_id":"{stream}","file_id":"f{n}","record_file_id":"r{n}","file_format":"flv","start_time":{start_s},"end_time":{},"duration":{len_s},"video_url":"https://cdn.example/{stream}/{n}.flv"}}"#,
            start_s + len_s
        ),
        _ => format!(
            r#"{{"stream_id":"{stream}","file_name":"{stream}-{n}.flv","user_id":"u-{stream}","start":{},"end":{},"download_url":"https://files.example/{stream}/{n}.flv"}}"#,
            start_s * 1000,
            (start_s + len_s) * 1000
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn shuffled_retries_give_the_same_timelines(
        streams in proptest::collection::vec(proptest::collection::vec((0i64..120, 1i64..90), 1..12), 1..5),
        shape in 0u8..2,
        repeats in proptest::collection::vec(1usize..=12, 60),
        order in any::<u64>(),
    ) {
        let mut bodies = Vec::new();
        for (s, segs) in streams.iter().enumerate() {
            let mut t = 1_700_000_000i64;
            for (n, (gap, len)) in segs.iter().enumerate() {
                t += gap;
                bodies.push(callback(shape, &format!("stream-{s}"), n, t, *len));
                t += len;
            }
        }
        let mut in_order = Ingestor::new();
        for b in &bodies {
            prop_assert_eq!(in_order.ingest(b.as_bytes(), 0), Ok(Ingested::New));
        }
        // Each delivered 1 to 12 times, in a shuffled order.
        let mut deliveries: Vec<&String> = bodies.iter().enumerate().flat_map(|(i, b)| std::iter::repeat_n(b, repeats[i % repeats.len()])).collect();
        let mut state = order | 1;
        for i in (1..deliveries.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            deliveries.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut shuffled = Ingestor::new();
        let mut new = 0;
        for b in deliveries {
            if shuffled.ingest(b.as_bytes(), 0).expect("valid") == Ingested::New {
                new += 1;
            }
        }
        prop_assert_eq!(new, bodies.len());
        prop_assert_eq!(&shuffled, &in_order);
        for (s, segs) in streams.iter().enumerate() {
            let t = shuffled.timeline(&format!("stream-{s}")).expect("ingested");
            let gaps = t.gaps();
            prop_assert_eq!(gaps.len(), segs.iter().skip(1).filter(|(g, _)| *g > 0).count());
            prop_assert!(t.overlaps().is_empty());
            let starts: Vec<i64> = t.segments().map(|x| x.start).collect();
            prop_assert!(starts.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}

#[test]
fn bad_callbacks_get_typed_errors_and_change_nothing() {
    let mut ing = Ingestor::new();
    let field = |provider, field| IngestError::Field { provider, field };
    let cases: Vec<(&str, IngestError)> = vec![
        ("{", IngestError::Json(String::new())),
        ("[1,2]", IngestError::UnknownShape { seen: "a JSON array".into() }),
        (r#"{"foo":1}"#, IngestError::UnknownShape { seen: r#"top-level fields "foo""#.into() }),
        (r#"{"event_type":1}"#, field(Provider::TencentCss, "stream_id")),
        (
            r#"{"event_type":100,"stream_id":"s","file_id":"f","start_time":10}"#,
            field(Provider::TencentCss, "end_time"),
        ),
        (
            r#"{"event_type":100,"stream_id":"s","file_id":"f","start_time":10,"end_time":5,"video_url":"u"}"#,
            IngestError::EndBeforeStart { start: 10_000, end: 5_000 },
        ),
        (
            r#"{"event_type":100,"stream_id":"s","file_id":"f","start_time":10,"end_time":999999,"video_url":"u"}"#,
            IngestError::AbsurdDuration { duration_ms: 999_989_000 },
        ),
        (r#"{"stream_id":"s","file_name":"a.flv","start":1,"end":2}"#, field(Provider::Roomkit, "download_url")),
        (
            r#"{"stream_id":"s","file_name":"a.flv","start":9000000000000000000,"end":9000000000000000001,"download_url":"u"}"#,
            IngestError::TimeOutOfRange { field: "start", value: 9_000_000_000_000_000_000 },
        ),
        (
            r#"{"stream_id":"s","file_name":"a.flv","start":1,"end":2,"download_url":"concat:a.flv|b.flv"}"#,
            IngestError::Input {
                field: "url",
                error: InputError::Scheme {
                    scheme: "concat".into(),
                    purpose: Purpose::Download,
                    allowed: "http, https, local paths",
                },
            },
        ),
        (r#"{"action":"on_dvr","stream":"s"}"#, field(Provider::Srs, "file")),
        (r#"{"action":"on_hls","stream":"s","file":"x.ts"}"#, field(Provider::Srs, "duration")),
    ];
    for (body, want) in cases {
        let got = ing.ingest(body.as_bytes(), 1_000_000).expect_err(body);
        match (&got, &want) {
            (IngestError::Json(_), IngestError::Json(_)) => {}
            _ => assert_eq!(got, want, "{body}"),
        }
    }
    assert!(ing.timelines().is_empty());
    // The unknown-shape message lists what is recognised, never a missing field.
    let msg = ing.ingest(br#"{"foo":1}"#, 0).expect_err("unknown").to_string();
    assert!(
        msg.contains("recognised") && msg.contains("nginx-rtmp") && !msg.contains("file_name\" is missing"),
        "{msg}"
    );
    let ok = r#"{"stream_id":"s","file_name":"a.flv","start":1000,"end":2000,"download_url":"u1"}"#;
    let changed = r#"{"stream_id":"s","file_name":"a.flv","start":1000,"end":2500,"download_url":"u1"}"#;
    assert_eq!(ing.ingest(ok.as_bytes(), 0), Ok(Ingested::New));
    assert!(matches!(ing.ingest(changed.as_bytes(), 0), Err(IngestError::Conflict { .. })));
    assert_eq!(ing.timeline("s").expect("held").segments().next().expect("one").end, 2000);
}

#[test]
fn srs_callbacks_are_timed_on_arrival_and_their_retries_are_duplicates() {
    let mut ing = Ingestor::new();
    let hls = r#"{"action":"on_hls","client_id":"c1","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","stream":"t1","param":"","duration":9.5,"cwd":"/srs","file":"./objs/nginx/html/live/t1-3.ts","url":"live/t1-3.ts","m3u8":"./objs/nginx/html/live/t1.m3u8","seq_no":3}"#;
    assert_eq!(ing.ingest(hls.as_bytes(), 100_000), Ok(Ingested::New));
    assert_eq!(ing.ingest(hls.as_bytes(), 103_000), Ok(Ingested::Duplicate));
    let seg = ing.timeline("live/t1").expect("held").segments().next().expect("one").clone();
    assert_eq!((seg.start, seg.end, seg.timing), (90_500, 100_000, Timing::OnArrival));
    let dvr = r#"{"action":"on_dvr","client_id":"c1","ip":"127.0.0.1","vhost":"v","app":"live","stream":"t1","param":"","cwd":"/srs","file":"./objs/live/t1.1700000000.flv"}"#;
    assert_eq!(ing.ingest(dvr.as_bytes(), 200_000), Ok(Ingested::New));
    let t = ing.timeline("live/t1").expect("held");
    assert_eq!(t.gaps(), vec![Span { from: 100_000, to: 200_000 }]);
}
