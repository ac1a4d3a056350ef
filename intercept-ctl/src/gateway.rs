//! The controller's half of gateway mode (`attach CLIENT_IFACE --gateway SERVER_IFACE`): what
//! the attachment records of its server-facing interface, the interface roles it writes, the
//! sweep that frees idle spliced connections (the controller deletes what ages out of
//! `intercept_common::maps::SPLICE`; the data path only an ended splice whose 4-tuple a new SYN
//! reuses), the SYNs it sends again to servers that have not answered, and the resets watch mode
//! sends for timed-out handshakes, whose server is not local (no `SOCK_DESTROY`: the gateway
//! resets both ends over the wire).
use std::{
    collections::{BTreeMap, HashSet},
    fs,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
};

use anyhow::Context as _;
use aya::maps::{DevMapHash, HashMap, IterableMap as _, Map, MapData};
use intercept_common::{
    config::{FlowKey, HalfOpen},
    cookie::{WSCALE_NONE, ip_of},
    craft::{TcpSegment, tcp_packet},
    handshake::SynAck,
    maps,
    parse::tcp_flags,
    splice::Held,
    splice::{self, ROLE_CLIENT, ROLE_SERVER, ServerKey, ServerOpts, Splice},
};

use crate::{
    errors::{CtlError, explain},
    pins::PinDir,
};

/// Pin of the XDP link on the server-facing interface (the client-facing one is
/// [`PinDir::link`], pinned last: it marks the attachment complete).
pub const SERVER_LINK_PIN: &str = "link_server";
/// Pin (a symlink `name=IFACE ifindex=N`) recording the server-facing interface at attach.
pub const SERVER_PIN: &str = "server";

/// How a gateway forwards the segments it translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Forward {
    /// Chosen at attach: `kernel` when either interface is a veth (an XDP redirect into a veth
    /// bypasses the qdisc and drops frames when the peer's ring is full: thousands of
    /// retransmissions per 100 MB measured, against tens through the kernel's path),
    /// `redirect` otherwise. Recorded as what it chose.
    #[default]
    Auto,
    /// The kernel's route lookup from XDP (`bpf_fib_lookup`) and an XDP redirect to the egress
    /// interface when it is one of the gateway's and its neighbour is resolved; the kernel's
    /// forwarding path otherwise. For NICs with native XDP redirect.
    Redirect,
    /// Always the kernel's forwarding path (XDP_PASS), queued by the egress qdisc: for veth
    /// (see [`Forward::Auto`]) and NICs without XDP redirect.
    Kernel,
}

impl Forward {
    /// Its name in the record and in `status`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Forward::Auto => "auto",
            Forward::Redirect => "redirect",
            Forward::Kernel => "kernel",
        }
    }

    /// [`Forward::Auto`] made a choice for the interfaces `ifaces` (of the calling thread's
    /// namespace); the others as they are.
    #[must_use]
    pub fn resolve(self, ifaces: &[&str]) -> Forward {
        if self != Forward::Auto {
            return self;
        }
        if ifaces
            .iter()
            .any(|i| link_kind(i).as_deref() == Some("veth"))
        {
            Forward::Kernel
        } else {
            Forward::Redirect
        }
    }
}

/// The kind of a virtual link (`veth`, `bridge`...; `None` for a NIC or if `ip` cannot tell),
/// from `ip -d -j link show`.
fn link_kind(iface: &str) -> Option<String> {
    let out = crate::netns::run("ip", &["-d", "-j", "link", "show", "dev", iface]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.get(0)?
        .get("linkinfo")?
        .get("info_kind")?
        .as_str()
        .map(str::to_owned)
}

/// The forwarding the next gateway attach of this process records (`attach --forward`), as
/// [`Forward`]'s index.
static FORWARD: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Sets how the gateways this process attaches next forward (set once, from the command line
/// or a dead attachment's record, before attaching).
pub fn set_forward(f: Forward) {
    FORWARD.store(f as u8, std::sync::atomic::Ordering::Relaxed);
}

/// See [`set_forward`].
#[must_use]
pub fn forward() -> Forward {
    match FORWARD.load(std::sync::atomic::Ordering::Relaxed) {
        1 => Forward::Redirect,
        2 => Forward::Kernel,
        _ => Forward::Auto,
    }
}

/// The server-facing interface of a gateway attachment, as recorded at attach.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerIface {
    /// Its name.
    pub name: String,
    /// Its index at attach.
    pub ifindex: u32,
    /// How the gateway forwards (`attach --forward`).
    pub forward: Forward,
}

impl ServerIface {
    fn encode(&self) -> String {
        format!(
            "name={} ifindex={} forward={}",
            self.name,
            self.ifindex,
            self.forward.name()
        )
    }

    fn decode(s: &str) -> Option<ServerIface> {
        let (mut name, mut ifindex, mut forward) = (None, None, Forward::Redirect);
        for kv in s.split_whitespace() {
            match kv.split_once('=')? {
                ("name", v) if !v.is_empty() => name = Some(v.to_owned()),
                ("ifindex", v) => ifindex = v.parse().ok(),
                ("forward", "kernel") => forward = Forward::Kernel,
                ("forward", "redirect") => forward = Forward::Redirect,
                _ => {}
            }
        }
        Some(ServerIface {
            name: name?,
            ifindex: ifindex?,
            forward,
        })
    }

    /// Records it in `pins` (before the client-facing link is pinned).
    ///
    /// # Errors
    /// [`CtlError::Io`] if the symlink cannot be made.
    pub fn write(&self, pins: &PinDir) -> Result<(), CtlError> {
        let path = pins.path().join(SERVER_PIN);
        std::os::unix::fs::symlink(self.encode(), &path).map_err(|source| CtlError::Io {
            what: format!("record the server-facing interface at {}", path.display()),
            source,
        })
    }

    /// The server-facing interface recorded in `pins`; `None` for a host's attachment.
    #[must_use]
    pub fn read(pins: &PinDir) -> Option<ServerIface> {
        let target = fs::read_link(pins.path().join(SERVER_PIN)).ok()?;
        ServerIface::decode(&target.to_string_lossy())
    }
}

/// Writes the interface roles (`GW_ROLE`) and redirect targets (`GW_PORTS`) of a gateway into
/// the maps pinned at `pins`, before any of its XDP links exists.
///
/// # Errors
/// A map cannot be opened or written.
pub fn write_roles(pins: &PinDir, client: u32, server: &ServerIface) -> anyhow::Result<()> {
    let server_if = server.ifindex;
    let open = |name: &str| {
        MapData::from_pin(pins.map(name)).map_err(|e| explain(e.into(), &format!("open {name}")))
    };
    let mut roles: HashMap<MapData, u32, u32> =
        HashMap::try_from(Map::HashMap(open(maps::GW_ROLE)?))?;
    roles
        .insert(&client, &ROLE_CLIENT, 0)
        .context("write GW_ROLE (client-facing)")?;
    roles
        .insert(&server_if, &ROLE_SERVER, 0)
        .context("write GW_ROLE (server-facing)")?;
    if server.forward == Forward::Kernel {
        return Ok(());
    }
    let mut ports = DevMapHash::try_from(Map::DevMapHash(open(maps::GW_PORTS)?))?;
    for i in [client, server_if] {
        ports
            .insert(i, i, None, 0)
            .with_context(|| format!("write GW_PORTS (ifindex {i})"))?;
    }
    Ok(())
}

/// Opens the pinned `SPLICE` map of the attachment of `iface`.
///
/// # Errors
/// [`CtlError::NotAttached`] if it has none (not a gateway's, or nothing attached).
pub fn open_splice(
    iface: &str,
    netns: Option<&str>,
) -> anyhow::Result<HashMap<MapData, FlowKey, Splice>> {
    open_pinned(iface, netns, maps::SPLICE)
}

/// Opens the pinned `HELD` map of the attachment of `iface`.
///
/// # Errors
/// [`CtlError::NotAttached`] if it has none.
pub fn open_held(
    iface: &str,
    netns: Option<&str>,
) -> anyhow::Result<HashMap<MapData, FlowKey, Held>> {
    open_pinned(iface, netns, maps::HELD)
}

/// Opens the pinned hash map `name`, keyed by flow, of the attachment of `iface`.
///
/// # Errors
/// [`CtlError::NotAttached`] if it has none.
fn open_pinned<V: aya::Pod>(
    iface: &str,
    netns: Option<&str>,
    name: &str,
) -> anyhow::Result<HashMap<MapData, FlowKey, V>> {
    let pins = PinDir::new(netns, iface);
    let path = pins.map(name);
    if !path.exists() {
        return Err(CtlError::NotAttached {
            iface: iface.to_owned(),
            pin: pins.path().display().to_string(),
        }
        .into());
    }
    let data =
        MapData::from_pin(&path).map_err(|e| explain(e.into(), &format!("open map {name}")))?;
    Ok(HashMap::try_from(Map::HashMap(data))?)
}

/// Frees the held segments whose splice no longer waits for its server (freed, refused,
/// closed, or opened without replaying them: a race between CPUs); returns how many. The data
/// path deletes what it replays; this is the rest, so `HELD` cannot fill up with leftovers.
///
/// # Errors
/// bpf() failure.
pub fn sweep_held(
    held: &mut HashMap<MapData, FlowKey, Held>,
    splice: &HashMap<MapData, FlowKey, Splice>,
) -> anyhow::Result<u64> {
    let keys: Vec<FlowKey> = held.keys().collect::<Result<_, _>>()?;
    let mut freed = 0;
    for key in keys {
        let waiting = match splice.get(&key, 0) {
            Ok(s) => s.state == splice::SYN_SENT,
            Err(aya::maps::MapError::KeyNotFound) => false,
            Err(e) => return Err(e).context("read SPLICE"),
        };
        if !waiting && held.remove(&key).is_ok() {
            freed += 1;
        }
    }
    Ok(freed)
}

/// Frees the entries of `splice` that [`splice::idle_verdict`] gives up at `now_ns` (the data
/// path's clock: `CLOCK_MONOTONIC`, see [`crate::watchctl::monotonic_ns`]); returns how many it
/// deleted. Each entry is read again right before its deletion, so one a segment refreshed since
/// the walk stays.
///
/// # Errors
/// bpf() failure.
pub fn sweep(splice: &mut HashMap<MapData, FlowKey, Splice>, now_ns: u64) -> anyhow::Result<u64> {
    sweep_kept(splice, now_ns).map(|(freed, _)| freed)
}

/// [`sweep`], also returning the entries it kept, as read (for [`resend_syns`] and
/// [`SourceCounts::set_from`], which need no second walk of the table).
///
/// # Errors
/// bpf() failure.
pub fn sweep_kept(
    splice: &mut HashMap<MapData, FlowKey, Splice>,
    now_ns: u64,
) -> anyhow::Result<(u64, Vec<(FlowKey, Splice)>)> {
    let entries: Vec<(FlowKey, Splice)> = crate::batch::entries(splice.map())?;
    let mut freed = 0;
    let mut kept = Vec::with_capacity(entries.len());
    for (key, s) in entries {
        if !splice::idle_verdict(&s, now_ns) {
            kept.push((key, s));
            continue;
        }
        let again = match splice.get(&key, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).context("read SPLICE"),
        };
        if splice::idle_verdict(&again, now_ns) && splice.remove(&key).is_ok() {
            freed += 1;
        } else {
            kept.push((key, again));
        }
    }
    Ok((freed, kept))
}

/// The `GW_SOURCES` array of an attachment (splices held per bucket of client addresses, see
/// `intercept_common::maps::GW_SOURCES`), mapped into this process, with the attachment's
/// bucket key: the data path adds to its buckets atomically, and [`SourceCounts::set_from`]
/// brings each one to what the table holds.
#[derive(Debug)]
pub struct SourceCounts {
    cells: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    key: intercept_common::cookie::Key,
}

// SAFETY: the mapping is shared memory of atomic cells, valid until drop; nothing else refers
// to it in this process.
unsafe impl Send for SourceCounts {}

/// `BPF_F_MMAPABLE` (include/uapi/linux/bpf.h).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Bytes of the `GW_SOURCES` mapping: the kernel spaces an array's values 8 bytes apart.
const SOURCES_LEN: usize = maps::GW_SOURCE_BUCKETS as usize * 8;

/// Writes a fresh random bucket key into the attachment's `GW_SOURCE_KEY` (at attach).
///
/// # Errors
/// The map cannot be opened or written, or getrandom fails.
pub fn write_source_key(pins: &PinDir) -> anyhow::Result<()> {
    let data = MapData::from_pin(pins.map(maps::GW_SOURCE_KEY))
        .map_err(|e| explain(e.into(), &format!("open map {}", maps::GW_SOURCE_KEY)))?;
    let mut a: aya::maps::Array<MapData, intercept_common::cookie::Key> =
        aya::maps::Array::try_from(Map::Array(data))?;
    a.set(0, &crate::control::random_key()?, 0)
        .context("write GW_SOURCE_KEY")
}

impl SourceCounts {
    /// Maps the pinned `GW_SOURCES` of the attachment of `iface`, and reads its key.
    ///
    /// # Errors
    /// [`CtlError::NotAttached`] if it has none; as [`SourceCounts::of`].
    pub fn open(iface: &str, netns: Option<&str>) -> anyhow::Result<SourceCounts> {
        let pins = PinDir::new(netns, iface);
        let path = pins.map(maps::GW_SOURCES);
        if !path.exists() {
            return Err(CtlError::NotAttached {
                iface: iface.to_owned(),
                pin: pins.path().display().to_string(),
            }
            .into());
        }
        let open = |name: &str| {
            MapData::from_pin(pins.map(name))
                .map_err(|e| explain(e.into(), &format!("open map {name}")))
        };
        let keys: aya::maps::Array<MapData, intercept_common::cookie::Key> =
            aya::maps::Array::try_from(Map::Array(open(maps::GW_SOURCE_KEY)?))?;
        SourceCounts::of(&open(maps::GW_SOURCES)?, keys.get(&0, 0)?)
    }

    /// Maps `data`, a `GW_SOURCES` map (the mapping outlives the descriptor), whose buckets
    /// `key` hashes.
    ///
    /// # Errors
    /// A map of another build (not an mmapable array of 65,536 8-byte values: detach and attach
    /// again), or the kernel refusing the mapping.
    pub fn of(data: &MapData, key: intercept_common::cookie::Key) -> anyhow::Result<SourceCounts> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let info = data.info().context("describe GW_SOURCES")?;
        anyhow::ensure!(
            info.map_flags() & BPF_F_MMAPABLE != 0
                && info.value_size() == 8
                && info.max_entries() == maps::GW_SOURCE_BUCKETS,
            "{} of this attachment was made by another build of intercept-ctl (flags {:#x}, \
             {}-byte values, {} entries): detach and attach again",
            maps::GW_SOURCES,
            info.map_flags(),
            info.value_size(),
            info.max_entries()
        );
        // SAFETY: a new shared mapping of the map's fd; the kernel checks the length against the
        // map (an mmapable array of SOURCES_LEN bytes, a whole number of pages).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SOURCES_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(anyhow::Error::new(std::io::Error::last_os_error()))
                .with_context(|| format!("map {} into memory", maps::GW_SOURCES));
        }
        let cells = std::ptr::NonNull::new(p.cast())
            .with_context(|| format!("map {} into memory: a null mapping", maps::GW_SOURCES))?;
        Ok(SourceCounts { cells, key })
    }

    fn cells(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: SOURCES_LEN bytes of 8-byte cells, mapped until drop.
        unsafe { std::slice::from_raw_parts(self.cells.as_ptr(), maps::GW_SOURCE_BUCKETS as usize) }
    }

    /// The bucket of a client address (see `intercept_common::splice::source_bucket`).
    #[must_use]
    pub fn bucket(&self, addr: &[u32; 4]) -> u32 {
        splice::source_bucket(addr, &self.key)
    }

    /// Every bucket now: taken before the table is read for [`SourceCounts::set_from`].
    #[must_use]
    pub fn snapshot(&self) -> Vec<u64> {
        self.cells()
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }

    /// Brings every bucket to the splices `entries` (the whole table, read after `before` was
    /// taken) hold against it, giving back what was freed, by adding the difference: what the
    /// data path added meanwhile stays (a splice opened between the snapshot and the read is
    /// counted twice until the next sweep: the count errs high, never low).
    pub fn set_from(&self, before: &[u64], entries: &[(FlowKey, Splice)]) {
        let mut counts = vec![0u64; maps::GW_SOURCE_BUCKETS as usize];
        for (k, e) in entries {
            if splice::counts_against_source(e) {
                counts[self.bucket(&k.saddr) as usize] += 1;
            }
        }
        for ((cell, n), was) in self.cells().iter().zip(counts).zip(before) {
            let d = n.wrapping_sub(*was);
            if d != 0 {
                cell.fetch_add(d, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// How many buckets hold `limit` splices or more (0: no limit, none).
    #[must_use]
    pub fn at_limit(&self, limit: u32) -> usize {
        if limit == 0 {
            return 0;
        }
        self.cells()
            .iter()
            .filter(|c| c.load(std::sync::atomic::Ordering::Relaxed) >= u64::from(limit))
            .count()
    }
}

impl Drop for SourceCounts {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, no longer referred to.
        unsafe { libc::munmap(self.cells.as_ptr().cast(), SOURCES_LEN) };
    }
}

/// [`sweep`] of the attachment of `iface` now, counted in `gw_freed` (tests, and one-shot use);
/// the daemon sweeps on its own ticks.
///
/// # Errors
/// Not a gateway's attachment, or bpf() failure.
pub fn sweep_pinned(iface: &str, netns: Option<&str>) -> anyhow::Result<u64> {
    let mut splice = open_splice(iface, netns)?;
    let sources = SourceCounts::open(iface, netns)?;
    let before = sources.snapshot();
    let (freed, kept) = sweep_kept(&mut splice, crate::watchctl::monotonic_ns())?;
    sweep_held(&mut open_held(iface, netns)?, &splice)?;
    sources.set_from(&before, &kept);
    crate::watchctl::WatchMaps::open(iface, netns)?
        .bump(intercept_common::Counter::GwFreed, freed)?;
    Ok(freed)
}

/// How many times the controller sends a proven client's SYN to its server again while the
/// server has not answered (after the data path's first one).
pub const SYN_RESENDS: u32 = 4;

/// Whether the SYN of a splice still waiting for its server (`age_ns` since the data path sent
/// the first one, `sent` resends so far) is due again: 1, 3, 7 and 15 s after the first, the
/// gaps doubling from 1 s as TCP's own SYN retransmissions do, then no more (the splice is given
/// up 30 s after it was made, see [`splice::idle_verdict`]).
#[must_use]
pub const fn syn_resend_due(age_ns: u64, sent: u32) -> bool {
    sent < SYN_RESENDS && age_ns >= ((1 << (sent + 1)) - 1) * 1_000_000_000
}

/// The SYN the data path sent the server of the splice at `key` (client to server), built again
/// from the entry ([`splice::build_syn`]: the client's ISN, the options the cookie kept, the
/// client's TSval), as an IP packet from the client's address.
#[must_use]
pub fn syn_packet(key: &FlowKey, e: &Splice) -> Vec<u8> {
    let flow = intercept_common::cookie::Flow {
        saddr: key.saddr,
        daddr: key.daddr,
        sport: key.sport,
        dport: key.dport,
    };
    let v6 = ip_of(&key.daddr).is_ipv6();
    let window = splice::rescale_window(e.client_window, e.client_wscale, WSCALE_NONE);
    let mut out = SynAck {
        ip: [0; 10],
        ip_len: 0,
        tcp: [0; 10],
        tcp_len: 0,
    };
    splice::build_syn(&flow, v6, e, window, SYN_TTL, &mut out);
    out.ip[..out.ip_len / 4]
        .iter()
        .chain(&out.tcp[..out.tcp_len / 4])
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

/// The TTL (hop limit) of the SYNs the controller sends again: the kernel's default.
const SYN_TTL: u8 = 64;

/// The SYNs sent again so far per splice still waiting for its server, kept by the daemon
/// across [`resend_syns`] passes.
/// Keyed by flow and creation time: a new splice of a reused 4-tuple starts from none.
#[derive(Debug, Default)]
pub struct SynResends {
    sent: std::collections::HashMap<(FlowKey, u64), u32>,
    /// Where the next pass starts among the waiting splices: past the cap, the ones left out
    /// come first next time.
    start: usize,
}

/// The most SYNs one pass of [`resend_syns`] sends (the rest wait for the next pass, a second
/// later): a full table of unanswered splices must not stall the daemon's tick.
pub const RESENDS_PER_PASS: u64 = 4_096;

/// What [`resend_syns`] did in one pass.
#[derive(Debug, Default)]
pub struct Resent {
    /// SYNs sent again.
    pub sent: u64,
    /// SYNs that could not be sent (tried again next pass), and the first error.
    pub failed: u64,
    /// The first failure's error.
    pub error: Option<anyhow::Error>,
}

/// Sends again, from raw sockets of the gateway's namespace, the SYN of every splice whose server
/// has not answered when [`syn_resend_due`] says so. Without it a lost SYN to the server would
/// be sent again only when the client retransmits its held request: a protocol whose server
/// speaks first (SMTP, SSH) would wait for nothing. `resent` keeps the count per flow across
/// passes (entries no longer waiting are dropped from it); `entries` the table as the sweep
/// left it ([`sweep_kept`]); `now_ns` the data path's clock.
#[must_use]
pub fn resend_syns(
    entries: &[(FlowKey, Splice)],
    resent: &mut SynResends,
    sender: &mut RawSender,
    now_ns: u64,
) -> Resent {
    let waiting: Vec<&(FlowKey, Splice)> = entries
        .iter()
        .filter(|(_, e)| e.state == splice::SYN_SENT)
        .collect();
    let keys: HashSet<(FlowKey, u64)> = waiting.iter().map(|(k, e)| (*k, e.created_ns)).collect();
    resent.sent.retain(|k, _| keys.contains(k));
    let mut r = Resent::default();
    let start = if waiting.is_empty() {
        0
    } else {
        resent.start % waiting.len()
    };
    resent.start = 0;
    for (i, &&(key, e)) in waiting
        .iter()
        .enumerate()
        .cycle()
        .skip(start)
        .take(waiting.len())
    {
        if r.sent + r.failed >= RESENDS_PER_PASS {
            resent.start = i;
            break;
        }
        let n = resent.sent.entry((key, e.created_ns)).or_default();
        if !syn_resend_due(now_ns.saturating_sub(e.created_ns), *n) {
            continue;
        }
        match sender.send_packet(ip_of(&key.daddr), &syn_packet(&key, &e)) {
            Ok(()) => {
                *n += 1;
                r.sent += 1;
            }
            Err(err) => {
                r.failed += 1;
                r.error.get_or_insert(err.context(format!(
                    "send the SYN again {}:{} -> {}:{}",
                    ip_of(&key.saddr),
                    key.sport,
                    ip_of(&key.daddr),
                    key.dport
                )));
            }
        }
    }
    r
}

/// The names of [`splice::refused`] bits, for `status`.
#[must_use]
pub fn refused_names(bits: u32) -> Vec<&'static str> {
    [
        (splice::refused::TIMESTAMPS, "timestamps"),
        (splice::refused::SACK, "sack"),
        (splice::refused::WSCALE, "window_scaling"),
    ]
    .into_iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| n)
    .collect()
}

/// The servers (`address:port`) whose SYN-ACKs refused options the gateway's SYN offered, with
/// those options, as still believed at `now_ns` (`GW_SERVER_OPTS`: their clients are not offered
/// them). Empty for an attachment without the map.
///
/// # Errors
/// bpf() failure.
pub fn refusing_servers(
    iface: &str,
    netns: Option<&str>,
    now_ns: u64,
) -> anyhow::Result<BTreeMap<String, Vec<&'static str>>> {
    let path = PinDir::new(netns, iface).map(maps::GW_SERVER_OPTS);
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let data = MapData::from_pin(&path)
        .map_err(|e| explain(e.into(), &format!("open map {}", maps::GW_SERVER_OPTS)))?;
    Ok(crate::batch::entries::<ServerKey, ServerOpts>(&data)?
        .into_iter()
        .filter(|(_, v)| v.refused_at(now_ns) != 0)
        .map(|(k, v)| {
            (
                SocketAddr::new(ip_of(&k.addr), k.port).to_string(),
                refused_names(v.refused_at(now_ns)),
            )
        })
        .collect())
}

/// The name of a [`Splice::state`] for `status`.
#[must_use]
pub const fn state_name(state: u32) -> &'static str {
    match state {
        splice::SYN_SENT => "syn_sent",
        splice::OPEN => "open",
        splice::PASSTHROUGH => "passthrough",
        splice::CLOSED => "closed",
        _ => "unknown",
    }
}

/// The entries of `splice` by state name (every state present, zeros included).
///
/// # Errors
/// bpf() failure.
pub fn count_by_state(
    splice: &HashMap<MapData, FlowKey, Splice>,
) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut out: BTreeMap<&'static str, u64> = [
        splice::SYN_SENT,
        splice::OPEN,
        splice::PASSTHROUGH,
        splice::CLOSED,
    ]
    .into_iter()
    .map(|s| (state_name(s), 0))
    .collect();
    for (_, s) in crate::batch::entries::<FlowKey, Splice>(splice.map())? {
        *out.entry(state_name(s.state)).or_default() += 1;
    }
    Ok(out)
}

/// The two resets that end a half-open handshake tracked at `key` (client to server) on a
/// gateway, for segments nobody on this box holds a socket of:
///
/// - to the server, as from the client: RST with `seq = isn + 1`, the `rcv_nxt` of the server's
///   request socket, which `tcp_check_req` (`net/ipv4/tcp_minisocks.c`) accepts as in window
///   and answers by dropping the request;
/// - to the client, as from the server: RST|ACK acknowledging the client's SYN (`ack = isn +
///   1`), which a client in SYN-SENT accepts whatever its sequence number (RFC 9293 3.10.7.3),
///   with `seq = server_isn + 1` once the server answered, the client's `rcv_nxt` if the
///   SYN-ACK reached it (RFC 5961 section 3 asks for that exact value), else 0.
#[must_use]
pub fn resets(key: &FlowKey, e: &HalfOpen) -> [TcpSegment; 2] {
    let (client, server) = (ip_of(&key.saddr), ip_of(&key.daddr));
    let mut to_server = TcpSegment::new(client, server, key.sport, key.dport, tcp_flags::RST);
    to_server.seq = e.isn.wrapping_add(1);
    to_server.window = 0;
    let mut to_client = TcpSegment::new(
        server,
        client,
        key.dport,
        key.sport,
        tcp_flags::RST | tcp_flags::ACK,
    );
    to_client.seq = if e.answered != 0 {
        e.server_isn.wrapping_add(1)
    } else {
        0
    };
    to_client.ack_seq = e.isn.wrapping_add(1);
    to_client.window = 0;
    [to_server, to_client]
}

/// Raw IP sockets of the calling thread's network namespace that send whole IP packets (the
/// header included: `IPPROTO_RAW` implies `IP_HDRINCL` for IPv4 and IPv6 alike on Linux), so a
/// reset, or a SYN sent again, leaves with the address of the end it stands for. Opened on first use per family.
#[derive(Debug, Default)]
pub struct RawSender {
    v4: Option<OwnedFd>,
    v6: Option<OwnedFd>,
}

impl RawSender {
    /// Sends `seg` as an IP packet to its destination.
    ///
    /// # Errors
    /// The socket cannot be opened (no `CAP_NET_RAW`) or the kernel refuses the packet (no
    /// route to its destination, ...).
    pub fn send(&mut self, seg: &TcpSegment) -> anyhow::Result<()> {
        self.send_packet(seg.dst, &tcp_packet(seg))
            .with_context(|| {
                format!(
                    "send a reset {}:{} -> {}:{}",
                    seg.src, seg.sport, seg.dst, seg.dport
                )
            })
    }

    /// Sends `packet`, a whole IP packet, to `dst` (its destination).
    ///
    /// # Errors
    /// As [`RawSender::send`].
    pub fn send_packet(&mut self, dst: IpAddr, packet: &[u8]) -> anyhow::Result<()> {
        use rustix::net::{AddressFamily, SendFlags, SocketType, ipproto, sendto, socket};
        let (slot, family) = match dst {
            IpAddr::V4(_) => (&mut self.v4, AddressFamily::INET),
            IpAddr::V6(_) => (&mut self.v6, AddressFamily::INET6),
        };
        let fd = match slot {
            Some(fd) => fd,
            None => slot.insert(
                socket(family, SocketType::RAW, Some(ipproto::RAW))
                    .map_err(std::io::Error::from)
                    .map_err(|e| explain(e.into(), "open a raw IP socket"))?,
            ),
        };
        // The port of a raw socket's destination must be 0 for IPv6 (or the protocol number).
        sendto(&*fd, packet, SendFlags::empty(), &SocketAddr::new(dst, 0))
            .map_err(std::io::Error::from)?;
        Ok(())
    }
}

/// Sends the [`resets`] of the handshake at `key`; returns how many left (2, or fewer with the
/// error of the first failure).
///
/// # Errors
/// The first send that failed, with how many were sent before it.
pub fn send_resets(
    sender: &mut RawSender,
    key: &FlowKey,
    e: &HalfOpen,
) -> Result<u64, (u64, anyhow::Error)> {
    let mut sent = 0;
    for seg in resets(key, e) {
        if let Err(err) = sender.send(&seg) {
            return Err((sent, err));
        }
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use intercept_common::cookie::words_of;

    fn key(c: &str, s: &str) -> FlowKey {
        FlowKey {
            saddr: words_of(c.parse().unwrap()),
            daddr: words_of(s.parse().unwrap()),
            sport: 40_000,
            dport: 80,
        }
    }

    /// The server's request socket expects the client's ISN + 1; the client's SYN-SENT socket
    /// an acknowledgment of its SYN, and, once the server answered, the server's ISN + 1.
    #[test]
    fn resets_carry_the_numbers_each_end_accepts() {
        let k = key("198.18.0.10", "198.18.1.2");
        let e = HalfOpen {
            isn: u32::MAX,
            server_isn: 1_000,
            answered: 1,
            ..HalfOpen::default()
        };
        let [s, c] = resets(&k, &e);
        assert_eq!(
            (s.src, s.dst, s.sport, s.dport),
            (
                "198.18.0.10".parse::<IpAddr>().unwrap(),
                "198.18.1.2".parse::<IpAddr>().unwrap(),
                40_000,
                80
            )
        );
        assert_eq!((s.flags, s.seq, s.ack_seq), (tcp_flags::RST, 0, 0));
        assert_eq!((c.src, c.dst, c.sport, c.dport), (s.dst, s.src, 80, 40_000));
        assert_eq!(
            (c.flags, c.seq, c.ack_seq),
            (tcp_flags::RST | tcp_flags::ACK, 1_001, 0)
        );
        let unanswered = resets(
            &k,
            &HalfOpen {
                answered: 0,
                isn: 7,
                ..e
            },
        );
        assert_eq!((unanswered[1].seq, unanswered[1].ack_seq), (0, 8));
        assert_eq!(unanswered[0].seq, 8);
    }

    /// The packets themselves: the IP header of the right family and the TCP numbers in place,
    /// with checksums that verify.
    #[test]
    fn reset_packets_are_well_formed() {
        use intercept_common::checksum::{add_bytes, finish, pseudo_v4, pseudo_v6};
        for (c, s) in [
            ("198.18.0.10", "198.18.1.2"),
            ("2001:db8::10", "2001:db8:1::2"),
        ] {
            let k = key(c, s);
            let e = HalfOpen {
                isn: 0x1234_5678,
                server_isn: 0x9abc_def0,
                answered: 1,
                ..HalfOpen::default()
            };
            for seg in resets(&k, &e) {
                let p = tcp_packet(&seg);
                let (hl, acc) = match (seg.src, seg.dst) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => {
                        assert_eq!(p[0], 0x45, "IPv4 header");
                        assert_eq!(finish(add_bytes(0, &p[..20])), 0, "IPv4 header checksum");
                        (20, pseudo_v4(a.octets(), b.octets(), 6, 20))
                    }
                    (IpAddr::V6(a), IpAddr::V6(b)) => {
                        assert_eq!(p[0] >> 4, 6, "IPv6 header");
                        (40, pseudo_v6(&a.octets(), &b.octets(), 6, 20))
                    }
                    _ => unreachable!(),
                };
                let t = &p[hl..];
                assert_eq!(t.len(), 20, "no options, no payload");
                assert_eq!(finish(add_bytes(acc, t)), 0, "TCP checksum of {seg:?}");
                assert_eq!(u32::from_be_bytes(t[4..8].try_into().unwrap()), seg.seq);
                assert_eq!(
                    u32::from_be_bytes(t[8..12].try_into().unwrap()),
                    seg.ack_seq
                );
                assert_eq!(t[13], seg.flags);
            }
        }
    }

    #[test]
    fn syns_are_sent_again_at_1_3_7_and_15_s_then_never() {
        let s = 1_000_000_000;
        let mut sent = 0;
        let mut at = Vec::new();
        for t in (0..40 * s).step_by(100_000_000) {
            if syn_resend_due(t, sent) {
                sent += 1;
                at.push(t / s);
            }
        }
        assert_eq!(at, [1, 3, 7, 15]);
        assert!(!syn_resend_due(29 * s, SYN_RESENDS));
        assert!(!syn_resend_due(s - 1, 0), "not before 1 s");
    }

    /// The SYN sent again is the data path's: the client's ISN and TSval, the MSS, window scale
    /// and SACK-permitted of the entry, the window unscaled, both checksums right.
    #[test]
    fn a_syn_sent_again_is_the_data_paths_syn() {
        use intercept_common::{
            checksum::{add_bytes, finish, pseudo_v4, pseudo_v6},
            tcpopt,
        };
        for (c, s) in [
            ("198.18.0.10", "198.18.1.2"),
            ("2001:db8::10", "2001:db8:1::2"),
        ] {
            for ts in [true, false] {
                let k = key(c, s);
                let e = Splice {
                    state: splice::SYN_SENT,
                    flags: if ts { splice::splice_flags::TS } else { 0 },
                    client_isn: 0x1234_5678,
                    client_tsval: 0xdead_beef,
                    mss: 1400,
                    client_wscale: 7,
                    sack: 1,
                    client_window: 600,
                    ..Splice::default()
                };
                let p = syn_packet(&k, &e);
                let (hl, eth, acc) = match (ip_of(&k.saddr), ip_of(&k.daddr)) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => {
                        assert_eq!(p[0], 0x45, "IPv4 header");
                        assert_eq!(finish(add_bytes(0, &p[..20])), 0, "IPv4 header checksum");
                        assert_eq!(p[8], SYN_TTL);
                        let len = u16::from_be_bytes([p[2], p[3]]);
                        assert_eq!(usize::from(len), p.len());
                        let tcp_len = p.len() as u16 - 20;
                        (20, 0x0800u16, pseudo_v4(a.octets(), b.octets(), 6, tcp_len))
                    }
                    (IpAddr::V6(a), IpAddr::V6(b)) => {
                        assert_eq!(p[0] >> 4, 6, "IPv6 header");
                        assert_eq!(p[7], SYN_TTL);
                        let len = u16::from_be_bytes([p[4], p[5]]);
                        assert_eq!(usize::from(len), p.len() - 40);
                        (
                            40,
                            0x86dd,
                            pseudo_v6(&a.octets(), &b.octets(), 6, len.into()),
                        )
                    }
                    _ => unreachable!(),
                };
                let t = &p[hl..];
                assert_eq!(finish(add_bytes(acc, t)), 0, "TCP checksum ({c}, ts {ts})");
                assert_eq!(u16::from_be_bytes([t[0], t[1]]), k.sport);
                assert_eq!(u16::from_be_bytes([t[2], t[3]]), k.dport);
                assert_eq!(
                    u32::from_be_bytes(t[4..8].try_into().unwrap()),
                    e.client_isn
                );
                assert_eq!(t[13], tcp_flags::SYN);
                assert_eq!(
                    u16::from_be_bytes([t[14], t[15]]),
                    0xffff,
                    "the window unscaled (600 << 7 does not fit: the largest)"
                );
                let mut frame = vec![0u8; 12];
                frame.extend_from_slice(&eth.to_be_bytes());
                frame.extend_from_slice(&p);
                let o = tcpopt::parse(&frame[..], 14 + hl, usize::from(t[12] >> 4) * 4);
                assert!(!o.malformed, "{o:?}");
                assert_eq!((o.mss, o.wscale, o.sack_perm, o.ts_ok), (1400, 7, true, ts));
                if ts {
                    assert_eq!(o.tsval, 0xdead_beef);
                }
            }
        }
    }

    #[test]
    fn the_server_record_round_trips() {
        let r = ServerIface {
            name: "eth1".to_owned(),
            ifindex: 9,
            forward: Forward::Kernel,
        };
        assert_eq!(ServerIface::decode(&r.encode()), Some(r.clone()));
        // Recorded before the choice existed: redirect.
        assert_eq!(
            ServerIface::decode("name=eth1 ifindex=9").map(|s| s.forward),
            Some(Forward::Redirect)
        );
        assert_eq!(ServerIface::decode("name= ifindex=3"), None);
        assert_eq!(ServerIface::decode("ifindex=3"), None);
    }

    #[test]
    fn states_have_names() {
        assert_eq!(state_name(splice::OPEN), "open");
        assert_eq!(state_name(splice::SYN_SENT), "syn_sent");
        assert_eq!(state_name(99), "unknown");
    }
}
