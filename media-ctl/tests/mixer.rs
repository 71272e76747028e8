//! The live mixer's layout arithmetic against simple models: where each
//! slot shows what, and the filter commands of a switch (applied to the
//! old slots they give the new ones, and say nothing that does not
//! change). The mixer on real ffmpeg is in `live_e2e.rs`.

use proptest::prelude::*;
use room_media_ctl::layout::{self, Canvas, Corner, Input, InputKind, Limits, Rect, Rgb, Template};
use room_media_ctl::live::mixer::{MixInput, MixSettings, SlotState, mixer_graph, mixer_job, slots, switch_commands};

fn inputs(n: usize) -> Vec<MixInput> {
    (0..n)
        .map(|i| MixInput {
            id: format!("s{i}"),
            url: format!("rtmp://origin.example/live/s{i}"),
            kind: InputKind::AudioVideo,
        })
        .collect()
}

fn settings(w: u32, h: u32, bw: u32, bh: u32) -> MixSettings {
    let mut s = MixSettings::new(Canvas { width: w, height: h, color: Rgb(0, 0, 0) });
    s.input_box = (bw, bh);
    s.outputs.flv = Some("/tmp/mix.flv".into());
    s
}

/// The slots of `ins` (boxed at 640x360) showing `input` alone.
fn single(settings: &MixSettings, ins: &[MixInput], input: &str) -> Vec<SlotState> {
    let described: Vec<Input> =
        ins.iter().map(|i| Input { id: i.id.clone(), kind: i.kind, width: 640, height: 360 }).collect();
    let l =
        layout::layout(settings.canvas, &Template::Single { input: input.into() }, &described, None, Limits::default())
            .expect("layout");
    slots(&l, ins, settings).expect("slots")
}

fn template(n: usize) -> BoxedStrategy<Template> {
    let single = (0..n).prop_map(|i| Template::Single { input: format!("s{i}") }).boxed();
    let grid = Just(Template::Grid { inputs: (0..n).map(|i| format!("s{i}")).collect() }).boxed();
    if n < 2 {
        return prop_oneof![single, grid].boxed();
    }
    // Two different inputs: the second a non-zero step after the first.
    let two = move || (0..n, 1..n).prop_map(move |(a, step)| (a, (a + step) % n));
    let side = two().prop_map(|(a, b)| Template::SideBySide { left: format!("s{a}"), right: format!("s{b}") });
    let pip =
        (two(), 0..4usize, 0.1f64..0.5, 0u32..32).prop_map(|((a, b), c, scale, margin)| Template::PictureInPicture {
            main: format!("s{a}"),
            overlay: format!("s{b}"),
            corner: [Corner::TopLeft, Corner::TopRight, Corner::BottomLeft, Corner::BottomRight][c],
            scale,
            margin,
        });
    prop_oneof![single, side, pip, grid].boxed()
}

/// Applies the commands the way ffmpeg's filters would.
fn apply(from: &[SlotState], commands: &[String]) -> Vec<SlotState> {
    let mut out = from.to_vec();
    for c in commands {
        let parts: Vec<&str> = c.split(' ').collect();
        let [target, what, value] = parts[..] else { panic!("{c}") };
        let (filter, slot) = target.split_once('@').expect("a named filter");
        let k: usize = slot[1..].parse().expect("a slot");
        let v: u32 = value.parse().expect("a number");
        let s = &mut out[k];
        match (filter, what) {
            ("streamselect", "map") => s.input = v as usize,
            ("crop", "w") => s.crop.width = v,
            ("crop", "h") => s.crop.height = v,
            ("crop", "x") => s.crop.x = v,
            ("crop", "y") => s.crop.y = v,
            ("scale", "w") => s.size.0 = v,
            ("scale", "h") => s.size.1 = v,
            ("overlay", "x") => s.at.0 = v,
            ("overlay", "y") => s.at.1 = v,
            _ => panic!("unknown command {c}"),
        }
    }
    out
}

fn inside(outer: Rect, at: (u32, u32), size: (u32, u32)) -> bool {
    at.0 >= outer.x
        && at.1 >= outer.y
        && at.0 + size.0 <= outer.x + outer.width
        && at.1 + size.1 <= outer.y + outer.height
}

proptest! {
    #[test]
    fn slots_put_each_region_inside_its_place(
        (n, t) in (1usize..6).prop_flat_map(|n| (Just(n), template(n))),
        (w, h) in (64u32..960, 64u32..540).prop_map(|(w, h)| (w * 2, h * 2)),
        (bw, bh) in (8u32..640, 8u32..360).prop_map(|(w, h)| (w * 2, h * 2)),
    ) {
        let settings = settings(w, h, bw, bh);
        let ins = inputs(n);
        let described: Vec<Input> = ins.iter().map(|i| Input { id: i.id.clone(), kind: i.kind, width: bw, height: bh }).collect();
let layout = layout::layout(settings.canvas, &t, &described, None, Limits::default());
        prop_assume!(layout.is_ok(), "a layout the canvas cannot hold");
        let layout = layout.expect("checked");
        let state = slots(&layout, &ins, &settings).expect("slots");
        prop_assert_eq!(state.len(), n);
        let mut regions = layout.regions.clone();
        regions.sort_by_key(|r| r.z);
        for (k, slot) in state.iter().enumerate() {
            prop_assert!(slot.size.0 >= 2 && slot.size.1 >= 2 && slot.size.0 % 2 == 0 && slot.size.1 % 2 == 0);
            prop_assert!(slot.crop.x + slot.crop.width <= bw && slot.crop.y + slot.crop.height <= bh, "{:?}", slot);
            match regions.get(k) {
                Some(region) => {
                    prop_assert_eq!(&ins[slot.input].id, &region.input);
                    prop_assert!(inside(region.rect, slot.at, slot.size), "{:?} outside {:?}", slot, region.rect);
                    // Contain: the picture touches two opposite sides of its
                    // region (to the even pixel) and keeps the box's aspect.
                    let fills_w = region.rect.width - slot.size.0 <= 2;
                    let fills_h = region.rect.height - slot.size.1 <= 2;
                    prop_assert!(fills_w || fills_h, "{:?} in {:?}", slot, region.rect);
                    let aspect = f64::from(bw) / f64::from(bh);
                    let shown = f64::from(slot.size.0) / f64::from(slot.size.1);
                    let tolerance = 4.0 / f64::from(slot.size.0.min(slot.size.1)) * aspect.max(1.0 / aspect) + 0.02;
                    prop_assert!((shown / aspect - 1.0).abs() <= tolerance, "{shown} vs {aspect}: {:?}", slot);
                }
                None => prop_assert_eq!(slot.at, (w, h), "a hidden slot is off the canvas"),
            }
        }
    }

    #[test]
    fn a_switch_says_exactly_what_changes(
        (n, ta, tb) in (1usize..6).prop_flat_map(|n| (Just(n), template(n), template(n))),
    ) {
        let settings = settings(1280, 720, 640, 360);
        let ins = inputs(n);
        let described: Vec<Input> = ins.iter().map(|i| Input { id: i.id.clone(), kind: i.kind, width: 640, height: 360 }).collect();
        let (la, lb) = (
            layout::layout(settings.canvas, &ta, &described, None, Limits::default()),
            layout::layout(settings.canvas, &tb, &described, None, Limits::default()),
        );
        prop_assume!(la.is_ok() && lb.is_ok());
        let (la, lb) = (la.expect("checked"), lb.expect("checked"));
        let (from, to) = (slots(&la, &ins, &settings).expect("slots"), slots(&lb, &ins, &settings).expect("slots"));
        let commands = switch_commands(&from, &to);
        prop_assert_eq!(apply(&from, &commands), to.clone());
        prop_assert_eq!(commands.is_empty(), from == to);
        // Nothing said twice, nothing said that was already so.
        for (i, c) in commands.iter().enumerate() {
            prop_assert!(!commands[..i].contains(c));
            prop_assert_ne!(apply(&from, std::slice::from_ref(c)), from.clone(), "{} changes nothing", c);
        }
    }
}

#[test]
fn the_graph_has_a_slot_per_input_and_refuses_bad_settings() {
    let settings = settings(1280, 720, 640, 360);
    let ins = inputs(3);
    let described: Vec<Input> =
        ins.iter().map(|i| Input { id: i.id.clone(), kind: i.kind, width: 640, height: 360 }).collect();
    let l =
        layout::layout(settings.canvas, &Template::Single { input: "s1".into() }, &described, None, Limits::default())
            .expect("layout");
    let state = slots(&l, &ins, &settings).expect("slots");
    let control = "127.0.0.1:5555".parse().expect("addr");
    let mix = mixer_graph(&ins, &state, &settings, control).expect("graph");
    for k in 0..3 {
        for name in [
            format!("streamselect@s{k}=inputs=3"),
            format!("crop@c{k}="),
            format!("scale@z{k}="),
            format!("overlay@o{k}="),
        ] {
            assert!(mix.graph.contains(&name), "{name} in {}", mix.graph);
        }
    }
    assert!(mix.graph.contains("streamselect@s0=inputs=3:map=1"), "slot 0 shows s1");
    assert!(mix.graph.contains("zmq=bind_address=tcp\\\\://127.0.0.1\\\\:5555"));
    assert!(mix.audio && mix.graph.contains("amix=inputs=3"));
    let mut bad = settings.clone();
    bad.fps = 0;
    assert!(mixer_graph(&ins, &state, &bad, control).is_err());
    let mut bad = settings.clone();
    bad.outputs.flv = None;
    assert!(mixer_graph(&ins, &state, &bad, control).is_err(), "no output");
    let mut twice = inputs(2);
    twice[1].id = "s0".into();
    assert!(mixer_graph(&twice, &state[..2], &settings, control).is_err(), "an id twice");
    // More regions than inputs: the mix has a slot per input.
    let grid = layout::layout(
        settings.canvas,
        &Template::Grid { inputs: vec!["s0".into(), "s1".into(), "s2".into()] },
        &described,
        None,
        Limits::default(),
    )
    .expect("layout");
    assert!(slots(&grid, &ins[..2], &settings).is_err());
}

#[test]
fn a_restarted_mix_continues_its_playlist_and_records_to_new_files() {
    let dir = tempfile::tempdir().expect("dir");
    let policy = room_media_ctl::input::InputPolicy::with_local_dir(dir.path()).expect("policy");
    let hls = dir.path().join("hls");
    std::fs::create_dir(&hls).expect("dir");
    let mut settings = settings(1280, 720, 640, 360);
    settings.outputs.flv = Some(dir.path().join("mix.flv"));
    settings.outputs.hls = Some(room_media_ctl::live::mixer::LiveHls {
        dir: hls,
        segment: std::time::Duration::from_secs(2),
        rotate_every: 0,
        key_uri_prefix: String::new(),
    });
    let ins = inputs(2);
    let state = single(&settings, &ins, "s0");
    let control = "127.0.0.1:5555".parse().expect("addr");
    let timeout = std::time::Duration::from_secs(5);
    let first = mixer_job(&ins, &state, &settings, control, &policy, timeout).expect("job").args.join(" ");
    assert!(!first.contains("append_list") && first.contains("/mix.flv"), "{first}");
    // The first process wrote its playlist and recording: the next one
    // continues the one and leaves the other alone.
    std::fs::write(dir.path().join("hls/index.m3u8"), "#EXTM3U\n").expect("playlist");
    std::fs::write(dir.path().join("mix.flv"), "FLV").expect("recording");
    std::fs::write(dir.path().join("mix-1.flv"), "FLV").expect("recording");
    let again = mixer_job(&ins, &state, &settings, control, &policy, timeout).expect("job").args.join(" ");
    assert!(again.contains("+append_list:"), "{again}");
    assert!(again.contains("/mix-2.flv"), "{again}");
    // A live target outside the allow-list is refused.
    settings.outputs.live = vec!["file:///etc/passwd".into()];
    assert!(mixer_job(&ins, &state, &settings, control, &policy, timeout).is_err());
}

#[test]
fn on_the_source_clock_the_background_takes_the_first_pictures_times() {
    use room_media_ctl::layout::{Length, Watermark, WatermarkKind};
    use room_media_ctl::live::mixer::MixClock;

    let dir = tempfile::tempdir().expect("dir");
    let policy = room_media_ctl::input::InputPolicy::with_local_dir(dir.path()).expect("policy");
    let logo = dir.path().join("logo.png");
    std::fs::write(&logo, b"PNG").expect("logo");
    let mut settings = settings(1280, 720, 640, 360);
    settings.outputs.flv = Some(dir.path().join("mix.flv"));
    settings.watermark = Some(Watermark {
        kind: WatermarkKind::Image(logo.display().to_string()),
        x: Length::Px(10),
        y: Length::Px(10),
        size: Length::Px(64),
    });
    // The first input is sound only: the background follows the second.
    let mut ins = inputs(3);
    ins[0].kind = InputKind::Audio;
    let state = single(&settings, &ins, "s1");
    let control = "127.0.0.1:5555".parse().expect("addr");
    let timeout = std::time::Duration::from_secs(5);

    let arrival = mixer_job(&ins, &state, &settings, control, &policy, timeout).expect("job").args;
    let graph = |args: &[String]| args[args.iter().position(|a| a == "-filter_complex").expect("a graph") + 1].clone();
    assert!(graph(&arrival).starts_with("color=c=0x000000:s=1280x720:r=25,zmq="), "{}", graph(&arrival));
    assert!(!arrival.contains(&"-copyts".to_owned()) && arrival.contains(&"-loop".to_owned()));

    settings.clock = MixClock::Source;
    let source = mixer_job(&ins, &state, &settings, control, &policy, timeout).expect("job").args;
    let g = graph(&source);
    assert!(source.contains(&"-copyts".to_owned()), "{source:?}");
    assert!(!source.contains(&"-loop".to_owned()), "the image is one frame, kept: {source:?}");
    assert!(!g.contains("color=c=0x000000:s=1280x720"), "no generated background: {g}");
    assert!(g.contains("split=4[n1_0][n1_1][n1_2][bgsrc]"), "the second input feeds the background: {g}");
    assert!(
        g.contains("[bgsrc]crop=16:16:0:0,") && g.contains(",zmq=bind_address=") && g.contains("eof_action=repeat[wm]"),
        "{g}"
    );

    // With no picture at all there is no clock to follow.
    let silent: Vec<MixInput> = ins
        .iter()
        .cloned()
        .map(|mut i| {
            i.kind = InputKind::Audio;
            i
        })
        .collect();
    let none = mixer_job(&silent, &state, &settings, control, &policy, timeout).expect("job").args;
    assert!(!none.contains(&"-copyts".to_owned()) && graph(&none).starts_with("color="), "{none:?}");
}
