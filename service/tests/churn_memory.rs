//! A class that churns for a long time holds no more memory once warm: a
//! member who came and went leaves nothing behind past the windows the
//! node keeps on purpose (closed connections for a heartbeat timeout,
//! the member list's tombstones for 10 minutes, the last 4,096 requests
//! a room answered, the room's last 1,024 reliable messages). Driven on
//! one node in virtual time, with a counting allocator over the whole
//! process.
//!
//! Closed connections were once remembered for the heartbeat wheel's
//! largest span (4.4 hours) instead of the timeout: up to 65,536 of them,
//! about 170 B for each member who came and went here.

mod common;

use std::time::Duration;

use common::{One, ROOM};
use room_core::{ConnId, Role, Terminal, Timestamp, Uin};
use room_service::Admission;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn live_heap() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

/// Members in class at any time.
const MEMBERS: usize = 500;
/// Members who leave, and new ones who enter, every second.
const CHURN: usize = 30;
/// Minutes of churn before the first measure: past every window a
/// churning class fills on purpose (the longest, the member list's
/// tombstones, is 10 minutes).
const WARM_MINUTES: u64 = 12;
/// Minutes of churn measured after that.
const MEASURED_MINUTES: u64 = 28;
/// What a member who came and went may leave behind once warm, on
/// average: table growth steps, not a record per member (a record per
/// member, a key and a stamp, is well over this).
const MAX_BYTES_PER_CHURNED: i64 = 64;

#[test]
fn a_churning_class_holds_no_memory_per_member_who_came_and_went() {
    let mut one = One::new(|_| {});
    let teacher = one.connect(1, Role::Teacher);
    // (connection, when it last beat)
    let mut class: Vec<(ConnId, Timestamp)> = Vec::with_capacity(MEMBERS + CHURN);
    let mut next_uin = 1_000u64;
    let enter = |one: &mut One, next_uin: &mut u64| {
        let terminal = Terminal::ALL[(*next_uin % 7) as usize];
        let who = Admission::new(ROOM, Uin(*next_uin), Role::Student, terminal);
        *next_uin += 1;
        let conn = one.node.connect(one.now, who).expect("enters");
        one.pump();
        (conn, one.now)
    };
    for _ in 0..MEMBERS {
        class.push(enter(&mut one, &mut next_uin));
    }
    let mut teacher_beat = one.now;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut random = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let (mut warm, mut churned_since_warm) = (None, 0i64);
    for second in 1..=(WARM_MINUTES + MEASURED_MINUTES) * 60 {
        for _ in 0..CHURN {
            let (conn, _) = class.swap_remove(random(class.len()));
            one.node.leave(one.now, conn);
            one.pump();
            class.push(enter(&mut one, &mut next_uin));
        }
        // Everyone beats every 20 s, as clients do.
        let now = one.now;
        for (conn, last) in
            class.iter_mut().filter(|(_, last)| now.saturating_duration_since(*last) >= Duration::from_secs(20))
        {
            let _ = one.node.handle_text(now, *conn, r#"{"t":"beat"}"#);
            *last = now;
        }
        if now.saturating_duration_since(teacher_beat) >= Duration::from_secs(20) {
            let _ = one.node.handle_text(now, teacher, r#"{"t":"beat"}"#);
            teacher_beat = now;
        }
        one.pump();
        one.advance(Duration::from_secs(1));
        // The clients' side: what they were sent is read and dropped.
        one.sink.frames.clear();
        one.sink.handed.clear();
        one.sink.closed.clear();
        one.events.clear();
        if warm.is_some() {
            churned_since_warm += CHURN as i64;
        }
        if second % 60 == 0 {
            let heap = live_heap();
            println!("minute {}: live heap {:.2} MiB", second / 60, heap as f64 / f64::from(1 << 20));
            if second == WARM_MINUTES * 60 {
                warm = Some(heap);
            }
        }
    }
    let stats = one.node.stats();
    assert_eq!(stats.timed_out, 0, "every member beat in time: {stats:?}");
    assert_eq!(stats.connections, MEMBERS + 1, "the class is whole: {stats:?}");
    let grown = live_heap() - warm.expect("measured once warm");
    let per_member = grown / churned_since_warm;
    println!("{churned_since_warm} came and went once warm: {grown} B more live heap, {per_member} B each");
    assert!(
        per_member <= MAX_BYTES_PER_CHURNED,
        "the live heap grew {grown} B over {churned_since_warm} members who came and went once warm: \
         {per_member} B each (at most {MAX_BYTES_PER_CHURNED})"
    );
}
