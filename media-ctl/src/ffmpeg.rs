//! An ffmpeg backend: a render plan becomes ffmpeg arguments and a filter
//! graph, run as a child process with progress and cancellation; HLS
//! segments are then encrypted here (AES-128-CBC, PKCS#7), with the key
//! rotating every N segments. Also the relay command (RTMP in, out to
//! RTMP/FLV/HLS).
//!
//! Nothing reaches ffmpeg unchecked: every input and output URL passes the
//! [`InputPolicy`] allow-list (local files only inside its directory, as
//! `file:` and their canonical path), and every input and output is
//! preceded by `-protocol_whitelist` with exactly the protocols it needs,
//! so ffmpeg itself refuses anything else (a playlist naming `concat:` or
//! `file:` URLs, a redirect to another scheme).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};

use crate::input::{InputError, InputPolicy, Purpose};
use crate::layout::{Fit, InputKind, Placed};
use crate::plan::{GapFill, HlsKey, Output, PlannedInput, RenderPlan};

/// Why the backend failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FfmpegError {
    /// The ffmpeg program is not there.
    #[error("ffmpeg not found ({program}): {source}")]
    Missing {
        /// What was run.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// ffmpeg ran and failed.
    #[error("ffmpeg exited with {status}: {tail}")]
    Failed {
        /// Its exit status.
        status: String,
        /// The last lines it printed.
        tail: String,
    },
    /// Cancelled by the host.
    #[error("cancelled")]
    Cancelled,
    /// Reading or writing files.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A plan the backend cannot render (built by hand, not by `plan`).
    #[error("cannot render this plan: {0}")]
    BadPlan(&'static str),
    /// A URL or path the allow-list refuses.
    #[error("refused input: {0}")]
    Input(#[from] InputError),
    /// An HLS playlist naming a segment that is not a plain file name in
    /// its directory (`../x`, `/etc/x`, `a/b`).
    #[error("HLS playlist names an unsafe segment {0:?}")]
    UnsafeSegment(String),
}

/// Text for `drawtext=text='...'` inside a filter graph.
pub(crate) fn escape_drawtext(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'").replace(':', "\\:")
}

fn secs(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

/// `-protocol_whitelist <protocols> -i <url>`, for one checked input.
fn input_args(args: &mut Vec<String>, policy: &InputPolicy, url: &str) -> Result<(), FfmpegError> {
    let checked = policy.check(url, Purpose::Download)?;
    args.extend(["-protocol_whitelist".to_owned(), checked.protocols().to_owned(), "-i".to_owned(), checked.arg]);
    Ok(())
}

/// Refuses a hand-built plan whose numbers do not hold together (so that
/// nothing below can wrap or divide by zero).
fn check_plan(plan: &RenderPlan) -> Result<i64, FfmpegError> {
    if !(1..=60).contains(&plan.fps) || plan.frames == 0 {
        return Err(FfmpegError::BadPlan("no frames, or a frame rate outside 1..=60"));
    }
    let axis = plan.frames.checked_mul(1000).map(|ms| ms / u64::from(plan.fps));
    let axis = axis.and_then(|ms| i64::try_from(ms).ok()).ok_or(FfmpegError::BadPlan("the axis is too long"))?;
    for p in &plan.inputs {
        for piece in &p.pieces {
            let end = piece.at.checked_add(piece.duration);
            let inside = piece.at >= 0 && piece.skip >= 0 && piece.duration > 0 && end.is_some_and(|e| e <= axis);
            if !inside || piece.skip.checked_add(piece.duration).is_none() {
                return Err(FfmpegError::BadPlan("a piece outside the axis"));
            }
        }
        if p.first < 0 || p.last < p.first || p.last > axis {
            return Err(FfmpegError::BadPlan("an input shown outside the axis"));
        }
    }
    for l in &plan.layouts {
        if l.span.from < 0 || l.span.to < l.span.from || l.span.to > axis {
            return Err(FfmpegError::BadPlan("a layout outside the axis"));
        }
    }
    Ok(axis)
}

fn scale_for(p: &Placed) -> String {
    let (w, h) = (p.rect.width, p.rect.height);
    let crop = p.crop.map_or(String::new(), |c| format!("crop={}:{}:{}:{},", c.width, c.height, c.x, c.y));
    match p.fit {
        Fit::Stretch => format!("{crop}scale={w}:{h},setsar=1"),
        Fit::Cover => {
            format!("{crop}scale={w}:{h}:force_original_aspect_ratio=increase,crop={w}:{h},setsar=1")
        }
        _ => {
            format!("{crop}scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,setsar=1")
        }
    }
}

/// An ffmpeg invocation: its arguments (without the program), and the
/// filter graph they carry (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Arguments.
    pub args: Vec<String>,
    /// The `-filter_complex` graph.
    pub graph: String,
}

/// The filter graph and input arguments that render `plan`'s picture to
/// `[vout]` and its sound (if any input has sound) to `[aout]`. Every
/// input URL is checked against `policy` and carries its
/// `-protocol_whitelist`.
pub fn render_graph(plan: &RenderPlan, policy: &InputPolicy) -> Result<(Vec<String>, String, bool), FfmpegError> {
    let canvas = plan.layouts.first().map(|l| l.layout.canvas).ok_or(FfmpegError::BadPlan("no layout"))?;
    let axis = check_plan(plan)?;
    let fps = plan.fps;
    let dur = secs(axis);
    let mut args = Vec::new();
    let mut g = String::new();
    let mut next_input = 0usize;
    let mut audio_labels = Vec::new();
    let mut video_of: Vec<Option<String>> = Vec::new();
    for (pi, p) in plan.inputs.iter().enumerate() {
        let first_input = next_input;
        for piece in &p.pieces {
            if p.input.kind == InputKind::Image {
                // A still picture, repeated for as long as the piece lasts.
                let t = secs(piece.skip.saturating_add(piece.duration));
                args.extend(["-loop".to_owned(), "1".to_owned(), "-t".to_owned(), t]);
            }
            input_args(&mut args, policy, &piece.url)?;
            next_input += 1;
        }
        if let InputKind::Color(c) = p.input.kind {
            let (w, h) = (p.input.width.max(2) & !1, p.input.height.max(2) & !1);
            let _ = write!(g, "color=c={}:s={w}x{h}:r={fps}:d={dur}[v{pi}];", c.hex());
            video_of.push(Some(format!("v{pi}")));
            continue;
        }
        if p.pieces.is_empty() {
            video_of.push(None);
            continue;
        }
        video_of.push(p.input.kind.has_picture().then(|| format!("v{pi}")));
        if p.input.kind.has_picture() {
            video_chain(&mut g, p, pi, first_input, fps, plan.fill);
        }
        if p.input.kind.has_sound() {
            audio_chain(&mut g, p, pi, first_input);
            audio_labels.push(format!("[a{pi}]"));
        }
    }
    // How many overlays use each input, to split its stream.
    let mut uses: Vec<Vec<String>> = vec![Vec::new(); plan.inputs.len()];
    let mut overlays = Vec::new();
    for (li, l) in plan.layouts.iter().enumerate() {
        for (ri, region) in l.layout.regions.iter().enumerate() {
            let Some(pi) = plan.inputs.iter().position(|p| p.input.id == region.input) else { continue };
            if video_of[pi].is_none() || !region.kind.has_picture() {
                continue;
            }
            let p = &plan.inputs[pi];
            let from = l.span.from.max(p.first);
            let to = l.span.to.min(p.last);
            if to <= from {
                continue;
            }
            let label = format!("u{pi}_{}", uses[pi].len());
            uses[pi].push(label.clone());
            overlays.push((label, li, ri, from, to));
        }
    }
    for (pi, labels) in uses.iter().enumerate() {
        match labels.len() {
            0 => {
                if video_of[pi].is_some() {
                    let _ = write!(g, "[v{pi}]nullsink;");
                }
            }
            1 => {
                let _ = write!(g, "[v{pi}]null[{}];", labels[0]);
            }
            n => {
                let _ = write!(g, "[v{pi}]split={n}");
                for l in labels {
                    let _ = write!(g, "[{l}]");
                }
                g.push(';');
            }
        }
    }
    let _ = write!(
        g,
        "color=c={}:s={}x{}:r={fps}:d={dur},format=yuv420p[base0];",
        canvas.color.hex(),
        canvas.width,
        canvas.height
    );
    let mut base = "base0".to_owned();
    for (k, (label, li, ri, from, to)) in overlays.iter().enumerate() {
        let region = &plan.layouts[*li].layout.regions[*ri];
        let _ = write!(g, "[{label}]{}[s{k}];", scale_for(region));
        let next = format!("base{}", k + 1);
        let _ = write!(
            g,
            "[{base}][s{k}]overlay=x={}:y={}:eof_action=pass:enable='gte(t,{})*lt(t,{})'[{next}];",
            region.rect.x,
            region.rect.y,
            secs(*from),
            secs(*to)
        );
        base = next;
    }
    // The watermark of the first layout that has one.
    if let Some(w) = plan.layouts.iter().find_map(|l| l.layout.watermark.as_ref()) {
        let next = "basew".to_owned();
        if let Some(text) = &w.text {
            let text = escape_drawtext(text);
            let _ = write!(
                g,
                "[{base}]drawtext=text='{text}':expansion=none:x={}:y={}:fontsize={}:fontcolor=white[{next}];",
                w.x, w.y, w.size
            );
        } else if let Some(image) = &w.image {
            input_args(&mut args, policy, image)?;
            let _ =
                write!(g, "[{next_input}:v]scale={}:-2[wm];[{base}][wm]overlay=x={}:y={}[{next}];", w.size, w.x, w.y);
        }
        base = next;
    }
    let _ = write!(g, "[{base}]trim=end_frame={},setpts=PTS-STARTPTS[vout]", plan.frames);
    let has_audio = !audio_labels.is_empty();
    if has_audio {
        let _ = write!(
            g,
            ";{}amix=inputs={}:normalize=0,apad,atrim=duration={dur}[aout]",
            audio_labels.concat(),
            audio_labels.len()
        );
    }
    Ok((args, g, has_audio))
}

/// Time between a piece's end and the next piece's start (0 for the last).
fn gap_after(p: &PlannedInput, k: usize) -> i64 {
    let piece = &p.pieces[k];
    p.pieces.get(k + 1).map_or(0, |n| n.at.saturating_sub(piece.at.saturating_add(piece.duration)))
}

/// `[x0][x1]...` for a stream's pieces.
fn piece_labels(g: &mut String, prefix: char, pi: usize, n: usize) {
    for k in 0..n {
        let _ = write!(g, "[{prefix}{pi}_{k}]");
    }
}

fn video_chain(g: &mut String, p: &PlannedInput, pi: usize, first_input: usize, fps: u32, fill: GapFill) {
    let (w, h) = (p.input.width & !1, p.input.height & !1);
    for (k, piece) in p.pieces.iter().enumerate() {
        let gap = gap_after(p, k);
        let pad = match (gap > 0, fill) {
            (false, _) => String::new(),
            (true, GapFill::RepeatLastFrame) => format!(",tpad=stop_mode=clone:stop_duration={}", secs(gap)),
            (true, GapFill::Slate(c)) => format!(",tpad=stop_mode=add:stop_duration={}:color={}", secs(gap), c.hex()),
        };
        let _ = write!(
            g,
            "[{}:v]trim=start={}:duration={},setpts=PTS-STARTPTS,fps={fps},scale={w}:{h},setsar=1,format=yuv420p{pad}[p{pi}_{k}];",
            first_input + k,
            secs(piece.skip),
            secs(piece.duration)
        );
    }
    piece_labels(g, 'p', pi, p.pieces.len());
    let _ = write!(g, "concat=n={}:v=1:a=0,setpts=PTS-STARTPTS+{}/TB[v{pi}];", p.pieces.len(), secs(p.first));
}

fn audio_chain(g: &mut String, p: &PlannedInput, pi: usize, first_input: usize) {
    for (k, piece) in p.pieces.iter().enumerate() {
        let gap = gap_after(p, k);
        let pad = if gap > 0 { format!(",apad=pad_dur={}", secs(gap)) } else { String::new() };
        let _ = write!(
            g,
            "[{}:a]atrim=start={}:duration={},asetpts=PTS-STARTPTS,aresample=48000,aformat=channel_layouts=stereo{pad}[q{pi}_{k}];",
            first_input + k,
            secs(piece.skip),
            secs(piece.duration)
        );
    }
    piece_labels(g, 'q', pi, p.pieces.len());
    let _ = write!(g, "concat=n={}:v=0:a=1,adelay={}:all=1[a{pi}];", p.pieces.len(), p.first);
}

/// The ffmpeg invocation that writes `output` of `plan` to `path` (for HLS,
/// `path` is a directory: `index.m3u8` and `seg%05d.ts`, unencrypted;
/// [`encrypt_hls`] encrypts them afterwards). Inputs and `path` are
/// checked against `policy`: `path` must lie in its local directory.
pub fn render_job(plan: &RenderPlan, output: &Output, path: &Path, policy: &InputPolicy) -> Result<Job, FfmpegError> {
    let (mut args, graph, has_audio) = render_graph(plan, policy)?;
    let out = policy.check_output(path)?;
    let mut a = vec!["-hide_banner".to_owned(), "-nostdin".to_owned(), "-y".to_owned()];
    a.append(&mut args);
    a.extend(["-filter_complex".to_owned(), graph.clone(), "-map".to_owned(), "[vout]".to_owned()]);
    if has_audio {
        a.extend([
            "-map".to_owned(),
            "[aout]".to_owned(),
            "-c:a".to_owned(),
            "aac".to_owned(),
            "-b:a".to_owned(),
            "64k".to_owned(),
        ]);
    }
    a.extend(
        [
            "-frames:v",
            &plan.frames.to_string(),
            "-r",
            &plan.fps.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-g",
            &plan.fps.to_string(),
            "-progress",
            "pipe:1",
            "-nostats",
        ]
        .map(str::to_owned),
    );
    match output {
        Output::Mp4 => a.extend(["-movflags".to_owned(), "+faststart".to_owned(), "-f".to_owned(), "mp4".to_owned()]),
        Output::Flv => a.extend(["-f".to_owned(), "flv".to_owned()]),
        Output::Hls { segment_seconds, .. } => {
            a.extend(
                [
                    "-f",
                    "hls",
                    "-hls_time",
                    &segment_seconds.to_string(),
                    "-hls_playlist_type",
                    "vod",
                    "-hls_segment_filename",
                ]
                .map(str::to_owned),
            );
            // `out` is the canonical directory: the names below are ours.
            a.push(format!("{}/seg%05d.ts", out.arg));
        }
    }
    let target = match output {
        Output::Hls { .. } => format!("{}/index.m3u8", out.arg),
        _ => out.arg,
    };
    a.extend(["-protocol_whitelist".to_owned(), "file".to_owned(), target]);
    Ok(Job { args: a, graph })
}

/// The relay: a live stream in (`rtmp`, `rtmps` or `srt`), copied out to
/// each target (live URLs, `.flv` files, or `.m3u8` playlists for HLS in
/// the policy's local directory). Each URL is checked against `policy` and
/// carries its `-protocol_whitelist`.
pub fn relay_job(input: &str, targets: &[String], policy: &InputPolicy) -> Result<Job, FfmpegError> {
    let source = policy.check(input, Purpose::Live)?;
    let mut a: Vec<String> =
        ["-hide_banner", "-nostdin", "-protocol_whitelist", source.protocols(), "-i"].map(str::to_owned).to_vec();
    a.push(source.arg);
    relay_outputs(&mut a, targets, policy)?;
    Ok(Job { args: a, graph: String::new() })
}

/// Copies of the input to each target: HLS for a local `.m3u8`, MPEG-TS
/// for SRT, FLV for RTMP and local files.
fn relay_outputs(a: &mut Vec<String>, targets: &[String], policy: &InputPolicy) -> Result<(), FfmpegError> {
    for t in targets {
        let target = policy.check(t, Purpose::RelayTarget)?;
        a.extend(["-map", "0", "-c", "copy"].map(str::to_owned));
        let format: &[&str] = match target.kind {
            crate::input::UrlKind::Local if t.ends_with(".m3u8") => &["-f", "hls", "-hls_time", "4"],
            crate::input::UrlKind::Srt => &["-f", "mpegts"],
            _ => &["-f", "flv"],
        };
        a.extend(format.iter().map(|s| (*s).to_owned()));
        a.extend(["-protocol_whitelist".to_owned(), target.protocols().to_owned(), target.arg]);
    }
    Ok(())
}

/// The relay as a live job (for [`crate::live`]): [`relay_job`]'s
/// arguments, with a read timeout on the input (`-rw_timeout`, so that a
/// publisher that vanishes ends the job instead of stalling it), progress
/// on stdout twice a second, and stdin left open: a live job is stopped
/// with `q`, which lets ffmpeg close its outputs properly.
pub fn live_relay_job(
    input: &str,
    targets: &[String],
    policy: &InputPolicy,
    read_timeout: std::time::Duration,
) -> Result<Job, FfmpegError> {
    let source = policy.check(input, Purpose::Live)?;
    let mut a = live_input_args(&source, read_timeout);
    relay_outputs(&mut a, targets, policy)?;
    Ok(Job { args: a, graph: String::new() })
}

/// A live stream recorded as FLV segments of `segment` length in `dir`
/// (inside the policy's local directory), named
/// `<stream>-<tag>-<n>.flv` (`n` from 00000): give each process its own
/// `tag` (a restart's start time) so that it never writes over an earlier
/// file. Each finished segment is listed in `<stream>-<tag>.csv` (in
/// `dir`), a line `name,start,end` with times in seconds from the
/// process's output time 0.
pub fn live_record_job(
    input: &str,
    stream: &str,
    dir: &Path,
    segment: std::time::Duration,
    tag: &str,
    policy: &InputPolicy,
    read_timeout: std::time::Duration,
) -> Result<Job, FfmpegError> {
    crate::input::check_name("recording tag", tag)?;
    crate::input::check_name("stream id", stream)?;
    let source = policy.check(input, Purpose::Live)?;
    let out = policy.check_output(dir)?;
    let mut a = live_input_args(&source, read_timeout);
    let seconds = segment.as_secs().clamp(1, 3_600).to_string();
    a.extend(
        ["-map", "0", "-c", "copy", "-f", "segment", "-segment_format", "flv", "-segment_time", &seconds]
            .map(str::to_owned),
    );
    a.extend(["-reset_timestamps", "1"].map(str::to_owned));
    a.extend(["-segment_list_type", "csv", "-segment_list_flags", "+live", "-segment_list"].map(str::to_owned));
    a.push(format!("{}/{stream}-{tag}.csv", out.arg.trim_start_matches("file:")));
    a.extend(["-protocol_whitelist".to_owned(), "file".to_owned()]);
    a.push(format!("{}/{stream}-{tag}-%05d.flv", out.arg));
    Ok(Job { args: a, graph: String::new() })
}

fn live_input_args(source: &crate::input::CheckedUrl, read_timeout: std::time::Duration) -> Vec<String> {
    let micros = read_timeout.as_micros().clamp(100_000, 600_000_000).to_string();
    let mut a: Vec<String> =
        ["-hide_banner", "-loglevel", "warning", "-nostats", "-progress", "pipe:1"].map(str::to_owned).to_vec();
    a.extend(
        ["-stats_period", "0.5", "-rw_timeout", &micros, "-protocol_whitelist", source.protocols(), "-i"]
            .map(str::to_owned),
    );
    a.push(source.arg.clone());
    a
}

/// Keeps ffmpeg's last 8 lines of stderr (each cut at 512 bytes) on a
/// thread of its own, for the error when it fails.
pub(crate) fn stderr_tail(stderr: std::process::ChildStderr) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut lines: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.len() == 8 {
                lines.pop_front();
            }
            lines.push_back(crate::input::excerpt(&line, 512));
        }
        lines.into_iter().collect::<Vec<_>>().join(" | ")
    })
}

/// Progress reports while ffmpeg runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Output time reached, in ms.
    pub out_ms: i64,
    /// Frames written.
    pub frames: u64,
}

/// Runs `job` with `program` (normally `ffmpeg`), reporting progress and
/// stopping (killing ffmpeg) when `cancel` is set.
pub fn run(
    program: &str,
    job: &Job,
    cancel: &Arc<AtomicBool>,
    mut progress: impl FnMut(Progress),
) -> Result<(), FfmpegError> {
    #[cfg(feature = "tracing")]
    tracing::info!(program, args = job.args.len(), "ffmpeg starting");
    let mut child: Child = Command::new(program)
        .args(&job.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FfmpegError::Missing { program: program.to_owned(), source })?;
    let tail = child.stderr.take().map(stderr_tail);
    let stdout = child.stdout.take();
    let mut current = Progress { out_ms: 0, frames: 0 };
    for line in stdout.into_iter().flat_map(|out| BufReader::new(out).lines().map_while(Result::ok)) {
        if cancel.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(FfmpegError::Cancelled);
        }
        if let Some(v) = line.strip_prefix("out_time_us=") {
            current.out_ms = v.trim().parse::<i64>().unwrap_or(0) / 1000;
        } else if let Some(v) = line.strip_prefix("frame=") {
            current.frames = v.trim().parse().unwrap_or(current.frames);
        } else if line.starts_with("progress=") {
            progress(current);
        }
    }
    let status = child.wait()?;
    let tail = tail.and_then(|t| t.join().ok()).unwrap_or_default();
    if cancel.load(Ordering::Relaxed) {
        return Err(FfmpegError::Cancelled);
    }
    if !status.success() {
        #[cfg(feature = "tracing")]
        tracing::warn!(%status, %tail, "ffmpeg failed");
        return Err(FfmpegError::Failed { status: status.to_string(), tail });
    }
    #[cfg(feature = "tracing")]
    tracing::info!(frames = current.frames, out_ms = current.out_ms, "ffmpeg finished");
    Ok(())
}

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;

/// Encrypts an HLS rendition in `dir` in place: each segment with
/// AES-128-CBC (PKCS#7), the key changing every `rotate_every` segments
/// through `keys` (the last key stays once they run out), and the playlist
/// rewritten with an `#EXT-X-KEY` line wherever the key changes.
///
/// A playlist line that is not a plain file name (a path, `..`) is an
/// [`FfmpegError::UnsafeSegment`], and nothing is written past it.
pub fn encrypt_hls(dir: &Path, keys: &[HlsKey], rotate_every: u32) -> Result<Vec<PathBuf>, FfmpegError> {
    if keys.is_empty() {
        return Err(FfmpegError::BadPlan("HLS encryption needs at least one key"));
    }
    let playlist = dir.join("index.m3u8");
    let text = std::fs::read_to_string(&playlist)?;
    let mut out = String::new();
    let mut segment = 0u32;
    let mut current_key: Option<usize> = None;
    let mut written = Vec::new();
    let key_for = |segment: u32| {
        if keys.len() > 1 { ((segment / rotate_every.max(1)) as usize).min(keys.len() - 1) } else { 0 }
    };
    for line in text.lines() {
        if line.starts_with("#EXTINF") {
            // The key line goes before the segment's tags.
            let k = key_for(segment);
            if current_key != Some(k) {
                let iv: String = keys[k].iv.iter().map(|b| format!("{b:02x}")).collect();
                let _ = writeln!(out, "#EXT-X-KEY:METHOD=AES-128,URI=\"{}\",IV=0x{iv}", keys[k].uri);
                current_key = Some(k);
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let key = &keys[key_for(segment)];
            let name = line.trim();
            let plain_name =
                !matches!(name, "." | "..") && !name.contains(['/', '\\', ':']) && !name.chars().any(char::is_control);
            if !plain_name {
                return Err(FfmpegError::UnsafeSegment(crate::input::excerpt(name, 256)));
            }
            let path = dir.join(name);
            let plain = std::fs::read(&path)?;
            let cipher = Aes128CbcEnc::new(&key.key.into(), &key.iv.into()).encrypt_padded_vec_mut::<Pkcs7>(&plain);
            std::fs::write(&path, cipher)?;
            written.push(path);
            segment = segment.saturating_add(1);
        }
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(&playlist, out)?;
    Ok(written)
}
