//! The kernel's socket table over NETLINK_SOCK_DIAG (include/uapi/linux/inet_diag.h): the state of
//! one TCP socket by 4-tuple, and SOCK_DESTROY to close a half-open (SYN_RECV) one on the server,
//! which frees its request socket exactly as an accepted RST would (`tcp_abort`,
//! net/ipv4/tcp.c). Needs CAP_NET_ADMIN in the namespace and CONFIG_INET_DIAG_DESTROY.
//!
//! A destroy names the socket by the cookie its state check reported (`idiag_cookie`, which
//! `inet_diag_find_one_icsk` checks with `sock_diag_check_cookie`), never by 4-tuple alone: the
//! lookup falls back to the port's listening socket once the flow has no socket of its own, so a
//! request socket gone between the check and the destroy (the client's RST, the kernel's own
//! expiry) would have the destroy close the listener (`tcp_abort` stops a listening socket); and
//! a new request socket of the same 4-tuple is not the one checked. The cookie does not tell a
//! request socket from the connection it becomes: `inet_csk_clone_lock` gives the child the
//! request's cookie (see `Watcher` for how the data path keeps that from happening meanwhile).
use std::{io, net::IpAddr, os::fd::OwnedFd};

use anyhow::{Context as _, bail};
use intercept_common::{
    config::FlowKey,
    cookie::{is_mapped, words_of},
};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    SockDiagDestroy, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink};

/// TCP states whose sockets the socket table holds (bits by include/net/tcp_states.h): all but
/// TIME_WAIT (a minisock; its end fires no state change), CLOSE, LISTEN and NEW_SYN_RECV
/// (request sockets, covered by the controller's lookup window instead).
const TABLE_STATES: u32 = 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 11;
/// The state request sockets report.
pub use intercept_common::config::tcp_state::SYN_RECV as TCP_SYN_RECV;
/// `TCP_TIME_WAIT` in include/net/tcp_states.h.
const TCP_TIME_WAIT: u32 = 6;
use intercept_common::config::tcp_state::LISTEN as TCP_LISTEN;
/// `INET_DIAG_NOCOOKIE` (include/uapi/linux/inet_diag.h): match a socket by 4-tuple alone.
const NO_COOKIE: u64 = u64::MAX;
/// Every state, as the single-socket requests ask (the kernel ignores states there).
const ALL_STATES: u32 = u32::MAX;

/// One TCP socket as sock_diag reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockState {
    /// Its TCP state (include/net/tcp_states.h; request sockets report `TCP_SYN_RECV`).
    pub state: u8,
    /// The kernel's identifier of this very socket (`idiag_cookie`, from `sock_gen_cookie`,
    /// never reused while the system runs): a socket later created for the same 4-tuple has
    /// another.
    pub cookie: u64,
}

/// A NETLINK_SOCK_DIAG socket in the current network namespace. The messages are
/// netlink-packet-sock-diag's (`inet_diag_req_v2`, `inet_diag_msg`, and SOCK_DESTROY's request,
/// which is an `inet_diag_req_v2` under another message type).
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

impl SockDiag {
    /// Opens it.
    ///
    /// # Errors
    /// If the socket cannot be created.
    pub fn open() -> anyhow::Result<SockDiag> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )
        .context("socket(NETLINK_SOCK_DIAG)")?;
        Ok(SockDiag { fd, seq: 0 })
    }

    /// A request for TCP sockets of `family` in `states`, any addresses.
    fn base(family: u8, states: u32) -> InetRequest {
        InetRequest {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            extensions: ExtensionFlags::empty(),
            // Bits as given, even those the crate names no flag for.
            states: StateFlags::from_bits_retain(states),
            socket_id: SocketId {
                cookie: cookie_bytes(NO_COOKIE),
                ..if family == libc::AF_INET as u8 {
                    SocketId::new_v4()
                } else {
                    SocketId::new_v6()
                }
            },
        }
    }

    /// The server-side socket of a client flow, as the server sees it (local = server), and
    /// only the one with `cookie` unless it is [`NO_COOKIE`].
    fn request(key: &FlowKey, cookie: u64) -> InetRequest {
        let v4 = is_mapped(&key.saddr) && is_mapped(&key.daddr);
        let addr = |a: &[u32; 4]| -> IpAddr {
            if v4 {
                IpAddr::V4(a[3].into())
            } else {
                let b: [u8; 16] = std::array::from_fn(|i| a[i / 4].to_be_bytes()[i % 4]);
                IpAddr::V6(b.into())
            }
        };
        let family = if v4 { libc::AF_INET } else { libc::AF_INET6 } as u8;
        InetRequest {
            socket_id: SocketId {
                source_port: key.dport,
                destination_port: key.sport,
                source_address: addr(&key.daddr),
                destination_address: addr(&key.saddr),
                interface_id: 0,
                cookie: cookie_bytes(cookie),
            },
            ..Self::base(family, ALL_STATES)
        }
    }

    /// Sends `msg` as one netlink message with `flags`.
    fn send<M: NetlinkSerializable>(&mut self, flags: u16, msg: M) -> anyhow::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        rustix::net::send(&self.fd, &buf, SendFlags::empty()).context("send to sock_diag")?;
        Ok(())
    }

    /// The netlink messages of one datagram of at most `size` bytes.
    fn recv(&self, size: usize) -> anyhow::Result<Vec<NetlinkMessage<SockDiagMessage>>> {
        let mut buf = vec![0u8; size];
        let (n, _) = rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty())
            .context("recv from sock_diag")?;
        let mut out = Vec::new();
        let mut at = 0;
        while at < n {
            let m = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[at..n])
                .map_err(|e| anyhow::anyhow!("malformed sock_diag message: {e}"))?;
            let len = m.header.length as usize;
            out.push(m);
            at += len.next_multiple_of(4);
        }
        Ok(out)
    }

    /// The first message of the reply to the request just sent (one datagram).
    fn reply(&self) -> anyhow::Result<NetlinkPayload<SockDiagMessage>> {
        self.recv(8192)?
            .into_iter()
            .next()
            .map(|m| m.payload)
            .context("empty sock_diag reply")
    }

    /// The server's socket for this client flow, if it has one of its own: its state and cookie.
    /// The kernel's lookup (`inet_diag_find_one_icsk`, through `inet_lookup`) falls back to the
    /// listening socket of the port when the flow has none; that is reported as none.
    ///
    /// # Errors
    /// On a netlink failure other than "no such socket".
    pub fn state(&mut self, key: &FlowKey) -> anyhow::Result<Option<SockState>> {
        self.send(
            NLM_F_REQUEST,
            SockDiagMessage::InetRequest(Self::request(key, NO_COOKIE)),
        )?;
        match self.reply()? {
            NetlinkPayload::Error(e) if e.raw_code() == -libc::ENOENT => Ok(None),
            NetlinkPayload::Error(e) => bail!("sock_diag: {}", e.to_io()),
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                Ok((r.header.state != TCP_LISTEN).then(|| SockState {
                    state: r.header.state,
                    cookie: cookie_of(r.header.socket_id.cookie),
                }))
            }
            other => bail!("unexpected sock_diag reply: {other:?}"),
        }
    }

    /// The cookie of the server's socket for this client flow if it is half-open (SYN_RECV).
    ///
    /// # Errors
    /// On a netlink failure.
    pub fn half_open(&mut self, key: &FlowKey) -> anyhow::Result<Option<u64>> {
        Ok(self
            .state(key)?
            .filter(|s| s.state == TCP_SYN_RECV)
            .map(|s| s.cookie))
    }

    /// The inbound flow (remote -> local) of every TCP socket of this network namespace in a
    /// state the socket table holds (see `intercept_common::config::SocketTable`).
    ///
    /// # Errors
    /// On a netlink failure.
    pub fn table_flows(&mut self) -> anyhow::Result<Vec<FlowKey>> {
        self.flows_in(TABLE_STATES)
    }

    /// The inbound flow of every time-wait socket of this network namespace (see
    /// `intercept_common::maps::TIME_WAIT`).
    ///
    /// # Errors
    /// On a netlink failure.
    pub fn time_wait_flows(&mut self) -> anyhow::Result<Vec<FlowKey>> {
        self.flows_in(1 << TCP_TIME_WAIT)
    }

    /// The inbound flow of every TCP socket of this network namespace in `states` (a bit per
    /// state of include/net/tcp_states.h).
    fn flows_in(&mut self, states: u32) -> anyhow::Result<Vec<FlowKey>> {
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.send(
                NLM_F_REQUEST | NLM_F_DUMP,
                SockDiagMessage::InetRequest(Self::base(family, states)),
            )?;
            'recv: loop {
                for m in self.recv(1 << 16)? {
                    match m.payload {
                        NetlinkPayload::Done(_) => break 'recv,
                        NetlinkPayload::Error(e) => bail!("sock_diag dump: {}", e.to_io()),
                        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                            out.push(flow_of(&r));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(out)
    }

    /// Closes the server's socket for this client flow if it still is the socket `cookie` names
    /// (SOCK_DESTROY). `Ok(false)` if it is gone or another socket holds the 4-tuple now.
    ///
    /// # Errors
    /// On a netlink failure other than "no such socket".
    pub fn destroy(&mut self, key: &FlowKey, cookie: u64) -> anyhow::Result<bool> {
        self.send(
            NLM_F_REQUEST | NLM_F_ACK,
            SockDiagDestroy::new(SockDiagMessage::InetRequest(Self::request(key, cookie))),
        )?;
        let NetlinkPayload::Error(e) = self.reply()? else {
            bail!("unexpected sock_diag reply to SOCK_DESTROY")
        };
        match e.raw_code() {
            0 => Ok(true),
            e if e == -libc::ENOENT || e == -libc::ESTALE => Ok(false),
            e if e == -libc::EOPNOTSUPP => {
                bail!("SOCK_DESTROY is not supported: the kernel needs CONFIG_INET_DIAG_DESTROY")
            }
            e => bail!("SOCK_DESTROY: {}", io::Error::from_raw_os_error(-e)),
        }
    }

    /// Closes the flow's server socket only if it is still half-open (SYN_RECV), by the cookie
    /// that check reported, so a connection that completed meanwhile is never harmed. True if
    /// one was closed.
    ///
    /// # Errors
    /// On a netlink failure.
    pub fn close_half_open(&mut self, key: &FlowKey) -> anyhow::Result<bool> {
        match self.half_open(key)? {
            Some(cookie) => self.destroy(key, cookie),
            None => Ok(false),
        }
    }
}

/// `idiag_cookie` of a cookie: two host-order words, the low one first
/// (`sock_diag_save_cookie`).
fn cookie_bytes(cookie: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
    b[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    b
}

/// The cookie of an `idiag_cookie` (see [`cookie_bytes`]).
fn cookie_of(b: [u8; 8]) -> u64 {
    let word = |i: usize| u64::from(u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
    word(0) | word(4) << 32
}

/// The inbound flow (remote -> local) of one socket of a dump.
fn flow_of(r: &InetResponse) -> FlowKey {
    let id = &r.header.socket_id;
    FlowKey {
        saddr: words_of(id.destination_address),
        daddr: words_of(id.source_address),
        sport: id.destination_port,
        dport: id.source_port,
    }
}

#[cfg(test)]
mod tests {
    use super::{NO_COOKIE, cookie_bytes, cookie_of};

    #[test]
    fn cookie_words_are_low_word_first() {
        let b = cookie_bytes(0x1122_3344_5566_7788);
        assert_eq!(
            [
                u32::from_ne_bytes(b[..4].try_into().unwrap()),
                u32::from_ne_bytes(b[4..].try_into().unwrap())
            ],
            [0x5566_7788, 0x1122_3344]
        );
        assert_eq!(cookie_of(b), 0x1122_3344_5566_7788);
        assert_eq!(cookie_bytes(NO_COOKIE), [0xff; 8]);
    }
}
