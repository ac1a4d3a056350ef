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
//! - The splice engine (a gateway): nothing is changed (no local listener answers a cookie); IP
//!   forwarding must be on, which `attach --gateway` checks and never sets ([`forwarding`]).
use std::{fs, io};

use anyhow::Context as _;

use crate::{engine::Engine, pins::PinDir};

/// `net.ipv4.tcp_syncookies`.
pub const SYNCOOKIES: &str = "/proc/sys/net/ipv4/tcp_syncookies";
/// `net.ipv4.tcp_timestamps`.
pub const TIMESTAMPS: &str = "/proc/sys/net/ipv4/tcp_timestamps";
/// `net.ipv4.ip_forward`.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// `net.ipv6.conf.all.forwarding` (absent when IPv6 is off).
pub const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
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
    if engine.is_gateway() {
        // No local listener: the servers behind the gateway complete the handshakes.
        return Ok(said);
    }
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
    let _ns = pins.map(namespace_lock).transpose()?;
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
    let _ns = namespace_lock(pins)?;
    let Some(saved) = saved(pins) else {
        return Ok(Vec::new());
    };
    let mut said = Vec::new();
    if others_need(pins).intercepting {
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
    let _ns = namespace_lock(pins)?;
    restore_locked(pins)
}

/// [`restore`], then `forget` (the removal of the attachment's pin directory), both under the
/// namespace's lock: a concurrent detach of another attachment then sees this one either still
/// there or gone, never half gone.
///
/// # Errors
/// A sysctl cannot be written, or `forget` fails.
pub fn restore_then(
    pins: &PinDir,
    forget: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<String>> {
    let _ns = namespace_lock(pins)?;
    let said = restore_locked(pins);
    forget()?;
    said
}

/// The lock of the namespace's shared settings.
fn namespace_lock(pins: &PinDir) -> anyhow::Result<crate::lock::Settings> {
    crate::lock::settings(&pins.namespace(), "the namespace's sysctls")
}

fn restore_locked(pins: &PinDir) -> anyhow::Result<Vec<String>> {
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
    let Others {
        intercepting,
        engine_users,
        any_intercepting,
    } = others_need(pins);
    let mut said = Vec::new();
    for (path, was) in &saved {
        // tcp_syncookies=2 while another attachment of the engine intercepts; tcp_timestamps=2
        // while another uses the engine at all (see the module docs).
        let needed = if *path == SYNCOOKIES {
            intercepting
        } else {
            engine_users
        };
        // Never 0 while any attachment intercepts, whatever its engine: the kernel would reset
        // its cookie handshakes.
        let to = if *path == SYNCOOKIES && was == "0" && (engine_users || any_intercepting) {
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

/// What the other attachments of a namespace need of its sysctls.
#[derive(Debug, Default)]
struct Others {
    /// One of them is in intercept mode with the kernel-cookie engine.
    intercepting: bool,
    /// One of them has the kernel-cookie engine.
    engine_users: bool,
    /// One of them is in intercept mode, with any engine.
    any_intercepting: bool,
}

/// What the other attachments of `pins`' namespace need of its sysctls.
fn others_need(pins: &PinDir) -> Others {
    let mut out = Others::default();
    for (iface, other) in pins.others() {
        // A gateway's intercept mode needs nothing of this namespace's TCP settings.
        if crate::engine::recorded(&other).is_gateway() {
            continue;
        }
        let kernel_cookie = crate::engine::recorded(&other) == Engine::KernelCookie;
        out.engine_users |= kernel_cookie;
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
        out.any_intercepting |= intercepting;
        out.intercepting |= intercepting && kernel_cookie;
    }
    out
}

/// Whether this namespace forwards IP packets, per family: the forwarding sysctls that are off
/// (as `name=1`, what to set), and whether that leaves no family forwarded. IPv6 forwarding
/// counts only where IPv6 exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding {
    /// The sysctls that are off, as the setting that turns each on (`net.ipv4.ip_forward=1`).
    pub off: Vec<String>,
    /// No family is forwarded: a gateway would reach no server.
    pub none: bool,
}

impl Forwarding {
    /// The verdict for the values of [`IP_FORWARD`] and [`IPV6_FORWARDING`] (`None`: absent).
    #[must_use]
    pub fn of(v4: Option<&str>, v6: Option<&str>) -> Forwarding {
        let mut off = Vec::new();
        let mut on = 0;
        for (path, v) in [(IP_FORWARD, v4), (IPV6_FORWARDING, v6)] {
            match v {
                Some("0") => off.push(format!("{}=1", name(path))),
                Some(_) => on += 1,
                None => {}
            }
        }
        Forwarding { none: on == 0, off }
    }

    /// A sentence for `status` and `attach` when one family is not forwarded.
    #[must_use]
    pub fn limitation(&self) -> Option<String> {
        (!self.none && !self.off.is_empty()).then(|| {
            format!(
                "{} is off: servers of that address family behind the gateway are unreachable \
                 (set {})",
                self.off
                    .iter()
                    .map(|o| o.trim_end_matches("=1"))
                    .collect::<Vec<_>>()
                    .join(" and "),
                self.off.join(" and ")
            )
        })
    }
}

/// [`Forwarding`] of the calling thread's network namespace.
#[must_use]
pub fn forwarding() -> Forwarding {
    let v4 = read(IP_FORWARD).ok();
    let v6 = read(IPV6_FORWARDING).ok();
    Forwarding::of(v4.as_deref(), v6.as_deref())
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
    match std::os::unix::fs::symlink(text, &at) {
        // Another attachment's first change is what is restored.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r.with_context(|| format!("record the sysctls at {}", at.display())),
    }
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
/// sysctl that does not have the value intercept mode needs, and what the SYN-ACKs of `cfg`
/// offer that the kernel would not decode from the ACK as offered (its window scale or SACK
/// changed since the configuration was written).
#[must_use]
pub fn kernel_cookie_drift(cfg: &intercept_common::config::Config) -> Vec<String> {
    use intercept_common::config::flags;
    let mut out: Vec<String> = KERNEL_COOKIE_NEEDS
        .iter()
        .filter_map(|(p, want)| {
            let is = read(p).unwrap_or_else(|_| "unreadable".to_owned());
            (is != *want).then(|| format!("{}={is} (needs {want})", name(p)))
        })
        .collect();
    match kernel_wscale() {
        Ok(w) if w != cfg.wscale => out.push(format!(
            "the SYN-ACKs offer window scale {} where the kernel now gives {} (net.ipv4.tcp_rmem, \
             net.core.rmem_max, net.ipv4.tcp_window_scaling changed)",
            cfg.wscale, w
        )),
        Ok(_) => {}
        Err(e) => out.push(format!("the kernel's window scale is unknown: {e:#}")),
    }
    if let Ok(sack) = sack()
        && sack == (cfg.flags & flags::NO_SACK != 0)
    {
        out.push(format!(
            "the SYN-ACKs {} SACK where net.ipv4.tcp_sack is now {}",
            if sack { "refuse" } else { "offer" },
            u8::from(sack)
        ));
    }
    out
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

    /// A gateway is refused only when no family is forwarded; one family off is a limitation
    /// naming its sysctl; IPv6 absent counts for nothing.
    #[test]
    fn forwarding_names_what_to_set() {
        use super::Forwarding;
        let both = Forwarding::of(Some("0"), Some("0"));
        assert!(both.none);
        assert_eq!(
            both.off,
            ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
        );
        assert!(Forwarding::of(Some("0"), None).none);
        let v6_off = Forwarding::of(Some("1"), Some("0"));
        assert!(!v6_off.none);
        let l = v6_off.limitation().expect("a limitation");
        assert!(l.contains("net.ipv6.conf.all.forwarding=1"), "{l}");
        let on = Forwarding::of(Some("1"), Some("1"));
        assert!(!on.none && on.off.is_empty() && on.limitation().is_none());
        assert_eq!(Forwarding::of(Some("1"), None).limitation(), None);
    }
}
