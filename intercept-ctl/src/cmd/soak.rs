//! `lab --soak` (`./x soak`): the NIC-like lab in intercept mode under the heaviest mixed flood
//! the rig sends (spoofed SYNs, forged ACKs, junk), for a bounded time and count, with the
//! controller daemon running and a legitimate client making requests throughout; then it checks
//! what must hold and exits non-zero if anything does not (see README, "Soak").
use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Child, Command, Stdio},
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use intercept_common::{Counter, config::Mode};
use intercept_ctl::{
    control::Maps,
    lab::{Lab, SERVER_V4, SERVER_V6, Shape, echo_server},
    soak,
    stats::{Counters, read_pinned},
};

use super::{Ctx, lab::Args, print_json, run::Live};

/// Where the daemon serves its metrics, inside the server namespace.
const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9720);
/// Frames in the flood's pool (cycled).
const POOL: usize = 16_384;
/// How long a legitimate request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The `run` daemon as a child process; stopped (SIGTERM) on drop.
struct Daemon {
    child: Child,
    log: std::thread::JoinHandle<Vec<String>>,
}

impl Daemon {
    fn start(netns: &str, iface: &str) -> anyhow::Result<Daemon> {
        let exe = std::env::current_exe().context("own executable")?;
        let listen = METRICS.to_string();
        let mut child = Command::new(exe)
            .args(["--netns", netns, "run", iface, "--quiet", "--keep"])
            .args(["--metrics-listen", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start intercept-ctl run")?;
        let err = child.stderr.take().context("daemon stderr")?;
        let log = std::thread::spawn(move || {
            BufReader::new(err)
                .lines()
                .map_while(Result::ok)
                .inspect(|l| eprintln!("soak: daemon: {l}"))
                .collect()
        });
        Ok(Daemon { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then its exit status.
    fn stop(mut self) -> anyhow::Result<(std::process::ExitStatus, Vec<String>)> {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(i32::try_from(self.child.id())?, libc::SIGTERM) };
        let status = self.child.wait()?;
        let log = std::mem::replace(&mut self.log, std::thread::spawn(Vec::new));
        Ok((status, log.join().unwrap_or_default()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(i32::try_from(self.child.id()).unwrap_or(0), libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// Reads the counters and the veth's own XDP counters (see [`veth_xdp_stats`]) until a reading
/// of both falls between two equal readings of the veth's (nothing ran XDP meanwhile) and the
/// counters equal the previous reading (the data path is idle); at most 5 s.
fn settled(
    lab: &Lab,
    iface: &str,
    ns: &str,
) -> anyhow::Result<(Counters, std::collections::BTreeMap<String, u64>)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut prev = read_pinned(iface, Some(ns))?;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let v0 = veth_xdp_stats(lab)?;
        let now = read_pinned(iface, Some(ns))?;
        let v1 = veth_xdp_stats(lab)?;
        if (now == prev && v0 == v1) || Instant::now() > deadline {
            return Ok((now, v1));
        }
        prev = now;
    }
}

/// The XDP counters the kernel keeps for a veth (`ethtool -S`: `rx_queue_<n>_xdp_*`, summed
/// over queues), for an independent count of what the program saw and decided.
fn veth_xdp_stats(lab: &Lab) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let out = lab.server.exec("ethtool", &["-S", &lab.veth.a])?;
    let mut sums = std::collections::BTreeMap::<String, u64>::new();
    for line in out.lines() {
        let Some((name, v)) = line.trim().split_once(':') else {
            continue;
        };
        let Ok(v) = v.trim().parse::<u64>() else {
            continue;
        };
        let name = match name.strip_prefix("rx_queue_") {
            Some(rest) => rest.split_once('_').map_or(rest, |(_, n)| n),
            None => name,
        };
        if name.contains("xdp") || name.contains("drop") {
            *sums.entry(name.to_owned()).or_default() += v;
        }
    }
    Ok(sums)
}

#[allow(clippy::too_many_lines, reason = "one soak, in the order it runs")]
pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    let seconds = a.seconds.unwrap_or(60).max(5);
    let count = a.flood_count.unwrap_or(seconds.saturating_mul(1_000_000));
    let rate = a.flood_rate.unwrap_or(0);
    let lab = Lab::new()?;
    let (ns, iface) = (lab.server.name().to_owned(), lab.veth.a.clone());
    eprintln!(
        "soak: server netns {ns} ({SERVER_V4} {SERVER_V6} port {}), client netns {}, veth {iface}<->{}",
        a.port,
        lab.client.name(),
        lab.veth.b
    );
    let _programs = lab.attach_programs()?;
    {
        let mut m = Maps::open(&iface, Some(&ns))?;
        for p in [format!("{SERVER_V4}/32"), format!("{SERVER_V6}/128")] {
            m.scope_add(&p.parse()?, Some(&[a.port]))?;
        }
        m.set_mode(Mode::Intercept)?;
        // Steady state, as 75 s without handshakes left to the kernel would bring: no kernel
        // request socket can exist here (no client connected before), so the socket table alone
        // decides ACKs that fail the cookie (README, "The socket table").
        m.set_lookup_until(0)?;
    }
    let (l4, l6) = lab.listen(a.port)?;
    echo_server(l4);
    echo_server(l6);

    // The controller, adopting the attachment, serving metrics; its memory is sampled.
    let mut daemon = Daemon::start(&ns, &iface)?;
    let scrape = |lab: &Lab| {
        lab.server
            .spawn(|| soak::scrape(METRICS, Duration::from_secs(2)))
            .join()
            .expect("scrape thread")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while scrape(&lab).is_err() {
        if !daemon.alive() || Instant::now() > deadline {
            bail!("the daemon did not serve metrics within 5 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rss_start = soak::rss_kib(daemon.pid())?;
    let mut rss = vec![(0.0, rss_start)];

    let sender = lab.raw_sender()?;
    let pool = soak::frames(
        &sender.link,
        [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)],
        a.port,
        POOL,
    );
    eprintln!(
        "soak: {seconds} s; flood of at most {count} frames at {} from a pool of {POOL} (spoofed SYNs, forged ACKs, junk); a request every {} ms; daemon pid {} ({rss_start} KiB resident)",
        if rate == 0 {
            "the sender's full speed".to_owned()
        } else {
            format!("{rate} frames/s")
        },
        a.request_interval_ms,
        daemon.pid()
    );
    let (before, veth_before) = settled(&lab, &iface, &ns)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            soak::flood_frames(
                &sender,
                &pool,
                count,
                Duration::from_secs(seconds),
                rate,
                &stop,
            )
        })
    };
    let client = {
        let lab_targets = vec![
            (SocketAddr::new(IpAddr::V4(SERVER_V4), a.port), Shape::One),
            (SocketAddr::new(IpAddr::V6(SERVER_V6), a.port), Shape::One),
            (SocketAddr::new(IpAddr::V4(SERVER_V4), a.port), Shape::Split),
            (
                SocketAddr::new(IpAddr::V6(SERVER_V6), a.port),
                Shape::WithFin,
            ),
        ];
        let interval = Duration::from_millis(a.request_interval_ms);
        // The client runs on its own thread (pinned, real-time) in the client namespace; the
        // lab outlives it (joined below before anything is dropped).
        let lab = &lab;
        std::thread::scope(|s| {
            let client = s.spawn(move || {
                lab.requests_for(
                    lab_targets,
                    Duration::from_secs(seconds),
                    interval,
                    REQUEST_TIMEOUT,
                )
            });
            let start = Instant::now();
            let mut live = Live::new(before.clone());
            let mut scrape_errors = Vec::new();
            while !client.is_finished() {
                std::thread::sleep(Duration::from_millis(250));
                if live.due() {
                    live.update(ctx, read_pinned(&iface, Some(&ns))?, false);
                    let t = start.elapsed().as_secs_f64();
                    if rss.last().is_some_and(|(at, _)| t - at >= 5.0) {
                        rss.push((t, soak::rss_kib(daemon.pid())?));
                        if let Err(e) = scrape(lab) {
                            scrape_errors.push(format!("{t:.0}s: {e:#}"));
                        }
                    }
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let r = client.join().expect("client thread")?;
            anyhow::Ok((r, scrape_errors))
        })?
    };
    let (requests, scrape_errors) = client;
    let sent = flooder.join().expect("flood thread").context("flood")?;
    let (after, veth) = settled(&lab, &iface, &ns)?;
    let daemon_alive = daemon.alive();
    let rss_end = soak::rss_kib(daemon.pid()).unwrap_or(0);
    rss.push((seconds as f64, rss_end));
    let (status, log) = daemon.stop()?;
    let c = after.delta(&before);

    // What must hold.
    let mut failed = Vec::new();
    if requests.failures > 0 {
        failed.push(format!(
            "{} legitimate requests failed (first: {})",
            requests.failures,
            requests.first_error.as_deref().unwrap_or("?")
        ));
    }
    if requests.latencies.is_empty() {
        failed.push("no legitimate request was made".to_owned());
    }
    let mut identities = serde_json::Map::new();
    for id in soak::identities() {
        // Over the whole attachment (`after`), not only the soak's window: nothing is left out.
        let (l, r) = id.sides(&after);
        identities.insert(id.formula(), serde_json::json!([l, r]));
        if l != r {
            failed.push(format!("{}: {l} != {r}", id.formula()));
        }
    }
    // The veth driver counts what XDP did too: an independent count of the same frames, over
    // the soak (its `xdp_packets` also counts what crossed its NAPI ring before the program was
    // attached). A frame it fails to turn into an XDP buffer, or whose XDP_TX it cannot queue,
    // is counted in its `drops` instead: each identity may miss by at most those.
    let v = |k: &str| {
        veth.get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(veth_before.get(k).copied().unwrap_or(0))
    };
    let veth_drops = v("drops");
    let kernel = [
        (
            "veth xdp_packets == packets (soak)",
            v("xdp_packets"),
            c.get(Counter::Packets),
        ),
        (
            "veth xdp_drops == dropped + aborted (soak)",
            v("xdp_drops"),
            c.get(Counter::Dropped) + c.get(Counter::Aborted),
        ),
        (
            "veth xdp_tx + xdp_tx_errors == syn_ack_sent (soak)",
            v("xdp_tx") + v("xdp_tx_errors"),
            c.get(Counter::SynAckSent),
        ),
    ];
    for (what, l, r) in kernel {
        identities.insert(what.to_owned(), serde_json::json!([l, r]));
        if l.abs_diff(r) > veth_drops {
            failed.push(format!("{what}: {l} != {r} (veth drops {veth_drops})"));
        }
    }
    if after.get(Counter::Aborted) != 0 {
        failed.push(format!(
            "{} frames aborted (XDP_ABORTED: an internal failure)",
            after.get(Counter::Aborted)
        ));
    }
    if c.get(Counter::Packets) == 0 || sent.total == 0 {
        failed.push("the flood reached nothing".to_owned());
    }
    let growth = rss_end.saturating_sub(rss_start);
    if growth > a.rss_growth_kib {
        failed.push(format!(
            "the daemon's resident memory grew by {growth} KiB ({rss_start} -> {rss_end}), more than {} KiB",
            a.rss_growth_kib
        ));
    }
    if !daemon_alive || !status.success() {
        failed.push(format!(
            "the daemon {} ({status}): {}",
            if daemon_alive {
                "failed on SIGTERM"
            } else {
                "died during the soak"
            },
            log.join(" | ")
        ));
    }
    if !scrape_errors.is_empty() {
        failed.push(format!(
            "metrics scrapes failed: {}",
            scrape_errors.join("; ")
        ));
    }

    // Forged ACKs that verified: valid cookies beyond the legitimate handshakes (each
    // answered request made one). By design a blind guess verifies with odds 2^-24 without
    // timestamps and 2^-40 with; half the forged ACKs carry timestamps. Reported, not asserted.
    let legit = (requests.latencies.len() + requests.failures) as u64;
    let forged_valid = c.get(Counter::AckValid).saturating_sub(legit);
    let forged = sent
        .per_kind
        .iter()
        .find(|(k, _)| *k == soak::Kind::ForgedAck)
        .map_or(0, |(_, n)| *n) as f64;
    let expected_forged = forged / 2.0 * 2f64.powi(-24) + forged / 2.0 * 2f64.powi(-40);
    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
    let secs = sent.elapsed.as_secs_f64();
    let summary = serde_json::json!({
        "seconds": seconds,
        "flood": {
            "sent": sent.total,
            "per_second": (sent.total as f64 / secs.max(1e-9)).round(),
            "seconds": (secs * 10.0).round() / 10.0,
            "cap": count,
            "per_kind": sent.per_kind.iter().map(|(k, n)| (k.name().to_owned(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
        },
        "requests": {
            "ok": requests.latencies.len(),
            "failed": requests.failures,
            "latency_ms": {
                "p50": ms(requests.median()),
                "p99": ms(requests.percentile(99)),
                "max": ms(requests.percentile(100)),
            },
        },
        "client_retransmissions": {
            "segments": requests.retrans.retrans_segs,
            "timeouts": requests.retrans.timeouts,
        },
        "xdp": {
            "packets_seen": c.get(Counter::Packets),
            "identities": identities.clone(),
            "veth_ethtool_soak": veth.keys().map(|k| (k.clone(), serde_json::json!(v(k)))).collect::<serde_json::Map<_, _>>(),
            "socket_lookups": c.get(Counter::SocketLookups),
            "ack_valid_beyond_legitimate": forged_valid,
            "ack_valid_beyond_legitimate_expected": (expected_forged * 100.0).round() / 100.0,
        },
        "daemon_rss_kib": {
            "start": rss_start,
            "end": rss_end,
            "max": rss.iter().map(|(_, k)| *k).max(),
            "growth": growth,
            "limit": a.rss_growth_kib,
            "samples": rss.iter().map(|(t, k)| serde_json::json!([t.round(), k])).collect::<Vec<_>>(),
        },
        "counters": c.to_json(),
        "failed": failed,
    });
    if ctx.json {
        print_json(&summary);
    } else {
        println!("soak summary: {summary:#}");
        println!();
        println!(
            "soak: flood {} frames in {secs:.1} s ({:.0}/s): {}",
            sent.total,
            sent.total as f64 / secs.max(1e-9),
            sent.per_kind
                .iter()
                .map(|(k, n)| format!("{} {n}", k.name()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "soak: {} requests, {} failed; latency p50 {} ms, p99 {} ms, max {} ms; client retransmitted {} segments ({} timeouts)",
            requests.latencies.len() + requests.failures,
            requests.failures,
            ms(requests.median()),
            ms(requests.percentile(99)),
            ms(requests.percentile(100)),
            requests.retrans.retrans_segs,
            requests.retrans.timeouts
        );
        for (what, v) in &identities {
            println!("soak: {what}: {v}");
        }
        println!(
            "soak: socket lookups {}; valid cookies beyond the legitimate handshakes {forged_valid} (expected by chance {expected_forged:.2})",
            c.get(Counter::SocketLookups)
        );
        println!(
            "soak: daemon resident memory {rss_start} KiB at start, {rss_end} KiB at the end ({growth} KiB growth, limit {} KiB)",
            a.rss_growth_kib
        );
    }
    if failed.is_empty() {
        println!("soak: PASS");
        Ok(())
    } else {
        for f in &failed {
            eprintln!("soak: FAIL: {f}");
        }
        bail!("soak failed: {} check(s)", failed.len())
    }
}
