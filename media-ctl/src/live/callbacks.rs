//! Recording callbacks on their way to the host, sans-IO: each is signed
//! afresh at every attempt (HMAC-SHA256 over time, nonce and body, so a
//! retry is never refused as a replay), handed out for delivery, and sent
//! again with a doubling backoff until the host says it arrived or the
//! attempts run out. The queue is bounded: past its size a new callback
//! is refused with an error rather than an old one dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use room_core::Timestamp;

use crate::auth::{HmacAuth, Signed};

/// How callbacks are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackConfig {
    /// The HMAC key shared with the host.
    pub key: Vec<u8>,
    /// What a recorded file's `download_url` starts with (a CDN prefix
    /// such as `https://cdn.example/rec/`, or the recordings directory
    /// with a trailing `/` when the host reads them locally).
    pub download_prefix: String,
    /// The first retry's delay; it doubles each time.
    pub backoff: Duration,
    /// The longest delay between attempts.
    pub max_backoff: Duration,
    /// Attempts before a callback is given up on (Tencent Cloud tries 12
    /// times).
    pub max_attempts: u32,
    /// Callbacks waiting at most.
    pub max_pending: usize,
}

impl CallbackConfig {
    /// One-second first retry, doubling to a minute, 12 attempts, 10,000
    /// waiting at most.
    pub fn new(key: impl Into<Vec<u8>>, download_prefix: impl Into<String>) -> CallbackConfig {
        CallbackConfig {
            key: key.into(),
            download_prefix: download_prefix.into(),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_attempts: 12,
            max_pending: 10_000,
        }
    }
}

/// One attempt to deliver a callback: POST `body` with the signature (for
/// example as `X-Roomkit-Timestamp`, `X-Roomkit-Nonce` and
/// `X-Roomkit-Signature` headers), then call
/// [`CallbackOutbox::delivered`] or [`CallbackOutbox::failed`] with `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The callback, for the answer.
    pub id: u64,
    /// Which attempt this is (1, 2, ...).
    pub attempt: u32,
    /// The JSON body.
    pub body: Vec<u8>,
    /// Its signature for this attempt.
    pub signed: Signed,
}

/// Why a callback was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallbackError {
    /// The queue is full (the host has not taken callbacks for a while).
    #[error("{pending} callbacks already wait (at most {max})")]
    Full {
        /// Waiting now.
        pending: usize,
        /// The bound.
        max: usize,
    },
}

#[derive(Debug, Clone)]
struct Pending {
    body: Vec<u8>,
    attempts: u32,
    due: Timestamp,
    in_flight: bool,
}

/// Callbacks waiting to be delivered.
#[derive(Debug)]
pub struct CallbackOutbox {
    config: CallbackConfig,
    auth: HmacAuth,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    given_up: Vec<u64>,
}

impl CallbackOutbox {
    /// An empty outbox.
    pub fn new(config: CallbackConfig) -> CallbackOutbox {
        let auth = HmacAuth::new(config.key.clone(), 300, 1);
        CallbackOutbox { config, auth, pending: BTreeMap::new(), next_id: 1, given_up: Vec::new() }
    }

    /// The configuration.
    pub fn config(&self) -> &CallbackConfig {
        &self.config
    }

    /// Queues `body` for delivery now; returns its id.
    pub fn push(&mut self, now: Timestamp, body: Vec<u8>) -> Result<u64, CallbackError> {
        if self.pending.len() >= self.config.max_pending {
            return Err(CallbackError::Full { pending: self.pending.len(), max: self.config.max_pending });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, Pending { body, attempts: 0, due: now, in_flight: false });
        Ok(id)
    }

    /// The next callback due, signed at `unix_secs`; it is in flight
    /// until [`delivered`](Self::delivered) or [`failed`](Self::failed).
    #[must_use]
    pub fn poll_delivery(&mut self, now: Timestamp, unix_secs: u64) -> Option<Delivery> {
        let (&id, pending) =
            self.pending.iter_mut().filter(|(_, p)| !p.in_flight && p.due <= now).min_by_key(|(_, p)| p.due)?;
        pending.in_flight = true;
        pending.attempts += 1;
        let mut salt = [0u8; 8];
        // Without randomness the id and attempt still make the nonce unique
        // to this outbox.
        let _ = getrandom::fill(&mut salt);
        let salt: String = salt.iter().map(|b| format!("{b:02x}")).collect();
        let nonce = format!("{id}-{}-{salt}", pending.attempts);
        let signed = self.auth.sign(unix_secs, &nonce, &pending.body);
        Some(Delivery { id, attempt: pending.attempts, body: pending.body.clone(), signed })
    }

    /// The host has the callback.
    pub fn delivered(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    /// The attempt failed: the callback is sent again after the backoff,
    /// or given up on when its attempts ran out (see
    /// [`take_given_up`](Self::take_given_up)).
    pub fn failed(&mut self, now: Timestamp, id: u64) {
        let Some(p) = self.pending.get_mut(&id) else { return };
        p.in_flight = false;
        if p.attempts >= self.config.max_attempts {
            self.pending.remove(&id);
            self.given_up.push(id);
            return;
        }
        let shift = p.attempts.saturating_sub(1).min(20);
        let wait = self.config.backoff.saturating_mul(1 << shift).min(self.config.max_backoff);
        p.due = now.saturating_add(wait);
    }

    /// Callbacks given up on since the last call.
    pub fn take_given_up(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.given_up)
    }

    /// When the next callback not in flight is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.pending.values().filter(|p| !p.in_flight).map(|p| p.due).min()
    }

    /// Callbacks waiting (in flight included).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}
