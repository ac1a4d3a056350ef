//! Internet checksum arithmetic (RFC 1071), with incremental update (RFC 1624) and the TCP
//! pseudo-headers of IPv4 (RFC 9293 section 3.1) and IPv6 (RFC 8200 section 8.1).
//!
//! Sums are carried in a `u32` accumulator of big-endian 16-bit words and folded at the end.

/// Adds `bytes` (big-endian 16-bit words; an odd last byte is padded with zero) to `acc`.
#[inline(always)]
#[must_use]
pub fn add_bytes(mut acc: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        acc = add_u16(acc, u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if i < bytes.len() {
        acc = add_u16(acc, u16::from(bytes[i]) << 8);
    }
    acc
}

/// Adds one 16-bit word to `acc`, folding the carry so the accumulator never overflows.
#[inline(always)]
#[must_use]
pub const fn add_u16(acc: u32, word: u16) -> u32 {
    let s = acc + word as u32;
    (s & 0xffff) + (s >> 16)
}

/// Adds a 32-bit value as two 16-bit words.
#[inline(always)]
#[must_use]
pub const fn add_u32(acc: u32, v: u32) -> u32 {
    add_u16(add_u16(acc, (v >> 16) as u16), v as u16)
}

/// Folds the accumulator to 16 bits (end-around carry).
#[inline(always)]
#[must_use]
pub const fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The checksum field value for a sum: the ones' complement of the folded sum.
#[inline(always)]
#[must_use]
pub const fn finish(acc: u32) -> u16 {
    !fold(acc)
}

/// Pseudo-header sum for TCP over IPv4: source, destination, zero, protocol, TCP length.
#[inline(always)]
#[must_use]
pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u32 {
    let acc = add_u32(0, u32::from_be_bytes(src));
    let acc = add_u32(acc, u32::from_be_bytes(dst));
    add_u16(add_u16(acc, u16::from(proto)), l4_len)
}

/// Pseudo-header sum for TCP over IPv6: source, destination, upper-layer length, next header.
#[inline(always)]
#[must_use]
pub fn pseudo_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, l4_len: u32) -> u32 {
    let acc = add_bytes(add_bytes(0, src), dst);
    add_u16(add_u32(acc, l4_len), u16::from(proto))
}

/// Incremental update of a checksum field when a 16-bit word changes from `old` to `new`
/// (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
#[must_use]
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = add_u16(add_u16(!check as u32, !old), new);
    !fold(acc)
}

/// Whether `bytes` (a header with its checksum field in place, plus `acc` for any pseudo-header)
/// sums to the all-ones value that marks a correct checksum.
#[inline(always)]
#[must_use]
pub fn verifies(acc: u32, bytes: &[u8]) -> bool {
    fold(add_bytes(acc, bytes)) == 0xffff
}

/// Adds big-endian 32-bit words to a 64-bit accumulator: no fold per word (2^16 = 1 modulo
/// 2^16 - 1, so a sum of 32-bit words folds to the same ones' complement sum of 16-bit words).
#[inline(always)]
#[must_use]
pub fn add_words(mut acc: u64, words: &[u32]) -> u64 {
    let mut i = 0;
    while i < words.len() {
        acc += u64::from(words[i]);
        i += 1;
    }
    acc
}

/// Folds a 64-bit accumulator of [`add_words`] to 16 bits (not complemented).
#[inline(always)]
#[must_use]
pub const fn fold64(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add_bytes(0, &data)), 0xddf2);
        assert_eq!(finish(add_bytes(0, &data)), !0xddf2);
    }

    /// A real IPv4 header (checksum b861), from the classic example in RFC 1071 discussions.
    #[test]
    fn ipv4_header_checksum() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = finish(add_bytes(0, &h));
        assert_eq!(c, 0xb861);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verifies(0, &h));
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(add_bytes(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    proptest::proptest! {
        /// Incremental update gives the same field as recomputing from scratch.
        #[test]
        fn update16_matches_recompute(mut words in proptest::collection::vec(proptest::num::u16::ANY, 2..40), idx in 0usize..40, new in proptest::num::u16::ANY) {
            let idx = idx % words.len();
            let bytes = |w: &[u16]| w.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            let before = finish(add_bytes(0, &bytes(&words)));
            let old = words[idx];
            words[idx] = new;
            let after = finish(add_bytes(0, &bytes(&words)));
            let inc = update16(before, old, new);
            // 0x0000 and 0xffff are the same value in ones' complement arithmetic.
            proptest::prop_assert!(inc == after || (inc | after) == 0xffff && (inc & after) == 0);
        }

        /// add_u32 is two add_u16s; the accumulator never overflows however many words.
        #[test]
        fn word_sums_fold_like_byte_sums(words in proptest::collection::vec(proptest::num::u32::ANY, 0..64), acc in 0u32..0x2_0000) {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            proptest::prop_assert_eq!(
                fold64(add_words(u64::from(acc), &words)),
                fold(add_bytes(acc, &bytes))
            );
        }

        #[test]
        fn long_sums_do_not_overflow(data in proptest::collection::vec(proptest::num::u8::ANY, 0..4000)) {
            let acc = add_bytes(0, &data);
            proptest::prop_assert!(acc <= 0x1_ffff);
            let mut h = data.clone();
            if h.len() % 2 == 1 { h.push(0); }
            let c = finish(add_bytes(0, &h));
            h.extend_from_slice(&c.to_be_bytes());
            proptest::prop_assert!(verifies(0, &h));
        }
    }
}
