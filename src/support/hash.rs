//! The hash maps and ids of the cores: random in the daemons (a peer
//! cannot aim collisions at a server it cannot predict), fixed in test
//! builds, so the simulator's runs are the same for the same seed.

use std::cell::Cell;

use uuid::Uuid;

#[cfg(not(test))]
pub type State = std::collections::hash_map::RandomState;
#[cfg(test)]
pub type State = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

pub type Map<K, V> = std::collections::HashMap<K, V, State>;
pub type Set<T> = std::collections::HashSet<T, State>;

thread_local! {
    /// Test builds: a seeded generator for this thread's ids, once seeded.
    static SEEDED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// A new id: random, or in a test that seeded this thread, drawn from the
/// seed (xorshift64*).
pub fn new_id() -> Uuid {
    let drawn = SEEDED.with(|s| {
        let mut x = s.get()?;
        let mut next = || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let (hi, lo) = (next(), next());
        s.set(Some(x));
        Some(
            uuid::Builder::from_random_bytes(
                ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes(),
            )
            .into_uuid(),
        )
    });
    drawn.unwrap_or_else(Uuid::new_v4)
}

/// Draw this thread's ids from `seed` from now on (the simulator).
#[cfg(test)]
pub fn seed_ids(seed: u64) {
    SEEDED.with(|s| s.set(Some(seed | 1)));
}
