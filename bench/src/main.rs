//! `./x compare`: this project against the SYN-flood defences users would pick instead, on the
//! NIC-like veth lab (`intercept_ctl::lab::Lab`), under spoofed SYN floods from zero to the
//! fastest this machine generates, with a real client making requests throughout.
//!
//! Defences (see [`defence::Defence`]): none (`tcp_syncookies=0`), the kernel's SYN cookies,
//! nftables `synproxy`, and ours in intercept, auto and watch mode. Every (defence, rate) pair is a
//! trial; each repeat runs all trials in a fresh shuffled order, so drift on a shared machine hits
//! every defence alike. Writes `compare.json` (every raw figure), `compare.md` (medians with
//! min-max over repeats, and the targets as ratios) and SVG plots. Needs root. Prints figures;
//! asserts nothing.
mod defence;
mod gateway;
mod livegen;
mod report;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use defence::Defence;
use intercept_ctl::lab::{Lab, SERVER_V4, Shape, echo_server};
use livegen::{GenSpec, Generator, ReplyCounter};

/// Compare SYN-flood defences on a NIC-like veth lab (root; only 198.18.0.0/15 is used).
///
/// Example: `intercept-bench --repeats 5 --seconds 6` (or `./x compare -- --quick`).
#[derive(Debug, Parser)]
struct Args {
    /// Smoke run: rates 0, 200k and the maximum, one repeat, 2 s floods, three defences.
    #[arg(long)]
    quick: bool,
    /// Repeats of the whole shuffled set of trials.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Seconds each flood lasts (at most 20).
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Flood rates in SYN/s, comma-separated; `max` is the generator unpaced.
    #[arg(long, default_value = "0,50000,200000,500000,1000000,max")]
    rates: String,
    /// Defences, comma-separated (default: all): none, kernel-cookies, nft-synproxy,
    /// ours-intercept, ours-auto, ours-watch.
    #[arg(long)]
    defences: Option<String>,
    /// Requests the client makes per trial (spread over the flood).
    #[arg(long, default_value_t = 150)]
    requests: usize,
    /// Seconds a request may take before it counts as failed.
    #[arg(long, default_value_t = 3.0)]
    request_timeout: f64,
    /// Where the JSON, the table and the plots go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Seed of the trial order (default: from the clock; recorded in the JSON).
    #[arg(long)]
    seed: Option<u64>,
    /// The intercept-ctl binary, for the daemon (default: `$INTERCEPT_CTL`, or next to this one).
    #[arg(long, global = true)]
    ctl: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

/// Benchmarks other than the comparison (which runs when none is named).
#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Gateway mode against plain forwarding on the three-namespace gateway lab: bulk
    /// throughput, request latency, and the splice's per-packet cost.
    ///
    /// Example: `intercept-bench gateway --repeats 3` (or `./x compare -- gateway`).
    Gateway(gateway::Args),
}

/// The protected port.
const PORT: u16 = 8080;
/// The spin of the calibration's second flood (see `livegen::spin_for`).
const SPIN_PROBE: u32 = 2000;
/// Seconds of flood before the first request (the queues fill).
const WARMUP: f64 = 0.5;

/// One (defence, rate) trial's raw figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trial {
    pub defence: Defence,
    /// The requested rate (0: no flood; `u64::MAX`: unpaced).
    pub rate: u64,
    pub repeat: usize,
    /// Order within its repeat.
    pub order: usize,
    /// SYNs the generator sent, over how long, and so at what rate.
    pub flood_frames: u64,
    pub flood_seconds: f64,
    pub offered_rate: f64,
    pub requests_attempted: usize,
    pub requests_ok: usize,
    pub success_pct: f64,
    pub request_p50_ms: f64,
    pub request_p99_ms: f64,
    pub connect_p50_ms: f64,
    pub connect_p99_ms: f64,
    pub first_error: Option<String>,
    /// Every answered request's latency and its connect's, in ms (for pooled percentiles).
    pub latencies_ms: Vec<f64>,
    pub connects_ms: Vec<f64>,
    pub client_retrans_segs: u64,
    pub client_timeouts: u64,
    /// SYN-ACKs and RSTs that reached the client's end (the spoofed SYNs' answers and the real
    /// client's), counted by an XDP program there.
    pub syn_acks: u64,
    pub syn_acks_per_s: f64,
    pub rsts: u64,
    /// Frames the server's veth ring refused (`ndo_xdp_xmit` errors: the RX ring full), apart
    /// from what the defence dropped.
    pub ring_drops: u64,
    /// CPU time of the server end's NAPI thread (where XDP, netfilter and TCP run for every SYN).
    pub server_napi_cpu_ns: u64,
    /// Its share of one core over the flood.
    pub server_napi_util: f64,
    /// `server_napi_cpu_ns` per SYN that entered the ring (sent - ring drops).
    pub cpu_ns_per_syn: f64,
    /// The server's TCP counters that moved (`TcpExt`/`Tcp`, as `nstat` names them).
    pub server_tcp: BTreeMap<String, u64>,
    /// `/proc/net/stat/synproxy` columns that moved (synproxy only).
    pub synproxy: BTreeMap<String, u64>,
    /// Both veth ends' `ethtool -S` counters that moved (`a.` server, `b.` client).
    pub veth: BTreeMap<String, u64>,
    /// Our XDP program's own time per run (ns) and runs over the trial, from the kernel's BPF
    /// run-time statistics (ours only): the rest of `cpu_ns_per_syn` is the driver (veth ring,
    /// frame, `XDP_TX`) and, for SYNs passed up, the kernel stack.
    pub prog_ns_per_run: f64,
    pub prog_runs: u64,
    /// Our program's counters that moved (ours only).
    pub ours: serde_json::Value,
    pub loadavg: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(v: &[Duration], p: usize) -> Duration {
    let mut v = v.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[(v.len() * p).div_ceil(100).saturating_sub(1)]
}

/// xorshift64* for the trial order.
fn shuffle<T>(v: &mut [T], seed: &mut u64) {
    for i in (1..v.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let j = usize::try_from(*seed % (i as u64 + 1)).expect("below the length");
        v.swap(i, j);
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Named counters of `/proc/thread-self/net/<file>` (groups `Tcp`, `TcpExt`) in the calling
/// thread's namespace.
fn proc_net(file: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) else {
        return out;
    };
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((g, names)), Some((_, values))) = (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if g != "Tcp" && g != "TcpExt" {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse::<u64>() {
                out.insert(format!("{g}{n}"), v);
            }
        }
    }
    out
}

/// `/proc/net/stat/synproxy`: per-CPU hex columns, summed.
fn synproxy_stats() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string("/proc/thread-self/net/stat/synproxy") else {
        return out;
    };
    let mut lines = text.lines();
    let Some(head) = lines.next() else { return out };
    let names: Vec<&str> = head.split_whitespace().collect();
    for l in lines {
        for (n, v) in names.iter().zip(l.split_whitespace()) {
            *out.entry((*n).to_owned()).or_default() += u64::from_str_radix(v, 16).unwrap_or(0);
        }
    }
    out
}

fn ethtool(lab: &Lab) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (side, ns, dev) in [
        ("a", &lab.server, &lab.veth.a),
        ("b", &lab.client, &lab.veth.b),
    ] {
        let Ok(text) = ns.exec("ethtool", &["-S", dev]) else {
            continue;
        };
        for l in text.lines() {
            if let Some((n, v)) = l.trim().split_once(':')
                && let Ok(v) = v.trim().parse::<u64>()
            {
                out.insert(format!("{side}.{}", n.trim()), v);
            }
        }
    }
    out
}

fn moved(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// CPU time (ns) of the NAPI threads of `dev`: `/proc/<pid>/schedstat`'s first field.
fn napi_ns(dev: &str) -> anyhow::Result<u64> {
    let mut sum = 0;
    for pid in intercept_ctl::lab::napi_threads(dev)? {
        let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
        sum += s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .context("schedstat")?;
    }
    Ok(sum)
}

/// Gives both ends' NAPI threads `SCHED_FIFO` priority (`NAPI_RT_PRIORITY`, below the request
/// client's): on a real server softirq work runs before any task, while on this shared machine a
/// nice-0 NAPI thread is scheduled milliseconds late and its 256-frame ring overflows at rates its
/// CPU could carry. The client end's must keep up too: it receives every SYN-ACK the server sends
/// (the spoofed sources are routed there), up to a million a second, and its ring, overflowing,
/// would drop the real client's SYN-ACK among them. The generator, on that core at normal
/// priority, gets what the client end leaves.
fn boost_napi(lab: &Lab) -> anyhow::Result<()> {
    for dev in [&lab.veth.a, &lab.veth.b] {
        for pid in intercept_ctl::lab::napi_threads(dev)? {
            let p = libc::sched_param {
                sched_priority: intercept_ctl::lab::NAPI_RT_PRIORITY,
            };
            // SAFETY: a valid sched_param for a thread id.
            if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &raw const p) } != 0 {
                bail!(
                    "SCHED_FIFO for NAPI thread {pid}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    Ok(())
}

/// Sets the nice value of thread `tid` (0: the calling thread).
fn nice(tid: u32, n: i32) -> anyhow::Result<()> {
    // SAFETY: plain syscall on a thread id.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, n) } != 0 {
        bail!(
            "nice {n} for thread {tid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed, then one bit set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid set of its own size; 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) } != 0 {
        bail!("pin to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Everything read before and after a trial.
struct Snapshot {
    napi: u64,
    tcp: BTreeMap<String, u64>,
    synproxy: BTreeMap<String, u64>,
    veth: BTreeMap<String, u64>,
    replies: livegen::Replies,
    ours: Option<intercept_ctl::stats::Counters>,
    /// Our XDP program's run time and run count (`BPF_ENABLE_STATS`).
    prog: Option<(u64, u64)>,
}

/// The kernel's run-time statistics of program `id` (ns, runs).
fn prog_stats(id: u32) -> Option<(u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| {
            (
                u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX),
                p.run_count(),
            )
        })
}

struct Rig {
    lab: Lab,
    replies: ReplyCounter,
    link: intercept_common::craft::Link,
    ifindex_b: u32,
    opts: defence::ServerOptions,
    ctl: PathBuf,
    cpus: usize,
    /// The generator's speed unpaced, and with [`SPIN_PROBE`] iterations of spin (frames/s).
    speed: (f64, f64),
}

impl Rig {
    fn snapshot(&self, ours: bool, prog: Option<u32>) -> anyhow::Result<Snapshot> {
        let (tcp, synproxy) = self
            .lab
            .server
            .spawn(|| {
                let mut t = proc_net("snmp");
                t.extend(proc_net("netstat"));
                (t, synproxy_stats())
            })
            .join()
            .expect("server thread");
        Ok(Snapshot {
            napi: napi_ns(&self.lab.veth.a)?,
            tcp,
            synproxy,
            veth: ethtool(&self.lab),
            replies: self.replies.read()?,
            prog: prog.and_then(prog_stats),
            ours: if ours {
                Some(intercept_ctl::stats::read_pinned(
                    &self.lab.veth.a,
                    Some(self.lab.server.name()),
                )?)
            } else {
                None
            },
        })
    }

    /// One flood, on a thread in the client's namespace pinned to the client end's core.
    fn flood(
        &self,
        rate: u64,
        seconds: f64,
        spin: u32,
    ) -> std::thread::JoinHandle<anyhow::Result<livegen::Sent>> {
        let (link, ifindex, cpu) = (self.link.clone(), self.ifindex_b, 1 % self.cpus);
        self.lab.client.spawn(move || {
            pin(cpu)?;
            // Ahead of other work on the core (behind the client end's NAPI thread, real-time).
            nice(0, -10)?;
            let g = Generator::new(
                &link,
                ifindex,
                GenSpec {
                    target: SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
                    rate: if rate == u64::MAX { 0 } else { rate },
                    duration: Duration::from_secs_f64(seconds),
                },
                spin,
            )?;
            g.send(&AtomicBool::new(false))
        })
    }

    #[allow(
        clippy::cast_precision_loss,
        clippy::many_single_char_names,
        clippy::too_many_lines,
        reason = "figures for a report, in the order a trial runs"
    )]
    fn trial(
        &self,
        defence: Defence,
        rate: u64,
        args: &Args,
        seconds: f64,
    ) -> anyhow::Result<Trial> {
        let (d, a) = (defence, args);
        let active = defence::setup(&self.lab, d, PORT, self.opts, &self.ctl)
            .with_context(|| format!("set up {}", d.name()))?;
        // Attaching XDP may re-create the NAPI threads' set-up: boost them on every trial.
        boost_napi(&self.lab)?;
        std::thread::sleep(Duration::from_millis(100));
        let before = self.snapshot(d.ours(), active.prog_id())?;
        let t0 = Instant::now();
        let spin = if rate == u64::MAX {
            0
        } else {
            livegen::spin_for(rate, self.speed.0, self.speed.1, SPIN_PROBE)
        };
        let flooder = (rate > 0).then(|| self.flood(rate, seconds, spin));
        std::thread::sleep(Duration::from_secs_f64(WARMUP));
        let window = Duration::from_secs_f64((seconds - WARMUP - 0.2).max(0.2));
        let n = a.requests.max(1);
        let r = self.lab.requests_for(
            vec![(SocketAddr::new(IpAddr::V4(SERVER_V4), PORT), Shape::One)],
            window,
            window / u32::try_from(n)?,
            Duration::from_secs_f64(a.request_timeout),
        )?;
        let sent = match flooder {
            Some(f) => f.join().expect("flood thread")?,
            None => livegen::Sent::default(),
        };
        let wall = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(150));
        let after = self.snapshot(d.ours(), active.prog_id())?;
        drop(active);

        let veth = moved(&before.veth, &after.veth);
        let ring_drops: u64 = veth
            .iter()
            .filter(|(k, _)| k.starts_with("b.") && k.contains("xdp_xmit_err"))
            .map(|(_, v)| v)
            .sum();
        let napi = after.napi.saturating_sub(before.napi);
        let entered = sent.frames.saturating_sub(ring_drops);
        let syn_acks = after.replies.syn_ack - before.replies.syn_ack;
        let flood_secs = if sent.seconds > 0.0 {
            sent.seconds
        } else {
            wall
        };
        let attempted = r.latencies.len() + r.failures;
        Ok(Trial {
            defence: d,
            rate,
            repeat: 0,
            order: 0,
            flood_frames: sent.frames,
            flood_seconds: sent.seconds,
            offered_rate: if sent.seconds > 0.0 {
                sent.frames as f64 / sent.seconds
            } else {
                0.0
            },
            requests_attempted: attempted,
            requests_ok: r.latencies.len(),
            success_pct: 100.0 * r.latencies.len() as f64 / attempted.max(1) as f64,
            request_p50_ms: ms(percentile(&r.latencies, 50)),
            request_p99_ms: ms(percentile(&r.latencies, 99)),
            connect_p50_ms: ms(percentile(&r.connects, 50)),
            connect_p99_ms: ms(percentile(&r.connects, 99)),
            first_error: r.first_error,
            latencies_ms: r
                .latencies
                .iter()
                .map(|d| (ms(*d) * 1e3).round() / 1e3)
                .collect(),
            connects_ms: r
                .connects
                .iter()
                .map(|d| (ms(*d) * 1e3).round() / 1e3)
                .collect(),
            client_retrans_segs: r.retrans.retrans_segs,
            client_timeouts: r.retrans.timeouts,
            syn_acks,
            syn_acks_per_s: syn_acks as f64 / flood_secs,
            rsts: after.replies.rst - before.replies.rst,
            ring_drops,
            server_napi_cpu_ns: napi,
            server_napi_util: napi as f64 / 1e9 / wall,
            cpu_ns_per_syn: if entered > 0 {
                napi as f64 / entered as f64
            } else {
                0.0
            },
            server_tcp: moved(&before.tcp, &after.tcp),
            synproxy: moved(&before.synproxy, &after.synproxy),
            veth,
            prog_runs: match (before.prog, after.prog) {
                (Some(b), Some(a)) => a.1 - b.1,
                _ => 0,
            },
            prog_ns_per_run: match (before.prog, after.prog) {
                (Some(b), Some(a)) if a.1 > b.1 => (a.0 - b.0) as f64 / (a.1 - b.1) as f64,
                _ => 0.0,
            },
            ours: match (&before.ours, &after.ours) {
                (Some(b), Some(a)) => a.delta(b).to_json(),
                _ => serde_json::Value::Null,
            },
            loadavg: loadavg(),
        })
    }
}

fn parse_rates(s: &str) -> anyhow::Result<Vec<u64>> {
    s.split(',')
        .map(|r| match r.trim() {
            "max" => Ok(u64::MAX),
            n => n
                .parse::<u64>()
                .with_context(|| format!("rate `{n}`: a number of SYN/s or `max`")),
        })
        .collect()
}

fn ctl_path(a: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = a
        .ctl
        .clone()
        .or_else(|| std::env::var_os("INTERCEPT_CTL").map(Into::into))
    {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .skip(1)
        .map(|d| d.join("intercept-ctl"))
        .find(|p| p.is_file())
        .context("no intercept-ctl binary: build it (`./x compare` does) or pass --ctl")
}

#[allow(clippy::too_many_lines, reason = "the run, in order")]
fn main() -> anyhow::Result<()> {
    let mut a = Args::parse();
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the comparison needs root (network namespaces, BPF, nftables); run `sudo ./x compare`"
        );
    }
    if let Some(Cmd::Gateway(g)) = &a.cmd {
        return gateway::run(g, &ctl_path(&a)?);
    }
    let (mut rates, defences, repeats, seconds) = if a.quick {
        (
            vec![0, 200_000, u64::MAX],
            vec![
                Defence::KernelCookies,
                Defence::Synproxy,
                Defence::OursIntercept,
            ],
            1,
            2.0,
        )
    } else {
        let d = match &a.defences {
            Some(s) => s
                .split(',')
                .map(Defence::parse)
                .collect::<Result<Vec<_>, _>>()?,
            None => Defence::ALL.to_vec(),
        };
        (parse_rates(&a.rates)?, d, a.repeats.max(1), a.seconds)
    };
    if a.quick {
        a.requests = a.requests.min(60);
    }
    if seconds > livegen::MAX_RUN.as_secs_f64() || seconds < 1.0 {
        bail!(
            "--seconds must be between 1 and {}",
            livegen::MAX_RUN.as_secs()
        );
    }
    rates.sort_unstable();
    rates.dedup();
    let ctl = ctl_path(&a)?;
    let mut seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(1))
            | 1
    });
    let seed0 = seed;
    let started = Instant::now();
    let load_start = loadavg();

    // The kernel's per-program run-time statistics, while this fd is open (for our program's own
    // cost per frame; every program on the machine pays a clock read per run meanwhile).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let lab = Lab::new()?;
    let (l4, l6) = lab.listen(PORT)?;
    echo_server(l4);
    echo_server(l6);
    let ifindex_b = {
        let b = lab.veth.b.clone();
        lab.client
            .spawn(move || intercept_ctl::loader::ifindex(&b, None))
            .join()
            .expect("thread")?
    };
    let replies = lab
        .client
        .spawn(move || ReplyCounter::attach(ifindex_b, intercept_ctl::lab::CLIENT_V4))
        .join()
        .expect("thread")?;
    let link = intercept_common::craft::Link {
        dst: Lab::mac(&lab.server, &lab.veth.a)?,
        src: Lab::mac(&lab.client, &lab.veth.b)?,
        vlans: Vec::new(),
    };
    let opts = defence::server_options(&lab, PORT)?;
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut rig = Rig {
        lab,
        replies,
        link,
        ifindex_b,
        opts,
        ctl,
        cpus,
        speed: (0.0, 0.0),
    };
    eprintln!(
        "compare: server {SERVER_V4}:{PORT} (MSS {}, wscale {}), veth {}<->{}; {} defences x {} rates x {repeats} repeats, {seconds} s floods, {} requests each; seed {seed0:#x}",
        opts.mss,
        opts.wscale,
        rig.lab.veth.a,
        rig.lab.veth.b,
        defences.len(),
        rates.len(),
        a.requests
    );

    // The generator's own ceiling, and its speed with a spin (for pacing), with the kernel's
    // cookies answering.
    #[allow(clippy::cast_precision_loss, reason = "a rate")]
    let rate_of = |s: livegen::Sent| s.frames as f64 / s.seconds;
    let (gen_max, spun) = {
        let _k = defence::setup(&rig.lab, Defence::KernelCookies, PORT, opts, &rig.ctl)?;
        let max = rate_of(rig.flood(u64::MAX, 2.0, 0).join().expect("flood thread")?);
        let spun = rate_of(
            rig.flood(u64::MAX, 1.0, SPIN_PROBE)
                .join()
                .expect("flood thread")?,
        );
        (max, spun)
    };
    rig.speed = (gen_max, spun);
    eprintln!(
        "compare: generator maximum {gen_max:.0} SYN/s (2 s unpaced, BPF live frames, one core); {spun:.0}/s with a spin of {SPIN_PROBE}"
    );

    let mut trials = Vec::new();
    let total = repeats * defences.len() * rates.len();
    for rep in 0..repeats {
        let mut set: Vec<(Defence, u64)> = defences
            .iter()
            .flat_map(|d| rates.iter().map(move |r| (*d, *r)))
            .collect();
        shuffle(&mut set, &mut seed);
        for (order, (d, rate)) in set.into_iter().enumerate() {
            let mut t = rig.trial(d, rate, &a, seconds)?;
            t.repeat = rep;
            t.order = order;
            eprintln!(
                "compare: [{}/{total}] {:<15} {:>9} offered {:>9.0}/s: ok {}/{} p50 {:.3} ms p99 {:.3} ms, SYN-ACK {:.0}/s, ring drops {}, napi {:.0}% {:.0} ns/SYN (program {:.0} ns), retrans {}",
                trials.len() + 1,
                d.name(),
                report::rate_name(rate),
                t.offered_rate,
                t.requests_ok,
                t.requests_attempted,
                t.request_p50_ms,
                t.request_p99_ms,
                t.syn_acks_per_s,
                t.ring_drops,
                t.server_napi_util * 100.0,
                t.cpu_ns_per_syn,
                t.prog_ns_per_run,
                t.client_retrans_segs
            );
            trials.push(t);
        }
    }
    let run = report::Run {
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(started.elapsed().as_secs()),
        seconds_total: started.elapsed().as_secs_f64(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpus,
        loadavg_start: load_start,
        loadavg_end: loadavg(),
        seed: seed0,
        repeats,
        flood_seconds: seconds,
        requests_per_trial: a.requests,
        rates,
        defences,
        generator_max_rate: gen_max,
        server: opts,
        trials,
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    report::write(&run, &a.out)?;
    eprintln!(
        "compare: done in {:.0} s; wrote {}/compare.{{json,md}} and the plots",
        run.seconds_total,
        a.out.display()
    );
    Ok(())
}
