//! Reading the per-CPU counters, summed over CPUs.
use anyhow::Context as _;
use aya::maps::{Map, MapData, PerCpuArray};
use intercept_common::{
    Counter,
    maps::{self, CounterBlock},
};

use crate::{
    errors::{CtlError, explain},
    pins::PinDir,
};

/// Every counter, summed over CPUs, in [`Counter`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters(pub Vec<(Counter, u64)>);

impl Counters {
    /// The value of one counter.
    #[must_use]
    pub fn get(&self, c: Counter) -> u64 {
        self.0.iter().find(|(k, _)| *k == c).map_or(0, |(_, v)| *v)
    }

    /// Per-counter differences `self - before`; 0 for a counter that went backwards (a
    /// re-attachment starts every counter from zero again).
    #[must_use]
    pub fn delta(&self, before: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(c, v)| (*c, v.saturating_sub(before.get(*c))))
                .collect(),
        )
    }

    /// Counter `c`'s rate per second since `before`, `dt` seconds ago (0 if it went backwards).
    #[must_use]
    pub fn rate(&self, c: Counter, before: &Counters, dt: f64) -> f64 {
        self.get(c).saturating_sub(before.get(c)) as f64 / dt
    }

    /// `{"packets": N, ...}`.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(c, v)| (c.name().to_owned(), serde_json::Value::from(*v)))
                .collect(),
        )
    }
}

/// Sums every counter of a counters map over CPUs.
///
/// # Errors
/// If a lookup fails.
pub fn read_map<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, CounterBlock>,
) -> anyhow::Result<Counters> {
    let mut sum = [0u64; Counter::Count as usize];
    for entry in [maps::COUNTERS_DATA_PATH, maps::COUNTERS_CONTROLLER] {
        for block in map.get(&entry, 0).context("read COUNTERS")?.iter() {
            for (s, v) in sum.iter_mut().zip(block) {
                *s = s.wrapping_add(*v);
            }
        }
    }
    Ok(Counters(
        Counter::ALL
            .iter()
            .map(|c| (*c, sum[*c as usize]))
            .collect(),
    ))
}

/// Reads the counters pinned for `iface`.
///
/// # Errors
/// [`CtlError::NotAttached`] if nothing is pinned, or a bpf() failure.
pub fn read_pinned(iface: &str, netns: Option<&str>) -> anyhow::Result<Counters> {
    let pins = PinDir::new(netns, iface);
    let path = pins.map(maps::COUNTERS);
    if !path.exists() {
        return Err(CtlError::NotAttached {
            iface: iface.to_owned(),
            pin: pins.path().display().to_string(),
        }
        .into());
    }
    let data = MapData::from_pin(&path).map_err(|e| explain(e.into(), "open the counters map"))?;
    let map = Map::PerCpuArray(data);
    let arr: PerCpuArray<&MapData, CounterBlock> =
        PerCpuArray::try_from(&map).map_err(|e| crate::errors::other_build(e, maps::COUNTERS))?;
    read_map(&arr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A re-attachment starts the counters from zero: differences and rates across it are 0,
    /// never a wrapped or negative figure (nor an overflow panic).
    #[test]
    fn counters_that_went_backwards_count_zero() {
        let before = Counters(vec![(Counter::Packets, 1_000), (Counter::Syn, 10)]);
        let after = Counters(vec![(Counter::Packets, 5), (Counter::Syn, 30)]);
        let d = after.delta(&before);
        assert_eq!((d.get(Counter::Packets), d.get(Counter::Syn)), (0, 20));
        assert_eq!(after.rate(Counter::Packets, &before, 1.0), 0.0);
        assert_eq!(after.rate(Counter::Syn, &before, 2.0), 10.0);
    }
}
