//! The defences compared, each set up on the lab's server namespace before a trial and removed
//! after it: nothing of one survives into the next.
use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use intercept_common::config::Mode;
use intercept_ctl::{
    control::Maps,
    lab::{Lab, SERVER_V4},
    loader::{AttachGuard, AttachMode, Program},
};

/// What protects the server during a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Defence {
    /// Nothing: `tcp_syncookies=0`, the SYN queue alone.
    None,
    /// The kernel's SYN cookies (`tcp_syncookies=1`, the distributions' default).
    KernelCookies,
    /// nftables `synproxy` in front of the server (conntrack-based, the kernel's own proxy).
    Synproxy,
    /// This project, intercept mode (cookies in XDP).
    OursIntercept,
    /// This project, auto mode, with the daemon running (watch while calm, cookies under attack).
    OursAuto,
    /// This project, watch mode, with the daemon running (SYNs reach the kernel; half-open
    /// handshakes tracked and closed after the timeout).
    OursWatch,
}

impl Defence {
    /// Every defence, in report order.
    pub const ALL: [Defence; 6] = [
        Defence::None,
        Defence::KernelCookies,
        Defence::Synproxy,
        Defence::OursIntercept,
        Defence::OursAuto,
        Defence::OursWatch,
    ];

    /// Its name in reports and on the command line.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Defence::None => "none",
            Defence::KernelCookies => "kernel-cookies",
            Defence::Synproxy => "nft-synproxy",
            Defence::OursIntercept => "ours-intercept",
            Defence::OursAuto => "ours-auto",
            Defence::OursWatch => "ours-watch",
        }
    }

    /// From its name.
    ///
    /// # Errors
    /// If no defence has that name.
    pub fn parse(s: &str) -> anyhow::Result<Defence> {
        Defence::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .with_context(|| {
                format!(
                    "unknown defence `{s}`; one of: {}",
                    Defence::ALL.map(Defence::name).join(", ")
                )
            })
    }

    /// Whether it is this project's program (its counters are read).
    #[must_use]
    pub const fn ours(self) -> bool {
        matches!(
            self,
            Defence::OursIntercept | Defence::OursAuto | Defence::OursWatch
        )
    }
}

/// The server's MSS and window scale, which the synproxy rule must advertise (nft's `synproxy`
/// statement answers for the server; what it announces must be what the server later uses).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ServerOptions {
    /// MSS (the veth's MTU 1500 - 40).
    pub mss: u16,
    /// Window scale the server's kernel picks (from `tcp_rmem`).
    pub wscale: u8,
}

/// Where the daemon serves its metrics, inside the server namespace (polled until it is up).
const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9720);

/// The `intercept-ctl run` daemon as a child; SIGTERM on drop.
struct Daemon(Child);

impl Daemon {
    fn start(ctl: &std::path::Path, lab: &Lab) -> anyhow::Result<Daemon> {
        let listen = METRICS.to_string();
        let mut child = Command::new(ctl)
            .args(["--netns", lab.server.name(), "run", &lab.veth.a, "--quiet"])
            .args(["--keep", "--metrics-listen", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {} run", ctl.display()))?;
        let err = child.stderr.take().context("daemon stderr")?;
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("compare: daemon: {l}");
            }
        });
        let mut d = Daemon(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let up = lab
                .server
                .spawn(|| intercept_ctl::soak::scrape(METRICS, Duration::from_secs(1)))
                .join()
                .expect("scrape thread")
                .is_ok();
            if up {
                return Ok(d);
            }
            if !matches!(d.0.try_wait(), Ok(None)) || Instant::now() > deadline {
                bail!("the daemon did not serve metrics within 5 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id())
            && matches!(self.0.try_wait(), Ok(None))
        {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}

/// A defence in force; removed on drop (the daemon stopped first, then the program detached,
/// then the nftables table deleted).
pub struct Active<'a> {
    daemon: Option<Daemon>,
    attach: Option<AttachGuard>,
    nft: bool,
    lab: &'a Lab,
}

impl Active<'_> {
    /// The kernel id of our XDP program, when it is attached.
    pub fn prog_id(&self) -> Option<u32> {
        self.attach.as_ref().map(|a| a.info.program_id)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        drop(self.daemon.take());
        drop(self.attach.take());
        if self.nft {
            let _ = self
                .lab
                .server
                .exec("nft", &["delete", "table", "inet", "compare_synproxy"]);
        }
    }
}

fn sysctl(lab: &Lab, kv: &str) -> anyhow::Result<()> {
    lab.server.exec("sysctl", &["-qw", kv])?;
    Ok(())
}

/// Puts `d` in force on the lab's server for `port`.
///
/// # Errors
/// If a step fails (nft, attach, the daemon).
pub fn setup<'a>(
    lab: &'a Lab,
    d: Defence,
    port: u16,
    opts: ServerOptions,
    ctl: &std::path::Path,
) -> anyhow::Result<Active<'a>> {
    let mut a = Active {
        daemon: None,
        attach: None,
        nft: false,
        lab,
    };
    sysctl(
        lab,
        if d == Defence::None {
            "net.ipv4.tcp_syncookies=0"
        } else {
            "net.ipv4.tcp_syncookies=1"
        },
    )?;
    match d {
        Defence::None | Defence::KernelCookies => {}
        Defence::Synproxy => {
            // The kernel's documented set-up (nft(8), SYNPROXY STATEMENT): SYNs untracked, the
            // proxy answers them and the ACKs that conntrack finds invalid or untracked; strict
            // TCP tracking so an ACK without a SYN never creates an entry.
            sysctl(lab, "net.netfilter.nf_conntrack_tcp_loose=0")?;
            let rules = format!(
                "table inet compare_synproxy {{
                   chain pre {{
                     type filter hook prerouting priority raw; policy accept;
                     tcp dport {port} tcp flags & (fin|syn|rst|ack) == syn notrack
                   }}
                   chain in {{
                     type filter hook input priority filter; policy accept;
                     tcp dport {port} ct state invalid,untracked synproxy mss {} wscale {} timestamp sack-perm
                     ct state invalid drop
                   }}
                 }}\n",
                opts.mss, opts.wscale
            );
            let path = std::env::temp_dir().join(format!("compare-nft-{}.nft", std::process::id()));
            std::fs::write(&path, rules)?;
            let r = lab
                .server
                .exec("nft", &["-f", path.to_str().context("temp path")?]);
            let _ = std::fs::remove_file(&path);
            r.context("load the synproxy ruleset")?;
            a.nft = true;
        }
        Defence::OursIntercept | Defence::OursAuto | Defence::OursWatch => {
            a.attach = Some(AttachGuard::new(
                &lab.veth.a,
                Some(lab.server.name()),
                Program::Intercept,
                AttachMode::Native,
            )?);
            let mut m = Maps::open(&lab.veth.a, Some(lab.server.name()))?;
            m.scope_add(&format!("{SERVER_V4}/32").parse()?, Some(&[port]))?;
            m.set_mode(match d {
                Defence::OursIntercept => Mode::Intercept,
                Defence::OursAuto => Mode::Auto,
                _ => Mode::Watch,
            })?;
            // Steady state, as 75 s without handshakes left to the kernel would bring (as the
            // soak does): the socket table alone decides ACKs that fail the cookie.
            m.set_lookup_until(0)?;
            drop(m);
            if d != Defence::OursIntercept {
                a.daemon = Some(Daemon::start(ctl, lab)?);
            }
        }
    }
    Ok(a)
}

/// The window scale the server's kernel advertises, read from a real handshake (`ss -ti` on the
/// server shows `wscale:<client>,<server>`).
///
/// # Errors
/// If the connection or `ss` fails, or shows no window scale.
pub fn server_options(lab: &Lab, port: u16) -> anyhow::Result<ServerOptions> {
    let target = SocketAddr::new(IpAddr::V4(SERVER_V4), port);
    let s = lab.connect(target, Duration::from_secs(2))?;
    std::thread::sleep(Duration::from_millis(50));
    let out = lab.server.exec(
        "ss",
        &[
            "-Htni",
            "state",
            "established",
            "sport",
            &format!("= :{port}"),
        ],
    )?;
    drop(s);
    let wscale = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("wscale:"))
        .and_then(|w| w.split(',').nth(1))
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("no wscale in `ss -ti`: {out}"))?;
    Ok(ServerOptions { mss: 1460, wscale })
}
