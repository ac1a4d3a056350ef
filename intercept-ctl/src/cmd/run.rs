use std::time::{Duration, Instant};

use anyhow::Context as _;
use intercept_common::Counter;
use intercept_ctl::{
    loader::{self, AttachMode, Program},
    pid_file,
    pins::PinDir,
    stats::{Counters, read_pinned},
    watchctl::Watcher,
};

use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface to protect.
    pub iface: String,
    /// XDP mode.
    #[arg(long, value_enum, default_value = "native")]
    pub xdp_mode: AttachMode,
    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// On exit, leave the protection attached (default: detach if this run attached it).
    #[arg(long)]
    pub keep: bool,
    /// Print no live counters (transitions are still logged on stderr).
    #[arg(long)]
    pub quiet: bool,
}

/// Counters shown in the live view, in order.
pub const LIVE: [Counter; 8] = [
    Counter::Packets,
    Counter::Syn,
    Counter::SynAckSent,
    Counter::AckValid,
    Counter::Dropped,
    Counter::HalfOpenNew,
    Counter::HalfOpenTimedOut,
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

/// The daemon: attach if needed, then every 100 ms run the watch controller (timeouts, displaced
/// connections, thresholds, auto mode) and once a second print counters, until the time is up or
/// SIGINT/SIGTERM arrives.
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
            "intercept-ctl: adopting the protection already attached to {}",
            a.iface
        );
    }
    let pid = pid_file(&a.iface, ctx.netns);
    std::fs::create_dir_all(pid.parent().expect("parent")).context("create /run/xdp-intercept")?;
    std::fs::write(&pid, format!("{}\n", std::process::id()))
        .with_context(|| format!("write {}", pid.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let mut watcher = Watcher::open(&a.iface, ctx.netns)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let start = Instant::now();
        let mut prev = read_pinned(&a.iface, ctx.netns)?;
        let mut last = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
            let t = watcher.tick()?;
            if let Some((aggressive, cause)) = t.transition {
                eprintln!(
                    "intercept-ctl: {:.1}s state {} ({cause}): half-open {}, one-minute {}",
                    start.elapsed().as_secs_f64(),
                    if aggressive { "aggressive" } else { "calm" },
                    t.half_open,
                    t.one_minute
                );
            }
            if last.elapsed() >= Duration::from_secs(1) {
                let now = read_pinned(&a.iface, ctx.netns)?;
                if !a.quiet {
                    print_live(
                        ctx,
                        start.elapsed().as_secs_f64(),
                        &now,
                        &prev,
                        last.elapsed().as_secs_f64(),
                    );
                }
                prev = now;
                last = Instant::now();
            }
            if a.seconds
                .is_some_and(|s| start.elapsed() >= Duration::from_secs(s))
            {
                break;
            }
        }
        anyhow::Ok(())
    });
    let _ = std::fs::remove_file(&pid);
    if ours && !a.keep {
        loader::detach(&a.iface, ctx.netns)?;
        eprintln!("intercept-ctl: detached from {}", a.iface);
    } else {
        eprintln!("intercept-ctl: protection left running on {}", a.iface);
    }
    result
}
