//! The data path's counters: one name per thing, one index per counter in the per-CPU array
//! [`crate::maps::COUNTERS`].

/// Every per-CPU counter the XDP program keeps, in map order. The controller sums each index over
/// all CPUs; `Count` is the number of counters (the map's size), never a counter itself.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every frame the program saw.
    Packets = 0,
    /// IPv4 frames (after any VLAN tags) with a consistent header.
    Ipv4,
    /// IPv6 frames (after any VLAN tags) with a consistent header.
    Ipv6,
    /// Frames that carried one or two 802.1Q/802.1ad tags.
    Vlan,
    /// Well-formed TCP segments (IPv4 or IPv6).
    Tcp,
    /// TCP with SYN and without ACK or RST: a connection request.
    Syn,
    /// TCP with SYN and ACK, without RST.
    SynAck,
    /// TCP with ACK, without SYN or RST (includes data and FIN segments).
    Ack,
    /// TCP with RST.
    Rst,
    /// Anything that is not TCP: other EtherTypes (ARP, ...), other IP protocols (ICMP, UDP, ...).
    NonTcp,
    /// IP fragments (IPv4 MF/offset or an IPv6 fragment header): never parsed as TCP, passed.
    Fragment,
    /// Truncated or inconsistent headers (Ethernet, VLAN, IPv4 IHL/total length, IPv6 payload
    /// length, TCP doff): passed untouched to the kernel, which drops them with its own counters.
    Malformed,
    /// Frames handed to the kernel stack (XDP_PASS), whatever their kind.
    Passed,
    /// SYNs to a protected destination in intercept or watch mode.
    SynProtected,
    /// Cookie SYN-ACKs sent back with XDP_TX.
    SynAckSent,
    /// ACKs whose cookie verified; handed to the TC program.
    AckValid,
    /// ACKs with no socket whose cookie MAC failed (forged, or older than two slots): dropped.
    AckBadMac,
    /// ACKs whose cookie verified but whose listener is gone (TC); with the kernel-cookie
    /// engine, protected ACKs with no socket at all: passed, and the kernel resets them.
    AckNoListener,
    /// Connections created in the listener by the kfunc (TC); with the kernel-cookie engine,
    /// ACKs with a valid cookie passed to the listener, which creates the connection itself.
    HandedOff,
    /// Valid ACKs the kernel refused to turn into a connection (TC).
    HandoffFailed,
    /// Protected ACKs of an existing socket (established, request, time-wait): passed.
    PassEstablished,
    /// Protected SYNs carrying data (TCP Fast Open, or a flood padded with a byte): answered with
    /// a cookie like any SYN, the data left for the client to send again after the handshake, as
    /// the kernel's own cookies do.
    SynDataIgnored,
    /// Protected SYNs signed with TCP-MD5 or TCP-AO (BGP): dropped, since only the kernel holds
    /// the key to sign a SYN-ACK (exempt such peers to let them through).
    SynSigned,
    /// SYNs/ACKs from an exempt source: passed.
    PassExempt,
    /// Intercept mode without secrets loaded: passed (fail open).
    PassNoSecret,
    /// Protected SYNs whose TCP checksum is wrong (neither correct nor the pseudo-header sum a
    /// sender leaves for checksum offload to fill): dropped, as the kernel drops them
    /// (`TcpInCsumErrors`), but without costing it an skb each.
    SynBadChecksum,
    /// Frames dropped: the sum of [`Counter::DROP_REASONS`].
    Dropped,
    /// Internal failures (a helper refused): XDP_ABORTED.
    Aborted,
    /// Protected SYNs of new handshakes tracked in watch mode.
    HalfOpenNew,
    /// SYNs of an already tracked handshake (retransmissions).
    SynRetransmit,
    /// Tracked handshakes the kernel completed (the socket-table tracepoint saw the server's
    /// socket go SYN_RECV -> ESTABLISHED).
    HalfOpenCompleted,
    /// Tracked handshakes whose request socket the kernel dropped after the client's RST (the
    /// controller asks it after each RST: only one within the request's window counts).
    HalfOpenAborted,
    /// Tracked handshakes displaced by a new SYN while aggressive (drop-mode).
    HalfOpenDropped,
    /// Tracked handshakes closed by the controller after the watch timeout.
    HalfOpenTimedOut,
    /// Handshakes to displace or evict that the closing set (`CLOSING`) had no room for: they
    /// stay tracked.
    VictimQueueFull,
    /// Tracked handshakes the controller found already gone from the server (reset or completed unseen).
    HalfOpenGone,
    /// ACKs failing the cookie that needed a kernel socket lookup (socket table not authoritative).
    SocketLookups,
    /// Segments following a handoff within its window (the client's first request in the same
    /// poll as its handshake ACK, a duplicate of that ACK): passed without a second handoff, to
    /// the connection the first one creates (see `config::Proven`).
    PassProven,
    /// Segments following a handoff that TC did not make (TC): dropped, so the client
    /// retransmits them into a handoff of their own instead of being reset by the listener.
    FollowerDropped,
    /// Valid ACKs whose listener's accept queue was full (TC): dropped, as the kernel drops
    /// them; the client's retransmission tries again.
    AckQueueFull,
    /// Protected segments of a connection the server closed first, now a time-wait socket in the
    /// kernel: passed to it (it re-acknowledges a FIN, resets late data, accepts a SYN reusing
    /// the 4-tuple).
    PassTimeWait,
    /// Protected SYNs of new handshakes left untracked in watch mode because the half-open
    /// table was full and nothing could be evicted (see `HalfOpenEvicted`): the kernel still
    /// answers them, but they are not counted half-open and the controller does not time them
    /// out (the kernel's own SYN-ACK retries end them).
    HalfOpenTableFull,
    /// Tracked handshakes evicted from the full half-open table to make room for a new one
    /// (this CPU's oldest, as drop-mode oldest picks it): untracked and closed on the server by
    /// the controller.
    HalfOpenEvicted,
    /// The client's ACKs and FINs of a half-open connection the controller is closing (timed
    /// out, displaced, evicted): dropped, so that none turns the request socket into a
    /// connection the close would then reset.
    ClosingDropped,
    /// Valid ACKs whose handoff metadata for TC could not be added (a driver without XDP
    /// metadata support): aborted, so the client retries. `status` reports it; the daemon
    /// re-attaches in generic mode, where metadata always works.
    MetaUnsupported,
    /// First fragments that may carry a TCP SYN (see `parse::L4::SynFragment`), in intercept
    /// mode: dropped. The kernel would reassemble the SYN and answer it from its own SYN queue;
    /// no TCP stack fragments a SYN. Other fragments pass.
    SynFragmentDropped,
    /// IPv6 frames whose extension-header chain is longer than the data path walks, in
    /// intercept mode: dropped, as the kernel could find a SYN behind it (no legitimate TCP
    /// sends such chains).
    Ipv6ChainDropped,
    /// Protected SYNs from a source the routing table cannot reach (blackhole, unreachable,
    /// prohibit): dropped, as the kernel could send no SYN-ACK there either.
    SynUnroutable,
    /// SYN-ACKs sent to the route's next hop on this interface rather than to the SYN's sender
    /// (its Ethernet source was not the next hop back: a source spoofed from this segment, or a
    /// router other than the route back).
    SynAckToNextHop,
    /// Steps of the daemon that failed (a map read, a kernel call, a rotation): each is said on
    /// its stderr, and the daemon retries; a rising count means the daemon is not doing its work.
    ControllerErrors,
    /// Kernel-cookie engine: protected SYNs to a port with no listening socket, passed (the
    /// kernel answers them with a RST, as without us).
    SynNoListener,
    /// Kernel-cookie engine: protected SYNs to a listener that sets its own receive window
    /// (`SO_RCVBUF`, `TCP_WINDOW_CLAMP`), passed for the kernel to answer with its own cookie:
    /// only it knows the window scale it will give the connection.
    SynOwnWindow,
    /// Kernel-cookie engine: protected SYNs the kernel made no cookie for
    /// (`bpf_tcp_gen_syncookie` failed: `net.ipv4.tcp_syncookies` is not 2, or the listener's
    /// accept queue is full), passed for the kernel to decide.
    SynCookieRefused,
    /// Kernel-cookie engine: ACKs whose cookie the kernel's helper could not check (an error
    /// other than "not a cookie of this listener", e.g. IPv6 cookies where IPv6 is a module):
    /// passed, and the listener checks them itself. A rising count means forged ACKs reach it.
    AckCookieUnchecked,
    /// Rare-event lines of the data path (a refused handoff or socket-table insert, an aborted
    /// verdict) not logged because their CPU had already logged
    /// [`crate::maps::LOG_LINES_PER_SECOND`] that second; the event itself is counted by its
    /// own counter either way.
    LogSuppressed,
    /// Gateway mode: ACKs whose cookie verified, turned into the SYN of the connection to the server
    /// (the client's ISN and the options the cookie kept); also the SYN sent again when the
    /// client's data retransmission finds the server silent.
    GwSynSent,
    /// Gateway mode: servers' SYN-ACKs turned into the handshake's ACK (or the held data segment)
    /// and sent back to the server: the splice is open. Never reaches the client.
    GwOpened,
    /// Gateway mode: segments of open splices translated (sequence, acknowledgment, SACK,
    /// timestamps, window) and forwarded, either way.
    GwSpliced,
    /// Gateway mode: the client's first data segment, arriving before the server answered, held
    /// (`HELD`) to be replayed in place of the server's SYN-ACK.
    GwHeld,
    /// Gateway mode: held data segments sent to the server as its handshake's ACK.
    GwHeldReplayed,
    /// Gateway mode: client data segments arriving before the server answered that could not be
    /// held (not the client's first bytes, larger than `HELD_MAX`, `HELD` full, or no room to
    /// replay it):
    /// dropped, and the client sends them again (about 200 ms later).
    GwHeldLost,
    /// Gateway mode: ACKs whose cookie verified while the splice table (`SPLICE`) was full: the
    /// client's connection is refused with a RST (nothing reaches the server).
    GwTableFull,
    /// Gateway mode: RSTs from the server forwarded (translated) to the client: a refused
    /// connection (no listener) or a reset one.
    GwServerReset,
    /// Gateway mode: connections the gateway did not open, learned from a server's segment
    /// (opened before the attachment, in watch mode, or by an exempt client): forwarded
    /// untranslated, their client's segments passed in intercept mode.
    GwLearned,
    /// Gateway mode: segments forwarded by XDP redirect to a gateway interface after the route
    /// lookup; the rest of what the gateway forwards goes through the kernel's forwarding path.
    GwRedirected,
    /// Gateway mode: splice entries freed by the controller: closed and lingered, idle, or never
    /// answered by the server.
    GwFreed,
    /// Gateway watch mode: RSTs the controller sent for timed-out half-open handshakes through
    /// the box (one to the server, one to the client, per handshake).
    GwWatchReset,
    /// Gateway mode: SYN-ACKs from a server that do not acknowledge the SYN the gateway sent for
    /// that flow (or arrive with no splice waiting for one): dropped.
    GwSynAckMismatch,
    /// Gateway mode: SYNs the controller sent again to servers that had not answered the
    /// gateway's SYN for a proven client (1, 3, 7 and 15 s after it).
    GwSynResent,
    /// Gateway mode: proven clients refused with a RST because their address holds its
    /// `splices_per_source` already.
    GwSourceLimit,
    /// Number of counters; not a counter.
    Count,
}

impl Counter {
    /// Every reason the data path drops a frame for: each drop counts one of them and
    /// [`Counter::Dropped`].
    pub const DROP_REASONS: [Counter; 9] = [
        Counter::AckBadMac,
        Counter::SynSigned,
        Counter::SynBadChecksum,
        Counter::SynFragmentDropped,
        Counter::Ipv6ChainDropped,
        Counter::SynUnroutable,
        Counter::ClosingDropped,
        Counter::GwHeldLost,
        Counter::GwSynAckMismatch,
    ];

    /// All counters, in map order.
    pub const ALL: [Counter; Counter::Count as usize] = [
        Counter::Packets,
        Counter::Ipv4,
        Counter::Ipv6,
        Counter::Vlan,
        Counter::Tcp,
        Counter::Syn,
        Counter::SynAck,
        Counter::Ack,
        Counter::Rst,
        Counter::NonTcp,
        Counter::Fragment,
        Counter::Malformed,
        Counter::Passed,
        Counter::SynProtected,
        Counter::SynAckSent,
        Counter::AckValid,
        Counter::AckBadMac,
        Counter::AckNoListener,
        Counter::HandedOff,
        Counter::HandoffFailed,
        Counter::PassEstablished,
        Counter::SynDataIgnored,
        Counter::SynSigned,
        Counter::PassExempt,
        Counter::PassNoSecret,
        Counter::SynBadChecksum,
        Counter::Dropped,
        Counter::Aborted,
        Counter::HalfOpenNew,
        Counter::SynRetransmit,
        Counter::HalfOpenCompleted,
        Counter::HalfOpenAborted,
        Counter::HalfOpenDropped,
        Counter::HalfOpenTimedOut,
        Counter::VictimQueueFull,
        Counter::HalfOpenGone,
        Counter::SocketLookups,
        Counter::PassProven,
        Counter::FollowerDropped,
        Counter::AckQueueFull,
        Counter::PassTimeWait,
        Counter::HalfOpenTableFull,
        Counter::HalfOpenEvicted,
        Counter::ClosingDropped,
        Counter::MetaUnsupported,
        Counter::SynFragmentDropped,
        Counter::Ipv6ChainDropped,
        Counter::SynUnroutable,
        Counter::SynAckToNextHop,
        Counter::ControllerErrors,
        Counter::SynNoListener,
        Counter::SynOwnWindow,
        Counter::SynCookieRefused,
        Counter::AckCookieUnchecked,
        Counter::LogSuppressed,
        Counter::GwSynSent,
        Counter::GwOpened,
        Counter::GwSpliced,
        Counter::GwHeld,
        Counter::GwHeldReplayed,
        Counter::GwHeldLost,
        Counter::GwTableFull,
        Counter::GwServerReset,
        Counter::GwLearned,
        Counter::GwRedirected,
        Counter::GwFreed,
        Counter::GwWatchReset,
        Counter::GwSynAckMismatch,
        Counter::GwSynResent,
        Counter::GwSourceLimit,
    ];

    /// The counter's stable name, used in JSON output and (as `intercept_<name>_total`) in metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::Ipv4 => "ipv4",
            Counter::Ipv6 => "ipv6",
            Counter::Vlan => "vlan",
            Counter::Tcp => "tcp",
            Counter::Syn => "syn",
            Counter::SynAck => "syn_ack",
            Counter::Ack => "ack",
            Counter::Rst => "rst",
            Counter::NonTcp => "non_tcp",
            Counter::Fragment => "fragment",
            Counter::Malformed => "malformed",
            Counter::Passed => "passed",
            Counter::SynProtected => "syn_protected",
            Counter::SynAckSent => "syn_ack_sent",
            Counter::AckValid => "ack_valid",
            Counter::AckBadMac => "ack_bad_mac",
            Counter::AckNoListener => "ack_no_listener",
            Counter::HandedOff => "handed_off",
            Counter::HandoffFailed => "handoff_failed",
            Counter::PassEstablished => "pass_established",
            Counter::SynDataIgnored => "syn_data_ignored",
            Counter::SynSigned => "syn_signed",
            Counter::PassExempt => "pass_exempt",
            Counter::PassNoSecret => "pass_no_secret",
            Counter::SynBadChecksum => "syn_bad_checksum",
            Counter::Dropped => "dropped",
            Counter::Aborted => "aborted",
            Counter::HalfOpenNew => "half_open_new",
            Counter::SynRetransmit => "syn_retransmit",
            Counter::HalfOpenCompleted => "half_open_completed",
            Counter::HalfOpenAborted => "half_open_aborted",
            Counter::HalfOpenDropped => "half_open_dropped",
            Counter::HalfOpenTimedOut => "half_open_timed_out",
            Counter::VictimQueueFull => "victim_queue_full",
            Counter::HalfOpenGone => "half_open_gone",
            Counter::SocketLookups => "socket_lookups",
            Counter::PassProven => "pass_proven",
            Counter::FollowerDropped => "follower_dropped",
            Counter::AckQueueFull => "ack_queue_full",
            Counter::PassTimeWait => "pass_time_wait",
            Counter::HalfOpenTableFull => "half_open_table_full",
            Counter::HalfOpenEvicted => "half_open_evicted",
            Counter::ClosingDropped => "closing_dropped",
            Counter::MetaUnsupported => "meta_unsupported",
            Counter::SynFragmentDropped => "syn_fragment_dropped",
            Counter::Ipv6ChainDropped => "ipv6_chain_dropped",
            Counter::SynUnroutable => "syn_unroutable",
            Counter::SynAckToNextHop => "syn_ack_to_next_hop",
            Counter::ControllerErrors => "controller_errors",
            Counter::SynNoListener => "syn_no_listener",
            Counter::SynOwnWindow => "syn_own_window",
            Counter::SynCookieRefused => "syn_cookie_refused",
            Counter::AckCookieUnchecked => "ack_cookie_unchecked",
            Counter::LogSuppressed => "log_suppressed",
            Counter::GwSynSent => "gw_syn_sent",
            Counter::GwOpened => "gw_opened",
            Counter::GwSpliced => "gw_spliced",
            Counter::GwHeld => "gw_held",
            Counter::GwHeldReplayed => "gw_held_replayed",
            Counter::GwHeldLost => "gw_held_lost",
            Counter::GwTableFull => "gw_table_full",
            Counter::GwServerReset => "gw_server_reset",
            Counter::GwLearned => "gw_learned",
            Counter::GwRedirected => "gw_redirected",
            Counter::GwFreed => "gw_freed",
            Counter::GwWatchReset => "gw_watch_reset",
            Counter::GwSynAckMismatch => "gw_syn_ack_mismatch",
            Counter::GwSynResent => "gw_syn_resent",
            Counter::GwSourceLimit => "gw_source_limit",
            Counter::Count => "count",
        }
    }

    /// One line of help per counter, for `stats` and the metrics' `# HELP`.
    #[must_use]
    pub const fn help(self) -> &'static str {
        match self {
            Counter::Packets => "Frames seen by the XDP program",
            Counter::Ipv4 => "Well-formed IPv4 frames",
            Counter::Ipv6 => "Well-formed IPv6 frames",
            Counter::Vlan => "Frames with one or two VLAN tags",
            Counter::Tcp => "Well-formed TCP segments",
            Counter::Syn => "TCP SYN (connection requests)",
            Counter::SynAck => "TCP SYN-ACK",
            Counter::Ack => "TCP ACK without SYN or RST",
            Counter::Rst => "TCP RST",
            Counter::NonTcp => "Frames that are not TCP",
            Counter::Fragment => "IP fragments (passed, not parsed as TCP)",
            Counter::Malformed => "Truncated or inconsistent headers (passed)",
            Counter::Passed => "Frames passed to the kernel stack",
            Counter::SynProtected => "Protected SYNs seen (intercept or watch)",
            Counter::SynAckSent => "Cookie SYN-ACKs sent (XDP_TX)",
            Counter::AckValid => "ACKs with a valid cookie",
            Counter::AckBadMac => "ACKs dropped: cookie MAC failed",
            Counter::AckNoListener => {
                "ACKs with no listener (left to the kernel, which resets them)"
            }
            Counter::HandedOff => "Connections handed to the listener",
            Counter::HandoffFailed => "Handoffs the kernel refused",
            Counter::PassEstablished => "Passed: segment of an existing connection",
            Counter::SynDataIgnored => "SYNs with payload answered with a cookie (data ignored)",
            Counter::SynSigned => "SYNs signed with TCP-MD5/AO dropped (exempt such peers)",
            Counter::PassExempt => "Passed: exempt source",
            Counter::PassNoSecret => "Passed: no cookie secret loaded",
            Counter::SynBadChecksum => "Dropped: protected SYN with a bad TCP checksum",
            Counter::Dropped => "Frames dropped",
            Counter::Aborted => "Internal failures (XDP_ABORTED)",
            Counter::HalfOpenNew => "Watch: new half-open handshakes tracked",
            Counter::SynRetransmit => "Watch: SYN retransmissions",
            Counter::HalfOpenCompleted => "Watch: handshakes completed",
            Counter::HalfOpenAborted => "Watch: handshakes aborted by the client",
            Counter::HalfOpenDropped => "Watch: half-open displaced while aggressive",
            Counter::HalfOpenTimedOut => "Watch: half-open timed out and closed",
            Counter::VictimQueueFull => "Watch: victim queue full",
            Counter::HalfOpenGone => "Watch: tracked handshakes found already closed",
            Counter::SocketLookups => {
                "ACKs failing the cookie checked against the kernel's sockets"
            }
            Counter::PassProven => "Passed: segment following its handshake's handoff",
            Counter::FollowerDropped => "Dropped: segment following a refused handoff (TC)",
            Counter::AckQueueFull => "Valid ACKs dropped: listener's accept queue full (TC)",
            Counter::PassTimeWait => "Passed: segment of a time-wait connection",
            Counter::HalfOpenTableFull => "Watch: SYNs left untracked, the half-open table full",
            Counter::HalfOpenEvicted => "Watch: half-open evicted from the full table",
            Counter::ClosingDropped => "Watch: client segments of half-open being closed, dropped",
            Counter::MetaUnsupported => {
                "Valid ACKs aborted: the driver refused XDP metadata (use generic mode)"
            }
            Counter::SynFragmentDropped => "Intercept: first fragments that may be a SYN, dropped",
            Counter::Ipv6ChainDropped => "Intercept: IPv6 with too many extension headers, dropped",
            Counter::SynUnroutable => "Intercept: SYN from an unroutable source, dropped",
            Counter::SynAckToNextHop => "SYN-ACKs sent to the route's next hop, not the sender",
            Counter::ControllerErrors => "Controller: daemon steps that failed (see its stderr)",
            Counter::SynNoListener => "Kernel cookie: SYNs to a port with no listener, passed",
            Counter::SynOwnWindow => {
                "Kernel cookie: SYNs to a listener with its own window, left to the kernel"
            }
            Counter::SynCookieRefused => {
                "Kernel cookie: SYNs the kernel made no cookie for (tcp_syncookies != 2?), passed"
            }
            Counter::AckCookieUnchecked => {
                "Kernel cookie: ACKs the kernel's helper could not check, left to the listener"
            }
            Counter::LogSuppressed => "Data-path log lines of rare events cut by the rate limit",
            Counter::GwSynSent => {
                "Gateway: proven clients' connections opened to the server (our SYN sent)"
            }
            Counter::GwOpened => "Gateway: server SYN-ACKs completed by the gateway (splice open)",
            Counter::GwSpliced => "Gateway: segments translated and forwarded",
            Counter::GwHeld => "Gateway: client data segments held until the server answered",
            Counter::GwHeldReplayed => "Gateway: held data segments replayed to the server",
            Counter::GwHeldLost => {
                "Gateway: client data before the server answered left to retransmission"
            }
            Counter::GwTableFull => {
                "Gateway: proven clients refused with a RST, the splice table full"
            }
            Counter::GwServerReset => {
                "Gateway: server RSTs forwarded to the client (refused or reset)"
            }
            Counter::GwLearned => {
                "Gateway: flows learned from the server side, forwarded untranslated"
            }
            Counter::GwRedirected => "Gateway: segments redirected in XDP after a FIB lookup",
            Counter::GwFreed => {
                "Gateway: splices freed by the controller (closed, idle, unanswered)"
            }
            Counter::GwWatchReset => "Gateway watch: RSTs sent for timed-out half-open handshakes",
            Counter::GwSynAckMismatch => {
                "Gateway: server SYN-ACKs not acknowledging our SYN, dropped"
            }
            Counter::GwSynResent => "Gateway: SYNs sent again to servers that had not answered",
            Counter::GwSourceLimit => {
                "Gateway: proven clients refused (RST): their address holds its splices"
            }
            Counter::Count => "",
        }
    }

    /// The counter with this name, if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Counter> {
        Counter::ALL.iter().copied().find(|c| c.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::Counter;

    #[test]
    fn all_is_in_map_order_and_complete() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?} is out of order in Counter::ALL");
        }
        assert_eq!(Counter::ALL.len(), Counter::Count as usize);
    }

    #[test]
    fn names_are_unique_snake_case_and_round_trip() {
        for c in Counter::ALL {
            let n = c.name();
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{n}"
            );
            assert!(n.as_bytes()[0].is_ascii_lowercase(), "{n}");
            assert_eq!(Counter::from_name(n), Some(c));
            assert!(!c.help().is_empty(), "{c:?} has no help");
        }
        assert_eq!(Counter::from_name("count"), None);
    }
}
