//! Names of the maps the XDP program declares and the controller opens (by these names in the
//! object, and as file names under the interface's bpffs pin directory).

/// `PerCpuArray<[u64; Counter::Count]>` of two entries: entry [`COUNTERS_DATA_PATH`] is written
/// by the data path only, entry [`COUNTERS_CONTROLLER`] by the controller only; a counter's value
/// is the sum of both over CPUs. (One block per CPU, not one map entry per counter: a packet then
/// touches one or two cache lines of counters, not one line and one pointer per counter.)
pub const COUNTERS: &str = "COUNTERS";
/// The data path's entry of [`COUNTERS`].
pub const COUNTERS_DATA_PATH: u32 = 0;
/// The controller's entry of [`COUNTERS`] (watch-mode timeouts and the like).
pub const COUNTERS_CONTROLLER: u32 = 1;
/// One entry of [`COUNTERS`].
pub type CounterBlock = [u64; crate::Counter::Count as usize];

/// `PerCpuArray<[u64; 2]>` of one entry: each CPU's budget of rare-event log lines (the second it
/// is for, the lines logged in it); the data path's own, pinned with the rest only to be seen.
pub const LOG_BUDGET: &str = "LOG_BUDGET";
/// Lines of rare events (a refused handoff or socket-table insert, an aborted verdict) each CPU
/// logs through aya-log in one second at most; the rest are counted (`log_suppressed`), so a
/// flood of failures cannot flood the daemon's log.
pub const LOG_LINES_PER_SECOND: u64 = 10;
/// The ring buffer aya-log's eBPF side writes its records to (`aya_log_ebpf`'s `AYA_LOGS`),
/// which the daemon drains into its log.
pub const LOG_RING: &str = "AYA_LOGS";

/// Name of the main XDP program in the object.
pub const PROG_XDP: &str = "xdp_intercept";
/// Name of the pass-through XDP program (for the peer of a veth carrying XDP_TX traffic, and as
/// the baseline in benchmarks).
pub const PROG_XDP_PASS: &str = "xdp_pass";

/// `Array<Config>` of one entry; written by the controller.
pub const CONFIG: &str = "CONFIG";
/// `Array<Secrets>` of one entry; written by the controller (attach, rotate-secret).
pub const SECRETS: &str = "SECRETS";
/// `LpmTrie<ScopeKey, ScopeValue>`: protected destinations and ports; written by the controller.
pub const SCOPE: &str = "SCOPE";
/// `HashMap<ScopeKey, ScopeValue>`: the single-address entries of [`SCOPE`], for exact-match
/// lookups while every entry is one (see `flags::SCOPE_HOSTS`); written by the controller.
pub const SCOPE_HOSTS: &str = "SCOPE_HOSTS";
/// `Array<ScopeList>` of one entry: SCOPE while it is a few single addresses (see
/// `flags::SCOPE_LIST`); written by the controller.
pub const SCOPE_LIST: &str = "SCOPE_LIST";
/// `LpmTrie<AddrKey, u32>`: exempt sources; written by the controller.
pub const EXEMPT: &str = "EXEMPT";
/// `Array<PrefixList>` of one entry: EXEMPT while it holds few prefixes (see
/// `flags::EXEMPT_LIST`); written by the controller.
pub const EXEMPT_LIST: &str = "EXEMPT_LIST";
/// Name of the gateway's XDP program (`attach --gateway`), attached to the client-facing and
/// the server-facing interface with the same maps.
pub const PROG_GATEWAY: &str = "xdp_gateway";
/// `ProgramArray` of the gateway's stages, tail-called from [`PROG_GATEWAY`] (each verified on
/// its own, with its own budget): index [`GW_STAGE_SYN`] answers a protected SYN,
/// [`GW_STAGE_CLIENT`] a client's other segments, [`GW_STAGE_SERVER`] a server's,
/// [`GW_STAGE_FORWARD`] forwards a translated segment, [`GW_STAGE_COOKIE`] checks the cookie of
/// a client's segment of no splice, [`GW_STAGE_OPEN`] opens a proven client's connection to
/// its server, [`GW_STAGE_COMPLETE`] completes the server's handshake and [`GW_STAGE_REPLAY`]
/// replays the client's held data to it. Filled by the controller before the
/// links exist; a stage missing at run time aborts the frame (`aborted`).
pub const GW_PROGS: &str = "GW_PROGS";
/// The programs of [`GW_PROGS`], by index.
pub const GW_STAGES: [&str; 8] = [
    "gw_syn",
    "gw_client",
    "gw_server",
    "gw_forward",
    "gw_open",
    "gw_cookie",
    "gw_complete",
    "gw_replay",
];
/// [`GW_PROGS`] index of `gw_syn`.
pub const GW_STAGE_SYN: u32 = 0;
/// [`GW_PROGS`] index of `gw_client`.
pub const GW_STAGE_CLIENT: u32 = 1;
/// [`GW_PROGS`] index of `gw_server`.
pub const GW_STAGE_SERVER: u32 = 2;
/// [`GW_PROGS`] index of `gw_forward`.
pub const GW_STAGE_FORWARD: u32 = 3;
/// [`GW_PROGS`] index of `gw_open`.
pub const GW_STAGE_OPEN: u32 = 4;
/// [`GW_PROGS`] index of `gw_cookie`.
pub const GW_STAGE_COOKIE: u32 = 5;
/// [`GW_PROGS`] index of `gw_complete`.
pub const GW_STAGE_COMPLETE: u32 = 6;
/// [`GW_PROGS`] index of `gw_replay`.
pub const GW_STAGE_REPLAY: u32 = 7;
/// `HashMap<FlowKey, Splice>`: the gateway's spliced connections, keyed client to server (see
/// [`crate::splice`]). Inserted and updated by the data path; deleted by the controller (see
/// [`crate::splice::idle_verdict`]), and by the data path when a new SYN reuses the 4-tuple of an
/// ended one. Preallocated: an insert into the full table fails
/// and the client's connection is refused with a RST (`gw_table_full`).
pub const SPLICE: &str = "SPLICE";
/// Capacity of [`SPLICE`] (64-byte values, about 7 MiB preallocated).
pub const SPLICE_ENTRIES: u32 = 65_536;
/// `HashMap<FlowKey, Held>`: each proven client's first data segment while its server has not
/// answered (see [`crate::splice::Held`]); written and deleted by the data path. Allocated as
/// used: it holds entries only for the round trip to the server.
pub const HELD: &str = "HELD";
/// Capacity of [`HELD`]: a segment finding it full is left to the client's retransmission
/// (`gw_held_lost`).
pub const HELD_ENTRIES: u32 = 4_096;
/// `Array<u64>` (mmapable; 8-byte values, the kernel's array stride): per bucket of client
/// addresses (see [`crate::splice::source_bucket`]), the splices they hold. The data path adds
/// one for each it opens and refuses a proven client whose bucket holds
/// `Watch::splices_per_source` already (with a RST, `gw_source_limit`); the controller brings
/// every bucket to what the table holds at each sweep (once a second, keeping what was added
/// meanwhile), so the splices it or the data path freed are given back. Without it, one client
/// address could fill [`SPLICE`] by completing handshakes and going quiet.
pub const GW_SOURCES: &str = "GW_SOURCES";
/// Log2 of [`GW_SOURCE_BUCKETS`].
pub const GW_SOURCE_BUCKET_BITS: u32 = 16;
/// Buckets of [`GW_SOURCES`].
pub const GW_SOURCE_BUCKETS: u32 = 1 << GW_SOURCE_BUCKET_BITS;
/// `Array<Key>` of one: the attachment's random key of [`crate::splice::source_bucket`],
/// written at attach (never rotated: the buckets would move).
pub const GW_SOURCE_KEY: &str = "GW_SOURCE_KEY";
/// The default of `Watch::splices_per_source`: one client address may hold a 16th of the table.
pub const GW_SPLICES_PER_SOURCE: u32 = SPLICE_ENTRIES / 16;
/// `LruHashMap<ServerKey, ServerOpts>`: per protected server (address and port), the options
/// its SYN-ACKs refused, learned by the data path from a server's SYN-ACK to the gateway's SYN
/// (see [`crate::splice::learn_refused`]) and left out of the cookie SYN-ACKs of that server's
/// next clients ([`crate::splice::strip_refused`]) for [`crate::splice::SERVER_OPTS_TTL_NS`].
/// A server not (or no longer) in it is offered whatever its client offered.
pub const GW_SERVER_OPTS: &str = "GW_SERVER_OPTS";
/// Capacity of [`GW_SERVER_OPTS`] (least recently used servers make room).
pub const GW_SERVER_OPTS_ENTRIES: u32 = 16_384;
/// `HashMap<u32, u32>`: ifindex -> [`crate::splice::ROLE_CLIENT`] or
/// [`crate::splice::ROLE_SERVER`] for the gateway's interfaces; written by the controller.
pub const GW_ROLE: &str = "GW_ROLE";
/// `DevMapHash` of the gateway's interfaces (ifindex -> ifindex): the egress interfaces the
/// data path redirects spliced segments to after its own route lookup (`bpf_fib_lookup`);
/// written by the controller. A route out of any other interface, or a neighbour not yet
/// resolved, leaves the segment to the kernel's forwarding path.
pub const GW_PORTS: &str = "GW_PORTS";
/// Capacity of [`GW_ROLE`] and [`GW_PORTS`].
pub const GW_PORTS_ENTRIES: u32 = 64;
/// Name of the TC ingress program that completes verified handshakes.
pub const PROG_TC: &str = "tc_handoff";
/// Entries of the SCOPE and EXEMPT tries.
pub const SCOPE_ENTRIES: u32 = 4096;

/// `HashMap<FlowKey, HalfOpen>`: half-open handshakes tracked in watch mode; written by the data
/// path (XDP: insert, retransmit, RST seen, drop-mode and full-table removal; the socket-table
/// tracepoint: removal once the kernel completed the handshake) and the controller (marking
/// timed-out ones closing, removal once it closed them or the kernel dropped the request socket
/// after an RST).
pub const HALF_OPEN: &str = "HALF_OPEN";
/// Capacity of [`HALF_OPEN`] (preallocated, 32-byte values: about 8 MiB). A SYN finding it full
/// evicts the oldest of its CPU's recent handshakes (`half_open_evicted`), or is not tracked
/// (`half_open_table_full`), so the half-open count stays what the table holds.
pub const HALF_OPEN_ENTRIES: u32 = 65_536;
/// `PerCpuArray<Ring>`: insertion order of tracked flows, for drop-mode oldest/random.
pub const RING: &str = "RING";
/// `HashMap<FlowKey, u64>`: half-open connections the data path untracked to have them closed
/// on the server (displaced while aggressive, evicted from the full table), each with the
/// monotonic time (ns) it was queued. Written by the data path (insert) and the controller (which
/// closes each one at least [`crate::config::CLOSE_GRACE_NS`] later, then removes it). While a
/// flow is here the data path drops the client's ACKs and FINs of it (see
/// [`crate::config::CLOSE_GRACE_NS`]).
pub const CLOSING: &str = "CLOSING";
/// Capacity of [`CLOSING`] (allocated as used): victims queued faster than the controller closes
/// them beyond this stay tracked (`victim_queue_full`).
pub const CLOSING_ENTRIES: u32 = 65_536;
/// `Array<u64>` of one word, nonzero while [`CLOSING`] may hold flows: only then does the data
/// path look the flows it does not track up there (one array load spares every other segment
/// that lookup, and reads no clock). Set by the data path before it queues a victim; set by the
/// controller while [`CLOSING`] holds any, cleared when it found it empty (a victim queued in
/// between finds the gate closed until the next tick, which opens it again and starts that
/// victim's grace over).
pub const CLOSING_GATE: &str = "CLOSING_GATE";
/// `Array<Watch>`: watch-mode knobs and state; written by the controller.
pub const WATCH: &str = "WATCH";
/// `Array<Info>`: attach facts for `status`; written by the controller only.
pub const INFO: &str = "INFO";
/// `HashMap<FlowKey, u32>`: the inbound flow of every non-listening TCP socket (see
/// [`crate::config::SocketTable`]); written by the `track_sockets` tracepoint program and, at
/// attach, by the controller.
pub const SOCKETS: &str = "SOCKETS";
/// Capacity of [`SOCKETS`] (allocated as used).
pub const SOCKET_ENTRIES: u32 = 1 << 20;
/// `Array<u64>` of [`SOCKET_BUCKETS`]: how many flows of [`SOCKETS`] fall in each bucket of
/// [`crate::config::socket_bucket`]. The data path reads one counter (an inlined array load)
/// before paying for a hash lookup: a zero proves the flow absent. Kept with atomic adds by the
/// same code that inserts and removes flows (the tracepoint, and `seed_socket` at attach).
pub const SOCKET_FILTER: &str = "SOCKET_FILTER";
/// Log2 of the number of [`SOCKET_FILTER`] buckets.
pub const SOCKET_BUCKET_BITS: u32 = 19;
/// Number of [`SOCKET_FILTER`] buckets (4 MiB of counters).
pub const SOCKET_BUCKETS: u32 = 1 << SOCKET_BUCKET_BITS;
/// Name of the XDP program the controller runs with BPF_PROG_TEST_RUN to seed [`SOCKETS`] (a
/// frame carrying one `FlowKey` after an Ethernet header), so seeding and the tracepoint share
/// one insertion code path, atomic counters included.
pub const PROG_SEED: &str = "seed_socket";
/// `Array<Proven>` of [`PROVEN_SLOTS`]: handshakes whose cookie ACK was handed to TC and whose
/// connection TCP has not created yet, so the client's next segments pass without a second
/// handoff (see [`crate::config::Proven`]); a flow's slot is [`crate::config::proven_slot`].
/// Written by the data path only: the XDP program for verified cookies, the socket-table
/// tracepoint (clearing a flow's slot once its connection exists).
pub const PROVEN: &str = "PROVEN";
/// Number of [`PROVEN`] slots (a power of two; 896 KiB).
pub const PROVEN_SLOTS: u32 = 1 << 14;
/// `LruHashMap<FlowKey, u64>`: sockets the kernel holds outside the socket table, each with the
/// monotonic time (ns) until which its flow's segments go to the kernel: connections the server
/// closed first, which live on as time-wait sockets (the socket table drops them at
/// `TCP_CLOSE`; [`crate::config::TIME_WAIT_NS`]), and request sockets hashed while intercept mode
/// is in force, whose SYN the kernel answered itself because it came over another interface
/// (asymmetric routing; [`crate::config::REQUEST_SOCK_LIFETIME_NS`]). Written, for the
/// attachment's network namespace only, by the `track_sockets` tracepoint program, the
/// [`PROG_REQSK`] tracing program (or [`PROG_REQSK_SOCKOPS`]) and, at attach, the controller (time-wait sockets that existed
/// before). The name stays what the pinned map was always called.
pub const TIME_WAIT: &str = "TIME_WAIT";
/// Capacity of [`TIME_WAIT`]: 70 s of server-initiated closes (and request sockets) at 1,870
/// per second before the oldest are evicted (their late segments are then dropped as
/// forgeries). 131,072 entries of
/// 44 bytes, preallocated (about 13 MiB).
pub const TIME_WAIT_ENTRIES: u32 = 1 << 17;
/// `Array<u64>` of [`TIME_WAIT_BUCKETS`]: per bucket of [`crate::config::time_wait_bucket`], the
/// latest expiry of the [`TIME_WAIT`] flows stored there. A bucket whose time has passed holds no
/// live flow, so most segments cost one array load, never a hash lookup; a bucket needs no
/// decrement, since its entries expire with it. Written with [`TIME_WAIT`].
pub const TIME_WAIT_FILTER: &str = "TIME_WAIT_FILTER";
/// Number of [`TIME_WAIT_FILTER`] buckets (512 KiB).
pub const TIME_WAIT_BUCKETS: u32 = 1 << 16;
/// `Array<SocketTable>`: whether [`SOCKETS`] is authoritative.
pub const SOCKET_TABLE: &str = "SOCKET_TABLE";
/// Name of the tracepoint program that keeps [`SOCKETS`].
pub const PROG_TRACK: &str = "track_sockets";
/// Name of the tracing (fentry) program that records the kernel's new request sockets in
/// [`TIME_WAIT`].
pub const PROG_REQSK: &str = "track_request_socks";
/// The same as a `sock_ops` program on the cgroup v2 root, for kernels that refuse fentry
/// programs.
pub const PROG_REQSK_SOCKOPS: &str = "track_request_socks_sockops";
/// The kernel function [`PROG_REQSK`] runs on entry of: `bool
/// inet_csk_reqsk_queue_hash_add(struct sock *sk, struct request_sock *req, unsigned long
/// timeout)` (`net/ipv4/inet_connection_sock.c`), called by `tcp_conn_request` once the request
/// socket holds its flow, before the SYN-ACK leaves.
pub const REQSK_FUNCTION: &str = "inet_csk_reqsk_queue_hash_add";
/// The tracepoint it attaches to (category, name).
pub const TRACEPOINT: (&str, &str) = ("sock", "inet_sock_set_state");

/// A field of [`TRACEPOINT`]'s record that [`PROG_TRACK`] reads: its declaration as tracefs'
/// `format` file writes it, its offset and size. The program reads at these offsets; the
/// controller checks this kernel's `format` has them before attaching.
#[derive(Clone, Copy, Debug)]
pub struct TraceField {
    /// Declaration, e.g. `int newstate`.
    pub decl: &'static str,
    /// Offset in the record.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// The fields of [`TRACEPOINT`]'s record that [`PROG_TRACK`] reads.
pub mod trace_field {
    use super::TraceField;
    /// The socket (`struct sock *`): its namespace is read through it.
    pub const SKADDR: TraceField = TraceField {
        decl: "const void * skaddr",
        offset: 8,
        size: 8,
    };
    /// The previous TCP state.
    pub const OLDSTATE: TraceField = TraceField {
        decl: "int oldstate",
        offset: 16,
        size: 4,
    };
    /// The new TCP state.
    pub const NEWSTATE: TraceField = TraceField {
        decl: "int newstate",
        offset: 20,
        size: 4,
    };
    /// Local port, host order.
    pub const SPORT: TraceField = TraceField {
        decl: "__u16 sport",
        offset: 24,
        size: 2,
    };
    /// Remote port, host order.
    pub const DPORT: TraceField = TraceField {
        decl: "__u16 dport",
        offset: 26,
        size: 2,
    };
    /// IP protocol.
    pub const PROTOCOL: TraceField = TraceField {
        decl: "__u16 protocol",
        offset: 30,
        size: 2,
    };
    /// Local address (IPv4 ones IPv4-mapped).
    pub const SADDR_V6: TraceField = TraceField {
        decl: "__u8 saddr_v6[16]",
        offset: 40,
        size: 16,
    };
    /// Remote address (IPv4 ones IPv4-mapped).
    pub const DADDR_V6: TraceField = TraceField {
        decl: "__u8 daddr_v6[16]",
        offset: 56,
        size: 16,
    };
    /// All of them.
    pub const ALL: [TraceField; 8] = [
        SKADDR, OLDSTATE, NEWSTATE, SPORT, DPORT, PROTOCOL, SADDR_V6, DADDR_V6,
    ];
}
