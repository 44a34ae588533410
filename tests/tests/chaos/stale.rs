//! A holder paused past its deadline (a GC pause between its check and its write): S10 and U4.
//!
//! X acquires and reads both stores, then stalls until after its deadline. Y acquires once X's
//! keys expire and updates both stores. X wakes up and writes: the plain store takes the write
//! and loses Y's update (U4, Kleppmann's argument: P1 still holds, the lock cannot prevent it),
//! the fenced store rejects it (S10).

use std::sync::Arc;
use std::time::Duration;

use redlock_tests::Persistence;

use crate::checker::{Property, Report};
use crate::history::{Fault, Record};
use crate::scenario::{Profile, Rig, bounds, judge, settings};
use crate::workload::World;

/// Runs the script; returns the report and whether the fenced store took X's stale write.
async fn stale_holder(name: &str, asserted: &[Property]) -> (Report, bool) {
    let profile = Profile::from_env();
    let settings = settings();
    let rig = Rig::start(Persistence::None, 2, settings);
    let world = Arc::new(World::new(rig.recorder.clone(), &["r"]));
    let (x, y) = (&rig.clients[0], &rig.clients[1]);

    let hx = x.acquire("r").await.expect("X acquires");
    let token_x = hx.token().expect("fenced");
    let plain_x = world.plain.read("r");
    let fenced_x = world.fenced.read("r", token_x).expect("first token");

    // The stall: X sleeps through its deadline.
    let t0 = rig.recorder.now();
    tokio::time::sleep_until((hx.lock.deadline() + Duration::from_millis(50)).into()).await;
    let mut hy = None;
    for _ in 0..50 {
        hy = y.acquire("r").await;
        if hy.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hy = hy.expect("Y acquires once X's keys expire");
    let token_y = hy.token().expect("fenced");
    let read = world.plain.read("r");
    world.plain.write(hy.holder(), "r", read);
    let read = world
        .fenced
        .read("r", token_y)
        .expect("Y's token is the newest");
    assert!(world.fenced.write(hy.holder(), "r", token_y, read));
    y.release(hy).await;

    // X wakes up and writes what it read before the pause.
    world.plain.write(hx.holder(), "r", plain_x);
    let accepted = world.fenced.write(hx.holder(), "r", token_x, fenced_x);
    rig.recorder.push(Record::Fault(Fault {
        t_start: t0,
        t_end: rig.recorder.now(),
        what: "client 0 stalled past its deadline between read and write".to_owned(),
        client: Some(0),
    }));
    x.release(hx).await;
    world.plain.finish();
    world.fenced.finish();

    let records = rig.recorder.snapshot();
    let report = judge(name, &profile, &records, &bounds(settings), asserted, &[]);
    (report, accepted)
}

/// S10: the fenced store rejects the stale holder's write, and nothing else is violated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_stale_holder_write_is_rejected_by_the_fenced_store() {
    let asserted = [
        Property::Overlap,
        Property::Validity,
        Property::Fencing,
        Property::FencedStore,
        Property::Hang,
    ];
    let (report, accepted) = stale_holder("s10-stale-holder-fenced", &asserted).await;
    assert!(!accepted, "the fenced store took a stale token");
    assert_eq!(report.stats.fenced_rejected, 1, "{report:?}");
}

/// U4 (negative control): on the plain store the stale write loses Y's update, and the checker
/// reports it, while P1 holds: mutual exclusion of the lock was never broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u4_stale_holder_on_a_plain_store_loses_an_update() {
    let (report, _) = stale_holder("u4-stale-holder-plain", &[Property::Overlap]).await;
    assert!(
        report.has(Property::StaleWrite),
        "the checker missed the lost update: {}",
        report.summary()
    );
    assert!(!report.has(Property::LostUpdate), "{}", report.summary());
}
