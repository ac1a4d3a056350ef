use std::{
    io::{Read as _, Write as _},
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
    lab::{FloodSpec, Lab, SERVER_V4, SERVER_V6, flood},
    loader::{AttachGuard, AttachMode, Program},
    stats::read_pinned,
};

use super::{Ctx, print_json, run::print_live};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the lab runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Spoofed SYNs to send at most (the flood stops at this count or after --seconds).
    #[arg(long, default_value_t = 200_000)]
    pub flood_count: u64,
    /// Flood rate in SYN/s (0: as fast as the sender goes).
    #[arg(long, default_value_t = 20_000)]
    pub flood_rate: u64,
    /// Server port the clients and the flood target.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
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
    // replies cross the veth (shared/KERNEL.md, veth quirks).
    let _server_xdp = AttachGuard::new(
        &lab.veth.a,
        Some(&ns),
        Program::Intercept,
        AttachMode::Native,
    )?;
    let _client_xdp = AttachGuard::new(
        &lab.veth.b,
        Some(lab.client.name()),
        Program::Pass,
        AttachMode::Native,
    )?;

    let (l4, l6) = lab.listen(a.port)?;
    let stop = Arc::new(AtomicBool::new(false));
    for l in [l4, l6] {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut s) = s {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = s.read(&mut buf) {
                        let _ = s.write_all(&buf[..n]);
                    }
                }
            }
        });
    }

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let target = SocketAddr::new(ip, a.port);
        clients.push(lab.client.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = (|| -> std::io::Result<()> {
                    let mut s =
                        std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    s.write_all(b"ping")?;
                    let mut b = [0u8; 4];
                    s.read_exact(&mut b)?;
                    Ok(())
                })();
                match r {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }

    let sender = lab.raw_sender()?;
    let spec = FloodSpec {
        target: SocketAddr::new(IpAddr::V4(SERVER_V4), a.port),
        count: a.flood_count,
        max_time: Duration::from_secs(a.seconds),
        rate: a.flood_rate,
        flags: tcp_flags::SYN,
    };
    let flooder = std::thread::spawn(move || flood(&sender, spec));

    let (iface, ns) = (lab.veth.a.clone(), lab.server.name().to_owned());
    let start = Instant::now();
    let mut prev = read_pinned(&iface, Some(&ns))?;
    let mut last = Instant::now();
    while start.elapsed() < Duration::from_secs(a.seconds) {
        std::thread::sleep(Duration::from_secs(1));
        let now = read_pinned(&iface, Some(&ns))?;
        print_live(
            ctx,
            start.elapsed().as_secs_f64(),
            &now,
            &prev,
            last.elapsed().as_secs_f64(),
        );
        prev = now;
        last = Instant::now();
    }
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().expect("flood thread").context("flood")?;
    for c in clients {
        let _ = c.join();
    }
    let summary = serde_json::json!({
        "flood_sent": sent,
        "client_connections_ok": ok.load(Ordering::Relaxed),
        "client_connections_failed": failed.load(Ordering::Relaxed),
        "counters": prev.to_json(),
    });
    if ctx.json {
        print_json(&summary);
    } else {
        println!("lab summary: {summary:#}");
    }
    Ok(())
}
