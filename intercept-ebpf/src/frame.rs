//! The one bounds-check primitive of the data path: every packet read goes through
//! [`XdpFrame::load`], which checks `data + off + N <= data_end` before reading.
use aya_ebpf::programs::XdpContext;
use intercept_common::parse::Frame;

/// A view of the XDP frame for [`intercept_common::parse`].
pub struct XdpFrame<'a> {
    ctx: &'a XdpContext,
}

impl<'a> XdpFrame<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a XdpContext) -> Self {
        XdpFrame { ctx }
    }
}

impl Frame for XdpFrame<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.data_end() - self.ctx.data()
    }

    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let start = self.ctx.data();
        let end = self.ctx.data_end();
        // Compared as packet pointers (not as `off + N > len`): the verifier only learns a
        // packet range from a comparison of a packet pointer against `data_end`.
        if start + off + N > end {
            return None;
        }
        // SAFETY: the N bytes at start+off lie inside [data, data_end), checked just above.
        Some(unsafe { core::ptr::read_unaligned((start + off) as *const [u8; N]) })
    }
}
