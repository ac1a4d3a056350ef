//! SYN cookies: a keyed MAC (SipHash-2-4, 128-bit secret) over the 4-tuple, the client's ISN, a
//! coarse time slot and the encoded TCP options, packed into the 32-bit ISN of our SYN-ACK.
//!
//! Layout of the cookie (most significant first):
//!
//! | bits | what |
//! |---|---|
//! | 31..11 | MAC: top 21 bits of SipHash-2-4(key, flow, client ISN, full slot, options) |
//! | 10 | key index (which of the two secrets made it) |
//! | 9..8 | low 2 bits of the time slot |
//! | 7..0 | options: MSS index (2), window scale (4, 15 = not offered), SACK-permitted (1), ECN (1) |
//!
//! A slot is 2^36 ns (68.7 s) of the monotonic clock (`CLOCK_MONOTONIC`, read by the data path at
//! tick resolution). A cookie verifies in its own slot and the next one, so it is valid for 68.7 s
//! to 137.4 s, like the kernel's two minutes (`net/ipv4/syncookies.c`, `MAX_SYNCOOKIE_AGE`). A
//! cookie whose slot bits are two or three slots old is rejected as expired without hashing; the
//! options, slot and key index are all under the MAC, so none can be altered without failing it.
//! A forgery passes with probability 2^-21 per guess, per 4-tuple and ISN.
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
}
const _: () = assert!(size_of::<Secrets>() == 40);

impl Key {
    /// Whether this is a secret at all: an all-zero key (a map never written) is not.
    #[inline(always)]
    #[must_use]
    pub const fn is_set(&self) -> bool {
        self.k[0] != 0 || self.k[1] != 0
    }
}

impl Secrets {
    /// The key new cookies are made with, if it is set (see [`Key::is_set`]).
    #[inline(always)]
    #[must_use]
    pub const fn current_key(&self) -> Option<(u32, &Key)> {
        let idx = self.current & 1;
        let key = if idx == 1 {
            &self.keys[1]
        } else {
            &self.keys[0]
        };
        if key.is_set() { Some((idx, key)) } else { None }
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

impl CookieOpts {
    /// The 8-bit encoding.
    #[inline(always)]
    #[must_use]
    pub const fn encode(self) -> u8 {
        (self.mss_idx & 3) << 6 | (self.wscale & 15) << 2 | (self.sack as u8) << 1 | self.ecn as u8
    }

    /// Decodes 8 bits.
    #[inline(always)]
    #[must_use]
    pub const fn decode(b: u8) -> CookieOpts {
        CookieOpts {
            mss_idx: b >> 6,
            wscale: (b >> 2) & 15,
            sack: b & 2 != 0,
            ecn: b & 1 != 0,
        }
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

/// The 21-bit MAC over everything the cookie vouches for.
///
/// The message is the addresses, ports and client ISN as little-endian 64-bit words, then six
/// tail bytes: the full slot (4) and the cookie's low 11 bits (2). IPv4 hashes 22 bytes (the
/// IPv4-mapped prefix carries nothing): two blocks and the final one, 10 SipRounds. IPv6 hashes
/// 46 bytes, 16 SipRounds. The length is in SipHash's final block, so the families never collide.
#[inline(always)]
fn mac(key: &Key, flow: &Flow, isn: u32, slot: u32, low: u32) -> u32 {
    let ports_isn = u64::from(flow.sport) << 48 | u64::from(flow.dport) << 32 | u64::from(isn);
    let tail = u64::from(low & 0xffff) << 32 | u64::from(slot);
    let h = if is_mapped(&flow.saddr) && is_mapped(&flow.daddr) {
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
    };
    (h >> 43) as u32
}

/// Makes the cookie for a SYN: `isn` is the client's ISN, `slot` the current time slot, `key_idx`
/// the index of `key` in [`Secrets`].
#[inline(always)]
#[must_use]
pub fn make(key: &Key, key_idx: u32, flow: &Flow, isn: u32, slot: u32, opts: CookieOpts) -> u32 {
    let low = (key_idx & 1) << 10 | (slot & 3) << 8 | u32::from(opts.encode());
    mac(key, flow, isn, slot, low) << 11 | low
}

/// Why a cookie was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieError {
    /// The slot bits are two or three slots old.
    Expired,
    /// The MAC does not match (forged, altered, or made more than four slots ago).
    BadMac,
}

/// Checks the cookie of a completing ACK: `isn` is the client's ISN (the ACK's sequence number
/// minus one), `cookie` the ACK's acknowledgment number minus one.
///
/// # Errors
/// [`CookieError`] when the cookie is expired or does not authenticate.
#[inline(always)]
pub fn check(
    secrets: &Secrets,
    flow: &Flow,
    isn: u32,
    cookie: u32,
    now_slot: u32,
) -> Result<CookieOpts, CookieError> {
    let low = cookie & 0x7ff;
    let age = now_slot.wrapping_sub(low >> 8) & 3;
    if age > 1 {
        return Err(CookieError::Expired);
    }
    let slot = now_slot.wrapping_sub(age);
    let key = if low & 0x400 != 0 {
        &secrets.keys[1]
    } else {
        &secrets.keys[0]
    };
    // An all-zero key is no secret (a map never written, or written half): anyone can compute
    // its cookies, so it verifies nothing.
    if !key.is_set() || mac(key, flow, isn, slot, low) != cookie >> 11 {
        return Err(CookieError::BadMac);
    }
    Ok(CookieOpts::decode(low as u8))
}

#[cfg(test)]
mod tests {
    use core::hash::Hasher as _;

    use super::*;

    #[test]
    fn an_unset_key_verifies_nothing_and_makes_nothing() {
        let flow = Flow {
            saddr: mapped(0xc612_0002),
            daddr: mapped(0xc612_0001),
            sport: 40000,
            dport: 80,
        };
        let co = CookieOpts {
            mss_idx: 3,
            wscale: 7,
            sack: true,
            ecn: false,
        };
        let zero = Secrets::default();
        assert_eq!(zero.current_key(), None);
        // A cookie anyone can make with the zero key, in the current slot.
        let forged = make(&zero.keys[0], 0, &flow, 77, 5, co);
        assert_eq!(check(&zero, &flow, 77, forged, 5), Err(CookieError::BadMac));
        // Half written: the set key works, the zero one still verifies nothing.
        let half = Secrets {
            keys: [Key { k: [1, 2] }, Key { k: [0, 0] }],
            current: 1,
            generation: 1,
        };
        assert_eq!(half.current_key(), None, "the current key is unset");
        let forged1 = make(&half.keys[1], 1, &flow, 77, 5, co);
        assert_eq!(
            check(&half, &flow, 77, forged1, 5),
            Err(CookieError::BadMac)
        );
        let good = make(&half.keys[0], 0, &flow, 77, 5, co);
        assert_eq!(check(&half, &flow, 77, good, 5), Ok(co));
    }

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
        }
    }
    fn flow() -> Flow {
        Flow::v4(0xc612_0002, 0xc612_0001, 40000, 80)
    }
    const OPTS: CookieOpts = CookieOpts {
        mss_idx: 3,
        wscale: 7,
        sack: true,
        ecn: false,
    };

    /// Our fixed-width SipHash equals the reference implementation on the same bytes.
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
    fn options_round_trip_through_8_bits() {
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
                        assert_eq!(CookieOpts::decode(o.encode()), o);
                    }
                }
            }
        }
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
    fn valid_in_its_slot_and_the_next_expired_after() {
        let s = secrets();
        let c = make(&s.keys[0], 0, &flow(), 1000, 500, OPTS);
        assert_eq!(check(&s, &flow(), 1000, c, 500), Ok(OPTS));
        assert_eq!(
            check(&s, &flow(), 1000, c, 501),
            Ok(OPTS),
            "previous slot still passes"
        );
        assert_eq!(check(&s, &flow(), 1000, c, 502), Err(CookieError::Expired));
        assert_eq!(check(&s, &flow(), 1000, c, 503), Err(CookieError::Expired));
        assert_eq!(
            check(&s, &flow(), 1000, c, 504),
            Err(CookieError::BadMac),
            "4 slots: aliases, MAC fails"
        );
        assert_eq!(
            check(&s, &flow(), 1000, c, 499),
            Err(CookieError::Expired),
            "from the future"
        );
    }

    #[test]
    fn every_input_is_authenticated() {
        let s = secrets();
        let f = flow();
        let c = make(&s.keys[0], 0, &f, 1000, 500, OPTS);
        let mut other = f;
        other.sport += 1;
        assert_eq!(
            check(&s, &other, 1000, c, 500),
            Err(CookieError::BadMac),
            "port"
        );
        let mut other = f;
        other.saddr[3] ^= 1;
        assert_eq!(
            check(&s, &other, 1000, c, 500),
            Err(CookieError::BadMac),
            "address"
        );
        assert_eq!(check(&s, &f, 1001, c, 500), Err(CookieError::BadMac), "ISN");
        for bit in 0..11 {
            // Options, slot bits and key index are all under the MAC.
            let r = check(&s, &f, 1000, c ^ (1 << bit), 500);
            assert!(r.is_err(), "flipping low bit {bit} still verified");
        }
        let v6 = Flow {
            saddr: [0x2001_0db8, 0, 0, 2],
            daddr: [0x2001_0db8, 0, 0, 1],
            sport: 1,
            dport: 2,
        };
        let c6 = make(&s.keys[0], 0, &v6, 9, 500, OPTS);
        assert_eq!(check(&s, &v6, 9, c6, 500), Ok(OPTS));
    }

    #[test]
    fn rotation_keeps_cookies_in_flight() {
        let mut s = secrets();
        let c = make(
            &s.keys[s.current as usize],
            s.current,
            &flow(),
            7,
            500,
            OPTS,
        );
        // Rotate: new secret into the other index, flip current.
        s.keys[1] = Key { k: [99, 100] };
        s.current = 1;
        assert_eq!(
            check(&s, &flow(), 7, c, 500),
            Ok(OPTS),
            "old-key cookie after one rotation"
        );
        let c2 = make(&s.keys[1], 1, &flow(), 7, 500, OPTS);
        assert_eq!(check(&s, &flow(), 7, c2, 500), Ok(OPTS));
        // Second rotation replaces key 0: the first cookie no longer verifies.
        s.keys[0] = Key { k: [5, 6] };
        s.current = 0;
        assert_eq!(check(&s, &flow(), 7, c, 500), Err(CookieError::BadMac));
    }

    #[test]
    fn address_words_round_trip() {
        for a in ["198.18.0.2", "2001:db8::1", "::ffff:0:1", "::"] {
            let ip: core::net::IpAddr = a.parse().unwrap();
            let back = ip_of(&words_of(ip));
            // An IPv4-mapped IPv6 address reads back as IPv4: one form per address.
            let want = match ip {
                core::net::IpAddr::V6(v) => v.to_ipv4_mapped().map_or(ip, core::net::IpAddr::V4),
                v4 => v4,
            };
            assert_eq!(back, want, "{a}");
        }
        assert_eq!(
            words_of("198.18.0.2".parse().unwrap()),
            [0, 0, 0xffff, 0xc612_0002]
        );
    }

    proptest::proptest! {
        #[test]
        fn make_then_check_round_trips(isn in proptest::num::u32::ANY, slot in proptest::num::u32::ANY, o in 0u8..=255, k0 in proptest::num::u64::ANY, sp in proptest::num::u16::ANY) {
            let mut s = secrets();
            s.keys[1].k[0] = k0;
            let mut f = flow();
            f.sport = sp;
            let opts = CookieOpts::decode(o);
            let c = make(&s.keys[1], 1, &f, isn, slot, opts);
            proptest::prop_assert_eq!(check(&s, &f, isn, c, slot), Ok(opts));
            proptest::prop_assert_eq!(check(&s, &f, isn, c, slot.wrapping_add(1)), Ok(opts));
        }

        /// Random cookies almost never verify: out of 4096, at most a handful may (2^-21 each,
        /// plus the 1/2 chance the slot bits are current or previous).
        #[test]
        fn random_cookies_fail(cookies in proptest::collection::vec(proptest::num::u32::ANY, 4096)) {
            let s = secrets();
            let ok = cookies.iter().filter(|c| check(&s, &flow(), 1000, **c, 500).is_ok()).count();
            proptest::prop_assert!(ok <= 1, "{ok} random cookies verified");
        }
    }
}
