use intercept_common::Counter;
use intercept_ctl::stats::{Counters, read_pinned};

use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface whose counters to print.
    pub iface: String,
    /// Print again every second with per-second rates, until Ctrl-C (or --count times).
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop after this many updates.
    #[arg(long, requires = "watch")]
    pub count: Option<u64>,
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    super::warn_if_unhealthy(ctx, &a.iface);
    if a.watch {
        return watch(ctx, a);
    }
    let c = read_pinned(&a.iface, ctx.netns)?;
    if ctx.json {
        print_json(&serde_json::json!({ "interface": a.iface, "counters": c.to_json() }));
    } else {
        print_table(&c);
    }
    Ok(())
}

/// `name  value  help` per counter.
pub fn print_table(c: &Counters) {
    for (k, v) in &c.0 {
        println!("{:<20} {:>14}  {}", k.name(), v, Counter::help(*k));
    }
}

/// `stats --watch`: every counter with its per-second rate, once a second.
fn watch(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    // Each read waits for an attach or detach in progress, and holds the next off only while
    // it reads: held for the whole watch, it would hold them off until Ctrl-C.
    let read = || {
        let _held = intercept_ctl::loader::wait_for_attaches()?;
        read_pinned(&a.iface, ctx.netns)
    };
    let mut prev = read()?;
    let mut last = std::time::Instant::now();
    let mut n = 0;
    while a.count.is_none_or(|c| n < c) {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = read()?;
        let dt = last.elapsed().as_secs_f64();
        last = std::time::Instant::now();
        if ctx.json {
            let rates: serde_json::Map<_, _> = now
                .0
                .iter()
                .map(|(c, _)| {
                    (
                        c.name().to_owned(),
                        serde_json::json!(now.rate(*c, &prev, dt)),
                    )
                })
                .collect();
            print_json(
                &serde_json::json!({ "interface": a.iface, "counters": now.to_json(), "rates": rates }),
            );
        } else {
            println!("--- {} ---", a.iface);
            for (k, v) in &now.0 {
                println!(
                    "{:<20} {:>14} {:>12.0}/s",
                    k.name(),
                    v,
                    now.rate(*k, &prev, dt)
                );
            }
        }
        prev = now;
        n += 1;
    }
    Ok(())
}
