//! Configuration the controller writes and the data path reads. Typed structs, never packed
//! integers; every field has a fixed width and the sizes are asserted.

/// What the data path does for protected traffic.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Count only; every frame passes.
    Off = 0,
    /// Answer protected SYNs with cookies in XDP; verify ACKs; hand proven connections to the
    /// listening socket.
    Intercept = 1,
    /// SYNs reach the server; every half-open handshake is tracked, and the controller closes
    /// those that stay half-open past the watch timeout (Cisco's watch mode).
    Watch = 2,
    /// Watch while calm, intercept while aggressive (thresholds with hysteresis, evaluated by the
    /// controller, which keeps [`Config::active`]).
    Auto = 3,
}

impl Mode {
    /// From the map's u32; unknown values read as `Off` (fail open, counted by the caller).
    #[must_use]
    pub const fn from_u32(v: u32) -> Mode {
        match v {
            1 => Mode::Intercept,
            2 => Mode::Watch,
            3 => Mode::Auto,
            _ => Mode::Off,
        }
    }

    /// Stable name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Intercept => "intercept",
            Mode::Watch => "watch",
            Mode::Auto => "auto",
        }
    }

    /// What the data path does under `cfg`: `auto` resolves to [`Config::active`].
    #[inline(always)]
    #[must_use]
    pub const fn effective(cfg: &Config) -> Mode {
        match Mode::from_u32(cfg.mode) {
            Mode::Auto => {
                if cfg.active == Mode::Intercept as u32 {
                    Mode::Intercept
                } else {
                    Mode::Watch
                }
            }
            m => m,
        }
    }
}

/// Which half-open connection a new SYN displaces in the aggressive state (Cisco's drop-mode).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropMode {
    /// The oldest (default).
    Oldest = 0,
    /// A random one.
    Random = 1,
}

impl DropMode {
    /// Every drop-mode, in order.
    pub const ALL: [DropMode; 2] = [DropMode::Oldest, DropMode::Random];

    /// The configuration's value (an unknown one reads as the default).
    #[must_use]
    pub const fn from_u32(v: u32) -> DropMode {
        if v == DropMode::Random as u32 {
            DropMode::Random
        } else {
            DropMode::Oldest
        }
    }

    /// Its name, as the CLI, the configuration file and `status` spell it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            DropMode::Oldest => "oldest",
            DropMode::Random => "random",
        }
    }

    /// The drop-mode of that name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<DropMode> {
        DropMode::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The MSS values a SYN-ACK may advertise over IPv4: from the minimum every host must accept
/// (RFC 9293 section 3.7.1) to the largest an IPv4 datagram carries.
pub const MSS_V4_RANGE: core::ops::RangeInclusive<u16> = 536..=65495;
/// The MSS values a SYN-ACK may advertise over IPv6: from the IPv6 minimum MTU's (1280 - 60) to
/// the largest a non-jumbo IPv6 packet carries.
pub const MSS_V6_RANGE: core::ops::RangeInclusive<u16> = 1220..=65475;

/// TCP states, as the kernel numbers them (include/net/tcp_states.h): the tracepoint's states,
/// `bpf_sock.state`, sock_diag's `idiag_state`.
pub mod tcp_state {
    /// ESTABLISHED.
    pub const ESTABLISHED: u8 = 1;
    /// SYN_RECV.
    pub const SYN_RECV: u8 = 3;
    /// FIN_WAIT1.
    pub const FIN_WAIT1: u8 = 4;
    /// FIN_WAIT2.
    pub const FIN_WAIT2: u8 = 5;
    /// TIME_WAIT.
    pub const TIME_WAIT: u8 = 6;
    /// CLOSE.
    pub const CLOSE: u8 = 7;
    /// LISTEN.
    pub const LISTEN: u8 = 10;
    /// CLOSING.
    pub const CLOSING: u8 = 11;
}

/// Bits of [`Config::flags`].
pub mod flags {
    /// Answer ECN setup SYNs (ECE+CWR) with ECE (RFC 3168 section 6.1.1), as Linux does by default.
    pub const ECN: u32 = 1;
    /// SCOPE holds port-specific entries (else the data path skips that lookup). Kept by the
    /// controller on every scope change.
    pub const SCOPE_PORTS: u32 = 2;
    /// SCOPE holds every-port entries.
    pub const SCOPE_ANY_PORT: u32 = 4;
    /// EXEMPT holds entries.
    pub const EXEMPT: u32 = 8;
    /// HALF_OPEN may hold entries: intercept mode then also untracks flows it passes (handshakes
    /// started in watch mode and completed after a switch). Kept by the controller.
    pub const TRACKING: u32 = 16;
    /// Every SCOPE entry is a single address (/32, /128): the data path looks destinations up
    /// in SCOPE_HOSTS, an exact-match hash holding the same entries, instead of the trie.
    pub const SCOPE_HOSTS: u32 = 32;
    /// Every SCOPE entry is a single address and there are at most
    /// [`super::SCOPE_LIST_MAX`]: the data path scans SCOPE_LIST, a copy of them in one map
    /// value, and looks nothing up (the usual deployment: a few service addresses and ports).
    pub const SCOPE_LIST: u32 = 64;
    /// EXEMPT holds at most [`super::SCOPE_LIST_MAX`] prefixes: the data path scans
    /// EXEMPT_LIST (the same prefixes as address and mask words in one map value) instead.
    pub const EXEMPT_LIST: u32 = 128;
    /// How the data path decides scope under `flags`: "list", "hash" or "trie".
    #[must_use]
    pub const fn scope_lookup(flags: u32) -> &'static str {
        if flags & SCOPE_LIST != 0 {
            "list"
        } else if flags & SCOPE_HOSTS != 0 {
            "hash"
        } else {
            "trie"
        }
    }
    /// How the data path decides exempt sources under `flags`: "list" or "trie".
    #[must_use]
    pub const fn exempt_lookup(flags: u32) -> &'static str {
        if flags & EXEMPT_LIST != 0 {
            "list"
        } else {
            "trie"
        }
    }
    /// The attachment's handoff engine is the kernel's own cookie (`intercept_common::kcookie`):
    /// SYN-ACKs carry the cookie `bpf_tcp_gen_syncookie` makes, ACKs are checked with
    /// `bpf_tcp_check_syncookie` and left to the listener. Derived from the recorded engine.
    pub const KERNEL_COOKIE: u32 = 256;
    /// The kernel-cookie engine's SYN-ACKs offer no SACK: `net.ipv4.tcp_sack` is 0, and the kernel
    /// would refuse a cookie whose options ask for it. Derived from the sysctl.
    pub const NO_SACK: u32 = 512;
    /// The attachment is a gateway's (`attach --gateway`): its program is `xdp_gateway`, which
    /// splices proven connections to servers behind this box (see `crate::splice`). Derived
    /// from the recorded engine.
    pub const GATEWAY: u32 = 1024;
    /// A gateway forwards what it translates with XDP redirects (`attach --forward redirect`,
    /// the default); without it, through the kernel's forwarding path. Derived from the
    /// attachment's record.
    pub const GW_REDIRECT: u32 = 2048;
    /// Bits the controller derives from the maps, the engine and the kernel (not set by an
    /// operator).
    pub const DERIVED: u32 = SCOPE_PORTS
        | SCOPE_ANY_PORT
        | EXEMPT
        | SCOPE_HOSTS
        | SCOPE_LIST
        | EXEMPT_LIST
        | KERNEL_COOKIE
        | NO_SACK
        | GATEWAY
        | GW_REDIRECT;
}

/// The data path's configuration, one entry in [`crate::maps::CONFIG`]; written by the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// [`Mode`] as u32.
    pub mode: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// MSS we advertise in IPv4 SYN-ACKs (the server's, normally MTU - 40).
    pub mss_v4: u16,
    /// MSS we advertise in IPv6 SYN-ACKs (normally MTU - 60).
    pub mss_v6: u16,
    /// Window field of our SYN-ACK (never scaled, RFC 7323 section 2.2); never 0.
    pub window: u16,
    /// Window scale we advertise; the kernel then uses it as the connection's receive scale.
    pub wscale: u8,
    /// TTL / hop limit of our SYN-ACKs.
    pub ttl: u8,
    /// In `auto` mode, the mode in force ([`Mode::Watch`] or [`Mode::Intercept`]); kept by the
    /// controller as thresholds are crossed.
    pub active: u32,
    /// 1 while the thresholds put the system in the aggressive state (watch mode then displaces a
    /// half-open connection for every new SYN).
    pub aggressive: u32,
    /// [`DropMode`] as u32.
    pub drop_mode: u32,
    /// Tag of the XDP metadata our XDP program leaves for our TC program (see [`Handoff`]):
    /// random per attachment, so TC never takes another program's metadata, or a value an
    /// attacker could know, for a verified handshake. Followers carry it XOR [`FOLLOW_FLIP`].
    pub meta_tag: u32,
    /// Until this monotonic time (ns), watch mode still verifies our cookies on ACKs it does
    /// not track, so handshakes started in intercept mode complete after a switch to watch.
    pub cookie_grace_until_ns: u64,
}
const _: () = assert!(size_of::<Config>() == 40);

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Off as u32,
            flags: flags::ECN,
            mss_v4: 1460,
            mss_v6: 1440,
            window: 65535,
            wscale: 7,
            ttl: 64,
            active: Mode::Watch as u32,
            aggressive: 0,
            drop_mode: DropMode::Oldest as u32,
            meta_tag: HANDOFF_MAGIC,
            cookie_grace_until_ns: 0,
        }
    }
}

/// State of the socket table ([`crate::maps::SOCKETS`]), as read by the controller from the
/// words of [`crate::maps::SOCKET_TABLE`] (see [`table_word`]).
///
/// The table holds the inbound flow of every TCP socket of the attachment's network namespace in
/// a state other than listening or closed (SYN-sent, SYN-received, established, closing
/// states): the tracepoint program `track_sockets` (on `sock:inet_sock_set_state`, which fires
/// for every namespace of the host) keeps only that namespace's sockets (see [`SockOffsets`]),
/// inserts at each state change and removes at `TCP_CLOSE`; the controller first seeds it from
/// `sock_diag` with the sockets that existed before (`sock_diag` answers for its own namespace).
/// While it is authoritative, an ACK whose flow is absent and whose cookie fails is dropped without
/// asking the kernel (`bpf_skc_lookup_tcp`, the dearest step of the ACK path); otherwise the
/// kernel is asked. Request sockets (the kernel's own half-open handshakes) are not in the table:
/// while the kernel may hold some the data path cannot know of, the table is not authoritative
/// (see `lookup_until_ns`). Those it can know of, hashed while intercept mode is in force (their
/// SYN came over another interface, or was left to the kernel), are recorded as they are made
/// with the time-wait sockets (see `crate::maps::TIME_WAIT`), so asymmetric routing needs no
/// lookup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketTable {
    /// The controller seeded the table from the kernel's sockets.
    pub seeded: bool,
    /// Inserts the table refused (full), at least: from the first one on, the table is not
    /// authoritative. (Racing CPUs may lose increments; never all of them.)
    pub refused: u64,
    /// Until this monotonic time the kernel may hold request sockets of its own: the controller
    /// sets it when intercept mode comes into force (handshakes the kernel began before), the
    /// data path when it leaves a protected SYN to the kernel in intercept mode.
    pub lookup_until_ns: u64,
}

impl SocketTable {
    /// Whether an absent flow proves there is no such socket at `now_ns`.
    #[inline(always)]
    #[must_use]
    pub const fn authoritative(&self, now_ns: u64) -> bool {
        self.seeded && self.refused == 0 && now_ns >= self.lookup_until_ns
    }
}

/// Indexes of the `u64` words of [`crate::maps::SOCKET_TABLE`]. Separate words, each written whole
/// (or added to atomically), so no writer's read-modify-write of a struct can undo another's.
pub mod table_word {
    /// 1 once seeded (the controller).
    pub const SEEDED: u32 = 0;
    /// Refused inserts (the tracepoint and seed programs).
    pub const REFUSED: u32 = 1;
    /// Request sockets possible until (the controller and the XDP program; both store a time
    /// about [`super::REQUEST_SOCK_LIFETIME_NS`] ahead, so a race only moves it by microseconds).
    pub const LOOKUP_UNTIL: u32 = 2;
    /// Number of words.
    pub const COUNT: u32 = 3;
}

/// How long the controller waits between deciding to close a half-open connection (marking it
/// closing, or finding it queued in `CLOSING`) and closing it on the server. Meanwhile the data
/// path drops the client's ACKs and FINs of it, and any it passed before reach TCP in the same
/// NAPI poll (microseconds; with RPS, from another CPU's backlog soon after), so at the close no
/// ACK can turn the request socket into a connection: SOCK_DESTROY cannot tell them apart (the
/// child inherits the request's cookie, `inet_csk_clone_lock`) and would reset a connection just
/// established.
pub const CLOSE_GRACE_NS: u64 = 100_000_000;

/// How long a request socket can live: the SYN-ACK retransmissions (`tcp_synack_retries` 5:
/// 1+2+4+8+16+32 = 63 s), plus margin.
pub const REQUEST_SOCK_LIFETIME_NS: u64 = 75_000_000_000;

/// How long after a cookie ACK left XDP for TC the client's next segments count as following it
/// (see [`Proven`]). A poll's frames go through XDP, TC and TCP within microseconds, and the slot
/// is cleared as soon as TCP has created the connection; the window only has to outlast the data
/// path's clock, which moves a tick at a time (10 ms at HZ=100) and may read a tick apart on two
/// CPUs. A retransmission of the first segment after it is handed off afresh.
pub const PROVEN_WINDOW_NS: u64 = 20_000_000;

/// How far past its first sequence number a client can have sent before the server has sent
/// anything: the window of our SYN-ACK, which is never scaled (RFC 7323 section 2.2), plus its FIN.
pub const PROVEN_SEQ_SPAN: u32 = 1 << 16;

/// States of a [`Proven`] slot.
pub mod proven_state {
    /// The XDP program sent the handshake's first segment to TC with the handoff.
    pub const PENDING: u32 = 1;
    /// TC gave it a request socket (or found the connection already there): its followers go on
    /// to the connection TCP creates.
    pub const HANDED: u32 = 2;
    /// TC did not hand it off (accept queue full, no listener, the kfunc refused): its followers
    /// are dropped, so the client retransmits them into a handoff of their own rather than
    /// meeting a listener that resets them.
    pub const REFUSED: u32 = 3;
}

/// A handshake whose cookie ACK the XDP program handed to TC in the last [`PROVEN_WINDOW_NS`]:
/// one slot of [`crate::maps::PROVEN`], the slot [`proven_slot`] of its flow. Written by the data
/// path only: by the XDP program when a cookie verifies, cleared by the socket-table tracepoint
/// once the connection exists.
///
/// Why it exists: the kfunc that creates the connection (`bpf_sk_assign_tcp_reqsk`) gives the
/// skb its own request socket. A client sends its first request right behind the handshake ACK,
/// so both often arrive in one NAPI poll, and TC runs for a batch of the poll before TCP
/// processes any of it: TC still finds only the listener for the request. Given a request socket
/// of its own too, the request would make the kernel build a second child for the same 4-tuple,
/// find the first in the established hash (`inet_ehash_nolisten`, `found_dup_sk`) and drop the
/// segment silently (`cookie_v4_check`: `SKB_DROP_REASON_NO_SOCKET`), costing the client a
/// 200 ms retransmission timeout. So only the first segment of a proven handshake carries the
/// handoff; the ones following it pass bare, and TCP, processing the batch in order, finds the
/// child the first one created (`__inet_lookup_skb`).
///
/// A slot lives from the first segment in XDP to the connection's creation in TCP, microseconds
/// (then the socket table knows the flow): a direct-mapped array of such slots costs one store
/// per handoff and one load per lookup, never a lock or an allocation, and two handshakes in
/// flight in the same slot at once are as rare as two in one poll hashing alike. Only a
/// verified cookie writes a slot; a handoff that fails leaves one that runs out after the window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Proven {
    /// The client's flow.
    pub key: FlowKey,
    /// [`proven_state`]: written PENDING by the XDP program with the rest of the slot, then only
    /// by TC.
    pub state: u32,
    /// When the handoff left XDP (monotonic ns, tick resolution); 0: a free slot (the
    /// socket-table tracepoint clears it once the connection exists).
    pub at_ns: u64,
    /// The client's first sequence number after its SYN (its ISN + 1).
    pub client_next: u32,
    /// The acknowledgment number of every client segment until the server sends: our ISN (the
    /// cookie) + 1.
    pub server_next: u32,
}
const _: () = assert!(size_of::<Proven>() == 56);

impl Proven {
    /// The slot for a handshake of `key` completed by a segment with these numbers at `now`.
    #[inline(always)]
    #[must_use]
    pub const fn new(key: FlowKey, seq: u32, ack_seq: u32, now_ns: u64) -> Proven {
        Proven {
            key,
            state: proven_state::PENDING,
            at_ns: now_ns,
            client_next: seq,
            server_next: ack_seq,
        }
    }

    /// Whether a client segment of `key` with these numbers, seen at `now`, follows this
    /// handoff: the same flow, within the window (a CPU's clock may read a tick behind the one
    /// that wrote `at_ns`), acknowledging exactly our ISN + 1 (nothing else is acknowledgeable
    /// before the server sends: 32 bits only the real client has seen), and sequenced within
    /// what the client can have sent.
    #[inline(always)]
    #[must_use]
    pub fn follows(&self, key: &FlowKey, seq: u32, ack_seq: u32, now_ns: u64) -> bool {
        self.at_ns != 0
            && now_ns.saturating_sub(self.at_ns) < PROVEN_WINDOW_NS
            && ack_seq == self.server_next
            && seq.wrapping_sub(self.client_next) < PROVEN_SEQ_SPAN
            && self.key == *key
    }
}

/// How long a connection the server closed first lives on in the kernel (its entry in
/// `crate::maps::TIME_WAIT`; a request socket's lives [`REQUEST_SOCK_LIFETIME_NS`]): a time-wait socket lasts
/// `TCP_TIMEWAIT_LEN` (60 s), an orphaned FIN-WAIT-2 one `tcp_fin_timeout` (60 s by default) as a
/// time-wait socket too; plus margin. Until then its segments go to the kernel, which answers them
/// (re-acknowledges a FIN, resets data, accepts a SYN that reuses the 4-tuple).
pub const TIME_WAIT_NS: u64 = 70_000_000_000;

/// Where the socket-tracking programs find the kernel's fields, and which network namespace is
/// theirs: the object's global `SOCK_OFFSETS`, set by the loader before the programs load, from
/// the kernel's BTF (`struct sock_common` in include/net/sock.h, `struct net` in
/// include/net/net_namespace.h) and the attachment namespace's `SO_NETNS_COOKIE`. A zero field
/// is unknown: with `netns_cookie`, `skc_net` or `net_cookie` unknown, the tracepoint keeps
/// sockets of every namespace (and `status` says so); with any socket field unknown, request
/// sockets are not tracked at all.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// The attachment namespace's cookie (never reused while the host runs).
    pub netns_cookie: u64,
    /// `sock_common.skc_net`: the socket's namespace (`possible_net_t`, one pointer).
    pub skc_net: u32,
    /// `net.net_cookie`.
    pub net_cookie: u32,
    /// `sock_common.skc_dport`: the remote port, network order.
    pub skc_dport: u32,
    /// `sock_common.skc_num`: the local port, host order.
    pub skc_num: u32,
    /// `sock_common.skc_v6_daddr`: the remote address (IPv4-mapped for IPv4, `sk_daddr_set`).
    pub skc_v6_daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr`: the local address (IPv4-mapped for IPv4).
    pub skc_v6_rcv_saddr: u32,
}
const _: () = assert!(size_of::<SockOffsets>() == 32);

/// Where the kernel-cookie engine reads, in a listening socket, whether it chose its own receive
/// window: the object's global `LISTENER_OFFSETS`, set by the loader from the kernel's BTF. Such
/// a listener's connections get a window scale of their own (see
/// [`crate::kcookie::rcv_wscale`]), which only the kernel's own cookie SYN-ACK offers right. The
/// engine is not offered where these are unknown (zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerOffsets {
    /// The byte of `struct sock` holding `sk_userlocks` (a 4-bit field before Linux 6.x, a byte
    /// after).
    pub userlocks: u32,
    /// `sk_userlocks`' first bit within that byte.
    pub userlocks_shift: u32,
    /// `tcp_sock.window_clamp` (`TCP_WINDOW_CLAMP`), a u32.
    pub window_clamp: u32,
    /// Zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<ListenerOffsets>() == 16);

impl ListenerOffsets {
    /// Whether the loader found the fields.
    #[must_use]
    pub const fn known(&self) -> bool {
        self.userlocks != 0 && self.window_clamp != 0
    }
}

impl SockOffsets {
    /// Whether the tracking programs can tell the attachment's namespace from others.
    #[must_use]
    pub const fn filters_netns(&self) -> bool {
        self.netns_cookie != 0 && self.skc_net != 0 && self.net_cookie != 0
    }

    /// Whether a request socket's flow and namespace can be read.
    #[must_use]
    pub const fn reads_request_socks(&self) -> bool {
        self.filters_netns()
            && self.skc_dport != 0
            && self.skc_num != 0
            && self.skc_v6_daddr != 0
            && self.skc_v6_rcv_saddr != 0
    }
}

/// The [`crate::maps::TIME_WAIT_FILTER`] bucket of a flow.
#[inline(always)]
#[must_use]
pub const fn time_wait_bucket(k: &FlowKey) -> u32 {
    socket_bucket(k) & (crate::maps::TIME_WAIT_BUCKETS - 1)
}

/// The [`crate::maps::PROVEN`] slot of a flow (the low bits of its [`socket_bucket`]).
#[inline(always)]
#[must_use]
pub const fn proven_slot(k: &FlowKey) -> u32 {
    socket_bucket(k) & (crate::maps::PROVEN_SLOTS - 1)
}

/// The [`crate::maps::SOCKET_FILTER`] bucket of a flow: a multiplicative mix of its words
/// (unkeyed: a chosen collision only costs the data path one hash lookup, never a wrong verdict,
/// as a non-zero bucket is always confirmed in [`crate::maps::SOCKETS`]).
#[inline(always)]
#[must_use]
pub const fn socket_bucket(k: &FlowKey) -> u32 {
    // The addresses' upper words folded in, then MurmurHash3's 64-bit finalizer.
    let hi = (k.saddr[0] ^ k.saddr[1] ^ k.saddr[2] ^ k.daddr[0] ^ k.daddr[1] ^ k.daddr[2]) as u64;
    let mut h = (k.saddr[3] as u64) << 32 | k.daddr[3] as u64;
    h ^= ((k.sport as u64) << 16 | k.dport as u64 | hi << 32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> (64 - crate::maps::SOCKET_BUCKET_BITS)) as u32
}

/// A tracked handshake's key: the client's flow ([`crate::cookie::Flow`] layout, fixed width).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address words (IPv4-mapped for IPv4), host order.
    pub saddr: [u32; 4],
    /// Server address words.
    pub daddr: [u32; 4],
    /// Client port.
    pub sport: u16,
    /// Server port.
    pub dport: u16,
}
const _: () = assert!(size_of::<FlowKey>() == 36);

impl FlowKey {
    /// The key of a flow.
    #[inline(always)]
    #[must_use]
    pub const fn of(f: &crate::cookie::Flow) -> FlowKey {
        FlowKey {
            saddr: f.saddr,
            daddr: f.daddr,
            sport: f.sport,
            dport: f.dport,
        }
    }
}

/// A tracked half-open handshake ([`crate::maps::HALF_OPEN`]); written by the data path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HalfOpen {
    /// Monotonic time (ns, tick resolution) of the first SYN.
    pub first_seen_ns: u64,
    /// The client's ISN (of the latest SYN).
    pub isn: u32,
    /// SYNs seen for this flow (1 + retransmissions).
    pub syns: u32,
    /// RSTs the client sent for this flow, whatever their numbers. Only the kernel knows whether
    /// one was in the request socket's window and ended it (`tcp_check_req`), so the data path
    /// only counts them here and the controller asks the kernel after each new one.
    pub resets: u32,
    /// Nonzero once the controller decided to close it (timed out): from then on the data path
    /// drops the client's ACKs and FINs of it (see [`CLOSE_GRACE_NS`]). Written by the
    /// controller only.
    pub closing: u32,
    /// Gateway mode: the server's ISN, once its SYN-ACK went through (the box resets a timed-out
    /// handshake on the client with it).
    pub server_isn: u32,
    /// Gateway mode: nonzero once the server's SYN-ACK went through.
    pub answered: u32,
}
const _: () = assert!(size_of::<HalfOpen>() == 32);

/// Slots of the per-CPU insertion ring that finds the oldest / a random half-open connection.
pub const RING_SLOTS: usize = 256;

/// Per-CPU ring of recently tracked flows, in insertion order ([`crate::maps::RING`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ring {
    /// Next slot to write (monotonic; slot = head % RING_SLOTS).
    pub head: u32,
    /// Oldest slot not yet consumed.
    pub tail: u32,
    /// The flows.
    pub keys: [FlowKey; RING_SLOTS],
}

/// Watch-mode knobs (Cisco's names) and the controller's view of the state, in
/// [`crate::maps::WATCH`]. The controller reads the knobs every tick (so a one-shot command changes
/// them live) and writes the state fields back for `status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Watch timeout in milliseconds (Cisco default 30 s); halved while aggressive.
    pub timeout_ms: u32,
    /// Enter aggressive when half-open connections exceed this (default 1100).
    pub max_incomplete_high: u32,
    /// Leave aggressive (with the one-minute low) when half-open connections fall below this (900).
    pub max_incomplete_low: u32,
    /// Enter aggressive when connection requests in the last minute exceed this (1100).
    pub one_minute_high: u32,
    /// Leave aggressive (with max-incomplete low) below this (900).
    pub one_minute_low: u32,
    /// State: half-open connections now.
    pub half_open: u32,
    /// State: connection requests in the last 60 s.
    pub one_minute: u32,
    /// State: 1 while aggressive.
    pub aggressive: u32,
    /// State: CLOCK_MONOTONIC ns of the last transition (0: none yet).
    pub last_transition_ns: u64,
    /// State: what caused it ([`TransitionCause`] as u32).
    pub last_cause: u32,
    /// Length of the "one-minute" rate window in seconds (0 means 60, Cisco's; shorter only for
    /// tests and labs).
    pub rate_window_s: u32,
    /// Gateway mode: the most spliced connections one client address (an IPv4 address, an
    /// IPv6 /64) may hold (see [`crate::maps::GW_SOURCES`]); 0: no limit.
    pub splices_per_source: u32,
    /// Zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<Watch>() == 56);

impl Default for Watch {
    fn default() -> Self {
        Watch {
            timeout_ms: 30_000,
            max_incomplete_high: 1100,
            max_incomplete_low: 900,
            one_minute_high: 1100,
            one_minute_low: 900,
            half_open: 0,
            one_minute: 0,
            aggressive: 0,
            last_transition_ns: 0,
            last_cause: 0,
            rate_window_s: 60,
            splices_per_source: crate::maps::GW_SPLICES_PER_SOURCE,
            pad: 0,
        }
    }
}

/// Facts about an attachment the controller records for `status` ([`crate::maps::INFO`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Info {
    /// 1: native XDP, 2: generic XDP.
    pub xdp_mode: u32,
    /// Padding; zero.
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns of the attach.
    pub attached_ns: u64,
    /// CLOCK_MONOTONIC ns of the last secret change (attach or rotation).
    pub secret_set_ns: u64,
}
const _: () = assert!(size_of::<Info>() == 24);

/// Why the state last changed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransitionCause {
    /// No transition yet.
    None = 0,
    /// Half-open connections crossed max-incomplete high.
    MaxIncompleteHigh = 1,
    /// Connection requests in the last minute crossed one-minute high.
    OneMinuteHigh = 2,
    /// Both fell below their low marks.
    BelowLow = 3,
}

impl TransitionCause {
    /// From the map's u32.
    #[must_use]
    pub const fn from_u32(v: u32) -> TransitionCause {
        match v {
            1 => TransitionCause::MaxIncompleteHigh,
            2 => TransitionCause::OneMinuteHigh,
            3 => TransitionCause::BelowLow,
            _ => TransitionCause::None,
        }
    }

    /// Stable name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            TransitionCause::None => "none",
            TransitionCause::MaxIncompleteHigh => "max-incomplete high",
            TransitionCause::OneMinuteHigh => "one-minute high",
            TransitionCause::BelowLow => "below low thresholds",
        }
    }
}

/// The thresholds' decision (Cisco TCP intercept): enter aggressive when either high mark is
/// exceeded; leave only when both counts are below their low marks. Returns the new state and, on
/// a change, its cause.
#[must_use]
pub fn evaluate(
    w: &Watch,
    aggressive: bool,
    half_open: u32,
    one_minute: u32,
) -> (bool, Option<TransitionCause>) {
    if aggressive {
        if half_open < w.max_incomplete_low && one_minute < w.one_minute_low {
            return (false, Some(TransitionCause::BelowLow));
        }
        (true, None)
    } else if half_open > w.max_incomplete_high {
        (true, Some(TransitionCause::MaxIncompleteHigh))
    } else if one_minute > w.one_minute_high {
        (true, Some(TransitionCause::OneMinuteHigh))
    } else {
        (false, None)
    }
}

/// Key of the protected-scope LPM trie [`crate::maps::SCOPE`]: a word holding the destination port
/// (0 = every port) in its top 16 bits, then the IPv6 or IPv4-mapped destination address. The
/// trie compares bytes in memory order, so every word is stored big-endian. `prefix_len` counts
/// bits from the start of `data`: 32 for the port word plus the address prefix (96 + n for an
/// IPv4 /n).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScopeKey {
    /// Port word, then the address words; each big-endian in memory.
    pub data: [u32; 5],
}
const _: () = assert!(size_of::<ScopeKey>() == 20);

impl ScopeKey {
    /// Key for `port` (0: all ports) and an address in [`crate::cookie::Flow`] word form.
    #[inline(always)]
    #[must_use]
    pub const fn new(port: u16, addr: &[u32; 4]) -> ScopeKey {
        ScopeKey {
            data: [
                ((port as u32) << 16).to_be(),
                addr[0].to_be(),
                addr[1].to_be(),
                addr[2].to_be(),
                addr[3].to_be(),
            ],
        }
    }

    /// `prefix_len` of an entry for an address prefix of `addr_bits` (on the 128-bit address).
    #[must_use]
    pub const fn prefix_len(addr_bits: u32) -> u32 {
        32 + addr_bits
    }

    /// The port of [`ScopeKey::new`] (0: all ports).
    #[must_use]
    pub const fn port(&self) -> u16 {
        (u32::from_be(self.data[0]) >> 16) as u16
    }

    /// The address words of [`ScopeKey::new`].
    #[must_use]
    pub const fn addr(&self) -> [u32; 4] {
        let d = &self.data;
        [
            u32::from_be(d[1]),
            u32::from_be(d[2]),
            u32::from_be(d[3]),
            u32::from_be(d[4]),
        ]
    }
}

/// Most entries [`ScopeList`] holds.
pub const SCOPE_LIST_MAX: usize = 8;

/// One protected (address, port) pair of a [`ScopeList`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeEntry {
    /// Address words ([`crate::cookie::Flow`] form).
    pub addr: [u32; 4],
    /// Port, or 0 for every port.
    pub port: u32,
}

/// The whole protected scope while it is a few single addresses (see `flags::SCOPE_LIST`);
/// one entry in [`crate::maps::SCOPE_LIST`], written by the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeList {
    /// Entries in use.
    pub len: u32,
    /// The entries; those past `len` are zero.
    pub entries: [ScopeEntry; SCOPE_LIST_MAX],
}
const _: () = assert!(size_of::<ScopeList>() == 4 + 20 * SCOPE_LIST_MAX);

impl ScopeList {
    /// Whether a destination is protected: an entry with its address and port, or every port.
    #[inline(always)]
    #[must_use]
    pub fn protects(&self, addr: &[u32; 4], port: u16) -> bool {
        let mut i = 0;
        while i < SCOPE_LIST_MAX {
            let e = &self.entries[i];
            if (i as u32) < self.len
                && e.addr[3] == addr[3]
                && (e.port == 0 || e.port == u32::from(port))
                && e.addr[0] == addr[0]
                && e.addr[1] == addr[1]
                && e.addr[2] == addr[2]
            {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// The exempt source prefixes while there are few (see `flags::EXEMPT_LIST`); one entry in
/// [`crate::maps::EXEMPT_LIST`], written by the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixList {
    /// Prefixes in use.
    pub len: u32,
    /// Network address words ([`crate::cookie::Flow`] form, host bits clear) per prefix.
    pub net: [[u32; 4]; SCOPE_LIST_MAX],
    /// Mask words per prefix.
    pub mask: [[u32; 4]; SCOPE_LIST_MAX],
}
const _: () = assert!(size_of::<PrefixList>() == 4 + 32 * SCOPE_LIST_MAX);

impl PrefixList {
    /// Adds the prefix of `addr` words and `bits` (on the 128-bit address); false if full.
    pub fn push(&mut self, addr: &[u32; 4], bits: u32) -> bool {
        let i = self.len as usize;
        if i >= SCOPE_LIST_MAX {
            return false;
        }
        for w in 0..4 {
            let b = bits.saturating_sub(32 * w as u32).min(32);
            let m = if b == 0 { 0 } else { u32::MAX << (32 - b) };
            self.mask[i][w] = m;
            self.net[i][w] = addr[w] & m;
        }
        self.len += 1;
        true
    }

    /// Whether `addr` is in one of the prefixes.
    #[inline(always)]
    #[must_use]
    pub fn contains(&self, addr: &[u32; 4]) -> bool {
        let mut i = 0;
        while i < SCOPE_LIST_MAX {
            let (n, m) = (&self.net[i], &self.mask[i]);
            if (i as u32) < self.len
                && addr[3] & m[3] == n[3]
                && addr[2] & m[2] == n[2]
                && addr[1] & m[1] == n[1]
                && addr[0] & m[0] == n[0]
            {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Value of a [`ScopeKey`] entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScopeValue {
    /// 1: protected. 0: explicitly not protected (a hole in a wider prefix).
    pub protect: u32,
}

/// Key of the exempt-source LPM trie [`crate::maps::EXEMPT`]: an (IPv4-mapped) address, each
/// word big-endian in memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrKey {
    /// Address words, big-endian in memory.
    pub addr: [u32; 4],
}

impl AddrKey {
    /// Key for an address in [`crate::cookie::Flow`] word form.
    #[inline(always)]
    #[must_use]
    pub const fn new(a: &[u32; 4]) -> AddrKey {
        AddrKey {
            addr: [a[0].to_be(), a[1].to_be(), a[2].to_be(), a[3].to_be()],
        }
    }

    /// The address words of [`AddrKey::new`].
    #[must_use]
    pub const fn words(&self) -> [u32; 4] {
        let a = &self.addr;
        [
            u32::from_be(a[0]),
            u32::from_be(a[1]),
            u32::from_be(a[2]),
            u32::from_be(a[3]),
        ]
    }
}

/// What the XDP program leaves in the frame's metadata for the TC program when an ACK carried a
/// valid cookie: the fields of the kernel's `struct bpf_tcp_req_attrs` (kfunc
/// `bpf_sk_assign_tcp_reqsk`, net/core/filter.c), behind the attachment's tag
/// ([`Config::meta_tag`]) so TC never acts on foreign metadata.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handoff {
    /// [`Config::meta_tag`] for a handshake's first segment; that XOR [`FOLLOW_FLIP`] for one
    /// following it.
    pub magic: u32,
    /// `struct bpf_tcp_req_attrs`, field for field.
    pub attrs: TcpReqAttrs,
}
const _: () = assert!(size_of::<Handoff>() == 24);

/// The default metadata tag (see [`Config::meta_tag`]): `attach` replaces it with a random one.
pub const HANDOFF_MAGIC: u32 = 0x5843_4b31; // "XCK1"

/// What turns a handoff's metadata tag into its followers' ([`FOLLOW_MAGIC`] for the default
/// tag [`HANDOFF_MAGIC`]).
pub const FOLLOW_FLIP: u32 = HANDOFF_MAGIC ^ FOLLOW_MAGIC;

/// The metadata tag of a segment that follows a handoff (see [`Proven`]) under the default
/// tag; its attributes are zero.
pub const FOLLOW_MAGIC: u32 = 0x5843_4631; // "XCF1"

/// Mirror of the kernel's `struct bpf_tcp_req_attrs` (include/net/tcp.h, Linux >= 6.9).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpReqAttrs {
    /// Client's TSval on the ACK.
    pub rcv_tsval: u32,
    /// TSecr on the ACK: the TSval we sent.
    pub rcv_tsecr: u32,
    /// Client's MSS (from the cookie's table index).
    pub mss: u16,
    /// Our window scale.
    pub rcv_wscale: u8,
    /// Client's window scale.
    pub snd_wscale: u8,
    /// ECN negotiated.
    pub ecn_ok: u8,
    /// Window scaling negotiated.
    pub wscale_ok: u8,
    /// SACK negotiated.
    pub sack_ok: u8,
    /// Timestamps negotiated.
    pub tstamp_ok: u8,
    /// Microsecond timestamps (never: we send millisecond TSvals).
    pub usec_ts_ok: u8,
    /// Must be zero.
    pub reserved: [u8; 3],
}
const _: () = assert!(size_of::<TcpReqAttrs>() == 20);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), no padding (sizes asserted above), every bit pattern valid.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::ScopeKey {}
    unsafe impl aya::Pod for super::ScopeValue {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for crate::cookie::Secrets {}
    unsafe impl aya::Pod for crate::cookie::Key {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::HalfOpen {}
    unsafe impl aya::Pod for crate::splice::Splice {}
    unsafe impl aya::Pod for crate::splice::Held {}
    unsafe impl aya::Pod for crate::splice::ServerKey {}
    unsafe impl aya::Pod for crate::splice::ServerOpts {}
    unsafe impl aya::Pod for super::Proven {}
    unsafe impl aya::Pod for super::Watch {}
    unsafe impl aya::Pod for super::Info {}
    unsafe impl aya::Pod for super::ListenerOffsets {}
    unsafe impl aya::Pod for super::ScopeList {}
    unsafe impl aya::Pod for super::PrefixList {}
    unsafe impl aya::Pod for super::SockOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proven_follows_only_the_clients_next_segments_within_the_window() {
        let key = FlowKey {
            saddr: [0, 0, 0xffff, 0xc612_0002],
            daddr: [0, 0, 0xffff, 0xc612_0001],
            sport: 40000,
            dport: 8080,
        };
        let (seq, ack, t) = (0xffff_fff0_u32, 0x8000_0001_u32, 10_000_000_000_u64);
        let p = Proven::new(key, seq, ack, t);
        // The handshake ACK itself (a duplicate), the request behind it, one that wraps the
        // sequence space, a FIN after 1 GiB less one byte.
        for s in [
            seq,
            seq + 15,
            seq.wrapping_add(100),
            seq.wrapping_add(PROVEN_SEQ_SPAN - 1),
        ] {
            assert!(p.follows(&key, s, ack, t), "seq {s:#x}");
        }
        // Seen on a CPU whose clock reads a tick behind the writer's; the last instant.
        assert!(p.follows(&key, seq, ack, t - 4_000_000));
        assert!(p.follows(&key, seq, ack, t + PROVEN_WINDOW_NS - 1));
        // Too late: a retransmission is handed off afresh.
        assert!(!p.follows(&key, seq, ack, t + PROVEN_WINDOW_NS));
        // Any other acknowledgment number: every single-bit change, and +/- 1.
        for bit in 0..32 {
            assert!(!p.follows(&key, seq, ack ^ (1 << bit), t), "ack bit {bit}");
        }
        assert!(!p.follows(&key, seq, ack.wrapping_sub(1), t));
        assert!(!p.follows(&key, seq, ack + 1, t));
        // Before the client's first byte, or beyond what it can have sent.
        assert!(!p.follows(&key, seq.wrapping_sub(1), ack, t));
        assert!(!p.follows(&key, seq.wrapping_add(PROVEN_SEQ_SPAN), ack, t));
        // Another flow in the same slot: any changed bit of the key.
        for (i, w) in [key.saddr, key.daddr].concat().iter().enumerate() {
            for bit in [0, 31] {
                let mut k = key;
                let words = if i < 4 { &mut k.saddr } else { &mut k.daddr };
                words[i % 4] = w ^ (1 << bit);
                assert!(!p.follows(&k, seq, ack, t), "address word {i} bit {bit}");
            }
        }
        for (sport, dport) in [(40001, 8080), (40000, 8081)] {
            let k = FlowKey {
                sport,
                dport,
                ..key
            };
            assert!(!p.follows(&k, seq, ack, t), "ports {sport} {dport}");
        }
        // A free slot follows nothing, even all-zero numbers at time 0.
        let free = Proven::default();
        assert!(!free.follows(&FlowKey::default(), 0, 0, 0));
        assert!(proven_slot(&key) < crate::maps::PROVEN_SLOTS);
    }

    #[test]
    fn keys_decode_what_they_encode() {
        let a = [0x2001_0db8, 1, 2, 3];
        let k = ScopeKey::new(8080, &a);
        assert_eq!((k.port(), k.addr()), (8080, a));
        assert_eq!(AddrKey::new(&a).words(), a);
    }

    #[test]
    fn scope_list_matches_address_and_port() {
        let a = crate::cookie::mapped(0xc612_0001);
        let b = [0x2001_0db8, 0, 0, 1];
        let mut l = ScopeList::default();
        l.entries[0] = ScopeEntry { addr: a, port: 443 };
        l.entries[1] = ScopeEntry { addr: b, port: 0 };
        l.len = 2;
        assert!(l.protects(&a, 443));
        assert!(!l.protects(&a, 80), "other port");
        assert!(l.protects(&b, 80), "every port");
        assert!(
            !l.protects(&[0x2001_0db8, 0, 1, 1], 80),
            "other address, same last word"
        );
        assert!(!l.protects(&crate::cookie::mapped(0xc612_0002), 443));
        l.len = 1;
        assert!(!l.protects(&b, 80), "entries past len do not count");
        assert!(
            !ScopeList::default().protects(&[0; 4], 0),
            "an empty list protects nothing"
        );
    }

    #[test]
    fn prefix_list_matches_like_the_trie() {
        let mut l = PrefixList::default();
        assert!(l.push(&crate::cookie::mapped(0xc612_0100), 96 + 24));
        assert!(l.push(&[0x2001_0db8, 0x0001_0000, 0, 0], 48));
        assert!(l.contains(&crate::cookie::mapped(0xc612_01fe)));
        assert!(!l.contains(&crate::cookie::mapped(0xc612_02fe)));
        assert!(l.contains(&[0x2001_0db8, 0x0001_ffff, 5, 6]));
        assert!(!l.contains(&[0x2001_0db8, 0x0002_0000, 5, 6]));
        assert!(
            !l.contains(&crate::cookie::mapped(0)),
            "an IPv4 prefix holds no other address"
        );
        let mut all = PrefixList::default();
        assert!(all.push(&[0; 4], 0));
        assert!(all.contains(&[1, 2, 3, 4]), "::/0 holds everything");
        for _ in 2..SCOPE_LIST_MAX {
            assert!(l.push(&[1, 1, 1, 1], 128));
        }
        assert!(!l.push(&[1, 1, 1, 1], 128), "full");
    }

    /// Flows that differ in one field (client port, client address, IPv6 prefix) spread over
    /// the buckets: a filter that clumped them would send most lookups to the hash.
    #[test]
    fn socket_buckets_spread() {
        let base = FlowKey::of(&crate::cookie::Flow::v4(
            0xc612_0002,
            0xc612_0001,
            40000,
            443,
        ));
        let variants: [&dyn Fn(u32) -> FlowKey; 3] = [
            &|i| FlowKey {
                sport: i as u16,
                ..base
            },
            &|i| FlowKey {
                saddr: crate::cookie::mapped(0xc612_0000 + i),
                ..base
            },
            &|i| FlowKey {
                saddr: [0x2001_0db8, i, 0, 2],
                daddr: [0x2001_0db8, 0, 0, 1],
                ..base
            },
        ];
        for v in variants {
            let mut seen = std::collections::HashSet::new();
            for i in 0..10_000 {
                let b = socket_bucket(&v(i));
                assert!(b < crate::maps::SOCKET_BUCKETS);
                seen.insert(b);
            }
            // 10,000 balls in 2^19 bins: about 95 collide.
            assert!(seen.len() > 9_800, "{} distinct buckets", seen.len());
        }
    }

    #[test]
    fn sock_offsets_say_what_the_programs_can_do() {
        let known = SockOffsets {
            netns_cookie: 4097,
            skc_net: 48,
            net_cookie: 208,
            skc_dport: 12,
            skc_num: 14,
            skc_v6_daddr: 56,
            skc_v6_rcv_saddr: 72,
        };
        assert!(known.filters_netns() && known.reads_request_socks());
        for gap in [
            SockOffsets {
                netns_cookie: 0,
                ..known
            },
            SockOffsets {
                net_cookie: 0,
                ..known
            },
        ] {
            assert!(
                !gap.filters_netns() && !gap.reads_request_socks(),
                "{gap:?}"
            );
        }
        let no_ports = SockOffsets {
            skc_num: 0,
            ..known
        };
        assert!(no_ports.filters_netns() && !no_ports.reads_request_socks());
        assert!(!SockOffsets::default().filters_netns());
    }

    #[test]
    fn hysteresis_enters_on_either_high_leaves_on_both_low() {
        let w = Watch::default();
        assert_eq!(
            evaluate(&w, false, 1100, 0),
            (false, None),
            "at the mark is not above it"
        );
        assert_eq!(
            evaluate(&w, false, 1101, 0),
            (true, Some(TransitionCause::MaxIncompleteHigh))
        );
        assert_eq!(
            evaluate(&w, false, 0, 1101),
            (true, Some(TransitionCause::OneMinuteHigh))
        );
        assert_eq!(
            evaluate(&w, true, 950, 0),
            (true, None),
            "between the marks: stays aggressive"
        );
        assert_eq!(evaluate(&w, true, 0, 950), (true, None));
        assert_eq!(
            evaluate(&w, true, 899, 899),
            (false, Some(TransitionCause::BelowLow))
        );
        assert_eq!(
            evaluate(&w, false, 950, 950),
            (false, None),
            "between the marks: stays calm"
        );
    }

    #[test]
    fn auto_resolves_to_the_active_mode() {
        let mut c = Config {
            mode: Mode::Auto as u32,
            ..Config::default()
        };
        assert_eq!(Mode::effective(&c), Mode::Watch);
        c.active = Mode::Intercept as u32;
        assert_eq!(Mode::effective(&c), Mode::Intercept);
        c.mode = Mode::Watch as u32;
        assert_eq!(
            Mode::effective(&c),
            Mode::Watch,
            "active only matters in auto"
        );
    }
}
