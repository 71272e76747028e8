//! Callback authentication, both ways: verifying the callbacks media
//! providers send, and signing the callbacks Roomkit sends to its host.
//!
//! * [`TencentSign`]: Tencent Cloud live callbacks carry `t` (a Unix expiry
//!   time) and `sign = md5(key + t)` in lowercase hex.
//! * [`HmacAuth`]: HMAC-SHA256 over `"{timestamp}\n{nonce}\n{body}"`, with a
//!   replay window: a timestamp more than `window` away from now is
//!   refused, and so is a nonce seen within the window (a bounded cache).
//! * [`TrtcSign`]: Tencent TRTC callbacks carry `Sign`, the base64
//!   HMAC-SHA256 of the raw body under the callback key.
//! * [`AgoraSign`]: Agora notifications carry `Agora-Signature`, the hex
//!   HMAC-SHA1 of the raw body under the notification secret, and
//!   `Agora-Signature-V2`, the hex HMAC-SHA256.
//! * [`LiveKitWebhookAuth`]: LiveKit webhooks carry in `Authorization` a
//!   JWT (HS256, under the API secret, issued by the API key) whose
//!   `sha256` claim is the base64 SHA-256 of the raw body.
//!
//! Signatures are compared in constant time. The provider schemes (TRTC,
//! Agora) sign the body alone, with no time or nonce: a replayed
//! callback passes them, and it is the ingestion's idempotence
//! ([`crate::ingest::Ingested::Duplicate`]) that makes a replay harmless.

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::Value;
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a callback's signature does not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The signature does not match: altered, or signed with another key.
    #[error("callback signature does not match")]
    BadSignature,
    /// A signature that is not lowercase hex of the right length.
    #[error("callback signature is malformed")]
    MalformedSignature,
    /// Past its expiry (Tencent) or outside the replay window (HMAC).
    #[error("callback time {at} is outside the accepted window around {now}")]
    Expired {
        /// The callback's time.
        at: u64,
        /// The time of the check.
        now: u64,
    },
    /// A nonce already used within the window.
    #[error("callback nonce was already used")]
    Replayed,
    /// A nonce that is empty or longer than 64 bytes.
    #[error("callback nonce must be 1 to 64 bytes")]
    BadNonce,
    /// The nonce cache is full of nonces still inside the window: the
    /// callback is refused rather than the cache growing without bound.
    #[error("too many callbacks inside the replay window ({max})")]
    NonceCacheFull {
        /// The cache's size.
        max: usize,
    },
    /// A webhook token that is not a well-formed JWT.
    #[error("webhook token is malformed: {0}")]
    MalformedToken(&'static str),
    /// A webhook token signed with another algorithm than HS256 (`none`
    /// included).
    #[error("webhook token algorithm {0:?} is not HS256")]
    UnsupportedAlgorithm(String),
    /// A webhook token issued by another API key.
    #[error("webhook token was issued by another API key")]
    WrongIssuer,
    /// A validly signed webhook token for another body: its `sha256`
    /// claim is not the body's hash.
    #[error("webhook body does not match the token's sha256 claim")]
    BodyMismatch,
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

fn from_hex(s: &str, out: &mut [u8]) -> Result<(), AuthError> {
    let s = s.as_bytes();
    if s.len() != out.len() * 2 {
        return Err(AuthError::MalformedSignature);
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        // Lowercase only: the signature text has one form, so any change to
        // it, case included, is refused.
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(AuthError::MalformedSignature),
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = nibble(s[2 * i])? << 4 | nibble(s[2 * i + 1])?;
    }
    Ok(())
}

/// Tencent-style `sign = md5(key + t)`.
#[derive(Clone)]
pub struct TencentSign {
    key: Vec<u8>,
    max_ahead: u64,
}

impl std::fmt::Debug for TencentSign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TencentSign").field("max_ahead", &self.max_ahead).finish_non_exhaustive()
    }
}

impl TencentSign {
    /// Verifies with `key`; an expiry more than `max_ahead` seconds in the
    /// future is refused too (a signature meant to last forever).
    pub fn new(key: impl Into<Vec<u8>>, max_ahead: u64) -> Self {
        TencentSign { key: key.into(), max_ahead }
    }

    fn digest(&self, t: u64) -> [u8; 16] {
        let mut h = Md5::new();
        h.update(&self.key);
        h.update(t.to_string().as_bytes());
        h.finalize().into()
    }

    /// The `sign` for expiry `t`.
    pub fn sign(&self, t: u64) -> String {
        to_hex(&self.digest(t))
    }

    /// Checks `sign` for expiry `t` at `now` (Unix seconds).
    pub fn verify(&self, t: u64, sign: &str, now: u64) -> Result<(), AuthError> {
        let mut given = [0u8; 16];
        from_hex(sign, &mut given)?;
        if !bool::from(self.digest(t).ct_eq(&given)) {
            return Err(AuthError::BadSignature);
        }
        if now > t || t - now > self.max_ahead {
            return Err(AuthError::Expired { at: t, now });
        }
        Ok(())
    }
}

/// The headers of an HMAC-signed callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// Unix seconds when it was signed.
    pub timestamp: u64,
    /// A value never reused within the window.
    pub nonce: String,
    /// Lowercase hex HMAC-SHA256.
    pub signature: String,
}

/// HMAC-SHA256 callbacks with a replay window and a bounded nonce cache.
pub struct HmacAuth {
    key: Vec<u8>,
    window: u64,
    max_nonces: usize,
    seen: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
}

impl std::fmt::Debug for HmacAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacAuth")
            .field("window", &self.window)
            .field("nonces", &self.seen.len())
            .finish_non_exhaustive()
    }
}

impl HmacAuth {
    /// With `key`, accepting timestamps within `window` seconds of now and
    /// remembering at most `max_nonces` nonces.
    pub fn new(key: impl Into<Vec<u8>>, window: u64, max_nonces: usize) -> Self {
        HmacAuth {
            key: key.into(),
            window,
            max_nonces: max_nonces.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn mac(&self, timestamp: u64, nonce: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(nonce.as_bytes());
        mac.update(b"\n");
        mac.update(body);
        mac
    }

    /// Signs `body` at `timestamp` with `nonce` (for callbacks Roomkit sends).
    pub fn sign(&self, timestamp: u64, nonce: &str, body: &[u8]) -> Signed {
        let signature = to_hex(&self.mac(timestamp, nonce, body).finalize().into_bytes());
        Signed { timestamp, nonce: nonce.to_owned(), signature }
    }

    /// Verifies a callback received at `now`: signature first (so unsigned
    /// traffic cannot fill the nonce cache), then the window, then the nonce.
    pub fn verify(&mut self, signed: &Signed, body: &[u8], now: u64) -> Result<(), AuthError> {
        if signed.nonce.is_empty() || signed.nonce.len() > 64 {
            return Err(AuthError::BadNonce);
        }
        let mut given = [0u8; 32];
        from_hex(&signed.signature, &mut given)?;
        self.mac(signed.timestamp, &signed.nonce, body).verify_slice(&given).map_err(|_| AuthError::BadSignature)?;
        if signed.timestamp.abs_diff(now) > self.window {
            return Err(AuthError::Expired { at: signed.timestamp, now });
        }
        // Forget nonces whose timestamps left the window: they can no longer pass.
        while self.order.front().is_some_and(|(ts, _)| now.saturating_sub(*ts) > self.window) {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(&signed.nonce) {
            return Err(AuthError::Replayed);
        }
        if self.seen.len() >= self.max_nonces {
            return Err(AuthError::NonceCacheFull { max: self.max_nonces });
        }
        self.seen.insert(signed.nonce.clone(), signed.timestamp);
        self.order.push_back((signed.timestamp, signed.nonce.clone()));
        Ok(())
    }

    /// Nonces remembered.
    pub fn nonces(&self) -> usize {
        self.seen.len()
    }
}

fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn hmac_sha1(key: &[u8]) -> Hmac<Sha1> {
    Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// Tencent TRTC callback signatures, as TRTC's "Cloud Recording and Web
/// Page Recording Webhooks" and "Room and Media Callbacks" documents
/// define them: the `Sign` header is `base64(HMAC-SHA256(key, body))`
/// over the raw body, with the callback key set in the TRTC console.
#[derive(Clone)]
pub struct TrtcSign {
    key: Vec<u8>,
}

impl std::fmt::Debug for TrtcSign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrtcSign").finish_non_exhaustive()
    }
}

impl TrtcSign {
    /// The header that carries the signature.
    pub const HEADER: &'static str = "Sign";

    /// Verifies with the callback key.
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        TrtcSign { key: key.into() }
    }

    /// The `Sign` of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = hmac_sha256(&self.key);
        mac.update(body);
        STANDARD.encode(mac.finalize().into_bytes())
    }

    /// Checks the `Sign` header against the raw `body`.
    pub fn verify(&self, sign: &str, body: &[u8]) -> Result<(), AuthError> {
        // 32 bytes are 44 characters of padded base64; the decoder refuses
        // any other text for them (no stray bits), so the text has one form.
        if sign.len() != 44 {
            return Err(AuthError::MalformedSignature);
        }
        let given = STANDARD.decode(sign).map_err(|_| AuthError::MalformedSignature)?;
        let mut mac = hmac_sha256(&self.key);
        mac.update(body);
        mac.verify_slice(&given).map_err(|_| AuthError::BadSignature)
    }
}

/// Agora notification signatures, as Agora's "Notifications" document
/// (signature verification) defines them: over the raw body with the
/// notification secret, `Agora-Signature` is the lowercase hex
/// HMAC-SHA1 and `Agora-Signature-V2` the lowercase hex HMAC-SHA256.
/// Prefer V2.
#[derive(Clone)]
pub struct AgoraSign {
    secret: Vec<u8>,
}

impl std::fmt::Debug for AgoraSign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgoraSign").finish_non_exhaustive()
    }
}

impl AgoraSign {
    /// The header with the HMAC-SHA1 signature.
    pub const HEADER_V1: &'static str = "Agora-Signature";
    /// The header with the HMAC-SHA256 signature.
    pub const HEADER_V2: &'static str = "Agora-Signature-V2";

    /// Verifies with the notification secret.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        AgoraSign { secret: secret.into() }
    }

    /// The `Agora-Signature` (HMAC-SHA1) of `body`.
    pub fn sign_v1(&self, body: &[u8]) -> String {
        let mut mac = hmac_sha1(&self.secret);
        mac.update(body);
        to_hex(&mac.finalize().into_bytes())
    }

    /// The `Agora-Signature-V2` (HMAC-SHA256) of `body`.
    pub fn sign_v2(&self, body: &[u8]) -> String {
        let mut mac = hmac_sha256(&self.secret);
        mac.update(body);
        to_hex(&mac.finalize().into_bytes())
    }

    /// Checks an `Agora-Signature` header (HMAC-SHA1) against the raw body.
    pub fn verify_v1(&self, signature: &str, body: &[u8]) -> Result<(), AuthError> {
        let mut given = [0u8; 20];
        from_hex(signature, &mut given)?;
        let mut mac = hmac_sha1(&self.secret);
        mac.update(body);
        mac.verify_slice(&given).map_err(|_| AuthError::BadSignature)
    }

    /// Checks an `Agora-Signature-V2` header (HMAC-SHA256) against the raw
    /// body.
    pub fn verify_v2(&self, signature: &str, body: &[u8]) -> Result<(), AuthError> {
        let mut given = [0u8; 32];
        from_hex(signature, &mut given)?;
        let mut mac = hmac_sha256(&self.secret);
        mac.update(body);
        mac.verify_slice(&given).map_err(|_| AuthError::BadSignature)
    }
}

/// LiveKit webhook authentication, as LiveKit's "Webhooks" document and
/// its server SDKs' `WebhookReceiver` define it: the `Authorization`
/// header is a JWT signed HS256 with the API secret, issued (`iss`) by
/// the API key, valid between `nbf` and `exp`, whose `sha256` claim is
/// the standard base64 of the SHA-256 of the raw body.
#[derive(Clone)]
pub struct LiveKitWebhookAuth {
    api_key: String,
    api_secret: Vec<u8>,
    leeway: u64,
}

impl std::fmt::Debug for LiveKitWebhookAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveKitWebhookAuth")
            .field("api_key", &self.api_key)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl LiveKitWebhookAuth {
    /// The header that carries the token.
    pub const HEADER: &'static str = "Authorization";
    /// The longest token accepted.
    pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

    /// Verifies tokens of `api_key` signed with `api_secret`, allowing
    /// `leeway` seconds of clock difference on `nbf` and `exp`.
    pub fn new(api_key: impl Into<String>, api_secret: impl Into<Vec<u8>>, leeway: u64) -> Self {
        LiveKitWebhookAuth { api_key: api_key.into(), api_secret: api_secret.into(), leeway }
    }

    /// A token for `body`, valid from `now` for `ttl` seconds (what
    /// LiveKit sends; for tests, and for hosts that relay webhooks).
    pub fn sign(&self, body: &[u8], now: u64, ttl: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": self.api_key,
            "nbf": now,
            "exp": now.saturating_add(ttl),
            "sha256": STANDARD.encode(Sha256::digest(body)),
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = hmac_sha256(&self.api_secret);
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(claims.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{claims}.{sig}")
    }

    /// Checks the `Authorization` header (the token, optionally after
    /// `Bearer `) against the raw `body` at `now` (Unix seconds):
    /// signature first, then issuer, times and body hash.
    pub fn verify(&self, authorization: &str, body: &[u8], now: u64) -> Result<(), AuthError> {
        let token = authorization.strip_prefix("Bearer ").unwrap_or(authorization);
        if token.len() > Self::MAX_TOKEN_BYTES {
            return Err(AuthError::MalformedToken("longer than 8 KiB"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::MalformedToken("not three dot-separated parts"));
        };
        let json = |part: &str, what: &'static str| -> Result<serde_json::Map<String, Value>, AuthError> {
            let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::MalformedToken(what))?;
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(m)) => Ok(m),
                _ => Err(AuthError::MalformedToken(what)),
            }
        };
        let header_fields = json(header, "header is not base64url JSON")?;
        match header_fields.get("alg").and_then(Value::as_str) {
            Some("HS256") => {}
            other => {
                let alg: String = other.unwrap_or("").chars().filter(|c| !c.is_control()).take(16).collect();
                return Err(AuthError::UnsupportedAlgorithm(alg));
            }
        }
        let given = URL_SAFE_NO_PAD.decode(sig).map_err(|_| AuthError::MalformedToken("signature is not base64url"))?;
        let mut mac = hmac_sha256(&self.api_secret);
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(claims.as_bytes());
        mac.verify_slice(&given).map_err(|_| AuthError::BadSignature)?;
        let claims = json(claims, "claims are not base64url JSON")?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.api_key.as_str()) {
            return Err(AuthError::WrongIssuer);
        }
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or(AuthError::MalformedToken("no exp claim"))?;
        if now > exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired { at: exp, now });
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_u64().ok_or(AuthError::MalformedToken("nbf claim is not a time"))?;
            if now.saturating_add(self.leeway) < nbf {
                return Err(AuthError::Expired { at: nbf, now });
            }
        }
        let claimed =
            claims.get("sha256").and_then(Value::as_str).ok_or(AuthError::MalformedToken("no sha256 claim"))?;
        let claimed = STANDARD.decode(claimed).map_err(|_| AuthError::MalformedToken("sha256 claim is not base64"))?;
        let actual = Sha256::digest(body);
        if claimed.len() != actual.len() || !bool::from(actual.as_slice().ct_eq(&claimed)) {
            return Err(AuthError::BodyMismatch);
        }
        Ok(())
    }
}
