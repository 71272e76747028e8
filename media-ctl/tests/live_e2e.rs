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
use room_media_ctl::input::InputPolicy;
use room_media_ctl::live::{JobState, LiveBackend, LiveBackendConfig, LiveConfig, LiveError, LiveEvent};
use room_media_ctl::orchestrate::{
    Action, BackendEvent, CommandKind, HostEvent, Orchestrator, OrchestratorConfig, SessionEvent, StreamKind,
};

const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

struct Killed(Child);

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
    let mut backend = LiveBackend::new(
        LiveBackendConfig {
            origin: format!("rtmp://127.0.0.1:{origin}/live"),
            recordings: recordings.clone(),
            segment: Duration::from_secs(2),
            max_jobs: 8,
            live,
        },
        policy,
    );

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
            Err(LiveError::Unsupported(_)) => continue,
            Err(e) => panic!("{command:?}: {e}"),
        }
        if let CommandKind::StartRelay { stream, .. } = &command.kind {
            relays.push((stream.clone(), command.id));
        }
    }
    assert_eq!(relays.len(), 2);
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
    assert!(backend.health("slides", false).is_some_and(|h| h.restarts >= 1));

    // The class ends: every job stops, each quickly.
    orchestrator.handle_host(now, HostEvent::ClassEnded).expect("ended");
    let mut stops = Vec::new();
    while let Some(action) = orchestrator.poll_action() {
        let Action::Command(command) = action else { continue };
        if matches!(command.kind, CommandKind::StopMix | CommandKind::Transcode) {
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
