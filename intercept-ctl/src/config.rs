//! The configuration file (TOML, one schema; see README "Configuration file"). It is parsed and
//! validated whole before anything is applied: an invalid file changes nothing, and every error
//! names its line and column.
use std::{collections::BTreeSet, path::Path};

use anyhow::{Context as _, bail};
use intercept_common::config::{Config, DropMode, MSS_V4_RANGE, MSS_V6_RANGE, Mode, Watch, flags};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    control::{Maps, Prefix, parse_ports},
    watchctl::WatchMaps,
};

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    mode: Option<Spanned<String>>,
    #[serde(default)]
    synack: SynAckFile,
    #[serde(default)]
    watch: WatchFile,
    #[serde(default)]
    protect: Vec<ProtectFile>,
    #[serde(default)]
    exempt: Vec<Spanned<String>>,
    #[serde(default)]
    secrets: SecretsFile,
    #[serde(default)]
    metrics: MetricsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SynAckFile {
    mss_v4: Option<Spanned<u32>>,
    mss_v6: Option<Spanned<u32>>,
    window: Option<Spanned<u32>>,
    wscale: Option<Spanned<u32>>,
    ttl: Option<Spanned<u32>>,
    ecn: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchFile {
    timeout: Option<Spanned<u32>>,
    max_incomplete_high: Option<u32>,
    max_incomplete_low: Option<Spanned<u32>>,
    one_minute_high: Option<u32>,
    one_minute_low: Option<Spanned<u32>>,
    drop_mode: Option<Spanned<String>>,
    rate_window: Option<Spanned<u32>>,
    splices_per_source: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectFile {
    prefix: Spanned<String>,
    ports: Option<Spanned<Vec<u32>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    rotate_every: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    listen: Option<Spanned<String>>,
}

/// A validated configuration, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Operator mode; `None` when the file names none (the mode in force, or the one `attach`
    /// was given, stays).
    pub mode: Option<Mode>,
    /// SYN-ACK parameters.
    pub synack: Synack,
    /// Watch knobs.
    pub watch: Watch,
    /// Drop-mode.
    pub drop_mode: DropMode,
    /// Protected (prefix, port) pairs; port 0 means every port.
    pub protect: BTreeSet<(String, u16)>,
    /// Exempt prefixes.
    pub exempt: BTreeSet<String>,
    /// Rotate the cookie secret this often (seconds), in the daemon.
    pub rotate_every: Option<u64>,
    /// Serve Prometheus metrics here, in the daemon.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `file:line:col` of a byte offset.
fn at(path: &str, text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    format!("{path}:{line}:{col}")
}

/// Reads and validates a configuration file.
///
/// # Errors
/// Every problem, with its line and column; nothing is applied.
pub fn load(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    parse(&path.display().to_string(), &text)
}

/// Validates configuration text (`name` is used in messages).
///
/// # Errors
/// Every problem, with its line and column.
#[allow(clippy::too_many_lines, reason = "one check per field, in file order")]
pub fn parse(name: &str, text: &str) -> anyhow::Result<Settings> {
    let f: File = toml::from_str(text).map_err(|e| {
        let pos = e
            .span()
            .map_or_else(|| name.to_owned(), |s| at(name, text, s.start));
        anyhow::anyhow!("{pos}: {}", e.message())
    })?;
    let mut errors = Vec::new();
    let mut err =
        |offset: usize, msg: String| errors.push(format!("{}: {msg}", at(name, text, offset)));
    let mode = match f
        .mode
        .as_ref()
        .map(|m| (m.span().start, m.get_ref().as_str()))
    {
        None => None,
        Some((_, "intercept")) => Some(Mode::Intercept),
        Some((_, "off")) => Some(Mode::Off),
        Some((_, "watch")) => Some(Mode::Watch),
        Some((_, "auto")) => Some(Mode::Auto),
        Some((o, other)) => {
            err(
                o,
                format!("mode '{other}' is not one of off, intercept, watch, auto"),
            );
            None
        }
    };
    let d = Config::default();
    let mut num = |v: &Option<Spanned<u32>>, min: u32, max: u32, what: &str, default: u32| -> u32 {
        match v {
            None => default,
            Some(s) if (min..=max).contains(s.get_ref()) => *s.get_ref(),
            Some(s) => {
                errors.push(format!(
                    "{}: {what} {} is out of range {min}..={max}",
                    at(name, text, s.span().start),
                    s.get_ref()
                ));
                default
            }
        }
    };
    let mss_v4 = num(
        &f.synack.mss_v4,
        u32::from(*MSS_V4_RANGE.start()),
        u32::from(*MSS_V4_RANGE.end()),
        "synack.mss_v4",
        u32::from(d.mss_v4),
    );
    let mss_v6 = num(
        &f.synack.mss_v6,
        u32::from(*MSS_V6_RANGE.start()),
        u32::from(*MSS_V6_RANGE.end()),
        "synack.mss_v6",
        u32::from(d.mss_v6),
    );
    let window = num(
        &f.synack.window,
        1,
        65535,
        "synack.window",
        u32::from(d.window),
    );
    let wscale = num(
        &f.synack.wscale,
        0,
        14,
        "synack.wscale",
        u32::from(d.wscale),
    );
    let ttl = num(&f.synack.ttl, 1, 255, "synack.ttl", u32::from(d.ttl));
    let dw = Watch::default();
    let timeout = num(
        &f.watch.timeout,
        1,
        3600,
        "watch.timeout (seconds)",
        dw.timeout_ms / 1000,
    );
    let rate_window = num(
        &f.watch.rate_window,
        1,
        600,
        "watch.rate_window (seconds)",
        dw.rate_window_s,
    );
    let w = Watch {
        timeout_ms: timeout * 1000,
        max_incomplete_high: f
            .watch
            .max_incomplete_high
            .unwrap_or(dw.max_incomplete_high),
        max_incomplete_low: f
            .watch
            .max_incomplete_low
            .as_ref()
            .map_or(dw.max_incomplete_low, |s| *s.get_ref()),
        one_minute_high: f.watch.one_minute_high.unwrap_or(dw.one_minute_high),
        one_minute_low: f
            .watch
            .one_minute_low
            .as_ref()
            .map_or(dw.one_minute_low, |s| *s.get_ref()),
        rate_window_s: rate_window,
        splices_per_source: f.watch.splices_per_source.unwrap_or(dw.splices_per_source),
        ..dw
    };
    for (low_name, low, high_name, high, at_low) in [
        (
            "max_incomplete_low",
            w.max_incomplete_low,
            "max_incomplete_high",
            w.max_incomplete_high,
            &f.watch.max_incomplete_low,
        ),
        (
            "one_minute_low",
            w.one_minute_low,
            "one_minute_high",
            w.one_minute_high,
            &f.watch.one_minute_low,
        ),
    ] {
        if low > high {
            let o = at_low.as_ref().map_or(0, |s| s.span().start);
            errors.push(format!(
                "{}: {low_name} ({low}) is above {high_name} ({high})",
                at(name, text, o)
            ));
        }
    }
    let drop_mode = match f
        .watch
        .drop_mode
        .as_ref()
        .map(|m| (m.span().start, m.get_ref().as_str()))
    {
        None => DropMode::Oldest,
        Some((_, name)) if DropMode::from_name(name).is_some() => {
            DropMode::from_name(name).unwrap_or(DropMode::Oldest)
        }
        Some((o, other)) => {
            errors.push(format!(
                "{}: drop_mode '{other}' is not oldest or random",
                at(name, text, o)
            ));
            DropMode::Oldest
        }
    };
    let mut protect = BTreeSet::new();
    for p in &f.protect {
        match p.prefix.get_ref().parse::<Prefix>() {
            Err(e) => errors.push(format!("{}: {e}", at(name, text, p.prefix.span().start))),
            Ok(prefix) => match &p.ports {
                None => {
                    protect.insert((prefix.to_string(), 0));
                }
                Some(ports) => {
                    let list = ports
                        .get_ref()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",");
                    match parse_ports(&list) {
                        Ok(v) => {
                            protect.extend(v.into_iter().map(|port| (prefix.to_string(), port)));
                        }
                        Err(e) => {
                            errors.push(format!("{}: {e}", at(name, text, ports.span().start)));
                        }
                    }
                }
            },
        }
    }
    let mut exempt = BTreeSet::new();
    for e in &f.exempt {
        match e.get_ref().parse::<Prefix>() {
            Ok(p) => {
                exempt.insert(p.to_string());
            }
            Err(x) => errors.push(format!("{}: {x}", at(name, text, e.span().start))),
        }
    }
    let rotate_every = match &f.secrets.rotate_every {
        Some(s) if *s.get_ref() < 140 => {
            errors.push(format!("{}: secrets.rotate_every {} is below 140 s: a cookie lives up to 137 s, and two rotations inside that break handshakes in flight", at(name, text, s.span().start), s.get_ref()));
            None
        }
        s => s.as_ref().map(|s| *s.get_ref()),
    };
    let metrics_listen = match &f.metrics.listen {
        None => None,
        Some(s) => {
            if let Ok(a) = s.get_ref().parse() {
                Some(a)
            } else {
                errors.push(format!(
                    "{}: metrics.listen '{}' is not an address:port (e.g. 127.0.0.1:9720)",
                    at(name, text, s.span().start),
                    s.get_ref()
                ));
                None
            }
        }
    };
    if !errors.is_empty() {
        bail!(
            "{} (the running configuration is unchanged)",
            errors.join("\n")
        );
    }
    let n = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    Ok(Settings {
        mode,
        synack: Synack {
            mss_v4: n(mss_v4),
            mss_v6: n(mss_v6),
            window: n(window),
            wscale: u8::try_from(wscale).unwrap_or(7),
            ttl: u8::try_from(ttl).unwrap_or(64),
            ecn: f.synack.ecn.unwrap_or(true),
        },
        watch: w,
        drop_mode,
        protect,
        exempt,
        rotate_every,
        metrics_listen,
    })
}

/// The SYN-ACK parameters of a configuration (see `Config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synack {
    /// MSS advertised over IPv4.
    pub mss_v4: u16,
    /// MSS advertised over IPv6.
    pub mss_v6: u16,
    /// Window field.
    pub window: u16,
    /// Window scale advertised.
    pub wscale: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    /// Answer ECN setup SYNs with ECE.
    pub ecn: bool,
}

impl Synack {
    /// Those of a configuration.
    #[must_use]
    pub fn of(c: &Config) -> Synack {
        Synack {
            mss_v4: c.mss_v4,
            mss_v6: c.mss_v6,
            window: c.window,
            wscale: c.wscale,
            ttl: c.ttl,
            ecn: c.flags & flags::ECN != 0,
        }
    }

    /// Writes them into a configuration.
    pub fn set(&self, c: &mut Config) {
        (c.mss_v4, c.mss_v6, c.window, c.wscale, c.ttl) =
            (self.mss_v4, self.mss_v6, self.window, self.wscale, self.ttl);
        c.flags = if self.ecn {
            c.flags | flags::ECN
        } else {
            c.flags & !flags::ECN
        };
    }
}

/// Applies validated settings to an attachment: configuration, watch knobs, then the scope and
/// exempt sets brought to exactly what the file says (entries added before stale ones go, so
/// nothing that stays protected is ever unprotected in between).
///
/// # Errors
/// On a map failure.
pub fn apply(iface: &str, netns: Option<&str>, s: &Settings) -> anyhow::Result<()> {
    let mut m = Maps::open(iface, netns)?;
    // The whole file at once: no other controller's change lands between its parts.
    let _lock = m.lock()?;
    let mut wm = WatchMaps::open(iface, netns)?;
    let mut w = wm.watch()?;
    w.timeout_ms = s.watch.timeout_ms;
    w.max_incomplete_high = s.watch.max_incomplete_high;
    w.max_incomplete_low = s.watch.max_incomplete_low;
    w.one_minute_high = s.watch.one_minute_high;
    w.one_minute_low = s.watch.one_minute_low;
    w.rate_window_s = s.watch.rate_window_s;
    w.splices_per_source = s.watch.splices_per_source;
    wm.set_watch(&w)?;
    crate::faults::kill_point("apply:watch-written");
    let current: BTreeSet<(String, u16)> = m
        .scope_list()?
        .into_iter()
        .map(|(p, port)| (p.to_string(), port))
        .collect();
    for (p, port) in s.protect.difference(&current) {
        m.scope_add(&p.parse()?, (*port != 0).then_some(&[*port][..]))?;
    }
    crate::faults::kill_point("apply:scope-added");
    for (p, port) in current.difference(&s.protect) {
        m.scope_del(&p.parse()?, (*port != 0).then_some(&[*port][..]))?;
    }
    let cur_ex: BTreeSet<String> = m
        .exempt_list()?
        .into_iter()
        .map(|p| p.to_string())
        .collect();
    for p in s.exempt.difference(&cur_ex) {
        m.exempt_add(&p.parse()?)?;
    }
    for p in cur_ex.difference(&s.exempt) {
        m.exempt_del(&p.parse()?)?;
    }
    let mut c = m.config()?;
    if let Some(m) = s.mode {
        c.mode = m as u32;
    }
    s.synack.set(&mut c);
    c.drop_mode = s.drop_mode as u32;
    crate::faults::kill_point("apply:before-config");
    m.set_config(&c)
}

/// The settings an attachment runs with, read back from its maps. A dead attachment's maps
/// outlive it, so `run` re-attaches with exactly what protected the interface before.
///
/// # Errors
/// [`crate::errors::CtlError::NotAttached`] if no maps are pinned for `iface`; bpf() failures.
pub fn snapshot(iface: &str, netns: Option<&str>) -> anyhow::Result<Settings> {
    let m = Maps::open(iface, netns)?;
    let c = m.config()?;
    Ok(Settings {
        mode: Some(Mode::from_u32(c.mode)),
        synack: Synack::of(&c),
        watch: WatchMaps::open(iface, netns)?.watch()?,
        drop_mode: DropMode::from_u32(c.drop_mode),
        protect: m
            .scope_list()?
            .into_iter()
            .map(|(p, port)| (p.to_string(), port))
            .collect(),
        exempt: m.exempt_list()?.iter().map(ToString::to_string).collect(),
        rotate_every: None,
        metrics_listen: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
mode = "auto"
exempt = ["198.19.0.0/16"]

[synack]
mss_v4 = 1400
ecn = false

[watch]
timeout = 20
max_incomplete_high = 500
max_incomplete_low = 400
drop_mode = "random"

[[protect]]
prefix = "198.18.0.0/24"
ports = [80, 443]

[[protect]]
prefix = "2001:db8::/64"

[secrets]
rotate_every = 3600
"#;

    #[test]
    fn a_complete_file_validates() {
        let s = parse("t.toml", GOOD).unwrap();
        assert_eq!(s.mode, Some(Mode::Auto));
        assert_eq!(s.synack.mss_v4, 1400);
        assert!(!s.synack.ecn);
        assert_eq!(
            (s.watch.timeout_ms, s.watch.max_incomplete_high, s.drop_mode),
            (20_000, 500, DropMode::Random)
        );
        assert!(
            s.protect.contains(&("198.18.0.0/24".into(), 443))
                && s.protect.contains(&("2001:db8::/64".into(), 0))
        );
        assert_eq!(s.protect.len(), 3);
        assert!(s.exempt.contains("198.19.0.0/16"));
        assert_eq!(s.rotate_every, Some(3600));
    }

    #[test]
    fn errors_name_line_and_column_and_all_are_reported() {
        let e = parse("t.toml", "mode = \"auto\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:2:1") && e.contains("unknown field `bogus`"),
            "{e}"
        );
        let e = parse("t.toml", "[[protect]]\nprefix = \"198.18.0.0/33\"\nports = [0]\n\n[watch]\nmax_incomplete_low = 2000\n").unwrap_err().to_string();
        assert!(
            e.contains("t.toml:2:10") && e.contains("prefix length"),
            "{e}"
        );
        assert!(
            e.contains("max_incomplete_low (2000) is above max_incomplete_high (1100)"),
            "{e}"
        );
        assert!(e.contains("t.toml:6:"), "{e}");
        let e = parse(
            "t.toml",
            "[[protect]]\nprefix = \"198.18.0.1\"\nports = [80, 70000]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("t.toml:3:9") && e.contains("70000 is out of range"),
            "{e}"
        );
        let e = parse("t.toml", "[secrets]\nrotate_every = 60\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.toml:2:16") && e.contains("below 140"), "{e}");
        let e = parse("t.toml", "mode = \"turbo\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.toml:1:8") && e.contains("unchanged"), "{e}");
    }
}
