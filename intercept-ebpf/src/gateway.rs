//! Gateway mode (see `intercept_common::splice`).
use aya_ebpf::programs::XdpContext;
use intercept_common::Counter;

use crate::stats::pass;

/// Entry of `xdp_gateway`.
#[inline(always)]
pub fn handle(_ctx: &XdpContext) -> u32 {
    pass(Counter::Passed)
}
