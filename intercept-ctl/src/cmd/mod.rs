//! One module per verb.
pub mod attach;
pub mod connections;
pub mod detach;
pub mod lab;
pub mod mode;
pub mod reload;
pub mod rotate;
pub mod run;
pub mod scope;
pub mod soak;
pub mod stats;
pub mod status;
pub mod synack;
pub mod thresholds;

/// What every verb gets from the global options.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// `--json`.
    pub json: bool,
    /// `--netns`.
    pub netns: Option<&'a str>,
}

/// Refuses to go on when the attachment of `iface` is dead (its interface or namespace was
/// deleted; see `intercept_ctl::health`): verbs that write the maps call it first, so none
/// reports success after writing into maps nothing reads.
///
/// # Errors
/// `CtlError::Unhealthy` saying why and what to run; as `health::check`.
pub fn require_healthy(ctx: &Ctx, iface: &str) -> anyhow::Result<()> {
    intercept_ctl::health::require_healthy(iface, ctx.netns)?;
    Ok(())
}

/// For verbs that only read an attachment's maps (`stats`, `connections`): says on stderr, with
/// the fix, when the attachment they read no longer protects the interface, so its figures are
/// not taken for live ones. (They still print: the counters of a dead attachment explain what
/// happened before it died.)
pub fn warn_if_unhealthy(ctx: &Ctx, iface: &str) {
    if let Ok(h) = intercept_ctl::health::check(iface, ctx.netns)
        && let Some(reason) = h.reason
    {
        eprintln!(
            "intercept-ctl: warning: these figures are of a dead attachment: {reason}; run `{}`",
            intercept_ctl::health::fix_command(iface, ctx.netns)
        );
    }
}

/// Prints a JSON value on stdout, one document per line.
pub fn print_json(v: &serde_json::Value) {
    println!("{v}");
}
