//! What a legitimate client experiences through the protection, on a veth pair configured like a
//! NIC (`Lab::new`: threaded NAPI, GRO, no TSO or TX checksum offload on the sending end),
//! with clients that send their request right after `connect()` returns: the handshake ACK and
//! the request then reach the server's XDP, TC and TCP in one NAPI poll.
//!
//! Judged by the client: every request answered, no retransmission, and request latency
//! (connect + request + response) close to that of the same setup without protection.
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use intercept_common::Counter::*;
use intercept_ctl::lab::{
    FloodSpec, Requests, SERVER_V4, SERVER_V6, Shape, TcpRetrans, echo_server, flood_until,
};
use intercept_tests::{InterceptLab, NftDrop, require_root};

const PORT: u16 = 8080;
const FAMILIES: [IpAddr; 2] = [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)];

fn addr(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, PORT)
}

/// One test of this file at a time: they measure batching and latency, which the other tests'
/// real-time clients and floods on the same two cores would disturb.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A protected echo server (`InterceptLab` is NIC-like).
fn rig() -> InterceptLab {
    InterceptLab::echoing(PORT)
}

/// [`intercept_tests::answered_first_time`] to the protected port of `ip`.
fn answered_first_time(
    t: &InterceptLab,
    what: &str,
    ip: IpAddr,
    shape: Shape,
    n: usize,
) -> Requests {
    intercept_tests::answered_first_time(t, what, addr(ip), shape, n)
}

#[test]
fn every_first_request_reaches_its_socket_the_first_time_v4_and_v6() {
    require_root("every_first_request_reaches_its_socket_the_first_time_v4_and_v6");
    let _serial = serial();
    let t = rig();
    for (shape, n) in [(Shape::One, 200), (Shape::Split, 50), (Shape::WithFin, 50)] {
        let before = t.stats();
        for ip in FAMILIES {
            answered_first_time(&t, "intercept", ip, shape, n);
        }
        // One handoff per connection, never a second one; its followers passed bare.
        let d = t.stats().delta(&before);
        let conns = 2 * n as u64;
        for (k, want) in [
            (SynProtected, conns),
            (AckValid, conns),
            (HandedOff, conns),
            (HandoffFailed, 0),
            (AckBadMac, 0),
            (Aborted, 0),
        ] {
            assert_eq!(d.get(k), want, "{shape:?} {}: {d:?}", k.name());
        }
        // The rig must have batched the handshake ACK and the request (else this test would
        // not exercise the race): for most connections, the request followed the ACK through
        // XDP before the connection existed (one such segment per connection for a one-segment
        // request; "most", as other tests share the two cores and the NAPI threads' core).
        if shape == Shape::One {
            assert!(
                d.get(PassProven) * 2 >= conns,
                "requests following their handshake ACK in one poll: {} of {conns}: {d:?}",
                d.get(PassProven)
            );
        }
    }
}

/// The handshake ACK lost: the request carries the cookie itself and leads the handoff.
#[test]
fn a_request_whose_handshake_ack_was_lost_completes_the_handshake() {
    require_root("a_request_whose_handshake_ack_was_lost_completes_the_handshake");
    let _serial = serial();
    let t = rig();
    let _lost = drop_pure_acks(&t.lab.client);
    let before = t.stats();
    for ip in FAMILIES {
        answered_first_time(&t, "handshake ACK lost", ip, Shape::One, 50);
    }
    let d = t.stats().delta(&before);
    assert_eq!((d.get(HandedOff), d.get(Dropped)), (100, 0), "{d:?}");
}

/// Watch mode and auto mode while calm leave handshakes to the kernel, whose own request
/// sockets take the ACK and the request in one poll.
#[test]
fn watch_and_auto_modes_lose_no_first_request() {
    require_root("watch_and_auto_modes_lose_no_first_request");
    let _serial = serial();
    let t = rig();
    for mode in ["watch", "auto"] {
        t.ctl(&["mode", t.srv_if(), mode]);
        let before = t.stats();
        for ip in FAMILIES {
            answered_first_time(&t, mode, ip, Shape::One, 100);
        }
        let d = t.stats().delta(&before);
        assert_eq!(
            (d.get(HalfOpenNew), d.get(SynAckSent)),
            (200, 0),
            "{mode}: {d:?}"
        );
    }
}

/// Median request latency through intercept mode against the same rig with the protection off
/// (the kernel alone), measured in 20 interleaved rounds of 10 so that bursts of load on this
/// VM hit both alike. Under
/// a flood, the rings of this two-core rig overflow now and then, as a NIC's do, and a lost SYN
/// or SYN-ACK costs its client a retransmission whatever the protection: then every request
/// must still be answered, but retransmissions are only reported.
fn medians(t: &InterceptLab, ip: IpAddr, flood: bool) -> (Duration, Duration) {
    let (mut off, mut on) = (Requests::default(), Requests::default());
    for _ in 0..20 {
        for (mode, into) in [("off", &mut off), ("intercept", &mut on)] {
            t.ctl(&["mode", t.srv_if(), mode]);
            let r = if flood {
                let r = t
                    .lab
                    .requests(addr(ip), Shape::One, 10, Duration::from_secs(3))
                    .expect("requests");
                assert_eq!(r.failures, 0, "{mode}, {ip}, flood: {:?}", r.first_error);
                if r.retrans != TcpRetrans::default() {
                    eprintln!(
                        "{mode}, {ip}, flood: the client retransmitted: {:?}",
                        r.retrans
                    );
                }
                r
            } else {
                answered_first_time(t, mode, ip, Shape::One, 10)
            };
            into.latencies.extend(r.latencies);
        }
    }
    (off.median(), on.median())
}

fn assert_within(ip: IpAddr, what: &str, (off, on): (Duration, Duration)) {
    eprintln!("{ip} {what}: median request latency off {off:?}, intercept {on:?}");
    assert!(
        on.as_secs_f64() <= 1.5 * off.as_secs_f64(),
        "{ip} {what}: median request latency through intercept {on:?} is over 1.5x that \
         without protection ({off:?})"
    );
}

#[test]
fn request_latency_is_within_1_5x_of_no_protection_with_and_without_a_flood() {
    require_root("request_latency_is_within_1_5x_of_no_protection_with_and_without_a_flood");
    let _serial = serial();
    let t = rig();
    for ip in FAMILIES {
        assert_within(ip, "no flood", medians(&t, ip, false));
    }
    // A bounded spoofed SYN flood at the protected port for the whole measurement.
    let sender = t.lab.raw_sender().expect("raw sender");
    let spec = FloodSpec {
        target: addr(IpAddr::V4(SERVER_V4)),
        count: 1_200_000,
        max_time: Duration::from_secs(60),
        rate: 20_000,
        flags: intercept_common::parse::tcp_flags::SYN,
        payload: 0,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let flooder = std::thread::spawn(move || flood_until(&sender, spec, &s));
    std::thread::sleep(Duration::from_millis(200));
    let before = t.stats();
    for ip in FAMILIES {
        assert_within(ip, "20k SYN/s flood", medians(&t, ip, true));
    }
    assert!(
        !flooder.is_finished(),
        "the flood ended before the measurement did"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let d = t.stats().delta(&before);
    assert!(d.get(Syn) > 1_000, "the flood reached XDP: {d:?}");
    let _ = flooder.join().expect("flood thread").expect("flood");
}

/// Drops every pure ACK the client sends to the port (a Linux client's handshake ACK with
/// timestamps is 52 bytes of IPv4, 32 bytes of IPv6 payload; its later pure ACKs go too, which
/// only makes the server retransmit), so each handshake's ACK is lost and its request arrives
/// alone.
fn drop_pure_acks(ns: &intercept_ctl::netns::Netns) -> NftDrop<'_> {
    NftDrop::new(
        ns,
        "xi_lost",
        &[
            format!("ip length 52 tcp dport {PORT} tcp flags == ack"),
            format!("ip6 length 32 tcp dport {PORT} tcp flags == ack"),
        ],
    )
}

/// A listener whose accept queue is full: the kernel would create the connection only to drop it
/// and leave the client's request to a listener that resets it. The handoff is dropped instead,
/// with the request that followed it, and the client's retransmission completes once the server
/// accepts again: no client is reset.
#[test]
fn a_full_accept_queue_delays_handshakes_and_resets_none() {
    require_root("a_full_accept_queue_delays_handshakes_and_resets_none");
    let _serial = serial();
    const SLOW: u16 = 8083;
    let t = InterceptLab::new(PORT);
    t.ctl(&[
        "scope",
        "add",
        t.srv_if(),
        "198.18.0.1/32",
        "--ports",
        "8083",
    ]);
    // Backlog 1: the queue is full with two connections not yet accepted.
    let l: std::net::TcpListener = t
        .lab
        .server
        .spawn(|| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.bind(&SocketAddr::new(IpAddr::V4(SERVER_V4), SLOW).into())?;
            s.listen(1)?;
            Ok::<_, std::io::Error>(s.into())
        })
        .join()
        .unwrap()
        .expect("listen with backlog 1");
    let before = t.stats();
    let target = SocketAddr::new(IpAddr::V4(SERVER_V4), SLOW);
    let clients: Vec<_> = (0..4)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(50 * i));
            let ns = t.lab.client.name().to_owned();
            std::thread::spawn(move || {
                intercept_ctl::netns::enter(&ns).expect("client netns");
                let start = std::time::Instant::now();
                let r = (|| -> std::io::Result<()> {
                    use std::io::{Read as _, Write as _};
                    let mut s =
                        std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
                    s.set_read_timeout(Some(Duration::from_secs(8)))?;
                    s.write_all(b"queued request!!")?;
                    let mut b = [0u8; 16];
                    s.read_exact(&mut b)?;
                    Ok(())
                })();
                (r, start.elapsed())
            })
        })
        .collect();
    // Let the handshakes meet the full queue and the clients retransmit, then serve.
    std::thread::sleep(Duration::from_millis(1_500));
    let mid = t.stats().delta(&before);
    echo_server(l);
    for (i, c) in clients.into_iter().enumerate() {
        let (r, took) = c.join().expect("client thread");
        assert!(
            r.is_ok(),
            "client {i}: {r:?} after {took:?} (no client may be reset while the queue is full)"
        );
    }
    let d = t.stats().delta(&before);
    if intercept_tests::kernel_cookie_engine() {
        // The kernel makes no cookie for a listener whose accept queue is full: its SYNs wait
        // for the client's retransmission. An ACK that still meets the full queue is the
        // kernel's to drop, and the client's next segment carries the cookie again.
        assert!(
            mid.get(SynCookieRefused) >= 1,
            "the SYNs met the full queue: {mid:?}"
        );
        assert!(d.get(HandedOff) >= 4, "each connection handed over: {d:?}");
    } else {
        assert!(
            mid.get(AckQueueFull) >= 1,
            "the handoffs met the full queue: {mid:?}"
        );
        assert_eq!(
            d.get(HandedOff),
            4,
            "each connection handed off once it fit: {d:?}"
        );
    }
}
