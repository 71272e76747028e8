//! Render plans against their definition: pieces on the axis without
//! overlap, gaps where recordings are missing, layouts covering the axis.

use std::collections::BTreeMap;

use proptest::prelude::*;
use room_media_ctl::ingest::{FileFormat, Ingestor, Segment, Span, Timing};
use room_media_ctl::layout::{Canvas, Input, InputKind, Limits, Rgb, Template};
use room_media_ctl::plan::{GapFill, LayoutSwitch, Output, PlanError, PlanRequest, plan};

fn seg(stream: &str, n: usize, start: i64, end: i64) -> Segment {
    Segment {
        stream: stream.into(),
        file_id: format!("{stream}-{n}"),
        user: None,
        start,
        end,
        url: format!("https://files.example/rec/{stream}-{n}.flv"),
        format: FileFormat::Flv,
        timing: Timing::Reported,
    }
}

fn request(streams: usize, switches: Vec<LayoutSwitch>) -> PlanRequest {
    PlanRequest {
        canvas: Canvas { width: 640, height: 360, color: Rgb(0, 0, 0) },
        fps: 25,
        inputs: (0..streams)
            .map(|i| Input { id: format!("s{i}"), kind: InputKind::AudioVideo, width: 320, height: 180 })
            .collect(),
        switches,
        fill: GapFill::RepeatLastFrame,
        watermark: None,
        outputs: vec![Output::Mp4],
        limits: Limits::default(),
    }
}

fn grid(n: usize, at: i64) -> LayoutSwitch {
    LayoutSwitch { at, template: Template::Grid { inputs: (0..n).map(|i| format!("s{i}")).collect() } }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn plans_match_their_definition(
        streams in proptest::collection::vec(proptest::collection::vec((-3_000i64..5_000, 1i64..8_000), 1..8), 1..4),
        switch_times in proptest::collection::vec(0i64..40_000, 1..4),
    ) {
        let mut ing = Ingestor::new();
        let base = 1_700_000_000_000i64;
        for (s, segs) in streams.iter().enumerate() {
            let mut t = base + s as i64 * 1_000;
            for (n, (gap, len)) in segs.iter().enumerate() {
                t = (t + gap).max(base);
                ing.add(seg(&format!("s{s}"), n, t, t + len)).expect("valid");
                t += len;
            }
        }
        let switches = switch_times.iter().map(|at| grid(streams.len(), base + at)).collect();
        let span = ing.timelines().values().filter_map(|t| t.span()).fold(None, |acc: Option<Span>, s| {
            Some(acc.map_or(s, |a| Span { from: a.from.min(s.from), to: a.to.max(s.to) }))
        }).expect("recordings");
        let p = match plan(&request(streams.len(), switches), ing.timelines()) {
            Ok(p) => p,
            // Shorter than one frame (40 ms at 25 fps): refused, never an empty plan.
            Err(e) => {
                prop_assert!(span.to - span.from < 40, "refused a {} ms span: {e}", span.to - span.from);
                prop_assert_eq!(e, PlanError::TooShort { span_ms: span.to - span.from, fps: 25 });
                return Ok(());
            }
        };
        let axis = p.duration_ms();
        prop_assert_eq!(p.frames, (axis as u64 * 25) / 1000);
        for input in &p.inputs {
            let t = ing.timeline(&input.input.id).expect("ingested");
            // Pieces in order, without overlap, inside the axis.
            for w in input.pieces.windows(2) {
                prop_assert!(w[0].at + w[0].duration <= w[1].at);
            }
            for piece in &input.pieces {
                prop_assert!(piece.at >= 0 && piece.at + piece.duration <= axis && piece.duration > 0 && piece.skip >= 0);
            }
            // Every instant of the axis a recording covers is covered by a piece.
            for s in t.segments() {
                for probe in [s.start, (s.start + s.end) / 2, s.end - 1] {
                    let at = probe - p.start;
                    if at < 0 || at >= axis { continue; }
                    prop_assert!(input.pieces.iter().any(|x| x.at <= at && at < x.at + x.duration), "{} uncovered", at);
                }
            }
            // Gaps are exactly the holes between pieces.
            let holes: Vec<Span> = input.pieces.windows(2).filter(|w| w[0].at + w[0].duration < w[1].at)
                .map(|w| Span { from: w[0].at + w[0].duration, to: w[1].at }).collect();
            prop_assert_eq!(&input.gaps, &holes);
        }
        // Layouts back to back over the whole axis.
        prop_assert_eq!(p.layouts.first().map(|l| l.span.from), Some(0));
        prop_assert_eq!(p.layouts.last().map(|l| l.span.to), Some(axis));
        for w in p.layouts.windows(2) {
            prop_assert_eq!(w[0].span.to, w[1].span.from);
        }
    }
}

#[test]
fn late_joins_overlaps_and_errors() {
    let mut ing = Ingestor::new();
    ing.add(seg("s0", 0, 0, 10_000)).expect("valid");
    ing.add(seg("s0", 1, 8_000, 20_000)).expect("valid"); // overlaps 2 s
    ing.add(seg("s1", 0, 12_000, 15_000)).expect("valid"); // joins late
    let req =
        request(2, vec![grid(2, 0), LayoutSwitch { at: 5_000, template: Template::Single { input: "s0".into() } }]);
    let p = plan(&req, ing.timelines()).expect("a plan");
    assert_eq!(p.frames, 500);
    assert_eq!(p.inputs[0].pieces[1].skip, 2_000);
    assert_eq!(p.inputs[0].pieces[1].at, 10_000);
    assert_eq!((p.inputs[1].first, p.inputs[1].last), (12_000, 15_000));
    assert_eq!(p.layouts.len(), 2);
    assert_eq!(p.frame_at(12_000), 300);

    let mut bad = req.clone();
    bad.fps = 0;
    assert_eq!(plan(&bad, ing.timelines()), Err(PlanError::BadFps(0)));
    let mut bad = req.clone();
    bad.switches.clear();
    assert_eq!(plan(&bad, ing.timelines()), Err(PlanError::NoLayout));
    let mut bad = req.clone();
    bad.inputs.push(Input { id: "ghost".into(), kind: InputKind::Video, width: 10, height: 10 });
    assert_eq!(plan(&bad, ing.timelines()), Err(PlanError::NoTimeline("ghost".into())));
    let mut bad = req.clone();
    bad.switches.push(LayoutSwitch { at: 1, template: Template::Single { input: "nobody".into() } });
    assert!(matches!(plan(&bad, ing.timelines()), Err(PlanError::Layout { index: 2, .. })));
    let mut bad = req;
    bad.outputs = vec![Output::Hls { segment_seconds: 0, keys: vec![], rotate_every: 0 }];
    assert!(matches!(plan(&bad, ing.timelines()), Err(PlanError::BadOutput(_))));
    let empty = BTreeMap::new();
    assert!(matches!(plan(&request(1, vec![grid(1, 0)]), &empty), Err(PlanError::NoTimeline(_))));
}

#[test]
fn a_colour_input_needs_no_recording_and_spans_the_axis() {
    let mut ing = Ingestor::new();
    ing.add(seg("s0", 0, 0, 4_000)).expect("valid");
    let mut req = request(
        1,
        vec![LayoutSwitch { at: 0, template: Template::SideBySide { left: "s0".into(), right: "bg".into() } }],
    );
    req.inputs.push(Input { id: "bg".into(), kind: InputKind::Color(Rgb(0, 0, 255)), width: 320, height: 360 });
    let p = plan(&req, ing.timelines()).expect("a plan");
    let bg = p.inputs.iter().find(|i| i.input.id == "bg").expect("planned");
    assert_eq!((bg.first, bg.last, bg.pieces.len()), (0, 4_000, 0));
    let policy = room_media_ctl::input::InputPolicy::network_only();
    let (_, graph, _) = room_media_ctl::ffmpeg::render_graph(&p, &policy).expect("renderable");
    assert!(graph.contains("color=c=0x0000FF:s=320x360"), "{graph}");
}

#[test]
fn recordings_shorter_than_a_frame_are_refused() {
    let mut ing = Ingestor::new();
    ing.add(seg("s0", 0, 1_000, 1_039)).expect("valid");
    let r = plan(&request(1, vec![grid(1, 1_000)]), ing.timelines());
    assert_eq!(r.err(), Some(PlanError::TooShort { span_ms: 39, fps: 25 }));
    ing.add(seg("s0", 1, 1_039, 1_040)).expect("valid");
    let p = plan(&request(1, vec![grid(1, 1_000)]), ing.timelines()).expect("one frame");
    assert_eq!(p.frames, 1);
}
