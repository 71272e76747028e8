//! Planning 10 streams x 100 segments (gap detection, alignment, layout
//! switches), and callback signature verification throughput.
//!
//! Run: `cargo bench -p room-media-ctl --bench plan`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use room_media_ctl::auth::{HmacAuth, TencentSign};
use room_media_ctl::ingest::{FileFormat, Ingestor, Segment, Timing};
use room_media_ctl::layout::{Canvas, Corner, Input, InputKind, Limits, Rgb, Template};
use room_media_ctl::plan::{GapFill, LayoutSwitch, Output, PlanRequest, plan};

const BASE: i64 = 1_700_000_000_000;

fn class() -> (Ingestor, PlanRequest) {
    let mut ing = Ingestor::new();
    for s in 0..10 {
        let mut t = BASE + s * 1_000;
        for n in 0..100 {
            // 9 s segments with a 1 s gap every 7th, a 0.5 s overlap every 11th.
            let start = if n % 11 == 10 { t - 500 } else { t };
            ing.add(Segment {
                stream: format!("s{s}"),
                file_id: format!("s{s}-{n}"),
                user: None,
                start,
                end: start + 9_000,
                url: format!("https://files.example/s{s}/{n}.flv"),
                format: FileFormat::Flv,
                timing: Timing::Reported,
            })
            .unwrap();
            t = start + 9_000 + if n % 7 == 6 { 1_000 } else { 0 };
        }
    }
    let inputs: Vec<Input> =
        (0..10).map(|i| Input { id: format!("s{i}"), kind: InputKind::AudioVideo, width: 1280, height: 720 }).collect();
    // Slides full screen <-> picture in picture every 90 s, a grid at the end.
    let mut switches = Vec::new();
    for k in 0..10 {
        let template = if k % 2 == 0 {
            Template::Single { input: "s1".into() }
        } else {
            Template::PictureInPicture {
                main: "s1".into(),
                overlay: "s0".into(),
                corner: Corner::BottomRight,
                scale: 0.25,
                margin: 16,
            }
        };
        switches.push(LayoutSwitch { at: BASE + k * 90_000, template });
    }
    switches.push(LayoutSwitch {
        at: BASE + 900_000,
        template: Template::Grid { inputs: inputs.iter().map(|i| i.id.clone()).collect() },
    });
    let req = PlanRequest {
        canvas: Canvas { width: 1280, height: 720, color: Rgb(0, 0, 0) },
        fps: 25,
        inputs,
        switches,
        fill: GapFill::RepeatLastFrame,
        watermark: None,
        outputs: vec![Output::Mp4, Output::Hls { segment_seconds: 6, keys: Vec::new(), rotate_every: 0 }],
        limits: Limits::default(),
    };
    (ing, req)
}

fn bench(c: &mut Criterion) {
    let (ing, req) = class();
    let mut g = c.benchmark_group("media_ctl");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("plan_10_streams_x_100_segments", |b| b.iter(|| plan(black_box(&req), ing.timelines()).unwrap()));

    const N: usize = 10_000;
    let signer = HmacAuth::new(b"callback-key".to_vec(), 300, N + 1);
    let body = br#"{"event_type":100,"stream_id":"s1","file_id":"f1","start_time":1700000000,"end_time":1700000060,"video_url":"https://cdn.example/s1/1.flv"}"#;
    let now = 1_800_000_000;
    let signed: Vec<_> = (0..N).map(|i| signer.sign(now, &format!("nonce-{i}"), body)).collect();
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("hmac_verify_10k_callbacks", |b| {
        b.iter_batched(
            || HmacAuth::new(b"callback-key".to_vec(), 300, N + 1),
            |mut auth| {
                for s in &signed {
                    auth.verify(s, body, now).unwrap();
                }
                auth
            },
            BatchSize::LargeInput,
        )
    });
    let tencent = TencentSign::new("tencent-key", 86_400);
    let signs: Vec<(u64, String)> = (0..N as u64).map(|i| (now + i, tencent.sign(now + i))).collect();
    g.bench_function("tencent_verify_10k_callbacks", |b| {
        b.iter(|| {
            for (t, s) in &signs {
                tencent.verify(*t, s, now).unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
