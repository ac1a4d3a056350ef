//! SYN cookies: a keyed MAC (SipHash-2-4, 128-bit secret) over the 4-tuple, the client's ISN, a
//! coarse time slot and the TCP options, carried in the 32-bit ISN of our SYN-ACK and, when the
//! client offers timestamps, in the TSval too (RFC 7323: the client echoes it as TSecr on every
//! segment, the handshake's ACK included, as the kernel's own cookies use it).
//!
//! One 64-bit SipHash-2-4 of (addresses, ports, client ISN, slot, descriptor), where the
//! descriptor is the layout, the key index and the options (10 bits), gives every MAC bit below.
//! Two layouts, chosen by whether the SYN offered timestamps (the ACK then carries TSecr):
//!
//! | layout | ISN (most significant first) | TSval | MAC bits |
//! |---|---|---|---|
//! | timestamps | MAC 28, key index 1, slot parity 1, MSS index 2 | clock 14, MAC 12, window scale 4, SACK 1, ECN 1 | 40 |
//! | none | MAC 24, key index 1, slot parity 1, MSS index 2, window-scale class 3, SACK 1 | (none) | 24 |
//!
//! So a blind forger must guess 24 bits of an ACK without timestamps, at least the kernel's own
//! 24 (`net/ipv4/syncookies.c`), and 40 bits of one with timestamps; the layout is under the MAC,
//! so a cookie of one layout never verifies as the other. Without timestamps the cookie has no
//! room for ECN (not negotiated then) nor for every window scale: the client's is rounded down to
//! one of [`WSCALE_CLASSES`] (we then read its windows as at most what it offered: never more
//! than it can take).
//!
//! A slot is 2^36 ns (68.7 s) of the monotonic clock (`CLOCK_MONOTONIC`, read by the data path at
//! tick resolution). A cookie verifies in its own slot and the next one (the parity bit says
//! which), so it is valid for 68.7 s to 137.4 s, like the kernel's two minutes
//! (`MAX_SYNCOOKIE_AGE`); an older one fails its MAC.
//!
//! The TSval's clock is `CLOCK_MONOTONIC` in milliseconds plus a random offset drawn with each
//! secret (so it reveals nothing of the host's uptime), shifted to move once every 2^18 ms; the
//! kernel continues the connection's timestamps from it (`bpf_sk_assign_tcp_reqsk` takes it as
//! `rcv_tsecr`).
//!
//! Two secrets: SYNs use the current one and record its index; verification uses the index in the
//! cookie. Rotating writes the new secret into the other index and flips `current`, so handshakes
//! in flight still verify until the following rotation (rotate no faster than the validity).

/// Log2 of the slot length in nanoseconds (2^36 ns = 68.7 s).
pub const SLOT_SHIFT: u32 = 36;
/// MSS values a cookie can carry for IPv4 (index 0..=3), as the kernel's `msstab`.
pub const MSS_TABLE_V4: [u16; 4] = [536, 1300, 1440, 1460];
/// MSS values a cookie can carry for IPv6 (IPv6 minimum MTU 1280 - 60, then common MTUs - 60).
pub const MSS_TABLE_V6: [u16; 4] = [1220, 1420, 1440, 8940];
/// Window-scale value meaning "the client did not offer window scaling".
pub const WSCALE_NONE: u8 = 15;
/// Largest window scale (RFC 7323 section 2.3).
pub const WSCALE_MAX: u8 = 14;

/// A 128-bit SipHash key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Key {
    /// k0 and k1 of SipHash.
    pub k: [u64; 2],
}

/// The two secrets and which one SYNs use now. Written by the controller into
/// [`crate::maps::SECRETS`], read by the data path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Secrets {
    /// Secret 0 and secret 1.
    pub keys: [Key; 2],
    /// Index (0 or 1) of the secret new cookies use.
    pub current: u32,
    /// Bumped by every rotation (for `status`; never used in the MAC).
    pub generation: u32,
    /// Per secret, a random offset added to the millisecond clock in our TSvals (drawn with the
    /// secret), so a TSval says nothing of the host's uptime.
    pub ts_offset: [u32; 2],
}
const _: () = assert!(size_of::<Secrets>() == 48);

impl Key {
    /// Whether this is a secret at all: an all-zero key (a map never written) is not.
    #[inline(always)]
    #[must_use]
    pub const fn is_set(&self) -> bool {
        self.k[0] != 0 || self.k[1] != 0
    }
}

impl Secrets {
    /// The key new cookies are made with, with its index and TSval offset, if it is set (see
    /// [`Key::is_set`]).
    #[inline(always)]
    #[must_use]
    pub const fn current_key(&self) -> Option<(u32, &Key, u32)> {
        let idx = self.current & 1;
        let (key, off) = if idx == 1 {
            (&self.keys[1], self.ts_offset[1])
        } else {
            (&self.keys[0], self.ts_offset[0])
        };
        if key.is_set() {
            Some((idx, key, off))
        } else {
            None
        }
    }
}

/// One SipRound (Aumasson and Bernstein, "SipHash: a fast short-input PRF", section 2).
#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-2-4 of a message of `8 * N + tail_len` bytes (`tail_len` < 8): the little-endian
/// words `words`, then the low `tail_len` bytes of `tail` (little-endian).
#[inline(always)]
#[must_use]
pub fn siphash24<const N: usize>(key: &Key, words: &[u64; N], tail: u64, tail_len: u32) -> u64 {
    let mut v = [
        key.k[0] ^ 0x736f_6d65_7073_6575,
        key.k[1] ^ 0x646f_7261_6e64_6f6d,
        key.k[0] ^ 0x6c79_6765_6e65_7261,
        key.k[1] ^ 0x7465_6462_7974_6573,
    ];
    let mut i = 0;
    while i < N {
        v[3] ^= words[i];
        round(&mut v);
        round(&mut v);
        v[0] ^= words[i];
        i += 1;
    }
    // Final block: the tail bytes, and the message length in the top byte.
    let tail_len = tail_len & 7;
    let mask = (1u64 << (8 * tail_len)) - 1;
    let b = ((8 * N as u64 + u64::from(tail_len)) & 0xff) << 56 | (tail & mask);
    v[3] ^= b;
    round(&mut v);
    round(&mut v);
    v[0] ^= b;
    v[2] ^= 0xff;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// A connection's 4-tuple as the client sent it. Addresses are four 32-bit words, each the
/// big-endian reading of 4 address bytes (so `saddr[3]` of 198.18.0.2 is `0xc612_0002`). IPv4
/// addresses are stored IPv4-mapped (`::ffff:a.b.c.d`, RFC 4291 section 2.5.5.2), so one code path
/// serves both families. (Words, not bytes: the data path then holds 4 values per address instead
/// of 16, which keeps it inside the BPF stack.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Client address.
    pub saddr: [u32; 4],
    /// Server address.
    pub daddr: [u32; 4],
    /// Client port.
    pub sport: u16,
    /// Server port.
    pub dport: u16,
}

impl Flow {
    /// The same connection seen from the other end: addresses and ports swapped.
    #[inline(always)]
    #[must_use]
    pub const fn reversed(&self) -> Flow {
        Flow {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
        }
    }

    /// An IPv4 flow (addresses as big-endian words), stored IPv4-mapped.
    #[inline(always)]
    #[must_use]
    pub const fn v4(saddr: u32, daddr: u32, sport: u16, dport: u16) -> Flow {
        Flow {
            saddr: mapped(saddr),
            daddr: mapped(daddr),
            sport,
            dport,
        }
    }
}

/// `::ffff:a.b.c.d` for the big-endian word `a`.
#[inline(always)]
#[must_use]
pub const fn mapped(a: u32) -> [u32; 4] {
    [0, 0, 0xffff, a]
}

/// Whether an address is IPv4-mapped.
#[inline(always)]
#[must_use]
pub const fn is_mapped(a: &[u32; 4]) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == 0xffff
}

/// An address in [`Flow`] word form (IPv4 as IPv4-mapped).
#[must_use]
pub fn words_of(ip: core::net::IpAddr) -> [u32; 4] {
    match ip {
        core::net::IpAddr::V4(a) => mapped(u32::from(a)),
        core::net::IpAddr::V6(a) => words(&a.octets()),
    }
}

/// The address of [`Flow`] words (an IPv4-mapped one as IPv4).
#[must_use]
pub fn ip_of(w: &[u32; 4]) -> core::net::IpAddr {
    if is_mapped(w) {
        core::net::IpAddr::V4(w[3].into())
    } else {
        let v = u128::from(w[0]) << 96
            | u128::from(w[1]) << 64
            | u128::from(w[2]) << 32
            | u128::from(w[3]);
        core::net::IpAddr::V6(v.into())
    }
}

/// Address words from 16 bytes in network order.
#[inline(always)]
#[must_use]
pub const fn words(b: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// TCP options negotiated on the SYN, as the cookie carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieOpts {
    /// Index into the family's MSS table.
    pub mss_idx: u8,
    /// Client's window scale (0..=14), or [`WSCALE_NONE`].
    pub wscale: u8,
    /// Client sent SACK-permitted.
    pub sack: bool,
    /// ECN negotiated (client sent ECE+CWR and we answered ECE).
    pub ecn: bool,
}

/// The window scales a cookie without timestamps can carry (3 bits): a client's is rounded down
/// to the largest not above it. 0 must stay exact (it enables scaling in both directions); 6, 7
/// and 8 are what macOS, Linux and Windows send.
pub const WSCALE_CLASSES: [u8; 8] = [WSCALE_NONE, 0, 2, 4, 6, 7, 8, 9];

/// The class of a window scale in [`WSCALE_CLASSES`] (0 for "not offered").
#[inline(always)]
#[must_use]
pub const fn wscale_class(w: u8) -> u8 {
    if w > WSCALE_MAX {
        return 0;
    }
    let mut c = 1;
    let mut i = 2;
    while i < 8 {
        if WSCALE_CLASSES[i] <= w {
            c = i as u8;
        }
        i += 1;
    }
    c
}

impl CookieOpts {
    /// What of these options a cookie carries: all of them with timestamps; without, no ECN and
    /// the window scale rounded down to its class (see the module docs). The SYN-ACK must offer
    /// exactly what the cookie carries.
    #[inline(always)]
    #[must_use]
    pub const fn carried(self, ts: bool) -> CookieOpts {
        if ts {
            return self;
        }
        CookieOpts {
            wscale: WSCALE_CLASSES[wscale_class(self.wscale) as usize],
            ecn: false,
            ..self
        }
    }

    /// The 8 option bits of the MAC's descriptor: MSS index 2, window scale 4, SACK 1, ECN 1.
    #[inline(always)]
    #[must_use]
    const fn bits(self) -> u32 {
        ((self.mss_idx & 3) as u32) << 6
            | ((self.wscale & 15) as u32) << 2
            | (self.sack as u32) << 1
            | self.ecn as u32
    }

    /// The MSS this index stands for.
    #[inline(always)]
    #[must_use]
    pub const fn mss(self, v6: bool) -> u16 {
        let i = (self.mss_idx & 3) as usize;
        if v6 { MSS_TABLE_V6[i] } else { MSS_TABLE_V4[i] }
    }
}

/// The largest table index whose MSS does not exceed the client's (index 0 if even that does).
#[inline(always)]
#[must_use]
pub fn mss_index(client_mss: u16, v6: bool) -> u8 {
    let t = if v6 { &MSS_TABLE_V6 } else { &MSS_TABLE_V4 };
    let mut idx = 0;
    let mut i = 1;
    while i < 4 {
        if client_mss >= t[i] {
            idx = i as u8;
        }
        i += 1;
    }
    idx
}

/// The time slot of a monotonic timestamp in nanoseconds.
#[inline(always)]
#[must_use]
pub const fn slot_of(now_ns: u64) -> u32 {
    (now_ns >> SLOT_SHIFT) as u32
}

/// SipHash-2-4 over everything a cookie vouches for: its 64 bits are the MAC bits of both
/// layouts.
///
/// The message is the addresses, ports and client ISN as little-endian 64-bit words, then six
/// tail bytes: the full slot (4) and the descriptor (2: layout, key index, options). IPv4 hashes
/// 22 bytes (the IPv4-mapped prefix carries nothing): two blocks and the final one, 10 SipRounds.
/// IPv6 hashes 46 bytes, 16 SipRounds. The length is in SipHash's final block, so the families
/// never collide.
#[inline(always)]
fn mac(key: &Key, flow: &Flow, isn: u32, slot: u32, desc: u32) -> u64 {
    let ports_isn = u64::from(flow.sport) << 48 | u64::from(flow.dport) << 32 | u64::from(isn);
    let tail = u64::from(desc & 0xffff) << 32 | u64::from(slot);
    if is_mapped(&flow.saddr) && is_mapped(&flow.daddr) {
        siphash24(
            key,
            &[
                u64::from(flow.saddr[3]) << 32 | u64::from(flow.daddr[3]),
                ports_isn,
            ],
            tail,
            6,
        )
    } else {
        let w = |a: &[u32; 4], i: usize| u64::from(a[i]) << 32 | u64::from(a[i + 1]);
        siphash24(
            key,
            &[
                w(&flow.saddr, 0),
                w(&flow.saddr, 2),
                w(&flow.daddr, 0),
                w(&flow.daddr, 2),
                ports_isn,
            ],
            tail,
            6,
        )
    }
}

/// The descriptor under the MAC: layout (timestamps or not), key index, option bits.
#[inline(always)]
const fn descriptor(ts: bool, key_idx: u32, opts: CookieOpts) -> u32 {
    (ts as u32) << 9 | (key_idx & 1) << 8 | opts.bits()
}

/// The clock part of our TSval: milliseconds plus the secret's offset, in units of 2^18 ms.
#[inline(always)]
const fn ts_clock(now_ns: u64, ts_offset: u32) -> u32 {
    (((now_ns / 1_000_000) as u32).wrapping_add(ts_offset) >> 18) & 0x3fff
}

/// A SYN's cookie: our ISN and, with timestamps, our TSval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynCookie {
    /// The ISN of our SYN-ACK.
    pub isn: u32,
    /// The TSval of our SYN-ACK (0 without timestamps).
    pub tsval: u32,
}

/// What a cookie is made of, besides the secret: the client's 4-tuple and ISN, the monotonic
/// time, the options (carried as [`CookieOpts::carried`] says: the SYN-ACK must offer the same)
/// and whether the client offered timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynInput {
    /// The client's flow.
    pub flow: Flow,
    /// The client's ISN.
    pub isn: u32,
    /// Monotonic nanoseconds.
    pub now_ns: u64,
    /// Options negotiated.
    pub opts: CookieOpts,
    /// The SYN offered timestamps.
    pub ts: bool,
}

/// Makes the cookie for a SYN with the secret `key` (index `key_idx` in [`Secrets`], TSval offset
/// `ts_offset`).
#[inline(always)]
#[must_use]
pub fn make(key: &Key, key_idx: u32, ts_offset: u32, syn: &SynInput) -> SynCookie {
    let opts = syn.opts.carried(syn.ts);
    let slot = slot_of(syn.now_ns);
    let h = mac(
        key,
        &syn.flow,
        syn.isn,
        slot,
        descriptor(syn.ts, key_idx, opts),
    );
    let (k, p, m) = (key_idx & 1, slot & 1, u32::from(opts.mss_idx & 3));
    if syn.ts {
        SynCookie {
            isn: ((h >> 36) as u32) << 4 | k << 3 | p << 2 | m,
            tsval: ts_clock(syn.now_ns, ts_offset) << 18
                | (((h >> 24) as u32) & 0xfff) << 6
                | (opts.bits() & 0x3f),
        }
    } else {
        let w = u32::from(wscale_class(opts.wscale));
        SynCookie {
            isn: ((h >> 40) as u32) << 8 | k << 7 | p << 6 | m << 4 | w << 1 | u32::from(opts.sack),
            tsval: 0,
        }
    }
}

/// Why a cookie was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieError {
    /// The MAC does not match: forged, altered, made with a retired or unset secret, or made more
    /// than two slots ago.
    BadMac,
}

/// Checks the cookie of a completing ACK: `isn` is the client's ISN (the ACK's sequence number
/// minus one), `cookie` the ACK's acknowledgment number minus one, `tsecr` the ACK's TSecr if it
/// carries timestamps (then the cookie is of the timestamps layout).
///
/// # Errors
/// [`CookieError`] when the cookie does not authenticate.
#[inline(always)]
pub fn check(
    secrets: &Secrets,
    flow: &Flow,
    isn: u32,
    cookie: u32,
    tsecr: Option<u32>,
    now_slot: u32,
) -> Result<CookieOpts, CookieError> {
    let ts = tsecr.is_some();
    let t = tsecr.unwrap_or(0);
    let (key_idx, parity, opts) = if ts {
        (
            (cookie >> 3) & 1,
            (cookie >> 2) & 1,
            CookieOpts {
                mss_idx: (cookie & 3) as u8,
                wscale: ((t >> 2) & 15) as u8,
                sack: t & 2 != 0,
                ecn: t & 1 != 0,
            },
        )
    } else {
        (
            (cookie >> 7) & 1,
            (cookie >> 6) & 1,
            CookieOpts {
                mss_idx: ((cookie >> 4) & 3) as u8,
                wscale: WSCALE_CLASSES[((cookie >> 1) & 7) as usize],
                sack: cookie & 1 != 0,
                ecn: false,
            },
        )
    };
    // The slot of that parity: this one or the one before.
    let slot = now_slot.wrapping_sub((now_slot ^ parity) & 1);
    let key = if key_idx != 0 {
        &secrets.keys[1]
    } else {
        &secrets.keys[0]
    };
    // An all-zero key is no secret (a map never written, or written half): anyone can compute
    // its cookies, so it verifies nothing.
    if !key.is_set() {
        return Err(CookieError::BadMac);
    }
    let h = mac(key, flow, isn, slot, descriptor(ts, key_idx, opts));
    let ok = if ts {
        (h >> 36) as u32 == cookie >> 4 && ((h >> 24) as u32) & 0xfff == (t >> 6) & 0xfff
    } else {
        (h >> 40) as u32 == cookie >> 8
    };
    if ok {
        Ok(opts)
    } else {
        Err(CookieError::BadMac)
    }
}

#[cfg(test)]
mod tests {
    use core::hash::Hasher as _;

    use super::*;

    fn secrets() -> Secrets {
        Secrets {
            keys: [
                Key {
                    k: [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908],
                },
                Key { k: [1, 2] },
            ],
            current: 0,
            generation: 0,
            ts_offset: [0x1234_5678, 0x9abc_def0],
        }
    }
    fn flow() -> Flow {
        Flow::v4(0xc612_0002, 0xc612_0001, 40000, 80)
    }
    const OPTS: CookieOpts = CookieOpts {
        mss_idx: 3,
        wscale: 7,
        sack: true,
        ecn: true,
    };
    /// Slot 500's start, and a time inside it.
    const T500: u64 = 500 << SLOT_SHIFT;
    const T: u64 = T500 + 12_345_678_901;

    fn syn(f: Flow, isn: u32, now_ns: u64, opts: CookieOpts, ts: bool) -> SynInput {
        SynInput {
            flow: f,
            isn,
            now_ns,
            opts,
            ts,
        }
    }

    /// Checks `c` as the ACK of its handshake would bring it back.
    fn back(
        s: &Secrets,
        f: &Flow,
        isn: u32,
        c: SynCookie,
        ts: bool,
        slot: u32,
    ) -> Result<CookieOpts, CookieError> {
        check(s, f, isn, c.isn, ts.then_some(c.tsval), slot)
    }

    #[test]
    fn siphash_matches_reference() {
        let key = secrets().keys[0];
        let words: [u64; 6] = [1, 0xdead_beef, u64::MAX, 42, 7 << 40, 0x0123_4567_89ab_cdef];
        let tail = 0x8877_6655_4433_2211_u64;
        for tail_len in 0..8 {
            let mut h = siphasher::sip::SipHasher24::new_with_keys(key.k[0], key.k[1]);
            for w in words {
                h.write(&w.to_le_bytes());
            }
            h.write(&tail.to_le_bytes()[..tail_len as usize]);
            assert_eq!(
                siphash24(&key, &words, tail, tail_len),
                h.finish(),
                "tail {tail_len}"
            );
        }
        // Test vector from the SipHash paper's reference table: key 00..0f, message 00..07.
        assert_eq!(
            siphash24(&key, &[0x0706_0504_0302_0100], 0, 0),
            0x93f5_f579_9a93_2462
        );
    }

    #[test]
    fn mss_index_picks_largest_not_above() {
        assert_eq!(mss_index(1460, false), 3);
        assert_eq!(mss_index(1459, false), 2);
        assert_eq!(mss_index(1300, false), 1);
        assert_eq!(mss_index(100, false), 0);
        assert_eq!(mss_index(9000, true), 3);
        assert_eq!(mss_index(1440, true), 2);
        assert_eq!(mss_index(1280, true), 0);
        assert_eq!(CookieOpts { mss_idx: 2, ..OPTS }.mss(false), 1440);
    }

    #[test]
    fn address_words_round_trip() {
        for a in ["198.18.0.2", "2001:db8::1", "::ffff:0:1", "::"] {
            let ip: core::net::IpAddr = a.parse().unwrap();
            let back = ip_of(&words_of(ip));
            // An IPv4-mapped IPv6 address reads back as IPv4: one form per address.
            let want = match ip {
                core::net::IpAddr::V6(v) => v.to_ipv4_mapped().map_or(ip, core::net::IpAddr::V4),
                v4 @ core::net::IpAddr::V4(_) => v4,
            };
            assert_eq!(back, want, "{a}");
        }
        assert_eq!(
            words_of("198.18.0.2".parse().unwrap()),
            [0, 0, 0xffff, 0xc612_0002]
        );
    }

    #[test]
    fn an_unset_key_verifies_nothing() {
        let co = OPTS;
        let zero = Secrets::default();
        assert_eq!(zero.current_key(), None);
        for ts in [false, true] {
            // A cookie anyone can make with the zero key, in the current slot.
            let forged = make(&zero.keys[0], 0, 0, &syn(flow(), 77, T, co, ts));
            assert_eq!(
                back(&zero, &flow(), 77, forged, ts, 500),
                Err(CookieError::BadMac)
            );
            // Half written: the set key works, the zero one still verifies nothing.
            let half = Secrets {
                keys: [Key { k: [1, 2] }, Key { k: [0, 0] }],
                current: 1,
                ..secrets()
            };
            assert_eq!(half.current_key(), None, "the current key is unset");
            let forged1 = make(&half.keys[1], 1, 0, &syn(flow(), 77, T, co, ts));
            assert_eq!(
                back(&half, &flow(), 77, forged1, ts, 500),
                Err(CookieError::BadMac)
            );
            let good = make(&half.keys[0], 0, 0, &syn(flow(), 77, T, co, ts));
            assert_eq!(back(&half, &flow(), 77, good, ts, 500), Ok(co.carried(ts)));
        }
    }

    #[test]
    fn without_timestamps_the_cookie_carries_what_fits() {
        // Every window scale rounds down to a class at most its value; 0 and 6..=9 exactly.
        for w in 0..=WSCALE_MAX {
            let c = WSCALE_CLASSES[wscale_class(w) as usize];
            assert!(c <= w, "{w} -> {c}");
            if w == 0 || (6..=9).contains(&w) {
                assert_eq!(c, w);
            }
        }
        assert_eq!(wscale_class(WSCALE_NONE), 0);
        let carried = OPTS.carried(false);
        assert_eq!(
            (carried.wscale, carried.ecn, carried.sack, carried.mss_idx),
            (7, false, true, 3)
        );
        assert_eq!(OPTS.carried(true), OPTS);
        // Every option combination round-trips through both layouts.
        let s = secrets();
        for mss_idx in 0..4 {
            for wscale in 0..=15 {
                for sack in [false, true] {
                    for ecn in [false, true] {
                        let o = CookieOpts {
                            mss_idx,
                            wscale,
                            sack,
                            ecn,
                        };
                        for ts in [false, true] {
                            let c = make(&s.keys[0], 0, 0, &syn(flow(), 5, T, o, ts));
                            assert_eq!(
                                back(&s, &flow(), 5, c, ts, 500),
                                Ok(o.carried(ts)),
                                "{o:?} ts={ts}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn valid_in_its_slot_and_the_next_only() {
        let s = secrets();
        for ts in [false, true] {
            let c = make(&s.keys[0], 0, 0, &syn(flow(), 1000, T, OPTS, ts));
            let want = Ok(OPTS.carried(ts));
            assert_eq!(back(&s, &flow(), 1000, c, ts, 500), want);
            assert_eq!(
                back(&s, &flow(), 1000, c, ts, 501),
                want,
                "previous slot still passes"
            );
            for late in [502, 503, 504, 499] {
                assert_eq!(
                    back(&s, &flow(), 1000, c, ts, late),
                    Err(CookieError::BadMac),
                    "slot {late}"
                );
            }
        }
    }

    #[test]
    fn every_input_and_bit_is_authenticated() {
        let s = secrets();
        let f = flow();
        for ts in [false, true] {
            let c = make(&s.keys[0], 0, 0, &syn(f, 1000, T, OPTS, ts));
            let mut other = f;
            other.sport += 1;
            assert_eq!(
                back(&s, &other, 1000, c, ts, 500),
                Err(CookieError::BadMac),
                "port"
            );
            let mut other = f;
            other.saddr[3] ^= 1;
            assert_eq!(
                back(&s, &other, 1000, c, ts, 500),
                Err(CookieError::BadMac),
                "address"
            );
            assert_eq!(
                back(&s, &f, 1001, c, ts, 500),
                Err(CookieError::BadMac),
                "ISN"
            );
            // Every bit of the ISN (MAC, key index, parity, options) is under the MAC.
            for bit in 0..32 {
                let r = back(
                    &s,
                    &f,
                    1000,
                    SynCookie {
                        isn: c.isn ^ (1 << bit),
                        ..c
                    },
                    ts,
                    500,
                );
                assert_eq!(r, Err(CookieError::BadMac), "ISN bit {bit}, ts={ts}");
            }
            // The other layout never verifies it.
            assert_eq!(
                back(&s, &f, 1000, c, !ts, 500),
                Err(CookieError::BadMac),
                "layout {ts}"
            );
        }
        // With timestamps, every TSval bit but the clock's (the top 14) is under the MAC too.
        let c = make(&s.keys[0], 0, 0, &syn(f, 1000, T, OPTS, true));
        for bit in 0..18 {
            let r = back(
                &s,
                &f,
                1000,
                SynCookie {
                    tsval: c.tsval ^ (1 << bit),
                    ..c
                },
                true,
                500,
            );
            assert_eq!(r, Err(CookieError::BadMac), "TSval bit {bit}");
        }
        for bit in 18..32 {
            let r = back(
                &s,
                &f,
                1000,
                SynCookie {
                    tsval: c.tsval ^ (1 << bit),
                    ..c
                },
                true,
                500,
            );
            assert_eq!(r, Ok(OPTS), "clock bit {bit}");
        }
        let v6 = Flow {
            saddr: [0x2001_0db8, 0, 0, 2],
            daddr: [0x2001_0db8, 0, 0, 1],
            sport: 1,
            dport: 2,
        };
        let c6 = make(&s.keys[0], 0, 0, &syn(v6, 9, T, OPTS, true));
        assert_eq!(back(&s, &v6, 9, c6, true, 500), Ok(OPTS));
    }

    #[test]
    fn tsval_is_the_offset_clock_and_hides_uptime() {
        let s = secrets();
        let at = |now: u64, off: u32| {
            make(&s.keys[0], 0, off, &syn(flow(), 1, now, OPTS, true)).tsval >> 18
        };
        // The clock part is (ms + offset) >> 18, moving once per 2^18 ms.
        let ms = T / 1_000_000;
        assert_eq!(at(T, 0), ((ms as u32) >> 18) & 0x3fff);
        assert_eq!(
            at(T, s.ts_offset[0]),
            ((ms as u32).wrapping_add(s.ts_offset[0]) >> 18) & 0x3fff
        );
        assert_ne!(at(T, 0), at(T, 0x8000_0000), "the offset moves it");
    }

    #[test]
    fn rotation_keeps_cookies_in_flight() {
        for ts in [false, true] {
            let mut s = secrets();
            let c = make(&s.keys[0], 0, s.ts_offset[0], &syn(flow(), 7, T, OPTS, ts));
            // Rotate: new secret into the other index, flip current.
            s.keys[1] = Key { k: [99, 100] };
            s.current = 1;
            assert_eq!(
                back(&s, &flow(), 7, c, ts, 500),
                Ok(OPTS.carried(ts)),
                "after one rotation"
            );
            let c2 = make(&s.keys[1], 1, s.ts_offset[1], &syn(flow(), 7, T, OPTS, ts));
            assert_eq!(back(&s, &flow(), 7, c2, ts, 500), Ok(OPTS.carried(ts)));
            // Second rotation replaces key 0: the first cookie no longer verifies.
            s.keys[0] = Key { k: [5, 6] };
            s.current = 0;
            assert_eq!(back(&s, &flow(), 7, c, ts, 500), Err(CookieError::BadMac));
        }
    }

    /// A blind forger's odds, counted: every low byte (key index, parity, options) of a
    /// timestamp-less cookie is valid with exactly one 24-bit MAC, so 256 of the 2^32 values
    /// verify, 2^-24 per guess; and with timestamps exactly one (ISN, TSecr MAC bits) pair per
    /// ISN low nibble and TSecr option bits, 2^-40 per guess.
    #[test]
    fn forgery_odds() {
        let s = secrets();
        let (f, isn) = (flow(), 4242);
        let mut valid = 0;
        for low in 0..=255u32 {
            let opts = CookieOpts {
                mss_idx: ((low >> 4) & 3) as u8,
                wscale: WSCALE_CLASSES[((low >> 1) & 7) as usize],
                sack: low & 1 != 0,
                ecn: false,
            };
            let key_idx = (low >> 7) & 1;
            let slot = 0x1f4 - ((0x1f4 ^ (low >> 6)) & 1);
            let now = u64::from(slot) << SLOT_SHIFT;
            let c = make(
                &s.keys[key_idx as usize],
                key_idx,
                0,
                &syn(f, isn, now, opts, false),
            );
            assert_eq!(c.isn & 0xff, low, "low byte {low:#x}");
            valid += usize::from(check(&s, &f, isn, c.isn, None, 500).is_ok());
            // Its 2^24 - 1 neighbours with other MAC bits: sampled, all refused.
            for m in [1u32, 2, 0x80_0000, 0xff_ffff, 0x12_3456] {
                assert!(check(&s, &f, isn, c.isn ^ (m << 8), None, 500).is_err());
            }
        }
        assert_eq!(valid, 256);
    }

    proptest::proptest! {
        #[test]
        fn make_then_check_round_trips(isn in proptest::num::u32::ANY, slot in 1u32..(1 << 27), o in 0u8..=255, k0 in proptest::num::u64::ANY, sp in proptest::num::u16::ANY, ts: bool) {
            let mut s = secrets();
            s.keys[1].k[0] = k0 | 1;
            let mut f = flow();
            f.sport = sp;
            let opts = CookieOpts { mss_idx: o >> 6, wscale: (o >> 2) & 15, sack: o & 2 != 0, ecn: o & 1 != 0 };
            let now = u64::from(slot) << SLOT_SHIFT | 0x4d;
            let c = make(&s.keys[1], 1, 0, &syn(f, isn, now, opts, ts));
            proptest::prop_assert_eq!(back(&s, &f, isn, c, ts, slot), Ok(opts.carried(ts)));
            proptest::prop_assert_eq!(back(&s, &f, isn, c, ts, slot.wrapping_add(1)), Ok(opts.carried(ts)));
        }

        /// Random ACKs almost never verify: out of 4096 without timestamps (2^-24 each), none
        /// but by a 1-in-4096 chance.
        #[test]
        fn random_cookies_fail(cookies in proptest::collection::vec(proptest::num::u32::ANY, 4096)) {
            let s = secrets();
            let ok = cookies.iter().filter(|c| check(&s, &flow(), 1000, **c, None, 500).is_ok()).count();
            proptest::prop_assert!(ok <= 1, "{ok} random cookies verified");
        }
    }
}
