use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use intercept_common::parse::tcp_flags;
use intercept_ctl::{
    lab::{
        FloodSpec, Lab, Requests, SERVER_V4, SERVER_V6, Shape, TcpRetrans, echo_server, flood,
        request,
    },
    stats::read_pinned,
};

use intercept_common::config::{Mode, Watch};
use intercept_ctl::{
    control::Maps,
    watchctl::{WatchMaps, Watcher},
};

use super::{Ctx, print_json, run::Live};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the lab runs [default: 14; with --soak, 60].
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Frames to send at most: the flood stops at this count or after --seconds [default:
    /// 200000; with --soak, 1000000 per second].
    #[arg(long)]
    pub flood_count: Option<u64>,
    /// Flood rate in frames/s, 0 for as fast as the sender goes [default: 20000; with --soak, 0].
    #[arg(long)]
    pub flood_rate: Option<u64>,
    /// Server port the clients and the flood target.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Soak instead (`./x soak`): intercept mode under the heaviest mixed flood the rig sends
    /// (spoofed SYNs, forged ACKs, junk) with the daemon running and a legitimate client
    /// throughout; checks that no request failed, that the counters add up and that the
    /// daemon's memory stayed flat, and exits non-zero otherwise.
    #[arg(long)]
    pub soak: bool,
    /// With --soak: one legitimate request every this many milliseconds.
    #[arg(long, default_value_t = 10)]
    pub request_interval_ms: u64,
    /// With --soak: how much the daemon's resident memory may grow from start to end (KiB).
    #[arg(long, default_value_t = 1024)]
    pub rss_growth_kib: u64,
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    if a.soak {
        return super::soak::run(ctx, a);
    }
    let seconds = a.seconds.unwrap_or(14);
    let lab = Lab::new()?;
    let ns = lab.server.name().to_owned();
    eprintln!(
        "lab: server netns {} ({} {}), client netns {}, veth {}<->{}",
        ns,
        SERVER_V4,
        SERVER_V6,
        lab.client.name(),
        lab.veth.a,
        lab.veth.b
    );
    // Attach in the server namespace; the client end gets the pass-through program so XDP_TX
    // replies cross the veth.
    let _programs = lab.attach_programs()?;

    // Protect the server's port in auto mode, with thresholds sized for the lab: watch while
    // calm, SYN cookies once the flood makes it aggressive, back to watch after it.
    let sns = lab.server.name().to_owned();
    {
        let mut m = Maps::open(&lab.veth.a, Some(&sns))?;
        for p in [format!("{SERVER_V4}/32"), format!("{SERVER_V6}/128")] {
            m.scope_add(&p.parse()?, Some(&[a.port]))?;
        }
        m.set_mode(Mode::Auto)?;
        let mut wm = WatchMaps::open(&lab.veth.a, Some(&sns))?;
        let w = Watch {
            timeout_ms: 5_000,
            max_incomplete_high: 200,
            max_incomplete_low: 100,
            one_minute_high: 2_000,
            one_minute_low: 1_000,
            rate_window_s: 3,
            ..wm.watch()?
        };
        wm.set_watch(&w)?;
        eprintln!(
            "lab: protecting {SERVER_V4} and {SERVER_V6} port {} in auto mode (aggressive above {} half-open or {} SYN per {} s)",
            a.port, w.max_incomplete_high, w.one_minute_high, w.rate_window_s
        );
    }
    // The controller's sock_diag socket must live in the server's namespace: open it there.
    let (wi, wn) = (lab.veth.a.clone(), sns.clone());
    let mut watcher = lab
        .server
        .spawn(move || Watcher::open(&wi, Some(&wn)))
        .join()
        .expect("watcher thread")?;

    let (l4, l6) = lab.listen(a.port)?;
    echo_server(l4);
    echo_server(l6);

    // Legitimate clients, as applications make them: connect, send the request right after
    // connect() returns, read the response, close; each one's latency kept.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let retrans_before = lab.client.spawn(TcpRetrans::read).join().expect("thread")?;
    let mut clients = Vec::new();
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let (stop, failed, latencies) = (stop.clone(), failed.clone(), latencies.clone());
        let target = SocketAddr::new(ip, a.port);
        clients.push(lab.client.spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                match request(target, Shape::One, i, Duration::from_secs(2)) {
                    Ok(()) => latencies.lock().expect("lock").push(start.elapsed()),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }

    let sender = lab.raw_sender()?;
    let spec = FloodSpec {
        target: SocketAddr::new(IpAddr::V4(SERVER_V4), a.port),
        count: a.flood_count.unwrap_or(200_000),
        max_time: Duration::from_secs(seconds.saturating_sub(7).max(1)),
        rate: a.flood_rate.unwrap_or(20_000),
        flags: tcp_flags::SYN,
        payload: 0,
    };
    // The flood starts after 2 s and stops 5 s before the end, so the lab shows calm, attack and
    // calm again.
    let flooder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        flood(&sender, spec)
    });

    let (iface, ns) = (lab.veth.a.clone(), lab.server.name().to_owned());
    let start = Instant::now();
    let mut live = Live::new(read_pinned(&iface, Some(&ns))?);
    let mut transitions = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            let t = watcher.tick()?;
            if let Some((aggressive, cause)) = t.transition {
                let what = if aggressive {
                    "aggressive: intercepting"
                } else {
                    "calm: watching"
                };
                eprintln!(
                    "lab: {:.1}s {what} ({cause}; half-open {}, requests in window {})",
                    start.elapsed().as_secs_f64(),
                    t.half_open,
                    t.one_minute
                );
                transitions.push(serde_json::json!({ "t": start.elapsed().as_secs_f64(), "aggressive": aggressive, "cause": cause }));
            }
        }
        live.update(ctx, read_pinned(&iface, Some(&ns))?, false);
    }
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().expect("flood thread").context("flood")?;
    for c in clients {
        let _ = c.join();
    }
    let retrans = lab
        .client
        .spawn(TcpRetrans::read)
        .join()
        .expect("thread")?
        .since(retrans_before);
    let requests = Requests {
        latencies: std::mem::take(&mut *latencies.lock().expect("lock")),
        ..Requests::default()
    };
    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
    let summary = serde_json::json!({
        "flood_sent": sent,
        "client_requests_ok": requests.latencies.len(),
        "client_requests_failed": failed.load(Ordering::Relaxed),
        "request_latency_ms": {
            "p50": ms(requests.median()),
            "p99": ms(requests.percentile(99)),
            "max": ms(requests.percentile(100)),
        },
        "client_retransmitted_segments": retrans.retrans_segs,
        "transitions": transitions,
        "counters": live.counters().to_json(),
    });
    if ctx.json {
        print_json(&summary);
    } else {
        println!("lab summary: {summary:#}");
    }
    Ok(())
}
