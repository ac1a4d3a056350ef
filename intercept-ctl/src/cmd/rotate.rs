use intercept_ctl::control::Maps;

use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface.
    pub iface: String,
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    super::require_healthy(ctx, &a.iface)?;
    let generation = Maps::open(&a.iface, ctx.netns)?.rotate_secret()?;
    if ctx.json {
        print_json(&serde_json::json!({ "interface": a.iface, "secret_generation": generation }));
    } else {
        println!(
            "{}: new cookie secret (generation {generation}); cookies of the previous one still verify",
            a.iface
        );
    }
    Ok(())
}
