//! How often a blind forger's ACK passes the cookie check: 2^28 random guesses against one
//! handshake (a fixed 4-tuple and client ISN, the current slot), counted with the very check the
//! data path runs (intercept-common's `cookie::check`), without and with timestamps. Expected:
//! 2^28 / 2^24 = 16 without timestamps, 2^28 / 2^40 (0.0002) with. Prints figures; asserts
//! nothing.
use intercept_common::cookie::{Flow, check};
use intercept_tests::test_secrets;

/// xorshift64*: fast, and plenty random for guesses.
fn next(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn main() {
    const GUESSES: u64 = 1 << 28;
    let s = test_secrets();
    let flow = Flow::v4(0xc613_0001, 0xc612_0001, 40000, 8080);
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for (what, ts) in [("without timestamps", false), ("with timestamps", true)] {
        let start = std::time::Instant::now();
        let mut accepted = 0u64;
        for _ in 0..GUESSES {
            let r = next(&mut x);
            let tsecr = ts.then_some((r >> 32) as u32);
            if check(&s, &flow, 77, r as u32, tsecr, 500).is_ok() {
                accepted += 1;
            }
        }
        let bits = if ts { 40 } else { 24 };
        println!(
            "forged ACKs {what}: {accepted} of 2^28 accepted (expected {:.4}, 2^-{bits} each); {:.1} s",
            GUESSES as f64 / 2f64.powi(bits),
            start.elapsed().as_secs_f64()
        );
    }
}
