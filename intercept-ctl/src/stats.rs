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

    /// Per-counter differences `self - before`.
    #[must_use]
    pub fn delta(&self, before: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .map(|(c, v)| (*c, v - before.get(*c)))
                .collect(),
        )
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
    let arr: PerCpuArray<&MapData, CounterBlock> = PerCpuArray::try_from(&map)?;
    read_map(&arr)
}
