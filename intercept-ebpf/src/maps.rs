//! Maps of the data path. Names match `intercept_common::maps`; the controller pins them under
//! the interface's bpffs directory and writes the configuration ones.
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use intercept_common::{
    config::{
        AddrKey, Config, FlowKey, HalfOpen, Info, PrefixList, Proven, Ring, ScopeKey, ScopeList,
        ScopeValue, Watch, table_word,
    },
    cookie::Secrets,
    handshake::{SynAck, SynRequest},
    maps::{
        CLOSING_ENTRIES, CounterBlock, GW_PORTS_ENTRIES, GW_SERVER_OPTS_ENTRIES, GW_SOURCE_BUCKETS,
        HALF_OPEN_ENTRIES, HELD_ENTRIES, PROVEN_SLOTS, SCOPE_ENTRIES, SOCKET_BUCKETS,
        SOCKET_ENTRIES, SPLICE_ENTRIES, TIME_WAIT_BUCKETS, TIME_WAIT_ENTRIES,
    },
    splice::{Held, ServerKey, ServerOpts, Splice},
};

/// Per-CPU counters, indexed by [`Counter`]; written here, summed by the controller.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(2, 0);

/// Mode and SYN-ACK parameters; written by the controller. All zero (mode off) until it does.
#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Cookie secrets (current and previous); written by the controller.
#[map(name = "SECRETS")]
pub static SECRETS: Array<Secrets> = Array::with_max_entries(1, 0);

/// Protected destinations: (port or 0, address prefix) -> protect; written by the controller.
#[map(name = "SCOPE")]
pub static SCOPE: LpmTrie<ScopeKey, ScopeValue> = LpmTrie::with_max_entries(SCOPE_ENTRIES, 0);

/// The single-address entries of SCOPE, exact match (see `flags::SCOPE_HOSTS`).
#[map(name = "SCOPE_HOSTS")]
pub static SCOPE_HOSTS: HashMap<ScopeKey, ScopeValue> = HashMap::with_max_entries(SCOPE_ENTRIES, 0);

/// SCOPE as a short list (see `flags::SCOPE_LIST`).
#[map(name = "SCOPE_LIST")]
pub static SCOPE_LIST: Array<ScopeList> = Array::with_max_entries(1, 0);

/// EXEMPT as a short list (see `flags::EXEMPT_LIST`).
#[map(name = "EXEMPT_LIST")]
pub static EXEMPT_LIST: Array<PrefixList> = Array::with_max_entries(1, 0);

/// Exempt source prefixes; written by the controller.
#[map(name = "EXEMPT")]
pub static EXEMPT: LpmTrie<AddrKey, u32> = LpmTrie::with_max_entries(SCOPE_ENTRIES, 0);

/// Per-CPU scratch for the SYN being answered: the request and the reply under construction.
pub struct Scratch {
    /// The SYN, as parsed.
    pub req: SynRequest,
    /// The SYN-ACK being built.
    pub sa: SynAck,
    /// The route lookup for the SYN-ACK (see `synack::next_hop`).
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
    /// The headers the kernel-cookie helpers read (see `kcookie`).
    pub kc: KcHeaders,
}

/// A copy of a segment's headers for the kernel-cookie helpers, laid out so that the socket
/// lookup's tuple is a slice of it: the addresses end where the TCP header and its ports begin,
/// as `struct bpf_sock_tuple` orders them (an IPv6 header fills `ip`; an IPv4 one, 20 bytes,
/// its second half). No tuple on the stack, no zeroing.
#[repr(C)]
pub struct KcHeaders {
    /// The fixed IP header: IPv6 at 0, IPv4 at [`KcHeaders::V4_AT`].
    pub ip: [u8; 40],
    /// The TCP header with its options (at most 60 bytes; see `kcookie::tcp_len` for the
    /// rest).
    pub tcp: [u8; 80],
}

impl KcHeaders {
    /// Where an IPv4 header goes in `ip`.
    pub const V4_AT: usize = 20;
}

/// Per-CPU scratch (see [`Scratch`]): off the 512-byte stack, and outside what the verifier
/// tracks, so the option walk's many paths do not multiply the rest of the SYN path.
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Half-open handshakes tracked in watch mode; written here (XDP and the socket-table
/// tracepoint) and by the controller (see `intercept_common::maps::HALF_OPEN`). Not LRU: an LRU
/// map evicts silently (even before it is full, from a CPU's empty free list), and every entry
/// removed uncounted inflated the half-open count for good. Preallocated: an insert into the
/// full table fails (`E2BIG`, `alloc_htab_elem`) and is counted instead.
#[map(name = "HALF_OPEN")]
pub static HALF_OPEN: HashMap<FlowKey, HalfOpen> = HashMap::with_max_entries(HALF_OPEN_ENTRIES, 0);

/// Per-CPU insertion order of tracked flows (drop-mode oldest/random).
#[map(name = "RING")]
pub static RING: PerCpuArray<Ring> = PerCpuArray::with_max_entries(1, 0);

/// Half-open handshakes untracked to be closed on the server, with the time they were queued
/// (see `intercept_common::maps::CLOSING`); written here (displaced, evicted) and by the
/// controller (closed, removed). Allocated as used: it is empty but under floods.
#[map(name = "CLOSING")]
pub static CLOSING: HashMap<FlowKey, u64> =
    HashMap::with_max_entries(CLOSING_ENTRIES, BPF_F_NO_PREALLOC);

/// Nonzero while [`CLOSING`] may hold flows (see `intercept_common::maps::CLOSING_GATE`);
/// written here and by the controller.
#[map(name = "CLOSING_GATE")]
pub static CLOSING_GATE: Array<u64> = Array::with_max_entries(1, 0);

/// Watch-mode knobs and state; the controller's (declared here so it is pinned with the rest).
#[map(name = "WATCH")]
pub static WATCH: Array<Watch> = Array::with_max_entries(1, 0);

/// Attach facts for `status`; the controller's (declared here so it is pinned with the rest).
#[map(name = "INFO")]
pub static INFO: Array<Info> = Array::with_max_entries(1, 0);

/// The inbound flow of every non-listening TCP socket (see `intercept_common::config::SocketTable`); kept by
/// `track_sockets`, seeded by the controller. Not LRU: a silently evicted flow would look like a
/// forgery; a refused insert is counted instead and the table stops being authoritative.
#[map(name = "SOCKETS")]
pub static SOCKETS: HashMap<FlowKey, u32> =
    HashMap::with_max_entries(SOCKET_ENTRIES, BPF_F_NO_PREALLOC);

/// Per bucket of `socket_bucket`, the number of flows of [`SOCKETS`] in it.
#[map(name = "SOCKET_FILTER")]
pub static SOCKET_FILTER: Array<u64> = Array::with_max_entries(SOCKET_BUCKETS, 0);

/// Whether [`SOCKETS`] is authoritative.
#[map(name = "SOCKET_TABLE")]
pub static SOCKET_TABLE: Array<u64> = Array::with_max_entries(table_word::COUNT, 0);

/// Handshakes handed to TC whose connection TCP has not created yet, one slot per flow hash, so
/// the client's next segments pass without a second handoff (see
/// `intercept_common::config::Proven`); written here (XDP: a verified cookie; TC: its state;
/// the tracepoint: cleared once the connection exists).
#[map(name = "PROVEN")]
pub static PROVEN: Array<Proven> = Array::with_max_entries(PROVEN_SLOTS, 0);

/// Connections the server closed first, live in the kernel as time-wait sockets, with the time
/// until which their segments go to the kernel (see `intercept_common::maps::TIME_WAIT`).
/// LRU: an evicted one only loses that until its time is up.
#[map(name = "TIME_WAIT")]
pub static TIME_WAIT: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(TIME_WAIT_ENTRIES, 0);

/// Per bucket, the latest expiry of the [`TIME_WAIT`] flows in it.
#[map(name = "TIME_WAIT_FILTER")]
pub static TIME_WAIT_FILTER: Array<u64> = Array::with_max_entries(TIME_WAIT_BUCKETS, 0);

/// The gateway's spliced connections (see `intercept_common::maps::SPLICE`).
#[map(name = "SPLICE")]
pub static SPLICE: HashMap<FlowKey, Splice> = HashMap::with_max_entries(SPLICE_ENTRIES, 0);

/// Proven clients' first data segments waiting for their server (see
/// `intercept_common::maps::HELD`).
#[map(name = "HELD")]
pub static HELD: HashMap<FlowKey, Held> =
    HashMap::with_max_entries(HELD_ENTRIES, BPF_F_NO_PREALLOC);

/// Splices held per bucket of client addresses (see `intercept_common::maps::GW_SOURCES`);
/// mmapable, so the controller sets the buckets in place.
#[map(name = "GW_SOURCES")]
pub static GW_SOURCES: Array<u64> = Array::with_max_entries(GW_SOURCE_BUCKETS, BPF_F_MMAPABLE);

/// The key of the buckets of [`GW_SOURCES`] (see `intercept_common::maps::GW_SOURCE_KEY`).
#[map(name = "GW_SOURCE_KEY")]
pub static GW_SOURCE_KEY: Array<intercept_common::cookie::Key> = Array::with_max_entries(1, 0);

/// The options each protected server refuses (see `intercept_common::maps::GW_SERVER_OPTS`).
#[map(name = "GW_SERVER_OPTS")]
pub static GW_SERVER_OPTS: LruHashMap<ServerKey, ServerOpts> =
    LruHashMap::with_max_entries(GW_SERVER_OPTS_ENTRIES, 0);

/// The gateway's interfaces and their roles (see `intercept_common::maps::GW_ROLE`).
#[map(name = "GW_ROLE")]
pub static GW_ROLE: HashMap<u32, u32> = HashMap::with_max_entries(GW_PORTS_ENTRIES, 0);

/// The gateway's interfaces as redirect targets (see `intercept_common::maps::GW_PORTS`).
#[map(name = "GW_PORTS")]
pub static GW_PORTS: DevMapHash = DevMapHash::with_max_entries(GW_PORTS_ENTRIES, 0);

/// The gateway's stages (see `intercept_common::maps::GW_PROGS`).
#[map(name = "GW_PROGS")]
pub static GW_PROGS: ProgramArray =
    ProgramArray::with_max_entries(intercept_common::maps::GW_STAGES.len() as u32, 0);
