//! Fault injection, for the tests that kill or fail the controller at chosen steps (attach,
//! reload, rotation, the daemon's tick) and check that the data path keeps its last good
//! configuration. Inert unless the environment variable `INTERCEPT_CTL_FAULT` names points
//! (comma-separated; `point#N` strikes at the Nth pass only, e.g. a daemon's second reload):
//! then the process dies by SIGKILL at a named [`kill_point`], as if the OOM killer or an
//! operator's `kill -9` struck there, and a named [`fail_point`] returns an error.
use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

/// The variable that names the points.
pub const VAR: &str = "INTERCEPT_CTL_FAULT";

/// Whether this pass through `point` is one the variable names.
fn strikes(point: &str) -> bool {
    static POINTS: OnceLock<Vec<(String, Option<u64>)>> = OnceLock::new();
    static PASSES: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
    let points = POINTS.get_or_init(|| {
        std::env::var(VAR)
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| match p.trim().split_once('#') {
                Some((name, n)) => (name.to_owned(), n.parse().ok()),
                None => (p.trim().to_owned(), None),
            })
            .collect()
    });
    let Some((_, nth)) = points.iter().find(|(name, _)| name == point) else {
        return false;
    };
    let mut passes = PASSES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let n = passes
        .get_or_insert_with(HashMap::new)
        .entry(point.to_owned())
        .or_insert(0);
    *n += 1;
    nth.is_none_or(|want| *n == want)
}

/// Dies here by SIGKILL if `point` is named.
pub fn kill_point(point: &str) {
    if strikes(point) {
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
    if strikes(point) {
        anyhow::bail!("fault injection: {point} failed");
    }
    Ok(())
}
