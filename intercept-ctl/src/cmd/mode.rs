use intercept_common::config::Mode;
use intercept_ctl::control::Maps;

use super::{Ctx, print_json};

/// Modes an operator can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Count only; everything passes.
    Off,
    /// SYN cookies in XDP for the protected scope.
    Intercept,
    /// SYNs reach the server; half-open handshakes are tracked and timed out (needs `run`).
    Watch,
    /// Watch while calm, intercept while the thresholds say aggressive (needs `run`).
    Auto,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Off => Mode::Off,
            ModeArg::Intercept => Mode::Intercept,
            ModeArg::Watch => Mode::Watch,
            ModeArg::Auto => Mode::Auto,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface.
    pub iface: String,
    /// New mode.
    #[arg(value_enum)]
    pub mode: ModeArg,
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    super::require_healthy(ctx, &a.iface)?;
    let mut m = Maps::open(&a.iface, ctx.netns)?;
    let mode = Mode::from(a.mode);
    let mut before = Mode::Off;
    // Entering intercept mode ensures tcp_syncookies; leaving it keeps handshakes in flight
    // verifying (`Maps::set_config`).
    m.update_config(|c| {
        before = Mode::from_u32(c.mode);
        c.mode = mode as u32;
    })?;
    if matches!(mode, Mode::Watch | Mode::Auto)
        && !intercept_ctl::daemon_running(&a.iface, ctx.netns)
    {
        eprintln!(
            "intercept-ctl: note: {} mode needs the controller running (`intercept-ctl run {}`) to time out half-open connections{}",
            mode.name(),
            a.iface,
            if mode == Mode::Auto {
                " and evaluate thresholds"
            } else {
                ""
            }
        );
    }
    if ctx.json {
        print_json(
            &serde_json::json!({ "interface": a.iface, "mode": mode.name(), "previous": before.name() }),
        );
    } else {
        println!("{}: mode {} (was {})", a.iface, mode.name(), before.name());
    }
    Ok(())
}
