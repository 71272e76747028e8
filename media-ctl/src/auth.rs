//! Callback authentication, both ways: verifying the callbacks media
//! providers send, and signing the callbacks Roomkit sends to its host.
//!
//! * [`TencentSign`]: Tencent Cloud live callbacks carry `t` (a Unix expiry
//!   time) and `sign = md5(key + t)` in lowercase hex.
//! * [`HmacAuth`]: HMAC-SHA256 over `"{timestamp}\n{nonce}\n{body}"`, with a
//!   replay window: a timestamp more than `window` away from now is
//!   refused, and so is a nonce seen within the window (a bounded cache).
//!
//! Signatures are compared in constant time.

use std::collections::{HashMap, VecDeque};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
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
        while let Some((ts, _)) = self.order.front() {
            if now.saturating_sub(*ts) <= self.window {
                break;
            }
            let (_, old) = self.order.pop_front().expect("just looked");
            self.seen.remove(&old);
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
