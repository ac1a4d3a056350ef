//! Types and pure logic shared by the XDP/TC data path (`intercept-ebpf`) and the controller
//! (`intercept-ctl`). Everything here is `no_std`, allocation-free and written so the BPF verifier
//! accepts it when inlined into a program: fixed-size reads, bounded loops, no recursion.
//!
//! What crosses the kernel/user line is `#[repr(C)]`, `Copy`, free of implicit padding, and its
//! size is asserted next to its definition.
#![cfg_attr(not(any(test, feature = "user")), no_std)]
#![expect(
    clippy::inline_always,
    reason = "everything here is inlined into BPF programs, where a call costs a subprogram frame and the verifier's state is lost across it"
)]

pub mod checksum;
pub mod config;
pub mod cookie;
pub mod counters;
#[cfg(any(test, feature = "user"))]
pub mod craft;
pub mod handshake;
pub mod kcookie;
pub mod maps;
pub mod parse;
pub mod splice;
pub mod tcpopt;

pub use counters::Counter;
