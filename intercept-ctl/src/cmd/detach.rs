use intercept_ctl::loader;

use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface to stop protecting.
    pub iface: String,
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    loader::detach(&a.iface, ctx.netns)?;
    if ctx.json {
        print_json(&serde_json::json!({ "interface": a.iface, "detached": true }));
    } else {
        println!("detached from {}", a.iface);
    }
    Ok(())
}
