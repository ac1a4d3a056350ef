//! End to end in network namespaces: real kernel TCP between a real client and a real server
//! across a veth pair, the program attached with the real intercept-ctl binary, and its counters
//! compared with the exact segments the handshakes produced.
use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use intercept_common::Counter::{self, *};
use intercept_ctl::lab::{Lab, SERVER_V4, SERVER_V6};
use intercept_tests::{abort, counters_from_json, ctl_ok, require_root};

struct Attached<'a> {
    ns: &'a str,
    iface: &'a str,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let _ = intercept_tests::ctl(&["--netns", self.ns, "detach", self.iface]);
    }
}

fn attach<'a>(ns: &'a str, iface: &'a str) -> Attached<'a> {
    let out = ctl_ok(&["--netns", ns, "attach", iface]);
    assert!(out.contains("attached xdp_intercept"), "{out}");
    Attached { ns, iface }
}

fn stats(ns: &str, iface: &str) -> Vec<(Counter, u64)> {
    counters_from_json(&ctl_ok(&["--netns", ns, "--json", "stats", iface]))
}

fn get(c: &[(Counter, u64)], k: Counter) -> u64 {
    c.iter().find(|(x, _)| *x == k).map(|(_, v)| *v).unwrap()
}

/// Each connection is: SYN, SYN-ACK, ACK, then the client aborts it (SO_LINGER 0: one RST) and
/// the server reads the reset. So the server's interface sees exactly N SYN, N ACK, N RST and
/// no SYN-ACK; the client's sees exactly N SYN-ACK and nothing else of TCP.
#[test]
fn counts_exactly_the_handshake_segments_v4_and_v6() {
    require_root("counts_exactly_the_handshake_segments_v4_and_v6");
    let lab = Lab::new().expect("lab");
    let (sns, cns) = (lab.server.name(), lab.client.name());
    let _s = attach(sns, &lab.veth.a);
    let _c = attach(cns, &lab.veth.b);
    let (l4, l6) = lab.listen(8080).expect("listen");
    const N: u64 = 4;
    for (ip, listener) in [(IpAddr::V4(SERVER_V4), &l4), (IpAddr::V6(SERVER_V6), &l6)] {
        for i in 0..N {
            let c = lab
                .connect(SocketAddr::new(ip, 8080), Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connect {i} to {ip}: {e:#}"));
            let (mut s, peer) = listener.accept().expect("accept");
            assert_eq!(peer.ip(), c.local_addr().unwrap().ip());
            abort(c); // one RST
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut b = [0u8; 1];
            let r = s.read(&mut b);
            assert!(
                matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                "server saw {r:?}, not the client's RST, on connection {i} to {ip}"
            );
        }
    }
    let srv = stats(sns, &lab.veth.a);
    let cli = stats(cns, &lab.veth.b);
    let n = 2 * N;
    for (k, want) in [
        (Syn, n),
        (Ack, n),
        (Rst, n),
        (SynAck, 0),
        (Tcp, 3 * n),
        (Ipv4, 3 * N),
        (Malformed, 0),
    ] {
        assert_eq!(get(&srv, k), want, "server side {}: {srv:?}", k.name());
    }
    assert!(
        get(&srv, Ipv6) >= 3 * N,
        "server IPv6 (TCP + neighbour discovery): {srv:?}"
    );
    for (k, want) in [
        (SynAck, n),
        (Syn, 0),
        (Ack, 0),
        (Rst, 0),
        (Tcp, n),
        (Malformed, 0),
    ] {
        assert_eq!(get(&cli, k), want, "client side {}: {cli:?}", k.name());
    }
    for side in [&srv, &cli] {
        assert_eq!(
            get(side, Packets),
            get(side, Passed),
            "every frame passed: {side:?}"
        );
        assert_eq!(
            get(side, Packets),
            get(side, Tcp) + get(side, NonTcp) + get(side, Fragment) + get(side, Malformed),
            "{side:?}"
        );
    }
}
