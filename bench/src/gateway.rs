//! `intercept-bench gateway`: gateway mode against plain forwarding, on the three-namespace
//! gateway lab (`intercept_ctl::gwlab::GatewayLab`), in one run: bulk throughput through the
//! gateway each way (a checked 100 MB transfer per run), request latency (connect, a 16-byte
//! request, its echo), both alternating between plain forwarding and an intercepting gateway so
//! drift on a shared machine hits both alike; and the per-packet cost of the splice, measured
//! with BPF_PROG_TEST_RUN on the real object. Prints figures; asserts nothing.
use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    maps::{DevMapHash, HashMap},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use intercept_common::{
    config::{Config, FlowKey, Mode},
    cookie::words_of,
    craft::{Link, TcpSegment, tcp_frame},
    maps::{GW_PORTS, GW_ROLE, PROG_GATEWAY, PROG_XDP_PASS, SPLICE},
    parse::tcp_flags,
    splice::{OPEN, ROLE_CLIENT, ROLE_SERVER, Splice, splice_flags},
};
use intercept_ctl::{
    gwlab::{CLIENT_V4, GatewayLab, SERVER_V4},
    lab::{Lab, Shape, echo_server},
};

use crate::{ms, percentile};

/// Options of `intercept-bench gateway`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Alternations of plain forwarding and the intercepting gateway.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Megabytes (10^6 bytes) each bulk transfer moves each way.
    #[arg(long, default_value_t = 100)]
    megabytes: u64,
    /// Requests per family per run (IPv4 and IPv6).
    #[arg(long, default_value_t = 100)]
    requests: usize,
    /// BPF_PROG_TEST_RUN runs per row of the per-packet table.
    #[arg(long, default_value_t = 20_000)]
    runs: usize,
    /// How the gateway forwards (`attach --forward`): auto, redirect or kernel.
    #[arg(long, value_enum, default_value = "auto")]
    forward: intercept_ctl::gateway::Forward,
}

/// Port of the echo server (requests).
const PORT: u16 = 8080;
/// Port of the bulk transfers' listener.
const BULK_PORT: u16 = 8081;

/// How the gateway forwards in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forwarding {
    /// No attachment: the kernel forwards.
    Plain,
    /// `attach CLIENT_IF --gateway SERVER_IF` in intercept mode, both ports in scope.
    Gateway,
}

impl Forwarding {
    fn name(self) -> &'static str {
        match self {
            Forwarding::Plain => "plain forwarding",
            Forwarding::Gateway => "gateway (intercept)",
        }
    }
}

/// Figures of one path over all runs.
#[derive(Debug, Default)]
struct Figures {
    up_gbit: Vec<f64>,
    down_gbit: Vec<f64>,
    retrans: Vec<u32>,
    latencies: Vec<Duration>,
    failures: usize,
    client_retrans: u64,
}

/// Runs intercept-ctl in the gateway namespace.
fn ctl(ctl: &Path, lab: &GatewayLab, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(ctl)
        .args(["--netns", lab.gateway.name()])
        .args(args)
        .output()
        .with_context(|| format!("run {}", ctl.display()))?;
    if !out.status.success() {
        bail!(
            "intercept-ctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Attaches gateway mode protecting both server addresses on both ports.
fn attach(
    ctl_bin: &Path,
    lab: &GatewayLab,
    forward: intercept_ctl::gateway::Forward,
) -> anyhow::Result<()> {
    let gi = lab.gateway_client_if();
    ctl(
        ctl_bin,
        lab,
        &[
            "attach",
            gi,
            "--gateway",
            lab.gateway_server_if(),
            "--forward",
            forward.name(),
        ],
    )?;
    let ports = format!("{PORT},{BULK_PORT}");
    for prefix in ["198.18.20.2/32", "2001:db8:20::2/128"] {
        ctl(
            ctl_bin,
            lab,
            &["scope", "add", gi, prefix, "--ports", &ports],
        )?;
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn span(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)))
}

/// The benchmark.
///
/// # Errors
/// If the lab cannot be built or plain forwarding fails; a failing gateway attachment is
/// reported and its columns left empty.
#[allow(clippy::too_many_lines, reason = "the run, in order")]
pub fn run(a: &Args, ctl_bin: &Path) -> anyhow::Result<()> {
    let lab = GatewayLab::new()?;
    let _pass = lab.attach_pass_programs()?;
    let (l4, l6) = lab.listen(PORT)?;
    echo_server(l4);
    echo_server(l6);
    let bytes = a.megabytes * 1_000_000;
    let idle = Duration::from_secs(10);
    let mut plain = Figures::default();
    let mut gw = Figures::default();
    let mut gateway_error = None;
    let started = Instant::now();
    for r in 0..a.repeats.max(1) {
        let order = if r % 2 == 0 {
            [Forwarding::Plain, Forwarding::Gateway]
        } else {
            [Forwarding::Gateway, Forwarding::Plain]
        };
        for path in order {
            if path == Forwarding::Gateway {
                if gateway_error.is_some() {
                    continue;
                }
                if let Err(e) = attach(ctl_bin, &lab, a.forward) {
                    eprintln!("gateway mode unavailable: {e:#}");
                    gateway_error = Some(format!("{e:#}"));
                    let _ = ctl(ctl_bin, &lab, &["detach", lab.gateway_client_if()]);
                    continue;
                }
            }
            let f = if path == Forwarding::Plain {
                &mut plain
            } else {
                &mut gw
            };
            let target = SocketAddr::new(SERVER_V4.into(), BULK_PORT);
            match lab.bulk(target, bytes, idle) {
                Ok(b) => {
                    f.up_gbit.push(b.up.gbit_per_s());
                    f.down_gbit.push(b.down.gbit_per_s());
                    f.retrans
                        .push(b.client.total_retrans + b.server.total_retrans);
                    eprintln!(
                        "run {r}, {}: {:.2} Gbit/s up, {:.2} down, {} + {} retransmitted",
                        path.name(),
                        b.up.gbit_per_s(),
                        b.down.gbit_per_s(),
                        b.client.total_retrans,
                        b.server.total_retrans
                    );
                }
                Err(e) => eprintln!("run {r}, {}: bulk transfer failed: {e:#}", path.name()),
            }
            for v6 in [false, true] {
                let target = GatewayLab::server_addr(v6, PORT);
                let q = lab.requests(target, Shape::One, a.requests, Duration::from_secs(2))?;
                f.latencies.extend(&q.latencies);
                f.failures += q.failures;
                f.client_retrans += q.retrans.retrans_segs;
            }
            if path == Forwarding::Gateway {
                ctl(ctl_bin, &lab, &["detach", lab.gateway_client_if()])?;
            }
        }
    }
    let per_packet = splice_cost(&lab, a.runs);

    println!(
        "\ngateway benchmark: {} alternations, {} MB each way per bulk run (IPv4, checked byte \
         for byte), {} requests per family per run; gateway forwarding: {}; {:.0} s; load {}",
        a.repeats.max(1),
        a.megabytes,
        a.requests,
        a.forward.name(),
        started.elapsed().as_secs_f64(),
        crate::loadavg()
    );
    println!(
        "{:<34} {:>22} {:>22} {:>8}",
        "",
        Forwarding::Plain.name(),
        Forwarding::Gateway.name(),
        "ratio"
    );
    let row = |what: &str, p: &[f64], g: &[f64], unit: &str| {
        let cell = |v: &[f64]| {
            if v.is_empty() {
                "-".to_owned()
            } else if v.len() == 1 {
                format!("{:.2}", v[0])
            } else {
                let (lo, hi) = span(v);
                format!("{:.2} ({lo:.2}-{hi:.2})", median(v))
            }
        };
        let ratio = if p.is_empty() || g.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.0}%", 100.0 * median(g) / median(p))
        };
        println!(
            "{:<34} {:>22} {:>22} {ratio:>8}",
            format!("{what} ({unit})"),
            cell(p),
            cell(g)
        );
    };
    row("bulk client->server", &plain.up_gbit, &gw.up_gbit, "Gbit/s");
    row(
        "bulk server->client",
        &plain.down_gbit,
        &gw.down_gbit,
        "Gbit/s",
    );
    let lat = |f: &Figures, p: usize| vec![ms(percentile(&f.latencies, p))];
    let some = |f: &Figures, v: Vec<f64>| {
        if f.latencies.is_empty() {
            Vec::new()
        } else {
            v
        }
    };
    row(
        "request latency median",
        &some(&plain, lat(&plain, 50)),
        &some(&gw, lat(&gw, 50)),
        "ms",
    );
    row(
        "request latency p99",
        &some(&plain, lat(&plain, 99)),
        &some(&gw, lat(&gw, 99)),
        "ms",
    );
    println!(
        "{:<34} {:>22} {:>22}",
        "requests failed / client retrans",
        format!("{} / {}", plain.failures, plain.client_retrans),
        format!("{} / {}", gw.failures, gw.client_retrans)
    );
    println!(
        "{:<34} {:>22} {:>22}",
        "bulk retransmissions per run",
        format!("{:?}", plain.retrans),
        format!("{:?}", gw.retrans)
    );
    if let Some(e) = &gateway_error {
        println!("gateway mode was not measured: {e}");
    }
    println!(
        "\nper-packet cost of the splice (BPF_PROG_TEST_RUN of {PROG_GATEWAY} on a spliced 1448-byte \
         segment, in the gateway's namespace; net = median minus the trivial XDP_PASS program's \
         median of the same round; lowest and highest of 5 rounds):"
    );
    match per_packet {
        Ok(rows) => {
            for (what, verdict, lo, hi) in rows {
                println!(
                    "{what:<34} {lo:>8.0} {hi:>9.0}   verdict {}",
                    verdict_name(verdict)
                );
            }
        }
        Err(e) => println!("not measured: {e:#}"),
    }
    Ok(())
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS (translated, to the kernel's forwarding path)",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "?",
    }
}

/// One `xdp_md` (`include/uapi/linux/bpf.h`) for a test run of `len` bytes arriving on
/// `ifindex`: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
fn xdp_md(len: usize, ifindex: u32) -> Vec<u8> {
    let md: [u32; 6] = [0, u32::try_from(len).unwrap_or(0), 0, ifindex, 0, 0];
    md.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// Sequence numbers of the measured splice (any values: only their arithmetic matters).
const CLIENT_ISN: u32 = 1_000_000;
const COOKIE_ISN: u32 = 0x4000_0000;
const SERVER_ISN: u32 = 0x9000_0000;

/// The per-packet rows: (what, verdict, lowest net ns, highest net ns). Loads the real object
/// (not attached) on a thread in the gateway's namespace, gives it the gateway's interfaces and
/// one open splice between the lab's client and server, and times a data segment each way
/// against the trivial XDP_PASS program, interleaved.
fn splice_cost(
    lab: &GatewayLab,
    runs: usize,
) -> anyhow::Result<Vec<(&'static str, u32, f64, f64)>> {
    let client_mac = Lab::mac(&lab.client, lab.client_if())?;
    let server_mac = Lab::mac(&lab.server, lab.server_if())?;
    let gw_client_mac = Lab::mac(&lab.gateway, lab.gateway_client_if())?;
    let gw_server_mac = Lab::mac(&lab.gateway, lab.gateway_server_if())?;
    let (client_dev, server_dev) = (
        lab.gateway_client_if().to_owned(),
        lab.gateway_server_if().to_owned(),
    );
    lab.gateway
        .spawn(move || -> anyhow::Result<_> {
            let client_side = intercept_ctl::loader::ifindex(&client_dev, None)?;
            let server_side = intercept_ctl::loader::ifindex(&server_dev, None)?;
            let mut ebpf = intercept_ctl::loader::load_object()?;
            for name in [PROG_GATEWAY, PROG_XDP_PASS] {
                let p: &mut Xdp = ebpf
                    .program_mut(name)
                    .with_context(|| format!("{name} in the object"))?
                    .try_into()?;
                p.load().with_context(|| format!("load {name}"))?;
            }
            intercept_ctl::loader::load_gateway_stages(&mut ebpf)?;
            let mut roles: HashMap<_, u32, u32> =
                HashMap::try_from(ebpf.take_map(GW_ROLE).context("GW_ROLE")?)?;
            roles.insert(&client_side, &ROLE_CLIENT, 0)?;
            roles.insert(&server_side, &ROLE_SERVER, 0)?;
            let mut ports = DevMapHash::try_from(ebpf.take_map(GW_PORTS).context("GW_PORTS")?)?;
            ports.insert(client_side, client_side, None, 0)?;
            ports.insert(server_side, server_side, None, 0)?;
            let (c, s) = (
                std::net::IpAddr::V4(CLIENT_V4),
                std::net::IpAddr::V4(SERVER_V4),
            );
            let key = FlowKey {
                saddr: words_of(c),
                daddr: words_of(s),
                sport: 40_000,
                dport: PORT,
            };
            let now = intercept_ctl::watchctl::monotonic_ns();
            let splice = Splice {
                state: OPEN,
                flags: splice_flags::TS,
                created_ns: now,
                last_ns: now,
                client_isn: CLIENT_ISN,
                cookie_isn: COOKIE_ISN,
                seq_delta: SERVER_ISN.wrapping_sub(COOKIE_ISN),
                ts_delta: 1_000,
                our_tsval: 5_000,
                client_tsval: 7_000,
                mss: 1460,
                client_wscale: 7,
                our_wscale: 7,
                server_wscale: 9,
                sack: 1,
                client_window: 502,
                client_acked: CLIENT_ISN + 1,
                server_acked: SERVER_ISN + 1,
            };
            let mut table: HashMap<_, FlowKey, Splice> =
                HashMap::try_from(ebpf.take_map(SPLICE).context("SPLICE")?)?;
            table.insert(&key, &splice, 0)?;
            let mut maps = intercept_ctl::control::Maps::from_ebpf(&mut ebpf)?;
            maps.set_config(&Config {
                mode: Mode::Intercept as u32,
                ..Config::default()
            })?;
            maps.init_secrets()?;
            maps.scope_add(&"198.18.20.2/32".parse()?, Some(&[PORT]))?;
            let ts = |val: u32, ecr: u32| {
                let mut o = vec![1, 1, 8, 10];
                o.extend_from_slice(&val.to_be_bytes());
                o.extend_from_slice(&ecr.to_be_bytes());
                o
            };
            let mut up = TcpSegment::new(c, s, 40_000, PORT, tcp_flags::ACK | tcp_flags::PSH);
            up.seq = CLIENT_ISN + 1;
            up.ack_seq = COOKIE_ISN + 1;
            up.window = 500;
            up.options = ts(7_100, 5_000);
            up.payload = vec![0x61; 1448];
            let up = tcp_frame(
                &Link {
                    dst: gw_client_mac,
                    src: client_mac,
                    vlans: Vec::new(),
                },
                &up,
            );
            let mut down = TcpSegment::new(s, c, PORT, 40_000, tcp_flags::ACK | tcp_flags::PSH);
            down.seq = SERVER_ISN + 1;
            down.ack_seq = CLIENT_ISN + 1 + 1448;
            down.window = 200;
            down.options = ts(4_100, 7_100);
            down.payload = vec![0x62; 1448];
            let down = tcp_frame(
                &Link {
                    dst: gw_server_mac,
                    src: server_mac,
                    vlans: Vec::new(),
                },
                &down,
            );
            let cases = [
                ("client data segment (to server)", &up, client_side),
                ("server data segment (to client)", &down, server_side),
            ];
            let prog = |n: &str| -> anyhow::Result<&Xdp> {
                Ok(ebpf.program(n).context("program")?.try_into()?)
            };
            let (gw, pass) = (prog(PROG_GATEWAY)?, prog(PROG_XDP_PASS)?);
            let mut out = vec![0u8; 2048];
            let mut once = |p: &Xdp, frame: &[u8], ifindex: u32| -> anyhow::Result<(u32, u128)> {
                let ctx = xdp_md(frame.len(), ifindex);
                let r = p.test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..TestRunOptions::default()
                })?;
                Ok((r.return_value, r.duration.as_nanos()))
            };
            let rounds = 5;
            let mut net = vec![Vec::new(); cases.len()];
            let mut verdicts = vec![0; cases.len()];
            for _ in 0..rounds {
                let mut base = Vec::new();
                let mut d = vec![Vec::new(); cases.len()];
                for _ in 0..runs / rounds {
                    base.push(once(pass, &up, client_side)?.1);
                    for (i, (_, f, ifi)) in cases.iter().enumerate() {
                        let (v, ns) = once(gw, f, *ifi)?;
                        verdicts[i] = v;
                        d[i].push(ns);
                    }
                }
                let med = |mut v: Vec<u128>| {
                    v.sort_unstable();
                    v[v.len() / 2] as f64
                };
                let b = med(base);
                for (i, v) in d.into_iter().enumerate() {
                    net[i].push(med(v) - b);
                }
            }
            Ok(cases
                .iter()
                .enumerate()
                .map(|(i, (what, _, _))| {
                    let (lo, hi) = span(&net[i]);
                    (*what, verdicts[i], lo, hi)
                })
                .collect())
        })
        .join()
        .expect("per-packet thread")
}
