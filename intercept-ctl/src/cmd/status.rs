use intercept_common::config::{Mode, flags};
use intercept_ctl::{control::Maps, pins::PinDir};

use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface.
    pub iface: String,
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    let m = Maps::open(&a.iface, ctx.netns)?;
    let c = m.config()?;
    let s = m.secrets()?;
    let scope = m.scope_list()?;
    let exempt = m.exempt_list()?;
    let pins = PinDir::new(ctx.netns, &a.iface);
    let v = serde_json::json!({
        "interface": a.iface,
        "pin_dir": pins.path().display().to_string(),
        "mode": Mode::from_u32(c.mode).name(),
        "ecn": c.flags & flags::ECN != 0,
        "scope_entries": scope.len(),
        "scope_flags": { "ports": c.flags & flags::SCOPE_PORTS != 0, "any_port": c.flags & flags::SCOPE_ANY_PORT != 0, "exempt": c.flags & flags::EXEMPT != 0 },
        "exempt_entries": exempt.len(),
        "synack": { "mss_v4": c.mss_v4, "mss_v6": c.mss_v6, "window": c.window, "wscale": c.wscale, "ttl": c.ttl },
        "secret_generation": s.generation,
        "tc_handoff_attached": pins.path().join("link_tc").exists(),
    });
    if ctx.json {
        print_json(&v);
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}
