//! Request latency as a legitimate client sees it: connect + a 16-byte request sent right after
//! connect() returns + the echoed response + close, through the NIC-like lab (see `Lab::new`),
//! with the protection off (the kernel alone, `tcp_syncookies=1`) and in intercept mode, without
//! and with a bounded spoofed SYN flood at the protected port. Modes are interleaved in rounds so
//! this VM's drift hits both alike. Needs root. Prints figures; asserts nothing.
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use intercept_common::parse::tcp_flags;
use intercept_ctl::lab::{
    FloodSpec, Requests, SERVER_V4, SERVER_V6, Shape, TcpRetrans, echo_server, flood,
};
use intercept_tests::{InterceptLab, require_root};

const PORT: u16 = 8080;
const ROUNDS: usize = 3;
const PER_ROUND: usize = 100;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    require_root("the latency benchmark");
    let t = InterceptLab::new(PORT);
    let (l4, l6) = t.lab.listen(PORT).expect("listen");
    echo_server(l4);
    echo_server(l6);
    println!(
        "request latency (connect + 16-byte request + echo + close), {ROUNDS} interleaved rounds \
         of {PER_ROUND} requests per family and mode; NIC-like veth"
    );
    println!(
        "{:<10} {:<6} {:<10} {:>9} {:>9} {:>8} {:>8} {:>7}",
        "flood", "family", "mode", "p50 ms", "p99 ms", "answered", "retrans", "p50/off"
    );
    for rate in [0u64, 20_000, 50_000] {
        // The flood lasts the whole measurement and stops by itself (count and time bounded).
        let flooder = (rate > 0).then(|| {
            let sender = t.lab.raw_sender().expect("raw sender");
            let spec = FloodSpec {
                target: SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
                count: rate * 20,
                max_time: Duration::from_secs(20),
                rate,
                flags: tcp_flags::SYN,
                payload: 0,
            };
            std::thread::spawn(move || flood(&sender, spec))
        });
        std::thread::sleep(Duration::from_millis(300));
        for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
            let mut by_mode: Vec<(&str, Requests)> = vec![
                ("off", Requests::default()),
                ("intercept", Requests::default()),
            ];
            for _ in 0..ROUNDS {
                for (mode, all) in &mut by_mode {
                    t.ctl(&["mode", t.srv_if(), mode]);
                    let r = t
                        .lab
                        .requests(
                            SocketAddr::new(ip, PORT),
                            Shape::One,
                            PER_ROUND,
                            Duration::from_secs(3),
                        )
                        .expect("requests");
                    all.latencies.extend(r.latencies);
                    all.failures += r.failures;
                    all.retrans = TcpRetrans {
                        retrans_segs: all.retrans.retrans_segs + r.retrans.retrans_segs,
                        timeouts: all.retrans.timeouts + r.retrans.timeouts,
                    };
                }
            }
            let off = by_mode[0].1.median();
            for (mode, r) in &by_mode {
                println!(
                    "{:<10} {:<6} {:<10} {:>9.3} {:>9.3} {:>8} {:>8} {:>7.2}",
                    if rate == 0 {
                        "none".to_owned()
                    } else {
                        format!("{}k SYN/s", rate / 1000)
                    },
                    if ip.is_ipv4() { "IPv4" } else { "IPv6" },
                    mode,
                    ms(r.median()),
                    ms(r.percentile(99)),
                    format!("{}/{}", r.latencies.len(), r.latencies.len() + r.failures),
                    r.retrans.retrans_segs,
                    r.median().as_secs_f64() / off.as_secs_f64()
                );
            }
        }
        if let Some(f) = flooder {
            if f.is_finished() {
                println!("(the flood ended before the measurement: rate not sustained)");
            }
            let _ = f.join();
        }
    }
}
