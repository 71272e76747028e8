//! Recording callbacks on their way to the host: signed afresh at every
//! attempt (each attempt verifies, and none is a replay of another), sent
//! again with a doubling backoff until delivered or given up, the queue
//! bounded with an error rather than a silent drop.

use std::time::Duration;

use room_core::Timestamp;
use room_media_ctl::auth::HmacAuth;
use room_media_ctl::live::callbacks::{CallbackConfig, CallbackError, CallbackOutbox};

const KEY: &[u8] = b"callback-secret";

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

#[test]
fn a_failed_callback_is_signed_again_and_retried_with_backoff() {
    let mut config = CallbackConfig::new(KEY.to_vec(), "https://cdn.example/rec/");
    config.max_attempts = 4;
    let mut outbox = CallbackOutbox::new(config);
    let body = br#"{"stream_id":"cam-1","file_name":"a.flv","start":1,"end":2,"download_url":"x"}"#.to_vec();
    let id = outbox.push(at(0), body.clone()).expect("queued");
    let mut verifier = HmacAuth::new(KEY.to_vec(), 300, 100);
    let mut nonces = Vec::new();
    let mut when = Vec::new();
    let mut now = 0;
    loop {
        let Some(delivery) = outbox.poll_delivery(at(now), 1_700_000_000) else {
            match outbox.poll_timeout() {
                Some(due) => {
                    now = due.as_millis();
                    continue;
                }
                None => break,
            }
        };
        assert_eq!((delivery.id, delivery.body.as_slice()), (id, body.as_slice()));
        assert!(outbox.poll_delivery(at(now), 1_700_000_000).is_none(), "in flight: not handed out twice");
        verifier.verify(&delivery.signed, &delivery.body, 1_700_000_001).expect("each attempt verifies");
        nonces.push(delivery.signed.nonce.clone());
        when.push(now);
        outbox.failed(at(now), id);
    }
    assert_eq!(when, [0, 1_000, 3_000, 7_000], "1 s, 2 s, 4 s between attempts");
    nonces.dedup();
    assert_eq!(nonces.len(), 4, "a fresh nonce each time");
    assert_eq!(outbox.take_given_up(), [id]);
    assert!(outbox.is_empty());
}

#[test]
fn a_delivered_callback_is_gone_and_the_queue_is_bounded() {
    let mut config = CallbackConfig::new(KEY.to_vec(), "");
    config.max_pending = 2;
    config.max_backoff = Duration::from_secs(2);
    let mut outbox = CallbackOutbox::new(config);
    let a = outbox.push(at(0), b"a".to_vec()).expect("queued");
    let b = outbox.push(at(0), b"b".to_vec()).expect("queued");
    assert_eq!(outbox.push(at(0), b"c".to_vec()), Err(CallbackError::Full { pending: 2, max: 2 }));
    let first = outbox.poll_delivery(at(0), 1).expect("due");
    let second = outbox.poll_delivery(at(0), 1).expect("due");
    assert_eq!([first.id, second.id], [a, b]);
    outbox.delivered(a);
    outbox.failed(at(0), b);
    assert_eq!(outbox.len(), 1);
    assert!(outbox.push(at(0), b"c".to_vec()).is_ok(), "room again");
    assert_eq!(outbox.poll_timeout(), Some(at(0)), "c is due now, b in a second");
}
