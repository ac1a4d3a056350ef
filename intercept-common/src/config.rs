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
}

impl Mode {
    /// From the map's u32; unknown values read as `Off` (fail open, counted by the caller).
    #[must_use]
    pub const fn from_u32(v: u32) -> Mode {
        match v {
            1 => Mode::Intercept,
            _ => Mode::Off,
        }
    }

    /// Stable name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Intercept => "intercept",
        }
    }
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
    /// Bits the controller derives from the maps (not set by an operator).
    pub const DERIVED: u32 = SCOPE_PORTS | SCOPE_ANY_PORT | EXEMPT;
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
}
const _: () = assert!(size_of::<Config>() == 16);

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
        }
    }
}

/// Key of the protected-scope LPM trie [`crate::maps::SCOPE`]: a word holding the destination port
/// (0 = every port) in its top 16 bits, then the IPv6 or IPv4-mapped destination address. The
/// trie compares bytes in memory order, so every word is stored big-endian. `prefix_len` counts
/// bits from the start of `data`: 32 for the port word plus the address prefix (96 + n for an
/// IPv4 /n).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

/// What the XDP program leaves in the frame's metadata for the TC program when an ACK carried a
/// valid cookie: the fields of the kernel's `struct bpf_tcp_req_attrs` (kfunc
/// `bpf_sk_assign_tcp_reqsk`, net/core/filter.c), plus a magic so TC never acts on foreign
/// metadata.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handoff {
    /// [`HANDOFF_MAGIC`].
    pub magic: u32,
    /// `struct bpf_tcp_req_attrs`, field for field.
    pub attrs: TcpReqAttrs,
}
const _: () = assert!(size_of::<Handoff>() == 24);

/// Marks metadata written by our XDP program.
pub const HANDOFF_MAGIC: u32 = 0x5843_4b31; // "XCK1"

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
}
