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

/// Prints `v` for a person: one aligned `key  value` line per leaf, nested keys joined with dots,
/// lists on one line (the same facts `--json` prints as a document).
pub fn print_summary(v: &serde_json::Value) {
    let mut rows = Vec::new();
    flatten("", v, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, val) in rows {
        println!("{k:<width$}  {val}");
    }
}

fn flatten(prefix: &str, v: &serde_json::Value, rows: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, val, rows);
            }
        }
        serde_json::Value::String(s) => rows.push((prefix.to_owned(), s.clone())),
        serde_json::Value::Null => rows.push((prefix.to_owned(), "-".to_owned())),
        serde_json::Value::Array(a) => rows.push((
            prefix.to_owned(),
            a.iter()
                .map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        )),
        other => rows.push((prefix.to_owned(), other.to_string())),
    }
}

/// Prints a JSON value on stdout, one document per line.
pub fn print_json(v: &serde_json::Value) {
    println!("{v}");
}
