//! The cookie codec on arbitrary inputs: `make` then `check` round-trips (in the cookie's own slot
//! and the next) for any secret, flow (IPv4-mapped or not), ISN, time, TSval offset and options,
//! returning exactly the options the cookie carries; an unset secret verifies nothing; and an
//! arbitrary (cookie, TSecr) is checked without panicking (whether it verifies is left to chance,
//! 2^-24 or 2^-40 per guess by design: not asserted).
#![no_main]

use arbitrary::Arbitrary;
use intercept_common::cookie::{
    CookieOpts, Flow, Key, Secrets, SynInput, WSCALE_NONE, check, make, slot_of,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    keys: [[u64; 2]; 2],
    key_idx: u32,
    ts_offsets: [u32; 2],
    /// Whether each address is IPv4-mapped (the IPv4 hash) or taken whole.
    v4: (bool, bool),
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
    isn: u32,
    now_ns: u64,
    mss_idx: u8,
    wscale: u8,
    sack: bool,
    ecn: bool,
    ts: bool,
    /// An arbitrary ACK for the same flow.
    guess: (u32, Option<u32>, u32),
}

fuzz_target!(|i: Input| {
    let addr = |v4: bool, a: [u32; 4]| if v4 { [0, 0, 0xffff, a[3]] } else { a };
    let flow = Flow {
        saddr: addr(i.v4.0, i.saddr),
        daddr: addr(i.v4.1, i.daddr),
        sport: i.sport,
        dport: i.dport,
    };
    let secrets = Secrets {
        keys: [Key { k: i.keys[0] }, Key { k: i.keys[1] }],
        current: i.key_idx,
        generation: 0,
        ts_offset: i.ts_offsets,
    };
    let idx = i.key_idx & 1;
    let key = secrets.keys[idx as usize];
    // Options as the data path produces them: MSS index 0..=3, window scale 0..=14 or none.
    let in_domain = i.mss_idx <= 3 && i.wscale <= WSCALE_NONE;
    let opts = CookieOpts {
        mss_idx: i.mss_idx,
        wscale: i.wscale,
        sack: i.sack,
        ecn: i.ecn,
    };
    let syn = SynInput {
        flow,
        isn: i.isn,
        now_ns: i.now_ns,
        opts,
        ts: i.ts,
    };
    let c = make(&key, i.key_idx, i.ts_offsets[idx as usize], &syn);
    if !i.ts {
        assert_eq!(c.tsval, 0);
    }
    let slot = slot_of(i.now_ns);
    for now in [slot, slot.wrapping_add(1)] {
        let r = check(&secrets, &flow, i.isn, c.isn, i.ts.then_some(c.tsval), now);
        if !key.is_set() {
            assert!(r.is_err(), "an unset secret verified a cookie");
        } else if in_domain {
            assert_eq!(r, Ok(opts.carried(i.ts)), "slot {now}");
        } else {
            // Out of the domain the data path feeds it, the cookie still authenticates.
            assert!(r.is_ok(), "slot {now}: {r:?}");
        }
    }
    let (cookie, tsecr, now) = i.guess;
    let _ = check(&secrets, &flow, i.isn, cookie, tsecr, now);
});
