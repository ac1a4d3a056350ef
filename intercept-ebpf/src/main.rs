//! xdp-intercept's data path. This file holds only the entry points; the work is in the modules.
#![no_std]
#![no_main]

mod frame;
mod maps;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use intercept_common::{
    Counter,
    parse::{Dissected, L3, L4, TcpKind, classify, dissect},
};

use crate::{frame::XdpFrame, stats::count};

/// Main program: dissects every frame, counts what it is, and passes it to the kernel.
#[xdp]
pub fn xdp_intercept(ctx: XdpContext) -> u32 {
    count(Counter::Packets);
    account(&XdpFrame::new(&ctx));
    count(Counter::Passed);
    xdp_action::XDP_PASS
}

/// Pass-through program: for the peer veth of an interface that sends XDP_TX frames (veth drops
/// them unless its peer runs XDP), and the baseline the benchmarks subtract.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Counts the frame's layers.
#[inline(always)]
fn account(frame: &XdpFrame) {
    match dissect(frame) {
        Err(_) => count(Counter::Malformed),
        Ok(Dissected::NotIp { vlans, .. }) => {
            if vlans > 0 {
                count(Counter::Vlan);
            }
            count(Counter::NonTcp);
        }
        Ok(Dissected::Ip(ip)) => {
            if ip.vlans > 0 {
                count(Counter::Vlan);
            }
            count(match ip.l3 {
                L3::V4 { .. } => Counter::Ipv4,
                L3::V6 { .. } => Counter::Ipv6,
            });
            match ip.l4 {
                L4::Fragment => count(Counter::Fragment),
                L4::Other(_) => count(Counter::NonTcp),
                L4::Tcp(tcp) => {
                    count(Counter::Tcp);
                    match classify(tcp.flags) {
                        TcpKind::Syn => count(Counter::Syn),
                        TcpKind::SynAck => count(Counter::SynAck),
                        TcpKind::Ack => count(Counter::Ack),
                        TcpKind::Rst => count(Counter::Rst),
                        TcpKind::Other => {}
                    }
                }
            }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no panic is reachable; this only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
