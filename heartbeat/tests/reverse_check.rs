//! The reverse check: rate limits, retries with backoff, the no-answer
//! decision, capacity, and exactly one verdict per suspect.

use std::collections::BTreeMap;

use proptest::prelude::*;
use room_core::{BusinessId, MemberKey, RoomId, Terminal, Timestamp, Uin};
use room_heartbeat::{
    ConnId, NoAnswer, ProbeAnswer, ProbeId, ReverseCheck, ReverseCheckConfig, ReverseError, Suspect, VerdictKind,
};

fn suspect(i: u64) -> Suspect {
    Suspect {
        member: MemberKey::new(BusinessId(1), RoomId(1), Uin(i)),
        terminal: Terminal::Web,
        conn: ConnId(i),
        last_seen: Timestamp::ZERO,
    }
}

fn ms(n: u64) -> Timestamp {
    Timestamp::from_millis(n)
}

fn config(rate: u32, burst: u32) -> ReverseCheckConfig {
    let mut c = ReverseCheckConfig::default();
    c.probe_rate = rate;
    c.probe_burst = burst;
    c
}

#[test]
fn a_mass_timeout_is_probed_at_the_configured_rate() {
    let mut check = ReverseCheck::new(config(1_000, 100)).unwrap();
    for i in 0..5_000 {
        check.handle_suspect(ms(0), suspect(i)).unwrap();
    }
    let burst = std::iter::from_fn(|| check.poll_probe(ms(0))).count();
    assert_eq!(burst, 100, "the burst goes out at once");
    assert_eq!(check.poll_timeout(), Some(Timestamp::from_micros(1_000)), "the next token comes in 1 ms");
    let after_one_second = std::iter::from_fn(|| check.poll_probe(ms(1_000))).count();
    assert_eq!(after_one_second, 100, "tokens are capped at the burst");
    let mut sent = 200;
    for t in (1_001..=2_000).map(ms) {
        sent += std::iter::from_fn(|| check.poll_probe(t)).count();
    }
    assert_eq!(sent, 1_200, "1,000 a second after the burst");
}

#[test]
fn answers_decide_and_late_or_unknown_answers_are_refused() {
    let mut check = ReverseCheck::new(ReverseCheckConfig::default()).unwrap();
    check.handle_suspect(ms(0), suspect(1)).unwrap();
    check.handle_suspect(ms(0), suspect(2)).unwrap();
    let a = check.poll_probe(ms(0)).unwrap();
    let b = check.poll_probe(ms(0)).unwrap();
    check.handle_answer(ms(5), a.id, ProbeAnswer::Gone).unwrap();
    check.handle_answer(ms(6), b.id, ProbeAnswer::Alive).unwrap();
    assert_eq!(check.handle_answer(ms(7), a.id, ProbeAnswer::Alive), Err(ReverseError::UnknownProbe(a.id)));
    assert_eq!(
        check.handle_answer(ms(7), ProbeId(999), ProbeAnswer::Gone),
        Err(ReverseError::UnknownProbe(ProbeId(999)))
    );
    let verdicts: Vec<_> = std::iter::from_fn(|| check.poll_verdict()).collect();
    assert_eq!(verdicts.len(), 2);
    assert_eq!((verdicts[0].suspect, verdicts[0].kind), (suspect(1), VerdictKind::Gone));
    assert_eq!((verdicts[1].suspect, verdicts[1].kind), (suspect(2), VerdictKind::Alive));
    assert!(check.is_empty());
}

fn run_unanswered(policy: NoAnswer) -> (Vec<(Timestamp, u32)>, Vec<room_heartbeat::Verdict>) {
    let mut c = ReverseCheckConfig::default();
    c.on_no_answer = policy;
    let mut check = ReverseCheck::new(c).unwrap();
    check.handle_suspect(ms(0), suspect(1)).unwrap();
    let mut attempts = Vec::new();
    let mut now = ms(0);
    for _ in 0..100 {
        while let Some(p) = check.poll_probe(now) {
            attempts.push((now, p.attempt));
        }
        match check.poll_timeout() {
            Some(t) => {
                now = t;
                check.handle_timeout(now);
            }
            None => break,
        }
    }
    (attempts, std::iter::from_fn(|| check.poll_verdict()).collect())
}

#[test]
fn silence_is_retried_with_backoff_then_decided_by_policy() {
    let (attempts, verdicts) = run_unanswered(NoAnswer::AssumeGone);
    // 2 s answer timeout; backoff 0.5 s then 1 s.
    assert_eq!(attempts, vec![(ms(0), 1), (ms(2_500), 2), (ms(5_500), 3)]);
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0].kind, VerdictKind::NoAnswer { gone: true });
    assert!(verdicts[0].kind.is_gone());
    let (_, verdicts) = run_unanswered(NoAnswer::AssumeAlive);
    assert_eq!(verdicts[0].kind, VerdictKind::NoAnswer { gone: false });
    assert!(!verdicts[0].kind.is_gone());
}

#[test]
fn capacity_and_duplicates() {
    let mut c = ReverseCheckConfig::default();
    c.capacity = 2;
    let mut check = ReverseCheck::new(c).unwrap();
    check.handle_suspect(ms(0), suspect(1)).unwrap();
    check.handle_suspect(ms(0), suspect(1)).unwrap(); // the same suspect again: ignored
    check.handle_suspect(ms(0), suspect(2)).unwrap();
    assert!(!check.has_capacity());
    assert_eq!(check.handle_suspect(ms(0), suspect(3)), Err(ReverseError::Full(2)));
    assert_eq!(check.len(), 2);
    let mut c = ReverseCheckConfig::default();
    c.probe_rate = 0;
    assert!(ReverseCheck::new(c).is_err());
}

#[test]
fn retain_withdraws_suspects_wherever_they_are_without_a_verdict() {
    let mut check = ReverseCheck::new(config(1_000, 2)).unwrap();
    for i in 0..6 {
        check.handle_suspect(ms(0), suspect(i)).unwrap();
    }
    // 0 and 1 go out (the burst) and go unanswered: both wait to retry;
    // then 2 goes out and stays in flight, 3..6 wait for tokens.
    let a = check.poll_probe(ms(0)).unwrap();
    let b = check.poll_probe(ms(0)).unwrap();
    assert_eq!((a.suspect, b.suspect), (suspect(0), suspect(1)));
    check.handle_timeout(ms(2_000));
    assert_eq!(check.handle_answer(ms(2_000), b.id, ProbeAnswer::Alive), Err(ReverseError::UnknownProbe(b.id)));
    let c = check.poll_probe(ms(2_000)).unwrap();
    assert_eq!(c.suspect, suspect(2));
    // Keep the odd ones: 0 (retrying) and 2 (in flight) and 4 (queued) go.
    let withdrawn = check.retain(|s| s.member.uin.0 % 2 == 1);
    assert_eq!(withdrawn, 3);
    assert_eq!(check.len(), 3);
    assert_eq!(check.handle_answer(ms(2_001), c.id, ProbeAnswer::Gone), Err(ReverseError::UnknownProbe(c.id)));
    // The rest run to their verdicts; the withdrawn never get one.
    let mut now = ms(2_001);
    for _ in 0..1_000 {
        while let Some(p) = check.poll_probe(now) {
            assert_eq!(p.suspect.member.uin.0 % 2, 1, "a withdrawn suspect was probed");
            check.handle_answer(now, p.id, ProbeAnswer::Gone).unwrap();
        }
        match check.poll_timeout() {
            Some(t) => {
                now = t.max(now);
                check.handle_timeout(now);
            }
            None => break,
        }
    }
    let mut decided: Vec<u64> = std::iter::from_fn(|| check.poll_verdict()).map(|v| v.suspect.member.uin.0).collect();
    decided.sort();
    assert_eq!(decided, vec![1, 3, 5]);
    assert!(check.is_empty());
    // A withdrawn suspect may be handed in again.
    check.handle_suspect(now, suspect(0)).unwrap();
    assert_eq!(check.len(), 1);
}

#[test]
fn withdraw_forgets_one_probe_in_flight() {
    let mut check = ReverseCheck::new(ReverseCheckConfig::default()).unwrap();
    check.handle_suspect(ms(0), suspect(1)).unwrap();
    check.handle_suspect(ms(0), suspect(2)).unwrap();
    let a = check.poll_probe(ms(0)).unwrap();
    assert_eq!(check.poll_probe(ms(0)).map(|p| p.suspect), Some(suspect(2)));
    assert_eq!(check.withdraw(a.id), Some(suspect(1)));
    assert_eq!(check.withdraw(a.id), None, "only once");
    assert_eq!(check.withdraw(ProbeId(12_345)), None);
    assert_eq!(check.len(), 1);
    assert_eq!(check.handle_answer(ms(1), a.id, ProbeAnswer::Gone), Err(ReverseError::UnknownProbe(a.id)));
    // Its deadline is gone too: no retry, no verdict, ever; b is retried
    // until the no-answer decision.
    let mut now = ms(1);
    let mut retried = Vec::new();
    for _ in 0..100 {
        while let Some(p) = check.poll_probe(now) {
            retried.push((p.suspect, p.attempt));
        }
        match check.poll_timeout() {
            Some(t) => {
                now = t.max(now);
                check.handle_timeout(now);
            }
            None => break,
        }
    }
    assert_eq!(retried, vec![(suspect(2), 2), (suspect(2), 3)]);
    let verdicts: Vec<_> = std::iter::from_fn(|| check.poll_verdict()).collect();
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0].suspect, suspect(2));
}

#[derive(Debug, Clone, Copy)]
enum Reply {
    Alive,
    Gone,
    Silent,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the access layer does, every suspect gets exactly one
    /// verdict, and no window [0, t] sees more than burst + rate x t probes.
    #[test]
    fn every_suspect_gets_exactly_one_verdict(
        replies in prop::collection::vec(prop_oneof![Just(Reply::Alive), Just(Reply::Gone), Just(Reply::Silent)], 1..400),
        rate in 1u32..500,
        burst in 1u32..50,
    ) {
        let mut check = ReverseCheck::new(config(rate, burst)).unwrap();
        let n = replies.len() as u64;
        for i in 0..n {
            check.handle_suspect(ms(0), suspect(i)).unwrap();
        }
        let mut now = ms(0);
        let mut probes_sent = 0u64;
        let mut attempts: BTreeMap<u64, u32> = BTreeMap::new();
        for _ in 0..200_000 {
            while let Some(p) = check.poll_probe(now) {
                probes_sent += 1;
                let elapsed_us = now.as_micros();
                prop_assert!(probes_sent <= u64::from(burst) + elapsed_us * u64::from(rate) / 1_000_000 + 1);
                let i = p.suspect.uin_index();
                *attempts.entry(i).or_default() += 1;
                match replies[i as usize] {
                    Reply::Alive => check.handle_answer(now, p.id, ProbeAnswer::Alive).unwrap(),
                    Reply::Gone => check.handle_answer(now, p.id, ProbeAnswer::Gone).unwrap(),
                    Reply::Silent => {}
                }
            }
            match check.poll_timeout() {
                Some(t) => { now = t.max(now); check.handle_timeout(now); }
                None => break,
            }
        }
        let verdicts: Vec<_> = std::iter::from_fn(|| check.poll_verdict()).collect();
        prop_assert_eq!(verdicts.len() as u64, n);
        let mut seen: Vec<u64> = verdicts.iter().map(|v| v.suspect.uin_index()).collect();
        seen.sort();
        seen.dedup();
        prop_assert_eq!(seen.len() as u64, n);
        for v in &verdicts {
            let i = v.suspect.uin_index();
            let expected = match replies[i as usize] {
                Reply::Alive => VerdictKind::Alive,
                Reply::Gone => VerdictKind::Gone,
                Reply::Silent => VerdictKind::NoAnswer { gone: true },
            };
            prop_assert_eq!(v.kind, expected);
            let tries = attempts[&i];
            prop_assert_eq!(tries, if matches!(replies[i as usize], Reply::Silent) { 3 } else { 1 });
        }
        prop_assert!(check.is_empty());
    }
}

trait UinIndex {
    fn uin_index(&self) -> u64;
}

impl UinIndex for Suspect {
    fn uin_index(&self) -> u64 {
        self.member.uin.0
    }
}
