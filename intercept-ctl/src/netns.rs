//! Network namespaces: entering a named one (the global `--netns`, like `ip -n`), and an RAII
//! guard that creates one and always deletes it (lab and tests).
use std::{
    fs::File,
    os::fd::AsFd as _,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

use crate::errors::CtlError;

/// Moves the calling thread into the named network namespace (`/run/netns/NAME`). Threads it
/// creates afterwards start there too.
///
/// # Errors
/// [`CtlError::UnknownNetns`] if there is no such namespace; the OS error if setns fails.
pub fn enter(name: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).map_err(|_| CtlError::UnknownNetns(name.to_owned()))?;
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("setns into {path}"))
}

/// Runs a command, failing with its stderr if it exits non-zero.
///
/// # Errors
/// If the command cannot be started or exits non-zero.
pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("run {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace that exists while this guard lives; deleted on drop (processes still in
/// it are killed first, so the name is free again).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `xi<pid>-<seq><tag>`, unique per process and call, with loopback up.
    ///
    /// # Errors
    /// If `ip netns add` fails (e.g. not root).
    pub fn new(tag: &str) -> anyhow::Result<Netns> {
        let name = format!(
            "xi{}-{}{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Deletes the namespace and creates a new one under the same name, loopback up (as an
    /// operator's `ip netns del` + `ip netns add` would; everything in the old one dies with it
    /// once nothing holds it).
    ///
    /// # Errors
    /// If `ip netns` fails.
    pub fn recreate(&self) -> anyhow::Result<()> {
        run("ip", &["netns", "del", &self.name])?;
        run("ip", &["netns", "add", &self.name])?;
        self.ip(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The namespace's name (for `ip -n`, `--netns`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args...`.
    ///
    /// # Errors
    /// If ip fails.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    ///
    /// # Errors
    /// If the command fails.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["netns", "exec", &self.name, cmd];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Runs `f` on a new thread that lives in this namespace (sockets it opens stay there).
    ///
    /// # Panics
    /// If the thread cannot enter the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter(&name).unwrap_or_else(|e| panic!("enter netns {name}: {e:#}"));
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what still runs there, then delete; errors are ignored (best effort on drop).
        if let Ok(pids) = run("ip", &["netns", "pids", &self.name]) {
            for pid in pids.split_whitespace() {
                let _ = run("kill", &["-9", pid]);
            }
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A veth pair joining two namespaces, with addresses, up, and TX checksum offload off on both
/// ends (with it on, the receiving end's XDP program sees partial checksums, which it cannot
/// verify or answer).
#[derive(Debug, Clone)]
pub struct VethPair {
    /// Interface name in the first namespace.
    pub a: String,
    /// Interface name in the second namespace.
    pub b: String,
}

impl VethPair {
    /// Creates `<tag>a`/`<tag>b` (names unique per process) in `ns_a`/`ns_b` with the given
    /// addresses (CIDR strings, IPv4 and/or IPv6).
    ///
    /// # Errors
    /// If any `ip`/`ethtool` step fails.
    pub fn new(
        ns_a: &Netns,
        addrs_a: &[&str],
        ns_b: &Netns,
        addrs_b: &[&str],
    ) -> anyhow::Result<VethPair> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // Interface names are at most 15 bytes and need only be unique inside their namespace.
        let pair = VethPair {
            a: format!("xv{n}a"),
            b: format!("xv{n}b"),
        };
        pair.create(ns_a, addrs_a, ns_b, addrs_b)?;
        Ok(pair)
    }

    /// Creates the pair again under the same names (after it was deleted, or its namespace
    /// re-created), as [`VethPair::new`] does.
    ///
    /// # Errors
    /// If any `ip`/`ethtool` step fails (e.g. a name is still taken).
    pub fn create(
        &self,
        ns_a: &Netns,
        addrs_a: &[&str],
        ns_b: &Netns,
        addrs_b: &[&str],
    ) -> anyhow::Result<()> {
        let (a, b) = (&self.a, &self.b);
        ns_a.ip(&[
            "link",
            "add",
            a,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            ns_b.name(),
        ])?;
        for (ns, dev, addrs) in [(ns_a, a, addrs_a), (ns_b, b, addrs_b)] {
            for addr in addrs {
                let mut args = vec!["addr", "add", addr, "dev", dev.as_str()];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args)?;
            }
            ns.exec("ethtool", &["-K", dev, "tx", "off"])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        Ok(())
    }
}
