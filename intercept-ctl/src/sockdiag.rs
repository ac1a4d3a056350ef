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
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};
use intercept_common::{config::FlowKey, cookie::is_mapped};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
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

/// `struct inet_diag_req_v2` after an `nlmsghdr`.
#[repr(C)]
struct Request {
    nl_len: u32,
    nl_type: u16,
    nl_flags: u16,
    nl_seq: u32,
    nl_pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

/// A NETLINK_SOCK_DIAG socket in the current network namespace.
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
        // SAFETY: plain socket(2); owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("socket(NETLINK_SOCK_DIAG)");
        }
        Ok(SockDiag {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            seq: 0,
        })
    }

    /// A request for `family` sockets in `states`, any addresses (the caller fills them in).
    fn base(&mut self, family: i32, ty: u16, flags: u16, states: u32) -> Request {
        self.seq = self.seq.wrapping_add(1);
        Request {
            nl_len: u32::try_from(size_of::<Request>()).expect("small"),
            nl_type: ty,
            nl_flags: flags,
            nl_seq: self.seq,
            nl_pid: 0,
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states,
            sport: 0,
            dport: 0,
            src: [0; 4],
            dst: [0; 4],
            ifindex: 0,
            cookie: cookie_words(NO_COOKIE),
        }
    }

    /// The server-side socket of a client flow, as the server sees it (local = server), and
    /// only the one with `cookie` unless it is [`NO_COOKIE`].
    fn request(&mut self, key: &FlowKey, ty: u16, flags: u16, cookie: u64) -> Request {
        let v4 = is_mapped(&key.saddr) && is_mapped(&key.daddr);
        let addr = |a: &[u32; 4]| {
            if v4 {
                [a[3].to_be(), 0, 0, 0]
            } else {
                [a[0].to_be(), a[1].to_be(), a[2].to_be(), a[3].to_be()]
            }
        };
        let family = if v4 { libc::AF_INET } else { libc::AF_INET6 };
        Request {
            sport: key.dport.to_be(),
            dport: key.sport.to_be(),
            src: addr(&key.daddr),
            dst: addr(&key.saddr),
            cookie: cookie_words(cookie),
            ..self.base(family, ty, flags, u32::MAX)
        }
    }

    fn send(&self, req: &Request) -> anyhow::Result<()> {
        // SAFETY: req is a plain repr(C) struct of its declared length.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                std::ptr::from_ref(req).cast(),
                size_of::<Request>(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("send to sock_diag");
        }
        Ok(())
    }

    fn recv(&self, size: usize) -> anyhow::Result<Vec<u8>> {
        let mut buf = vec![0u8; size];
        // SAFETY: buffer valid for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("recv from sock_diag");
        }
        buf.truncate(usize::try_from(n)?);
        Ok(buf)
    }

    fn exchange(&mut self, req: &Request) -> anyhow::Result<Vec<u8>> {
        self.send(req)?;
        self.recv(8192)
    }

    /// The server's socket for this client flow, if it has one of its own: its state and cookie.
    /// The kernel's lookup (`inet_diag_find_one_icsk`, through `inet_lookup`) falls back to the
    /// listening socket of the port when the flow has none; that is reported as none.
    ///
    /// # Errors
    /// On a netlink failure other than "no such socket".
    ///
    /// # Panics
    /// If the netlink reply is shorter than the header it announces.
    pub fn state(&mut self, key: &FlowKey) -> anyhow::Result<Option<SockState>> {
        let req = self.request(key, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, NO_COOKIE);
        let buf = self.exchange(&req)?;
        if buf.len() < 16 {
            bail!("short sock_diag reply");
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if ty == NLMSG_ERROR {
            let err = i32::from_ne_bytes(buf[16..20].try_into()?);
            if err == -libc::ENOENT {
                return Ok(None);
            }
            bail!("sock_diag: {}", io::Error::from_raw_os_error(-err));
        }
        // struct inet_diag_msg after the nlmsghdr: family, state, timer, retrans, then
        // inet_diag_sockid (sport, dport, src[4], dst[4], if, cookie[2]: the cookie at 44).
        let msg = buf.get(16..16 + 52).context("short inet_diag_msg")?;
        let word = |o: usize| u32::from_ne_bytes(msg[o..o + 4].try_into().expect("4 bytes"));
        if msg[1] == TCP_LISTEN {
            return Ok(None);
        }
        Ok(Some(SockState {
            state: msg[1],
            cookie: u64::from(word(44)) | u64::from(word(48)) << 32,
        }))
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
        for family in [libc::AF_INET, libc::AF_INET6] {
            let req = self.base(
                family,
                SOCK_DIAG_BY_FAMILY,
                NLM_F_REQUEST | NLM_F_DUMP,
                states,
            );
            self.send(&req)?;
            'recv: loop {
                let buf = self.recv(1 << 16)?;
                let mut at = 0;
                while at + 16 <= buf.len() {
                    let len = u32::from_ne_bytes(buf[at..at + 4].try_into()?) as usize;
                    let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                    if len < 16 || at + len > buf.len() {
                        bail!("malformed sock_diag dump message");
                    }
                    match ty {
                        NLMSG_DONE => break 'recv,
                        NLMSG_ERROR => {
                            let err = i32::from_ne_bytes(buf[at + 16..at + 20].try_into()?);
                            bail!("sock_diag dump: {}", io::Error::from_raw_os_error(-err));
                        }
                        _ => {
                            if let Some(k) = flow_of_msg(&buf[at + 16..at + len]) {
                                out.push(k);
                            }
                        }
                    }
                    at += len.next_multiple_of(4);
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
        let req = self.request(key, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, cookie);
        let buf = self.exchange(&req)?;
        if buf.len() >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
            let err = i32::from_ne_bytes(buf[16..20].try_into()?);
            return match err {
                0 => Ok(true),
                e if e == -libc::ENOENT || e == -libc::ESTALE => Ok(false),
                e if e == -libc::EOPNOTSUPP => bail!(
                    "SOCK_DESTROY is not supported: the kernel needs CONFIG_INET_DIAG_DESTROY"
                ),
                e => bail!("SOCK_DESTROY: {}", io::Error::from_raw_os_error(-e)),
            };
        }
        bail!("unexpected sock_diag reply to SOCK_DESTROY")
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

/// `idiag_cookie` words of a cookie (`sock_diag_save_cookie`: low word first, host order).
fn cookie_words(cookie: u64) -> [u32; 2] {
    [cookie as u32, (cookie >> 32) as u32]
}

/// The inbound flow of one `struct inet_diag_msg` (family, state, timer, retrans, then
/// `inet_diag_sockid`: sport, dport, src[4], dst[4] in network order).
fn flow_of_msg(m: &[u8]) -> Option<FlowKey> {
    if m.len() < 4 + 4 + 32 {
        return None;
    }
    let be16 = |o: usize| u16::from_be_bytes([m[o], m[o + 1]]);
    let addr = |o: usize| -> [u32; 4] {
        let w = intercept_common::cookie::words(m[o..o + 16].try_into().expect("16 bytes"));
        // An IPv4 socket reports its address in the first word.
        if i32::from(m[0]) == libc::AF_INET {
            intercept_common::cookie::mapped(w[0])
        } else {
            w
        }
    };
    Some(FlowKey {
        saddr: addr(24),
        daddr: addr(8),
        sport: be16(6),
        dport: be16(4),
    })
}

#[cfg(test)]
mod tests {
    use super::{NO_COOKIE, cookie_words};

    #[test]
    fn cookie_words_are_low_word_first() {
        assert_eq!(
            cookie_words(0x1122_3344_5566_7788),
            [0x5566_7788, 0x1122_3344]
        );
        assert_eq!(cookie_words(NO_COOKIE), [u32::MAX, u32::MAX]);
    }
}
