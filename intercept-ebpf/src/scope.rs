//! Which flows are protected: destination (port, prefix) in SCOPE, source not in EXEMPT.
use aya_ebpf::maps::lpm_trie::Key;
use intercept_common::{
    config::{AddrKey, ScopeKey},
    cookie::Flow,
};

use crate::maps::{EXEMPT, SCOPE};

/// Whether the flow's destination is protected (port-specific entry first, then any-port).
#[inline(always)]
pub fn protected(flow: &Flow) -> bool {
    for port in [flow.dport, 0] {
        let key = Key::new(ScopeKey::prefix_len(128), ScopeKey::new(port, &flow.daddr));
        if let Some(v) = SCOPE.get(&key) {
            return v.protect != 0;
        }
    }
    false
}

/// Whether the flow's source is exempt.
#[inline(always)]
pub fn exempt(flow: &Flow) -> bool {
    EXEMPT
        .get(&Key::new(128, AddrKey::new(&flow.saddr)))
        .is_some()
}
