//! Live jobs under supervision, with a stand-in for ffmpeg (a shell script
//! that prints ffmpeg's progress lines and exits when told to by the test):
//! restarts with backoff, losses and recoveries, stop when asked, kill when
//! deaf, and the backend's answers to the orchestrator. The same against a
//! real nginx-rtmp and ffmpeg is in `live_e2e.rs`.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use room_core::Timestamp;
use room_media_ctl::input::InputPolicy;
use room_media_ctl::live::{
    JobId, JobState, LiveBackend, LiveBackendConfig, LiveConfig, LiveError, LiveEvent, LiveJob,
};
use room_media_ctl::orchestrate::{
    Action, BackendEvent, Command, CommandKind, HostEvent, Orchestrator, OrchestratorConfig, SessionEvent, StreamKind,
};

/// A stand-in for ffmpeg: each run appends a line to `runs`; while the
/// file `down` exists a run fails at once, else it prints progress every
/// 20 ms until `cut` appears (then it exits 1, as ffmpeg does when its
/// input times out) or `q` arrives on stdin (then it exits 0).
fn fake_ffmpeg(dir: &Path, deaf: bool) -> PathBuf {
    let d = dir.display();
    // (A background list's stdin is /dev/null: the pipe goes by fd 3.)
    let read_q = if deaf {
        "trap '' INT TERM".to_owned()
    } else {
        format!(r#"exec 3<&0; (read line <&3 && [ "$line" = q ] && touch {d}/quit) >/dev/null 2>&1 &"#)
    };
    let script = format!(
        r#"#!/bin/sh
echo run >> {d}/runs
rm -f {d}/quit
list=""; prev=""
for a in "$@"; do [ "$prev" = "-segment_list" ] && list="$a"; prev="$a"; done
if [ -e {d}/down ]; then echo "Input/output error" >&2; exit 1; fi
{read_q}
i=0
while true; do
  i=$((i+1))
  echo frame=$i
  echo out_time_us=$((i*40000))
  echo progress=continue
  if [ "$i" = 3 ] && [ -n "$list" ]; then
    echo "seg-a.flv,0.000000,2.000000" >> "$list"
    echo "seg-b.flv,2.000000,4.500000" >> "$list"
  fi
  if [ -e {d}/cut ]; then rm -f {d}/cut; echo "rtmp: timeout" >&2; exit 1; fi
  if [ -e {d}/quit ]; then echo progress=end; exit 0; fi
  sleep 0.02
done
"#
    );
    let path = dir.join("fake-ffmpeg");
    std::fs::write(&path, script).expect("script written");
    let mut perms = std::fs::metadata(&path).expect("script").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).expect("script made executable");
    path
}

fn config(program: &Path) -> LiveConfig {
    LiveConfig {
        program: program.display().to_string(),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        stop_grace: Duration::from_millis(300),
        ..LiveConfig::default()
    }
}

fn runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("runs")).map(|s| s.lines().count()).unwrap_or(0)
}

fn next(events: &Receiver<LiveEvent>) -> LiveEvent {
    events.recv_timeout(Duration::from_secs(20)).expect("an event")
}

fn relay() -> room_media_ctl::ffmpeg::Job {
    room_media_ctl::ffmpeg::live_relay_job(
        "rtmp://origin.example/live/cam",
        &["rtmp://edge.example/live/cam".to_owned()],
        &InputPolicy::network_only(),
        Duration::from_secs(2),
    )
    .expect("allowed")
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn a_lost_input_is_picked_up_again_and_stop_ends_the_process() {
    let dir = tempfile::tempdir().expect("dir");
    let program = fake_ffmpeg(dir.path(), false);
    let (tx, events) = channel();
    let job = LiveJob::spawn(JobId(7), relay(), &config(&program), tx);
    assert_eq!(next(&events), LiveEvent::Flowing(JobId(7)));
    assert_eq!(job.health().state, JobState::Running);
    // The input times out: the job says so and starts ffmpeg again.
    std::fs::write(dir.path().join("cut"), "").expect("cut");
    match next(&events) {
        LiveEvent::Lost { job, reason, attempt, after } => {
            assert_eq!((job, attempt, after), (JobId(7), 1, Duration::from_millis(50)));
            assert!(reason.contains("rtmp: timeout"), "ffmpeg's last lines: {reason}");
        }
        other => panic!("expected a loss, got {other:?}"),
    }
    assert_eq!(next(&events), LiveEvent::Recovered(JobId(7)));
    let health = job.health();
    assert_eq!((health.state.clone(), health.restarts), (JobState::Running, 1));
    assert!(health.frames > 0 && health.out_ms > 0, "{health:?}");
    assert_eq!(runs(dir.path()), 2);
    let pid = health.pid.expect("a process runs");
    let _took = job.stop();
    assert!(!process_exists(pid), "ffmpeg {pid} still runs after stop");
    assert_eq!(next(&events), LiveEvent::Stopped(JobId(7)));
    assert!(dir.path().join("quit").exists(), "asked to quit with q, not killed");
}

#[test]
fn restarts_back_off_doubling_and_give_up_when_told() {
    let dir = tempfile::tempdir().expect("dir");
    let program = fake_ffmpeg(dir.path(), false);
    std::fs::write(dir.path().join("down"), "").expect("down");
    let (tx, events) = channel();
    let config = LiveConfig { max_restarts: Some(4), ..config(&program) };
    let job = LiveJob::spawn(JobId(1), relay(), &config, tx);
    let mut delays = Vec::new();
    loop {
        match next(&events) {
            LiveEvent::Lost { after, attempt, .. } => {
                assert_eq!(attempt as usize, delays.len() + 1);
                delays.push(after.as_millis());
            }
            LiveEvent::Failed { job, reason } => {
                assert_eq!(job, JobId(1));
                assert!(reason.contains("gave up after 4 restarts"), "{reason}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delays, [50, 100, 200, 400], "doubling up to the ceiling");
    assert_eq!(runs(dir.path()), 5, "the first run and four restarts");
    assert!(matches!(job.health().state, JobState::Failed { .. }));
}

#[test]
fn a_stop_during_the_backoff_starts_nothing_more() {
    let dir = tempfile::tempdir().expect("dir");
    let program = fake_ffmpeg(dir.path(), false);
    std::fs::write(dir.path().join("down"), "").expect("down");
    let (tx, events) = channel();
    let config = LiveConfig { backoff: Duration::from_secs(30), ..config(&program) };
    let job = LiveJob::spawn(JobId(2), relay(), &config, tx);
    assert!(matches!(next(&events), LiveEvent::Lost { attempt: 1, .. }));
    assert_eq!(job.health().state, JobState::Restarting { attempt: 1 });
    let _took = job.stop();
    assert_eq!(next(&events), LiveEvent::Stopped(JobId(2)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(runs(dir.path()), 1);
}

#[test]
fn a_process_deaf_to_q_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().expect("dir");
    let program = fake_ffmpeg(dir.path(), true);
    let (tx, events) = channel();
    let job = LiveJob::spawn(JobId(3), relay(), &config(&program), tx);
    assert_eq!(next(&events), LiveEvent::Flowing(JobId(3)));
    let pid = job.health().pid.expect("a process");
    let took = job.stop();
    assert!(took >= Duration::from_millis(300), "waited for the grace first: {took:?}");
    assert!(!process_exists(pid), "killed");
    assert_eq!(next(&events), LiveEvent::Stopped(JobId(3)));
}

#[test]
fn a_missing_program_fails_the_job_with_its_name() {
    let (tx, events) = channel();
    let config = LiveConfig { program: "/nonexistent/ffmpeg".into(), ..LiveConfig::default() };
    let job = LiveJob::spawn(JobId(4), relay(), &config, tx);
    match next(&events) {
        LiveEvent::Failed { job, reason } => {
            assert_eq!(job, JobId(4));
            assert!(reason.contains("/nonexistent/ffmpeg"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    drop(job);
}

fn commands(orchestrator: &mut Orchestrator) -> (Vec<Command>, Vec<SessionEvent>) {
    let (mut commands, mut events) = (Vec::new(), Vec::new());
    while let Some(action) = orchestrator.poll_action() {
        match action {
            Action::Command(c) => commands.push(c),
            Action::Event(e) => events.push(e),
            _ => {}
        }
    }
    (commands, events)
}

#[test]
fn the_backend_runs_the_orchestrators_relays_and_recordings_and_reports_back() {
    let dir = tempfile::tempdir().expect("dir");
    let program = fake_ffmpeg(dir.path(), false);
    let recordings = dir.path().join("recordings");
    std::fs::create_dir(&recordings).expect("dir");
    let policy = InputPolicy::with_local_dir(dir.path()).expect("policy");
    let mut backend = LiveBackend::new(
        LiveBackendConfig {
            origin: "rtmp://127.0.0.1:1935/live".into(),
            recordings,
            segment: Duration::from_secs(10),
            max_jobs: 3,
            live: config(&program),
            mix: None,
            callbacks: None,
        },
        policy,
    );
    let mut orchestrator = Orchestrator::new(OrchestratorConfig {
        relay_targets: vec!["rtmp://edge-1.example/live/{stream}".into()],
        ..OrchestratorConfig::default()
    });
    let now = Timestamp::from_millis(1_000);
    orchestrator.handle_host(now, HostEvent::ClassStarted).expect("started");
    let up = HostEvent::StreamUp { stream: "cam-1".into(), kind: StreamKind::TeacherCamera };
    orchestrator.handle_host(now, up).expect("up");
    let (issued, _) = commands(&mut orchestrator);
    let relay = issued.iter().find(|c| matches!(c.kind, CommandKind::StartRelay { .. })).expect("a relay");
    assert_eq!(
        relay.kind,
        CommandKind::StartRelay { stream: "cam-1".into(), targets: vec!["rtmp://edge-1.example/live/cam-1".into()] },
        "each stream to its own place on the edge"
    );
    for command in &issued {
        match backend.execute(command) {
            Ok(answer) => {
                assert_eq!(answer, BackendEvent::Accepted(command.id));
                orchestrator.handle_backend(now, answer).expect("known");
            }
            Err(LiveError::Unsupported(what)) => {
                assert!(matches!(command.kind, CommandKind::Mix { .. }), "{what}");
            }
            Err(e) => panic!("{command:?}: {e}"),
        }
    }
    assert_eq!(backend.jobs(), 2, "a relay and a recording");
    // A retried command is the same job.
    assert_eq!(backend.execute(relay).expect("again"), BackendEvent::Accepted(relay.id));
    assert_eq!(backend.jobs(), 2);
    // The relay's input drops and comes back: the orchestrator hears it.
    let mut flowing = 0;
    while flowing < 2 {
        if let (LiveEvent::Flowing(_), None) = backend.wait_event(Duration::from_secs(20)).expect("an event") {
            flowing += 1;
        }
    }
    // (Both jobs run the stand-in, so either or both may see the cut.)
    std::fs::write(dir.path().join("cut"), "").expect("cut");
    let mut told = Vec::new();
    let mut degraded = std::collections::BTreeSet::new();
    loop {
        let (_, answer) = backend.wait_event(Duration::from_secs(20)).expect("an event");
        let Some(answer) = answer else { continue };
        orchestrator.handle_backend(now, answer.clone()).expect("known");
        told.push(answer.clone());
        match answer {
            BackendEvent::Degraded { id, .. } => assert!(degraded.insert(id), "{told:?}"),
            BackendEvent::Recovered(id) => {
                assert!(degraded.remove(&id), "recovered before degraded: {told:?}");
                if degraded.is_empty() {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let (_, events) = commands(&mut orchestrator);
    let kinds: Vec<bool> = events
        .iter()
        .map(|e| match e {
            SessionEvent::CommandDegraded { .. } => true,
            SessionEvent::CommandRecovered { .. } => false,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(kinds.len(), told.len(), "the host is told of each: {events:?}");
    assert_eq!(kinds.iter().filter(|d| **d).count(), told.len() / 2, "{events:?}");
    // Bad input is refused before anything runs.
    let bad = Command { id: relay.id, attempt: 1, kind: CommandKind::StartRecording { stream: "../etc".into() } };
    assert!(matches!(backend.execute(&bad), Err(LiveError::Refused(_))));
    let file = Command {
        id: relay.id,
        attempt: 1,
        kind: CommandKind::StartRelay { stream: "cam-2".into(), targets: vec!["file:///etc/passwd".into()] },
    };
    assert!(matches!(backend.execute(&file), Err(LiveError::Refused(_))));
    assert_eq!(backend.jobs(), 2);
    // The class ends: every job stops.
    orchestrator.handle_host(now, HostEvent::ClassEnded).expect("ended");
    let (stops, _) = commands(&mut orchestrator);
    for command in stops.iter().filter(|c| !matches!(c.kind, CommandKind::StopMix)) {
        let answer = backend.execute(command).expect("stopped");
        assert_eq!(answer, BackendEvent::Succeeded(command.id));
        orchestrator.handle_backend(now, answer).expect("known");
    }
    assert_eq!(backend.jobs(), 0);
}

#[test]
fn finished_recordings_become_signed_callbacks_the_ingestor_reads() {
    use room_media_ctl::auth::HmacAuth;
    use room_media_ctl::ingest::{Ingested, Ingestor};
    use room_media_ctl::live::callbacks::CallbackConfig;

    let dir = tempfile::tempdir().expect("dir");
    let program = fake_ffmpeg(dir.path(), false);
    let recordings = dir.path().join("recordings");
    std::fs::create_dir(&recordings).expect("dir");
    let policy = InputPolicy::with_local_dir(dir.path()).expect("policy");
    let mut backend = LiveBackend::new(
        LiveBackendConfig {
            origin: "rtmp://127.0.0.1:1935/live".into(),
            recordings,
            segment: Duration::from_secs(2),
            max_jobs: 3,
            live: config(&program),
            mix: None,
            callbacks: Some(CallbackConfig::new(b"k".to_vec(), "https://cdn.example/rec/")),
        },
        policy,
    );
    backend.set_stream_owner("cam-1", "1001");
    let record = Command {
        id: room_media_ctl::orchestrate::CommandId(1),
        attempt: 1,
        kind: CommandKind::StartRecording { stream: "cam-1".into() },
    };
    assert!(matches!(backend.execute(&record), Ok(BackendEvent::Accepted(_))));
    let mut files = Vec::new();
    while files.len() < 2 {
        if let Some((LiveEvent::Recorded(file), None)) = backend.wait_event(Duration::from_secs(20)) {
            files.push(file);
        }
    }
    assert_eq!(files[0].file_name, "seg-a.flv");
    assert_eq!(files[1].start_ms - files[0].start_ms, 2_000, "times from the list, in ms");
    assert_eq!((files[0].end_ms - files[0].start_ms, files[1].end_ms - files[1].start_ms), (2_000, 2_500));
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as i64;
    assert!((files[0].start_ms - now_ms).abs() < 60_000, "dated near now: {} vs {now_ms}", files[0].start_ms);
    let mut verifier = HmacAuth::new(b"k".to_vec(), 300, 100);
    let mut ingestor = Ingestor::new();
    let mut failed_once = false;
    let mut delivered = 0;
    for _ in 0..50 {
        let Some(delivery) = backend.poll_callback() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let unix = (now_ms / 1000) as u64;
        verifier.verify(&delivery.signed, &delivery.body, unix).expect("signed, and never a replay");
        if !failed_once {
            // The host was down: the same callback comes again later.
            failed_once = true;
            backend.callback_failed(delivery.id);
            continue;
        }
        assert_eq!(ingestor.ingest(&delivery.body, now_ms).expect("a Roomkit callback"), Ingested::New);
        backend.callback_delivered(delivery.id);
        delivered += 1;
        if delivered == 2 {
            break;
        }
    }
    assert_eq!(delivered, 2);
    let timeline = ingestor.timeline("cam-1").expect("a timeline");
    let urls: Vec<&str> = timeline.segments().map(|s| s.url.as_str()).collect();
    assert_eq!(urls, ["https://cdn.example/rec/seg-a.flv", "https://cdn.example/rec/seg-b.flv"]);
    assert_eq!(timeline.segments().next().and_then(|s| s.user.clone()).as_deref(), Some("1001"));
    assert_eq!(backend.callbacks_pending(), (0, 0));
    let stop = Command {
        id: room_media_ctl::orchestrate::CommandId(2),
        attempt: 1,
        kind: CommandKind::StopRecording { stream: "cam-1".into() },
    };
    assert_eq!(backend.execute(&stop).expect("stopped"), BackendEvent::Succeeded(stop.id));
    assert_eq!(backend.jobs(), 0);
}
