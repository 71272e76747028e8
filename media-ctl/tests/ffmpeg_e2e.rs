//! End to end through Debian's ffmpeg: test recordings (a teacher camera
//! with a gap, a student joining late), their callbacks shuffled and
//! repeated, a plan, MP4, FLV and encrypted HLS renders, then ffprobe
//! checks of what came out.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use room_media_ctl::ffmpeg::{encrypt_hls, render_job, run};
use room_media_ctl::ingest::Ingestor;
use room_media_ctl::input::InputPolicy;
use room_media_ctl::layout::{Canvas, Fit, Input, InputKind, Length, Limits, RegionSpec, Rgb, Template};
use room_media_ctl::plan::{GapFill, HlsKey, LayoutSwitch, Output, PlanRequest, plan};

const BASE: i64 = 1_700_000_000_000;
const FPS: u32 = 25;

fn ffmpeg(args: &[&str]) -> std::process::Output {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-y", "-loglevel", "error"])
        .args(args)
        .output()
        .expect("ffmpeg runs")
}

fn make_recording(path: &Path, video: &str, seconds: u32, with_sound: bool) {
    let v = format!("{video}:rate={FPS}:duration={seconds}");
    let mut args = vec!["-f", "lavfi", "-i", &v];
    let a = format!("sine=frequency=440:duration={seconds}");
    if with_sound {
        args.extend(["-f", "lavfi", "-i", &a, "-c:a", "aac"]);
    }
    let out = path.display().to_string();
    args.extend(["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-f", "flv", &out]);
    let o = ffmpeg(&args);
    assert!(o.status.success(), "making {out}: {}", String::from_utf8_lossy(&o.stderr));
}

fn probe(path: &str, args: &[&str]) -> String {
    let o = Command::new("ffprobe").args(["-v", "error"]).args(args).arg(path).output().expect("ffprobe runs");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn frame_count(path: &str) -> u64 {
    let extra = if path.ends_with(".m3u8") { vec!["-allowed_extensions", "ALL"] } else { vec![] };
    let mut args = extra;
    args.extend([
        "-count_frames",
        "-select_streams",
        "v:0",
        "-show_entries",
        "stream=nb_read_frames",
        "-of",
        "csv=p=0",
    ]);
    // HLS lists its stream under each program too: the first line is enough.
    let out = probe(path, &args);
    out.lines().next().unwrap_or_default().trim().parse().unwrap_or_else(|_| panic!("frame count of {path}: {out}"))
}

#[test]
#[ignore = "needs ffmpeg"]
fn recordings_to_verified_playback() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = if std::env::var_os("MEDIA_E2E_KEEP").is_some() { Path::new("/tmp/hlsdbg") } else { dir.path() };
    // The teacher's camera: 0-4 s, a gap, 6-10 s. The student joins at 7 s.
    make_recording(&d.join("teacher-a.flv"), "testsrc=size=320x180", 4, true);
    make_recording(&d.join("teacher-b.flv"), "testsrc=size=320x180", 4, true);
    make_recording(&d.join("student.flv"), "color=c=red:size=160x90", 3, false);
    let cb = |stream: &str, file: &str, start: i64, end: i64| {
        format!(
            r#"{{"stream_id":"{stream}","file_name":"{file}","user_id":"u-{stream}","start":{},"end":{},"download_url":"{}"}}"#,
            BASE + start,
            BASE + end,
            d.join(file).display()
        )
    };
    let callbacks = [
        cb("teacher", "teacher-a.flv", 0, 4_000),
        cb("teacher", "teacher-b.flv", 6_000, 10_000),
        cb("student", "student.flv", 7_000, 10_000),
    ];
    // Shuffled and delivered several times, as providers retry.
    let mut ingest = Ingestor::new();
    for i in [2, 0, 2, 1, 0, 2, 1, 1, 0] {
        ingest.ingest(callbacks[i].as_bytes(), 0).expect("valid callback");
    }
    assert_eq!(ingest.timeline("teacher").expect("teacher").gaps().len(), 1);

    let region = |input: &str, x, y, w, h, z| RegionSpec {
        input: input.into(),
        x: Length::Px(x),
        y: Length::Px(y),
        width: Length::Px(w),
        height: Length::Px(h),
        z,
        crop: None,
        fit: Fit::Stretch,
    };
    let keys = vec![
        HlsKey { key: [7; 16], iv: [1; 16], uri: d.join("k1.key").display().to_string() },
        HlsKey { key: [9; 16], iv: [2; 16], uri: d.join("k2.key").display().to_string() },
    ];
    std::fs::write(d.join("k1.key"), [7u8; 16]).expect("key file");
    std::fs::write(d.join("k2.key"), [9u8; 16]).expect("key file");
    let req = PlanRequest {
        canvas: Canvas { width: 640, height: 360, color: Rgb(0, 0, 0) },
        fps: FPS,
        inputs: vec![
            Input { id: "teacher".into(), kind: InputKind::AudioVideo, width: 320, height: 180 },
            Input { id: "student".into(), kind: InputKind::Video, width: 160, height: 90 },
        ],
        switches: vec![LayoutSwitch {
            at: BASE,
            template: Template::Custom(vec![
                region("teacher", 0, 0, 640, 360, 0),
                region("student", 464, 254, 160, 90, 1),
            ]),
        }],
        fill: GapFill::RepeatLastFrame,
        watermark: None,
        outputs: vec![
            Output::Mp4,
            Output::Flv,
            Output::Hls { segment_seconds: 2, keys: keys.clone(), rotate_every: 2 },
        ],
        limits: Limits::default(),
    };
    let p = plan(&req, ingest.timelines()).expect("a plan");
    assert_eq!(p.frames, 250);
    let student = p.inputs.iter().find(|i| i.input.id == "student").expect("student");
    assert_eq!(student.first, 7_000);

    let policy = InputPolicy::with_local_dir(d).expect("a local directory");
    let cancel = Arc::new(AtomicBool::new(false));
    let mp4 = d.join("out.mp4");
    let flv = d.join("out.flv");
    let hls = d.join("hls");
    std::fs::create_dir_all(&hls).expect("hls dir");
    let mut reports = 0;
    for (output, path) in
        [(&p.outputs[0], mp4.as_path()), (&p.outputs[1], flv.as_path()), (&p.outputs[2], hls.as_path())]
    {
        let job = render_job(&p, output, path, &policy).expect("a renderable plan");
        // Every input and the output carry exactly the protocols they need.
        let whitelists = job.args.iter().filter(|a| *a == "-protocol_whitelist").count();
        let inputs = job.args.iter().filter(|a| *a == "-i").count();
        assert_eq!(whitelists, inputs + 1, "{:?}", job.args);
        assert!(job.args.windows(2).all(|w| w[0] != "-protocol_whitelist" || w[1] == "file"), "{:?}", job.args);
        run("ffmpeg", &job, &cancel, |_| reports += 1)
            .unwrap_or_else(|e| panic!("render {path:?}: {e}\n{}", job.graph));
    }
    assert!(reports > 0, "progress was reported");
    let segments = encrypt_hls(&hls, &keys, 2).expect("encrypted");
    assert_eq!(segments.len(), 5);

    // Frame counts exactly as planned, durations within a frame.
    for path in [&mp4, &flv] {
        let path = path.display().to_string();
        assert_eq!(frame_count(&path), 250, "{path}");
        let duration: f64 =
            probe(&path, &["-show_entries", "format=duration", "-of", "csv=p=0"]).parse().expect("duration");
        assert!((duration - 10.0).abs() <= 1.0 / f64::from(FPS) + 0.03, "{path}: {duration}");
    }
    // The encrypted HLS plays with its keys, with the key rotating.
    let playlist = std::fs::read_to_string(hls.join("index.m3u8")).expect("playlist");
    assert_eq!(playlist.matches("#EXT-X-KEY").count(), 2, "{playlist}");
    assert!(playlist.contains("k1.key") && playlist.contains("k2.key"));
    assert_eq!(frame_count(&hls.join("index.m3u8").display().to_string()), 250);
    // A raw encrypted segment does not decode.
    let raw = probe(&segments[0].display().to_string(), &["-show_entries", "stream=codec_type", "-of", "csv=p=0"]);
    assert!(!raw.contains("video"), "an encrypted segment decoded: {raw}");

    // The gap is a freeze, exactly where planned.
    let o = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-i"])
        .arg(&mp4)
        .args(["-vf", "freezedetect=n=0.003:d=0.5", "-map", "0:v", "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    let log = String::from_utf8_lossy(&o.stderr);
    let value = |key: &str| -> Vec<f64> {
        log.lines().filter_map(|l| l.split(key).nth(1)).filter_map(|v| v.trim().parse().ok()).collect()
    };
    let (starts, ends) = (value("freeze_start:"), value("freeze_end:"));
    assert_eq!(starts.len(), 1, "one freeze: {log}");
    let frame = 1.0 / f64::from(FPS);
    assert!((starts[0] - 4.0).abs() <= frame + 1e-6, "freeze starts at {}", starts[0]);
    assert!((ends[0] - 6.0).abs() <= frame + 1e-6, "freeze ends at {}", ends[0]);

    // The student's region is red exactly on the student's frames.
    let o = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-i"])
        .arg(&mp4)
        .args([
            "-vf",
            "format=rgb24,crop=140:70:474:264,scale=4:4:flags=area",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .output()
        .expect("ffmpeg runs");
    let px = o.stdout;
    assert_eq!(px.len(), 250 * 16 * 3);
    // A frame shows the student when its whole region is red.
    let red: Vec<bool> = px.chunks(16 * 3).map(|f| f.chunks(3).all(|c| c[0] > 180 && c[1] < 80 && c[2] < 80)).collect();
    let first_red = red.iter().position(|r| *r).expect("the student appears");
    assert_eq!(first_red as u64, p.frame_at(7_000), "the student's first frame");
    assert!(red[first_red..].iter().all(|r| *r), "the student stays until the end");
}

fn tiny_plan(url: &str) -> room_media_ctl::plan::RenderPlan {
    let mut ingest = Ingestor::new();
    let body = format!(
        r#"{{"stream_id":"t","file_name":"a.flv","start":{BASE},"end":{},"download_url":"{url}"}}"#,
        BASE + 2_000
    );
    ingest.ingest(body.as_bytes(), 0).expect("valid");
    let req = PlanRequest {
        canvas: Canvas { width: 320, height: 180, color: Rgb(0, 0, 0) },
        fps: FPS,
        inputs: vec![Input { id: "t".into(), kind: InputKind::Video, width: 320, height: 180 }],
        switches: vec![LayoutSwitch { at: BASE, template: Template::Single { input: "t".into() } }],
        fill: GapFill::RepeatLastFrame,
        watermark: None,
        outputs: vec![Output::Mp4],
        limits: Limits::default(),
    };
    plan(&req, ingest.timelines()).expect("a plan")
}

#[test]
fn a_missing_ffmpeg_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = InputPolicy::with_local_dir(dir.path()).expect("a local directory");
    let p = tiny_plan("https://files.example/a.flv");
    let job = render_job(&p, &Output::Mp4, &dir.path().join("never.mp4"), &policy).expect("a renderable plan");
    let cancel = Arc::new(AtomicBool::new(false));
    let err = run("/nonexistent/ffmpeg", &job, &cancel, |_| {}).expect_err("no such program");
    assert!(matches!(err, room_media_ctl::ffmpeg::FfmpegError::Missing { .. }), "{err}");
}

#[test]
#[ignore = "needs ffmpeg"]
fn a_failing_render_and_a_cancelled_one_are_typed_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = InputPolicy::with_local_dir(dir.path()).expect("a local directory");
    let p = tiny_plan(&dir.path().join("nonexistent-input.flv").display().to_string());
    let job = render_job(&p, &Output::Mp4, &dir.path().join("out.mp4"), &policy).expect("a renderable plan");
    let cancel = Arc::new(AtomicBool::new(false));
    let err = run("ffmpeg", &job, &cancel, |_| {}).expect_err("no input file");
    match err {
        room_media_ctl::ffmpeg::FfmpegError::Failed { tail, .. } => {
            assert!(tail.contains("nonexistent-input"), "{tail}")
        }
        other => panic!("unexpected {other}"),
    }
    // A relay from a source that never ends, cancelled from its progress callback.
    let job = room_media_ctl::ffmpeg::Job {
        args: [
            "-hide_banner",
            "-nostdin",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=25",
            "-progress",
            "pipe:1",
            "-f",
            "null",
            "-",
        ]
        .map(str::to_owned)
        .to_vec(),
        graph: String::new(),
    };
    let flag = cancel.clone();
    let err = run("ffmpeg", &job, &cancel, move |_| flag.store(true, std::sync::atomic::Ordering::Relaxed))
        .expect_err("cancelled");
    assert!(matches!(err, room_media_ctl::ffmpeg::FfmpegError::Cancelled), "{err}");
}

#[test]
fn a_hand_built_plan_without_layouts_is_refused() {
    let mut p = tiny_plan("https://files.example/x.flv");
    p.layouts.clear();
    let err =
        render_job(&p, &Output::Mp4, Path::new("/tmp/x.mp4"), &InputPolicy::network_only()).expect_err("no layout");
    assert!(matches!(err, room_media_ctl::ffmpeg::FfmpegError::BadPlan(_)), "{err}");
}

#[test]
fn the_relay_copies_to_every_target() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = InputPolicy::with_local_dir(dir.path()).expect("a local directory");
    let local = policy.local_dir().expect("set").join("index.m3u8");
    let job = room_media_ctl::ffmpeg::relay_job(
        "rtmp://in/live/t",
        &["rtmp://cdn/live/t".into(), local.display().to_string()],
        &policy,
    )
    .expect("allowed");
    let args = job.args.join(" ");
    assert!(args.contains("-protocol_whitelist rtmp,tcp -i rtmp://in/live/t"), "{args}");
    assert!(args.contains("-c copy -f flv -protocol_whitelist rtmp,tcp rtmp://cdn/live/t"), "{args}");
    assert!(args.contains(&format!("-f hls -hls_time 4 -protocol_whitelist file file:{}", local.display())), "{args}");
    // A relay from anything but a live URL, or to a file outside the directory, is refused.
    for (input, target) in
        [("concat:a|b", "rtmp://cdn/x"), ("rtmp://in/x", "/etc/passwd"), ("file:/dev/zero", "rtmp://cdn/x")]
    {
        let err = room_media_ctl::ffmpeg::relay_job(input, &[target.into()], &policy).expect_err(input);
        assert!(matches!(err, room_media_ctl::ffmpeg::FfmpegError::Input(_)), "{err}");
    }
}

#[test]
#[ignore = "needs ffmpeg"]
fn a_text_watermark_renders() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_recording(&dir.path().join("a.flv"), "testsrc=size=320x180", 2, false);
    let mut p = tiny_plan(&dir.path().join("a.flv").display().to_string());
    let wm = room_media_ctl::layout::Watermark {
        kind: room_media_ctl::layout::WatermarkKind::Text("Roomkit: demo".into()),
        x: Length::Px(8),
        y: Length::Px(8),
        size: Length::Px(16),
    };
    let canvas = p.layouts[0].layout.canvas;
    let inputs = vec![Input { id: "t".into(), kind: InputKind::Video, width: 320, height: 180 }];
    p.layouts[0].layout = room_media_ctl::layout::layout(
        canvas,
        &Template::Single { input: "t".into() },
        &inputs,
        Some(&wm),
        Limits::default(),
    )
    .expect("valid");
    let out = dir.path().join("wm.mp4");
    let policy = InputPolicy::with_local_dir(dir.path()).expect("a local directory");
    let job = render_job(&p, &Output::Mp4, &out, &policy).expect("a renderable plan");
    assert!(job.graph.contains("drawtext=text='Roomkit\\: demo'"), "{}", job.graph);
    run("ffmpeg", &job, &Arc::new(AtomicBool::new(false)), |_| {}).expect("renders");
    assert_eq!(frame_count(&out.display().to_string()), p.frames);
}

#[test]
#[ignore = "needs ffmpeg"]
fn image_and_colour_inputs_render() {
    let dir = tempfile::tempdir().expect("temp dir");
    let png = dir.path().join("slide.png");
    let o = ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=green:size=320x180:duration=1",
        "-frames:v",
        "1",
        &png.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut ingest = Ingestor::new();
    let body = format!(
        r#"{{"stream_id":"slides","file_name":"slide.png","start":{BASE},"end":{},"download_url":"{}"}}"#,
        BASE + 2_000,
        png.display()
    );
    ingest.ingest(body.as_bytes(), 0).expect("valid");
    let region = |input: &str, x, w, z| RegionSpec {
        input: input.into(),
        x: Length::Px(x),
        y: Length::Px(0),
        width: Length::Px(w),
        height: Length::Px(180),
        z,
        crop: None,
        fit: Fit::Stretch,
    };
    let req = PlanRequest {
        canvas: Canvas { width: 320, height: 180, color: Rgb(0, 0, 0) },
        fps: FPS,
        inputs: vec![
            Input { id: "slides".into(), kind: InputKind::Image, width: 320, height: 180 },
            Input { id: "bg".into(), kind: InputKind::Color(Rgb(0, 0, 255)), width: 160, height: 180 },
        ],
        switches: vec![LayoutSwitch {
            at: BASE,
            template: Template::Custom(vec![region("slides", 0, 160, 0), region("bg", 160, 160, 1)]),
        }],
        fill: GapFill::RepeatLastFrame,
        watermark: None,
        outputs: vec![Output::Mp4],
        limits: Limits::default(),
    };
    let p = plan(&req, ingest.timelines()).expect("a plan");
    let out = dir.path().join("slides.mp4");
    let policy = InputPolicy::with_local_dir(dir.path()).expect("a local directory");
    let job = render_job(&p, &Output::Mp4, &out, &policy).expect("a renderable plan");
    run("ffmpeg", &job, &Arc::new(AtomicBool::new(false)), |_| {}).unwrap_or_else(|e| panic!("{e}\n{}", job.graph));
    assert_eq!(frame_count(&out.display().to_string()), 50);
    // Left half green (the slide), right half blue (the colour input), on the last frame too.
    let o = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-i"])
        .arg(&out)
        .args(["-vf", "format=rgb24,scale=2:1:flags=area", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg runs");
    let last = &o.stdout[o.stdout.len() - 6..];
    assert!(last[1] > 100 && last[0] < 80 && last[2] < 80, "left is green: {last:?}\n{}", job.graph);
    assert!(last[5] > 150 && last[3] < 80 && last[4] < 80, "right is blue: {last:?}");
}
