//! Watch mode end to end: SYNs reach the real server, half-open handshakes are tracked, counted
//! exactly and closed on the server after the watch timeout; thresholds switch `auto` to
//! intercept under a flood and back after it, while legitimate clients keep connecting.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use intercept_common::{
    Counter::*,
    config::CLOSE_GRACE_NS,
    craft::{TcpSegment, tcp_frame},
    parse::tcp_flags,
};
use intercept_ctl::{
    lab::{
        CLIENT_V4, CLIENT_V6, Capture, FloodSpec, Lab, RawSender, SERVER_V4, SERVER_V6, flood,
        syn_recv_count,
    },
    sockdiag::SockDiag,
    watchctl::{WatchMaps, Watcher},
};
use intercept_tests::{
    Daemon, HoldAcks, InterceptLab, abort, echo_server, flow_key, ping, require_root, status,
};

const PORT: u16 = 8080;

/// The tests of this file that flood or time a reaction take turns: two floods on the two cores
/// of the development VM would slow each other's controller past what they measure.
static ONE_FLOOD_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn flood_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_FLOOD_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let limit = intercept_tests::scaled(limit);
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {limit:?}");
}

/// Thresholds sized for a lab: aggressive above 50 half-open or 200 SYNs in a 3 s window, calm
/// below 20 and 100; a 4 s watch timeout.
fn lab_thresholds(t: &InterceptLab) {
    t.ctl(&[
        "thresholds",
        t.srv_if(),
        "--watch-timeout",
        &secs(4),
        "--max-incomplete-high",
        "50",
        "--max-incomplete-low",
        "20",
        "--one-minute-high",
        "200",
        "--one-minute-low",
        "100",
        "--rate-window",
        "3",
    ]);
}

/// `n` seconds times the tests' time scale (see `intercept_tests::time_scale`), for the watch
/// timeouts a test configures: what it observes before they expire takes that much longer
/// under emulation. (Not the rate window: the SYNs a window counts would scale with it.)
fn secs(n: u32) -> String {
    (n * intercept_tests::time_scale()).to_string()
}

/// A bounded flood that makes the lab aggressive: 3000 spoofed SYNs at 1000/s.
const SYN_FLOOD: FloodSpec = FloodSpec {
    target: SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
    count: 3000,
    max_time: Duration::from_secs(6),
    rate: 1000,
    flags: tcp_flags::SYN,
    payload: 0,
};

#[test]
fn half_open_connections_are_counted_exactly_and_closed_after_the_timeout() {
    require_root("half_open_connections_are_counted_exactly_and_closed_after_the_timeout");
    // Not alongside a flood: what it counts must be seen before the timeout closes it.
    let _turn = flood_turn();
    let t = InterceptLab::watching(PORT);
    t.ctl(&["thresholds", t.srv_if(), "--watch-timeout", &secs(3)]);
    let _d = Daemon::start(t.srv(), t.srv_if());
    let (l4, l6) = t.lab.listen(PORT).expect("listen");
    echo_server(l4);
    echo_server(l6);
    // A real client connects normally; the server's kernel sees its SYN.
    let cap = Capture::start(&t.lab.server, t.srv_if()).expect("capture");
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let mut c = t
            .lab
            .connect(SocketAddr::new(ip, PORT), Duration::from_secs(3))
            .expect("connect in watch mode");
        c.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        c.read_exact(&mut b).unwrap();
    }
    let seen = cap.finish();
    assert_eq!(
        seen.syn, 2,
        "watch mode passes SYNs to the server: {seen:?}"
    );
    assert_eq!(
        seen.syn_ack_out, 2,
        "and the server answers them itself: {seen:?}"
    );
    // A slow, bounded stream of spoofed SYNs: each leaves a SYN_RECV entry on the server.
    let before = t.stats();
    let sender = t.lab.raw_sender().unwrap();
    let n = flood(
        &sender,
        FloodSpec {
            target: SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
            count: 20,
            max_time: Duration::from_secs(5),
            rate: 40,
            flags: tcp_flags::SYN,
            payload: 0,
        },
    )
    .unwrap();
    assert_eq!(n, 20);
    wait_for(
        "20 half-open in the controller's count",
        Duration::from_secs(2),
        || status(&t)["watch"]["half_open"] == 20,
    );
    assert_eq!(
        syn_recv_count(&t.lab.server).unwrap(),
        20,
        "the server holds 20 SYN_RECV"
    );
    let conns: serde_json::Value =
        serde_json::from_str(&t.ctl(&["--json", "connections", t.srv_if()])).unwrap();
    assert_eq!(
        conns["connections"].as_array().unwrap().len(),
        20,
        "{conns}"
    );
    assert_eq!(conns["connections"][0]["state"], "SYNRCVD");
    // After the (3 s) watch timeout the controller closes them on the server.
    wait_for(
        "SYN_RECV entries closed after the timeout",
        Duration::from_secs(5),
        || syn_recv_count(&t.lab.server).unwrap() == 0,
    );
    wait_for("the controller counts them", Duration::from_secs(2), || {
        status(&t)["watch"]["half_open"] == 0
    });
    let d = t.stats().delta(&before);
    assert_eq!(
        (
            d.get(HalfOpenNew),
            d.get(HalfOpenTimedOut),
            d.get(HalfOpenCompleted)
        ),
        (20, 20, 0),
        "{d:?}"
    );
    // Legitimate clients completed (2 above) and are not harmed.
    let mut c = t
        .lab
        .connect(
            SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
            Duration::from_secs(3),
        )
        .expect("connect after reaping");
    c.write_all(b"ok").unwrap();
}

#[test]
fn a_flood_switches_auto_to_intercept_and_back() {
    require_root("a_flood_switches_auto_to_intercept_and_back");
    let _turn = flood_turn();
    let t = InterceptLab::new(PORT);
    t.ctl(&["mode", t.srv_if(), "auto"]);
    lab_thresholds(&t);
    let _d = Daemon::start(t.srv(), t.srv_if());
    let (l4, l6) = t.lab.listen(PORT).expect("listen");
    echo_server(l4);
    echo_server(l6);
    assert_eq!(status(&t)["active_mode"], "watch");
    // Legitimate clients throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let ns = t.lab.client.name().to_owned();
        std::thread::spawn(move || {
            intercept_ctl::netns::enter(&ns).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let ip = if i % 2 == 0 {
                    IpAddr::V4(SERVER_V4)
                } else {
                    IpAddr::V6(SERVER_V6)
                };
                let r = (|| -> std::io::Result<()> {
                    let mut c = std::net::TcpStream::connect_timeout(
                        &SocketAddr::new(ip, PORT),
                        Duration::from_secs(3),
                    )?;
                    c.set_read_timeout(Some(Duration::from_secs(3)))?;
                    c.write_all(b"x")?;
                    let mut b = [0u8; 1];
                    c.read_exact(&mut b)
                })();
                if r.is_ok() {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // A bounded flood: 3000 spoofed SYNs at 1000/s.
    let sender = t.lab.raw_sender().unwrap();
    let flood_start = Instant::now();
    let flooder = std::thread::spawn(move || flood(&sender, SYN_FLOOD));
    // What the status said as it switched (a later call may already see the flood's end where
    // everything runs slower).
    let mut s = serde_json::Value::Null;
    wait_for("auto switches to intercept", Duration::from_secs(2), || {
        s = status(&t);
        s["active_mode"] == "intercept"
    });
    let switched = flood_start.elapsed();
    assert_eq!(s["watch"]["aggressive"], true, "{s}");
    let sent = flooder.join().unwrap().unwrap();
    let flood_end = Instant::now();
    // Back to watch once both counts are below their low marks (rate window 3 s, half-open
    // reaped after the halved 4 s timeout).
    wait_for("auto returns to watch", Duration::from_secs(12), || {
        status(&t)["active_mode"] == "watch"
    });
    let back = flood_end.elapsed();
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let s = status(&t);
    eprintln!(
        "flood of {sent}: intercept after {switched:?}, back to watch {back:?} after the flood; clients ok {} failed {}; {s}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(
        switched < intercept_tests::scaled(Duration::from_millis(1200)),
        "switch took {switched:?}"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "every legitimate connection succeeded"
    );
    assert!(ok.load(Ordering::Relaxed) >= 20);
    assert_eq!(s["watch"]["aggressive"], false);
    assert_eq!(s["watch"]["last_cause"], "below low thresholds");
    let d = t.stats();
    assert!(
        d.get(SynAckSent) > 1000,
        "intercept answered most of the flood: {d:?}"
    );
}

/// Connects from the client namespace from `port` (SO_REUSEADDR, so an earlier socket of the
/// same port that was aborted does not stand in the way).
fn connect_from_port(lab: &Lab, server: IpAddr, port: u16) -> std::net::TcpStream {
    lab.client
        .spawn(move || -> std::io::Result<std::net::TcpStream> {
            let client = if server.is_ipv4() {
                IpAddr::V4(CLIENT_V4)
            } else {
                IpAddr::V6(CLIENT_V6)
            };
            let s = socket2::Socket::new(
                socket2::Domain::for_address(SocketAddr::new(server, PORT)),
                socket2::Type::STREAM,
                None,
            )?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::new(client, port).into())?;
            s.connect_timeout(
                &SocketAddr::new(server, PORT).into(),
                Duration::from_secs(3),
            )?;
            Ok(s.into())
        })
        .join()
        .expect("connect thread")
        .unwrap_or_else(|e| panic!("connect from port {port} to {server}: {e}"))
}

/// SOCK_DESTROY names the socket by the cookie the state check reported: the cookie of an
/// earlier request socket of the same 4-tuple destroys nothing, the current one's closes it.
#[test]
fn sock_destroy_closes_only_the_socket_its_cookie_names() {
    require_root("sock_destroy_closes_only_the_socket_its_cookie_names");
    let lab = Lab::new().expect("lab");
    let (l4, l6) = lab.listen(PORT).expect("listen");
    echo_server(l4);
    echo_server(l6);
    let mut diag = lab
        .server
        .spawn(SockDiag::open)
        .join()
        .expect("sock_diag thread")
        .expect("sock_diag in the server namespace");
    let _hold = HoldAcks::on_port(&lab.client, PORT);
    for (ip, port) in [
        (IpAddr::V4(SERVER_V4), 40_100),
        (IpAddr::V6(SERVER_V6), 40_101),
    ] {
        // Handshake 1, held half-open on the server, closed there by its cookie.
        let c = connect_from_port(&lab, ip, port);
        let key = flow_key(c.local_addr().unwrap(), c.peer_addr().unwrap());
        let first = diag
            .half_open(&key)
            .expect("state")
            .unwrap_or_else(|| panic!("{ip}: handshake 1 half-open on the server"));
        assert!(
            diag.destroy(&key, first).expect("destroy"),
            "{ip}: handshake 1 closed by its cookie"
        );
        // The flow has no socket now: the kernel's lookup falls back to the listener, which its
        // cookie must not let the destroy reach (handshake 2 below needs the listener).
        assert!(
            !diag.destroy(&key, first).expect("destroy"),
            "{ip}: nothing to destroy once handshake 1 is closed"
        );
        abort(c);
        // Handshake 2 of the same 4-tuple: a new request socket, with a cookie of its own.
        let c = connect_from_port(&lab, ip, port);
        let second = diag
            .half_open(&key)
            .expect("state")
            .unwrap_or_else(|| panic!("{ip}: handshake 2 half-open on the server"));
        assert_ne!(
            first, second,
            "{ip}: each request socket has its own cookie"
        );
        assert!(
            !diag.destroy(&key, first).expect("destroy"),
            "{ip}: handshake 1's cookie destroys nothing"
        );
        assert_eq!(
            syn_recv_count(&lab.server).unwrap(),
            1,
            "{ip}: handshake 2 is still half-open"
        );
        assert!(
            diag.destroy(&key, second).expect("destroy"),
            "{ip}: handshake 2 closed by its cookie"
        );
        assert_eq!(
            syn_recv_count(&lab.server).unwrap(),
            0,
            "{ip}: nothing left"
        );
        abort(c);
    }
}

/// The controller closes a timed-out half-open connection in two steps: it marks it closing,
/// and from then on the data path drops the client's ACKs of it; a grace later it checks that
/// the server still holds it half-open and destroys it. A client ACK arriving between the check
/// and the destroy would otherwise have the destroy reset the connection the ACK just
/// established (the kernel's lookup cannot tell them apart: the child inherits the request
/// socket's cookie). Here the ACK, with the client's first data, arrives after the mark: it is
/// dropped, the server never establishes the connection, and the close finds the request socket.
#[test]
fn a_handshake_the_controller_is_closing_never_becomes_a_connection_it_resets() {
    require_root("a_handshake_the_controller_is_closing_never_becomes_a_connection_it_resets");
    let t = InterceptLab::watching(PORT);
    t.ctl(&["thresholds", t.srv_if(), "--watch-timeout", "1"]);
    let (l4, l6) = t.lab.listen(PORT).expect("listen");
    for l in [&l4, &l6] {
        l.set_nonblocking(true).unwrap();
    }
    let (iface, ns) = (t.srv_if().to_owned(), t.srv().to_owned());
    let mut w = t
        .lab
        .server
        .spawn(move || Watcher::open(&iface, Some(&ns)))
        .join()
        .expect("watcher thread")
        .expect("the controller's watcher");
    for (ip, listener) in [(IpAddr::V4(SERVER_V4), &l4), (IpAddr::V6(SERVER_V6), &l6)] {
        let before = t.stats();
        let hold = HoldAcks::on_port(&t.lab.client, PORT);
        let mut c = t
            .lab
            .connect(SocketAddr::new(ip, PORT), Duration::from_secs(3))
            .expect("connect");
        std::thread::sleep(Duration::from_millis(1100));
        let tick = w.tick().expect("tick");
        assert_eq!(tick.marked, 1, "{ip}: timed out, marked closing: {tick:?}");
        assert_eq!(syn_recv_count(&t.lab.server).unwrap(), 1, "{ip}: half-open");
        // The client's ACK arrives now, with its first data.
        drop(hold);
        c.write_all(b"late").expect("write");
        wait_for(
            &format!("{ip}: the client's ACK dropped"),
            Duration::from_secs(2),
            || t.stats().delta(&before).get(ClosingDropped) >= 1,
        );
        assert_eq!(
            syn_recv_count(&t.lab.server).unwrap(),
            1,
            "{ip}: still half-open on the server: the ACK did not complete it"
        );
        std::thread::sleep(Duration::from_nanos(CLOSE_GRACE_NS));
        let tick = w.tick().expect("tick");
        assert_eq!(tick.timed_out, 1, "{ip}: closed on the server: {tick:?}");
        assert_eq!(syn_recv_count(&t.lab.server).unwrap(), 0, "{ip}: closed");
        assert!(
            matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{ip}: the server never established the connection"
        );
        let d = t.stats().delta(&before);
        assert_eq!(
            (
                d.get(HalfOpenNew),
                d.get(HalfOpenCompleted),
                d.get(HalfOpenTimedOut)
            ),
            (1, 0, 1),
            "{ip}: new, completed, timed out: {d:?}"
        );
    }
}

/// Sends one spoofed segment from `src` to the lab's IPv4 server.
fn spoof(
    t: &InterceptLab,
    sender: &RawSender,
    src: (Ipv4Addr, u16),
    flags: u8,
    seq: u32,
    ack: u32,
) {
    let mut s = TcpSegment::new(
        IpAddr::V4(src.0),
        IpAddr::V4(SERVER_V4),
        src.1,
        t.port,
        flags,
    );
    (s.seq, s.ack_seq) = (seq, ack);
    sender
        .send(&tcp_frame(&sender.link, &s))
        .unwrap_or_else(|e| panic!("send {flags:#x} from {src:?}: {e}"));
}

/// Only the kernel ends a half-open connection: a spoofed ACK or RST with numbers the kernel
/// rejects leaves it half-open on the server, so it stays counted and is timed out and closed
/// later; an RST within the request's window ends it on the server, and the count follows; a
/// real handshake counts completed.
#[test]
fn a_half_open_connection_counts_until_the_kernel_ends_it() {
    require_root("a_half_open_connection_counts_until_the_kernel_ends_it");
    let t = InterceptLab::watching(PORT);
    t.ctl(&["thresholds", t.srv_if(), "--watch-timeout", &secs(3)]);
    let _d = Daemon::start(t.srv(), t.srv_if());
    let (l4, l6) = t.lab.listen(PORT).expect("listen");
    echo_server(l4);
    echo_server(l6);
    let before = t.stats();
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let mut c = t
            .lab
            .connect(SocketAddr::new(ip, PORT), Duration::from_secs(3))
            .expect("connect");
        ping(&mut c, &format!("real client to {ip}"));
    }
    wait_for(
        "the real handshakes counted completed",
        Duration::from_secs(2),
        || t.stats().delta(&before).get(HalfOpenCompleted) == 2,
    );
    let sender = t.lab.raw_sender().unwrap();
    // Flow A: SYN (ISN 1000), then an ACK of a SYN-ACK the server never sent, then an RST far
    // outside the window: the kernel answers the ACK with a reset and ignores the RST.
    let a = (Ipv4Addr::new(198, 19, 200, 1), 4001);
    spoof(&t, &sender, a, tcp_flags::SYN, 1000, 0);
    std::thread::sleep(Duration::from_millis(100));
    spoof(&t, &sender, a, tcp_flags::ACK, 1001, 0x1234_5678);
    spoof(&t, &sender, a, tcp_flags::RST, 1001 + 100_000_000, 0);
    // Flow B: SYN (ISN 5000), then an RST at the request's next sequence number: the kernel
    // drops the request.
    let b = (Ipv4Addr::new(198, 19, 200, 2), 4002);
    spoof(&t, &sender, b, tcp_flags::SYN, 5000, 0);
    std::thread::sleep(Duration::from_millis(100));
    spoof(&t, &sender, b, tcp_flags::RST, 5001, 0);
    wait_for(
        "flow B counted aborted, flow A still half-open",
        Duration::from_secs(2),
        || {
            let d = t.stats().delta(&before);
            d.get(HalfOpenAborted) == 1 && status(&t)["watch"]["half_open"] == 1
        },
    );
    // Several controller ticks later: still so, and the server agrees.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        status(&t)["watch"]["half_open"],
        1,
        "flow A (spoofed ACK and RST with wrong numbers) is still counted"
    );
    assert_eq!(
        syn_recv_count(&t.lab.server).unwrap(),
        1,
        "the server holds flow A half-open"
    );
    // The watch timeout closes it.
    wait_for(
        "flow A timed out and closed",
        Duration::from_secs(6),
        || status(&t)["watch"]["half_open"] == 0,
    );
    assert_eq!(
        syn_recv_count(&t.lab.server).unwrap(),
        0,
        "nothing half-open on the server"
    );
    let d = t.stats().delta(&before);
    assert_eq!(
        (
            d.get(HalfOpenNew),
            d.get(HalfOpenCompleted),
            d.get(HalfOpenAborted),
            d.get(HalfOpenTimedOut)
        ),
        (4, 2, 1, 1),
        "new, completed, aborted, timed out: {d:?}"
    );
}

/// CPU time (user + system, in clock ticks) of process `pid` so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) start at "state"; utime and stime
    // are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A spoofed SYN flood larger than the half-open table (80,000 SYNs, 65,536 entries): the count
/// stays equal to what the table holds, and once the watch timeout closed everything it is 0, as
/// on the server.
#[test]
fn a_flood_larger_than_the_table_keeps_the_count_exact() {
    require_root("a_flood_larger_than_the_table_keeps_the_count_exact");
    let _turn = flood_turn();
    let t = InterceptLab::watching(PORT);
    // Never aggressive (no displacement), and nothing times out during the flood.
    t.ctl(&[
        "thresholds",
        t.srv_if(),
        "--watch-timeout",
        "120",
        "--max-incomplete-high",
        "1000000000",
        "--max-incomplete-low",
        "999999999",
        "--one-minute-high",
        "1000000000",
        "--one-minute-low",
        "999999999",
    ]);
    let d = Daemon::start(t.srv(), t.srv_if());
    let (l4, l6) = t.lab.listen(PORT).expect("listen");
    echo_server(l4);
    echo_server(l6);
    let before = t.stats();
    let sender = t.lab.raw_sender().unwrap();
    let sent = flood(
        &sender,
        FloodSpec {
            target: SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
            count: 80_000,
            max_time: intercept_tests::scaled(Duration::from_secs(18)),
            rate: 10_000,
            flags: tcp_flags::SYN,
            payload: 0,
        },
    )
    .unwrap();
    assert_eq!(sent, 80_000, "the whole flood was sent");
    let table = || {
        WatchMaps::open(t.srv_if(), Some(t.srv()))
            .expect("watch maps")
            .half_open
            .keys()
            .filter_map(Result::ok)
            .count() as u64
    };
    wait_for("the flood's SYNs all seen", Duration::from_secs(5), || {
        t.stats().delta(&before).get(Syn) >= 80_000
    });
    // The controller's count, written every tick, settles on the counters' and the table's.
    let cpu0 = (cpu_ticks(d.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    // Clock ticks are 1/100 s: ticks per second is the percentage of one core.
    let cpu = (cpu_ticks(d.pid()) - cpu0.0) as f64 / cpu0.1.elapsed().as_secs_f64();
    let counted = status(&t)["watch"]["half_open"]
        .as_u64()
        .expect("half_open");
    let held = table();
    let dl = t.stats().delta(&before);
    eprintln!(
        "after {sent} SYNs: counted {counted}, table {held}, server SYN_RECV {}; controller CPU {cpu:.0}% with the table full; {dl:?}",
        syn_recv_count(&t.lab.server).unwrap()
    );
    assert_eq!(
        counted, held,
        "after {sent} SYNs the half-open count is what the table holds"
    );
    assert!(
        held <= 65_536,
        "the table holds at most its capacity: {held}"
    );
    // The timeouts close every one of them.
    t.ctl(&["thresholds", t.srv_if(), "--watch-timeout", "1"]);
    wait_for(
        "every half-open connection closed",
        Duration::from_secs(30),
        || status(&t)["watch"]["half_open"] == 0,
    );
    assert_eq!(table(), 0, "the table is empty");
    assert_eq!(
        syn_recv_count(&t.lab.server).unwrap(),
        0,
        "nothing half-open on the server"
    );
}

/// A host with `tcp_syncookies=0`, protected in `auto` mode: when a flood switches it to
/// intercept, the switch turns the sysctl on (the kernel resets every cookie handshake without
/// it), so legitimate clients keep connecting through the cookies.
#[test]
fn auto_switching_to_intercept_turns_syncookies_on() {
    require_root("auto_switching_to_intercept_turns_syncookies_on");
    let _turn = flood_turn();
    let t = InterceptLab::new(PORT);
    t.ctl(&["mode", t.srv_if(), "watch"]);
    let sysctl = |v: Option<&str>| {
        t.lab
            .server
            .exec(
                "sysctl",
                &match v {
                    Some(v) => vec!["-qw", v],
                    None => vec!["-n", "net.ipv4.tcp_syncookies"],
                },
            )
            .expect("sysctl")
    };
    sysctl(Some("net.ipv4.tcp_syncookies=0"));
    lab_thresholds(&t);
    t.ctl(&["mode", t.srv_if(), "auto"]);
    assert_eq!(
        sysctl(None).trim(),
        "0",
        "calm: watching, the sysctl untouched"
    );
    let _d = Daemon::start(t.srv(), t.srv_if());
    let (l4, l6) = t.lab.listen(PORT).expect("listen");
    echo_server(l4);
    echo_server(l6);
    let sender = t.lab.raw_sender().unwrap();
    let flooder = std::thread::spawn(move || flood(&sender, SYN_FLOOD));
    wait_for("auto switches to intercept", Duration::from_secs(3), || {
        status(&t)["active_mode"] == "intercept"
    });
    let before = t.stats();
    for i in 0..6 {
        let ip = if i % 2 == 0 {
            IpAddr::V4(SERVER_V4)
        } else {
            IpAddr::V6(SERVER_V6)
        };
        let mut c = t
            .lab
            .connect(SocketAddr::new(ip, PORT), Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connection {i} to {ip} while intercepting: {e:#}"));
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("connection {i} to {ip} while intercepting: {e}"));
    }
    let d = t.stats().delta(&before);
    assert!(d.get(HandedOff) >= 6, "through the cookies: {d:?}");
    // The kernel-cookie engine needs 2 (see `kernel_cookie.rs`), the kfunc engine 1.
    let want = if intercept_tests::kernel_cookie_engine() {
        "2"
    } else {
        "1"
    };
    assert_eq!(
        sysctl(None).trim(),
        want,
        "the switch turned tcp_syncookies on"
    );
    let _ = flooder.join();
}
