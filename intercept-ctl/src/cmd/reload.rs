use intercept_common::config::Mode;
use intercept_ctl::config;

use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface.
    pub iface: String,
    /// Configuration file; validated whole, and applied only if valid.
    #[arg(long, value_name = "FILE")]
    pub config: std::path::PathBuf,
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    let s = config::load(&a.config)?;
    super::require_healthy(ctx, &a.iface)?;
    config::apply(&a.iface, ctx.netns, &s)?;
    if ctx.json {
        print_json(
            &serde_json::json!({ "interface": a.iface, "reloaded": a.config.display().to_string(), "mode": s.mode.map(Mode::name), "protect": s.protect.len(), "exempt": s.exempt.len() }),
        );
    } else {
        println!(
            "{}: applied {} (mode {}, {} protected entries, {} exempt)",
            a.iface,
            a.config.display(),
            s.mode.map_or("unchanged", Mode::name),
            s.protect.len(),
            s.exempt.len()
        );
    }
    Ok(())
}
