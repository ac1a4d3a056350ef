//! Which flows are protected: destination (port, prefix) in SCOPE, source not in EXEMPT.
use aya_ebpf::maps::lpm_trie::Key;
use intercept_common::{
    config::{AddrKey, Config, ScopeKey, flags},
    cookie::Flow,
};

use crate::maps::{EXEMPT, EXEMPT_LIST, SCOPE, SCOPE_HOSTS, SCOPE_LIST};

/// Whether the flow's destination is protected (port-specific entry first, then any-port). A trie
/// the controller flagged empty is not looked up (an LPM lookup is the dearest step here), and
/// while every entry is a single address an exact-match hash stands in for the trie.
#[inline(always)]
pub fn protected(flow: &Flow, cfg: &Config) -> bool {
    if cfg.flags & flags::SCOPE_LIST != 0 {
        return SCOPE_LIST
            .get(0)
            .is_some_and(|l| l.protects(&flow.daddr, flow.dport));
    }
    if cfg.flags & flags::SCOPE_HOSTS != 0 {
        if cfg.flags & flags::SCOPE_PORTS != 0 {
            // SAFETY: read-only lookup.
            if let Some(v) = unsafe { SCOPE_HOSTS.get(&ScopeKey::new(flow.dport, &flow.daddr)) } {
                return v.protect != 0;
            }
        }
        if cfg.flags & flags::SCOPE_ANY_PORT != 0 {
            // SAFETY: read-only lookup.
            if let Some(v) = unsafe { SCOPE_HOSTS.get(&ScopeKey::new(0, &flow.daddr)) } {
                return v.protect != 0;
            }
        }
        return false;
    }
    if cfg.flags & flags::SCOPE_PORTS != 0 {
        let key = Key::new(
            ScopeKey::prefix_len(128),
            ScopeKey::new(flow.dport, &flow.daddr),
        );
        if let Some(v) = SCOPE.get(&key) {
            return v.protect != 0;
        }
    }
    if cfg.flags & flags::SCOPE_ANY_PORT != 0 {
        let key = Key::new(ScopeKey::prefix_len(128), ScopeKey::new(0, &flow.daddr));
        if let Some(v) = SCOPE.get(&key) {
            return v.protect != 0;
        }
    }
    false
}

/// Whether the flow's source is exempt.
#[inline(always)]
pub fn exempt(flow: &Flow, cfg: &Config) -> bool {
    if cfg.flags & flags::EXEMPT == 0 {
        return false;
    }
    if cfg.flags & flags::EXEMPT_LIST != 0 {
        return EXEMPT_LIST.get(0).is_some_and(|l| l.contains(&flow.saddr));
    }
    EXEMPT
        .get(&Key::new(128, AddrKey::new(&flow.saddr)))
        .is_some()
}

/// The common start of the SYN/ACK handlers: the configuration and the segment's flow if its
/// destination is protected; otherwise the verdict to return (passed, or malformed).
#[inline(always)]
pub fn in_scope(
    pkt: &crate::frame::Pkt<aya_ebpf::programs::XdpContext>,
    ip: &intercept_common::parse::Ip,
    tcp: &intercept_common::parse::Tcp,
) -> Result<(&'static Config, Flow), u32> {
    use intercept_common::Counter;

    use crate::stats::pass;
    let Some(cfg) = crate::maps::CONFIG.get(0) else {
        return Err(pass(Counter::Passed));
    };
    let Some(flow) = intercept_common::handshake::flow_of(pkt, ip, tcp) else {
        return Err(pass(Counter::Malformed));
    };
    if !protected(&flow, cfg) {
        return Err(pass(Counter::Passed));
    }
    Ok((cfg, flow))
}
