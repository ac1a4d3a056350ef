//! The sock_diag dumps attach seeds the socket table (`table_flows`) and the time-wait filter
//! (`time_wait_flows`) from: exactly the server's sockets that `ss` lists in those states, IPv4
//! and IPv6, each as its inbound flow (remote -> local).
use std::{
    collections::HashSet,
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use intercept_common::{config::FlowKey, cookie::words_of};
use intercept_ctl::{
    lab::{Lab, SERVER_V4, SERVER_V6, echo_server},
    sockdiag::SockDiag,
};
use intercept_tests::{ping, require_root};

const PORT: u16 = 8080;
/// A port whose server closes each connection at once (its side ends in TIME_WAIT).
const CLOSING_PORT: u16 = 8081;

/// The inbound flows of the server's TCP sockets in `state`, as `ss -Htn state STATE` prints
/// them (`Recv-Q Send-Q Local:Port Peer:Port`, IPv6 addresses in brackets).
fn ss_flows(lab: &Lab, state: &str) -> HashSet<FlowKey> {
    let out = lab
        .server
        .exec("ss", &["-Htn", "state", state])
        .expect("ss");
    let endpoint = |s: &str| -> (IpAddr, u16) {
        let (ip, port) = s.rsplit_once(':').expect("address:port");
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        (ip.parse().expect("address"), port.parse().expect("port"))
    };
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ((local, lport), (peer, pport)) = (endpoint(f[2]), endpoint(f[3]));
            FlowKey {
                saddr: words_of(peer),
                daddr: words_of(local),
                sport: pport,
                dport: lport,
            }
        })
        .collect()
}

#[test]
fn the_dumps_list_what_ss_lists() {
    require_root("the_dumps_list_what_ss_lists");
    let lab = Lab::new().expect("lab");
    let (l4, l6) = lab.listen(PORT).expect("listen");
    echo_server(l4);
    echo_server(l6);
    let (c4, c6) = lab.listen(CLOSING_PORT).expect("listen");
    for l in [c4, c6] {
        // Accepted and closed at once: the server's FIN goes first.
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s);
            }
        });
    }
    let mut open = Vec::new();
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        for _ in 0..2 {
            let mut c = lab
                .connect(SocketAddr::new(ip, PORT), Duration::from_secs(3))
                .expect("connect");
            ping(&mut c, "established");
            open.push(c);
        }
        let closed: TcpStream = lab
            .connect(SocketAddr::new(ip, CLOSING_PORT), Duration::from_secs(3))
            .expect("connect");
        lab.client
            .spawn(move || {
                let mut c = closed;
                c.set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                // The server's FIN; ours answers it when `c` is dropped.
                assert_eq!(c.read(&mut [0u8; 1]).expect("read"), 0, "the server closes");
            })
            .join()
            .expect("client thread");
    }
    std::thread::sleep(Duration::from_millis(200));
    let (table, time_wait) = lab
        .server
        .spawn(|| {
            let mut d = SockDiag::open().expect("sock_diag");
            (
                d.table_flows().expect("table dump"),
                d.time_wait_flows().expect("time-wait dump"),
            )
        })
        .join()
        .expect("sock_diag thread");
    let (table, time_wait): (HashSet<_>, HashSet<_>) =
        (table.into_iter().collect(), time_wait.into_iter().collect());
    let (want_table, want_tw) = (ss_flows(&lab, "established"), ss_flows(&lab, "time-wait"));
    assert_eq!(
        want_table.len(),
        4,
        "two open connections per family: {want_table:?}"
    );
    assert_eq!(
        want_tw.len(),
        2,
        "one server-closed connection per family: {want_tw:?}"
    );
    assert_eq!(table, want_table, "the socket-table dump");
    assert_eq!(time_wait, want_tw, "the time-wait dump");
    drop(open);
}
