//! A lab of network namespaces: a server namespace and a client namespace joined by a veth pair,
//! real kernel TCP on both ends, and a bounded spoofed-SYN flood sent with an AF_PACKET socket.
//! Used by `intercept-ctl lab` (the default main job) and by the end-to-end tests.
//!
//! Addresses (RFC 2544 / RFC 3849 ranges only): server 198.18.0.1 and 2001:db8::1, client
//! 198.18.0.2 and 2001:db8::2; spoofed flood sources in 198.19.0.0/16 and 2001:db8:1::/48, which
//! the server routes back to the client namespace (where they die), so no packet leaves the lab.
use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use intercept_common::{
    craft::{Link, TcpSegment, linux_syn_options, tcp_frame},
    parse::tcp_flags,
};

use crate::netns::{Netns, VethPair};

/// Server address, IPv4.
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Client address, IPv4.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Server address, IPv6.
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// Client address, IPv6.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// The server end's addresses.
const SERVER_ADDRS: [&str; 2] = ["198.18.0.1/24", "2001:db8::1/64"];
/// The client end's addresses.
const CLIENT_ADDRS: [&str; 2] = ["198.18.0.2/24", "2001:db8::2/64"];

/// Two namespaces joined by a veth pair; everything is deleted on drop.
#[derive(Debug)]
pub struct Lab {
    /// The veth pair: `a` in the server namespace, `b` in the client namespace. Declared first
    /// so it is dropped first (it dies with its namespaces anyway).
    pub veth: VethPair,
    /// Server namespace (the protected host).
    pub server: Netns,
    /// Client namespace (legitimate clients and the flood's source).
    pub client: Netns,
    /// Set by `nic_like`: the core of the server end's NAPI thread, where
    /// [`Lab::requests`] runs its client at real-time priority.
    batch_cpu: Option<usize>,
}

impl Lab {
    /// Builds the lab, its veth pair configured like a NIC (see `nic_like`).
    ///
    /// # Errors
    /// If namespaces or links cannot be created (needs root).
    pub fn new() -> anyhow::Result<Lab> {
        let server = Netns::new("s").context("create the server namespace (needs root)")?;
        let client = Netns::new("c").context("create the client namespace (needs root)")?;
        let veth = VethPair::new(&server, &SERVER_ADDRS, &client, &CLIENT_ADDRS)?;
        let mut lab = Lab {
            veth,
            server,
            client,
            batch_cpu: None,
        };
        lab.routes()?;
        lab.nic_like()?;
        // No tail-loss probes from the clients (RFC 8985 section 7): a probe fires when an answer
        // is a few milliseconds late, which on a loaded two-core machine says nothing of the
        // network; without it a retransmission means a lost segment (its timeout, at least
        // 200 ms), which is what the tests count.
        lab.client
            .exec("sysctl", &["-qw", "net.ipv4.tcp_early_retrans=0"])?;
        Ok(lab)
    }

    /// The server's routes to the flood's spoofed sources (through the client namespace).
    fn routes(&self) -> anyhow::Result<()> {
        self.server
            .ip(&["route", "add", "198.19.0.0/16", "via", "198.18.0.2"])?;
        self.server.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:1::/48",
            "via",
            "2001:db8::2",
        ])?;
        Ok(())
    }

    /// Creates the veth pair again under the same names, addresses and NIC-like set-up, after it
    /// was deleted (`ip link del`) or died with a re-created namespace: what an operator sees
    /// after a driver reload. Waits (up to 5 s) for the kernel to free the old names first: a
    /// deleted namespace's devices go away asynchronously.
    ///
    /// # Errors
    /// If the names stay taken, or any set-up step fails.
    pub fn recreate_veth(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while [(&self.server, &self.veth.a), (&self.client, &self.veth.b)]
            .iter()
            .any(|(ns, dev)| ns.ip(&["link", "show", "dev", dev]).is_ok())
        {
            if Instant::now() > deadline {
                bail!(
                    "{} or {} still exists 5 s after its deletion",
                    self.veth.a,
                    self.veth.b
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.veth
            .create(&self.server, &SERVER_ADDRS, &self.client, &CLIENT_ADDRS)?;
        self.routes()?;
        self.nic_like()
    }

    /// Makes the veth pair behave like a NIC: threaded NAPI on both ends, each end's NAPI thread
    /// pinned to its own core, GRO on at both ends, TSO and TX checksum offload off on the
    /// client's (sending) end.
    ///
    /// By default a veth delivers a sender's frames one at a time through the sender's own CPU
    /// backlog. With a non-TSO sender and threaded NAPI, frames queue in the peer's 256-entry
    /// ring and are received in batches of up to 64 per poll, as from a NIC's RX ring: a client's
    /// handshake ACK and its first request, sent back to back, then reach XDP, TC and TCP in one
    /// poll (`__netif_receive_skb_list_core` runs TC for the whole batch before TCP sees any of
    /// it). Races a real NIC exposes only show in this configuration.
    ///
    /// It also makes that batching deterministic for [`Lab::requests`], whose client thread then
    /// runs on the server NAPI thread's core at real-time priority: the client's kernel wakes the
    /// client (connect() returns) before it queues the handshake ACK, the client sends its
    /// request before the server's NAPI thread gets the core, and that thread then finds both
    /// frames in its ring, as a busy server's NIC queue holds them.
    ///
    /// # Errors
    /// If `ethtool` or the sysfs write fails, or the NAPI threads cannot be found.
    fn nic_like(&mut self) -> anyhow::Result<()> {
        for (ns, dev) in [(&self.server, &self.veth.a), (&self.client, &self.veth.b)] {
            ns.exec("ethtool", &["-K", dev, "gro", "on"])?;
            ns.exec(
                "sh",
                &["-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")],
            )?;
        }
        self.client
            .exec("ethtool", &["-K", &self.veth.b, "tso", "off", "tx", "off"])?;
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        for (i, dev) in [&self.veth.a, &self.veth.b].into_iter().enumerate() {
            let threads = napi_threads(dev)?;
            if threads.is_empty() {
                bail!("no NAPI thread of {dev} after enabling threaded NAPI");
            }
            for pid in threads {
                pin(pid, i % cpus)?;
            }
        }
        self.batch_cpu = Some(0);
        Ok(())
    }

    /// Attaches the intercept program to the server's end and the pass-through program to the
    /// client's (a veth drops the frames XDP sends back unless its peer runs XDP); both are
    /// detached when the returned guards drop.
    ///
    /// # Errors
    /// If either attach fails.
    pub fn attach_programs(
        &self,
    ) -> anyhow::Result<(crate::loader::AttachGuard, crate::loader::AttachGuard)> {
        use crate::loader::{AttachGuard, AttachMode, Program};
        Ok((
            AttachGuard::new(
                &self.veth.a,
                Some(self.server.name()),
                Program::Intercept,
                AttachMode::Native,
            )?,
            AttachGuard::new(
                &self.veth.b,
                Some(self.client.name()),
                Program::Pass,
                AttachMode::Native,
            )?,
        ))
    }

    /// Makes `n` requests from the client namespace to `target`, one after the other, as an
    /// application client does: connect, send a 16-byte request right after `connect()`
    /// returns (in the segments `shape` says), read the 16-byte echo, close. Each must finish
    /// within `timeout`.
    ///
    /// # Errors
    /// If the client namespace's TCP counters cannot be read.
    pub fn requests(
        &self,
        target: SocketAddr,
        shape: Shape,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Requests> {
        self.client_run(move |r| {
            for i in 0..n {
                r.one(target, shape, i, timeout);
            }
        })
    }

    /// Requests as [`Lab::requests`] makes them, for `duration`: one every `interval` (from the
    /// start of the previous one), cycling through `targets` (address and shape).
    ///
    /// # Errors
    /// If the client namespace's TCP counters cannot be read.
    pub fn requests_for(
        &self,
        targets: Vec<(SocketAddr, Shape)>,
        duration: Duration,
        interval: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Requests> {
        self.client_run(move |r| {
            let start = Instant::now();
            let mut i = 0;
            while !targets.is_empty() && start.elapsed() < duration {
                let began = Instant::now();
                let (target, shape) = targets[i % targets.len()];
                r.one(target, shape, i, timeout);
                i += 1;
                if let Some(rest) = interval.checked_sub(began.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        })
    }

    /// Runs `f` on the request client's thread (see [`Lab::requests`]) and returns what it
    /// recorded, with the client namespace's retransmissions over the run.
    fn client_run(
        &self,
        f: impl FnOnce(&mut Requests) + Send + 'static,
    ) -> anyhow::Result<Requests> {
        run_requests(&self.client, self.batch_cpu, f)
    }

    /// MAC address of `dev` in `ns`.
    ///
    /// # Errors
    /// If `ip` fails or prints no address.
    pub fn mac(ns: &Netns, dev: &str) -> anyhow::Result<[u8; 6]> {
        let out = ns.ip(&["-j", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let s = v[0]["address"].as_str().context("no MAC in `ip -j link`")?;
        let mut mac = [0u8; 6];
        for (i, part) in s.split(':').enumerate().take(6) {
            mac[i] = u8::from_str_radix(part, 16)?;
        }
        Ok(mac)
    }

    /// TCP listeners on `port` (0.0.0.0 and the server's IPv6 address) in the server namespace.
    ///
    /// # Errors
    /// If binding fails.
    ///
    /// # Panics
    /// If the thread in the namespace panics.
    pub fn listen(&self, port: u16) -> anyhow::Result<(TcpListener, TcpListener)> {
        listen_in(&self.server, SERVER_V6, port)
    }

    /// Connects from the client namespace to `addr`, within `timeout`.
    ///
    /// # Errors
    /// If the connection fails or times out.
    ///
    /// # Panics
    /// If the thread in the namespace panics.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
        connect_in(&self.client, addr, timeout)
    }

    /// A raw AF_PACKET sender on the client's end of the veth.
    ///
    /// # Errors
    /// If the socket cannot be opened or bound.
    ///
    /// # Panics
    /// If the thread in the namespace panics.
    pub fn raw_sender(&self) -> anyhow::Result<RawSender> {
        let dev = self.veth.b.clone();
        let src = Lab::mac(&self.client, &self.veth.b)?;
        let dst = Lab::mac(&self.server, &self.veth.a)?;
        let fd = self
            .client
            .spawn(move || RawSender::open(&dev))
            .join()
            .expect("raw socket thread")?;
        Ok(RawSender {
            fd,
            link: Link {
                dst,
                src,
                vlans: Vec::new(),
            },
        })
    }
}

/// Runs `f` on a request client's thread in `ns` (pinned to `batch_cpu` at real-time priority
/// when given, see [`Lab::requests`]) and returns what it recorded, with `ns`'s retransmissions
/// over the run. Shared by [`Lab`] and the gateway lab.
pub(crate) fn run_requests(
    ns: &Netns,
    batch_cpu: Option<usize>,
    f: impl FnOnce(&mut Requests) + Send + 'static,
) -> anyhow::Result<Requests> {
    ns.spawn(move || -> anyhow::Result<Requests> {
        if let Some(cpu) = batch_cpu {
            pin(0, cpu)?;
            realtime()?;
        }
        let before = TcpRetrans::read()?;
        let mut r = Requests::default();
        f(&mut r);
        r.retrans = TcpRetrans::read()?.since(before);
        Ok(r)
    })
    .join()
    .expect("client thread")
}

/// How a client sends its 16-byte request, right after `connect()` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One segment.
    One,
    /// Three segments (three writes without Nagle): the later two carry sequence numbers past
    /// the handshake's.
    Split,
    /// One segment, then the client's FIN (`shutdown(SHUT_WR)`) before any answer.
    WithFin,
}

/// One request as [`Lab::requests`] makes it, from the calling thread's namespace; request `i`
/// carries a 16-byte payload naming it.
///
/// # Errors
/// If it is not answered within `timeout`, or answered wrongly.
pub fn request(target: SocketAddr, shape: Shape, i: usize, timeout: Duration) -> io::Result<()> {
    request_timed(target, shape, i, timeout).map(|_| ())
}

/// [`request`], returning how long `connect()` took.
///
/// # Errors
/// As [`request`].
pub fn request_timed(
    target: SocketAddr,
    shape: Shape,
    i: usize,
    timeout: Duration,
) -> io::Result<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&target, timeout)?;
    let connected = start.elapsed();
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let msg = format!("request {i:>8}");
    match shape {
        Shape::One => s.write_all(msg.as_bytes())?,
        Shape::Split => {
            for part in [&msg[..6], &msg[6..11], &msg[11..]] {
                s.write_all(part.as_bytes())?;
            }
        }
        Shape::WithFin => {
            s.write_all(msg.as_bytes())?;
            s.shutdown(std::net::Shutdown::Write)?;
        }
    }
    let mut b = [0u8; 16];
    s.read_exact(&mut b)?;
    if b != msg.as_bytes() {
        return Err(io::Error::other(format!(
            "echo of {msg:?} came back as {b:?}"
        )));
    }
    Ok(connected)
}

/// What [`Lab::requests`] measured.
#[derive(Debug, Default, Clone)]
pub struct Requests {
    /// Per answered request: connect + request + response.
    pub latencies: Vec<Duration>,
    /// Per answered request: how long its `connect()` took (the handshake).
    pub connects: Vec<Duration>,
    /// Requests not answered (connect refused or timed out, no echo in time).
    pub failures: usize,
    /// The first failure, for messages.
    pub first_error: Option<String>,
    /// The client namespace's retransmission counters over the run.
    pub retrans: TcpRetrans,
}

impl Requests {
    /// Makes request `i` (see [`request`]) and records its latency or its failure.
    pub(crate) fn one(&mut self, target: SocketAddr, shape: Shape, i: usize, timeout: Duration) {
        let start = Instant::now();
        match request_timed(target, shape, i, timeout) {
            Ok(connected) => {
                self.latencies.push(start.elapsed());
                self.connects.push(connected);
            }
            Err(e) => {
                self.failures += 1;
                self.first_error
                    .get_or_insert_with(|| format!("request {i} to {target}: {e}"));
            }
        }
    }

    /// Median latency (zero if none answered).
    #[must_use]
    pub fn median(&self) -> Duration {
        self.percentile(50)
    }

    /// The `p`th percentile latency (nearest rank; zero if none answered).
    #[must_use]
    pub fn percentile(&self, p: usize) -> Duration {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[(v.len() * p.min(100)).div_ceil(100).saturating_sub(1)]
    }
}

/// A network namespace's TCP retransmission counters (`nstat`'s `TcpRetransSegs` and
/// `TcpExtTCPTimeouts`), read from `/proc/thread-self/net`, so in the calling thread's namespace.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TcpRetrans {
    /// Segments retransmitted.
    pub retrans_segs: u64,
    /// Retransmission timeouts that fired.
    pub timeouts: u64,
}

impl TcpRetrans {
    /// Reads them.
    ///
    /// # Errors
    /// If the proc files cannot be read or lack the fields.
    pub fn read() -> anyhow::Result<TcpRetrans> {
        Ok(TcpRetrans {
            retrans_segs: proc_net_field("snmp", "Tcp", "RetransSegs")?,
            timeouts: proc_net_field("netstat", "TcpExt", "TCPTimeouts")?,
        })
    }

    /// The counts since `before`.
    #[must_use]
    pub fn since(self, before: TcpRetrans) -> TcpRetrans {
        TcpRetrans {
            retrans_segs: self.retrans_segs.saturating_sub(before.retrans_segs),
            timeouts: self.timeouts.saturating_sub(before.timeouts),
        }
    }
}

/// One counter of `/proc/net/<file>` (`snmp`, `netstat`) in the calling thread's namespace: each
/// group there is two lines, the names, then the values.
fn proc_net_field(file: &str, group: &str, name: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))?;
    let head = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&head));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no {group} lines in /proc/net/{file}");
    };
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .with_context(|| format!("no {group} {name} in /proc/net/{file}"))?;
    values
        .split_whitespace()
        .nth(i)
        .context("short value line")?
        .parse()
        .with_context(|| format!("{group} {name}"))
}

/// Serves `l` on a thread: each accepted connection gets back what it sends until it closes.
pub fn echo_server(l: TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut b = [0u8; 256];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// The pids of `dev`'s NAPI threads (named `napi/<dev>-<id>`; `comm` keeps 15 bytes).
///
/// # Errors
/// If `/proc` cannot be read.
pub fn napi_threads(dev: &str) -> anyhow::Result<Vec<i32>> {
    let prefix = format!("napi/{dev}-");
    let prefix = &prefix[..prefix.len().min(15)];
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(e.path().join("comm"))
            && comm.trim_end().starts_with(prefix)
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// `SCHED_FIFO` priority of the request client: above [`NAPI_RT_PRIORITY`], so a benchmark that
/// runs the server's NAPI thread at real-time priority (as softirq work runs on a real server)
/// still lets the client preempt it.
const CLIENT_RT_PRIORITY: i32 = 2;
/// `SCHED_FIFO` priority a benchmark may give the server end's NAPI thread (see
/// [`CLIENT_RT_PRIORITY`]).
pub const NAPI_RT_PRIORITY: i32 = 1;

/// Gives the calling thread `SCHED_FIFO` priority [`CLIENT_RT_PRIORITY`]: no normal thread (nor a
/// NAPI thread at [`NAPI_RT_PRIORITY`]) preempts it on its core.
pub(crate) fn realtime() -> anyhow::Result<()> {
    let p = libc::sched_param {
        sched_priority: CLIENT_RT_PRIORITY,
    };
    // SAFETY: a valid sched_param; 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const p) } != 0 {
        return Err(io::Error::last_os_error()).context("SCHED_FIFO for the client thread");
    }
    Ok(())
}

/// Pins thread `pid` (0: the calling thread) to `cpu`.
pub(crate) fn pin(pid: i32, cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed, then one bit set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid set of its own size.
    if unsafe { libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &raw const set) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("pin thread {pid} to CPU {cpu}"));
    }
    Ok(())
}

/// Sends whole Ethernet frames out of one interface.
#[derive(Debug)]
pub struct RawSender {
    pub(crate) fd: OwnedFd,
    /// Link layer for frames built by this sender (client MAC -> server MAC).
    pub link: Link,
}

impl RawSender {
    pub(crate) fn open(dev: &str) -> anyhow::Result<OwnedFd> {
        packet_socket(dev, 0)
    }

    /// Sends one frame.
    ///
    /// # Errors
    /// If the kernel refuses it.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A bounded flood: at most `count` frames, for at most `max_time`, paced to `rate` per second.
#[derive(Debug, Clone, Copy)]
pub struct FloodSpec {
    /// Destination (the server) and port.
    pub target: SocketAddr,
    /// Frames to send at most.
    pub count: u64,
    /// Time to send for at most.
    pub max_time: Duration,
    /// Frames per second (0: as fast as possible).
    pub rate: u64,
    /// TCP flags of every frame (SYN for a SYN flood, ACK for a forged-ACK flood).
    pub flags: u8,
    /// Bytes of payload on every frame (a SYN flood padded with data, for instance).
    pub payload: usize,
}

/// The spoofed source of frame `i`: 198.19.x.y or 2001:db8:1::x:y, never a lab host.
#[must_use]
pub fn spoofed_source(target: IpAddr, i: u64) -> IpAddr {
    let lo = (i % 65_000) as u16 + 1;
    match target {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 19, (lo >> 8) as u8, lo as u8)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, lo)),
    }
}

/// Sends a bounded spoofed flood; returns how many frames went out.
///
/// # Errors
/// If sending fails for a reason other than a full queue.
pub fn flood(sender: &RawSender, spec: FloodSpec) -> anyhow::Result<u64> {
    flood_until(sender, spec, &std::sync::atomic::AtomicBool::new(false))
}

/// As [`flood`], stopping early once `stop` is set.
///
/// # Errors
/// If sending fails for a reason other than a full queue.
pub fn flood_until(
    sender: &RawSender,
    spec: FloodSpec,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<u64> {
    flood_from(sender, spec, stop, spoofed_source)
}

/// As [`flood_until`], frame `i` coming from `source(target, i)` (a lab's own spoofed range).
///
/// # Errors
/// If sending fails for a reason other than a full queue.
pub fn flood_from(
    sender: &RawSender,
    spec: FloodSpec,
    stop: &std::sync::atomic::AtomicBool,
    source: fn(IpAddr, u64) -> IpAddr,
) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < spec.count
        && start.elapsed() < spec.max_time
        && !stop.load(std::sync::atomic::Ordering::Relaxed)
    {
        let src = source(spec.target.ip(), sent);
        let mut seg = TcpSegment::new(
            src,
            spec.target.ip(),
            1024 + (sent % 60_000) as u16,
            spec.target.port(),
            spec.flags,
        );
        seg.seq = (sent as u32).wrapping_mul(2_654_435_761);
        if spec.flags & tcp_flags::SYN != 0 {
            seg.options = linux_syn_options(1460, sent as u32, 7);
        } else {
            seg.ack_seq = (sent as u32).wrapping_mul(40_503);
        }
        seg.payload = vec![0x78; spec.payload];
        match sender.send(&tcp_frame(&sender.link, &seg)) {
            Ok(()) => sent += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => std::thread::yield_now(),
            Err(e) => bail!("flood send: {e}"),
        }
        if spec.rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / spec.rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(sent)
}

/// A capture of what reaches the kernel stack on one interface (an AF_PACKET tap sees frames
/// after XDP passed them; frames XDP dropped or sent back never show up). Counts TCP segments by
/// kind until stopped.
#[derive(Debug)]
pub struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<CaptureCounts>>,
}

/// What a [`Capture`] saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CaptureCounts {
    /// Incoming SYNs (no ACK).
    pub syn: u64,
    /// Incoming ACKs (no SYN, no RST).
    pub ack: u64,
    /// Incoming RSTs.
    pub rst: u64,
    /// Outgoing SYN-ACKs.
    pub syn_ack_out: u64,
    /// Incoming SYN-ACKs addressed to this interface's MAC.
    pub syn_ack_in: u64,
    /// Incoming SYN-ACKs addressed to another host's MAC (seen only by a capture).
    pub syn_ack_in_other_host: u64,
}

impl Capture {
    /// Starts capturing on `dev` in `ns`.
    ///
    /// # Errors
    /// If the socket cannot be opened.
    ///
    /// # Panics
    /// If the thread in the namespace panics.
    pub fn start(ns: &Netns, dev: &str) -> anyhow::Result<Capture> {
        use std::sync::atomic::Ordering;
        let dev = dev.to_owned();
        let fd = ns
            .spawn(move || -> anyhow::Result<OwnedFd> {
                let fd = packet_socket(&dev, (libc::ETH_P_ALL as u16).to_be())?;
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 50_000,
                };
                // SAFETY: valid option buffer of its size.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        (&raw const tv).cast(),
                        u32::try_from(size_of::<libc::timeval>())?,
                    )
                };
                Ok(fd)
            })
            .join()
            .expect("capture thread")?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut c = CaptureCounts::default();
            let mut buf = vec![0u8; 2048];
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            while !s.load(Ordering::Relaxed) {
                let mut len = u32::try_from(size_of::<libc::sockaddr_ll>()).expect("size");
                // SAFETY: buffers are valid for their lengths.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&raw mut from).cast(),
                        &raw mut len,
                    )
                };
                let Ok(n) = usize::try_from(n) else { continue };
                use intercept_common::parse::{Dissected, L4, TcpKind, classify, dissect};
                if let Ok(Dissected::Ip(ip)) = dissect(&buf[..n])
                    && let L4::Tcp(t) = ip.l4
                {
                    let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
                    match (classify(t.flags), outgoing) {
                        (TcpKind::Syn, false) => c.syn += 1,
                        (TcpKind::Ack, false) => c.ack += 1,
                        (TcpKind::Rst, false) => c.rst += 1,
                        (TcpKind::SynAck, true) => c.syn_ack_out += 1,
                        (TcpKind::SynAck, false) if from.sll_pkttype == libc::PACKET_OTHERHOST => {
                            c.syn_ack_in_other_host += 1;
                        }
                        (TcpKind::SynAck, false) => c.syn_ack_in += 1,
                        _ => {}
                    }
                }
            }
            c
        });
        Ok(Capture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns the counts.
    ///
    /// # Panics
    /// If the capture thread panicked.
    #[must_use]
    pub fn finish(mut self) -> CaptureCounts {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("capture thread")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Half-open (SYN_RECV) entries in `ns`'s socket table.
///
/// # Errors
/// If `ss` fails.
pub fn syn_recv_count(ns: &Netns) -> anyhow::Result<usize> {
    let out = ns.exec("ss", &["-Htn", "state", "syn-recv"])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

/// An AF_PACKET raw socket bound to `dev` (in the calling thread's namespace) for `proto` (network
/// order; 0: send only).
fn packet_socket(dev: &str, proto: u16) -> anyhow::Result<OwnedFd> {
    let ifindex = crate::loader::ifindex(dev, None)?;
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; zeroed then filled.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = i32::try_from(ifindex)?;
    // SAFETY: sll is a valid sockaddr_ll of its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            u32::try_from(size_of::<libc::sockaddr_ll>())?,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("bind AF_PACKET to {dev}"));
    }
    Ok(fd)
}

/// Listens on `port` in `ns`: IPv4 on every address, IPv6 on `v6` (not [::]: a dual-stack [::]
/// would collide with the IPv4 bind).
///
/// # Errors
/// If binding fails.
///
/// # Panics
/// If the thread in the namespace panics.
pub fn listen_in(
    ns: &Netns,
    v6: Ipv6Addr,
    port: u16,
) -> anyhow::Result<(TcpListener, TcpListener)> {
    ns.spawn(move || -> io::Result<_> {
        let v4 = TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))?;
        let v6 = TcpListener::bind(SocketAddr::new(IpAddr::V6(v6), port))?;
        Ok((v4, v6))
    })
    .join()
    .expect("listener thread")
    .with_context(|| format!("listen on port {port} in {}", ns.name()))
}

/// Connects from `ns` to `addr`, within `timeout`.
///
/// # Errors
/// If the connection fails or times out.
///
/// # Panics
/// If the thread in the namespace panics.
pub fn connect_in(ns: &Netns, addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    ns.spawn(move || TcpStream::connect_timeout(&addr, timeout))
        .join()
        .expect("connect thread")
        .with_context(|| format!("connect to {addr} from {}", ns.name()))
}
