//! The live mixer's CPU per output frame against a plain ffmpeg overlay
//! making the same picture (slides full frame, the teacher's camera small
//! in the bottom-right corner) from the same two 720p inputs, in the same
//! run. Each iteration runs ffmpeg once over 10 s of input; the time
//! criterion reports is ffmpeg's CPU time (user + system, from its
//! `-benchmark` line), not wall time; divide by 250 frames for a frame.
//! Two outputs: filters only (`-f null`), and encoded with x264 (veryfast,
//! as the mixer encodes). Needs ffmpeg on the PATH; without it the
//! benchmark says so and measures nothing.
//!
//! Run: `cargo bench -p room-media-ctl --bench mixer`.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use room_media_ctl::layout::{self, Canvas, Corner, Input, InputKind, Limits, Rgb, Template};
use room_media_ctl::live::mixer::{MixInput, MixSettings, mixer_graph, slots};

const FRAMES: u64 = 250;

fn inputs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mixer-bench")
}

/// Two 10 s 1280x720 25 fps H.264 files with sound, made once.
fn make_inputs() -> Option<(PathBuf, PathBuf)> {
    let dir = inputs_dir();
    std::fs::create_dir_all(&dir).ok()?;
    let slides = dir.join("slides.mp4");
    let camera = dir.join("camera.mp4");
    for (path, video) in [(&slides, "testsrc2=size=1280x720:rate=25"), (&camera, "mandelbrot=size=1280x720:rate=25")] {
        if path.exists() {
            continue;
        }
        let ok = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", video])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "10"])
            .args(["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac"])
            .arg(path)
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
    }
    Some((slides, camera))
}

/// ffmpeg's CPU time for one run.
fn cpu(args: &[String]) -> Duration {
    let out = Command::new("ffmpeg").args(args).output().expect("ffmpeg runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text.lines().find(|l| l.starts_with("bench: utime=")).expect("a -benchmark line");
    let secs = |key: &str| -> f64 {
        let start = line.find(key).expect("a field") + key.len();
        line[start..].split('s').next().and_then(|v| v.parse().ok()).expect("seconds")
    };
    Duration::from_secs_f64(secs("utime=") + secs("stime="))
}

fn ours(slides: &Path, camera: &Path) -> String {
    let mut settings = MixSettings::new(Canvas { width: 1280, height: 720, color: Rgb(0, 0, 0) });
    settings.outputs.flv = Some(inputs_dir().join("unused.flv"));
    let inputs = vec![
        MixInput { id: "slides".into(), url: format!("file:{}", slides.display()), kind: InputKind::AudioVideo },
        MixInput { id: "camera".into(), url: format!("file:{}", camera.display()), kind: InputKind::AudioVideo },
    ];
    let described: Vec<Input> =
        inputs.iter().map(|i| Input { id: i.id.clone(), kind: i.kind, width: 1280, height: 720 }).collect();
    let template = Template::PictureInPicture {
        main: "slides".into(),
        overlay: "camera".into(),
        corner: Corner::BottomRight,
        scale: 0.25,
        margin: 16,
    };
    let layout = layout::layout(settings.canvas, &template, &described, None, Limits::default()).expect("layout");
    let state = slots(&layout, &inputs, &settings).expect("slots");
    // A free port for the control socket the graph binds.
    let control = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port");
    mixer_graph(&inputs, &state, &settings, control).expect("graph").graph
}

fn bench_mixer(c: &mut Criterion) {
    let Some((slides, camera)) = make_inputs() else {
        eprintln!("ffmpeg is not available: the mixer benchmark measures nothing");
        return;
    };
    let plain = "[1:v]scale=320:180[o];[0:v][o]overlay=x=944:y=524[vout];[0:a][1:a]amix=inputs=2[aout]".to_owned();
    let encode: Vec<String> = [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-tune",
        "zerolatency",
        "-b:v",
        "2500k",
        "-c:a",
        "aac",
        "-f",
        "null",
        "-",
    ]
    .map(str::to_owned)
    .to_vec();
    let filters_only: Vec<String> = ["-f", "null", "-"].map(str::to_owned).to_vec();
    let mut group = c.benchmark_group("mixer_cpu_250_frames");
    group.sample_size(10).measurement_time(Duration::from_secs(30)).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(FRAMES));
    for (output, tail) in [("filters", &filters_only), ("x264", &encode)] {
        for engine in ["roomkit mixer", "plain ffmpeg overlay"] {
            group.bench_function(format!("{engine}/{output}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let graph =
                            if engine == "plain ffmpeg overlay" { plain.clone() } else { ours(&slides, &camera) };
                        let mut args: Vec<String> =
                            ["-hide_banner", "-loglevel", "info", "-nostats", "-benchmark", "-nostdin"]
                                .map(str::to_owned)
                                .to_vec();
                        for input in [&slides, &camera] {
                            args.extend(["-i".to_owned(), input.display().to_string()]);
                        }
                        args.extend(["-filter_complex".to_owned(), graph]);
                        args.extend(["-map", "[vout]", "-map", "[aout]", "-frames:v", "250"].map(str::to_owned));
                        args.extend(tail.iter().cloned());
                        total += cpu(&args);
                    }
                    total
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_mixer);
criterion_main!(benches);
