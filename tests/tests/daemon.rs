//! The `run` daemon: Prometheus metrics that match `stats`, protection that survives SIGKILL and
//! is adopted on restart, SIGHUP reloads, and live changes that never break legitimate traffic.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use intercept_common::{Counter, parse::tcp_flags};
use intercept_ctl::lab::{FloodSpec, SERVER_V4, SERVER_V6, flood};
use intercept_tests::{
    Daemon, InterceptLab, counters_from_json, echo_server, ping, require_root, status,
};

const PORT: u16 = 8080;

fn scrape(t: &InterceptLab, port: u16) -> String {
    t.lab
        .server
        .spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            r
        })
        .join()
        .unwrap()
}

#[test]
fn prometheus_scrape_is_well_formed_and_matches_stats() {
    require_root("prometheus_scrape_is_well_formed_and_matches_stats");
    let t = InterceptLab::new(PORT);
    let _d = Daemon::start_with(t.srv(), t.srv_if(), &["--metrics-listen", "127.0.0.1:9720"]);
    let (l4, l6) = t.lab.listen(PORT).unwrap();
    echo_server(l4);
    echo_server(l6);
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let mut c = t
            .lab
            .connect(SocketAddr::new(ip, PORT), Duration::from_secs(3))
            .unwrap();
        ping(&mut c, "hello");
    }
    let before = counters_from_json(&t.ctl(&["--json", "stats", t.srv_if()]));
    let resp = scrape(&t, 9720);
    let after = counters_from_json(&t.ctl(&["--json", "stats", t.srv_if()]));
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("text/plain; version=0.0.4"),
        "{head}"
    );
    let mut seen = std::collections::HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP intercept_") || rest.starts_with("TYPE intercept_"),
                "bad comment line: {line}"
            );
            continue;
        }
        // name{labels} value
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "bad metric name: {line}"
        );
        assert!(
            series.contains(&format!("interface=\"{}\"", t.srv_if())),
            "missing label: {line}"
        );
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        seen.insert(name.to_owned(), v);
    }
    for ((c, lo), (_, hi)) in before.iter().zip(&after) {
        let name = format!("intercept_{}_total", c.name());
        let v = *seen
            .get(&name)
            .unwrap_or_else(|| panic!("{name} missing from the scrape"));
        assert!(
            (*lo as f64) <= v && v <= (*hi as f64),
            "{name} = {v}, stats said {lo}..{hi}"
        );
    }
    assert_eq!(seen["intercept_handed_off_total"], 2.0);
    assert_eq!(seen["intercept_scrape_errors_total"], 0.0);
    assert_eq!(seen["intercept_attachment_healthy"], 1.0);
    assert!(seen.contains_key("intercept_half_open") && seen.contains_key("intercept_mode"));
}

#[test]
fn protection_survives_sigkill_and_a_restart_adopts_it() {
    require_root("protection_survives_sigkill_and_a_restart_adopts_it");
    let t = InterceptLab::new(PORT);
    let (l4, l6) = t.lab.listen(PORT).unwrap();
    echo_server(l4);
    echo_server(l6);
    let d = Daemon::start(t.srv(), t.srv_if());
    let id = status(&t)["program_id"].as_u64().expect("program id");
    let sender = t.lab.raw_sender().unwrap();
    let flooder = std::thread::spawn(move || {
        flood(
            &sender,
            FloodSpec {
                target: SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
                count: 20_000,
                max_time: Duration::from_secs(4),
                rate: 5_000,
                flags: tcp_flags::SYN,
                payload: 0,
            },
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    d.signal(libc::SIGKILL);
    let at_kill = counters_from_json(&t.ctl(&["--json", "stats", t.srv_if()]));
    std::thread::sleep(Duration::from_millis(700));
    let later = counters_from_json(&t.ctl(&["--json", "stats", t.srv_if()]));
    let get = |c: &[(Counter, u64)], k: Counter| c.iter().find(|(x, _)| *x == k).unwrap().1;
    assert!(
        get(&later, Counter::SynAckSent) > get(&at_kill, Counter::SynAckSent) + 1000,
        "XDP keeps answering the flood with the daemon dead"
    );
    let mut c = t
        .lab
        .connect(
            SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
            Duration::from_secs(3),
        )
        .expect("legitimate client during the flood, daemon dead");
    ping(&mut c, "still here");
    let _d2 = Daemon::start(t.srv(), t.srv_if());
    let s = status(&t);
    assert_eq!(
        s["program_id"].as_u64(),
        Some(id),
        "the restarted daemon adopts the same program: {s}"
    );
    assert_eq!(s["controller_running"], true);
    let sent = flooder.join().unwrap().unwrap();
    let end = counters_from_json(&t.ctl(&["--json", "stats", t.srv_if()]));
    assert!(
        get(&end, Counter::SynAckSent) >= get(&later, Counter::SynAckSent),
        "counters continue across the restart"
    );
    assert!(
        get(&end, Counter::SynAckSent) >= sent,
        "every flood SYN answered: {sent} sent"
    );
    ping(&mut c, "after restart");
}

/// While a client holds a connection and opens new ones: mode changes in every direction, scope
/// removal and re-adding, a secret rotation, and a SIGHUP reload. Nothing legitimate breaks.
#[test]
fn live_changes_never_break_legitimate_connections() {
    require_root("live_changes_never_break_legitimate_connections");
    let t = InterceptLab::new(PORT);
    let cfg = std::env::temp_dir().join(format!("xi-live-{}.toml", std::process::id()));
    std::fs::write(&cfg, "mode = \"intercept\"\n[[protect]]\nprefix = \"198.18.0.1\"\nports = [8080]\n[[protect]]\nprefix = \"2001:db8::1\"\nports = [8080]\n").unwrap();
    let d = Daemon::start_with(t.srv(), t.srv_if(), &["--config", cfg.to_str().unwrap()]);
    let (l4, l6) = t.lab.listen(PORT).unwrap();
    echo_server(l4);
    echo_server(l6);
    let mut held4 = t
        .lab
        .connect(
            SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
            Duration::from_secs(3),
        )
        .unwrap();
    let mut held6 = t
        .lab
        .connect(
            SocketAddr::new(IpAddr::V6(SERVER_V6), PORT),
            Duration::from_secs(3),
        )
        .unwrap();
    let ifc = t.srv_if().to_owned();
    let steps: Vec<Vec<&str>> = vec![
        vec!["mode", &ifc, "watch"],
        vec!["mode", &ifc, "auto"],
        vec!["mode", &ifc, "intercept"],
        vec!["scope", "del", &ifc, "198.18.0.1", "--ports", "8080"],
        vec!["scope", "add", &ifc, "198.18.0.0/24", "--ports", "8080"],
        vec!["rotate-secret", &ifc],
        vec!["mode", &ifc, "off"],
        vec!["mode", &ifc, "intercept"],
    ];
    let start = Instant::now();
    for (i, step) in steps.iter().enumerate() {
        t.ctl(step);
        ping(&mut held4, &format!("held v4 after {step:?}"));
        ping(&mut held6, &format!("held v6 after {step:?}"));
        for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
            let mut c = t
                .lab
                .connect(SocketAddr::new(ip, PORT), Duration::from_secs(3))
                .unwrap_or_else(|e| {
                    panic!("new connection to {ip} after step {i} {step:?}: {e:#}")
                });
            ping(&mut c, "new");
        }
    }
    // SIGHUP: the file again (scope back to the two hosts), applied by the running daemon.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(i32::try_from(d.pid()).unwrap(), libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let scope: serde_json::Value =
            serde_json::from_str(&t.ctl(&["--json", "scope", "list", &ifc])).unwrap();
        if scope["scope"].as_array().unwrap().len() == 2
            && scope.to_string().contains("198.18.0.1/32")
        {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {scope}");
        std::thread::sleep(Duration::from_millis(100));
    }
    ping(&mut held4, "after reload");
    let c = counters_from_json(&t.ctl(&["--json", "stats", &ifc]));
    let get = |k: Counter| c.iter().find(|(x, _)| *x == k).unwrap().1;
    assert_eq!(
        (
            get(Counter::AckBadMac),
            get(Counter::AckNoListener),
            get(Counter::HandoffFailed)
        ),
        (0, 0, 0),
        "{c:?}"
    );
    eprintln!("{} live changes in {:?}", steps.len(), start.elapsed());
    let _ = std::fs::remove_file(&cfg);
}

/// A client that connects to the metrics endpoint and sends nothing holds up only itself: a
/// scrape made meanwhile is answered at once.
#[test]
fn a_scrape_held_open_does_not_block_another() {
    require_root("a_scrape_held_open_does_not_block_another");
    let t = InterceptLab::new(PORT);
    let _d = Daemon::start_with(t.srv(), t.srv_if(), &["--metrics-listen", "127.0.0.1:9721"]);
    let idle = t
        .lab
        .server
        .spawn(|| TcpStream::connect(("127.0.0.1", 9721)).expect("idle connection"))
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let resp = scrape(&t, 9721);
    let took = start.elapsed();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        took < Duration::from_millis(1_000),
        "the scrape waited {took:?} behind an idle connection"
    );
    drop(idle);
}
