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
        Config { mode: Mode::Off as u32, flags: flags::ECN, mss_v4: 1460, mss_v6: 1440, window: 65535, wscale: 7, ttl: 64 }
    }
}

/// Key of the protected-scope LPM trie [`crate::maps::SCOPE`]: destination port (0 = every port)
/// then the IPv6 or IPv4-mapped destination address. `prefix_len` counts bits from the start of
/// `data`: 16 for the port plus the address prefix (96 + n for an IPv4 /n).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScopeKey {
    /// Port (big-endian bytes) then address, 18 bytes.
    pub data: [u8; 18],
}
const _: () = assert!(size_of::<ScopeKey>() == 18);

impl ScopeKey {
    /// Key for `port` (0: all ports) and a 16-byte address.
    #[inline(always)]
    #[must_use]
    pub fn new(port: u16, addr: &[u8; 16]) -> ScopeKey {
        let p = port.to_be_bytes();
        let mut data = [0u8; 18];
        data[0] = p[0];
        data[1] = p[1];
        let mut i = 0;
        while i < 16 {
            data[2 + i] = addr[i];
            i += 1;
        }
        ScopeKey { data }
    }

    /// `prefix_len` of an entry for an address prefix of `bits` (on the 16-byte address).
    #[must_use]
    pub const fn prefix_len(addr_bits: u32) -> u32 {
        16 + addr_bits
    }
}

/// Value of a [`ScopeKey`] entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScopeValue {
    /// 1: protected. 0: explicitly not protected (a hole in a wider prefix).
    pub protect: u32,
}

/// Key of the exempt-source LPM trie [`crate::maps::EXEMPT`]: a 16-byte (IPv4-mapped) address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrKey {
    /// Address.
    pub addr: [u8; 16],
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
