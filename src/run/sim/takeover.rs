//! One schedule family, scripted around the deletion fence: an owner O is dropped by the
//! group and runs on (a zombie); the next owner N claims, loads O's rows up to O's latest
//! flush, commits one flush of its own and crashes before any snapshot; O goes on, snapshots
//! and would delete its rows older than that snapshot, which N's lineage still needs for
//! the accounts N did not rewrite; then a third owner M loads N's lineage and must end as
//! the reference model says. Without the fence (O deletes although a later claim exists) M
//! misses those accounts' states and dedup keys.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{build, check, lock, reached, Outcome, Rng, Sim};

/// Runs member `id` for `rounds` rounds of a turn, its background writes and 50 ms, or
/// until `done` says so.
fn run(sim: &mut Sim, id: usize, rounds: u64, done: &dyn Fn(&Sim) -> bool) {
    for _ in 0..rounds {
        if done(sim) {
            return;
        }
        let member = sim.members.get_mut(&id).expect("running");
        member.turn();
        member.background(4);
        sim.world.clock.advance(Duration::from_millis(50));
    }
}

/// Whether member `id` committed a flush under its own claim.
fn committed_under_claim(sim: &Sim, id: usize) -> bool {
    let db = lock(&sim.world.db);
    let owner = format!("member {id}");
    let claims: Vec<u64> = db
        .checkpoints
        .iter()
        .filter(|r| r.row_kind == "claim" && r.state == owner.as_bytes())
        .map(|r| r.version)
        .collect();
    db.checkpoints
        .iter()
        .any(|r| r.row_kind == "offsets" && claims.contains(&r.claim))
}

/// The scripted schedule of `seed`; whether O's deletion met a later claim (the fence),
/// or what differs from the model.
fn takeover(seed: u64) -> Result<bool, String> {
    let mut rng = Rng::new(seed);
    let (mut world, expected, events) = build(&mut rng);
    // Snapshots as soon as the dead rows outgrow the live ones: O's comes soon after N's.
    world.config.pipeline.snapshot_min_rows = 1;
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
    let (o, n) = (0, 1);
    sim.join(&mut rng);
    let before = 2 + rng.below(30);
    run(&mut sim, o, before, &|_| false);
    // The group drops O, which runs on; N takes every partition over.
    lock(&sim.world.broker).leave(o);
    sim.join(&mut rng);
    run(&mut sim, n, 400, &|sim| committed_under_claim(sim, n));
    sim.members.remove(&n);
    lock(&sim.world.broker).leave(n);
    // O goes on, snapshots and tries to delete what its snapshot supersedes.
    run(&mut sim, o, 200, &|_| false);
    sim.members.remove(&o);
    sim.join(&mut rng);
    sim.settle()?;
    check(&sim.world, &expected)?;
    let fenced = lock(&sim.world.db).refused_deletions > 0;
    Ok(fenced)
}

/// The takeover family over 300 seeds (`TALLY_SIM_SEEDS` to change, `TALLY_SIM_SEED` to
/// replay one), from a random first seed (printed). It must reach the fence in some of
/// them, or it proves nothing. Without the fence about one seed in ten fails (lots of an
/// account N never rewrote missing or stale, or a call debited twice).
#[test]
fn a_zombie_snapshot_deletes_nothing_a_later_lineage_needs() {
    let (fenced, count) = reached("takeover", 300, takeover);
    eprintln!("takeover: the fence refused a deletion in {fenced} of {count} seeds");
    // About one seed in four reaches it: a hundred that all miss means the family no
    // longer makes the case (a replayed seed may miss it).
    assert!(
        fenced > 0 || count < 100,
        "none of {count} seeds reached the deletion fence"
    );
}
