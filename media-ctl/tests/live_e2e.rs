//! Live jobs against real programs: Debian's nginx with the RTMP module as
//! origin and as edge (one nginx, two RTMP servers, on free ports), ffmpeg
//! as publisher and as every job. A teacher's camera comes in over SRT and
//! is ingested into the origin; slides are published over RTMP; the
//! orchestrator's relays carry each stream to its own name on the edge and
//! its recordings write FLV segments. The slides' publisher drops and
//! returns: the relay is picked up again with no host action, and the
//! orchestrator hears the loss and the recovery. Stop times are printed
//! (docs/BENCHMARKS.md has them).
#![cfg(unix)]

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use room_core::Timestamp;
use room_media_ctl::auth::HmacAuth;
use room_media_ctl::ingest::Ingestor;
use room_media_ctl::input::InputPolicy;
use room_media_ctl::live::callbacks::CallbackConfig;
use room_media_ctl::live::{JobState, LiveBackend, LiveBackendConfig, LiveConfig, LiveEvent};
use room_media_ctl::orchestrate::{
    Action, BackendEvent, CommandKind, HostEvent, Orchestrator, OrchestratorConfig, SessionEvent, StreamKind,
};

const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
const KEY: &[u8] = b"recording-callback-key";

struct Killed(Child);

/// One test at a time: each runs nginx and several ffmpeg processes, and
/// together on two cores they would miss their windows.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("addr").port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").expect("a port").local_addr().expect("addr").port()
}

fn wait_listening(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "nginx never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One nginx, two RTMP servers: the origin and an edge.
fn nginx(dir: &Path, origin: u16, edge: u16) -> Killed {
    let d = dir.display();
    let conf = format!(
        "load_module {RTMP_MODULE};
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
rtmp {{
    server {{ listen 127.0.0.1:{origin}; application live {{ live on; }} }}
    server {{ listen 127.0.0.1:{edge}; application live {{ live on; }} }}
}}
"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("conf");
    let child = Command::new("nginx")
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf"), "-e", &format!("{d}/error.log")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    let nginx = Killed(child);
    wait_listening(origin);
    wait_listening(edge);
    nginx
}

/// A test source (a frame counter on a moving picture, and a tone) sent
/// live to `url` as `format`.
fn publisher(url: &str, format: &str, counter_colour: &str) -> Killed {
    let video = format!(
        "testsrc2=size=320x240:rate=25,drawtext=text='%{{n}}':fontsize=48:fontcolor={counter_colour}:x=10:y=10"
    );
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi", "-i", &video])
        .args(["-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", format, url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg starts");
    Killed(child)
}

/// Reads `frames` video frames from a live URL; true if it could.
fn readable(url: &str, frames: u32) -> bool {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-rw_timeout", "5000000", "-i", url])
        .args(["-frames:v", &frames.to_string(), "-f", "null", "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs nginx with libnginx-mod-rtmp and ffmpeg"]
fn a_live_class_over_nginx_rtmp_survives_a_publisher_that_drops() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().expect("dir");
    let (origin, edge, srt) = (free_tcp_port(), free_tcp_port(), free_udp_port());
    let _nginx = nginx(dir.path(), origin, edge);
    let recordings = dir.path().join("recordings");
    std::fs::create_dir(&recordings).expect("dir");
    let policy = InputPolicy::with_local_dir(dir.path()).expect("policy");
    let live = LiveConfig {
        read_timeout: Duration::from_secs(2),
        backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(1),
        ..LiveConfig::default()
    };
    let mut mix = room_media_ctl::live::mixer::MixSettings::new(room_media_ctl::layout::Canvas {
        width: 640,
        height: 360,
        color: room_media_ctl::layout::Rgb(0, 0, 0),
    });
    mix.input_box = (320, 240);
    mix.video_kbps = 500;
    mix.outputs.flv = Some(dir.path().join("mix.flv"));
    let mut backend = LiveBackend::new(
        LiveBackendConfig {
            origin: format!("rtmp://127.0.0.1:{origin}/live"),
            recordings: recordings.clone(),
            segment: Duration::from_secs(2),
            max_jobs: 8,
            live,
            mix: Some(mix),
            callbacks: Some(CallbackConfig::new(KEY.to_vec(), format!("{}/", recordings.display()))),
        },
        policy,
    );
    backend.set_stream_owner("cam-1", "1001");

    // The teacher's camera arrives over SRT and is ingested into the origin.
    backend.start_ingest("cam-1", &format!("srt://127.0.0.1:{srt}?mode=listener")).expect("ingest");
    std::thread::sleep(Duration::from_millis(500));
    let _camera = publisher(&format!("srt://127.0.0.1:{srt}?mode=caller"), "mpegts", "white");
    let mut slides = Some(publisher(&format!("rtmp://127.0.0.1:{origin}/live/slides"), "flv", "yellow"));
    until("the camera reached the origin", Duration::from_secs(30), || {
        readable(&format!("rtmp://127.0.0.1:{origin}/live/cam-1"), 5)
    });

    let mut orchestrator = Orchestrator::new(OrchestratorConfig {
        relay_targets: vec![format!("rtmp://127.0.0.1:{edge}/live/{{stream}}")],
        ..OrchestratorConfig::default()
    });
    let now = Timestamp::from_millis(1);
    orchestrator.handle_host(now, HostEvent::ClassStarted).expect("started");
    for (stream, kind) in [("cam-1", StreamKind::TeacherCamera), ("slides", StreamKind::Slides)] {
        orchestrator.handle_host(now, HostEvent::StreamUp { stream: stream.into(), kind }).expect("up");
    }
    let mut relays = Vec::new();
    while let Some(action) = orchestrator.poll_action() {
        let Action::Command(command) = action else { continue };
        match backend.execute(&command) {
            Ok(answer) => orchestrator.handle_backend(now, answer).expect("known"),
            Err(e) => panic!("{command:?}: {e}"),
        }
        if let CommandKind::StartRelay { stream, .. } = &command.kind {
            relays.push((stream.clone(), command.id));
        }
    }
    assert_eq!(relays.len(), 2);
    // The teacher over the slides, from the second stream on.
    let mixing = backend.mixer().expect("a mix runs");
    assert!(matches!(mixing.template(), room_media_ctl::layout::Template::PictureInPicture { .. }));
    assert_eq!(mixing.inputs().len(), 2);
    for stream in ["cam-1", "slides"] {
        until(&format!("{stream} on the edge"), Duration::from_secs(30), || {
            readable(&format!("rtmp://127.0.0.1:{edge}/live/{stream}"), 25)
        });
    }

    // The slides' publisher drops: their relay loses its input, the
    // orchestrator hears it; the publisher returns: picked up again.
    let slides_relay = relays.iter().find(|(s, _)| s == "slides").expect("slides relay").1;
    slides.take();
    let mut told = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut republished = None;
    while !told.iter().any(|e| matches!(e, BackendEvent::Recovered(id) if *id == slides_relay)) {
        assert!(Instant::now() < deadline, "no recovery: {told:?}");
        let Some((event, answer)) = backend.wait_event(Duration::from_millis(500)) else { continue };
        if let LiveEvent::Failed { reason, .. } = &event {
            panic!("a job failed: {reason}");
        }
        if let Some(answer) = answer {
            orchestrator.handle_backend(now, answer.clone()).expect("known");
            if matches!(answer, BackendEvent::Degraded { id, .. } if id == slides_relay) && republished.is_none() {
                republished = Some(publisher(&format!("rtmp://127.0.0.1:{origin}/live/slides"), "flv", "yellow"));
            }
            told.push(answer);
        }
    }
    assert!(told.iter().any(|e| matches!(e, BackendEvent::Degraded { id, .. } if *id == slides_relay)), "{told:?}");
    let events: Vec<SessionEvent> = std::iter::from_fn(|| orchestrator.poll_action())
        .filter_map(|a| match a {
            Action::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    assert!(events.iter().any(|e| matches!(e, SessionEvent::CommandRecovered { id } if *id == slides_relay)));
    until("the slides back on the edge", Duration::from_secs(30), || {
        readable(&format!("rtmp://127.0.0.1:{edge}/live/slides"), 25)
    });
    assert_eq!(backend.health("slides", false).map(|h| h.state), Some(JobState::Running));
    // The mix, which lost the slides too, opens them again with no host
    // action: its process restarts and records to a new file.
    until("the mix restarted", Duration::from_secs(30), || {
        while backend.poll_event().is_some() {}
        backend.mixer().is_some_and(|m| {
            let h = m.health();
            h.run >= 1 && h.state == JobState::Running && h.frames > 25
        })
    });
    let mixes = || -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("mix") && n.ends_with(".flv"))
            })
            .collect();
        found.sort();
        found
    };
    assert!(mixes().len() >= 2, "the restarted mix records to a new file: {:?}", mixes());
    assert!(backend.health("slides", false).is_some_and(|h| h.restarts >= 1));

    // The class ends: every job stops, each quickly.
    orchestrator.handle_host(now, HostEvent::ClassEnded).expect("ended");
    let mut stops = Vec::new();
    while let Some(action) = orchestrator.poll_action() {
        let Action::Command(command) = action else { continue };
        if matches!(command.kind, CommandKind::Transcode) {
            continue;
        }
        let start = Instant::now();
        let answer = backend.execute(&command).expect("stopped");
        stops.push((format!("{:?}", command.kind), start.elapsed()));
        orchestrator.handle_backend(now, answer).expect("known");
    }
    let ingest = backend.stop_ingest("cam-1").expect("the ingest ran");
    stops.push(("ingest cam-1".into(), ingest));
    for (what, took) in &stops {
        println!("stop {what}: {took:?}");
    }
    assert_eq!(backend.jobs(), 0);

    // The recordings' callbacks: signed, each file once, read by the
    // ingestor as they are, and they drive a playback render.
    let mut verifier = HmacAuth::new(KEY.to_vec(), 300, 10_000);
    let mut ingestor = Ingestor::new();
    let mut callbacks = 0;
    while let Some(delivery) = backend.poll_callback() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
        verifier.verify(&delivery.signed, &delivery.body, now).expect("signed");
        let body: serde_json::Value = serde_json::from_slice(&delivery.body).expect("JSON");
        if body["stream_id"] == "cam-1" {
            assert_eq!(body["user_id"], "1001", "{body}");
        }
        let ingested = ingestor.ingest(&delivery.body, body["end"].as_i64().expect("end") + 100).expect("ingested");
        assert_eq!(ingested, room_media_ctl::ingest::Ingested::New, "each file once");
        backend.callback_delivered(delivery.id);
        callbacks += 1;
    }
    assert_eq!(backend.callbacks_pending(), (0, 0));
    let camera = ingestor.timeline("cam-1").expect("the camera's recordings");
    let files: Vec<_> = camera.segments().collect();
    assert!(files.len() >= 3 && callbacks >= files.len(), "{} files, {callbacks} callbacks", files.len());
    for pair in files.windows(2) {
        assert!((pair[1].start - pair[0].end).abs() <= 100, "contiguous: {:?} then {:?}", pair[0], pair[1]);
    }
    let first = files[0].start;
    let request = room_media_ctl::plan::PlanRequest {
        canvas: room_media_ctl::layout::Canvas { width: 320, height: 240, color: room_media_ctl::layout::Rgb(0, 0, 0) },
        fps: 25,
        inputs: vec![room_media_ctl::layout::Input {
            id: "cam-1".into(),
            kind: room_media_ctl::layout::InputKind::AudioVideo,
            width: 320,
            height: 240,
        }],
        switches: vec![room_media_ctl::plan::LayoutSwitch {
            at: first,
            template: room_media_ctl::layout::Template::Single { input: "cam-1".into() },
        }],
        fill: room_media_ctl::plan::GapFill::RepeatLastFrame,
        watermark: None,
        outputs: vec![room_media_ctl::plan::Output::Mp4],
        limits: room_media_ctl::layout::Limits::default(),
    };
    let mut timelines = ingestor.timelines().clone();
    timelines.retain(|stream, _| stream == "cam-1");
    let playback = room_media_ctl::plan::plan(&request, &timelines).expect("a plan");
    let out = dir.path().join("playback.mp4");
    let render_policy = InputPolicy::with_local_dir(dir.path()).expect("policy");
    let job = room_media_ctl::ffmpeg::render_job(&playback, &playback.outputs[0], &out, &render_policy).expect("a job");
    room_media_ctl::ffmpeg::run(
        "ffmpeg",
        &job,
        &std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        |_| {},
    )
    .expect("rendered");
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames"])
        .args(["-of", "csv=p=0"])
        .arg(&out)
        .output()
        .expect("ffprobe runs");
    let rendered: u64 = String::from_utf8_lossy(&probe.stdout).trim().parse().expect("a count");
    assert_eq!(rendered, playback.frames, "the playback is frame-exact");

    // The mix was recorded, each process to a file of its own (none
    // written over): at least the mix before the drop and the one after
    // hold pictures. (How many depends on how long each ran.)
    let mut with_frames = 0;
    for file in mixes() {
        let probe = Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames"])
            .args(["-of", "csv=p=0"])
            .arg(&file)
            .output()
            .expect("ffprobe runs");
        let frames: u64 = String::from_utf8_lossy(&probe.stdout).trim().parse().unwrap_or(0);
        with_frames += usize::from(frames > 0);
    }
    assert!(with_frames >= 2, "mix files with pictures: {with_frames} of {:?}", mixes());

    // Each stream was recorded as playable FLV segments.
    for stream in ["cam-1", "slides"] {
        let segments: Vec<_> = std::fs::read_dir(&recordings)
            .expect("recordings")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{stream}-"))))
            .collect();
        assert!(!segments.is_empty(), "no segment of {stream}");
        let first = segments.iter().min().expect("a segment");
        let probe = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "stream=codec_name", "-of", "csv=p=0"])
            .arg(first)
            .output()
            .expect("ffprobe runs");
        assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "h264", "{}", first.display());
    }
}

/// A plain colour with a tone (or without), sent live to `url`.
fn colour_publisher(url: &str, colour: &str, tone: bool) -> Killed {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi", "-i"])
        .arg(format!("color=c={colour}:s=640x360:r=25"));
    if tone {
        cmd.args(["-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]);
    }
    let child = cmd
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25", "-pix_fmt", "yuv420p"])
        .args(if tone { &["-c:a", "aac", "-b:a", "64k"][..] } else { &[][..] })
        .args(["-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg starts");
    Killed(child)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Red,
    Blue,
    Black,
    Other,
}

fn classify(rgb: &[u8]) -> Seen {
    match (rgb[0], rgb[1], rgb[2]) {
        (r, g, b) if r > 150 && g < 90 && b < 90 => Seen::Red,
        (r, g, b) if b > 150 && r < 90 && g < 90 => Seen::Blue,
        (r, g, b) if r < 40 && g < 40 && b < 40 => Seen::Black,
        _ => Seen::Other,
    }
}

#[test]
#[ignore = "needs nginx with libnginx-mod-rtmp and ffmpeg"]
fn the_live_mixer_switches_layouts_without_a_hole_into_encrypted_hls() {
    let _serial = one_at_a_time();
    use room_media_ctl::layout::{Canvas, Corner, InputKind, Length, Rgb, Template, Watermark, WatermarkKind};
    use room_media_ctl::live::mixer::{LiveHls, LiveMixer, MixInput, MixOutputs, MixSettings};

    let dir = tempfile::tempdir().expect("dir");
    let (origin, edge) = (free_tcp_port(), free_tcp_port());
    let _nginx = nginx(dir.path(), origin, edge);
    let _cam = colour_publisher(&format!("rtmp://127.0.0.1:{origin}/live/cam"), "red", true);
    let _slides = colour_publisher(&format!("rtmp://127.0.0.1:{origin}/live/slides"), "blue", false);
    for s in ["cam", "slides"] {
        until(&format!("{s} at the origin"), Duration::from_secs(30), || {
            readable(&format!("rtmp://127.0.0.1:{origin}/live/{s}"), 5)
        });
    }
    let hls = dir.path().join("hls");
    std::fs::create_dir(&hls).expect("dir");
    let policy = InputPolicy::with_local_dir(dir.path()).expect("policy");
    let mut settings = MixSettings::new(Canvas { width: 640, height: 360, color: Rgb(0, 0, 0) });
    settings.input_box = (640, 360);
    settings.video_kbps = 800;
    settings.watermark = Some(Watermark {
        kind: WatermarkKind::Text("Roomkit".into()),
        x: Length::Px(520),
        y: Length::Px(330),
        size: Length::Px(20),
    });
    settings.outputs = MixOutputs {
        live: vec![format!("rtmp://127.0.0.1:{edge}/live/mix")],
        hls: Some(LiveHls {
            dir: hls.clone(),
            segment: Duration::from_secs(1),
            rotate_every: 2,
            key_uri_prefix: String::new(),
        }),
        flv: Some(dir.path().join("mix.flv")),
        mp4: None,
    };
    let inputs = vec![
        MixInput { id: "cam".into(), url: format!("rtmp://127.0.0.1:{origin}/live/cam"), kind: InputKind::AudioVideo },
        MixInput { id: "slides".into(), url: format!("rtmp://127.0.0.1:{origin}/live/slides"), kind: InputKind::Video },
    ];
    let (tx, events) = std::sync::mpsc::channel();
    let live = LiveConfig { read_timeout: Duration::from_secs(3), ..LiveConfig::default() };
    let mut mixer = LiveMixer::start(
        room_media_ctl::live::JobId(1),
        inputs,
        &Template::Single { input: "cam".into() },
        settings,
        &policy,
        &live,
        tx,
    )
    .expect("the mix starts");
    until("the mix flows", Duration::from_secs(30), || mixer.health().frames > 50);
    let pid = mixer.health().pid.expect("ffmpeg runs");
    until("the mix on the edge", Duration::from_secs(30), || {
        readable(&format!("rtmp://127.0.0.1:{edge}/live/mix"), 10)
    });
    let mut switches = Vec::new();
    for template in [
        Template::PictureInPicture {
            main: "slides".into(),
            overlay: "cam".into(),
            corner: Corner::BottomRight,
            scale: 0.25,
            margin: 16,
        },
        Template::Grid { inputs: vec!["cam".into(), "slides".into()] },
    ] {
        std::thread::sleep(Duration::from_secs(3));
        // The frame being made now: the last count ffmpeg reported, and
        // the frames since at 25 a second.
        let health = mixer.health();
        let since = health.last_progress.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let frames = health.frames + (since * 25.0) as u64;
        let sent = mixer.set_layout(&template).expect("switched");
        assert!(sent > 0);
        switches.push(frames);
    }
    std::thread::sleep(Duration::from_secs(3));
    // A template naming an input the mix does not have changes nothing.
    assert!(mixer.set_layout(&Template::Single { input: "nobody".into() }).is_err());
    let health = mixer.health();
    assert_eq!((health.pid, health.restarts), (Some(pid), 0), "one ffmpeg process throughout");
    let keys = mixer.keys();
    let took = mixer.stop();
    println!("mixer stop: {took:?}");
    assert!(events.try_iter().all(|e| !matches!(e, LiveEvent::Lost { .. } | LiveEvent::Failed { .. })));

    // The playlist: no discontinuity, keys rotated.
    let playlist = std::fs::read_to_string(hls.join("index.m3u8")).expect("playlist");
    assert!(!playlist.contains("#EXT-X-DISCONTINUITY"), "{playlist}");
    let uris: std::collections::BTreeSet<&str> =
        playlist.lines().filter(|l| l.starts_with("#EXT-X-KEY")).filter_map(|l| l.split('"').nth(1)).collect();
    assert!(uris.len() >= 3 && keys.len() >= 3, "keys rotated: {uris:?}");
    // A segment is not readable without its key.
    let first_segment = playlist.lines().find(|l| l.ends_with(".ts")).expect("a segment");
    let raw = std::fs::read(hls.join(first_segment)).expect("segment");
    // Plain MPEG-TS starts every 188-byte packet with the sync byte 0x47; a
    // ciphertext's byte there is 0x47 one time in 256, so look at sixteen.
    assert!(raw.len() >= 188 * 16, "a segment of {} bytes", raw.len());
    let synced = raw.chunks_exact(188).take(16).filter(|packet| packet[0] == 0x47).count();
    assert!(synced < 16, "the segment is encrypted (no TS sync bytes at packet starts)");

    // Decrypted with its keys: one pixel of every frame, and their times.
    let decoded = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-allowed_extensions", "ALL"])
        .args(["-protocol_whitelist", "file,crypto,data", "-i"])
        .arg(hls.join("index.m3u8"))
        .args(["-vf", "crop=2:2:200:30,format=rgb24", "-f", "rawvideo", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(decoded.status.success(), "{}", String::from_utf8_lossy(&decoded.stderr));
    let seen: Vec<Seen> = decoded.stdout.chunks_exact(12).map(classify).collect();
    let mut runs: Vec<(Seen, usize, usize)> = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        match runs.last_mut() {
            Some((last, _, end)) if last == s => *end = i,
            _ => runs.push((*s, i, i)),
        }
    }
    // Until the inputs' first frames the canvas shows alone (black).
    if runs.first().is_some_and(|r| r.0 == Seen::Black) {
        runs.remove(0);
    }
    let order: Vec<Seen> = runs.iter().map(|r| r.0).filter(|s| *s != Seen::Other).collect();
    assert_eq!(order, [Seen::Red, Seen::Blue, Seen::Black], "single, then picture in picture, then grid: {runs:?}");
    let first = |what: Seen| runs.iter().find(|r| r.0 == what).map(|r| r.1).expect("seen");
    for (switch, shown) in switches.iter().zip([first(Seen::Blue), first(Seen::Black)]) {
        let frames = shown as i64 - *switch as i64;
        println!("layout switch visible {frames} frames ({:.2} s) after the command", frames as f64 / 25.0);
    }
    let times = Command::new("ffprobe")
        .args(["-v", "error", "-allowed_extensions", "ALL", "-protocol_whitelist", "file,crypto,data"])
        .args(["-select_streams", "v:0", "-show_entries", "frame=pts", "-of", "csv=p=0"])
        .arg(hls.join("index.m3u8"))
        .output()
        .expect("ffprobe runs");
    let pts: Vec<i64> = String::from_utf8_lossy(&times.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(pts.len() > 200, "{} frames", pts.len());
    let steps: std::collections::BTreeSet<i64> = pts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(steps.len(), 1, "frame times step evenly (no hole): {steps:?}");
    // The FLV recording holds the same mix.
    let flv = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames"])
        .args(["-of", "csv=p=0"])
        .arg(dir.path().join("mix.flv"))
        .output()
        .expect("ffprobe runs");
    let flv_frames: usize = String::from_utf8_lossy(&flv.stdout).trim().parse().expect("a count");
    assert!(flv_frames.abs_diff(pts.len()) <= 50, "{flv_frames} in FLV, {} in HLS", pts.len());
}

/// Bits of the frame number each test picture carries (it counts to 1,024
/// and starts again: 40 s at 25 a second).
const CODE_BITS: u32 = 10;

/// One source sent twice, as the teacher's camera over SRT (with a tone)
/// and as the slides over RTMP: both pictures of a frame carry its number,
/// as ten black or white stripes (bit `i` is stripe `i`, from the left), so
/// that the mix shows which frame of each it put side by side.
fn numbered_publisher(camera_srt: &str, slides_rtmp: &str) -> Killed {
    let graph = "[0:v]format=gray,geq=lum='255*mod(floor(N/pow(2,X)),2)',scale=640:360:flags=neighbor,\
         format=yuv420p,split=2[cam][slides]";
    let encode = ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25", "-pix_fmt", "yuv420p"];
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi", "-i"])
        .arg(format!("color=c=black:s={CODE_BITS}x2:r=25"))
        .args(["-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-filter_complex", graph, "-map", "[cam]", "-map", "1:a"])
        .args(encode)
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "mpegts", camera_srt, "-map", "[slides]"])
        .args(encode)
        .args(["-f", "flv", slides_rtmp])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg starts");
    Killed(child)
}

/// The frame number a slot shows on a `width`-wide grey picture, read at
/// the centre of each stripe; `None` if a stripe is neither clearly black
/// nor clearly white (an edge being encoded, or not on screen).
fn read_number(gray: &[u8], width: u32, slot: &room_media_ctl::live::mixer::SlotState) -> Option<u32> {
    let mut n = 0;
    for bit in 0..CODE_BITS {
        // The stripe's centre and the picture's middle row, in the 640x360
        // input box, mapped through the slot's crop and scale.
        let (sx, sy) = (640 * (2 * bit + 1) / (2 * CODE_BITS), 180);
        let (crop, (w, h), (ax, ay)) = (slot.crop, slot.size, slot.at);
        if !(crop.x..crop.x + crop.width).contains(&sx) || !(crop.y..crop.y + crop.height).contains(&sy) {
            return None;
        }
        let x = ax + (sx - crop.x) * w / crop.width;
        let y = ay + (sy - crop.y) * h / crop.height;
        let v = *gray.get((y * width + x) as usize)?;
        match v {
            0..=60 => {}
            196.. => n |= 1 << bit,
            _ => return None,
        }
    }
    Some(n)
}

#[test]
#[ignore = "needs nginx with libnginx-mod-rtmp and ffmpeg"]
fn teacher_and_slides_meet_in_the_mix_within_one_frame() {
    use room_media_ctl::live::mixer::MixClock;

    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().expect("dir");
    let (origin, edge, srt) = (free_tcp_port(), free_tcp_port(), free_udp_port());
    let _nginx = nginx(dir.path(), origin, edge);
    let policy = InputPolicy::with_local_dir(dir.path()).expect("policy");
    let live = LiveConfig { read_timeout: Duration::from_secs(3), ..LiveConfig::default() };
    let mut backend = LiveBackend::new(
        LiveBackendConfig {
            origin: format!("rtmp://127.0.0.1:{origin}/live"),
            recordings: dir.path().to_owned(),
            segment: Duration::from_secs(2),
            max_jobs: 4,
            live: live.clone(),
            mix: None,
            callbacks: None,
        },
        policy.clone(),
    );
    // The camera comes in over SRT through the ingest, the slides straight
    // to the origin over RTMP: two paths of different delay.
    backend.start_ingest("cam", &format!("srt://127.0.0.1:{srt}?mode=listener")).expect("ingest");
    std::thread::sleep(Duration::from_millis(500));
    let _publisher = numbered_publisher(
        &format!("srt://127.0.0.1:{srt}?mode=caller"),
        &format!("rtmp://127.0.0.1:{origin}/live/slides"),
    );
    for s in ["cam", "slides"] {
        until(&format!("{s} at the origin"), Duration::from_secs(30), || {
            readable(&format!("rtmp://127.0.0.1:{origin}/live/{s}"), 5)
        });
    }

    // The same inputs mixed twice: as they arrive, then on their clock.
    let arrival = mix_and_read(dir.path(), origin, &policy, &live, MixClock::Arrival);
    let source = mix_and_read(dir.path(), origin, &policy, &live, MixClock::Source);
    backend.stop_ingest("cam");
    for (clock, (offsets, frames, unreadable)) in [("arrival", &arrival), ("source", &source)] {
        println!(
            "mix clock {clock}: teacher minus slides, in frames, over {frames} mixed frames: {offsets:?}; {unreadable} unreadable"
        );
        let read: usize = offsets.values().sum();
        assert!(
            read >= 200 && read >= frames * 9 / 10,
            "{clock}: {read} of {frames} frames read ({unreadable} unreadable)"
        );
    }
    // Inputs that share a clock meet within a frame on it.
    let (offsets, _, _) = &source;
    let apart: usize = offsets.iter().filter(|(d, _)| d.abs() > 1).map(|(_, n)| n).sum();
    assert_eq!(apart, 0, "frames where the teacher and the slides are more than a frame apart: {offsets:?}");
}

/// Mixes the camera and the slides from the origin side by side for 12 s
/// on `clock`, then reads every frame of the recording from the first that
/// shows both: how many frames the teacher's picture was ahead of the
/// slides' (how many frames had each offset), frames, and frames that
/// could not be read.
fn mix_and_read(
    dir: &Path,
    origin: u16,
    policy: &InputPolicy,
    live: &LiveConfig,
    clock: room_media_ctl::live::mixer::MixClock,
) -> (std::collections::BTreeMap<i32, usize>, usize, usize) {
    use room_media_ctl::layout::{Canvas, InputKind, Rgb, Template};
    use room_media_ctl::live::mixer::{LiveMixer, MixInput, MixSettings};

    let recording = dir.join(format!("mix-{clock:?}.flv"));
    let mut settings = MixSettings::new(Canvas { width: 640, height: 360, color: Rgb(128, 128, 128) });
    settings.input_box = (640, 360);
    settings.video_kbps = 1_500;
    settings.clock = clock;
    settings.outputs.flv = Some(recording.clone());
    let inputs = vec![
        MixInput { id: "cam".into(), url: format!("rtmp://127.0.0.1:{origin}/live/cam"), kind: InputKind::AudioVideo },
        MixInput { id: "slides".into(), url: format!("rtmp://127.0.0.1:{origin}/live/slides"), kind: InputKind::Video },
    ];
    let template = Template::Grid { inputs: vec!["cam".into(), "slides".into()] };
    let (tx, _events) = std::sync::mpsc::channel();
    let mixer = LiveMixer::start(room_media_ctl::live::JobId(1), inputs, &template, settings, policy, live, tx)
        .expect("the mix starts");
    let slot_of = |input: usize| *mixer.state().iter().find(|s| s.input == input).expect("a slot");
    let (cam_slot, slides_slot) = (slot_of(0), slot_of(1));
    until("the mix flows", Duration::from_secs(30), || mixer.health().frames > 25 * 12);
    mixer.stop();

    let decoded = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(&recording)
        .args(["-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(decoded.status.success(), "{}", String::from_utf8_lossy(&decoded.stderr));
    let frame = 640 * 360;
    let mut offsets = std::collections::BTreeMap::<i32, usize>::new();
    let mut unreadable = 0;
    // From the first frame that shows both: before it, the mix shows what
    // it has opened so far.
    let pictures: Vec<&[u8]> = decoded.stdout.chunks_exact(frame).collect();
    let both = |p: &[u8]| read_number(p, 640, &cam_slot).is_some() && read_number(p, 640, &slides_slot).is_some();
    let first = pictures.iter().position(|p| both(p)).unwrap_or(pictures.len());
    for picture in &pictures[first..] {
        match (read_number(picture, 640, &cam_slot), read_number(picture, 640, &slides_slot)) {
            (Some(cam), Some(slides)) => {
                // Both count modulo 1,024: the signed difference.
                let d = (cam as i32 - slides as i32).rem_euclid(1 << CODE_BITS);
                let d = if d >= 1 << (CODE_BITS - 1) { d - (1 << CODE_BITS) } else { d };
                *offsets.entry(d).or_default() += 1;
            }
            _ => unreadable += 1,
        }
    }
    (offsets, pictures.len() - first, unreadable)
}
