use intercept_common::Counter;
use intercept_ctl::stats::{Counters, read_pinned};

use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface whose counters to print.
    pub iface: String,
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
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
        println!("{:<12} {:>14}  {}", k.name(), v, Counter::help(*k));
    }
}
