//! Prometheus text exposition (format 0.0.4) of one attachment, rendered at scrape time from the
//! pinned maps: every counter summed over CPUs as `intercept_<name>_total`, and gauges for the
//! watch state. The renderer's own failures are counted in `intercept_scrape_errors_total`.
use std::fmt::Write as _;

use intercept_common::{Counter, config::Mode};

use crate::{control::Maps, stats::read_pinned, watchctl::WatchMaps};

/// Renders the exposition text for `iface`; on failure, the error count alone (and the failure
/// is counted in `errors`).
#[must_use]
pub fn render(iface: &str, netns: Option<&str>, errors: &mut u64) -> String {
    if let Ok(s) = try_render(iface, netns, *errors) {
        s
    } else {
        *errors += 1;
        errors_only(iface, *errors)
    }
}

fn label(iface: &str) -> String {
    format!(
        "interface=\"{}\"",
        iface.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

fn errors_only(iface: &str, errors: u64) -> String {
    format!(
        "# HELP intercept_scrape_errors_total Scrapes that could not read the maps\n# TYPE intercept_scrape_errors_total counter\nintercept_scrape_errors_total{{{}}} {errors}\n",
        label(iface)
    )
}

fn try_render(iface: &str, netns: Option<&str>, errors: u64) -> anyhow::Result<String> {
    let c = read_pinned(iface, netns)?;
    let m = Maps::open(iface, netns)?;
    let cfg = m.config()?;
    let secrets = m.secrets()?;
    let w = WatchMaps::open(iface, netns)?.watch()?;
    let l = label(iface);
    let mut s = String::new();
    for k in Counter::ALL {
        let name = format!("intercept_{}_total", k.name());
        writeln!(s, "# HELP {name} {}", k.help())?;
        writeln!(s, "# TYPE {name} counter")?;
        writeln!(s, "{name}{{{l}}} {}", c.get(k))?;
    }
    for (name, help, v) in [
        (
            "intercept_half_open",
            "Half-open connections tracked in watch mode",
            u64::from(w.half_open),
        ),
        (
            "intercept_one_minute_requests",
            "Connection requests in the last rate window",
            u64::from(w.one_minute),
        ),
        (
            "intercept_aggressive",
            "1 while the thresholds hold the aggressive state",
            u64::from(w.aggressive),
        ),
        (
            "intercept_secret_generation",
            "Cookie secret rotations since attach, plus one",
            u64::from(secrets.generation),
        ),
        (
            "intercept_attachment_healthy",
            "1 while the programs run on the interface (0: it was deleted, nothing protects it)",
            u64::from(crate::health::check(iface, netns)?.healthy),
        ),
    ] {
        writeln!(
            s,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{l}}} {v}"
        )?;
    }
    writeln!(
        s,
        "# HELP intercept_mode Configured and active mode (value 1)\n# TYPE intercept_mode gauge"
    )?;
    writeln!(
        s,
        "intercept_mode{{{l},mode=\"{}\",active=\"{}\"}} 1",
        Mode::from_u32(cfg.mode).name(),
        Mode::effective(&cfg).name()
    )?;
    s.push_str(&errors_only(iface, errors));
    Ok(s)
}
