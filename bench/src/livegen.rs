//! A fast, bounded, paced spoofed-SYN generator, and a SYN-ACK counter for the client's end.
//!
//! The generator runs a small XDP program with `BPF_PROG_TEST_RUN` in live-frame mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux >= 5.18, `net/bpf/test_run.c`): the kernel builds frames
//! in a page pool, runs the program on each and turns its `XDP_TX` into a redirect out of the
//! interface named by `ingress_ifindex`, so the frames leave the client's veth end through
//! `ndo_xdp_xmit` (into the peer's 256-entry ring, as from a NIC) without an skb or a socket each:
//! several million frames a second on one core here, against about half a million for an
//! `AF_PACKET` socket.
//!
//! A recycled page holds whatever its last receiver left in it (our own XDP program rewrites a
//! SYN into its SYN-ACK in place), so the program writes the whole template frame every time,
//! then gives it its own spoofed source: it draws `k` in `0..60000` and writes source address
//! `198.19.0.0 + 1 + k`, source port `61000 - k` and IPv4 ID `61000 - k` (the template is
//! `k = 0`). The TCP checksum covers the address and the port, the IPv4 header checksum the
//! address and the ID; each pair's sum is the same for every `k` (no carry: all values fit 16
//! bits), so both checksums stay valid with no arithmetic in the program (RFC 1071's sum does not
//! depend on where the words are).
//!
//! Pacing: a call costs milliseconds of set-up (a page pool registered and torn down), so calls
//! are long (a tenth of a second of frames) and the program spins a calibrated count before each
//! frame, which spaces frames evenly instead of bursting them into the receiver's ring.
//!
//! The generator refuses, before it loads anything, any destination outside 198.18.0.0/15, any
//! spoofed source range outside it, and any run longer than [`MAX_RUN`]; IPv6 is not generated.
//!
//! The SYN-ACK counter is a second small XDP program for the client's end (which must run XDP
//! anyway: a veth drops the frames its peer's XDP sends back otherwise): it counts IPv4 SYN-ACKs
//! and RSTs in a per-CPU array, drops those to the spoofed sources and passes everything else.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use intercept_common::{
    checksum::{add_bytes, finish},
    craft::{Link, TcpSegment, linux_syn_options, tcp_frame},
    parse::tcp_flags,
};

/// The longest flood the generator sends.
pub const MAX_RUN: Duration = Duration::from_secs(20);
/// The spoofed sources: 198.19.0.1 to 198.19.234.96 (`1 + k`, `k < SOURCES`).
const SOURCE_NET: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
/// Distinct spoofed (address, port) pairs.
const SOURCES: i32 = 60_000;
/// Source port and IPv4 ID of the template (`k = 0`).
const PORT_BASE: i32 = 61_000;
/// The same, as written into the template.
const PORT_BASE_U16: u16 = 61_000;
/// The longest spin (iterations before each frame) the program is loaded with: the verifier
/// walks every iteration (three instructions) against its limit of a million.
pub const MAX_SPIN: u32 = 300_000;
/// Seconds of frames per `BPF_PROG_TEST_RUN` call: each call costs milliseconds of set-up
/// (a page pool registered and torn down), so calls are long and the spin paces within them.
const CALL_SECONDS: f64 = 0.1;

/// The benchmark ranges: 198.18.0.0/15 (RFC 2544).
fn in_bench_range(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 198 && (o[1] & 0xfe) == 18
}

/// A flood to send: at most `rate * duration` SYNs to `target`, paced to `rate` per second
/// (0: as fast as the generator goes), for `duration`.
#[derive(Debug, Clone, Copy)]
pub struct GenSpec {
    /// The server and port.
    pub target: SocketAddr,
    /// SYNs per second (0: unpaced).
    pub rate: u64,
    /// How long to send.
    pub duration: Duration,
}

impl GenSpec {
    /// Refuses what the generator must never send: a destination outside 198.18.0.0/15, IPv6,
    /// a run over [`MAX_RUN`].
    ///
    /// # Errors
    /// Saying which bound the spec breaks.
    pub fn check(&self) -> anyhow::Result<()> {
        let IpAddr::V4(dst) = self.target.ip() else {
            bail!(
                "the generator sends IPv4 only (to 198.18.0.0/15), not to {}",
                self.target
            );
        };
        if !in_bench_range(dst) {
            bail!("refusing to flood {dst}: only 198.18.0.0/15 (RFC 2544) may be a target");
        }
        // Every source the program can write lies in SOURCE_NET/16.
        if !in_bench_range(SOURCE_NET) {
            bail!("spoofed sources {SOURCE_NET}/16 lie outside 198.18.0.0/15");
        }
        if self.duration > MAX_RUN {
            bail!(
                "refusing a {:.1} s flood: at most {} s",
                self.duration.as_secs_f64(),
                MAX_RUN.as_secs()
            );
        }
        if self.duration.is_zero() {
            bail!("a flood needs a duration");
        }
        Ok(())
    }
}

// --- raw bpf(2) ---------------------------------------------------------------------------------

const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_LINK_CREATE: i64 = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `bpf(cmd, attr, size)` with a zero-filled attribute block.
fn bpf(cmd: i64, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: attr is a valid, writable 128-byte block that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Writes a u32 at byte offset `off` of an attribute block.
fn put32(attr: &mut [u64; 16], off: usize, v: u32) {
    let w = &mut attr[off / 8];
    let shift = (off % 8) * 8;
    *w = (*w & !(0xffff_ffff << shift)) | (u64::from(v) << shift);
}

fn fd_of(r: i64) -> OwnedFd {
    // SAFETY: a new file descriptor returned by bpf(2), owned from here on.
    unsafe { OwnedFd::from_raw_fd(i32::try_from(r).expect("fd")) }
}

/// One BPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy)]
struct Insn(u64);

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn(
            u64::from(code)
                | (u64::from(dst | (src << 4)) << 8)
                | (u64::from(off.cast_unsigned()) << 16)
                | (u64::from(imm.cast_unsigned()) << 32),
        )
    }
}

// Opcodes (include/uapi/linux/bpf.h).
const ALU64: u8 = 0x07;
const JMP: u8 = 0x05;
const K: u8 = 0x00;
const X: u8 = 0x08;
fn mov_k(dst: u8, imm: i32) -> Insn {
    Insn::new(ALU64 | 0xb0 | K, dst, 0, 0, imm)
}
fn mov_x(dst: u8, src: u8) -> Insn {
    Insn::new(ALU64 | 0xb0 | X, dst, src, 0, 0)
}
fn add_k(dst: u8, imm: i32) -> Insn {
    Insn::new(ALU64 | K, dst, 0, 0, imm)
}
fn sub_x(dst: u8, src: u8) -> Insn {
    Insn::new(ALU64 | 0x10 | X, dst, src, 0, 0)
}
fn and_k(dst: u8, imm: i32) -> Insn {
    Insn::new(ALU64 | 0x50 | K, dst, 0, 0, imm)
}
fn mod_k(dst: u8, imm: i32) -> Insn {
    Insn::new(ALU64 | 0x90 | K, dst, 0, 0, imm)
}
/// 16-bit host-to-big-endian (`BPF_ALU | BPF_END | BPF_TO_BE`).
fn be16(dst: u8) -> Insn {
    Insn::new(0x04 | 0xd0 | 0x08, dst, 0, 0, 16)
}
/// `dst = *(size *)(src + off)`; size 0x00 W, 0x08 H, 0x10 B, 0x18 DW.
fn ldx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(0x01 | 0x60 | size, dst, src, off, 0)
}
/// `*(size *)(dst + off) = src`.
fn stx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(0x03 | 0x60 | size, dst, src, off, 0)
}
/// `*(size *)(dst + off) = imm`.
fn st(size: u8, dst: u8, off: i16, imm: i32) -> Insn {
    Insn::new(0x02 | 0x60 | size, dst, 0, off, imm)
}
fn jgt_x(dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(JMP | 0x20 | X, dst, src, off, 0)
}
fn jne_k(dst: u8, imm: i32, off: i16) -> Insn {
    Insn::new(JMP | 0x50 | K, dst, 0, off, imm)
}
fn jeq_k(dst: u8, imm: i32, off: i16) -> Insn {
    Insn::new(JMP | 0x10 | K, dst, 0, off, imm)
}
fn call(helper: i32) -> Insn {
    Insn::new(JMP | 0x80, 0, 0, 0, helper)
}
fn exit() -> Insn {
    Insn::new(JMP | 0x90, 0, 0, 0, 0)
}
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;

/// Loads an XDP program; if the verifier refuses it, loads it again with a log, for the error.
fn load_xdp(name: &str, insns: &[Insn]) -> anyhow::Result<OwnedFd> {
    load_xdp_logged(name, insns, false).or_else(|_| load_xdp_logged(name, insns, true))
}

fn load_xdp_logged(name: &str, insns: &[Insn], with_log: bool) -> anyhow::Result<OwnedFd> {
    let code: Vec<u64> = insns.iter().map(|i| i.0).collect();
    let license = c"GPL";
    let mut log = vec![0u8; if with_log { 1 << 20 } else { 0 }];
    let mut attr = [0u64; 16];
    put32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put32(&mut attr, 4, u32::try_from(code.len())?);
    attr[1] = code.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    if with_log {
        put32(&mut attr, 24, 1);
        put32(&mut attr, 28, u32::try_from(log.len())?);
        attr[4] = log.as_mut_ptr() as u64;
    }
    let mut n = [0u8; 16];
    n[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    attr[6] = u64::from_le_bytes(n[..8].try_into()?);
    attr[7] = u64::from_le_bytes(n[8..].try_into()?);
    put32(&mut attr, 68, BPF_XDP);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd_of(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            bail!(
                "load the {name} program: {e}; verifier: {}",
                String::from_utf8_lossy(&log[..end]).trim()
            )
        }
    }
}

/// The generator's program: see the module comment for the layout it writes. It first writes the
/// whole `template` (a live frame's page is recycled with whatever the receiver left in it: our
/// own XDP program turns a SYN into its SYN-ACK in place), then the fields that vary. With
/// `spin` > 0 it first counts down from `spin` (a bounded loop the verifier walks: at most
/// [`MAX_SPIN`]), which spaces the frames evenly at the paced rate instead of bursting them into
/// the receiver's ring.
fn generator_insns(template: &[u8], spin: u32) -> Vec<Insn> {
    let len = i32::try_from(template.len()).expect("short frame");
    let mut v = Vec::new();
    if spin > 0 {
        v.extend([
            mov_k(8, i32::try_from(spin.min(MAX_SPIN)).expect("bounded")),
            add_k(8, -1),
            jne_k(8, 0, -2),
        ]);
    }
    v.extend([
        mov_x(6, 1),
        call(7), // bpf_get_prandom_u32
        mod_k(0, SOURCES),
        ldx(W, 2, 6, 0), // data
        ldx(W, 3, 6, 4), // data_end
        mov_x(4, 2),
        add_k(4, len),
    ]);
    let mut body = Vec::new();
    let (words, rest) = template.as_chunks::<4>();
    for (i, c) in words.iter().enumerate() {
        let imm = i32::from_le_bytes(*c);
        body.push(st(W, 2, i16::try_from(i * 4).expect("offset"), imm));
    }
    let mut off = template.len() - rest.len();
    for c in rest.chunks(2) {
        if let [a, b] = c {
            body.push(st(
                H,
                2,
                i16::try_from(off).expect("offset"),
                i32::from(u16::from_le_bytes([*a, *b])),
            ));
        } else {
            body.push(st(
                B,
                2,
                i16::try_from(off).expect("offset"),
                i32::from(c[0]),
            ));
        }
        off += c.len();
    }
    body.extend([
        mov_x(5, 0),
        add_k(5, 1),
        be16(5),
        stx(H, 2, 5, 28), // low half of the IPv4 source
        mov_k(5, PORT_BASE),
        sub_x(5, 0),
        be16(5),
        stx(H, 2, 5, 18), // IPv4 ID
        stx(H, 2, 5, 34), // TCP source port
        mov_k(0, XDP_TX),
        exit(),
    ]);
    // Shorter than the template: drop.
    v.push(jgt_x(
        4,
        3,
        i16::try_from(body.len()).expect("short program"),
    ));
    v.extend(body);
    v.extend([mov_k(0, XDP_DROP), exit()]);
    v
}

/// The template frame (`k = 0`): an IPv4 SYN with Linux's options from 198.19.0.1:61000, IPv4
/// ID 61000, both checksums valid.
fn template(link: &Link, target: SocketAddr) -> Vec<u8> {
    let mut src = SOURCE_NET.octets();
    src[3] = 1;
    let mut seg = TcpSegment::new(
        IpAddr::V4(src.into()),
        target.ip(),
        PORT_BASE_U16,
        target.port(),
        tcp_flags::SYN,
    );
    seg.seq = 0x5eed_0001;
    seg.options = linux_syn_options(1460, 0x0102_0304, 7);
    let mut f = tcp_frame(link, &seg);
    f[18..20].copy_from_slice(&PORT_BASE_U16.to_be_bytes());
    f[24..26].fill(0);
    let c = finish(add_bytes(0, &f[14..34]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// What a flood sent.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Sent {
    /// Frames the program ran on (each turned into a transmit).
    pub frames: u64,
    /// Seconds from the first to the last call.
    pub seconds: f64,
}

/// The generator, loaded; send from a thread in the client's namespace (the interface index is
/// resolved there).
#[derive(Debug)]
pub struct Generator {
    prog: OwnedFd,
    frame: Vec<u8>,
    ifindex: u32,
    spec: GenSpec,
}

impl Generator {
    /// Checks `spec` (see [`GenSpec::check`]) and loads the program for frames from `link` out of
    /// interface `ifindex`, spinning `spin` iterations before each frame (see [`spin_for`]).
    ///
    /// # Errors
    /// If the spec is refused or the program does not load.
    pub fn new(link: &Link, ifindex: u32, spec: GenSpec, spin: u32) -> anyhow::Result<Generator> {
        spec.check()?;
        let frame = template(link, spec.target);
        Ok(Generator {
            prog: load_xdp("synflood_gen", &generator_insns(&frame, spin))?,
            frame,
            ifindex,
            spec,
        })
    }

    /// One `BPF_PROG_TEST_RUN` of `repeat` frames, in batches of `batch`.
    fn run(&self, repeat: u32, batch: u32) -> io::Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        let ctx: [u32; 6] = [
            0,
            u32::try_from(self.frame.len()).expect("len"),
            0,
            self.ifindex,
            0,
            0,
        ];
        let mut attr = [0u64; 16];
        put32(
            &mut attr,
            0,
            u32::try_from(self.prog.as_raw_fd()).expect("fd"),
        );
        put32(&mut attr, 8, u32::try_from(self.frame.len()).expect("len"));
        attr[2] = self.frame.as_ptr() as u64;
        put32(&mut attr, 32, repeat);
        put32(
            &mut attr,
            40,
            u32::try_from(size_of_val(&ctx)).expect("size"),
        );
        attr[6] = ctx.as_ptr() as u64;
        put32(&mut attr, 64, BPF_F_TEST_XDP_LIVE_FRAMES);
        put32(&mut attr, 72, batch);
        bpf(BPF_PROG_TEST_RUN, &mut attr).map(|_| ())
    }

    /// Sends the flood: calls of about [`CALL_SECONDS`] of frames (sized from the speed of the
    /// previous call, never past the duration), with a sleep before a call that would get ahead
    /// of the rate. Stops at the duration (or when `stop` is set).
    ///
    /// # Errors
    /// If the kernel refuses a run.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "rates"
    )]
    pub fn send(&self, stop: &std::sync::atomic::AtomicBool) -> anyhow::Result<Sent> {
        let start = Instant::now();
        let total = self.spec.duration.as_secs_f64();
        let mut sent = 0u64;
        // Frames per second of the last call (a first guess, then measured).
        let mut speed = 200_000.0f64;
        // Small batches while paced: the test-run loop yields the core only between batches.
        let batch = if self.spec.rate == 0 { 64 } else { 16 };
        loop {
            let elapsed = start.elapsed().as_secs_f64();
            let left = total - elapsed;
            if left <= 0.0 || stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if self.spec.rate > 0 {
                let ahead = sent as f64 / self.spec.rate as f64 - elapsed;
                if ahead > 0.0 {
                    std::thread::sleep(Duration::from_secs_f64(ahead.min(left)));
                    continue;
                }
            }
            let mut n = speed * CALL_SECONDS.min(left);
            if self.spec.rate > 0 {
                n = n.min(self.spec.rate as f64 * CALL_SECONDS.min(left));
            }
            let n = (n as u64).clamp(1, u64::from(u32::MAX));
            let t = Instant::now();
            self.run(u32::try_from(n)?, batch)
                .context("BPF_PROG_TEST_RUN (live frames; needs Linux >= 5.18)")?;
            speed = n as f64 / t.elapsed().as_secs_f64().max(1e-6);
            sent += n;
        }
        Ok(Sent {
            frames: sent,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// The spin that paces frames at 1.5 times `rate` (a call's set-up leaves a gap of milliseconds
/// after each call, and the core is shared; the sleeps between calls trim the rest), from two measured speeds: `base` frames/s without a spin and `spun` frames/s with
/// `probe` iterations.
#[must_use]
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "rates"
)]
pub fn spin_for(rate: u64, base: f64, spun: f64, probe: u32) -> u32 {
    if rate == 0 || base <= 0.0 || spun <= 0.0 {
        return 0;
    }
    let per_iter = (1.0 / spun - 1.0 / base) / f64::from(probe);
    if per_iter <= 0.0 {
        return 0;
    }
    let want = 1.0 / (rate as f64 * 1.5) - 1.0 / base;
    if want <= 0.0 {
        0
    } else {
        ((want / per_iter) as u32).min(MAX_SPIN)
    }
}

// --- the SYN-ACK counter ------------------------------------------------------------------------

/// Counts IPv4 SYN-ACKs (slot 0) and RSTs (slot 1) arriving at an interface; detached on drop.
#[derive(Debug)]
pub struct ReplyCounter {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// What [`ReplyCounter`] counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replies {
    /// SYN-ACKs.
    pub syn_ack: u64,
    /// RSTs.
    pub rst: u64,
}

fn possible_cpus() -> anyhow::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in s.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>()? - a.parse::<usize>()? + 1,
            None => 1,
        };
    }
    Ok(n)
}

impl ReplyCounter {
    /// Loads the counter and attaches it (driver mode, a BPF link) to `ifindex` in the calling
    /// thread's namespace. SYN-ACKs and RSTs to any address but `client` (the spoofed sources,
    /// which no host owns) are dropped once counted, so answering a flood costs the client's end
    /// little and does not crowd out the real client's segments.
    ///
    /// # Errors
    /// If the map, program or link cannot be created.
    pub fn attach(ifindex: u32, client: Ipv4Addr) -> anyhow::Result<ReplyCounter> {
        let mut attr = [0u64; 16];
        put32(&mut attr, 0, BPF_MAP_TYPE_PERCPU_ARRAY);
        put32(&mut attr, 4, 4);
        put32(&mut attr, 8, 8);
        put32(&mut attr, 12, 2);
        let map = fd_of(bpf(BPF_MAP_CREATE, &mut attr).context("create the counter map")?);
        let map_fd = map.as_raw_fd();
        let client = i32::from_le_bytes(client.octets());
        let insns = vec![
            ldx(W, 2, 1, 0),
            ldx(W, 3, 1, 4),
            mov_x(4, 2),
            add_k(4, 48),
            jgt_x(4, 3, 26), // -> pass
            ldx(H, 4, 2, 12),
            jne_k(4, 0x0008, 24), // EtherType 0x0800 read little-endian
            ldx(B, 4, 2, 14),
            jne_k(4, 0x45, 22), // IPv4 without options
            ldx(B, 4, 2, 23),
            jne_k(4, 6, 20), // TCP
            ldx(B, 5, 2, 47),
            and_k(5, 0x16), // SYN | RST | ACK
            st(W, 10, -4, 0),
            jeq_k(5, 0x12, 3), // SYN-ACK: slot 0
            and_k(5, 0x04),
            jeq_k(5, 0, 14),  // neither: pass
            st(W, 10, -4, 1), // RST: slot 1
            ldx(W, 9, 2, 30), // destination address, kept across the call
            // r1 = map (BPF_LD | BPF_DW | BPF_IMM, src = BPF_PSEUDO_MAP_FD), two slots
            Insn::new(0x18, 1, 1, 0, map_fd),
            Insn::new(0, 0, 0, 0, 0),
            mov_x(2, 10),
            add_k(2, -4),
            call(1), // bpf_map_lookup_elem
            jeq_k(0, 0, 3),
            ldx(DW, 1, 0, 0),
            add_k(1, 1),
            stx(DW, 0, 1, 0),
            jeq_k(9, client, 2), // to the real client: pass
            mov_k(0, XDP_DROP),  // to a spoofed source: no host there
            exit(),
            mov_k(0, XDP_PASS),
            exit(),
        ];
        let prog = load_xdp("replies_count", &insns)?;
        let mut attr = [0u64; 16];
        put32(&mut attr, 0, u32::try_from(prog.as_raw_fd())?);
        put32(&mut attr, 4, ifindex);
        put32(&mut attr, 8, BPF_XDP);
        put32(&mut attr, 12, XDP_FLAGS_DRV_MODE);
        let link = fd_of(bpf(BPF_LINK_CREATE, &mut attr).context("attach the reply counter")?);
        Ok(ReplyCounter {
            map,
            _prog: prog,
            _link: link,
        })
    }

    /// The counts, summed over CPUs.
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn read(&self) -> anyhow::Result<Replies> {
        let cpus = possible_cpus()?;
        let mut out = [0u64; 2];
        for (key, slot) in out.iter_mut().enumerate() {
            let k = u32::try_from(key)?;
            let mut vals = vec![0u64; cpus];
            let mut attr = [0u64; 16];
            put32(&mut attr, 0, u32::try_from(self.map.as_raw_fd())?);
            attr[1] = (&raw const k) as u64;
            attr[2] = vals.as_mut_ptr() as u64;
            bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).context("read the reply counter")?;
            *slot = vals.iter().sum();
        }
        Ok(Replies {
            syn_ack: out[0],
            rst: out[1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(target: &str, secs: u64) -> GenSpec {
        GenSpec {
            target: target.parse().expect("address"),
            rate: 1000,
            duration: Duration::from_secs(secs),
        }
    }

    /// Runs the loaded generator once on `input` (no live frames: the output comes back).
    fn run_once(g: &Generator, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 64];
        let mut attr = [0u64; 16];
        put32(&mut attr, 0, u32::try_from(g.prog.as_raw_fd()).expect("fd"));
        put32(&mut attr, 8, u32::try_from(input.len()).expect("len"));
        put32(&mut attr, 12, u32::try_from(out.len()).expect("len"));
        attr[2] = input.as_ptr() as u64;
        attr[3] = out.as_mut_ptr() as u64;
        put32(&mut attr, 32, 1);
        bpf(BPF_PROG_TEST_RUN, &mut attr).expect("BPF_PROG_TEST_RUN of the generator (root?)");
        let len = (attr[1] >> 32) as usize;
        out.truncate(len);
        ((attr[0] >> 32) as u32, out)
    }

    /// The generator refuses targets outside 198.18.0.0/15, IPv6 and runs over 20 s before it
    /// loads anything; and the real program, run on frames full of junk (a recycled page holds
    /// whatever the receiver left), writes a SYN from 198.19.0.0/16 to the target with both
    /// checksums valid, from a different source each time. Needs root (loads BPF).
    #[test]
    fn generator_refuses_out_of_range_and_writes_valid_syns() {
        spec("198.18.0.1:8080", 20).check().expect("in range");
        spec("198.19.255.254:80", 1).check().expect("in range");
        for bad in [
            "198.20.0.1:8080",
            "198.17.255.255:80",
            "10.0.0.1:80",
            "[2001:db8::1]:80",
        ] {
            let e = spec(bad, 1).check().expect_err(bad);
            assert!(
                e.to_string().contains("refusing") || e.to_string().contains("IPv4 only"),
                "{bad}: {e}"
            );
        }
        let e = spec("198.18.0.1:8080", 21).check().expect_err("21 s");
        assert!(e.to_string().contains("at most 20 s"), "{e}");
        let link = Link {
            dst: [2; 6],
            src: [4; 6],
            vlans: Vec::new(),
        };
        assert!(Generator::new(&link, 1, spec("192.0.2.1:80", 1), 0).is_err());

        // SAFETY: geteuid has no failure mode.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test loads BPF: run it as root (./x test)"
        );
        let g =
            Generator::new(&link, 1, spec("198.18.0.1:8080", 1), 3).expect("load the generator");
        let mut sources = std::collections::BTreeSet::new();
        for i in 0..200u32 {
            let junk: Vec<u8> = (0..g.frame.len())
                .map(|j| u8::try_from((i as usize * 31 + j * 7) % 256).expect("a byte"))
                .collect();
            let (verdict, f) = run_once(&g, &junk);
            assert_eq!(verdict, XDP_TX as u32, "run {i}");
            assert_eq!(f.len(), g.frame.len(), "run {i}");
            assert_eq!(f[47] & 0x17, tcp_flags::SYN, "run {i}: not a bare SYN");
            assert_eq!(
                finish(add_bytes(0, &f[14..34])),
                0,
                "run {i}: IPv4 checksum"
            );
            let src: [u8; 4] = f[26..30].try_into().expect("4");
            let dst: [u8; 4] = f[30..34].try_into().expect("4");
            assert_eq!(&src[..2], &[198, 19], "run {i}: source {src:?}");
            assert_eq!(dst, [198, 18, 0, 1], "run {i}: destination");
            let tcp = &f[34..];
            let acc = intercept_common::checksum::pseudo_v4(
                src,
                dst,
                6,
                u16::try_from(tcp.len()).expect("len"),
            );
            assert_eq!(finish(add_bytes(acc, tcp)), 0, "run {i}: TCP checksum");
            sources.insert(src);
        }
        assert!(
            sources.len() > 150,
            "only {} distinct sources in 200 frames",
            sources.len()
        );
    }
}
