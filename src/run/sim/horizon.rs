//! One schedule family, scripted around the dedup horizon of a snapshot's deletion: a
//! short dedup window, calls whose clock moves past it within a few flushes, and copies
//! of recent calls (a producer's retries) inside it. The owner applies on while its
//! flushes are in flight, so a snapshot lands when the partition's clock is already
//! later than the snapshot's; then it crashes before its next checkpoint, and the next
//! owner replays from the snapshot. The deletion after the snapshot must keep every dedup
//! row that replay needs: the window ends at the snapshot's clock. Deleting by the
//! partition's clock at deletion time dropped the exact row of a first arrival (what a
//! confirmation of a probable duplicate from the sealed blob reads) that a copy applied
//! after the snapshot needed, and the replay debited the copy a second time.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tally_core::{Credits, LotKind};

use super::super::merge::Which;
use super::history::{input, to_json, Event};
use super::reference::{Data, GrantData, UsageData};
use super::{check, lock, place, reached, rules, Outcome, Rng, Sim, MATRIX};
use crate::config::Config;

/// One account's calls, each 1 s to a quarter window after the one before, a third of
/// them copies of a call whose first arrival is still inside the window; a grant first
/// that pays for all of them.
fn calls(rng: &mut Rng, window: TimeDelta) -> Vec<Event> {
    let start: DateTime<Utc> = "2026-11-02T00:00:00Z".parse().expect("a valid time");
    let account = "acct-0".to_string();
    let grant = GrantData {
        lot: None,
        pool: Some("ai".into()),
        kind: LotKind::Purchased,
        credits: Credits::from_whole(1_000_000),
        effective_at: None,
        expires_at: Some(None),
        valid_days: None,
        priority: None,
        payment: None,
        comment: None,
    };
    let first = input(0, "credit.grant", &account, start, Data::Grant(grant));
    let mut events = vec![event(Which::Commands, &account, first, start)];
    let mut time = start;
    let window_secs = window.num_seconds() as u64;
    for n in 1..20 + rng.below(40) {
        // Mostly close together, so that snapshots come well within a window; now and
        // then a jump of up to a window, so that a partition's clock may pass a key's
        // window while a flush is in flight.
        let gap = match rng.chance(200) {
            true => window_secs / 2 + rng.below(window_secs / 2),
            false => 1 + rng.below(window_secs / 20),
        };
        time += TimeDelta::seconds(gap as i64);
        let arrival = time + TimeDelta::milliseconds(rng.below(1_000) as i64);
        let recent: Vec<&Event> = events
            .iter()
            .filter(|e| e.which == Which::Usage && e.arrival + window > arrival)
            .collect();
        let call = if rng.chance(500) && !recent.is_empty() {
            // The oldest inside the window: its first arrival is the likeliest to fall
            // below the horizon of a partition clock that moved on since the snapshot.
            let copy = recent[rng.below(recent.len().min(2) as u64) as usize];
            let mut call = copy.input.clone().expect("every call is readable");
            call.time = Some(time);
            call
        } else {
            let usage = UsageData {
                user: "user-0".into(),
                feature: "erase".into(),
                variant: None,
                quantity: None,
                status: None,
                hold: None,
            };
            input(n, "ai.usage", &account, time, Data::Usage(usage))
        };
        events.push(event(Which::Usage, &account, call, arrival));
    }
    events
}

fn event(which: Which, account: &str, input: super::reference::Input, at: DateTime<Utc>) -> Event {
    Event {
        which,
        partition: 0,
        account: account.to_string(),
        payload: to_json(&input).into_bytes(),
        input: Some(input),
        arrival: at,
    }
}

/// How many snapshot deletions the store has done. A deletion runs in its flush's task,
/// right after the commit, so it may land in a turn or in the steps between turns.
fn deletions(sim: &Sim) -> u64 {
    lock(&sim.world.db).deletions
}

/// The scripted schedule of `seed`: the owner crashes right after one of its snapshots'
/// deletions (or after 2,000 turns); the next owner replays from there. Whether it
/// crashed after a deletion, or what differs from the model.
fn horizon(seed: u64) -> Result<bool, String> {
    let mut rng = Rng::new(seed);
    let mut rules = rules::rules(MATRIX);
    rules.dedup_window = TimeDelta::minutes(10 + rng.below(50) as i64);
    let mut config = Config::default();
    config.pipeline.max_batch_events = 1 + rng.below(3) as usize;
    config.pipeline.flush_interval = Duration::from_millis(20 + rng.below(100));
    config.pipeline.snapshot_min_rows = 1;
    config.pipeline.rollup_segment_records = 2 + rng.below(40) as u32;
    let events = calls(&mut rng, rules.dedup_window);
    let (world, expected, events) = place(&mut rng, config, rules, 1, events);
    lock(&world.faults).on = false;
    let mut sim = Sim {
        world,
        members: BTreeMap::new(),
        zombies: None,
        zombie_steps: 0,
        next_id: 0,
        outcome: Outcome {
            events,
            ..Outcome::default()
        },
    };
    sim.join(&mut rng);
    let mut after_deletion = false;
    for _ in 0..2_000 {
        let before = deletions(&sim);
        let member = sim.members.get_mut(&0).expect("running");
        member.turn();
        // A snapshot's deletion just ran: the crash comes before anything newer lands.
        if deletions(&sim) > before && rng.chance(500) {
            after_deletion = true;
            break;
        }
        // Writes go on now and then: the turns between apply on, past the flush in
        // flight.
        if rng.chance(80) {
            let steps = 1 + rng.below(4);
            let before = deletions(&sim);
            let member = sim.members.get_mut(&0).expect("running");
            member.background(steps);
            if deletions(&sim) > before && rng.chance(500) {
                after_deletion = true;
                break;
            }
        }
        sim.world.clock.advance(Duration::from_millis(50));
    }
    sim.members.remove(&0);
    lock(&sim.world.broker).leave(0);
    sim.join(&mut rng);
    sim.settle()?;
    check(&sim.world, &expected)?;
    Ok(after_deletion)
}

/// The horizon family over 300 seeds (`TALLY_SIM_SEEDS` to change, `TALLY_SIM_SEED` to
/// replay one), from a random first seed (printed). With the horizon taken from the
/// partition's clock at deletion time (before 2a86f62) about one seed in ten fails: a copy
/// replayed after the snapshot debited again (or a later copy, outside the first
/// arrival's window, taken for a duplicate of that one).
#[test]
fn a_snapshot_deletion_keeps_the_dedup_rows_a_replay_from_it_needs() {
    let (crashed, count) = reached("horizon", 300, horizon);
    eprintln!("horizon: the owner crashed right after a deletion in {crashed} of {count} seeds");
    // Most seeds do: a hundred that all miss means the family no longer makes the case.
    assert!(
        crashed > 0 || count < 100,
        "none of {count} seeds crashed after a snapshot's deletion"
    );
}
