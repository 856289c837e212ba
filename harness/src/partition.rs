//! Shards of a scenario run, for a CI matrix that spreads the scenarios over runners or bench
//! places: `--partition K/N` (or `hash:K/N`, as nextest spells it) plays the scenarios whose
//! name hashes to shard K of N. The hash is FNV-1a over the name's bytes, fixed here, so a
//! scenario stays in its shard whichever otahil, machine or set of other scenarios runs it, and
//! the N shards together play every scenario exactly once.

use std::fmt;
use std::str::FromStr;

/// Shard `index` (1-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub index: u32,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("partition `{text}`: expected K/N (or hash:K/N) with 1 ≤ K ≤ N, such as 1/4")]
pub struct PartitionError {
    text: String,
}

impl FromStr for Partition {
    type Err = PartitionError;

    fn from_str(text: &str) -> Result<Partition, PartitionError> {
        let err = || PartitionError { text: text.to_string() };
        let spec = text.strip_prefix("hash:").unwrap_or(text);
        let (k, n) = spec.split_once('/').ok_or_else(err)?;
        let (index, count): (u32, u32) = (k.parse().map_err(|_| err())?, n.parse().map_err(|_| err())?);
        if index == 0 || count == 0 || index > count {
            return Err(err());
        }
        Ok(Partition { index, count })
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Partition {
    /// Whether the scenario named `name` is in this shard.
    pub fn takes(&self, name: &str) -> bool {
        shard_of(name, self.count) == self.index
    }
}

/// The shard (1-based) of `count` the name `name` falls in.
pub fn shard_of(name: &str, count: u32) -> u32 {
    // FNV-1a, 64 bits: small, and its value for a name never changes.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(count.max(1))) as u32 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_read_and_refused_with_the_form_they_take() {
        assert_eq!("2/4".parse(), Ok(Partition { index: 2, count: 4 }));
        assert_eq!("hash:1/1".parse(), Ok(Partition { index: 1, count: 1 }));
        for bad in ["0/3", "4/3", "3/0", "a/b", "3", "", "1/2/3", "count:1/2", "-1/2"] {
            let e = bad.parse::<Partition>().unwrap_err();
            assert!(e.to_string().contains("expected K/N"), "{bad}: {e}");
        }
    }

    #[test]
    fn shards_cover_every_name_once_and_never_move() {
        let names: Vec<String> = (0..500).map(|i| format!("scenario-{i}")).collect();
        for count in 1..=7 {
            for name in &names {
                let taking = (1..=count).filter(|&k| Partition { index: k, count }.takes(name)).count();
                assert_eq!(taking, 1, "{name} in {taking} of {count} shards");
            }
        }
        // Spread: no shard of 4 gets less than a sixth of 500 names.
        for k in 1..=4 {
            let n = names.iter().filter(|s| Partition { index: k, count: 4 }.takes(s)).count();
            assert!(n > 500 / 6, "shard {k}/4 has {n}");
        }
        // Stable across versions: these values are part of the interface (a CI matrix's shards).
        // (Computed apart from this code: FNV-1a 64 of the name, mod 4, plus 1.)
        assert_eq!(
            [shard_of("happy-path", 4), shard_of("power-cut-sweep", 4), shard_of("pull-happy-path", 4)],
            [4, 3, 4]
        );
        assert_eq!(shard_of("", 3), (0xcbf2_9ce4_8422_2325_u64 % 3) as u32 + 1);
    }
}
