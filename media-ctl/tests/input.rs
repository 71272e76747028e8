//! The URL allow-list and the local directory: what may reach ffmpeg, what
//! is refused and by which rule, and that every ffmpeg invocation the
//! crate builds carries exactly the protocols its URLs need.

use std::path::Path;

use proptest::prelude::*;
use room_media_ctl::ffmpeg::{FfmpegError, relay_job, render_job};
use room_media_ctl::ingest::{FileFormat, Ingestor, Segment, Timing};
use room_media_ctl::input::{
    InputError, InputPolicy, MAX_ID_BYTES, MAX_URL_BYTES, Purpose, UrlKind, check_id, check_url,
};
use room_media_ctl::layout::{Canvas, Input, InputKind, Limits, Rgb, Template};
use room_media_ctl::plan::{GapFill, LayoutSwitch, Output, PlanRequest, RenderPlan, plan};

#[test]
fn the_scheme_rule_refuses_every_other_protocol() {
    for url in [
        "concat:a.flv|b.flv",
        "concatf:list.txt",
        "subfile,,0,100,,:/etc/passwd",
        "data:video/mp4;base64,AAAA",
        "pipe:0",
        "tcp://10.0.0.1:9000",
        "udp://10.0.0.1:9000",
        "async:http://x/a.flv",
        "cache:http://x/a.flv",
        "crypto:http://x/a.ts",
        "hls:http://x/a.m3u8",
        "ftp://x/a.flv",
        "gopher://x/",
        "unix:/run/sock",
        "rtp://x:5004",
        "tee:a.flv|b.flv",
        "sftp://x/a.flv",
        "ipfs://cid",
        "FILE1:x",
    ] {
        match check_url(url, Purpose::Download) {
            Err(InputError::Scheme { purpose: Purpose::Download, .. }) => {}
            other => panic!("{url}: {other:?}"),
        }
    }
    let err = check_url("concat:a|b", Purpose::Download).expect_err("refused").to_string();
    assert!(err.starts_with("scheme rule: \"concat\""), "{err}");
    assert_eq!(check_url("https://cdn.example/a.flv", Purpose::Download), Ok(UrlKind::Https));
    assert_eq!(check_url("HTTP://cdn.example/a.flv", Purpose::Download), Ok(UrlKind::Http));
    assert_eq!(check_url("rtmps://live.example/app/s", Purpose::Live), Ok(UrlKind::Rtmps));
    assert_eq!(check_url("srt://live.example:9000?streamid=s", Purpose::Live), Ok(UrlKind::Srt));
    assert_eq!(check_url("recordings/a.flv", Purpose::Download), Ok(UrlKind::Local));
    // Each use has its own list.
    assert!(matches!(check_url("https://cdn.example/a", Purpose::Live), Err(InputError::Scheme { .. })));
    assert!(matches!(check_url("rtmp://in/app/s", Purpose::Download), Err(InputError::Scheme { .. })));
    assert!(matches!(check_url("a.flv", Purpose::Live), Err(InputError::Scheme { .. })));
    // Hosts, lengths, characters.
    assert!(matches!(check_url("http:///a.flv", Purpose::Download), Err(InputError::NoHost { .. })));
    assert!(matches!(check_url("rtmp:live", Purpose::Live), Err(InputError::NoHost { .. })));
    assert!(matches!(check_url("file://remote/a.flv", Purpose::Download), Err(InputError::NoHost { .. })));
    assert!(matches!(check_url("https://x/a\n.flv", Purpose::Download), Err(InputError::ControlCharacter { .. })));
    assert!(matches!(check_url("a\0.flv", Purpose::Download), Err(InputError::ControlCharacter { at: 1, .. })));
    let long = format!("https://x/{}", "a".repeat(MAX_URL_BYTES));
    assert!(matches!(check_url(&long, Purpose::Download), Err(InputError::TooLong { max: MAX_URL_BYTES, .. })));
    assert!(matches!(check_url("", Purpose::Download), Err(InputError::Empty { .. })));
}

#[test]
fn ids_are_bounded_and_clean() {
    assert_eq!(check_id("stream id", "room42/teacher"), Ok(()));
    assert_eq!(check_id("stream id", &"é".repeat(MAX_ID_BYTES / 2)), Ok(()));
    assert!(matches!(check_id("stream id", &"a".repeat(MAX_ID_BYTES + 1)), Err(InputError::TooLong { .. })));
    assert!(matches!(check_id("stream id", "a\u{7f}b"), Err(InputError::ControlCharacter { at: 1, .. })));
    assert!(matches!(check_id("stream id", "a\u{85}b"), Err(InputError::ControlCharacter { .. })));
    assert!(matches!(check_id("stream id", ""), Err(InputError::Empty { .. })));
}

#[test]
fn local_paths_stay_inside_the_directory() {
    let root = tempfile::tempdir().expect("temp dir");
    let media = root.path().join("media");
    std::fs::create_dir_all(media.join("rec")).expect("dirs");
    std::fs::write(media.join("rec/a.flv"), b"x").expect("file");
    std::fs::write(root.path().join("secret.flv"), b"x").expect("file");
    let policy = InputPolicy::with_local_dir(&media).expect("a directory");
    let dir = policy.local_dir().expect("set").to_owned();

    let ok = |url: &str| policy.check(url, Purpose::Download).unwrap_or_else(|e| panic!("{url}: {e}"));
    let inside = format!("file:{}", dir.join("rec/a.flv").display());
    assert_eq!(ok("rec/a.flv").arg, inside);
    assert_eq!(ok(&dir.join("rec/a.flv").display().to_string()).arg, inside);
    assert_eq!(ok(&format!("file://{}", dir.join("rec/a.flv").display())).arg, inside);
    assert_eq!(ok("file:rec/./a.flv").arg, inside);
    assert_eq!(ok("rec/../rec/a.flv").arg, inside);
    assert_eq!(ok("rec/later.flv").arg, format!("file:{}", dir.join("rec/later.flv").display()));
    assert_eq!(ok("rec/a.flv").protocols(), "file");
    assert_eq!(ok("https://cdn.example/a.flv").arg, "https://cdn.example/a.flv");

    let outside = |url: &str| match policy.check(url, Purpose::Download) {
        Err(InputError::OutsideDirectory { .. } | InputError::Unresolvable { .. }) => {}
        other => panic!("{url}: {other:?}"),
    };
    outside("../secret.flv");
    outside("rec/../../secret.flv");
    outside(&root.path().join("secret.flv").display().to_string());
    outside("file:/etc/passwd");
    outside("/nonexistent-dir/a.flv");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(root.path().join("secret.flv"), media.join("rec/link.flv")).expect("symlink");
        std::os::unix::fs::symlink(root.path(), media.join("up")).expect("symlink");
        outside("rec/link.flv");
        outside("up/secret.flv");
        outside("up/new.flv");
    }
    let msg = policy.check("../secret.flv", Purpose::Download).expect_err("outside").to_string();
    assert!(msg.starts_with("local-file rule"), "{msg}");

    // Without a directory, no local path at all.
    let none = InputPolicy::network_only();
    assert!(matches!(none.check("rec/a.flv", Purpose::Download), Err(InputError::NoLocalDirectory { .. })));
    assert!(matches!(InputPolicy::with_local_dir(root.path().join("missing")), Err(InputError::BadDirectory { .. })));
    // Outputs are paths, never URLs.
    assert!(matches!(policy.check_output(Path::new("pipe:1")), Err(InputError::Scheme { .. })));
    assert!(matches!(policy.check_output(&root.path().join("out.mp4")), Err(InputError::OutsideDirectory { .. })));
    assert_eq!(
        policy.check_output(&media.join("out.mp4")).expect("inside").arg,
        format!("file:{}", dir.join("out.mp4").display())
    );
}

fn one_input_plan(url: &str) -> RenderPlan {
    let mut ing = Ingestor::new();
    ing.add(Segment {
        stream: "t".into(),
        file_id: "a".into(),
        user: None,
        start: 1_000,
        end: 3_000,
        url: url.into(),
        format: FileFormat::Flv,
        timing: Timing::Reported,
    })
    .expect("valid");
    let req = PlanRequest {
        canvas: Canvas { width: 320, height: 180, color: Rgb(0, 0, 0) },
        fps: 25,
        inputs: vec![Input { id: "t".into(), kind: InputKind::Video, width: 320, height: 180 }],
        switches: vec![LayoutSwitch { at: 0, template: Template::Single { input: "t".into() } }],
        fill: GapFill::RepeatLastFrame,
        watermark: None,
        outputs: vec![Output::Mp4],
        limits: Limits::default(),
    };
    plan(&req, ing.timelines()).expect("a plan")
}

#[test]
fn every_ffmpeg_input_and_output_carries_its_protocol_whitelist() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = InputPolicy::with_local_dir(dir.path()).expect("a directory");
    for (url, protocols) in
        [("https://cdn.example/a.flv", "https,tls,tcp"), ("http://cdn.example/a.flv", "http,tcp"), ("a.flv", "file")]
    {
        let job = render_job(&one_input_plan(url), &Output::Mp4, &dir.path().join("out.mp4"), &policy).expect("job");
        let i = job.args.iter().position(|a| a == "-i").expect("an input");
        assert_eq!(&job.args[i - 2..i], ["-protocol_whitelist", protocols], "{url}: {:?}", job.args);
        let last = job.args.len() - 1;
        assert_eq!(&job.args[last - 2..last], ["-protocol_whitelist", "file"], "{:?}", job.args);
        assert!(job.args[last].starts_with("file:/"), "{:?}", job.args);
    }
    // A segment URL that slipped past ingestion is still refused here.
    let mut p = one_input_plan("a.flv");
    p.inputs[0].pieces[0].url = "concat:/etc/passwd|a.flv".into();
    let err = render_job(&p, &Output::Mp4, &dir.path().join("out.mp4"), &policy).expect_err("refused");
    assert!(matches!(err, FfmpegError::Input(InputError::Scheme { .. })), "{err}");
    p.inputs[0].pieces[0].url = "../../etc/passwd".into();
    let err = render_job(&p, &Output::Mp4, &dir.path().join("out.mp4"), &policy).expect_err("refused");
    assert!(matches!(err, FfmpegError::Input(_)), "{err}");
    // The output must be inside the directory too.
    let err = render_job(&one_input_plan("a.flv"), &Output::Mp4, Path::new("/tmp/elsewhere.mp4"), &policy)
        .expect_err("refused");
    assert!(
        matches!(err, FfmpegError::Input(InputError::OutsideDirectory { .. } | InputError::Unresolvable { .. })),
        "{err}"
    );
    // The relay too.
    let job = relay_job("srt://in.example:9000", &["rtmps://cdn.example/app/s".into()], &policy).expect("allowed");
    let args = job.args.join(" ");
    assert!(args.contains("-protocol_whitelist srt -i srt://in.example:9000"), "{args}");
    assert!(args.contains("-protocol_whitelist rtmps,tls,tcp rtmps://cdn.example/app/s"), "{args}");
    // Each target in its container: FLV for RTMP, MPEG-TS for SRT.
    let targets = ["rtmp://edge.example/live/s".to_owned(), "srt://edge.example:9000?streamid=s".to_owned()];
    let job = room_media_ctl::ffmpeg::live_relay_job(
        "rtmp://origin.example/live/s",
        &targets,
        &policy,
        std::time::Duration::from_secs(3),
    )
    .expect("allowed");
    let args = job.args.join(" ");
    assert!(args.contains("-f flv -protocol_whitelist rtmp,tcp rtmp://edge.example/live/s"), "{args}");
    assert!(args.contains("-f mpegts -protocol_whitelist srt srt://edge.example:9000?streamid=s"), "{args}");
    assert!(args.contains("-rw_timeout 3000000") && !args.contains("-nostdin"), "{args}");
}

/// Strings built from pieces hostile to URL parsers.
fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("concat:".to_owned()),
        Just("subfile,,0,1,,:".to_owned()),
        Just("file:".to_owned()),
        Just("file://".to_owned()),
        Just("http://".to_owned()),
        Just("https://".to_owned()),
        Just("rtmp://".to_owned()),
        Just("data:".to_owned()),
        Just("pipe:".to_owned()),
        Just("../".to_owned()),
        Just("..".to_owned()),
        Just("/".to_owned()),
        Just("./".to_owned()),
        Just("|".to_owned()),
        Just("\0".to_owned()),
        Just("\n".to_owned()),
        Just("%2e%2e/".to_owned()),
        Just("rec".to_owned()),
        Just("a.flv".to_owned()),
        Just("x".repeat(300)),
        "[a-z]{1,8}:".prop_map(|s| s),
        any::<String>(),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Whatever the string: no panic; an accepted URL is one of the allowed
    /// kinds, short, without control characters, and a local one lies
    /// inside the directory and is handed to ffmpeg as `file:` + path.
    #[test]
    fn hostile_urls_are_refused_or_confined(url in hostile(), purpose in 0u8..4) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("rec")).expect("dir");
        let policy = InputPolicy::with_local_dir(dir.path()).expect("a directory");
        let canonical = policy.local_dir().expect("set").to_owned();
        let purpose = [Purpose::Download, Purpose::Live, Purpose::Output, Purpose::RelayTarget][purpose as usize];
        match policy.check(&url, purpose) {
            Ok(checked) => {
                prop_assert!(url.len() <= MAX_URL_BYTES && !url.chars().any(char::is_control));
                match checked.kind {
                    UrlKind::Local => {
                        let path = checked.arg.strip_prefix("file:").expect("file: prefix");
                        prop_assert!(Path::new(path).starts_with(&canonical), "{} escaped", path);
                        prop_assert!(purpose != Purpose::Live);
                    }
                    kind => {
                        prop_assert_eq!(&checked.arg, &url);
                        let scheme = url.split(':').next().expect("scheme").to_ascii_lowercase();
                        prop_assert!(["http", "https", "rtmp", "rtmps", "srt"].contains(&scheme.as_str()));
                        prop_assert_eq!(kind.protocols().split(',').next(), Some(scheme.as_str()));
                    }
                }
            }
            Err(e) => {
                // Every refusal names its rule.
                let msg = e.to_string();
                prop_assert!(msg.contains("rule") || msg.contains("cannot be used"), "{}", msg);
            }
        }
    }
}
