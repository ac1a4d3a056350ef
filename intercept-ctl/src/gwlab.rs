//! The gateway lab: three network namespaces, a client, a gateway and a server, joined by two veth
//! pairs (client <-> gateway <-> server), with real kernel TCP on the client and the server and
//! forwarding on in the gateway. Used by the gateway mode's end-to-end tests and benchmark.
//!
//! Addresses (RFC 2544 / RFC 3849 ranges only, apart from the two-namespace [`crate::lab`]'s):
//! client 198.18.10.2 and 2001:db8:10::2, the gateway's client-facing end 198.18.10.1 and
//! 2001:db8:10::1; the gateway's server-facing end 198.18.20.1 and 2001:db8:20::1, server
//! 198.18.20.2 and 2001:db8:20::2. Spoofed flood sources come from 198.19.128.0/17 and
//! 2001:db8:11::/48, which the server and the gateway route back into the client namespace, where
//! they die (it forwards nothing), so no packet leaves the lab.
//!
//! Each veth end is set up like a NIC's (see [`crate::lab::Lab`]'s `nic_like`): threaded NAPI,
//! GRO on, TSO and TX checksum offload off, so every sender's frames queue in the receiving end's
//! ring and are received in batches, and the gateway forwards what a NIC would give it; and a
//! qdisc on every end, so a full ring holds the sender back instead of dropping (see
//! `GatewayLab::nic_like`).
use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use intercept_common::craft::Link;

use crate::{
    lab::{
        Capture, FloodSpec, Lab, RawSender, Requests, Shape, flood_from, napi_threads, pin,
        run_requests, syn_recv_count,
    },
    netns::{Netns, VethPair, run},
};

/// Client address, IPv4.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 2);
/// Client address, IPv6.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 2);
/// Server address, IPv4.
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 2);
/// Server address, IPv6.
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x20, 0, 0, 0, 0, 2);
/// The gateway's client-facing address, IPv4 (the client's next hop).
pub const GATEWAY_CLIENT_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 1);
/// The gateway's server-facing address, IPv4 (the server's next hop).
pub const GATEWAY_SERVER_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 1);

/// The client end's addresses.
const CLIENT_ADDRS: [&str; 2] = ["198.18.10.2/24", "2001:db8:10::2/64"];
/// The gateway's client-facing end's addresses.
const GATEWAY_CLIENT_ADDRS: [&str; 2] = ["198.18.10.1/24", "2001:db8:10::1/64"];
/// The gateway's server-facing end's addresses.
const GATEWAY_SERVER_ADDRS: [&str; 2] = ["198.18.20.1/24", "2001:db8:20::1/64"];
/// The server end's addresses.
const SERVER_ADDRS: [&str; 2] = ["198.18.20.2/24", "2001:db8:20::2/64"];
/// Where spoofed flood sources come from (see [`spoofed_source`]).
const SPOOFED_V4: &str = "198.19.128.0/17";
/// Where spoofed flood sources come from, IPv6.
const SPOOFED_V6: &str = "2001:db8:11::/48";

/// Three namespaces joined by two veth pairs; everything is deleted on drop.
#[derive(Debug)]
pub struct GatewayLab {
    /// Client <-> gateway: `a` in the client namespace, `b` the gateway's client-facing end.
    /// Declared before the namespaces so it is dropped first (it dies with them anyway).
    pub client_veth: VethPair,
    /// Gateway <-> server: `a` the gateway's server-facing end, `b` in the server namespace.
    pub server_veth: VethPair,
    /// Client namespace (legitimate clients and the flood's source).
    pub client: Netns,
    /// Gateway namespace (forwarding; where gateway mode attaches).
    pub gateway: Netns,
    /// Server namespace (the protected host).
    pub server: Netns,
    /// The core of the NAPI thread of the gateway's client-facing end, where
    /// [`GatewayLab::requests`] runs its client at real-time priority (see
    /// [`Lab::requests`]: the handshake's ACK and the request then reach the gateway's XDP in
    /// one poll).
    batch_cpu: Option<usize>,
}

impl GatewayLab {
    /// Builds the lab: namespaces, veth pairs configured like NICs, addresses, routes both
    /// ways, forwarding on in the gateway (IPv4 and IPv6).
    ///
    /// # Errors
    /// If namespaces, links or routes cannot be created (needs root).
    pub fn new() -> anyhow::Result<GatewayLab> {
        let client = Netns::new("gc").context("create the client namespace (needs root)")?;
        let gateway = Netns::new("gg").context("create the gateway namespace (needs root)")?;
        let server = Netns::new("gs").context("create the server namespace (needs root)")?;
        // No duplicate address detection on any address, link-local ones included (`nodad`
        // covers only the global ones): a tentative link-local address cannot answer neighbour
        // solicitations, and the gateway's first IPv6 frames to a neighbour died for a second.
        for ns in [&client, &gateway, &server] {
            ns.exec(
                "sysctl",
                &[
                    "-qw",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            )?;
        }
        let client_veth = VethPair::new(&client, &CLIENT_ADDRS, &gateway, &GATEWAY_CLIENT_ADDRS)?;
        let server_veth = VethPair::new(&gateway, &GATEWAY_SERVER_ADDRS, &server, &SERVER_ADDRS)?;
        let mut lab = GatewayLab {
            client_veth,
            server_veth,
            client,
            gateway,
            server,
            batch_cpu: None,
        };
        lab.routes()?;
        lab.nic_like()?;
        // As in the two-namespace lab: no tail-loss probes from the client, so a retransmission
        // means a lost segment (its timeout), which is what the tests count.
        lab.client
            .exec("sysctl", &["-qw", "net.ipv4.tcp_early_retrans=0"])?;
        Ok(lab)
    }

    /// Forwarding in the gateway; the client's and the server's routes to each other through
    /// it; the routes of the spoofed ranges back into the client namespace.
    fn routes(&self) -> anyhow::Result<()> {
        self.gateway.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;
        self.client
            .ip(&["route", "add", "198.18.20.0/24", "via", "198.18.10.1"])?;
        self.client.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:20::/64",
            "via",
            "2001:db8:10::1",
        ])?;
        for dst in ["198.18.10.0/24", SPOOFED_V4] {
            self.server
                .ip(&["route", "add", dst, "via", "198.18.20.1"])?;
        }
        for dst in ["2001:db8:10::/64", SPOOFED_V6] {
            self.server
                .ip(&["-6", "route", "add", dst, "via", "2001:db8:20::1"])?;
        }
        self.gateway
            .ip(&["route", "add", SPOOFED_V4, "via", "198.18.10.2"])?;
        self.gateway
            .ip(&["-6", "route", "add", SPOOFED_V6, "via", "2001:db8:10::2"])?;
        Ok(())
    }

    /// Every veth end like a NIC: GRO on, threaded NAPI, TSO and TX checksum offload off (every
    /// end sends: the client and the server, and the gateway both ways), and a `pfifo_fast`
    /// qdisc, a NIC's default. NAPI threads pinned so that each direction's two hops run on
    /// different cores: the gateway's two ends on the first core (the request client's, see
    /// [`GatewayLab::requests`]), the client's and the server's ends on the second. With the
    /// client's own end on the request client's core instead, every answer waited a scheduler
    /// tick (4 ms) to reach the client (measured; 0.15 ms as pinned here).
    ///
    /// The qdisc matters for bulk transfers: a veth without one (`noqueue`) drops whatever finds
    /// the peer's 256-entry ring full, and a forwarding gateway, which sends a GRO batch as up
    /// to 64 segments at once, lost one segment in ten that way (measured: 0.9 Gbit/s, thousands
    /// of retransmissions per 100 MB). With a qdisc the kernel stops the queue while the ring is
    /// full (`veth_xmit`, since Linux 6.16), as a NIC's driver stops its TX queue: no drop, 3 to
    /// 4 Gbit/s. Frames an XDP program redirects into a veth bypass any qdisc, as they bypass a
    /// NIC's: a full ring drops them (`tx_queue_0_xdp_xmit_errors`), which is what XDP
    /// forwarding costs on real hardware too.
    fn nic_like(&mut self) -> anyhow::Result<()> {
        let ends = [
            (&self.gateway, &self.client_veth.b, 0),
            (&self.server, &self.server_veth.b, 1),
            (&self.gateway, &self.server_veth.a, 0),
            (&self.client, &self.client_veth.a, 1),
        ];
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        for (ns, dev, _) in ends {
            ns.exec(
                "ethtool",
                &["-K", dev, "gro", "on", "tso", "off", "tx", "off"],
            )?;
            ns.exec(
                "sh",
                &["-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")],
            )?;
            ns.exec(
                "tc",
                &["qdisc", "replace", "dev", dev, "root", "pfifo_fast"],
            )?;
        }
        for (_, dev, cpu) in ends {
            let threads = napi_threads(dev)?;
            if threads.is_empty() {
                bail!("no NAPI thread of {dev} after enabling threaded NAPI");
            }
            for pid in threads {
                pin(pid, cpu % cpus)?;
            }
        }
        self.batch_cpu = Some(0);
        Ok(())
    }

    /// The client's interface (its end of the client <-> gateway pair).
    #[must_use]
    pub fn client_if(&self) -> &str {
        &self.client_veth.a
    }

    /// The gateway's client-facing interface (where `attach CLIENT_IF --gateway SERVER_IF`
    /// names the client side).
    #[must_use]
    pub fn gateway_client_if(&self) -> &str {
        &self.client_veth.b
    }

    /// The gateway's server-facing interface.
    #[must_use]
    pub fn gateway_server_if(&self) -> &str {
        &self.server_veth.a
    }

    /// The server's interface.
    #[must_use]
    pub fn server_if(&self) -> &str {
        &self.server_veth.b
    }

    /// The server's address of `v6`'s family, on `port`.
    #[must_use]
    pub fn server_addr(v6: bool, port: u16) -> SocketAddr {
        if v6 {
            SocketAddr::new(IpAddr::V6(SERVER_V6), port)
        } else {
            SocketAddr::new(IpAddr::V4(SERVER_V4), port)
        }
    }

    /// Attaches the pass-through program to the client's and the server's ends: a veth drops
    /// the frames XDP sends or redirects into it unless its peer runs XDP, and the gateway's
    /// programs send to both. Detached when the guards drop.
    ///
    /// # Errors
    /// If either attach fails.
    pub fn attach_pass_programs(
        &self,
    ) -> anyhow::Result<(crate::loader::AttachGuard, crate::loader::AttachGuard)> {
        use crate::loader::{AttachGuard, AttachMode, Program};
        Ok((
            AttachGuard::new(
                self.client_if(),
                Some(self.client.name()),
                Program::Pass,
                AttachMode::Native,
            )?,
            AttachGuard::new(
                self.server_if(),
                Some(self.server.name()),
                Program::Pass,
                AttachMode::Native,
            )?,
        ))
    }

    /// TCP listeners on `port` in the server namespace (0.0.0.0 and the server's IPv6 address).
    ///
    /// # Errors
    /// If binding fails.
    ///
    /// # Panics
    /// If the thread in the namespace panics.
    pub fn listen(&self, port: u16) -> anyhow::Result<(TcpListener, TcpListener)> {
        crate::lab::listen_in(&self.server, SERVER_V6, port)
    }

    /// Connects from the client namespace to `addr`, within `timeout`.
    ///
    /// # Errors
    /// If the connection fails or times out.
    ///
    /// # Panics
    /// If the thread in the namespace panics.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
        crate::lab::connect_in(&self.client, addr, timeout)
    }

    /// Makes `n` requests from the client namespace to `target` through the gateway, as
    /// [`Lab::requests`] does (connect, a 16-byte request right after `connect()` returns, its
    /// echo, close; each within `timeout`): latencies, failures and the client's
    /// retransmissions. Needs an echo server on `target` ([`crate::lab::echo_server`]).
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
        run_requests(&self.client, self.batch_cpu, move |r| {
            for i in 0..n {
                r.one(target, shape, i, timeout);
            }
        })
    }

    /// A raw AF_PACKET sender on the client's interface, its frames addressed to the gateway's
    /// client-facing end (the client's next hop).
    ///
    /// # Errors
    /// If the socket cannot be opened or bound.
    ///
    /// # Panics
    /// If the thread in the namespace panics.
    pub fn raw_sender(&self) -> anyhow::Result<RawSender> {
        let dev = self.client_if().to_owned();
        let src = Lab::mac(&self.client, self.client_if())?;
        let dst = Lab::mac(&self.gateway, self.gateway_client_if())?;
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

    /// Sends a bounded flood from the client namespace through the gateway, every frame from a
    /// spoofed source ([`spoofed_source`]); stops early once `stop` is set. Returns how many
    /// frames went out.
    ///
    /// # Errors
    /// If the sender cannot be opened or sending fails for a reason other than a full queue.
    pub fn flood(&self, spec: FloodSpec, stop: &AtomicBool) -> anyhow::Result<u64> {
        let sender = self.raw_sender()?;
        flood_from(&sender, spec, stop, spoofed_source)
    }

    /// A capture of what reaches the server's kernel on its interface (SYNs among them).
    ///
    /// # Errors
    /// If the socket cannot be opened.
    pub fn server_capture(&self) -> anyhow::Result<Capture> {
        Capture::start(&self.server, self.server_if())
    }

    /// Half-open (SYN_RECV) entries in the server's socket table.
    ///
    /// # Errors
    /// If `ss` fails.
    pub fn server_syn_recv(&self) -> anyhow::Result<usize> {
        syn_recv_count(&self.server)
    }

    /// Makes segments carrying data get lost, one in every `every` each way (counted per
    /// direction, `nft numgen inc`), until the guard drops: dropped on arrival at the server
    /// (the client's) and at the client (the server's), after the gateway, so whatever the
    /// gateway does with them (its stack or an XDP redirect, which no qdisc or netfilter hook of
    /// the gateway sees), the receiver never gets them and the sender must recover them. GRO is
    /// off on the two receiving ends meanwhile, so one drop loses one segment, not a GRO batch.
    /// (This kernel has no `sch_netem`.)
    ///
    /// # Errors
    /// If nft or ethtool fails.
    pub fn lose_segments(&self, every: u32) -> anyhow::Result<Loss> {
        let mut tables = Vec::new();
        for (ns, dev) in [
            (&self.server, self.server_if()),
            (&self.client, self.client_if()),
        ] {
            ns.exec("ethtool", &["-K", dev, "gro", "off"])?;
            tables.push(NftTable::new(
                ns,
                "xi_loss",
                "prerouting",
                -300,
                &[format!(
                    "meta l4proto tcp meta length > 200 numgen inc mod {every} == 0 counter drop"
                )],
            )?);
        }
        Ok(Loss {
            gro: vec![
                (self.server.name().to_owned(), self.server_if().to_owned()),
                (self.client.name().to_owned(), self.client_if().to_owned()),
            ],
            tables,
        })
    }

    /// Sends `bytes` from the client to a fresh listener on `target` in the server namespace,
    /// then `bytes` back on the same connection, each a deterministic pattern (different each
    /// way) checked byte for byte on receipt; returns both directions' throughput and both
    /// sockets' `TCP_INFO` (taken once everything was received). No socket operation may stall
    /// longer than `idle`.
    ///
    /// # Errors
    /// If the connection fails or stalls, or a byte differs (the message names its offset).
    ///
    /// # Panics
    /// If a thread in a namespace panics.
    pub fn bulk(&self, target: SocketAddr, bytes: u64, idle: Duration) -> anyhow::Result<Bulk> {
        let listener = self
            .server
            .spawn(move || TcpListener::bind(target))
            .join()
            .expect("bind thread")
            .with_context(|| format!("listen on {target} in the server namespace"))?;
        let server = std::thread::spawn(move || -> anyhow::Result<(Instant, TcpInfo)> {
            let mut s = accept_within(&listener, idle + Duration::from_secs(5))?;
            s.set_read_timeout(Some(idle))?;
            s.set_write_timeout(Some(idle))?;
            receive_pattern(&mut s, UP_SEED, bytes).context("client -> server")?;
            let received = Instant::now();
            send_pattern(&mut s, DOWN_SEED, bytes).context("server -> client")?;
            // The client closes once it has read everything: every segment was acknowledged.
            let mut b = [0u8; 1];
            if s.read(&mut b).context("wait for the client's FIN")? != 0 {
                bail!("the client sent more than {bytes} bytes");
            }
            Ok((received, TcpInfo::of(&s)?))
        });
        let client = self.client.spawn(move || -> anyhow::Result<_> {
            let mut s = TcpStream::connect_timeout(&target, idle)
                .with_context(|| format!("connect to {target}"))?;
            s.set_read_timeout(Some(idle))?;
            s.set_write_timeout(Some(idle))?;
            let start = Instant::now();
            send_pattern(&mut s, UP_SEED, bytes).context("client -> server")?;
            receive_pattern(&mut s, DOWN_SEED, bytes).context("server -> client")?;
            let done = Instant::now();
            let info = TcpInfo::of(&s)?;
            s.shutdown(std::net::Shutdown::Write)?;
            Ok((start, done, info))
        });
        let c = client.join().expect("bulk client thread");
        let s = server.join().expect("bulk server thread");
        let (start, done, client) = c.with_context(|| format!("bulk transfer to {target}"))?;
        let (received, server) = s.with_context(|| format!("bulk transfer to {target}"))?;
        Ok(Bulk {
            up: Transfer {
                bytes,
                elapsed: received.saturating_duration_since(start),
            },
            down: Transfer {
                bytes,
                elapsed: done.saturating_duration_since(received),
            },
            client,
            server,
        })
    }
}

/// The spoofed source of flood frame `i`: 198.19.128.0/17 or 2001:db8:11::/48, never a lab
/// host; both ranges are routed back into the client namespace.
#[must_use]
pub fn spoofed_source(target: IpAddr, i: u64) -> IpAddr {
    let lo = (i % 32_000) as u16 + 1;
    match target {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 19, 128 + (lo >> 8) as u8, lo as u8)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x11, 0, 0, 0, 0, lo)),
    }
}

/// An nftables table of its own in a namespace, one base chain on `hook` whose rules are given
/// whole (verdict included); deleted with the guard.
#[derive(Debug)]
pub struct NftTable {
    netns: String,
    table: String,
}

impl NftTable {
    /// Creates table `inet TABLE` in `ns` with a filter chain on `hook` (`prerouting`, `input`,
    /// `forward`, `output`, `postrouting`) at `priority`, holding `rules` (nft expressions
    /// ending in their verdict, e.g. `tcp sport 80 tcp flags & (syn|ack) == syn|ack drop`).
    ///
    /// # Errors
    /// If nft fails.
    pub fn new(
        ns: &Netns,
        table: &str,
        hook: &str,
        priority: i32,
        rules: &[String],
    ) -> anyhow::Result<NftTable> {
        ns.exec("nft", &["add", "table", "inet", table])?;
        let t = NftTable {
            netns: ns.name().to_owned(),
            table: table.to_owned(),
        };
        let chain = format!("{{ type filter hook {hook} priority {priority} ; }}");
        ns.exec("nft", &["add", "chain", "inet", table, "c", &chain])?;
        for r in rules {
            ns.exec("nft", &["add", "rule", "inet", table, "c", r])?;
        }
        Ok(t)
    }

    /// Packets counted by the table's `counter` statements, summed.
    ///
    /// # Errors
    /// If nft fails or prints something else than expected.
    pub fn counted(&self) -> anyhow::Result<u64> {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.netns,
                "nft",
                "-j",
                "list",
                "table",
                "inet",
                &self.table,
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out).context("nft -j output")?;
        let mut n = 0;
        for item in v["nftables"]
            .as_array()
            .context("nft -j: no nftables array")?
        {
            for e in item["rule"]["expr"].as_array().into_iter().flatten() {
                n += e["counter"]["packets"].as_u64().unwrap_or(0);
            }
        }
        Ok(n)
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.netns,
                "nft",
                "delete",
                "table",
                "inet",
                &self.table,
            ],
        );
    }
}

/// Segment loss set up by [`GatewayLab::lose_segments`]; ends (GRO back on) when dropped.
#[derive(Debug)]
pub struct Loss {
    /// (namespace, interface) whose GRO goes back on.
    gro: Vec<(String, String)>,
    /// The server's table, then the client's.
    tables: Vec<NftTable>,
}

impl Loss {
    /// Segments dropped so far: (on arrival at the server, on arrival at the client).
    ///
    /// # Errors
    /// If nft fails.
    pub fn dropped(&self) -> anyhow::Result<(u64, u64)> {
        Ok((self.tables[0].counted()?, self.tables[1].counted()?))
    }
}

impl Drop for Loss {
    fn drop(&mut self) {
        self.tables.clear();
        for (ns, dev) in &self.gro {
            let _ = run(
                "ip",
                &["netns", "exec", ns, "ethtool", "-K", dev, "gro", "on"],
            );
        }
    }
}

/// One direction of a [`GatewayLab::bulk`] transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes moved (and checked).
    pub bytes: u64,
    /// From the first byte sent to the last received.
    pub elapsed: Duration,
}

impl Transfer {
    /// Throughput in Gbit/s.
    #[must_use]
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// What [`GatewayLab::bulk`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// Client -> server.
    pub up: Transfer,
    /// Server -> client.
    pub down: Transfer,
    /// The client socket's `TCP_INFO` once it had received everything.
    pub client: TcpInfo,
    /// The server socket's `TCP_INFO` once the client had received everything.
    pub server: TcpInfo,
}

/// The parts of a socket's `TCP_INFO` (`include/uapi/linux/tcp.h`, `tcp_get_info`) the gateway
/// tests read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// `tcpi_options`: [`TcpInfo::TIMESTAMPS`], [`TcpInfo::SACK`], [`TcpInfo::WSCALE`] ...
    pub options: u8,
    /// The window scale the peer announced (applied to what we send).
    pub snd_wscale: u8,
    /// The window scale we announced.
    pub rcv_wscale: u8,
    /// Segments this socket retransmitted over its life.
    pub total_retrans: u32,
    /// Maximum segment size this socket sends.
    pub snd_mss: u32,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u32,
    /// Segments this socket sent.
    pub segs_out: u32,
    /// Segments this socket received.
    pub segs_in: u32,
}

impl TcpInfo {
    /// `TCPI_OPT_TIMESTAMPS`: timestamps (RFC 7323) in use.
    pub const TIMESTAMPS: u8 = 1;
    /// `TCPI_OPT_SACK`: SACK (RFC 2018) in use.
    pub const SACK: u8 = 2;
    /// `TCPI_OPT_WSCALE`: window scaling (RFC 7323) in use.
    pub const WSCALE: u8 = 4;

    /// `getsockopt(TCP_INFO)` of `s`.
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn of(s: &TcpStream) -> anyhow::Result<TcpInfo> {
        // SAFETY: tcp_info is plain data.
        let mut t: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = u32::try_from(size_of::<libc::tcp_info>())?;
        // SAFETY: a valid buffer of the length passed.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut t).cast(),
                &raw mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("getsockopt(TCP_INFO)");
        }
        Ok(TcpInfo {
            options: t.tcpi_options,
            // `__u8 tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4;` (the first in the low bits).
            snd_wscale: t.tcpi_snd_rcv_wscale & 0xf,
            rcv_wscale: t.tcpi_snd_rcv_wscale >> 4,
            total_retrans: t.tcpi_total_retrans,
            snd_mss: t.tcpi_snd_mss,
            rtt_us: t.tcpi_rtt,
            segs_out: t.tcpi_segs_out,
            segs_in: t.tcpi_segs_in,
        })
    }

    /// Whether timestamps, SACK and window scaling are all in use.
    #[must_use]
    pub fn all_options(&self) -> bool {
        let all = TcpInfo::TIMESTAMPS | TcpInfo::SACK | TcpInfo::WSCALE;
        self.options & all == all
    }
}

/// Seed of the client -> server pattern.
const UP_SEED: u64 = 0x5eed_0001_c11e_0000;
/// Seed of the server -> client pattern (another, so an echo or a crossed stream is caught).
const DOWN_SEED: u64 = 0x5eed_0002_5e7e_0000;
/// Bytes per read or write of a bulk transfer.
const CHUNK: usize = 256 * 1024;

/// Fills `buf` with the pattern `seed` has at stream offset `offset`: byte `o` is byte `o % 8`
/// (little-endian) of splitmix64's output for word `o / 8`, so a lost, repeated or shifted
/// range never matches.
pub fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut o = offset;
    let mut i = 0;
    while i < buf.len() {
        let mut z = seed.wrapping_add((o >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let w = (z ^ (z >> 31)).to_le_bytes();
        let start = (o & 7) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[start..start + n]);
        i += n;
        o += n as u64;
    }
}

/// Writes `bytes` of pattern `seed`.
fn send_pattern(s: &mut TcpStream, seed: u64, bytes: u64) -> anyhow::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < bytes {
        let n = usize::try_from((bytes - sent).min(CHUNK as u64))?;
        pattern(seed, sent, &mut buf[..n]);
        s.write_all(&buf[..n])
            .with_context(|| format!("write at offset {sent} of {bytes}"))?;
        sent += n as u64;
    }
    Ok(())
}

/// Reads exactly `bytes` and checks them against pattern `seed`.
fn receive_pattern(s: &mut TcpStream, seed: u64, bytes: u64) -> anyhow::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < bytes {
        let max = usize::try_from((bytes - got).min(CHUNK as u64))?;
        let n = s
            .read(&mut buf[..max])
            .with_context(|| format!("read at offset {got} of {bytes}"))?;
        if n == 0 {
            bail!("connection closed after {got} of {bytes} bytes");
        }
        pattern(seed, got, &mut want[..n]);
        if let Some(i) = buf[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
            bail!(
                "byte {} of {bytes} is {:#04x}, not {:#04x}",
                got + i as u64,
                buf[i],
                want[i]
            );
        }
        got += n as u64;
    }
    Ok(())
}

/// Accepts one connection on `l` within `limit` (a blocking accept would hang the test if the
/// client never connects).
fn accept_within(l: &TcpListener, limit: Duration) -> anyhow::Result<TcpStream> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + limit;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("no connection within {limit:?}");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pattern;

    #[test]
    fn pattern_is_the_same_whatever_the_chunking() {
        let mut whole = vec![0u8; 1000];
        pattern(7, 3, &mut whole);
        let mut parts = vec![0u8; 1000];
        let (a, b) = parts.split_at_mut(13);
        pattern(7, 3, a);
        pattern(7, 16, b);
        assert_eq!(whole, parts);
        let mut other = vec![0u8; 1000];
        pattern(8, 3, &mut other);
        assert_ne!(whole, other);
    }
}
