use anyhow::ensure;
use intercept_common::config::{Config, DropMode};
use intercept_ctl::{control::Maps, watchctl::WatchMaps};

use super::{Ctx, print_json};

/// Displacement policy while aggressive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DropArg {
    /// Close the oldest half-open connection for each new SYN.
    Oldest,
    /// Close a random half-open connection for each new SYN.
    Random,
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
    /// Which half-open connection a new SYN displaces while aggressive.
    #[arg(long, value_enum)]
    pub drop_mode: Option<DropArg>,
    /// Length of the "one-minute" window in seconds (default 60; shorten only for labs and tests).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub rate_window: Option<u32>,
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
    if let Some(d) = a.drop_mode {
        let mut m = Maps::open(&a.iface, ctx.netns)?;
        let cfg = Config {
            drop_mode: match d {
                DropArg::Oldest => DropMode::Oldest,
                DropArg::Random => DropMode::Random,
            } as u32,
            ..m.config()?
        };
        m.set_config(&cfg)?;
    }
    let drop_mode =
        if Maps::open(&a.iface, ctx.netns)?.config()?.drop_mode == DropMode::Random as u32 {
            "random"
        } else {
            "oldest"
        };
    let v = serde_json::json!({
        "interface": a.iface,
        "watch_timeout_s": w.timeout_ms / 1000,
        "max_incomplete": { "high": w.max_incomplete_high, "low": w.max_incomplete_low },
        "one_minute": { "high": w.one_minute_high, "low": w.one_minute_low },
        "rate_window_s": w.rate_window_s,
        "drop_mode": drop_mode,
    });
    if ctx.json {
        print_json(&v);
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}
