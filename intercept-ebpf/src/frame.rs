//! The one bounds-check primitive of the data path: every packet read and write goes through
//! [`Frame::read`] (typed headers or bytes) / [`Pkt::store`], which check
//! `data + off + size <= data_end` first. The same type
//! serves XDP and TC (both expose direct packet access with data/data_end).
use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    programs::{TcContext, XdpContext},
};
use intercept_common::parse::{Frame, Wire};

/// The Ethernet addresses of a reply to a frame whose first 12 bytes are `macs`: its source
/// as destination, its destination as source.
#[inline(always)]
#[must_use]
pub fn swapped_macs(macs: &[u8; 12]) -> [u8; 12] {
    let mut eth = [0u8; 12];
    let mut i = 0;
    while i < 6 {
        eth[i] = macs[i + 6];
        eth[i + 6] = macs[i];
        i += 1;
    }
    eth
}

/// A context with direct packet access.
pub trait Bounds {
    /// Start of packet data.
    fn start(&self) -> usize;
    /// End of packet data.
    fn end(&self) -> usize;
}

// data/data_end are plain loads, so LLVM may keep them in registers. (The option walk's
// state explosion that once suggested re-reading them every time is handled by tcpopt's laundered
// offsets and the per-CPU scratch map; plain loads verify in 333k instructions and save ~20 ns.)
impl Bounds for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        // SAFETY: ctx is the program's own, valid context.
        unsafe { (*self.ctx).data as usize }
    }
    #[inline(always)]
    fn end(&self) -> usize {
        // SAFETY: as above.
        unsafe { (*self.ctx).data_end as usize }
    }
}

impl Bounds for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        let skb: *const __sk_buff = self.as_ptr().cast();
        // SAFETY: skb is the program's own, valid context.
        unsafe { (*skb).data as usize }
    }
    #[inline(always)]
    fn end(&self) -> usize {
        let skb: *const __sk_buff = self.as_ptr().cast();
        // SAFETY: as above.
        unsafe { (*skb).data_end as usize }
    }
}

/// A view of the packet for [`intercept_common::parse`]. Rebuild it after any
/// `bpf_xdp_adjust_*`: it re-reads data/data_end on every access, never caches them.
pub struct Pkt<'a, C: Bounds> {
    ctx: &'a C,
}

impl<'a, C: Bounds> Pkt<'a, C> {
    #[inline(always)]
    pub fn new(ctx: &'a C) -> Self {
        Pkt { ctx }
    }

    /// A pointer to the `N` bytes at `off`, checked to lie inside the frame; `None` if they do
    /// not. Reads and writes at constant offsets below `N` from it need no further check: the
    /// pointer compared is the pointer returned (opaque to LLVM, which otherwise recomputes it
    /// in another register the verifier knows no range for).
    #[inline(always)]
    pub fn span<const N: usize>(&self, off: usize) -> Option<*mut u8> {
        let p = core::hint::black_box(self.ctx.start() + off);
        if p + N > self.ctx.end() {
            return None;
        }
        Some(p as *mut u8)
    }

    /// Writes `bytes` at `off`; `None` if they do not fit.
    #[inline(always)]
    pub fn store<const N: usize>(&self, off: usize, bytes: &[u8; N]) -> Option<()> {
        let start = self.ctx.start();
        if start + off + N > self.ctx.end() {
            return None;
        }
        // Eight, four, two, then one byte at a time: a plain array copy becomes a call to a
        // byte-at-a-time memmove in BPF.
        let (dst, src) = (start + off, bytes.as_ptr());
        let mut i = 0;
        // SAFETY: every write below stays inside the N bytes at start+off, which lie inside
        // [data, data_end) (checked just above); every read stays inside `bytes`.
        unsafe {
            while i + 8 <= N {
                let v = core::ptr::read_unaligned(src.add(i).cast::<u64>());
                core::ptr::write_unaligned((dst + i) as *mut u64, v);
                i += 8;
            }
            if i + 4 <= N {
                let v = core::ptr::read_unaligned(src.add(i).cast::<u32>());
                core::ptr::write_unaligned((dst + i) as *mut u32, v);
                i += 4;
            }
            if i + 2 <= N {
                let v = core::ptr::read_unaligned(src.add(i).cast::<u16>());
                core::ptr::write_unaligned((dst + i) as *mut u16, v);
                i += 2;
            }
            if i < N {
                *((dst + i) as *mut u8) = *src.add(i);
            }
        }
        Some(())
    }

    /// Writes `words` at `off`, each big-endian (as [`intercept_common::handshake::SynAck`]
    /// holds them); `None` if they do not fit.
    #[inline(always)]
    pub fn store_words<const N: usize>(&self, off: usize, words: &[u32; N]) -> Option<()> {
        let start = self.ctx.start();
        if start + off + 4 * N > self.ctx.end() {
            return None;
        }
        let mut i = 0;
        while i < N {
            // SAFETY: the 4N bytes at start+off lie inside [data, data_end), checked above.
            unsafe {
                core::ptr::write_unaligned((start + off + 4 * i) as *mut u32, words[i].to_be());
            };
            i += 1;
        }
        Some(())
    }
}

impl<C: Bounds> Frame for Pkt<'_, C> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.end() - self.ctx.start()
    }

    #[inline(always)]
    fn read<T: Wire>(&self, off: usize) -> Option<T> {
        let start = self.ctx.start();
        // Compared as packet pointers (not as `off + size > len`): the verifier only learns a
        // packet range from a comparison of a packet pointer against data_end.
        if start + off + size_of::<T>() > self.ctx.end() {
            return None;
        }
        // SAFETY: the bytes at start+off lie inside [data, data_end), checked just above; any
        // bytes are a valid T (`Wire`).
        Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
    }
}
