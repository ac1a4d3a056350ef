use std::time::{Duration, Instant};

use intercept_common::Counter;
use intercept_ctl::{
    loader::{self, AttachMode, Program},
    pins::PinDir,
    stats::{Counters, read_pinned},
};

use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface to protect.
    pub iface: String,
    /// XDP mode.
    #[arg(long, value_enum, default_value = "native")]
    pub xdp_mode: AttachMode,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
}

/// Counters shown in the live view, in order.
pub const LIVE: [Counter; 8] = [
    Counter::Packets,
    Counter::Syn,
    Counter::SynAck,
    Counter::Ack,
    Counter::Rst,
    Counter::NonTcp,
    Counter::Malformed,
    Counter::Passed,
];

/// Prints one live line (or JSON object) with totals and per-second rates.
pub fn print_live(ctx: &Ctx, t: f64, now: &Counters, prev: &Counters, dt: f64) {
    if ctx.json {
        let rates: serde_json::Map<_, _> = LIVE
            .iter()
            .map(|c| {
                (
                    c.name().to_owned(),
                    serde_json::json!((now.get(*c) - prev.get(*c)) as f64 / dt),
                )
            })
            .collect();
        print_json(&serde_json::json!({ "t": t, "counters": now.to_json(), "rates": rates }));
        return;
    }
    let mut line = format!("{t:>6.1}s");
    for c in LIVE {
        let rate = (now.get(c) - prev.get(c)) as f64 / dt;
        line.push_str(&format!("  {}={} ({:.0}/s)", c.name(), now.get(c), rate));
    }
    println!("{line}");
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    let pins = PinDir::new(ctx.netns, &a.iface);
    let ours = !pins.is_attached();
    if ours {
        let att = loader::attach(&a.iface, ctx.netns, Program::Intercept, a.xdp_mode)?;
        eprintln!(
            "intercept-ctl: attached to {} (program id {})",
            att.interface, att.program_id
        );
    } else {
        eprintln!(
            "intercept-ctl: already attached to {}; watching only",
            a.iface
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let start = Instant::now();
        let mut prev = read_pinned(&a.iface, ctx.netns)?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tokio::signal::ctrl_c() => break,
            }
            let now = read_pinned(&a.iface, ctx.netns)?;
            print_live(
                ctx,
                start.elapsed().as_secs_f64(),
                &now,
                &prev,
                last.elapsed().as_secs_f64(),
            );
            prev = now;
            last = Instant::now();
            if a.seconds
                .is_some_and(|s| start.elapsed() >= Duration::from_secs(s))
            {
                break;
            }
        }
        anyhow::Ok(())
    });
    if ours {
        loader::detach(&a.iface, ctx.netns)?;
        eprintln!("intercept-ctl: detached from {}", a.iface);
    }
    result
}
