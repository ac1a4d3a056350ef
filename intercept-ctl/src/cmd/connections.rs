use std::net::IpAddr;

use intercept_common::{
    config::{FlowKey, Mode},
    cookie::ip_of,
};
use intercept_ctl::{
    control::Maps,
    watchctl::{WatchMaps, monotonic_ns},
};

use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface.
    pub iface: String,
}

fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The half-open table, in the spirit of Cisco's `show tcp intercept connections`.
pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    super::warn_if_unhealthy(ctx, &a.iface);
    let wm = WatchMaps::open(&a.iface, ctx.netns)?;
    let cfg = Maps::open(&a.iface, ctx.netns)?.config()?;
    let w = wm.watch()?;
    let timeout_ms = u64::from(w.timeout_ms) / if cfg.aggressive != 0 { 2 } else { 1 };
    let now = monotonic_ns();
    // Closing: timed out, to be closed on the server at the controller's next tick.
    let mut rows: Vec<(FlowKey, u64, u32, &str)> = wm
        .half_open
        .iter()
        .filter_map(Result::ok)
        .map(|(k, e)| {
            let state = if e.closing != 0 { "CLOSING" } else { "SYNRCVD" };
            (
                k,
                now.saturating_sub(e.first_seen_ns) / 1_000_000,
                e.syns,
                state,
            )
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    let mode = Mode::effective(&cfg).name();
    if ctx.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(k, age, syns, state)| {
                serde_json::json!({
                    "client": endpoint(ip_of(&k.saddr), k.sport),
                    "server": endpoint(ip_of(&k.daddr), k.dport),
                    "state": state,
                    "age_ms": age,
                    "timeout_ms": timeout_ms.saturating_sub(*age),
                    "syns": syns,
                    "mode": mode,
                })
            })
            .collect();
        print_json(&serde_json::json!({ "interface": a.iface, "connections": v }));
    } else {
        println!(
            "{:<45} {:<45} {:<8} {:>9} {:>9} {:>5} Mode",
            "Client", "Server", "State", "Age(s)", "Left(s)", "SYNs"
        );
        for (k, age, syns, state) in rows {
            println!(
                "{:<45} {:<45} {:<8} {:>9.1} {:>9.1} {:>5} {}",
                endpoint(ip_of(&k.saddr), k.sport),
                endpoint(ip_of(&k.daddr), k.dport),
                state,
                age as f64 / 1000.0,
                timeout_ms.saturating_sub(age) as f64 / 1000.0,
                syns,
                mode
            );
        }
    }
    Ok(())
}
