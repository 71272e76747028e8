//! The live mixer: live inputs composed on a canvas by one ffmpeg process
//! whose layout changes while it runs, out to RTMP, live HLS encrypted
//! with AES-128 and rotating keys, and FLV or MP4 recordings.
//!
//! The filter graph has one *slot* per input, stacked by z-order. Every
//! input is decoded once, brought to one box size (its aspect kept,
//! padded) and frame rate, and offered to every slot; a slot shows one of
//! them (`streamselect`), cropped, scaled and placed (`crop`, `scale`,
//! `overlay`), or nothing (placed off the canvas, scaled to 2x2). A layout
//! switch is a batch of filter commands (only what changed) sent to
//! ffmpeg's `zmq` filter in one write, so they all apply before the same
//! frame: no restart, no hole, no discontinuity in the output. Inputs are
//! matched by their timestamps (the filters' frame sync), each counted
//! from its first frame. A change of the set of inputs needs a new
//! process (a new graph); the job is supervised like every live job, and
//! a restart starts with the layout in force, appends to the HLS playlist
//! (after a discontinuity) and records to new files.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::zmtp::Dealer;
use super::{Health, JobId, LiveConfig, LiveEvent, LiveJob};
use crate::ffmpeg::{FfmpegError, Job};
use crate::input::{InputPolicy, Purpose};
use crate::layout::{Canvas, Fit, Input, InputKind, Layout, LayoutError, Limits, Rect, Template, Watermark, layout};

/// A live input of the mixer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixInput {
    /// Its id, as templates name it (a stream id).
    pub id: String,
    /// Where to read it (`rtmp://`, `rtmps://`, `srt://`).
    pub url: String,
    /// What it carries: [`InputKind::AudioVideo`], [`InputKind::Video`]
    /// or [`InputKind::Audio`].
    pub kind: InputKind,
}

/// Live HLS output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveHls {
    /// The directory of the playlist (`index.m3u8`), segments and keys
    /// (inside the policy's local directory).
    pub dir: PathBuf,
    /// Segment length.
    pub segment: Duration,
    /// Segments per key: every `rotate_every` segments' time a new key
    /// (and IV) is made and the playlist names it. `0`: one key.
    pub rotate_every: u32,
    /// What the playlist's key URIs start with (`https://keys.example/c1/`,
    /// or empty for keys beside the playlist).
    pub key_uri_prefix: String,
}

/// Where the mix goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MixOutputs {
    /// Live targets (`rtmp://`, `rtmps://`, `srt://`).
    pub live: Vec<String>,
    /// Live HLS, encrypted.
    pub hls: Option<LiveHls>,
    /// An FLV recording (a local path).
    pub flv: Option<PathBuf>,
    /// An MP4 recording, fragmented so that a stop at any time leaves a
    /// playable file (a local path).
    pub mp4: Option<PathBuf>,
}

/// Which frames of the inputs the mix puts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MixClock {
    /// Each input from the moment the mix opens it: right for inputs from
    /// different encoders (a camera app and a screen-share tool), whose
    /// timestamps have nothing in common. Inputs are opened one after the
    /// other, each probed (up to 1 s) and then waiting for a keyframe, so
    /// pictures published at the same moment are shown up to about two
    /// seconds apart (the end-to-end test, with 1 s GOPs: 45 to 53 frames
    /// at 25 a second).
    #[default]
    Arrival,
    /// By the inputs' own timestamps: for inputs that carry one clock (one
    /// encoder publishing the teacher's camera and the slides, a hardware
    /// encoder's several outputs), each relayed with its timestamps kept,
    /// as this crate's ingest and relays do. Pictures made at the same
    /// moment are shown together (the end-to-end test: within one frame,
    /// over SRT and RTMP paths of different delay); the mix waits for the
    /// latest of them. Inputs whose timestamps are far apart never meet:
    /// use [`MixClock::Arrival`] for them. The outputs' timestamps are the
    /// inputs' (the first frame is not at zero).
    Source,
}

/// How the mix is made.
#[derive(Debug, Clone, PartialEq)]
pub struct MixSettings {
    /// The output picture (sides even, within 128..=4096).
    pub canvas: Canvas,
    /// Frames a second (1..=60).
    pub fps: u32,
    /// The box every input is brought to (its aspect kept, padded); crops
    /// in templates are in these pixels.
    pub input_box: (u32, u32),
    /// Video bit rate, in kbit/s.
    pub video_kbps: u32,
    /// A watermark over everything.
    pub watermark: Option<Watermark>,
    /// Where it goes.
    pub outputs: MixOutputs,
    /// Which frames of the inputs go together.
    pub clock: MixClock,
}

impl MixSettings {
    /// 1280x720 at 25 fps, 2,500 kbit/s, inputs boxed at 1280x720, no
    /// watermark, no output yet, inputs taken as they arrive
    /// ([`MixClock::Arrival`]).
    pub fn new(canvas: Canvas) -> MixSettings {
        MixSettings {
            canvas,
            fps: 25,
            input_box: (1280, 720),
            video_kbps: 2_500,
            watermark: None,
            outputs: MixOutputs::default(),
            clock: MixClock::Arrival,
        }
    }
}

/// Why the mixer refused something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MixError {
    /// The template does not fit the canvas or the inputs.
    #[error("layout: {0}")]
    Layout(#[from] LayoutError),
    /// A URL or path the allow-list refuses.
    #[error(transparent)]
    Refused(#[from] FfmpegError),
    /// Settings out of range.
    #[error("mix settings: {0}")]
    Settings(String),
    /// More regions than the mixer has slots (one per input).
    #[error("the layout has {regions} regions; this mix has {slots} inputs")]
    TooManyRegions {
        /// Regions asked for.
        regions: usize,
        /// Slots.
        slots: usize,
    },
    /// ffmpeg's control socket did not take the switch.
    #[error("the mixer did not take the layout: {0}")]
    Control(String),
    /// Files (keys) could not be written.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// One slot's picture: which input, the part of its box shown, the size
/// it is scaled to and where it goes on the canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotState {
    /// The input's index.
    pub input: usize,
    /// The part of the input's box shown.
    pub crop: Rect,
    /// The size on the canvas.
    pub size: (u32, u32),
    /// The top-left corner on the canvas (off the canvas when hidden).
    pub at: (u32, u32),
}

fn even(v: u32) -> u32 {
    (v & !1).max(2)
}

/// The slots for `layout` over `inputs` (one slot per input, by z-order;
/// slots past the regions hidden).
pub fn slots(layout: &Layout, inputs: &[MixInput], settings: &MixSettings) -> Result<Vec<SlotState>, MixError> {
    let (bw, bh) = settings.input_box;
    let full = Rect { x: 0, y: 0, width: bw, height: bh };
    let hidden = SlotState { input: 0, crop: full, size: (2, 2), at: (settings.canvas.width, settings.canvas.height) };
    let mut drawn: Vec<_> = layout.regions.iter().filter(|r| r.kind.has_picture()).collect();
    drawn.sort_by_key(|r| r.z);
    let slots = inputs.len();
    if drawn.len() > slots {
        return Err(MixError::TooManyRegions { regions: drawn.len(), slots });
    }
    let mut out = vec![hidden; slots];
    for (slot, region) in out.iter_mut().zip(drawn) {
        let input = inputs
            .iter()
            .position(|i| i.id == region.input)
            .ok_or_else(|| MixError::Layout(LayoutError::UnknownInput(region.input.clone())))?;
        let crop = region.crop.unwrap_or(full);
        let rect = region.rect;
        let (cw, ch) = (u64::from(crop.width.max(1)), u64::from(crop.height.max(1)));
        let (rw, rh) = (u64::from(rect.width), u64::from(rect.height));
        *slot = match region.fit {
            Fit::Stretch => SlotState { input, crop, size: (rect.width, rect.height), at: (rect.x, rect.y) },
            Fit::Cover => {
                // The crop cut further to the region's aspect, centred.
                let (w, h) = if cw * rh > rw * ch {
                    ((ch * rw / rh) as u32, crop.height)
                } else {
                    (crop.width, (cw * rh / rw) as u32)
                };
                let (w, h) = (even(w), even(h));
                let cut = Rect {
                    x: (crop.x + (crop.width.saturating_sub(w)) / 2) & !1,
                    y: (crop.y + (crop.height.saturating_sub(h)) / 2) & !1,
                    width: w,
                    height: h,
                };
                SlotState { input, crop: cut, size: (rect.width, rect.height), at: (rect.x, rect.y) }
            }
            _ => {
                // Contain: the largest picture of the crop's aspect inside
                // the region, centred; the canvas shows around it.
                let (w, h) = if cw * rh > rw * ch { (rw, ch * rw / cw) } else { (cw * rh / ch, rh) };
                let (w, h) = (even(w as u32), even(h as u32));
                let at = (rect.x + (rect.width.saturating_sub(w)) / 2, rect.y + (rect.height.saturating_sub(h)) / 2);
                SlotState { input, crop, size: (w, h), at }
            }
        };
    }
    Ok(out)
}

/// The filter commands that take the mixer from `from` to `to` (only
/// what changed), for ffmpeg's `zmq` filter.
pub fn switch_commands(from: &[SlotState], to: &[SlotState]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, (a, b)) in from.iter().zip(to).enumerate() {
        if a.input != b.input {
            out.push(format!("streamselect@s{k} map {}", b.input));
        }
        for (name, old, new) in [
            ("w", a.crop.width, b.crop.width),
            ("h", a.crop.height, b.crop.height),
            ("x", a.crop.x, b.crop.x),
            ("y", a.crop.y, b.crop.y),
        ] {
            if old != new {
                out.push(format!("crop@c{k} {name} {new}"));
            }
        }
        if a.size.0 != b.size.0 {
            out.push(format!("scale@z{k} w {}", b.size.0));
        }
        if a.size.1 != b.size.1 {
            out.push(format!("scale@z{k} h {}", b.size.1));
        }
        if a.at.0 != b.at.0 {
            out.push(format!("overlay@o{k} x {}", b.at.0));
        }
        if a.at.1 != b.at.1 {
            out.push(format!("overlay@o{k} y {}", b.at.1));
        }
    }
    out
}

fn check_settings(settings: &MixSettings, inputs: &[MixInput]) -> Result<(), MixError> {
    let bad = |what: String| Err(MixError::Settings(what));
    if !(1..=60).contains(&settings.fps) {
        return bad(format!("fps {} outside 1..=60", settings.fps));
    }
    let (bw, bh) = settings.input_box;
    if !(16..=4096).contains(&bw) || !(16..=4096).contains(&bh) || bw % 2 == 1 || bh % 2 == 1 {
        return bad(format!("input box {bw}x{bh}: sides even, within 16..=4096"));
    }
    if !(100..=50_000).contains(&settings.video_kbps) {
        return bad(format!("video bit rate {} kbit/s outside 100..=50000", settings.video_kbps));
    }
    if inputs.is_empty() || inputs.len() > Limits::default().max_inputs {
        return bad(format!("{} inputs; 1 to {}", inputs.len(), Limits::default().max_inputs));
    }
    for (i, input) in inputs.iter().enumerate() {
        crate::input::check_id("input id", &input.id).map_err(FfmpegError::from)?;
        if inputs[..i].iter().any(|o| o.id == input.id) {
            return bad(format!("input {:?} given twice", input.id));
        }
        if !matches!(input.kind, InputKind::AudioVideo | InputKind::Video | InputKind::Audio) {
            return bad(format!("input {:?}: a live input carries sound, picture or both", input.id));
        }
    }
    let o = &settings.outputs;
    if o.live.is_empty() && o.hls.is_none() && o.flv.is_none() && o.mp4.is_none() {
        return bad("no output".to_owned());
    }
    if let Some(hls) = &o.hls {
        if !(1..=60).contains(&hls.segment.as_secs()) {
            return bad(format!("HLS segment of {:?}: 1 to 60 s", hls.segment));
        }
        if !hls.key_uri_prefix.is_empty() {
            crate::input::check_id("key URI prefix", &hls.key_uri_prefix).map_err(FfmpegError::from)?;
        }
    }
    Ok(())
}

/// A path for a `tee` slave: checked by the policy, and free of the
/// characters `tee` would read as syntax.
fn tee_path(policy: &InputPolicy, path: &Path) -> Result<String, MixError> {
    let checked = policy.check_output(path).map_err(FfmpegError::from)?;
    let plain = checked.arg.trim_start_matches("file:").to_owned();
    if plain.contains([':', '|', '[', ']', '\\', '\'', '"', ';', ',']) {
        return Err(MixError::Settings(format!("{plain:?}: a path with characters ffmpeg's tee reads as syntax")));
    }
    Ok(plain)
}

/// A mix's filter graph: what [`mixer_job`] runs, for inspection and
/// measurement with other inputs (the benchmark feeds it files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixGraph {
    /// The `-filter_complex` text: inputs `0..n` are the streams, the
    /// picture comes out of `[vout]`, the sound (if any) out of `[aout]`.
    pub graph: String,
    /// The watermark image to give as input `n`, if the watermark is one.
    pub image: Option<String>,
    /// Whether `[aout]` exists.
    pub audio: bool,
    /// Whether the mix runs on the inputs' clock (`-copyts`): asked for
    /// ([`MixClock::Source`]) and there is a picture to follow.
    pub source_clock: bool,
}

/// The filter graph of a mix of `inputs` as `state` says, with its
/// control socket on `control`.
pub fn mixer_graph(
    inputs: &[MixInput],
    state: &[SlotState],
    settings: &MixSettings,
    control: SocketAddr,
) -> Result<MixGraph, MixError> {
    check_settings(settings, inputs)?;
    if state.len() != inputs.len() {
        return Err(MixError::TooManyRegions { regions: state.len(), slots: inputs.len() });
    }
    let (cw, ch, fps) = (settings.canvas.width, settings.canvas.height, settings.fps);
    let (bw, bh) = settings.input_box;
    let n = inputs.len();
    let mut g = String::new();
    let zmq = format!("zmq=bind_address=tcp\\\\://{}\\\\:{}", control.ip(), control.port());
    let colour = settings.canvas.color.hex();
    // On the source clock the background takes its times from the first
    // picture (a generated one would start at zero, far from the inputs'
    // times); on arrival it is generated and runs at the frame rate
    // whatever the inputs do. The control socket rides on it.
    let clocked = match settings.clock {
        MixClock::Source => inputs.iter().position(|i| i.kind.has_picture()),
        MixClock::Arrival => None,
    };
    if clocked.is_none() {
        let _ = write!(g, "color=c={colour}:s={cw}x{ch}:r={fps},{zmq}[bg];");
    }
    for (i, input) in inputs.iter().enumerate() {
        let mut outs: String = (0..n).map(|k| format!("[n{i}_{k}]")).collect();
        let mut copies = n;
        if clocked == Some(i) {
            outs.push_str("[bgsrc]");
            copies += 1;
        }
        if input.kind.has_picture() {
            let _ = write!(
                g,
                "[{i}:v]scale={bw}:{bh}:force_original_aspect_ratio=decrease,pad={bw}:{bh}:(ow-iw)/2:(oh-ih)/2,setsar=1,fps={fps},format=yuv420p,split={copies}{outs};"
            );
        } else {
            // Sound only: a black box stands in, never selected by a region.
            let _ = write!(g, "color=c=black:s={bw}x{bh}:r={fps},format=yuv420p,split={n}{outs};");
        }
    }
    if clocked.is_some() {
        // A corner of the picture painted over and blown up: a plain
        // canvas at the picture's times, for little work.
        let _ = write!(
            g,
            "[bgsrc]crop=16:16:0:0,drawbox=x=0:y=0:w=iw:h=ih:color={colour}:t=fill,scale={cw}:{ch}:flags=neighbor,setsar=1,{zmq}[bg];"
        );
    }
    let mut base = "bg".to_owned();
    for (k, slot) in state.iter().enumerate() {
        let ins: String = (0..n).map(|i| format!("[n{i}_{k}]")).collect();
        let _ = write!(
            g,
            "{ins}streamselect@s{k}=inputs={n}:map={},crop@c{k}=w={}:h={}:x={}:y={},scale@z{k}=w={}:h={}[v{k}];",
            slot.input, slot.crop.width, slot.crop.height, slot.crop.x, slot.crop.y, slot.size.0, slot.size.1
        );
        let next = format!("m{k}");
        let _ = write!(g, "[{base}][v{k}]overlay@o{k}=x={}:y={}:eof_action=repeat[{next}];", slot.at.0, slot.at.1);
        base = next;
    }
    // The watermark image, if any, is the input after the streams.
    let image_input = n;
    let mut image = None;
    if let Some(w) = &settings.watermark {
        let placed = layout(
            settings.canvas,
            &Template::Single { input: "_".into() },
            &[Input { id: "_".into(), kind: InputKind::Video, width: cw, height: ch }],
            Some(w),
            Limits::default(),
        )?
        .watermark;
        if let Some(w) = placed {
            if let Some(text) = &w.text {
                let text = crate::ffmpeg::escape_drawtext(text);
                let _ = write!(
                    g,
                    "[{base}]drawtext=text='{text}':expansion=none:x={}:y={}:fontsize={}:fontcolor=white@0.8[wm];",
                    w.x, w.y, w.size
                );
                base = "wm".to_owned();
            } else if let Some(path) = &w.image {
                image = Some(path.clone());
                let _ = write!(
                    g,
                    "[{image_input}:v]scale={}:-2,format=rgba[wmi];[{base}][wmi]overlay=x={}:y={}:{}[wm];",
                    w.size,
                    w.x,
                    w.y,
                    // On the source clock the image is one frame at zero,
                    // kept: a looped one would have to count up to the
                    // inputs' times.
                    if clocked.is_some() { "eof_action=repeat" } else { "shortest=1" }
                );
                base = "wm".to_owned();
            }
        }
    }
    let _ = write!(g, "[{base}]null[vout]");
    let sounds: Vec<usize> = (0..n).filter(|&i| inputs[i].kind.has_sound()).collect();
    if !sounds.is_empty() {
        g.push(';');
        for &i in &sounds {
            let _ = write!(g, "[{i}:a]aresample=44100:async=1,aformat=channel_layouts=stereo[a{i}];");
        }
        let labels: String = sounds.iter().map(|i| format!("[a{i}]")).collect();
        let _ = write!(g, "{labels}amix=inputs={}:duration=longest:dropout_transition=0[aout]", sounds.len());
    }
    Ok(MixGraph { graph: g, image, audio: !sounds.is_empty(), source_clock: clocked.is_some() })
}

/// `path` if nothing is there yet, else the first of `mix-1.flv`,
/// `mix-2.flv`, ... that is free: a restarted mix, or a new mix of the
/// same class, never writes over an earlier recording.
fn free_path(path: &Path) -> PathBuf {
    if !path.exists() {
        return path.to_owned();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    (1u32..)
        .map(|n| path.with_file_name(format!("{stem}-{n}{ext}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| path.to_owned())
}

/// The ffmpeg job of a mix: `inputs` composed as `state` says, commands
/// taken on `control`. Made again for each process of a mix: a playlist
/// already in the HLS directory is continued (after a discontinuity, since
/// times start again), and recordings go to a free name (`mix-1.flv`, ...)
/// when the configured one is taken.
pub fn mixer_job(
    inputs: &[MixInput],
    state: &[SlotState],
    settings: &MixSettings,
    control: SocketAddr,
    policy: &InputPolicy,
    read_timeout: Duration,
) -> Result<Job, MixError> {
    let mix = mixer_graph(inputs, state, settings, control)?;
    let micros = read_timeout.as_micros().clamp(100_000, 600_000_000).to_string();
    let mut a: Vec<String> =
        ["-hide_banner", "-loglevel", "warning", "-nostats", "-progress", "pipe:1", "-stats_period", "0.5"]
            .map(str::to_owned)
            .to_vec();
    let source_clock = mix.source_clock;
    if source_clock {
        a.push("-copyts".to_owned());
    }
    for input in inputs {
        let source = policy.check(&input.url, Purpose::Live).map_err(FfmpegError::from)?;
        // A short probe: inputs open one after the other, and every second
        // spent probing one is a second the ones opened before it lag.
        a.extend(["-analyzeduration", "1000000", "-probesize", "262144"].map(str::to_owned));
        a.extend(["-rw_timeout", &micros, "-protocol_whitelist", source.protocols(), "-i"].map(str::to_owned));
        a.push(source.arg);
    }
    if let Some(image) = &mix.image {
        let checked = policy.check(image, Purpose::Download).map_err(FfmpegError::from)?;
        if !source_clock {
            a.extend(["-loop", "1"].map(str::to_owned));
        }
        a.extend(["-protocol_whitelist", checked.protocols(), "-i"].map(str::to_owned));
        a.push(checked.arg);
    }
    let sounds = mix.audio;
    a.extend(["-filter_complex".to_owned(), mix.graph, "-map".to_owned(), "[vout]".to_owned()]);
    if sounds {
        a.extend(["-map", "[aout]", "-c:a", "aac", "-b:a", "128k", "-ar", "44100"].map(str::to_owned));
    }
    let gop = (settings.fps * 2).to_string();
    let kbps = format!("{}k", settings.video_kbps);
    a.extend(
        [
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
            "-g",
            &gop,
            "-keyint_min",
            &gop,
            "-sc_threshold",
            "0",
            "-b:v",
            &kbps,
            "-maxrate",
            &kbps,
            "-bufsize",
            &kbps,
            "-flags",
            "+global_header",
        ]
        .map(str::to_owned),
    );
    let mut slaves = Vec::new();
    let o = &settings.outputs;
    for target in &o.live {
        let checked = policy.check(target, Purpose::RelayTarget).map_err(FfmpegError::from)?;
        if checked.kind == crate::input::UrlKind::Local {
            return Err(MixError::Settings(format!(
                "{target:?}: live targets are network URLs; recordings go in flv or mp4"
            )));
        }
        if checked.arg.contains(['|', '[', ']']) {
            return Err(MixError::Settings(format!("{target:?}: a URL with characters ffmpeg's tee reads as syntax")));
        }
        let format = if checked.kind == crate::input::UrlKind::Srt { "mpegts" } else { "flv" };
        slaves.push(format!("[f={format}:onfail=ignore]{}", checked.arg));
    }
    if let Some(hls) = &o.hls {
        let dir = tee_path(policy, &hls.dir)?;
        let secs = hls.segment.as_secs();
        // (append_list marks a discontinuity where it starts appending.)
        let playlist = policy.check_output(&hls.dir.join("index.m3u8")).map_err(FfmpegError::from)?.arg;
        let restart = if Path::new(playlist.trim_start_matches("file:")).exists() { "+append_list" } else { "" };
        slaves.push(format!(
            "[f=hls:hls_time={secs}:hls_list_size=0:hls_flags=periodic_rekey+independent_segments+temp_file{restart}:hls_key_info_file={dir}/keyinfo:hls_segment_filename={dir}/seg%05d.ts]{dir}/index.m3u8"
        ));
    }
    if let Some(flv) = &o.flv {
        slaves.push(format!("[f=flv]{}", tee_path(policy, &free_path(flv))?));
    }
    if let Some(mp4) = &o.mp4 {
        let mp4 = tee_path(policy, &free_path(mp4))?;
        slaves.push(format!("[f=mp4:movflags=+frag_keyframe+empty_moov+default_base_moof]{mp4}"));
    }
    a.extend(["-f".to_owned(), "tee".to_owned(), slaves.join("|")]);
    Ok(Job { args: a, graph: String::new() })
}

/// One AES-128 key of a live HLS output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveKey {
    /// Its number (0, 1, ...): the file `key-<n>.key` in the HLS directory.
    pub index: u32,
    /// The key.
    pub key: [u8; 16],
    /// The IV.
    pub iv: [u8; 16],
}

/// Writes a new key and points ffmpeg's key-info file at it (replaced in
/// one rename, so ffmpeg never reads half of it).
fn write_key(dir: &Path, prefix: &str, index: u32) -> Result<LiveKey, MixError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| MixError::Io(std::io::Error::other(e.to_string())))?;
    let mut key = LiveKey { index, key: [0; 16], iv: [0; 16] };
    key.key.copy_from_slice(&bytes[..16]);
    key.iv.copy_from_slice(&bytes[16..]);
    let name = format!("key-{index}.key");
    std::fs::write(dir.join(&name), key.key)?;
    let iv: String = key.iv.iter().map(|b| format!("{b:02x}")).collect();
    let info = format!("{prefix}{name}\n{}\n{iv}\n", dir.join(&name).display());
    let temp = dir.join("keyinfo.tmp");
    std::fs::write(&temp, info)?;
    std::fs::rename(&temp, dir.join("keyinfo"))?;
    Ok(key)
}

#[derive(Debug)]
struct Rotation {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Rotation {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A running live mix.
#[derive(Debug)]
pub struct LiveMixer {
    job: LiveJob,
    /// The layout a new process starts with.
    shared: Arc<Mutex<Vec<SlotState>>>,
    inputs: Vec<MixInput>,
    settings: MixSettings,
    control: SocketAddr,
    dealer: Option<Dealer>,
    state: Vec<SlotState>,
    template: Template,
    keys: Arc<Mutex<Vec<LiveKey>>>,
    _rotation: Option<Rotation>,
}

fn input_layout(template: &Template, inputs: &[MixInput], settings: &MixSettings) -> Result<Layout, MixError> {
    let (bw, bh) = settings.input_box;
    let described: Vec<Input> =
        inputs.iter().map(|i| Input { id: i.id.clone(), kind: i.kind, width: bw, height: bh }).collect();
    Ok(layout(settings.canvas, template, &described, None, Limits::default())?)
}

impl LiveMixer {
    /// Starts mixing `inputs` with `template`.
    pub fn start(
        id: JobId,
        inputs: Vec<MixInput>,
        template: &Template,
        settings: MixSettings,
        policy: &InputPolicy,
        live: &LiveConfig,
        events: Sender<LiveEvent>,
    ) -> Result<LiveMixer, MixError> {
        check_settings(&settings, &inputs)?;
        let state = slots(&input_layout(template, &inputs, &settings)?, &inputs, &settings)?;
        // A free local port for the control socket.
        let control = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let first = mixer_job(&inputs, &state, &settings, control, policy, live.read_timeout)?;
        let keys = Arc::new(Mutex::new(Vec::new()));
        let rotation = match &settings.outputs.hls {
            Some(hls) => {
                let dir = policy.check_output(&hls.dir).map_err(FfmpegError::from)?.arg;
                let dir = PathBuf::from(dir.trim_start_matches("file:"));
                let first = write_key(&dir, &hls.key_uri_prefix, 0)?;
                keys.lock().unwrap_or_else(PoisonError::into_inner).push(first);
                (hls.rotate_every > 0).then(|| {
                    let stop = Arc::new(AtomicBool::new(false));
                    let every = hls.segment.saturating_mul(hls.rotate_every);
                    let (prefix, flag, keys) = (hls.key_uri_prefix.clone(), stop.clone(), keys.clone());
                    let thread = std::thread::Builder::new()
                        .name("hls-keys".into())
                        .spawn(move || rotate_keys(&dir, &prefix, every, &flag, &keys))
                        .ok();
                    Rotation { stop, thread }
                })
            }
            None => None,
        };
        // Each process starts with the layout in force then.
        let shared = Arc::new(Mutex::new(state.clone()));
        let make = {
            let (inputs, settings, policy, shared) = (inputs.clone(), settings.clone(), policy.clone(), shared.clone());
            let timeout = live.read_timeout;
            move |_run: u32| {
                let state = shared.lock().unwrap_or_else(PoisonError::into_inner).clone();
                mixer_job(&inputs, &state, &settings, control, &policy, timeout).unwrap_or_else(|_| first.clone())
            }
        };
        let job = LiveJob::spawn_with(id, make, live, events);
        Ok(LiveMixer {
            shared,
            job,
            inputs,
            settings,
            control,
            dealer: None,
            state,
            template: template.clone(),
            keys,
            _rotation: rotation,
        })
    }

    /// Switches the layout while the mix runs: the commands that differ
    /// go to ffmpeg together and apply before the same frame. Returns the
    /// number of filter commands sent. A template naming an input the mix
    /// does not have is refused, and the layout stays as it was.
    pub fn set_layout(&mut self, template: &Template) -> Result<usize, MixError> {
        let next = slots(&input_layout(template, &self.inputs, &self.settings)?, &self.inputs, &self.settings)?;
        let commands = switch_commands(&self.state, &next);
        if !commands.is_empty() {
            self.send(&commands)?;
        }
        // A restart of ffmpeg starts with this layout.
        *self.shared.lock().unwrap_or_else(PoisonError::into_inner) = next.clone();
        self.state = next;
        self.template = template.clone();
        Ok(commands.len())
    }

    fn send(&mut self, commands: &[String]) -> Result<(), MixError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let replies = loop {
            let attempt = match self.dealer.as_mut() {
                Some(dealer) => dealer.requests(commands),
                None => Dealer::connect(self.control, Duration::from_secs(2)).and_then(|mut d| {
                    let replies = d.requests(commands);
                    self.dealer = Some(d);
                    replies
                }),
            };
            match attempt {
                Ok(replies) => break replies,
                // ffmpeg still starting (the socket is bound once its inputs
                // open), or restarted: connect again.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    self.dealer = None;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(MixError::Control(e.to_string())),
            }
        };
        for (command, reply) in commands.iter().zip(&replies) {
            if !reply.starts_with("0 ") && reply != "0" {
                return Err(MixError::Control(format!("{command:?}: {reply}")));
            }
        }
        Ok(())
    }

    /// The template in force.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// The slots in force.
    pub fn state(&self) -> &[SlotState] {
        &self.state
    }

    /// The inputs.
    pub fn inputs(&self) -> &[MixInput] {
        &self.inputs
    }

    /// The HLS keys made so far, oldest first.
    pub fn keys(&self) -> Vec<LiveKey> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The ffmpeg job's health.
    pub fn health(&self) -> Health {
        self.job.health()
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.job.id()
    }

    /// Ends the mix's process and starts a new one with the layout in
    /// force (inputs opened again); the HLS playlist goes on, marked as a
    /// discontinuity, and recordings go to new files (`mix-1.flv`, ...).
    pub fn restart(&self) {
        self.job.restart();
    }

    /// Stops the mix (outputs closed properly); returns how long it took.
    pub fn stop(self) -> Duration {
        self.job.stop()
    }
}

fn rotate_keys(dir: &Path, prefix: &str, every: Duration, stop: &AtomicBool, keys: &Mutex<Vec<LiveKey>>) {
    let mut index = 1u32;
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            match write_key(dir, prefix, index) {
                Ok(key) => keys.lock().unwrap_or_else(PoisonError::into_inner).push(key),
                Err(_e) => {
                    #[cfg(feature = "tracing")]
                    tracing::warn!(error = %_e, "HLS key rotation failed; the current key stays");
                }
            }
            index = index.saturating_add(1);
            next += every;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
