use anyhow::ensure;
use intercept_common::config::DropMode;
use intercept_ctl::{control::Maps, watchctl::WatchMaps};

use super::{Ctx, print_json};

/// `--drop-mode`: a name of [`DropMode`] (oldest: close the oldest half-open connection for each
/// new SYN; random: a random one).
fn drop_mode_arg(s: &str) -> Result<DropMode, String> {
    DropMode::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = DropMode::ALL.iter().map(|m| m.name()).collect();
        format!("'{s}' is not one of {}", names.join(", "))
    })
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface.
    pub iface: String,
    /// Watch timeout in seconds (Cisco default 30); halved while aggressive.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub watch_timeout: Option<u32>,
    /// Half-open connections above which the state turns aggressive.
    #[arg(long)]
    pub max_incomplete_high: Option<u32>,
    /// Half-open connections below which (with one-minute low) the state calms down.
    #[arg(long)]
    pub max_incomplete_low: Option<u32>,
    /// Connection requests per minute above which the state turns aggressive.
    #[arg(long)]
    pub one_minute_high: Option<u32>,
    /// Connection requests per minute below which (with max-incomplete low) it calms down.
    #[arg(long)]
    pub one_minute_low: Option<u32>,
    /// Which half-open connection a new SYN displaces while aggressive: oldest or random.
    #[arg(long, value_name = "oldest|random", value_parser = drop_mode_arg)]
    pub drop_mode: Option<DropMode>,
    /// Length of the "one-minute" window in seconds (default 60; shorten only for labs and tests).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub rate_window: Option<u32>,
    /// Gateway mode: the most spliced connections one client address (an IPv4 address, an IPv6
    /// /64) may hold; a proven client past it is refused with a RST. 0: no limit (default 4096,
    /// a 16th of the table).
    #[arg(long)]
    pub splices_per_source: Option<u32>,
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    super::require_healthy(ctx, &a.iface)?;
    // From the read to the last write: the daemon's tick and other operators wait (see
    // `intercept_ctl::lock`).
    let _lock = intercept_ctl::lock::settings(
        &intercept_ctl::pins::PinDir::new(ctx.netns, &a.iface),
        &a.iface,
    )?;
    let mut wm = WatchMaps::open(&a.iface, ctx.netns)?;
    let mut w = wm.watch()?;
    if let Some(v) = a.watch_timeout {
        w.timeout_ms = v * 1000;
    }
    w.max_incomplete_high = a.max_incomplete_high.unwrap_or(w.max_incomplete_high);
    w.max_incomplete_low = a.max_incomplete_low.unwrap_or(w.max_incomplete_low);
    w.one_minute_high = a.one_minute_high.unwrap_or(w.one_minute_high);
    w.one_minute_low = a.one_minute_low.unwrap_or(w.one_minute_low);
    w.rate_window_s = a.rate_window.unwrap_or(w.rate_window_s);
    w.splices_per_source = a.splices_per_source.unwrap_or(w.splices_per_source);
    ensure!(
        w.max_incomplete_low <= w.max_incomplete_high,
        "max-incomplete low ({}) is above high ({}): the low mark must not exceed the high one",
        w.max_incomplete_low,
        w.max_incomplete_high
    );
    ensure!(
        w.one_minute_low <= w.one_minute_high,
        "one-minute low ({}) is above high ({}): the low mark must not exceed the high one",
        w.one_minute_low,
        w.one_minute_high
    );
    wm.set_watch(&w)?;
    let mut m = Maps::open(&a.iface, ctx.netns)?;
    let cfg = match a.drop_mode {
        Some(d) => m.update_config(|c| c.drop_mode = d as u32)?,
        None => m.config()?,
    };
    let drop_mode = DropMode::from_u32(cfg.drop_mode).name();
    let v = serde_json::json!({
        "interface": a.iface,
        "watch_timeout_s": w.timeout_ms / 1000,
        "max_incomplete": { "high": w.max_incomplete_high, "low": w.max_incomplete_low },
        "one_minute": { "high": w.one_minute_high, "low": w.one_minute_low },
        "rate_window_s": w.rate_window_s,
        "drop_mode": drop_mode,
        "splices_per_source": w.splices_per_source,
    });
    if ctx.json {
        print_json(&v);
    } else {
        super::print_summary(&v);
    }
    Ok(())
}
