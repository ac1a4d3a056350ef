//! Fault injection, for the tests that kill or fail the controller at chosen steps (attach,
//! reload, rotation, the daemon's tick) and check that the data path keeps its last good
//! configuration. Inert unless the environment variable `INTERCEPT_CTL_FAULT` names points
//! (comma-separated): then the process dies by SIGKILL at a named [`kill_point`], as if the
//! machine's OOM killer or an operator's `kill -9` struck there, and a named [`fail_point`]
//! returns an error.
use std::sync::OnceLock;

/// The variable that names the points.
pub const VAR: &str = "INTERCEPT_CTL_FAULT";

fn named(point: &str) -> bool {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS
        .get_or_init(|| {
            std::env::var(VAR)
                .map(|v| v.split(',').map(|p| p.trim().to_owned()).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|p| p == point)
}

/// Dies here by SIGKILL if `point` is named.
pub fn kill_point(point: &str) {
    if named(point) {
        eprintln!("intercept-ctl: fault injection: SIGKILL at {point}");
        // SAFETY: signalling our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Fails here if `point` is named.
///
/// # Errors
/// An error naming the point, when it is named.
pub fn fail_point(point: &str) -> anyhow::Result<()> {
    if named(point) {
        anyhow::bail!("fault injection: {point} failed");
    }
    Ok(())
}
