//! Rate limits against a reference token bucket, and the bound no sender
//! may exceed, directly and through the gate.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use room_core::{Role, Timestamp, Uin};
use room_push::{
    Class, Decision, Gate, GateConfig, GateError, KeyedLimiter, Kind, LimiterError, Message, Quota, Sender,
};
use support::*;

/// A token bucket of `burst` tokens refilled one per `interval`, in exact
/// integer micro-credits: the textbook model GCRA must agree with.
struct Bucket {
    credit: u64,
    cap: u64,
    cost: u64,
    last: u64,
}

impl Bucket {
    fn new(interval: u64, burst: u64) -> Self {
        Bucket { credit: interval * burst, cap: interval * burst, cost: interval, last: 0 }
    }
    fn take(&mut self, now: u64) -> bool {
        self.credit = (self.credit + (now - self.last)).min(self.cap);
        self.last = now;
        if self.credit >= self.cost {
            self.credit -= self.cost;
            true
        } else {
            false
        }
    }
}

/// Checks that in every span between two accepted requests the count stays
/// within burst + span / interval.
fn within_bound(accepted: &[u64], interval: u64, burst: u64) -> Result<(), String> {
    for i in 0..accepted.len() {
        for j in i..accepted.len() {
            let n = (j - i + 1) as u64;
            let allowed = burst + (accepted[j] - accepted[i]) / interval;
            if n > allowed {
                return Err(format!("{n} accepted in {} us, bound {allowed}", accepted[j] - accepted[i]));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn gcra_agrees_with_a_token_bucket_and_keeps_the_bound(
        count in 1u32..50,
        period_ms in 1u64..2_000,
        burst in 1u32..20,
        gaps in proptest::collection::vec(0u64..80_000, 1..300),
    ) {
        let quota = Quota::new(count, Duration::from_millis(period_ms)).and_then(|q| q.with_burst(burst));
        let Ok(quota) = quota else { return Ok(()) };
        let interval = quota.interval().as_micros() as u64;
        let mut limiter = KeyedLimiter::new(4);
        let mut bucket = Bucket::new(interval, u64::from(burst));
        let mut now = 1_000_000u64;
        let mut accepted = Vec::new();
        for gap in gaps {
            now += gap;
            let got = limiter.check("k", quota, Timestamp::from_micros(now), 1).expect("one key fits");
            let want = bucket.take(now);
            prop_assert_eq!(got == Decision::Allowed, want, "at {} us", now);
            if let Decision::Limited { retry_after } = got {
                // Waiting as told is enough.
                let later = Timestamp::from_micros(now + retry_after.as_micros() as u64);
                let mut copy = Bucket { ..bucket };
                prop_assert!(copy.take(later.as_micros()), "retry_after {:?} is too short", retry_after);
            } else {
                accepted.push(now);
            }
        }
        within_bound(&accepted, interval, u64::from(burst)).map_err(TestCaseError::fail)?;
    }

    /// Through the gate, no sender exceeds its per-user quota, however the
    /// senders interleave.
    #[test]
    fn no_sender_exceeds_its_quota_through_the_gate(
        sends in proptest::collection::vec((0u64..5, 0u64..120_000), 1..400),
    ) {
        let quota = Quota::per_second(5).and_then(|q| q.with_burst(3)).expect("valid");
        let mut config = GateConfig::default();
        config.user_quota = quota;
        let mut gate = Gate::new(config);
        let mut now = Timestamp::from_millis(5_000);
        gate.open_room(now, ROOM).expect("opens");
        let mut accepted: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (who, gap) in sends {
            now = now.saturating_add(Duration::from_micros(gap));
            let sender = Sender { uin: Uin(who), role: Role::Student };
            let msg = Message::new(ROOM, Class::Chat, Kind(1), vec![1]).from_sender(sender);
            match gate.publish(now, msg) {
                Ok(_) => accepted.entry(who).or_default().push(now.as_micros()),
                Err(GateError::RateLimited { .. }) => {}
                Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
            }
        }
        for times in accepted.values() {
            within_bound(times, quota.interval().as_micros() as u64, 3).map_err(TestCaseError::fail)?;
        }
    }
}

#[test]
fn a_storm_of_distinct_keys_is_refused_not_stored() {
    let quota = Quota::per_second(1).expect("valid");
    let mut limiter = KeyedLimiter::new(100);
    let now = Timestamp::from_millis(10_000);
    let mut refused = 0;
    for key in 0..1_000u32 {
        match limiter.check(key, quota, now, 1) {
            Ok(Decision::Allowed) => {}
            Err(LimiterError::Full { max_keys: 100 }) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(limiter.len(), 100);
    assert_eq!(refused, 900);
    // Once the keys go idle, new keys fit again.
    let later = Timestamp::from_millis(20_000);
    assert_eq!(limiter.check(5_000, quota, later, 1), Ok(Decision::Allowed));
    assert_eq!(limiter.len(), 1);
}

#[test]
fn bad_quotas_are_refused() {
    assert!(Quota::new(0, Duration::from_secs(1)).is_err());
    assert!(Quota::new(2_000_000, Duration::from_secs(1)).is_err());
    assert!(Quota::per_second(1).and_then(|q| q.with_burst(0)).is_err());
}

#[test]
fn the_in_memory_global_limiter_works_through_the_trait_object() {
    use room_push::{GlobalLimiter, LocalGlobalLimiter};
    let limiter: Box<dyn GlobalLimiter> = Box::new(LocalGlobalLimiter::new(16));
    let quota = Quota::per_second(100).and_then(|q| q.with_burst(5)).expect("valid");
    let now = Timestamp::from_millis(50_000);
    futures::executor::block_on(async {
        let mut allowed = 0;
        for _ in 0..20 {
            if limiter.check("moderation-api", quota, now, 1).await == Ok(Decision::Allowed) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 5, "the burst, then nothing at the same instant");
        // Another key has its own budget; 10 ms later one more fits.
        assert_eq!(limiter.check("message-store", quota, now, 1).await, Ok(Decision::Allowed));
        let later = Timestamp::from_millis(50_010);
        assert_eq!(limiter.check("moderation-api", quota, later, 1).await, Ok(Decision::Allowed));
        assert!(matches!(limiter.check("moderation-api", quota, later, 1).await, Ok(Decision::Limited { .. })));
    });
}
