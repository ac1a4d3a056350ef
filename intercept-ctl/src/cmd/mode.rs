use intercept_common::config::Mode;
use intercept_ctl::control::{Maps, ensure_syncookies};

use super::{Ctx, print_json};

/// Modes an operator can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Count only; everything passes.
    Off,
    /// SYN cookies in XDP for the protected scope.
    Intercept,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Off => Mode::Off,
            ModeArg::Intercept => Mode::Intercept,
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
    let mut m = Maps::open(&a.iface, ctx.netns)?;
    let before = Mode::from_u32(m.config()?.mode);
    let mode = Mode::from(a.mode);
    if mode == Mode::Intercept {
        if let Some(msg) = ensure_syncookies()? {
            eprintln!("intercept-ctl: {msg}");
        }
    }
    m.set_mode(mode)?;
    if ctx.json {
        print_json(
            &serde_json::json!({ "interface": a.iface, "mode": mode.name(), "previous": before.name() }),
        );
    } else {
        println!("{}: mode {} (was {})", a.iface, mode.name(), before.name());
    }
    Ok(())
}
