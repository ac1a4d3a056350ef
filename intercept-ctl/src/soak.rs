//! The soak's adversary and its accounting: a pool of mixed hostile frames (spoofed SYNs, forged
//! ACKs, junk) for the lab's raw sender, a bounded flood that cycles through it, the identities
//! every frame the XDP program saw must satisfy, and a process's resident memory. Used by
//! `intercept-ctl lab --soak` (`./x soak`).
//!
//! Every IP frame of the pool goes from a spoofed source in 198.19.0.0/16 or 2001:db8:1::/48 to
//! the lab's server (198.18.0.1, 2001:db8::1); random bytes only ever follow a non-IP EtherType,
//! and corrupted headers keep their addresses. So, as for [`crate::lab::flood`], nothing leaves the
//! lab's namespaces and nothing names an address outside 198.18.0.0/15 and 2001:db8::/32.
use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use intercept_common::{
    Counter, checksum,
    craft::{Link, TcpSegment, eth_header, ipv4_header, ipv6_header, linux_syn_options, tcp_frame},
    parse::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, tcp_flags},
};

use crate::{
    lab::{RawSender, spoofed_source},
    stats::Counters,
};

/// What a frame of the mix is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A spoofed SYN (Linux's options, correct checksum) to the protected port.
    SpoofedSyn,
    /// A forged ACK (random numbers; half with timestamps, some with data or FIN).
    ForgedAck,
    /// A SYN or ACK cut short somewhere after its Ethernet header.
    Truncated,
    /// A SYN or ACK with one to four random bytes of its IP or TCP header overwritten (never its
    /// addresses).
    Corrupted,
    /// Random bytes after a non-IP EtherType.
    RandomBytes,
    /// UDP to a random port, or an ICMP or ICMPv6 echo request, to the server (random payload).
    NonTcp,
    /// An IPv4 SYN with the more-fragments flag set.
    Fragment,
    /// A spoofed SYN behind an 802.1Q tag.
    VlanSyn,
    /// A spoofed SYN with a wrong TCP checksum.
    BadChecksumSyn,
    /// A spoofed SYN carrying data.
    DataSyn,
    /// A spoofed SYN signed with a TCP-MD5 option.
    SignedSyn,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 11] = [
        Kind::SpoofedSyn,
        Kind::ForgedAck,
        Kind::Truncated,
        Kind::Corrupted,
        Kind::RandomBytes,
        Kind::NonTcp,
        Kind::Fragment,
        Kind::VlanSyn,
        Kind::BadChecksumSyn,
        Kind::DataSyn,
        Kind::SignedSyn,
    ];

    /// Its name in reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Kind::SpoofedSyn => "spoofed_syn",
            Kind::ForgedAck => "forged_ack",
            Kind::Truncated => "truncated",
            Kind::Corrupted => "corrupted",
            Kind::RandomBytes => "random_bytes",
            Kind::NonTcp => "non_tcp",
            Kind::Fragment => "fragment",
            Kind::VlanSyn => "vlan_syn",
            Kind::BadChecksumSyn => "bad_checksum_syn",
            Kind::DataSyn => "data_syn",
            Kind::SignedSyn => "signed_syn",
        }
    }
}

/// The mix, in twentieths: 8 spoofed SYNs, 5 forged ACKs, 7 junk frames of the other kinds.
const MIX: [Kind; 20] = [
    Kind::SpoofedSyn,
    Kind::ForgedAck,
    Kind::SpoofedSyn,
    Kind::Truncated,
    Kind::SpoofedSyn,
    Kind::ForgedAck,
    Kind::Corrupted,
    Kind::SpoofedSyn,
    Kind::RandomBytes,
    Kind::ForgedAck,
    Kind::SpoofedSyn,
    Kind::NonTcp,
    Kind::SpoofedSyn,
    Kind::ForgedAck,
    Kind::Fragment,
    Kind::SpoofedSyn,
    Kind::VlanSyn,
    Kind::ForgedAck,
    Kind::SpoofedSyn,
    Kind::BadChecksumSyn,
];

/// xorshift64*: a fixed, dependency-free sequence (the pool is the same on every run).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A pool of `n` frames of the mix, from `link` (the raw sender's) to `target` (the server's two
/// addresses and the protected port): frame `i` from spoofed source `i`. Kinds repeat every 20
/// frames, with a data SYN and a signed SYN in place of a spoofed SYN every 100.
#[must_use]
pub fn frames(link: &Link, targets: [IpAddr; 2], port: u16, n: usize) -> Vec<(Kind, Vec<u8>)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            let kind = match (MIX[i % MIX.len()], i % 100) {
                (Kind::SpoofedSyn, 0) => Kind::DataSyn,
                (Kind::SpoofedSyn, 50) => Kind::SignedSyn,
                (k, _) => k,
            };
            let dst = targets[(i / MIX.len()) % 2];
            (kind, frame(&mut rng, link, kind, dst, port, i as u64))
        })
        .collect()
}

/// A spoofed segment from source `i` to `dst`.
fn segment(rng: &mut Rng, dst: IpAddr, port: u16, i: u64, flags: u8) -> TcpSegment {
    let mut s = TcpSegment::new(
        spoofed_source(dst, i),
        dst,
        1024 + (i % 60_000) as u16,
        port,
        flags,
    );
    s.seq = rng.u32();
    if flags & tcp_flags::SYN != 0 {
        s.options = linux_syn_options(1460, rng.u32(), 7);
    } else {
        s.ack_seq = rng.u32();
        if rng.below(2) == 0 {
            s.options = vec![1, 1, 8, 10];
            s.options.extend_from_slice(&rng.u32().to_be_bytes());
            s.options.extend_from_slice(&rng.u32().to_be_bytes());
        }
    }
    s
}

/// Where a frame's IP addresses lie (after an untagged Ethernet header).
fn address_bytes(dst: IpAddr) -> std::ops::Range<usize> {
    match dst {
        IpAddr::V4(_) => 14 + 12..14 + 20,
        IpAddr::V6(_) => 14 + 8..14 + 40,
    }
}

fn frame(rng: &mut Rng, link: &Link, kind: Kind, dst: IpAddr, port: u16, i: u64) -> Vec<u8> {
    use tcp_flags::{ACK, FIN, PSH, SYN};
    match kind {
        Kind::SpoofedSyn => tcp_frame(link, &segment(rng, dst, port, i, SYN)),
        Kind::ForgedAck => {
            let mut s = segment(rng, dst, port, i, ACK);
            match rng.below(4) {
                0 => {
                    s.flags |= PSH;
                    s.payload = rng.bytes(16);
                }
                1 => s.flags |= FIN,
                _ => {}
            }
            tcp_frame(link, &s)
        }
        Kind::Truncated => {
            let flags = if rng.below(2) == 0 { SYN } else { ACK };
            let mut f = tcp_frame(link, &segment(rng, dst, port, i, flags));
            let cut = 14 + rng.below(f.len() - 14);
            f.truncate(cut);
            f
        }
        Kind::Corrupted => {
            let flags = if rng.below(2) == 0 { SYN } else { ACK };
            let mut f = tcp_frame(link, &segment(rng, dst, port, i, flags));
            let keep = address_bytes(dst);
            for _ in 0..=rng.below(4) {
                let at = 14 + rng.below(f.len() - 14);
                if !keep.contains(&at) {
                    f[at] = rng.next() as u8;
                }
            }
            f
        }
        Kind::RandomBytes => {
            let mut et = rng.next() as u16;
            // Never IP, a VLAN tag (whose inner type could be IP), ARP or RARP.
            if [
                ETH_P_IP,
                ETH_P_IPV6,
                ETH_P_8021Q,
                ETH_P_8021AD,
                0x0806,
                0x8035,
            ]
            .contains(&et)
            {
                et = 0x88b5; // IEEE 802 local experimental
            }
            let mut f = eth_header(link, et);
            let len = rng.below(200);
            f.extend(rng.bytes(len));
            f
        }
        Kind::NonTcp => {
            // UDP to a random port, or an echo request (ICMP, ICMPv6), random payload.
            let src = spoofed_source(dst, i);
            let len = 8 + rng.below(56);
            let mut body = rng.bytes(len);
            let udp = rng.below(2) == 0;
            if !udp {
                body[..2].copy_from_slice(if dst.is_ipv4() { &[8, 0] } else { &[128, 0] });
            }
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    let proto = if udp { 17 } else { 1 };
                    let mut f = eth_header(link, ETH_P_IP);
                    f.extend(ipv4_header(s.octets(), d.octets(), proto, 64, body.len()));
                    f.extend(body);
                    f
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    let next = if udp { 17 } else { 58 };
                    let mut f = eth_header(link, ETH_P_IPV6);
                    f.extend(ipv6_header(s.octets(), d.octets(), next, 64, body.len()));
                    f.extend(body);
                    f
                }
                _ => unreachable!("spoofed_source keeps the family"),
            }
        }
        Kind::Fragment => {
            // The first fragment of a SYN: IPv4's more-fragments flag, or IPv6's fragment header.
            let seg = segment(rng, dst, port, i, SYN);
            let tcp = tcp_frame(&Link::default(), &seg)[address_bytes(dst).end..].to_vec();
            let mut f = match (seg.src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    let mut h = ipv4_header(s.octets(), d.octets(), 6, 64, tcp.len());
                    h[6] = 0x20; // more fragments, offset 0
                    h[10..12].copy_from_slice(&[0, 0]);
                    let c = checksum::finish(checksum::add_bytes(0, &h));
                    h[10..12].copy_from_slice(&c.to_be_bytes());
                    let mut f = eth_header(link, ETH_P_IP);
                    f.extend(h);
                    f
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    let mut f = eth_header(link, ETH_P_IPV6);
                    f.extend(ipv6_header(s.octets(), d.octets(), 44, 64, 8 + tcp.len()));
                    f.extend([6, 0, 0, 1]); // next header TCP, offset 0, more fragments
                    f.extend(rng.u32().to_be_bytes());
                    f
                }
                _ => unreachable!("spoofed_source keeps the family"),
            };
            f.extend(tcp);
            f
        }
        Kind::VlanSyn => {
            let tagged = Link {
                vlans: vec![(ETH_P_8021Q, 100)],
                ..link.clone()
            };
            tcp_frame(&tagged, &segment(rng, dst, port, i, SYN))
        }
        Kind::BadChecksumSyn => {
            let mut f = tcp_frame(link, &segment(rng, dst, port, i, SYN));
            let l4 = address_bytes(dst).end;
            f[l4 + 16] ^= 0x5a;
            f
        }
        Kind::DataSyn => {
            let mut s = segment(rng, dst, port, i, SYN);
            s.payload = rng.bytes(8);
            tcp_frame(link, &s)
        }
        Kind::SignedSyn => {
            let mut s = segment(rng, dst, port, i, SYN);
            s.options = vec![2, 4, 5, 0xb4, 19, 18];
            s.options.extend(rng.bytes(16));
            s.options.extend([0, 0]);
            tcp_frame(link, &s)
        }
    }
}

/// What [`flood_frames`] sent.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// Frames sent, per kind (in [`Kind::ALL`] order).
    pub per_kind: Vec<(Kind, u64)>,
    /// All frames sent.
    pub total: u64,
    /// How long it sent for.
    pub elapsed: Duration,
}

/// Sends the pool round and round: at most `count` frames, for at most `max_time`, at `rate`
/// frames per second (0: as fast as the sender goes), until `stop` is set.
///
/// # Errors
/// If sending fails for a reason other than a full queue.
pub fn flood_frames(
    sender: &RawSender,
    pool: &[(Kind, Vec<u8>)],
    count: u64,
    max_time: Duration,
    rate: u64,
    stop: &AtomicBool,
) -> anyhow::Result<Sent> {
    if pool.is_empty() {
        bail!("empty frame pool");
    }
    let start = Instant::now();
    let mut per_kind = [0u64; Kind::ALL.len()];
    let mut sent = 0u64;
    let mut i = 0usize;
    while sent < count && !stop.load(Ordering::Relaxed) {
        // The clock every 256 frames: the bound holds within microseconds.
        if sent % 256 == 0 && start.elapsed() >= max_time {
            break;
        }
        let (kind, f) = &pool[i];
        match sender.send(f) {
            Ok(()) => {
                sent += 1;
                per_kind[*kind as usize] += 1;
                i = (i + 1) % pool.len();
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => std::thread::yield_now(),
            Err(e) => bail!("flood send ({}): {e}", kind.name()),
        }
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(Sent {
        per_kind: Kind::ALL
            .iter()
            .map(|k| (*k, per_kind[*k as usize]))
            .collect(),
        total: sent,
        elapsed: start.elapsed(),
    })
}

/// One accounting identity of the counters: `lhs` must equal the sum of `rhs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The counter on the left.
    pub lhs: Counter,
    /// The counters on the right.
    pub rhs: Vec<Counter>,
}

impl Identity {
    /// `a == b + c + ...` with the counters' names.
    #[must_use]
    pub fn formula(&self) -> String {
        let rhs: Vec<_> = self.rhs.iter().map(|c| c.name()).collect();
        format!("{} == {}", self.lhs.name(), rhs.join(" + "))
    }

    /// Its two sides in `c`.
    #[must_use]
    pub fn sides(&self, c: &Counters) -> (u64, u64) {
        (c.get(self.lhs), self.rhs.iter().map(|r| c.get(*r)).sum())
    }
}

/// The identities the XDP program's counters satisfy at rest, from its code:
///
/// - every frame it sees is counted once in `packets` (first thing the program does) and ends in
///   exactly one verdict, each counted where it is returned: XDP_PASS only through `pass()`,
///   which counts `passed`; XDP_DROP only through `drop()`, which counts `dropped`; XDP_TX only
///   after counting `syn_ack_sent`; XDP_ABORTED only after counting `aborted`. The TC program
///   and the controller share the counters map but count none of these five.
/// - `drop()` is called with `ack_bad_mac` (a forged or expired cookie) and `syn_signed` (a
///   TCP-MD5/AO SYN) only.
#[must_use]
pub fn identities() -> Vec<Identity> {
    vec![
        Identity {
            lhs: Counter::Packets,
            rhs: vec![
                Counter::Passed,
                Counter::Dropped,
                Counter::SynAckSent,
                Counter::Aborted,
            ],
        },
        Identity {
            lhs: Counter::Dropped,
            rhs: Counter::DROP_REASONS.to_vec(),
        },
    ]
}

/// Resident memory of process `pid` in KiB (`VmRSS`).
///
/// # Errors
/// If the process is gone or its status has no `VmRSS`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()
        .context("VmRSS")
}

/// A request to the metrics endpoint at `addr` (from the calling thread's namespace): the
/// response's status line and body.
///
/// # Errors
/// If it cannot connect, or the answer is not HTTP.
pub fn scrape(addr: SocketAddr, timeout: Duration) -> anyhow::Result<(String, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")?;
    let mut r = String::new();
    s.read_to_string(&mut r)?;
    let (head, body) = r.split_once("\r\n\r\n").context("no HTTP header")?;
    Ok((
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use intercept_common::parse::{Dissected, L4, TcpKind, classify, dissect};

    use super::*;

    fn pool() -> Vec<(Kind, Vec<u8>)> {
        let targets = [
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        ];
        frames(&Link::default(), targets, 8080, 2000)
    }

    fn in_lab(a: &[u8]) -> bool {
        match a.len() {
            4 => a[0] == 198 && (a[1] & 0xfe) == 18,
            16 => a[..4] == [0x20, 0x01, 0x0d, 0xb8],
            _ => false,
        }
    }

    /// Every IP frame of the pool, however mangled, names only lab addresses (198.18.0.0/15,
    /// 2001:db8::/32), and is sent to the server's MAC.
    #[test]
    fn every_frame_stays_in_the_lab_ranges() {
        for (i, (kind, f)) in pool().iter().enumerate() {
            assert_eq!(f[..6], Link::default().dst, "frame {i} ({kind:?})");
            let et = u16::from_be_bytes([f[12], f[13]]);
            let l3 = if et == ETH_P_8021Q { 18 } else { 14 };
            let et = u16::from_be_bytes([f[l3 - 2], f[l3 - 1]]);
            match et {
                ETH_P_IP if f.len() >= l3 + 20 => {
                    assert!(in_lab(&f[l3 + 12..l3 + 16]), "frame {i} ({kind:?}) source");
                    assert!(
                        in_lab(&f[l3 + 16..l3 + 20]),
                        "frame {i} ({kind:?}) destination"
                    );
                }
                ETH_P_IPV6 if f.len() >= l3 + 40 => {
                    assert!(in_lab(&f[l3 + 8..l3 + 24]), "frame {i} ({kind:?}) source");
                    assert!(
                        in_lab(&f[l3 + 24..l3 + 40]),
                        "frame {i} ({kind:?}) destination"
                    );
                }
                ETH_P_IP | ETH_P_IPV6 => assert_eq!(*kind, Kind::Truncated, "frame {i}"),
                other => {
                    assert_eq!(
                        *kind,
                        Kind::RandomBytes,
                        "frame {i}: EtherType {other:#06x}"
                    );
                    assert!(![ETH_P_8021AD, 0x0806, 0x8035].contains(&other));
                }
            }
        }
    }

    /// Each kind is what it says to the dissector (and so to the XDP program).
    #[test]
    fn each_kind_dissects_as_intended() {
        let pool = pool();
        for kind in Kind::ALL {
            assert!(
                pool.iter().any(|(k, _)| *k == kind),
                "no {kind:?} in the pool"
            );
        }
        for (i, (kind, f)) in pool.iter().enumerate() {
            let d = dissect(&f[..]);
            let tcp = match d {
                Ok(Dissected::Ip(ip)) => match ip.l4 {
                    L4::Tcp(t) => Some(t),
                    _ => None,
                },
                _ => None,
            };
            let what = format!("frame {i} ({kind:?}): {d:?}");
            match kind {
                Kind::SpoofedSyn
                | Kind::VlanSyn
                | Kind::BadChecksumSyn
                | Kind::DataSyn
                | Kind::SignedSyn => {
                    let t = tcp.expect(&what);
                    assert_eq!(classify(t.flags), TcpKind::Syn, "{what}");
                    assert_eq!(t.dport, 8080, "{what}");
                    assert_eq!(t.payload_len > 0, *kind == Kind::DataSyn, "{what}");
                }
                Kind::ForgedAck => {
                    assert_eq!(classify(tcp.expect(&what).flags), TcpKind::Ack, "{what}");
                }
                Kind::Truncated => assert!(d.is_err(), "{what}"),
                Kind::RandomBytes => assert!(matches!(d, Ok(Dissected::NotIp { .. })), "{what}"),
                Kind::NonTcp => assert!(
                    matches!(d, Ok(Dissected::Ip(ip)) if matches!(ip.l4, L4::Other(1 | 17 | 58))),
                    "{what}"
                ),
                Kind::Fragment => assert!(
                    matches!(d, Ok(Dissected::Ip(ip)) if matches!(ip.l4, L4::Fragment | L4::SynFragment)),
                    "{what}"
                ),
                Kind::Corrupted => {}
            }
        }
    }

    #[test]
    fn identities_name_their_counters() {
        let c = Counters(vec![
            (Counter::Packets, 10),
            (Counter::Passed, 5),
            (Counter::Dropped, 3),
            (Counter::SynAckSent, 2),
            (Counter::AckBadMac, 2),
            (Counter::SynSigned, 1),
        ]);
        let ids = identities();
        assert_eq!(
            ids[0].formula(),
            "packets == passed + dropped + syn_ack_sent + aborted"
        );
        for id in &ids {
            let (l, r) = id.sides(&c);
            assert_eq!(l, r, "{}", id.formula());
        }
    }
}
