//! Intercept mode end to end: real kernel TCP on both sides of a veth, the server's SYNs answered
//! by XDP with cookies, proven connections handed to the real listener.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use intercept_common::{Counter::*, parse::tcp_flags};
use intercept_ctl::lab::{Capture, FloodSpec, SERVER_V4, SERVER_V6, flood, syn_recv_count};
use intercept_tests::{
    FloodRun, HoldAcks, InterceptLab, echo_server, flood_while_connecting, ping, require_root,
    status,
};

const PORT: u16 = 8080;

fn addr(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, PORT)
}

#[test]
fn handshakes_complete_into_the_listener_with_options_v4_and_v6() {
    require_root("handshakes_complete_into_the_listener_with_options_v4_and_v6");
    let t = InterceptLab::new(PORT);
    let (l4, l6) = t.lab.listen(PORT).expect("listen");
    let cap = Capture::start(&t.lab.server, t.srv_if()).expect("capture");
    let before = t.stats();
    let mut conns = Vec::new();
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let mut c = t
            .lab
            .connect(addr(ip), Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect {ip}: {e:#}"));
        let listener = if ip.is_ipv4() { &l4 } else { &l6 };
        let (mut s, peer) = listener.accept().expect("accept() returns");
        assert_eq!(peer, c.local_addr().unwrap());
        // Data both ways.
        c.write_all(b"hello server").unwrap();
        let mut b = [0u8; 12];
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.read_exact(&mut b).expect("server reads");
        assert_eq!(&b, b"hello server");
        s.write_all(b"hello client").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.read_exact(&mut b).expect("client reads");
        assert_eq!(&b, b"hello client");
        conns.push((c, s));
    }
    // The server's sockets carry the negotiated options.
    let ss = t
        .lab
        .server
        .exec(
            "ss",
            &[
                "-tnie",
                "state",
                "established",
                "sport",
                &format!("= :{PORT}"),
            ],
        )
        .expect("ss");
    let infos: Vec<&str> = ss.lines().filter(|l| l.contains("wscale")).collect();
    assert_eq!(infos.len(), 2, "two established sockets in ss -tnie:\n{ss}");
    for i in &infos {
        assert!(
            i.contains("ts") && i.contains("sack") && i.contains("wscale:") && i.contains(",7"),
            "options lost:\n{ss}"
        );
    }
    let seen = cap.finish();
    assert_eq!(seen.syn, 0, "the server's kernel must see no SYN: {seen:?}");
    assert_eq!(
        seen.syn_ack_out, 0,
        "the server's kernel must send no SYN-ACK: {seen:?}"
    );
    let d = t.stats().delta(&before);
    for (k, want) in [
        (SynProtected, 2),
        (SynAckSent, 2),
        (AckValid, 2),
        (HandedOff, 2),
        (HandoffFailed, 0),
        (AckBadMac, 0),
        (Aborted, 0),
    ] {
        assert_eq!(d.get(k), want, "{}: {d:?}", k.name());
    }
    assert_eq!(syn_recv_count(&t.lab.server).unwrap(), 0);
}

#[test]
fn connections_opened_before_intercept_keep_working() {
    require_root("connections_opened_before_intercept_keep_working");
    let t = InterceptLab::new(PORT);
    t.ctl(&["mode", t.srv_if(), "off"]);
    let (l4, l6) = t.lab.listen(PORT).expect("listen");
    echo_server(l4);
    echo_server(l6);
    let mut old4 = t
        .lab
        .connect(addr(IpAddr::V4(SERVER_V4)), Duration::from_secs(3))
        .unwrap();
    let mut old6 = t
        .lab
        .connect(addr(IpAddr::V6(SERVER_V6)), Duration::from_secs(3))
        .unwrap();
    ping(&mut old4, "before");
    ping(&mut old6, "before");
    // Attached afresh: the socket table learns these connections from sock_diag (seeding), not
    // from the tracepoint, which was not there when they opened.
    t.ctl(&["detach", t.srv_if()]);
    t.ctl(&["attach", t.srv_if()]);
    for prefix in ["198.18.0.1/32", "2001:db8::1/128"] {
        t.ctl(&["scope", "add", t.srv_if(), prefix, "--ports", "8080"]);
    }
    t.ctl(&["mode", t.srv_if(), "off"]);
    let before = t.stats();
    t.ctl(&["mode", t.srv_if(), "intercept"]);
    let st = status(&t);
    assert_eq!(
        st["socket_table"]["authoritative"], false,
        "lookup window: {st}"
    );
    assert!(
        st["socket_table"]["lookup_window_s"].as_u64().unwrap() > 60,
        "{st}"
    );
    // No kernel handshake can be in flight: the table alone decides from here on.
    t.end_lookup_window();
    let st = status(&t);
    assert_eq!(st["socket_table"]["tracepoint_attached"], true, "{st}");
    assert_eq!(st["socket_table"]["seeded"], true, "{st}");
    assert_eq!(st["socket_table"]["authoritative"], true, "{st}");
    assert_eq!(
        st["scope_lookup"], "list",
        "two addresses: scanned, not looked up: {st}"
    );
    for i in 0..5 {
        ping(&mut old4, &format!("after {i}"));
        ping(&mut old6, &format!("after {i}"));
    }
    // And a new one goes through the cookie path.
    let mut new4 = t
        .lab
        .connect(addr(IpAddr::V4(SERVER_V4)), Duration::from_secs(3))
        .unwrap();
    ping(&mut new4, "new");
    t.ctl(&["rotate-secret", t.srv_if()]);
    ping(&mut old4, "after rotation");
    ping(&mut new4, "after rotation");
    let d = t.stats().delta(&before);
    assert!(
        d.get(PassEstablished) >= 10,
        "old connections' segments passed as established: {d:?}"
    );
    assert_eq!(
        (d.get(AckNoListener), d.get(AckBadMac), d.get(Dropped)),
        (0, 0, 0),
        "{d:?}"
    );
    assert_eq!(
        d.get(SocketLookups),
        0,
        "the table knew every connection: {d:?}"
    );
    assert_eq!(d.get(HandedOff), 1, "{d:?}");
}

/// A bounded spoofed SYN flood (and separately a forged-ACK flood) while a real client keeps
/// connecting: every legitimate connection succeeds and the listener's SYN queue stays empty.
#[test]
fn legitimate_clients_get_through_syn_and_forged_ack_floods() {
    require_root("legitimate_clients_get_through_syn_and_forged_ack_floods");
    let t = InterceptLab::echoing(PORT);
    t.end_lookup_window();
    for (what, flags) in [("SYN", tcp_flags::SYN), ("forged ACK", tcp_flags::ACK)] {
        let FloodRun {
            sent,
            ok,
            tried,
            max_synq,
            delta: d,
        } = flood_while_connecting(&t, addr(IpAddr::V4(SERVER_V4)), flags, what);
        assert_eq!(ok, tried);
        assert_eq!(max_synq, 0, "the listener's SYN queue must stay empty");
        assert!(sent >= 10_000, "flood too small to mean anything: {sent}");
        if flags == tcp_flags::SYN {
            assert_eq!(
                d.get(SynAckSent),
                d.get(SynProtected),
                "every protected SYN answered in XDP: {d:?}"
            );
            assert!(
                d.get(SynAckSent) >= sent + ok as u64,
                "flood and legitimate SYNs all answered: {d:?}"
            );
            assert_eq!(d.get(SynCookieRefused), 0, "{d:?}");
        } else {
            // Forged ACKs: dropped as bad MAC, never handed off (a 2^-24 chance per frame of a
            // lucky guess is tolerated once).
            let rejected = d.get(AckBadMac);
            assert!(
                rejected + 1 >= sent && rejected <= sent,
                "forged ACKs rejected: {rejected} of {sent}: {d:?}"
            );
            assert!(d.get(HandedOff) <= ok as u64 + 1, "{d:?}");
            assert_eq!(
                d.get(SocketLookups),
                0,
                "dropped on the socket table alone: {d:?}"
            );
        }
    }
}

/// A handshake in flight across a mode change completes, in both directions: started in watch
/// mode (the server holds a SYN_RECV) and finished in intercept mode, and started in intercept
/// mode (answered with a cookie) and finished in watch mode.
#[test]
fn handshakes_in_flight_survive_mode_changes_both_ways() {
    require_root("handshakes_in_flight_survive_mode_changes_both_ways");
    let t = InterceptLab::echoing(PORT);
    // The mode changed by `mode`, and by `reload` of a configuration file.
    let dir = std::env::temp_dir().join(format!("xi-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let change = |to: &str, how: &str| {
        if how == "mode" {
            t.ctl(&["mode", t.srv_if(), to]);
        } else {
            let f = dir.join(format!("{to}.toml"));
            std::fs::write(
                &f,
                format!(
                    "mode = \"{to}\"\n[[protect]]\nprefix = \"198.18.0.1\"\nports = [{PORT}]\n\
                     [[protect]]\nprefix = \"2001:db8::1\"\nports = [{PORT}]\n"
                ),
            )
            .unwrap();
            t.ctl(&["reload", t.srv_if(), "--config", f.to_str().unwrap()]);
        }
    };
    for (from, to, how) in [
        ("watch", "intercept", "mode"),
        ("intercept", "watch", "mode"),
        ("intercept", "watch", "reload"),
    ] {
        t.ctl(&["mode", t.srv_if(), from]);
        let before = t.stats();
        let hold = HoldAcks::on_port(&t.lab.client, PORT);
        // connect() completes on the client as soon as the SYN-ACK arrives; its ACK is held.
        let mut c = t
            .lab
            .connect(addr(IpAddr::V4(SERVER_V4)), Duration::from_secs(3))
            .expect("connect");
        std::thread::sleep(Duration::from_millis(100));
        if from == "watch" {
            assert_eq!(
                syn_recv_count(&t.lab.server).unwrap(),
                1,
                "the server holds the handshake half-open"
            );
        }
        change(to, how);
        drop(hold);
        // The client's first data segment acknowledges the SYN-ACK and completes the handshake.
        ping(
            &mut c,
            &format!("started in {from}, finished in {to} ({how})"),
        );
        let d = t.stats().delta(&before);
        if from == "watch" {
            assert_eq!(
                (d.get(HalfOpenNew), d.get(PassEstablished) > 0),
                (1, true),
                "{d:?}"
            );
        } else {
            assert_eq!(
                (d.get(SynAckSent), d.get(AckValid), d.get(HandedOff)),
                (1, 1, 1),
                "completed with the cookie in watch mode ({how}): {d:?}"
            );
        }
        assert_eq!(syn_recv_count(&t.lab.server).unwrap(), 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A SYN flood padded with one byte of data each (spoofed, 200 SYNs): answered in XDP like any
/// other, ignoring the data as the kernel's own cookies do; the server's kernel is left with no
/// half-open socket, and the socket table stays authoritative (no kernel lookup window).
#[test]
fn syns_padded_with_data_get_cookies_and_leave_nothing_half_open() {
    require_root("syns_padded_with_data_get_cookies_and_leave_nothing_half_open");
    let t = InterceptLab::new(PORT);
    let (l4, _l6) = t.lab.listen(PORT).expect("listen");
    echo_server(l4);
    t.end_lookup_window();
    let before = t.stats();
    let sender = t.lab.raw_sender().expect("raw sender");
    let sent = flood(
        &sender,
        FloodSpec {
            target: addr(IpAddr::V4(SERVER_V4)),
            count: 200,
            max_time: Duration::from_secs(5),
            rate: 2_000,
            flags: tcp_flags::SYN,
            payload: 1,
        },
    )
    .expect("flood");
    assert_eq!(sent, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        syn_recv_count(&t.lab.server).unwrap(),
        0,
        "SYNs with data must not reach the listener's SYN queue"
    );
    let d = t.stats().delta(&before);
    assert_eq!(
        (d.get(SynDataIgnored), d.get(SynAckSent)),
        (200, 200),
        "answered in XDP: {d:?}"
    );
    let st = status(&t);
    assert_eq!(st["socket_table"]["authoritative"], true, "{st}");
}

/// A client with TCP Fast Open on sends its request in the SYN. XDP answers with a cookie that
/// acknowledges only the SYN, as the kernel's own cookies do; the client sends the data again
/// after the handshake, and the connection completes through the cookie handoff.
#[test]
fn syn_with_data_completes_through_the_cookie() {
    require_root("syn_with_data_completes_through_the_cookie");
    let t = InterceptLab::new(PORT);
    let (l4, _l6) = t.lab.listen(PORT).expect("listen");
    echo_server(l4);
    t.end_lookup_window();
    // Client: Fast Open on, data in the SYN even without a cookie (0x1 | 0x4).
    t.lab
        .client
        .exec("sysctl", &["-qw", "net.ipv4.tcp_fastopen=5"])
        .expect("sysctl");
    let before = t.stats();
    let echoed = t
        .lab
        .client
        .spawn(|| {
            use std::os::fd::AsRawFd as _;
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            let one: libc::c_int = 1;
            // SAFETY: a plain setsockopt on our own socket with an int option.
            let rc = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_FASTOPEN_CONNECT,
                    (&raw const one).cast(),
                    4,
                )
            };
            anyhow::ensure!(
                rc == 0,
                "TCP_FASTOPEN_CONNECT: {}",
                std::io::Error::last_os_error()
            );
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            // With TCP_FASTOPEN_CONNECT, connect returns at once and the first write rides on the SYN.
            s.connect(&addr(IpAddr::V4(SERVER_V4)).into())?;
            let mut c: std::net::TcpStream = s.into();
            c.write_all(b"in the SYN")?;
            let mut buf = [0u8; 10];
            c.read_exact(&mut buf)?;
            Ok::<_, anyhow::Error>(buf)
        })
        .join()
        .unwrap()
        .expect("connection with data in the SYN");
    assert_eq!(&echoed, b"in the SYN");
    let d = t.stats().delta(&before);
    for (k, want) in [
        (SynDataIgnored, 1),
        (SynAckSent, 1),
        (HandedOff, 1),
        (SocketLookups, 0),
        (Dropped, 0),
    ] {
        assert_eq!(d.get(k), want, "{}: {d:?}", k.name());
    }
    assert_eq!(syn_recv_count(&t.lab.server).unwrap(), 0);
}

/// A valid cookie ACK whose listener closed meanwhile: XDP verifies it and hands it to TC, which
/// finds no listener, counts it, and leaves it to the kernel, which resets the connection.
#[test]
fn valid_ack_after_the_listener_closed_is_counted_and_reset() {
    require_root("valid_ack_after_the_listener_closed_is_counted_and_reset");
    const GONE: u16 = 8082;
    let t = InterceptLab::new(PORT);
    t.ctl(&[
        "scope",
        "add",
        t.srv_if(),
        "198.18.0.1/32",
        "--ports",
        "8082",
    ]);
    let (l4, l6) = t.lab.listen(GONE).expect("listen");
    drop(l6);
    let before = t.stats();
    let hold = HoldAcks::on_port(&t.lab.client, GONE);
    let mut c = t
        .lab
        .connect(
            SocketAddr::new(IpAddr::V4(SERVER_V4), GONE),
            Duration::from_secs(3),
        )
        .expect("connect (answered by XDP)");
    drop(l4);
    drop(hold);
    // The first data segment carries the handshake's ACK.
    let _ = c.write_all(b"anyone?");
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 8];
    let r = c.read(&mut b);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the kernel resets it: {r:?}"
    );
    let d = t.stats().delta(&before);
    assert_eq!(
        (d.get(SynAckSent), d.get(HandedOff), d.get(Dropped)),
        (1, 0, 0),
        "{d:?}"
    );
    assert!(d.get(AckValid) >= 1 && d.get(AckNoListener) >= 1, "{d:?}");
}

/// Other agents' TC programs share the interface's TCX ingress chain with ours. Ours goes first
/// (a program before it that ends the chain would skip every handoff, and the kernel would reset
/// every cookie handshake) and hands every packet on to the next program (`TCX_NEXT`): one
/// appended after ours, as another agent's would be, sees the traffic, handshakes included.
#[test]
fn an_agents_tcx_program_after_ours_sees_the_traffic() {
    require_root("an_agents_tcx_program_after_ours_sees_the_traffic");
    let t = InterceptLab::echoing(PORT);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF run statistics");
    let dev = t.srv_if().to_owned();
    let d = dev.clone();
    // TCX_NEXT (-1): it passes everything on, as a monitoring agent would.
    let _after = t
        .lab
        .server
        .spawn(move || {
            let idx = intercept_ctl::loader::ifindex(&d, None).expect("ifindex");
            intercept_tests::foreign_tcx(idx, "xi_after", -1, false)
        })
        .join()
        .unwrap();
    let before = t.stats();
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let mut c = t
            .lab
            .connect(addr(ip), Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect {ip} with another TCX program after ours: {e:#}"));
        ping(&mut c, "through the chain");
    }
    let chain = t
        .lab
        .server
        .spawn(move || intercept_tests::tcx_chain(&dev))
        .join()
        .unwrap();
    assert_eq!(
        chain.first().map(|c| c.0.as_str()),
        Some("tc_handoff"),
        "ours first: {chain:?}"
    );
    let after = chain
        .iter()
        .find(|c| c.0 == "xi_after")
        .expect("xi_after in the chain");
    assert!(
        after.1 >= 4,
        "the program after ours saw no traffic (ours ended the chain): {chain:?}"
    );
    let d = t.stats().delta(&before);
    assert_eq!(d.get(HandedOff), 2, "{d:?}");
}

/// A connection the server closed first lives on in the server's kernel as a time-wait socket,
/// which the socket table does not hold. Data the client sends on it (a keep-alive connection it
/// has not yet seen closed) must reach that socket, which resets it: the client learns at once,
/// instead of retransmitting into a drop until it gives up.
#[test]
fn data_after_the_server_closed_is_reset_not_dropped() {
    require_root("data_after_the_server_closed_is_reset_not_dropped");
    let t = InterceptLab::new(PORT);
    let (l4, l6) = t.lab.listen(PORT).expect("listen");
    t.end_lookup_window();
    for (ip, l) in [(IpAddr::V4(SERVER_V4), l4), (IpAddr::V6(SERVER_V6), l6)] {
        let before = t.stats();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut b = [0u8; 5];
            s.read_exact(&mut b).expect("read the request");
            s.write_all(&b).expect("answer");
            // Closed by the server first, as a keep-alive connection past its idle time.
        });
        let mut c = t
            .lab
            .connect(addr(ip), Duration::from_secs(3))
            .expect("connect");
        ping(&mut c, "first");
        server.join().unwrap();
        // The server's FIN arrives and is acknowledged; the client, unaware, sends again.
        std::thread::sleep(Duration::from_millis(200));
        let _ = c.write_all(b"second request");
        // The reset closes the client's socket: a later write fails (EPIPE). Dropped, the
        // request would be retransmitted for minutes and every write would succeed.
        let start = Instant::now();
        let reset = loop {
            std::thread::sleep(Duration::from_millis(50));
            if c.write_all(b"x").is_err() {
                break true;
            }
            if start.elapsed() > Duration::from_secs(2) {
                break false;
            }
        };
        assert!(
            reset,
            "{ip}: no reset within 2 s of data on a connection the server closed ({:?})",
            c.take_error()
        );
        let d = t.stats().delta(&before);
        assert!(d.get(PassTimeWait) >= 1, "{ip}: passed as time-wait: {d:?}");
        assert_eq!(d.get(AckBadMac), 0, "{ip}: {d:?}");
    }
}

/// A client reconnecting from the same port reuses the 4-tuple of the connection the server
/// closed first, still a time-wait socket on the server: the kernel accepts such a SYN in place
/// of the time-wait socket (`tcp_timewait_state_process`). It goes to the kernel, and the
/// connection completes.
#[test]
fn a_syn_reusing_a_time_wait_4_tuple_connects() {
    require_root("a_syn_reusing_a_time_wait_4_tuple_connects");
    let t = InterceptLab::new(PORT);
    let (l4, _l6) = t.lab.listen(PORT).expect("listen");
    t.end_lookup_window();
    let server = std::thread::spawn(move || {
        for round in 0..2 {
            let (mut s, _) = l4.accept().expect("accept");
            let mut b = [0u8; 5];
            s.read_exact(&mut b).expect("read");
            s.write_all(&b).expect("echo");
            if round == 1 {
                std::thread::sleep(Duration::from_secs(1));
            }
            // Closed first by the server: its socket becomes a time-wait one.
        }
    });
    let client = std::net::SocketAddr::new(IpAddr::V4(intercept_ctl::lab::CLIENT_V4), 0);
    let port = t
        .lab
        .client
        .spawn(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&client.into())?;
            s.connect(&addr(IpAddr::V4(SERVER_V4)).into())?;
            let port = s.local_addr()?.as_socket().unwrap().port();
            let mut c: std::net::TcpStream = s.into();
            ping(&mut c, "first");
            let mut b = [0u8; 1];
            // The server's FIN, then ours: the server ends in TIME_WAIT.
            c.set_read_timeout(Some(Duration::from_secs(3)))?;
            assert_eq!(c.read(&mut b)?, 0, "the server closes first");
            Ok::<_, std::io::Error>(port)
        })
        .join()
        .unwrap()
        .expect("first connection");
    std::thread::sleep(Duration::from_millis(200));
    let tw = t
        .lab
        .server
        .exec("ss", &["-Htn", "state", "time-wait"])
        .unwrap();
    assert!(
        tw.contains(&format!(":{port}")),
        "the server holds a time-wait socket:\n{tw}"
    );
    let before = t.stats();
    let reused = t
        .lab
        .client
        .spawn(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&std::net::SocketAddr::new(client.ip(), port).into())?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.connect_timeout(&addr(IpAddr::V4(SERVER_V4)).into(), Duration::from_secs(3))?;
            let mut c: std::net::TcpStream = s.into();
            c.write_all(b"again")?;
            let mut b = [0u8; 5];
            c.read_exact(&mut b)?;
            Ok::<_, std::io::Error>(b)
        })
        .join()
        .unwrap();
    assert_eq!(
        reused.as_ref().map(|b| &b[..]).ok(),
        Some(&b"again"[..]),
        "the connection reusing port {port}: {reused:?}"
    );
    server.join().unwrap();
    let d = t.stats().delta(&before);
    assert!(
        d.get(PassTimeWait) >= 1,
        "the SYN went to the kernel: {d:?}"
    );
}

/// Another agent's TCX program linked before ours that ends the chain (`TC_ACT_OK`) skips every
/// handoff: the kernel resets every cookie handshake. `status` says so (exit 3, naming it), and
/// `attach` again puts the handoff first, after which connections complete.
#[test]
fn an_agents_tcx_program_before_ours_is_reported_and_attach_puts_ours_first() {
    require_root("an_agents_tcx_program_before_ours_is_reported_and_attach_puts_ours_first");
    let t = InterceptLab::echoing(PORT);
    let dev = t.srv_if().to_owned();
    let d = dev.clone();
    // TCX_PASS (0): ends the chain, as many agents' programs do.
    let _before = t
        .lab
        .server
        .spawn(move || {
            let idx = intercept_ctl::loader::ifindex(&d, None).expect("ifindex");
            intercept_tests::foreign_tcx(idx, "xi_before", 0, true)
        })
        .join()
        .unwrap();
    // XDP answers the SYN; the kernel resets the ACK the handoff never saw, before or after the
    // client's connect() returns.
    let failed = match t
        .lab
        .connect(addr(IpAddr::V4(SERVER_V4)), Duration::from_secs(3))
    {
        Err(_) => true,
        Ok(mut c) => {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = c.write_all(b"skipped");
            let mut b = [0u8; 7];
            c.read_exact(&mut b).is_err()
        }
    };
    assert!(
        failed,
        "with the handoff skipped the kernel cannot complete the handshake"
    );
    let o = intercept_tests::ctl(&["--netns", t.srv(), "status", t.srv_if()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "status exits 3: {err}");
    assert!(err.contains("xi_before"), "status names the program: {err}");
    t.ctl(&["attach", t.srv_if()]);
    let st = status(&t);
    assert_eq!(st["healthy"], true, "{st}");
    let chain = t
        .lab
        .server
        .spawn(move || intercept_tests::tcx_chain(&dev))
        .join()
        .unwrap();
    assert_eq!(
        chain.first().map(|c| c.0.as_str()),
        Some("tc_handoff"),
        "{chain:?}"
    );
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let mut c = t
            .lab
            .connect(addr(ip), Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect {ip} after re-attaching: {e:#}"));
        ping(&mut c, "handoff first again");
    }
}

/// A SYN split into IP fragments, and one behind more IPv6 extension headers than the data path
/// walks, would be reassembled or parsed by the kernel and answered from its own SYN queue:
/// 50 of each (spoofed) must leave nothing half-open, their first fragments and the chains
/// counted as dropped (the later fragments pass: alone they are nothing). Before, every one
/// reached the listener.
#[test]
fn fragmented_and_deeply_chained_syns_never_reach_the_syn_queue() {
    require_root("fragmented_and_deeply_chained_syns_never_reach_the_syn_queue");
    use intercept_common::craft::{TcpSegment, linux_syn_options, tcp_frame};
    let t = InterceptLab::echoing(PORT);
    t.end_lookup_window();
    let sender = t.lab.raw_sender().expect("raw sender");
    let before = t.stats();
    for i in 0..50u16 {
        // IPv4: the SYN's 40-byte TCP header in two fragments of 24 and 16 bytes.
        let src: IpAddr = format!("198.19.7.{}", i + 1).parse().unwrap();
        let mut syn = TcpSegment::new(src, IpAddr::V4(SERVER_V4), 20_000 + i, PORT, tcp_flags::SYN);
        syn.seq = 0x0101_0000 + u32::from(i);
        syn.options = linux_syn_options(1460, 1, 7);
        let whole = tcp_frame(&sender.link, &syn);
        for (from, to, more, offset) in [(34, 58, true, 0u16), (58, whole.len(), false, 3)] {
            let mut f = whole[..34].to_vec();
            f.extend_from_slice(&whole[from..to]);
            let total = u16::try_from(f.len() - 14).unwrap();
            f[16..18].copy_from_slice(&total.to_be_bytes());
            f[18..20].copy_from_slice(&(0x7000 + i).to_be_bytes()); // identification
            let frag = offset | if more { 0x2000 } else { 0 };
            f[20..22].copy_from_slice(&frag.to_be_bytes());
            ipv4_header_checksum(&mut f[14..34]);
            sender.send(&f).expect("send a fragment");
        }
        // IPv6: four destination-options headers (8 bytes each) before the TCP header.
        let src: IpAddr = format!("2001:db8:7::{:x}", i + 1).parse().unwrap();
        let mut syn = TcpSegment::new(src, IpAddr::V6(SERVER_V6), 20_000 + i, PORT, tcp_flags::SYN);
        syn.seq = 0x0202_0000 + u32::from(i);
        syn.options = linux_syn_options(1440, 1, 7);
        let mut f = tcp_frame(&sender.link, &syn);
        let chain: Vec<u8> = (0..4)
            .flat_map(|k| [if k == 3 { 6 } else { 60 }, 0, 1, 4, 0, 0, 0, 0])
            .collect();
        f.splice(54..54, chain);
        f[20] = 60; // next header: destination options
        let plen = u16::from_be_bytes([f[18], f[19]]) + 32;
        f[18..20].copy_from_slice(&plen.to_be_bytes());
        sender.send(&f).expect("send a chained SYN");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        syn_recv_count(&t.lab.server).unwrap(),
        0,
        "a fragmented or deeply chained SYN reached the listener's SYN queue"
    );
    let d = t.stats().delta(&before);
    assert_eq!(
        (d.get(SynFragmentDropped), d.get(Ipv6ChainDropped)),
        (50, 50),
        "{d:?}"
    );
    // Legitimate clients are untouched.
    let mut c = t
        .lab
        .connect(addr(IpAddr::V4(SERVER_V4)), Duration::from_secs(3))
        .expect("connect");
    ping(&mut c, "after the fragments");
}

/// Writes the IPv4 header checksum of `h` (a 20-byte header).
fn ipv4_header_checksum(h: &mut [u8]) {
    use intercept_common::checksum::{add_bytes, finish};
    h[10..12].copy_from_slice(&[0, 0]);
    let sum = finish(add_bytes(0, h));
    h[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// A client whose interface leaves TCP checksums to offload (a veth peer's default: its SYNs
/// arrive with only the pseudo-header sum filled in) is protected like any other: its handshakes
/// complete through our cookie. Before, its every SYN was taken for a corrupted one and passed
/// to the kernel's SYN queue, so intercept mode never applied to it. A SYN with a truly bad
/// checksum is dropped.
#[test]
fn clients_leaving_checksums_to_offload_get_cookies() {
    require_root("clients_leaving_checksums_to_offload_get_cookies");
    let t = InterceptLab::echoing(PORT);
    t.end_lookup_window();
    t.lab
        .client
        .exec("ethtool", &["-K", &t.lab.veth.b, "tx", "on"])
        .expect("ethtool");
    let before = t.stats();
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        intercept_tests::answered_first_time(
            &t,
            "checksum offload",
            addr(ip),
            intercept_ctl::lab::Shape::One,
            20,
        );
    }
    let d = t.stats().delta(&before);
    assert_eq!(
        (d.get(SynAckSent), d.get(HandedOff), d.get(SynBadChecksum)),
        (40, 40, 0),
        "{d:?}"
    );
}

/// On an interface that forwards (a router; the kernel answers XDP's route lookups only
/// there), the SYN-ACK takes the route back to the SYN's source, as the kernel's own would, not
/// simply the frame's sender: a host on this segment spoofing a neighbour's address (or any
/// address routed through a gateway) never sees the cookie, which goes to the real next hop; a
/// source with no route back is dropped. Before, every SYN-ACK went to whoever sent the SYN, so
/// a host on the segment could complete handshakes as any address.
#[test]
fn syn_acks_take_the_route_back_not_the_senders_mac() {
    require_root("syn_acks_take_the_route_back_not_the_senders_mac");
    use intercept_common::craft::{TcpSegment, linux_syn_options, tcp_frame};
    let t = InterceptLab::echoing(PORT);
    let srv = &t.lab.server;
    for family in ["ipv4", "ipv6"] {
        let knob = format!("net.{family}.conf.{}.forwarding=1", t.srv_if());
        srv.exec("sysctl", &["-qw", &knob]).expect("sysctl");
    }
    for args in [
        vec![
            "neigh",
            "replace",
            "198.18.0.50",
            "lladdr",
            "02:00:00:00:00:50",
            "dev",
            t.srv_if(),
            "nud",
            "permanent",
        ],
        vec![
            "-6",
            "neigh",
            "replace",
            "2001:db8::50",
            "lladdr",
            "02:00:00:00:00:50",
            "dev",
            t.srv_if(),
            "nud",
            "permanent",
        ],
        vec!["route", "add", "blackhole", "198.19.99.0/24"],
        vec!["-6", "route", "add", "blackhole", "2001:db8:99::/48"],
    ] {
        srv.ip(&args).expect("ip");
    }
    let cap = Capture::start(&t.lab.client, &t.lab.veth.b).expect("capture");
    let sender = t.lab.raw_sender().expect("raw sender");
    let before = t.stats();
    for (src, dst) in [
        ("198.18.0.50", IpAddr::V4(SERVER_V4)),
        ("2001:db8::50", IpAddr::V6(SERVER_V6)),
        ("198.19.99.1", IpAddr::V4(SERVER_V4)),
        ("2001:db8:99::1", IpAddr::V6(SERVER_V6)),
    ] {
        let mut syn = TcpSegment::new(src.parse().unwrap(), dst, 33_333, PORT, tcp_flags::SYN);
        syn.seq = 0x5555_0000;
        syn.options = linux_syn_options(1400, 1, 7);
        sender.send(&tcp_frame(&sender.link, &syn)).expect("send");
    }
    // A tagged SYN (a router on a stick) is answered on its own tags, to its sender: the route's
    // neighbour may be on another VLAN.
    let mut syn = TcpSegment::new(
        "198.18.0.50".parse().unwrap(),
        IpAddr::V4(SERVER_V4),
        33_334,
        PORT,
        tcp_flags::SYN,
    );
    syn.options = linux_syn_options(1400, 1, 7);
    let tagged = intercept_common::craft::Link {
        vlans: vec![(intercept_common::parse::ETH_P_8021Q, 10)],
        ..sender.link.clone()
    };
    sender.send(&tcp_frame(&tagged, &syn)).expect("send");
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let mut c = t
            .lab
            .connect(addr(ip), Duration::from_secs(3))
            .expect("connect");
        ping(&mut c, "a client on the segment");
    }
    std::thread::sleep(Duration::from_millis(300));
    let seen = cap.finish();
    let d = t.stats().delta(&before);
    assert_eq!(
        (
            d.get(SynAckToNextHop),
            d.get(SynUnroutable),
            d.get(SynAckSent)
        ),
        (2, 2, 5),
        "{d:?}"
    );
    assert_eq!(
        (seen.syn_ack_in_other_host, seen.syn_ack_in),
        (2, 3),
        "the spoofed sources' SYN-ACKs went to their neighbour's MAC, the clients' and the \
         tagged one's to their senders: \
         {seen:?}"
    );
}

/// A twin of the lab: a server and a client namespace with the lab's own addresses, joined by a
/// veth pair without XDP, as two containers of one host holding the same addresses. The same
/// 4-tuples exist there and here; the twin's server listens on [`PORT`] and echoes.
struct Twin {
    _veth: intercept_ctl::netns::VethPair,
    /// Held for its lifetime: the namespace is deleted on drop.
    _server: intercept_ctl::netns::Netns,
    client: intercept_ctl::netns::Netns,
}

impl Twin {
    fn new() -> Twin {
        use intercept_ctl::netns::{Netns, VethPair};
        let server = Netns::new("ts").expect("twin server namespace");
        let client = Netns::new("tc").expect("twin client namespace");
        let veth = VethPair::new(
            &server,
            &["198.18.0.1/24", "2001:db8::1/64"],
            &client,
            &["198.18.0.2/24", "2001:db8::2/64"],
        )
        .expect("twin veth");
        let (l4, l6) = server
            .spawn(|| {
                (
                    std::net::TcpListener::bind(addr(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)))
                        .expect("twin listen v4"),
                    std::net::TcpListener::bind(addr(IpAddr::V6(SERVER_V6)))
                        .expect("twin listen v6"),
                )
            })
            .join()
            .unwrap();
        echo_server(l4);
        echo_server(l6);
        Twin {
            _veth: veth,
            _server: server,
            client,
        }
    }

    /// A connection in the twin from the client address and `port` (0: any) to the server.
    fn connect(&self, server: IpAddr, port: u16) -> std::net::TcpStream {
        let client = match server {
            IpAddr::V4(_) => IpAddr::V4(intercept_ctl::lab::CLIENT_V4),
            IpAddr::V6(_) => IpAddr::V6(intercept_ctl::lab::CLIENT_V6),
        };
        self.client
            .spawn(move || {
                let s = socket2::Socket::new(
                    socket2::Domain::for_address(addr(server)),
                    socket2::Type::STREAM,
                    None,
                )?;
                s.bind(&SocketAddr::new(client, port).into())?;
                s.connect_timeout(&addr(server).into(), Duration::from_secs(3))?;
                Ok::<_, std::io::Error>(s.into())
            })
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("twin connection from port {port} to {server}: {e}"))
    }
}

/// The socket-table tracepoint fires for every namespace of the host. A connection of another
/// namespace with the very 4-tuple of ours (containers holding the same addresses) closing
/// there must not remove ours from the table: our connection's segments, which carry no cookie,
/// pass only because the table holds the flow.
#[test]
fn a_close_in_another_namespace_leaves_our_connection_in_the_table() {
    require_root("a_close_in_another_namespace_leaves_our_connection_in_the_table");
    let t = InterceptLab::echoing(PORT);
    let twin = Twin::new();
    t.end_lookup_window();
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let mut ours = t
            .lab
            .connect(addr(ip), Duration::from_secs(3))
            .expect("connect");
        ping(&mut ours, "before");
        let port = ours.local_addr().unwrap().port();
        let mut theirs = twin.connect(ip, port);
        ping(&mut theirs, "twin");
        let before = t.stats();
        // Reset by the twin's client: the twin's server socket goes from ESTABLISHED to CLOSE
        // (no time-wait socket, which would pass the flow's segments for other reasons).
        intercept_tests::abort(theirs);
        std::thread::sleep(Duration::from_millis(100));
        ping(&mut ours, "after the twin's close");
        let d = t.stats().delta(&before);
        assert_eq!(
            (d.get(AckBadMac), d.get(PassTimeWait), d.get(SocketLookups)),
            (0, 0, 0),
            "{ip} port {port}: our segments passed on the table alone: {d:?}"
        );
        assert!(d.get(PassEstablished) >= 1, "{ip} port {port}: {d:?}");
    }
}

/// A connection only another namespace holds puts nothing in our table: a forged ACK with its
/// 4-tuple, carrying no cookie, is dropped here.
#[test]
fn a_connection_only_in_another_namespace_lets_no_forged_ack_through() {
    require_root("a_connection_only_in_another_namespace_lets_no_forged_ack_through");
    let t = InterceptLab::echoing(PORT);
    let twin = Twin::new();
    t.end_lookup_window();
    let sender = t.lab.raw_sender().expect("raw sender");
    for (client, ip) in [
        (
            IpAddr::V4(intercept_ctl::lab::CLIENT_V4),
            IpAddr::V4(SERVER_V4),
        ),
        (
            IpAddr::V6(intercept_ctl::lab::CLIENT_V6),
            IpAddr::V6(SERVER_V6),
        ),
    ] {
        let mut theirs = twin.connect(ip, 0);
        ping(&mut theirs, "twin");
        let port = theirs.local_addr().unwrap().port();
        let before = t.stats();
        let mut seg =
            intercept_common::craft::TcpSegment::new(client, ip, port, PORT, tcp_flags::ACK);
        seg.seq = 0x1234_5678;
        seg.ack_seq = 0x9abc_def0;
        sender
            .send(&intercept_common::craft::tcp_frame(&sender.link, &seg))
            .expect("send the forged ACK");
        std::thread::sleep(Duration::from_millis(100));
        let d = t.stats().delta(&before);
        assert_eq!(
            (d.get(AckBadMac), d.get(PassEstablished)),
            (1, 0),
            "forged ACK {client}:{port} -> {ip}:{PORT}, a flow only the twin holds: {d:?}"
        );
        drop(theirs);
    }
}

/// A second link between the lab's namespaces, without XDP, over which the client sends its
/// SYNs and nothing else: the server's end has the protected end's MAC address (the server's
/// replies leave over the protected link, the only one with the client's addresses); the
/// client routes the server's addresses over the second link, where a u32 filter on its egress
/// redirects every TCP segment without SYN to the protected link. Reverse-path filtering is off
/// on both sides (the SYN arrives on a link the route back does not use). Returns the server
/// end's name.
fn syns_over_a_second_link(t: &InterceptLab) -> String {
    use intercept_ctl::{lab::Lab, netns::VethPair};
    let (srv, cli) = (&t.lab.server, &t.lab.client);
    let other = VethPair::new(srv, &[], cli, &[]).expect("second link");
    let (a2, b2) = (other.a.as_str(), other.b.as_str());
    let mac = Lab::mac(srv, t.srv_if()).unwrap();
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    srv.ip(&["link", "set", a2, "down"]).unwrap();
    srv.ip(&["link", "set", a2, "address", &mac]).unwrap();
    srv.ip(&["link", "set", a2, "up"]).unwrap();
    for (ns, devs) in [(srv, [t.srv_if(), a2]), (cli, [t.lab.veth.b.as_str(), b2])] {
        let mut args = vec![
            "-qw".to_owned(),
            "net.ipv4.conf.all.rp_filter=0".to_owned(),
            "net.ipv4.conf.default.rp_filter=0".to_owned(),
        ];
        args.extend(devs.map(|d| format!("net.ipv4.conf.{d}.rp_filter=0")));
        ns.exec(
            "sysctl",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .unwrap();
    }
    for (fam, server, bits, client) in [
        ("-4", "198.18.0.1", 32, "198.18.0.2"),
        ("-6", "2001:db8::1", 128, "2001:db8::2"),
    ] {
        let dst = format!("{server}/{bits}");
        cli.ip(&[fam, "route", "add", &dst, "dev", b2, "src", client])
            .unwrap();
        cli.ip(&[
            fam,
            "neigh",
            "add",
            server,
            "lladdr",
            &mac,
            "dev",
            b2,
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    let tc = |args: &[&str]| {
        cli.exec("tc", args)
            .unwrap_or_else(|e| panic!("tc {}: {e:#}", args.join(" ")));
    };
    tc(&["qdisc", "add", "dev", b2, "clsact"]);
    // u32 offsets count from the network header; Linux's TCP sends no IP options nor IPv6
    // extension headers, so the TCP flags byte is at 20 + 13 and 40 + 13.
    for (proto, proto_match, flags_at) in [("ip", "ip", "33"), ("ipv6", "ip6", "53")] {
        tc(&[
            "filter",
            "add",
            "dev",
            b2,
            "egress",
            "protocol",
            proto,
            "u32",
            "match",
            proto_match,
            "protocol",
            "6",
            "0xff",
            "match",
            "u8",
            "0",
            "0x02",
            "at",
            flags_at,
            "action",
            "mirred",
            "egress",
            "redirect",
            "dev",
            &t.lab.veth.b,
        ]);
    }
    other.a.clone()
}

/// Asymmetric routing: the client's SYN reaches the server over another, unprotected link, so
/// the kernel answers it and holds a request socket; the client's ACK and request arrive over
/// the protected link, where they carry none of our cookies. They must reach that request
/// socket at once (the client's request is answered without a retransmission). Detaching then
/// removes the program that records request sockets.
#[test]
fn asymmetric_routing_syn_on_another_link_ack_on_ours_connects() {
    require_root("asymmetric_routing_syn_on_another_link_ack_on_ours_connects");
    let t = InterceptLab::echoing(PORT);
    t.end_lookup_window();
    let a2 = syns_over_a_second_link(&t);
    let srv = &t.lab.server;
    let rx_packets = || -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&srv.ip(&["-j", "-s", "link", "show", "dev", &a2]).unwrap())
                .unwrap();
        v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
    };
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let (before, rx_before) = (t.stats(), rx_packets());
        let r = t
            .lab
            .requests(
                addr(ip),
                intercept_ctl::lab::Shape::One,
                5,
                Duration::from_secs(3),
            )
            .expect("requests");
        let d = t.stats().delta(&before);
        assert_eq!(
            (r.failures, r.first_error.as_deref()),
            (0, None),
            "{ip}: every request answered: {d:?}"
        );
        assert_eq!(
            (r.retrans.retrans_segs, r.retrans.timeouts),
            (0, 0),
            "{ip}: no client retransmission: {d:?}"
        );
        // The route was as meant: SYNs over the second link, the rest over ours.
        assert!(
            rx_packets() - rx_before >= 5,
            "{ip}: SYNs on the second link"
        );
        assert_eq!(d.get(SynProtected), 0, "{ip}: no SYN on ours: {d:?}");
        assert!(d.get(Ack) >= 10, "{ip}: ACKs and requests on ours: {d:?}");
        if intercept_tests::kernel_cookie_engine() {
            // Under tcp_syncookies=2 the kernel answered those SYNs with its own cookies, which
            // its helper checks like ours: no request socket is involved.
            assert_eq!(d.get(AckBadMac), 0, "{ip}: {d:?}");
            assert!(d.get(HandedOff) >= 5, "{ip}: {d:?}");
        } else {
            assert_eq!(
                (d.get(AckBadMac), d.get(HandedOff), d.get(SocketLookups)),
                (0, 0, 0),
                "{ip}: {d:?}"
            );
            assert!(
                d.get(PassTimeWait) >= 5,
                "{ip}: the handshake ACKs passed to the kernel's request sockets: {d:?}"
            );
        }
    }
    let st = status(&t);
    assert_eq!(st["socket_table"]["request_sockets_tracked"], true, "{st}");
    assert_eq!(st["limitations"], serde_json::json!([]), "{st}");
    // Detaching removes the request-socket program with the rest.
    let reqsk = || -> Vec<u32> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| {
                p.name_as_str()
                    .is_some_and(|n| n.starts_with("track_request"))
            })
            .map(|p| p.id())
            .collect()
    };
    // Ours only: tests running alongside load programs of the same name.
    let pin = intercept_ctl::pins::PinDir::new(Some(t.srv()), t.srv_if())
        .path()
        .join(intercept_ctl::loader::REQSK_LINK_PIN);
    let ours = aya::programs::links::FdLink::from(
        aya::programs::links::PinnedLink::from_pin(&pin).expect("the request-socket link"),
    )
    .info()
    .expect("link info")
    .program_id();
    let ids: Vec<u32> = reqsk().into_iter().filter(|id| *id == ours).collect();
    assert!(!ids.is_empty(), "the request-socket program is loaded");
    t.ctl(&["detach", t.srv_if()]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while reqsk().iter().any(|id| ids.contains(id)) {
        assert!(
            Instant::now() < deadline,
            "program {ids:?} still loaded 3 s after detach"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
