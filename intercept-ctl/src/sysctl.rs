//! The kernel settings intercept mode needs, in the attachment's network namespace (each of
//! these sysctls is per namespace): set when intercept mode comes into force, restored when it
//! goes and at detach, every change said on stderr.
//!
//! - Every engine: `net.ipv4.tcp_syncookies` non-zero (with 0 the kernel resets every cookie
//!   ACK). Set to 1 if it is 0, and left so.
//! - The kernel-cookie engine: `net.ipv4.tcp_syncookies=2`, without which the kernel makes a
//!   cookie only once the listener's SYN queue is really full (`bpf_tcp_gen_syncookie` answers
//!   `-ENOENT` before that), and whose cookie ACKs it checks only for a listener that issued a
//!   cookie in the last two minutes (`tcp_synq_no_recent_overflow`, which the helper records
//!   under 2). Its cost: while it is 2, the kernel answers every SYN that XDP passes (other
//!   ports, exempt sources) with a cookie too, without a request socket (no SYN-ACK
//!   retransmission, no TCP Fast Open, options only through timestamps). Restored when intercept
//!   mode goes. And `net.ipv4.tcp_timestamps=2`, timestamps without the random per-connection
//!   offset, without which the kernel decodes our options from the ACK's TSecr wrongly (see
//!   `intercept_common::kcookie`). Its cost: a client can read the host's millisecond clock
//!   (its uptime) from the timestamps of every connection. Kept until detach, so that no
//!   handshake in flight at a switch to watch mode decodes wrong options.
use std::{fs, io};

use anyhow::Context as _;

use crate::{engine::Engine, pins::PinDir};

/// `net.ipv4.tcp_syncookies`.
pub const SYNCOOKIES: &str = "/proc/sys/net/ipv4/tcp_syncookies";
/// `net.ipv4.tcp_timestamps`.
pub const TIMESTAMPS: &str = "/proc/sys/net/ipv4/tcp_timestamps";
const RMEM: &str = "/proc/sys/net/ipv4/tcp_rmem";
const RMEM_MAX: &str = "/proc/sys/net/core/rmem_max";
const WINDOW_SCALING: &str = "/proc/sys/net/ipv4/tcp_window_scaling";
const SACK: &str = "/proc/sys/net/ipv4/tcp_sack";
/// Pin (a symlink whose target lists the values found before the kernel-cookie engine changed
/// them, `tcp_syncookies=1,tcp_timestamps=1`) in the directory of the namespace's attachments
/// ([`PinDir::namespace_dir`]): what is restored once no attachment there needs the values.
/// One per namespace, as the sysctls are: a second attachment saves nothing over it.
pub const SAVED_PIN: &str = "sysctl_saved";

/// A sysctl's value, trimmed.
///
/// # Errors
/// /proc/sys cannot be read.
pub fn read(path: &str) -> anyhow::Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("read {path}"))?
        .trim()
        .to_owned())
}

fn write(path: &str, value: &str, why: &str) -> anyhow::Result<()> {
    fs::write(path, value).with_context(|| format!("set {} to {value} ({why})", name(path)))
}

/// `net.ipv4.tcp_syncookies` for `/proc/sys/net/ipv4/tcp_syncookies`.
fn name(path: &str) -> String {
    path.trim_start_matches("/proc/sys/").replace('/', ".")
}

/// What the kernel-cookie engine needs: each sysctl and its value.
const KERNEL_COOKIE_NEEDS: [(&str, &str); 2] = [(SYNCOOKIES, "2"), (TIMESTAMPS, "2")];

/// Makes the settings `engine` needs in intercept mode; returns what was changed, to say.
///
/// # Errors
/// A sysctl cannot be read or written, or the old values cannot be recorded.
pub fn enter_intercept(pins: Option<&PinDir>, engine: Engine) -> anyhow::Result<Vec<String>> {
    let mut said = Vec::new();
    if engine != Engine::KernelCookie {
        if read(SYNCOOKIES)? == "0" {
            write(SYNCOOKIES, "1", "intercept mode needs it")?;
            said.push(format!(
                "set {}=1 (was 0): the kernel resets cookie handshakes without it",
                name(SYNCOOKIES)
            ));
        }
        return Ok(said);
    }
    let before: Vec<(&str, String)> = KERNEL_COOKIE_NEEDS
        .iter()
        .map(|(p, _)| Ok((*p, read(p)?)))
        .collect::<anyhow::Result<_>>()?;
    if let Some(pins) = pins {
        save(pins, &before)?;
    }
    for ((path, want), (_, was)) in KERNEL_COOKIE_NEEDS.iter().zip(&before) {
        if was != want {
            write(path, want, "the kernel-cookie engine needs it")?;
            said.push(format!(
                "set {}={want} (was {was}) for the kernel-cookie engine",
                name(path)
            ));
        }
    }
    Ok(said)
}

/// Undoes what intercept mode alone needed (`tcp_syncookies` back to its value before, never
/// below 1); returns what was changed.
///
/// # Errors
/// A sysctl cannot be written.
pub fn leave_intercept(pins: Option<&PinDir>, engine: Engine) -> anyhow::Result<Vec<String>> {
    if engine != Engine::KernelCookie {
        return Ok(Vec::new());
    }
    let Some(pins) = pins else {
        return Ok(Vec::new());
    };
    let Some(saved) = saved(pins) else {
        return Ok(Vec::new());
    };
    let mut said = Vec::new();
    if others_need(pins).0 {
        return Ok(said);
    }
    if let Some((_, was)) = saved.iter().find(|(p, _)| *p == SYNCOOKIES) {
        // Cookie handshakes still in flight need a non-zero value.
        let to = if was == "0" { "1" } else { was.as_str() };
        if read(SYNCOOKIES)? != to {
            write(SYNCOOKIES, to, "intercept mode ended")?;
            said.push(format!("restored {}={to}", name(SYNCOOKIES)));
        }
    }
    Ok(said)
}

/// At detach of the attachment at `pins`: restores the values the kernel-cookie engine changed
/// that no other attachment of the namespace still needs, and forgets them once none needs any;
/// returns what was changed.
///
/// # Errors
/// A sysctl cannot be written.
pub fn restore(pins: &PinDir) -> anyhow::Result<Vec<String>> {
    let Some(saved) = saved(pins) else {
        return Ok(Vec::new());
    };
    // A detach after the namespace was deleted runs in another one, whose sysctls these are not.
    let theirs = crate::health::Record::read(pins).map(|r| r.netns_cookie);
    if theirs.is_some() && theirs != crate::health::netns_cookie().ok() {
        if pins.others().is_empty() {
            let _ = fs::remove_file(pins.namespace_dir().join(SAVED_PIN));
        }
        return Ok(Vec::new());
    }
    let (intercepting, engine_users) = others_need(pins);
    let mut said = Vec::new();
    for (path, was) in &saved {
        // tcp_syncookies=2 while another attachment intercepts; tcp_timestamps=2 while another
        // uses the engine at all (see the module docs).
        let needed = if *path == SYNCOOKIES {
            intercepting
        } else {
            engine_users
        };
        let to = if *path == SYNCOOKIES && was == "0" && engine_users {
            "1"
        } else {
            was.as_str()
        };
        if !needed && read(path)? != to {
            write(path, to, "detach")?;
            said.push(format!("restored {}={to}", name(path)));
        }
    }
    if engine_users {
        return Ok(said);
    }
    match fs::remove_file(pins.namespace_dir().join(SAVED_PIN)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).context("forget the saved sysctls");
        }
        _ => {}
    }
    Ok(said)
}

/// Whether other attachments of `pins`' namespace need the kernel-cookie engine's sysctls:
/// (one of them is in intercept mode with the engine, one of them has the engine).
fn others_need(pins: &PinDir) -> (bool, bool) {
    let mut out = (false, false);
    for (iface, other) in pins.others() {
        if crate::engine::recorded(&other) != Engine::KernelCookie {
            continue;
        }
        out.1 = true;
        // The namespace's name, if any, is the directory's (`netns-<ns>`).
        let netns = pins
            .namespace_dir()
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("netns-"));
        let intercepting = crate::control::Maps::open(&iface, netns)
            .and_then(|m| m.config())
            .is_ok_and(|c| {
                intercept_common::config::Mode::effective(&c)
                    == intercept_common::config::Mode::Intercept
            });
        out.0 |= intercepting;
    }
    out
}

/// Records `values` unless values are recorded already (the first change is what is restored).
fn save(pins: &PinDir, values: &[(&str, String)]) -> anyhow::Result<()> {
    let at = pins.namespace_dir().join(SAVED_PIN);
    if fs::symlink_metadata(&at).is_ok() {
        return Ok(());
    }
    let text = values
        .iter()
        .map(|(p, v)| format!("{}={v}", p.rsplit('/').next().unwrap_or(p)))
        .collect::<Vec<_>>()
        .join(",");
    std::os::unix::fs::symlink(text, &at)
        .with_context(|| format!("record the sysctls at {}", at.display()))
}

/// The values recorded at `pins`, as (path, value).
fn saved(pins: &PinDir) -> Option<Vec<(&'static str, String)>> {
    let text = fs::read_link(pins.namespace_dir().join(SAVED_PIN)).ok()?;
    let text = text.to_string_lossy();
    let mut out = Vec::new();
    for item in text.split(',') {
        let (k, v) = item.split_once('=')?;
        let path = KERNEL_COOKIE_NEEDS
            .iter()
            .map(|(p, _)| *p)
            .find(|p| p.rsplit('/').next() == Some(k))?;
        if !v.bytes().all(|b| b.is_ascii_digit()) || v.is_empty() {
            return None;
        }
        out.push((path, v.to_owned()));
    }
    Some(out)
}

/// What the kernel-cookie engine found wrong with the settings in force, for `status`: each
/// sysctl that does not have the value intercept mode needs.
#[must_use]
pub fn kernel_cookie_drift() -> Vec<String> {
    KERNEL_COOKIE_NEEDS
        .iter()
        .filter_map(|(p, want)| {
            let is = read(p).unwrap_or_else(|_| "unreadable".to_owned());
            (is != *want).then(|| format!("{}={is} (needs {want})", name(p)))
        })
        .collect()
}

/// The window scale the kernel gives connections it completes from a cookie (see
/// `intercept_common::kcookie::rcv_wscale`), from this namespace's sysctls.
///
/// # Errors
/// A sysctl cannot be read or parsed.
pub fn kernel_wscale() -> anyhow::Result<u8> {
    let rmem = read(RMEM)?;
    let tcp_rmem_max: u32 = rmem
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("parse {RMEM}: {rmem:?}"))?;
    let rmem_max: u32 = rmem_max()?.parse().context("parse net.core.rmem_max")?;
    let scaling = read(WINDOW_SCALING)? != "0";
    Ok(intercept_common::kcookie::rcv_wscale(
        tcp_rmem_max,
        rmem_max,
        scaling,
    ))
}

/// `net.core.rmem_max`, a global value that kernels before 6.x show only in the initial network
/// namespace: read here, or else from a thread moved into the namespace of PID 1.
fn rmem_max() -> anyhow::Result<String> {
    if let Ok(v) = read(RMEM_MAX) {
        return Ok(v);
    }
    std::thread::spawn(|| -> anyhow::Result<String> {
        let ns = fs::File::open("/proc/1/ns/net").context("open /proc/1/ns/net")?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(io::Error::from)
        .context("enter the initial network namespace to read net.core.rmem_max")?;
        read(RMEM_MAX)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread reading net.core.rmem_max panicked"))?
}

/// Whether this namespace's TCP offers SACK (`net.ipv4.tcp_sack`).
///
/// # Errors
/// The sysctl cannot be read.
pub fn sack() -> anyhow::Result<bool> {
    Ok(read(SACK)? != "0")
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_the_sysctl_names() {
        assert_eq!(super::name(super::SYNCOOKIES), "net.ipv4.tcp_syncookies");
        assert_eq!(super::name(super::RMEM_MAX), "net.core.rmem_max");
    }
}
