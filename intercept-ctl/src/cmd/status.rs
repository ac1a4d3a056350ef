use intercept_common::config::{Mode, flags};
use intercept_ctl::{
    control::Maps,
    health, loader,
    pins::PinDir,
    watchctl::{WatchMaps, cause_name, monotonic_ns},
};

use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface (default: every attachment of this network namespace).
    pub iface: Option<String>,
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    let all = if let Some(iface) = &a.iface {
        vec![one(ctx, iface)?]
    } else {
        let pins = PinDir::new(ctx.netns, "x");
        let dir = pins.path().parent().expect("pin dir has a parent");
        let mut names: Vec<String> = std::fs::read_dir(dir).map_or_default(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("netns-"))
                .collect()
        });
        names.sort();
        names
            .iter()
            .map(|n| one(ctx, n))
            .collect::<anyhow::Result<_>>()?
    };
    // What the kernel keeps an attachment from doing, one line each (also in the JSON): it
    // protects, so the exit status stays 0.
    for v in &all {
        for l in v["limitations"].as_array().into_iter().flatten() {
            eprintln!(
                "intercept-ctl: warning: {}: {}",
                v["interface"].as_str().unwrap_or_default(),
                l.as_str().unwrap_or_default()
            );
        }
    }
    let dead: Vec<(String, String, bool)> = all
        .iter()
        .filter(|v| v["healthy"] == false)
        .map(|v| {
            (
                v["interface"].as_str().unwrap_or_default().to_owned(),
                v["health"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                v["health"]["problem"] == "kernel_settings"
                    || v["health"]["problem"] == "forwarding_off",
            )
        })
        .collect();
    match (&a.iface, ctx.json) {
        (Some(_), true) => print_json(&all[0]),
        (None, true) => print_json(&serde_json::Value::Array(all)),
        (_, false) if all.is_empty() => {
            println!("no attachment here (attach one with `intercept-ctl attach <iface>`)");
        }
        (_, false) => {
            for v in all {
                super::print_summary(&v);
                println!();
            }
        }
    }
    // Printed in full above; a dead attachment also makes the exit status 3 (main), with every
    // one named on stderr.
    let mut errors = dead.iter().map(|(iface, reason, settings)| {
        if *settings {
            intercept_ctl::errors::CtlError::NotProtected {
                iface: iface.clone(),
                reason: reason.clone(),
            }
        } else {
            health::unhealthy(iface, ctx.netns, reason)
        }
    });
    let first = errors.next();
    for e in errors {
        eprintln!("intercept-ctl: error: {e}");
    }
    first.map_or(Ok(()), |e| Err(e.into()))
}

/// The status of one attachment: never the secrets, only their generation.
fn one(ctx: &Ctx, iface: &str) -> anyhow::Result<serde_json::Value> {
    let m = Maps::open(iface, ctx.netns)?;
    let health = health::check(iface, ctx.netns)?;
    let c = m.config()?;
    let s = m.secrets()?;
    let scope = m.scope_list()?;
    let exempt = m.exempt_list()?;
    let pins = PinDir::new(ctx.netns, iface);
    let w = WatchMaps::open(iface, ctx.netns)?.watch()?;
    let info = m.info()?;
    let table = m.socket_table()?;
    let now = monotonic_ns();
    let ago = |t: u64| {
        if t == 0 {
            serde_json::Value::Null
        } else {
            serde_json::json!((now.saturating_sub(t) / 1_000_000_000))
        }
    };
    Ok(serde_json::json!({
        "interface": iface,
        "healthy": health.healthy,
        "health": health,
        "pin_dir": pins.path().display().to_string(),
        "program_id": aya::programs::ProgramInfo::from_pin(pins.prog()).ok().map(|i| i.id()),
        "tc_program_id": aya::programs::ProgramInfo::from_pin(pins.path().join("prog_tc")).ok().map(|i| i.id()),
        "tc_handoff_attached": pins.path().join("link_tc").exists(),
        "engine": intercept_ctl::engine::recorded(&pins).name(),
        "mode": Mode::from_u32(c.mode).name(),
        "active_mode": Mode::effective(&c).name(),
        "ecn": c.flags & flags::ECN != 0 && c.flags & flags::KERNEL_COOKIE == 0,
        "scope_entries": scope.len(),
        "scope_flags": { "ports": c.flags & flags::SCOPE_PORTS != 0, "any_port": c.flags & flags::SCOPE_ANY_PORT != 0, "exempt": c.flags & flags::EXEMPT != 0 },
        "scope_lookup": flags::scope_lookup(c.flags),
        "exempt_lookup": flags::exempt_lookup(c.flags),
        "socket_table": {
            "tracepoint_attached": pins.path().join("link_track").exists(),
            "netns_filter": std::fs::symlink_metadata(pins.path().join(loader::NETNS_FILTER_PIN)).is_ok(),
            "request_sockets_tracked": pins.path().join(loader::REQSK_LINK_PIN).exists(),
            "request_socket_program": std::fs::read_link(pins.path().join(loader::REQSK_KIND_PIN)).ok().map(|k| k.display().to_string()),
            "seeded": table.seeded,
            "refused_inserts": table.refused,
            "authoritative": table.authoritative(now),
            "lookup_window_s": table.lookup_until_ns.saturating_sub(now).div_ceil(1_000_000_000),
        },
        "exempt_entries": exempt.len(),
        "synack": { "mss_v4": c.mss_v4, "mss_v6": c.mss_v6, "window": c.window, "wscale": c.wscale, "ttl": c.ttl },
        "secret_generation": s.generation,
        "secret_age_s": ago(info.secret_set_ns),
        "xdp_mode": match info.xdp_mode { 1 => "native", 2 => "generic", _ => "unknown" },
        "attached_s_ago": ago(info.attached_ns),
        "kernel": intercept_ctl::errors::kernel_features(),
        "watch": {
            "aggressive": w.aggressive != 0,
            "half_open": w.half_open,
            "one_minute": w.one_minute,
            "timeout_s": w.timeout_ms / 1000,
            "max_incomplete": { "high": w.max_incomplete_high, "low": w.max_incomplete_low },
            "one_minute_thresholds": { "high": w.one_minute_high, "low": w.one_minute_low },
            "drop_mode": intercept_common::config::DropMode::from_u32(c.drop_mode).name(),
            "last_transition_s_ago": if w.last_transition_ns == 0 { serde_json::Value::Null } else { serde_json::json!(monotonic_ns().saturating_sub(w.last_transition_ns) as f64 / 1e9) },
            "last_cause": cause_name(w.last_cause),
        },
        "gateway": gateway(&pins, iface, ctx.netns, &health)?,
        "controller_running": intercept_ctl::daemon_running(iface, ctx.netns),
        "limitations": limitations(&pins, iface, ctx.netns),
    }))
}

/// A gateway's side of the status (`null` for a host's attachment): its server-facing
/// interface and link, and its spliced connections by state.
fn gateway(
    pins: &PinDir,
    iface: &str,
    netns: Option<&str>,
    health: &health::Health,
) -> anyhow::Result<serde_json::Value> {
    let Some(server) = intercept_ctl::gateway::ServerIface::read(pins) else {
        return Ok(serde_json::Value::Null);
    };
    let splice = intercept_ctl::gateway::open_splice(iface, netns)?;
    let by_state = intercept_ctl::gateway::count_by_state(&splice)?;
    let fwd = intercept_ctl::sysctl::forwarding();
    let refusing = intercept_ctl::gateway::refusing_servers(iface, netns, monotonic_ns())?;
    let limit = WatchMaps::open(iface, netns)?.watch()?.splices_per_source;
    let at_limit = intercept_ctl::gateway::SourceCounts::open(iface, netns)?.at_limit(limit);
    Ok(serde_json::json!({
        "server_interface": server.name,
        "forwarding": server.forward.name(),
        "server_ifindex": server.ifindex,
        "server_link_attached": health.server.as_ref().is_some_and(|s| s.link_ifindex != 0 && s.ifindex == Some(s.link_ifindex)),
        "splice_entries": by_state.values().sum::<u64>(),
        "splice_by_state": by_state,
        "forwarding_off": fwd.off,
        "splices_per_source": limit,
        // Buckets of client addresses holding the limit (refused until some of theirs end).
        "sources_at_limit": at_limit,
        // Servers whose clients are not offered the options they refuse (at most 64 shown).
        "servers_refusing_options": refusing.len(),
        "refused_options": refusing.into_iter().take(64).collect::<std::collections::BTreeMap<_, _>>(),
    }))
}

/// What the kernel keeps the attachment from doing ([`loader::limitations`]), and what its
/// counters show it could not do: SYNs the kernel-cookie engine left to the kernel because their
/// listener chose its own receive window.
fn limitations(pins: &PinDir, iface: &str, netns: Option<&str>) -> Vec<String> {
    let mut out = loader::limitations(pins);
    if intercept_ctl::engine::recorded(pins) == intercept_ctl::engine::Engine::KernelCookie
        && let Ok(c) = intercept_ctl::stats::read_pinned(iface, netns)
        && c.get(intercept_common::Counter::SynOwnWindow) > 0
    {
        out.push(format!(
            "{} protected SYNs went to listeners that set their own receive window (SO_RCVBUF, \
             TCP_WINDOW_CLAMP), whose window scale only the kernel knows: the kernel answered \
             them with its own cookies (no SYN queue, but an skb and its softirq time each); the \
             kfunc engine (Linux >= 6.9) answers them in XDP",
            c.get(intercept_common::Counter::SynOwnWindow)
        ));
    }
    if intercept_ctl::gateway::ServerIface::read(pins).is_some()
        && !intercept_ctl::daemon_running(iface, netns)
    {
        out.push(format!(
            "no controller runs for this gateway: its spliced connections are never freed, SYNs \
             unanswered by a server are not sent again, and once a client address holds its \
             splices_per_source (or the table its {}) proven clients are refused; run `{}`",
            intercept_common::maps::SPLICE_ENTRIES,
            run_command(iface, netns)
        ));
    }
    out
}

/// The command that runs the controller for `iface`.
fn run_command(iface: &str, netns: Option<&str>) -> String {
    match netns {
        Some(ns) => format!("intercept-ctl --netns {ns} run {iface}"),
        None => format!("intercept-ctl run {iface}"),
    }
}
