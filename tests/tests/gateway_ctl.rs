//! Gateway mode's controller (issue 13): `attach CLIENT --gateway SERVER` puts one program on
//! both interfaces and `detach` takes it off both; `status` reports a dead server-facing half;
//! what a gateway needs is refused with what to do; the sweep frees idle splices; watch mode's
//! timeouts reset both ends over the wire.
use std::{
    io::Read as _,
    net::IpAddr,
    sync::mpsc,
    time::{Duration, Instant},
};

use intercept_common::{
    Counter,
    config::{FlowKey, HalfOpen, flags},
    cookie::words_of,
    parse::tcp_flags,
    splice::{self, Splice},
};
use intercept_ctl::{
    gateway,
    loader::{AttachGuard, AttachMode},
    netns::{Netns, VethPair},
    pins::PinDir,
    watchctl::{WatchMaps, Watcher, monotonic_ns},
};
use intercept_tests::{ctl, ctl_ok, require_root, stderr};

/// A namespace with two veth pairs inside it: `xg0` (clients' side) and `xg2` (servers' side),
/// their peers `xg1` and `xg3`, all up.
fn gateway_ns(tag: &str, forwarding: bool) -> Netns {
    let ns = Netns::new(tag).expect("netns");
    for (a, b) in [("xg0", "xg1"), ("xg2", "xg3")] {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])
            .expect("veth");
        for d in [a, b] {
            ns.ip(&["link", "set", d, "up"]).expect("up");
        }
    }
    if forwarding {
        ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
            .expect("ip_forward");
    }
    ns
}

/// Which of the namespace's interfaces run an XDP program (per `ip -d link show`).
fn with_xdp(ns: &Netns) -> Vec<String> {
    let out = ns.ip(&["-d", "-o", "link", "show"]).expect("ip link");
    out.lines()
        .filter(|l| l.contains("prog/xdp"))
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
        .collect()
}

fn status(ns: &Netns) -> (std::process::Output, serde_json::Value) {
    let o = ctl(&["--netns", ns.name(), "--json", "status", "xg0"]);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}): {}", stderr(&o)));
    (o, v)
}

#[test]
fn gateway_attach_status_sweep_detach() {
    require_root("gateway_attach_status_sweep_detach");
    let ns = gateway_ns("gw", true);
    let o = ctl(&[
        "--netns",
        ns.name(),
        "--json",
        "attach",
        "xg0",
        "--gateway",
        "xg2",
    ]);
    assert!(o.status.success(), "attach --gateway: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("attach --json");
    assert_eq!(
        (
            v["program"].as_str(),
            v["engine"].as_str(),
            v["server_interface"].as_str()
        ),
        (Some("xdp_gateway"), Some("splice"), Some("xg2")),
        "{v}"
    );
    let mut on = with_xdp(&ns);
    on.sort();
    assert_eq!(on, ["xg0", "xg2"], "the program runs on both interfaces");
    let (o, v) = status(&ns);
    assert!(o.status.success(), "status: {}", stderr(&o));
    assert_eq!(v["healthy"], true, "{v}");
    assert_eq!(v["engine"], "splice", "{v}");
    assert_eq!(
        v["tc_handoff_attached"], false,
        "no TC program on a gateway: {v}"
    );
    assert_eq!(v["socket_table"]["tracepoint_attached"], false, "{v}");
    assert_eq!(v["gateway"]["server_interface"], "xg2", "{v}");
    assert_eq!(v["gateway"]["server_link_attached"], true, "{v}");
    assert_eq!(v["gateway"]["splice_entries"], 0, "{v}");
    assert_eq!(v["health"]["server"]["interface"], "xg2", "{v}");
    // Without `run`, nothing frees splices: said, with the command to run.
    let warned = format!("run `intercept-ctl --netns {} run xg0`", ns.name());
    assert!(
        v["limitations"].as_array().is_some_and(|l| l
            .iter()
            .any(|x| x.as_str().is_some_and(|x| x.contains(&warned)))),
        "{v}"
    );
    assert!(stderr(&o).contains(&warned), "{}", stderr(&o));

    // The configuration says gateway; the sweep frees a lingered closed splice and keeps a
    // fresh open one, counting what it freed.
    let name = ns.name().to_owned();
    let freed = ns
        .spawn(move || {
            let cfg = intercept_ctl::control::Maps::open("xg0", Some(&name))
                .expect("maps")
                .config()
                .expect("config");
            assert!(cfg.flags & flags::GATEWAY != 0, "GATEWAY flag unset");
            let mut table = gateway::open_splice("xg0", Some(&name)).expect("SPLICE");
            let now = monotonic_ns();
            let key = |port| FlowKey {
                saddr: words_of("198.18.0.10".parse().unwrap()),
                daddr: words_of("198.18.1.2".parse().unwrap()),
                sport: port,
                dport: 80,
            };
            let old = Splice {
                state: splice::CLOSED,
                created_ns: now - splice::LINGER_NS - 2_000_000_000,
                last_ns: now - splice::LINGER_NS - 1_000_000_000,
                ..Splice::default()
            };
            let fresh = Splice {
                state: splice::OPEN,
                created_ns: now,
                last_ns: now,
                ..Splice::default()
            };
            table.insert(&key(40_000), &old, 0).expect("insert");
            table.insert(&key(40_001), &fresh, 0).expect("insert");
            let freed = gateway::sweep_pinned("xg0", Some(&name)).expect("sweep");
            assert!(
                table.get(&key(40_001), 0).is_ok(),
                "the sweep freed an open splice seen just now"
            );
            assert!(
                table.get(&key(40_000), 0).is_err(),
                "the sweep kept a closed splice past its linger"
            );
            freed
        })
        .join()
        .expect("sweep thread");
    assert_eq!(freed, 1);
    let (_, v) = status(&ns);
    assert_eq!(v["gateway"]["splice_by_state"]["open"], 1, "{v}");
    assert_eq!(v["gateway"]["splice_entries"], 1, "{v}");
    let stats = ctl_ok(&["--netns", ns.name(), "--json", "stats", "xg0"]);
    let freed_counter = intercept_tests::counters_from_json(&stats)
        .into_iter()
        .find(|(c, _)| *c == Counter::GwFreed)
        .map(|(_, n)| n);
    assert_eq!(freed_counter, Some(1), "gw_freed counts the sweep: {stats}");

    let pin = PinDir::new(Some(ns.name()), "xg0");
    assert!(pin.path().join(gateway::SERVER_LINK_PIN).exists());
    let o = ctl(&["--netns", ns.name(), "detach", "xg0"]);
    assert!(o.status.success(), "detach: {}", stderr(&o));
    assert!(
        !pin.path().exists(),
        "pins left behind at {}",
        pin.path().display()
    );
    assert!(
        with_xdp(&ns).is_empty(),
        "XDP left on {:?} after detach",
        with_xdp(&ns)
    );
}

#[test]
fn gateway_with_a_recreated_server_interface_is_reported_dead() {
    require_root("gateway_with_a_recreated_server_interface_is_reported_dead");
    let ns = gateway_ns("gwdead", true);
    let _ = ctl_ok(&["--netns", ns.name(), "attach", "xg0", "--gateway", "xg2"]);
    ns.ip(&["link", "del", "xg2"]).expect("del");
    ns.ip(&["link", "add", "xg2", "type", "veth", "peer", "name", "xg3"])
        .expect("re-create");
    ns.ip(&["link", "set", "xg2", "up"]).expect("up");
    let (o, v) = status(&ns);
    assert_eq!(
        o.status.code(),
        Some(3),
        "a dead gateway exits 3: {}",
        stderr(&o)
    );
    assert_eq!(v["healthy"], false, "{v}");
    assert_eq!(v["health"]["problem"], "server_link_detached", "{v}");
    assert_eq!(v["gateway"]["server_link_attached"], false, "{v}");
    let fix = format!(
        "intercept-ctl --netns {} attach xg0 --gateway xg2",
        ns.name()
    );
    assert!(
        stderr(&o).contains(&fix),
        "says how to fix it ({fix}): {}",
        stderr(&o)
    );
    // A verb writing the maps refuses too.
    let o = ctl(&["--netns", ns.name(), "mode", "xg0", "watch"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // The fix works: the dead pins go, both interfaces run the new program.
    let o = ctl(&["--netns", ns.name(), "attach", "xg0", "--gateway", "xg2"]);
    assert!(
        o.status.success() && stderr(&o).contains("dead attachment"),
        "attach over the dead gateway: {}",
        stderr(&o)
    );
    let (o, v) = status(&ns);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(v["healthy"], true, "{v}");
    let mut on = with_xdp(&ns);
    on.sort();
    assert_eq!(on, ["xg0", "xg2"]);
    let _ = ctl_ok(&["--netns", ns.name(), "detach", "xg0"]);
    assert_eq!(with_xdp(&ns), Vec::<String>::new());
}

#[test]
fn gateway_attach_refusals_say_what_to_do() {
    require_root("gateway_attach_refusals_say_what_to_do");
    let ns = gateway_ns("gwno", false);
    let pin = PinDir::new(Some(ns.name()), "xg0");
    let refused = |args: &[&str], want: &str| {
        let mut a = vec!["--netns", ns.name(), "attach"];
        a.extend_from_slice(args);
        let o = ctl(&a);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{args:?} must fail: {}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains(want),
            "{args:?} should say '{want}': {}",
            stderr(&o)
        );
        assert!(!pin.path().exists(), "{args:?} left pins behind");
        assert!(with_xdp(&ns).is_empty(), "{args:?} left XDP attached");
    };
    refused(&["xg0", "--gateway", "xg2"], "net.ipv4.ip_forward=1");
    ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .expect("ip_forward");
    refused(&["xg0", "--gateway", "xg0"], "cannot face both");
    refused(
        &["xg0", "--gateway", "nope0"],
        "no network interface named 'nope0'",
    );
    refused(
        &["xg0", "--gateway", "xg2", "--engine", "kfunc"],
        "drop `--engine kfunc`",
    );
    refused(&["xg0", "--engine", "splice"], "--gateway SERVER_IFACE");
    refused(
        &["xg0", "--gateway", "xg2", "--program", "pass"],
        "drop `--program pass`",
    );
    // A server-facing interface with an attachment of its own.
    let _ = ctl_ok(&["--netns", ns.name(), "attach", "xg2", "--program", "pass"]);
    let o = ctl(&["--netns", ns.name(), "attach", "xg0", "--gateway", "xg2"]);
    assert!(
        !o.status.success() && stderr(&o).contains("detach xg2"),
        "{}",
        stderr(&o)
    );
    let _ = ctl_ok(&["--netns", ns.name(), "detach", "xg2"]);
}

/// A raw TCP socket of `ns` (IPv4 or IPv6) that hands its reader the first RST from port
/// `sport` to port `dport`: (flags, seq, ack), or `None` after 10 s.
fn rst_catcher(
    ns: &Netns,
    v6: bool,
    sport: u16,
    dport: u16,
    ready: mpsc::Sender<()>,
) -> std::thread::JoinHandle<Option<(u8, u32, u32)>> {
    ns.spawn(move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let mut s = Socket::new(domain, Type::RAW, Some(Protocol::TCP)).expect("raw socket");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        ready.send(()).expect("ready");
        let until = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        while Instant::now() < until {
            let Ok(n) = s.read(&mut buf) else { continue };
            // IPv4 raw sockets see the IP header, IPv6 ones only the payload.
            let off = if v6 { 0 } else { usize::from(buf[0] & 0xf) * 4 };
            let t = &buf[off..n];
            if t.len() < 20 {
                continue;
            }
            let be16 = |i: usize| u16::from_be_bytes([t[i], t[i + 1]]);
            let be32 = |i: usize| u32::from_be_bytes(t[i..i + 4].try_into().unwrap());
            if be16(0) == sport && be16(2) == dport && t[13] & tcp_flags::RST != 0 {
                return Some((t[13], be32(4), be32(8)));
            }
        }
        None
    })
}

/// Watch mode on a gateway: a handshake past the timeout is reset on both ends, over the wire,
/// with the numbers each end accepts, untracked and counted (IPv4 and IPv6).
#[test]
fn gateway_watch_timeouts_reset_both_ends() {
    require_root("gateway_watch_timeouts_reset_both_ends");
    let (cli, gw, srv) = (
        Netns::new("rc").expect("netns"),
        Netns::new("rg").expect("netns"),
        Netns::new("rs").expect("netns"),
    );
    let front = VethPair::new(
        &gw,
        &["198.18.0.1/24", "2001:db8::1/64"],
        &cli,
        &["198.18.0.10/24", "2001:db8::10/64"],
    )
    .expect("veth");
    let back = VethPair::new(
        &gw,
        &["198.18.1.1/24", "2001:db8:1::1/64"],
        &srv,
        &["198.18.1.2/24", "2001:db8:1::2/64"],
    )
    .expect("veth");
    cli.ip(&["route", "add", "default", "via", "198.18.0.1"])
        .expect("route");
    cli.ip(&["-6", "route", "add", "default", "via", "2001:db8::1"])
        .expect("route");
    srv.ip(&["route", "add", "default", "via", "198.18.1.1"])
        .expect("route");
    srv.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"])
        .expect("route");
    gw.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .expect("forwarding");
    gw.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])
        .expect("forwarding");
    let _att = AttachGuard::gateway(&front.a, &back.a, Some(gw.name()), AttachMode::Generic)
        .expect("attach --gateway");
    for (c, s, sport, answered) in [
        ("198.18.0.10", "198.18.1.2", 40_000u16, 1u32),
        ("2001:db8::10", "2001:db8:1::2", 40_001, 0),
    ] {
        let v6 = c.contains(':');
        let (c_ip, s_ip): (IpAddr, IpAddr) = (c.parse().unwrap(), s.parse().unwrap());
        let key = FlowKey {
            saddr: words_of(c_ip),
            daddr: words_of(s_ip),
            sport,
            dport: 80,
        };
        let e = HalfOpen {
            first_seen_ns: monotonic_ns() - 5_000_000_000,
            isn: 0x1000_0000,
            syns: 1,
            server_isn: 0x7000_0000,
            answered,
            ..HalfOpen::default()
        };
        let (tx, rx) = mpsc::channel();
        let at_server = rst_catcher(&srv, v6, sport, 80, tx.clone());
        let at_client = rst_catcher(&cli, v6, 80, sport, tx);
        rx.recv().expect("ready");
        rx.recv().expect("ready");
        let (iface, name) = (front.a.clone(), gw.name().to_owned());
        let t = gw
            .spawn(move || {
                let mut w = WatchMaps::open(&iface, Some(&name)).expect("watch maps");
                w.update_watch(|w| w.timeout_ms = 1_000).expect("timeout");
                w.half_open.insert(&key, &e, 0).expect("track");
                let before = w.counters().expect("counters");
                let mut watcher = Watcher::open(&iface, Some(&name)).expect("watcher");
                let t = watcher.tick().expect("tick");
                assert!(
                    w.half_open.get(&key, 0).is_err(),
                    "{c} -> {s}: still tracked after its resets"
                );
                let after = w.counters().expect("counters");
                let d = |c| after.get(c) - before.get(c);
                assert_eq!(
                    (d(Counter::HalfOpenTimedOut), d(Counter::GwWatchReset)),
                    (1, 2),
                    "{c} -> {s}: counters"
                );
                t
            })
            .join()
            .expect("tick thread");
        assert_eq!(
            (t.resets_sent, t.reset_failures, t.timed_out),
            (2, 0, 1),
            "{c} -> {s}: {t:?}"
        );
        let got = at_server.join().expect("server catcher");
        assert_eq!(
            got,
            Some((tcp_flags::RST, e.isn + 1, 0)),
            "{c} -> {s}: the server gets a RST at the client's ISN + 1"
        );
        let seq = if answered != 0 { e.server_isn + 1 } else { 0 };
        let got = at_client.join().expect("client catcher");
        assert_eq!(
            got,
            Some((tcp_flags::RST | tcp_flags::ACK, seq, e.isn + 1)),
            "{c} -> {s}: the client gets a RST|ACK of its SYN"
        );
    }
}
