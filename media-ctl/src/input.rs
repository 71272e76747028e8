//! Input hardening: what may reach ffmpeg, and bounds on what callers and
//! providers send.
//!
//! * URLs go through an allow-list before anything reaches ffmpeg:
//!   `http`/`https` for downloads, `rtmp`/`rtmps`/`srt` for live streams,
//!   and local paths only inside one configured directory (canonicalised,
//!   so neither `..` nor a symbolic link leads out of it). Every other
//!   scheme ffmpeg knows is refused: `concat:`, `subfile,`, `data:`,
//!   `pipe:`, raw `tcp:`/`udp:`, `async:`, `cache:`, `crypto:`, `tee:`,
//!   `ftp:`, `unix:` and the rest. A refusal is an [`InputError`] naming
//!   the rule.
//! * A checked URL carries exactly the ffmpeg protocols it needs, for the
//!   `-protocol_whitelist` the [`ffmpeg`](crate::ffmpeg) module passes with
//!   every input and output.
//! * Identifiers (streams, files, users) are 1 to [`MAX_ID_BYTES`] bytes
//!   without control characters; URLs at most [`MAX_URL_BYTES`].
//!
//! [`check_url`] is the syntactic half (no file system), used where URLs
//! enter (recording callbacks); [`InputPolicy`] adds the local directory
//! and is used where ffmpeg arguments are built.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// The longest URL or path accepted (4 KiB).
pub const MAX_URL_BYTES: usize = 4096;

/// The longest stream or user id accepted.
pub const MAX_ID_BYTES: usize = 256;

/// The longest file id accepted (file ids are often paths).
pub const MAX_FILE_ID_BYTES: usize = 512;

/// What a URL is for: each use has its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Purpose {
    /// A recording or image to read: `http`, `https`, or a local file.
    Download,
    /// A live stream to pull or push: `rtmp`, `rtmps`, `srt`.
    Live,
    /// A file ffmpeg writes: a local path.
    Output,
    /// A relay target: a live URL or a local file.
    RelayTarget,
}

impl Purpose {
    fn allowed(self) -> &'static str {
        match self {
            Purpose::Download => "http, https, local paths",
            Purpose::Live => "rtmp, rtmps, srt",
            Purpose::Output => "local paths",
            Purpose::RelayTarget => "rtmp, rtmps, srt, local paths",
        }
    }

    fn admits(self, kind: UrlKind) -> bool {
        match self {
            Purpose::Download => matches!(kind, UrlKind::Http | UrlKind::Https | UrlKind::Local),
            Purpose::Live => matches!(kind, UrlKind::Rtmp | UrlKind::Rtmps | UrlKind::Srt),
            Purpose::Output => kind == UrlKind::Local,
            Purpose::RelayTarget => matches!(kind, UrlKind::Rtmp | UrlKind::Rtmps | UrlKind::Srt | UrlKind::Local),
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Purpose::Download => "downloads",
            Purpose::Live => "live streams",
            Purpose::Output => "outputs",
            Purpose::RelayTarget => "relay targets",
        })
    }
}

/// The kind of an accepted URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UrlKind {
    /// `http://host/...`.
    Http,
    /// `https://host/...`.
    Https,
    /// `rtmp://host/...`.
    Rtmp,
    /// `rtmps://host/...`.
    Rtmps,
    /// `srt://host:port...`.
    Srt,
    /// A local path: absolute, relative (to the local directory), or
    /// `file:`/`file://` followed by a path.
    Local,
}

impl UrlKind {
    /// The ffmpeg protocols a URL of this kind needs, for
    /// `-protocol_whitelist`.
    pub fn protocols(self) -> &'static str {
        match self {
            UrlKind::Http => "http,tcp",
            UrlKind::Https => "https,tls,tcp",
            UrlKind::Rtmp => "rtmp,tcp",
            UrlKind::Rtmps => "rtmps,tls,tcp",
            UrlKind::Srt => "srt",
            UrlKind::Local => "file",
        }
    }
}

/// Why an identifier or a URL is refused. The message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// An empty identifier or URL.
    #[error("length rule: {what} is empty")]
    Empty {
        /// What was checked.
        what: &'static str,
    },
    /// Longer than its bound.
    #[error("length rule: {what} is {len} bytes, more than {max}")]
    TooLong {
        /// What was checked.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A NUL or another control character (newlines and tabs included).
    #[error("character rule: {what} has a control character at byte {at}")]
    ControlCharacter {
        /// What was checked.
        what: &'static str,
        /// Where.
        at: usize,
    },
    /// A character a file name made from this id may not hold (a path
    /// separator, `%` that ffmpeg would expand, a leading dot).
    #[error("character rule: {what} has {found:?} at byte {at}; a name takes {allowed}")]
    NotAName {
        /// What was checked.
        what: &'static str,
        /// The character.
        found: char,
        /// Where.
        at: usize,
        /// What a name may hold.
        allowed: &'static str,
    },
    /// A scheme (ffmpeg protocol) not on the allow-list for this use.
    #[error("scheme rule: {scheme:?} is not allowed for {purpose} (allowed: {allowed})")]
    Scheme {
        /// The scheme, lowercased (at most 32 bytes of it).
        scheme: String,
        /// What the URL was for.
        purpose: Purpose,
        /// What would have been accepted.
        allowed: &'static str,
    },
    /// A network URL without a host (`http:///x`, `rtmp:x`).
    #[error("host rule: {url:?} has no host")]
    NoHost {
        /// The URL (at most 256 bytes of it).
        url: String,
    },
    /// A local path, but no local directory is configured.
    #[error("local-file rule: no local directory is configured, so the local path {path:?} is refused")]
    NoLocalDirectory {
        /// The path (at most 256 bytes of it).
        path: String,
    },
    /// A local path that resolves outside the local directory (through
    /// `..` or a symbolic link).
    #[error("local-file rule: {path:?} resolves to {resolved:?}, outside {dir:?}")]
    OutsideDirectory {
        /// The path as given (at most 256 bytes of it).
        path: String,
        /// Where it leads.
        resolved: String,
        /// The local directory.
        dir: String,
    },
    /// A local path whose directory does not exist or cannot be read.
    #[error("local-file rule: {path:?} cannot be resolved: {reason}")]
    Unresolvable {
        /// The path (at most 256 bytes of it).
        path: String,
        /// Why.
        reason: String,
    },
    /// The local directory itself is unusable.
    #[error("the local directory {dir:?} cannot be used: {reason}")]
    BadDirectory {
        /// The directory.
        dir: String,
        /// Why.
        reason: String,
    },
}

/// At most `max` bytes of `s`, cut at a character boundary, for error
/// messages about hostile input.
pub(crate) fn excerpt(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), InputError> {
    if s.is_empty() {
        return Err(InputError::Empty { what });
    }
    if s.len() > max {
        return Err(InputError::TooLong { what, len: s.len(), max });
    }
    if let Some((at, _)) = s.char_indices().find(|(_, c)| c.is_control()) {
        return Err(InputError::ControlCharacter { what, at });
    }
    Ok(())
}

/// Checks a stream or user id: 1 to [`MAX_ID_BYTES`] bytes, no control
/// characters.
pub fn check_id(what: &'static str, id: &str) -> Result<(), InputError> {
    check_text(what, id, MAX_ID_BYTES)
}

/// Checks a file id: 1 to [`MAX_FILE_ID_BYTES`] bytes, no control
/// characters.
pub fn check_file_id(what: &'static str, id: &str) -> Result<(), InputError> {
    check_text(what, id, MAX_FILE_ID_BYTES)
}

/// Checks an id that becomes part of a file name (a stream recorded to
/// `<stream>-<time>.flv`): 1 to 128 bytes of ASCII letters, digits, `_`,
/// `-` and `.`, not starting with `.`.
pub fn check_name(what: &'static str, id: &str) -> Result<(), InputError> {
    const ALLOWED: &str = "ASCII letters, digits, '_', '-' and '.', not a leading '.'";
    check_text(what, id, 128)?;
    let bad = id
        .char_indices()
        .find(|&(at, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-') || (c == '.' && at > 0)));
    match bad {
        Some((at, found)) => Err(InputError::NotAName { what, found, at, allowed: ALLOWED }),
        None => Ok(()),
    }
}

/// Splits `scheme:` off a URL the way ffmpeg would see a protocol prefix:
/// a letter, then letters, digits, `+`, `-`, `.` or `,` (ffmpeg's
/// `subfile,,...:` form), then `:`. Anything else is a path.
fn scheme_of(url: &str) -> Option<&str> {
    let colon = url.find(':')?;
    let scheme = &url[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | ',')))
        .then_some(scheme)
}

/// Checks a URL's syntax against the allow-list for `purpose`, without
/// touching the file system: length, control characters, scheme, host.
/// A local path passes here; [`InputPolicy`] decides where it may lead.
pub fn check_url(url: &str, purpose: Purpose) -> Result<UrlKind, InputError> {
    check_text("URL", url, MAX_URL_BYTES)?;
    let kind = match scheme_of(url) {
        None => UrlKind::Local,
        Some(scheme) => {
            let lower = scheme.to_ascii_lowercase();
            let kind = match lower.as_str() {
                "http" => UrlKind::Http,
                "https" => UrlKind::Https,
                "rtmp" => UrlKind::Rtmp,
                "rtmps" => UrlKind::Rtmps,
                "srt" => UrlKind::Srt,
                "file" => UrlKind::Local,
                _ => {
                    return Err(InputError::Scheme {
                        scheme: excerpt(&lower, 32),
                        purpose,
                        allowed: purpose.allowed(),
                    });
                }
            };
            if kind != UrlKind::Local {
                let rest = &url[scheme.len() + 1..];
                let host = rest.strip_prefix("//").map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
                match host {
                    Some(h) if !h.is_empty() && !h.contains(char::is_whitespace) => {}
                    _ => return Err(InputError::NoHost { url: excerpt(url, 256) }),
                }
            } else if let Some(rest) = url[scheme.len() + 1..].strip_prefix("//")
                && !rest.starts_with('/')
            {
                // `file://host/path`: a remote host is not a local file.
                return Err(InputError::NoHost { url: excerpt(url, 256) });
            }
            kind
        }
    };
    if !purpose.admits(kind) {
        let scheme = if kind == UrlKind::Local { "local path".to_owned() } else { format!("{kind:?}").to_lowercase() };
        return Err(InputError::Scheme { scheme, purpose, allowed: purpose.allowed() });
    }
    Ok(kind)
}

/// The path part of a local URL (`file:`, `file://` and nothing stripped).
fn local_path(url: &str) -> &str {
    match scheme_of(url) {
        Some(scheme) => {
            let rest = &url[scheme.len() + 1..];
            rest.strip_prefix("//").unwrap_or(rest)
        }
        None => url,
    }
}

/// A URL that passed the allow-list: what to give ffmpeg, and the
/// protocols it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    /// The argument for ffmpeg: network URLs as given, local files as
    /// `file:` and their canonical absolute path (so no part of a file
    /// name is ever read as a protocol).
    pub arg: String,
    /// Its kind.
    pub kind: UrlKind,
}

impl CheckedUrl {
    /// The ffmpeg protocols it needs (for `-protocol_whitelist`).
    pub fn protocols(&self) -> &'static str {
        self.kind.protocols()
    }
}

/// Where local files may be read and written, and the URL allow-lists.
///
/// Without a local directory ([`InputPolicy::network_only`]) every local
/// path is refused. With one, a local path (absolute, or relative to the
/// directory) is canonicalised, symbolic links and `..` resolved, and
/// must stay inside the directory. A path that does not exist yet (an
/// output) needs an existing parent, which is canonicalised the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPolicy {
    dir: Option<PathBuf>,
}

impl InputPolicy {
    /// Network URLs only: no local file is read or written.
    pub fn network_only() -> Self {
        InputPolicy { dir: None }
    }

    /// Local files inside `dir` (which must exist and be a directory)
    /// besides network URLs.
    pub fn with_local_dir(dir: impl AsRef<Path>) -> Result<Self, InputError> {
        let dir = dir.as_ref();
        let bad = |reason: String| InputError::BadDirectory { dir: excerpt(&dir.display().to_string(), 256), reason };
        let canonical = dir.canonicalize().map_err(|e| bad(e.to_string()))?;
        if !canonical.is_dir() {
            return Err(bad("not a directory".to_owned()));
        }
        Ok(InputPolicy { dir: Some(canonical) })
    }

    /// The canonical local directory, if any.
    pub fn local_dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Checks `url` for `purpose`, resolving local paths inside the local
    /// directory.
    pub fn check(&self, url: &str, purpose: Purpose) -> Result<CheckedUrl, InputError> {
        let kind = check_url(url, purpose)?;
        if kind != UrlKind::Local {
            return Ok(CheckedUrl { arg: url.to_owned(), kind });
        }
        let path = self.resolve(Path::new(local_path(url)), url)?;
        Ok(CheckedUrl { arg: format!("file:{}", path.display()), kind })
    }

    /// Checks a local path ffmpeg writes (an output file or directory).
    pub fn check_output(&self, path: &Path) -> Result<CheckedUrl, InputError> {
        let text = path.to_str().ok_or_else(|| InputError::Unresolvable {
            path: excerpt(&path.display().to_string(), 256),
            reason: "not valid UTF-8".to_owned(),
        })?;
        check_text("path", text, MAX_URL_BYTES)?;
        // An output is a path, never a URL: a scheme here is refused too.
        if let Some(scheme) = scheme_of(text) {
            return Err(InputError::Scheme {
                scheme: excerpt(&scheme.to_ascii_lowercase(), 32),
                purpose: Purpose::Output,
                allowed: Purpose::Output.allowed(),
            });
        }
        let resolved = self.resolve(path, text)?;
        Ok(CheckedUrl { arg: format!("file:{}", resolved.display()), kind: UrlKind::Local })
    }

    /// The canonical form of a local path, inside the directory.
    fn resolve(&self, path: &Path, shown: &str) -> Result<PathBuf, InputError> {
        let dir = self.dir.as_ref().ok_or_else(|| InputError::NoLocalDirectory { path: excerpt(shown, 256) })?;
        if path.as_os_str().is_empty() {
            return Err(InputError::Empty { what: "local path" });
        }
        let joined = if path.is_absolute() { path.to_owned() } else { dir.join(path) };
        let unresolvable = |reason: String| InputError::Unresolvable { path: excerpt(shown, 256), reason };
        let canonical = match joined.canonicalize() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Not there yet (an output, or a file ffmpeg will report
                // missing): its parent must exist, and its name be a name.
                let name = match joined.components().next_back() {
                    Some(Component::Normal(name)) => name.to_owned(),
                    _ => return Err(unresolvable("no file name".to_owned())),
                };
                let parent = joined.parent().ok_or_else(|| unresolvable("no parent directory".to_owned()))?;
                parent.canonicalize().map_err(|e| unresolvable(e.to_string()))?.join(name)
            }
            Err(e) => return Err(unresolvable(e.to_string())),
        };
        if !canonical.starts_with(dir) {
            return Err(InputError::OutsideDirectory {
                path: excerpt(shown, 256),
                resolved: excerpt(&canonical.display().to_string(), 256),
                dir: dir.display().to_string(),
            });
        }
        Ok(canonical)
    }
}
