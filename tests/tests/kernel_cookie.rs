//! The kernel-cookie engine (`attach --engine kernel-cookie`), end to end with kernel TCP in
//! namespaces: the engine of kernels before 6.9, forced here on any kernel that has its helpers.
//! Its SYN-ACKs carry the kernel's own cookie and the options the kernel will decode from the
//! ACK; a listener that picks its own window is left to the kernel; the sysctls it needs are set
//! while intercept mode is in force, restored after, and watched by `status`. (Floods, mode
//! changes and the rest of intercept mode: the other end-to-end tests, which `./x test` runs with
//! this engine too.)
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use intercept_common::Counter::*;
use intercept_ctl::lab::{Capture, SERVER_V4, SERVER_V6, Shape, syn_recv_count};
use intercept_tests::{
    InterceptLab, answered_first_time, ctl, echo_server, require_root, status, stderr,
};

const PORT: u16 = 8081;

fn addr(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, PORT)
}

/// The lab attached with the kernel-cookie engine, echoing on `PORT`.
fn rig() -> InterceptLab {
    let t = InterceptLab::attached(PORT, &["--engine", "kernel-cookie"]);
    for prefix in ["198.18.0.1/32", "2001:db8::1/128"] {
        t.ctl(&[
            "scope",
            "add",
            t.srv_if(),
            prefix,
            "--ports",
            &(PORT + 3).to_string(),
        ]);
    }
    let (l4, l6) = t.lab.listen(PORT).expect("listen");
    echo_server(l4);
    echo_server(l6);
    t
}

fn sysctls(t: &InterceptLab) -> (String, String) {
    let get = |k: &str| {
        t.lab
            .server
            .exec("sysctl", &["-n", k])
            .expect("sysctl")
            .trim()
            .to_owned()
    };
    (
        get("net.ipv4.tcp_syncookies"),
        get("net.ipv4.tcp_timestamps"),
    )
}

/// What a socket's `TCP_INFO` says it negotiated: timestamps, SACK, and the send and receive
/// window scales (`None`: no window scaling).
#[derive(Debug, PartialEq, Eq)]
struct Negotiated {
    ts: bool,
    sack: bool,
    wscale: Option<(u8, u8)>,
}

fn negotiated(s: &TcpStream) -> Negotiated {
    use std::os::fd::AsRawFd as _;
    // struct tcp_info (include/uapi/linux/tcp.h): byte 5 is tcpi_options, byte 6 holds
    // tcpi_snd_wscale (low nibble) and tcpi_rcv_wscale (high nibble).
    let mut b = [0u8; 256];
    let mut len = b.len() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            b.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO");
    let o = b[5];
    Negotiated {
        ts: o & 1 != 0,
        sack: o & 2 != 0,
        wscale: (o & 4 != 0).then_some((b[6] & 0xf, b[6] >> 4)),
    }
}

/// A connection from the client to a listener of the test's own on `port`, with what each end
/// negotiated checked against the other's: the window scale our SYN-ACK offered (the client's
/// send scale) must be the one the kernel gave the server's socket (its receive scale), or the
/// client misreads every window; the client's own scale, SACK and timestamps must reach the
/// server through the cookie. Then a bulk round trip, checked byte for byte. The listener sets
/// `SO_RCVBUF` to `rcvbuf` if given. Returns what the server's socket negotiated.
fn check_connection(t: &InterceptLab, to: SocketAddr, n: usize, rcvbuf: Option<i32>) -> Negotiated {
    use std::os::fd::AsRawFd as _;
    let listener = t
        .lab
        .server
        .spawn(move || std::net::TcpListener::bind(to))
        .join()
        .unwrap()
        .expect("listen");
    if let Some(v) = rcvbuf {
        // SAFETY: a valid socket and option of its size.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const v).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUF");
    }
    let c = t
        .lab
        .connect(to, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect {to}: {e:#}"));
    let (s, _) = listener.accept().expect("accept");
    let (client, server) = (negotiated(&c), negotiated(&s));
    let swap = |w: Option<(u8, u8)>| w.map(|(a, b)| (b, a));
    assert_eq!(
        (client.ts, client.sack, swap(client.wscale)),
        (server.ts, server.sack, server.wscale),
        "{to}: what the client negotiated against what the server's socket has"
    );
    let mut echo = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut b = vec![0u8; 64 << 10];
        loop {
            match echo.read(&mut b) {
                Ok(0) | Err(_) => return,
                Ok(k) => {
                    if echo.write_all(&b[..k]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    bulk_echo(c, n);
    server
}

/// Sends `n` bytes through the echo server and reads them back, checking every byte.
fn bulk_echo(c: TcpStream, n: usize) {
    let data: Vec<u8> = (0..n).map(|i| (i * 131 % 251) as u8).collect();
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let mut back = vec![0u8; n];
    let mut r = c;
    r.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    r.read_exact(&mut back).expect("echo of the bulk transfer");
    writer.join().unwrap().expect("bulk write");
    assert!(back == data, "the bulk transfer came back altered");
}

/// Every first request is answered the first time, over IPv4 and IPv6, in each shape a client
/// sends it; the SYN-ACKs are ours (the server's kernel sends none), the kernel completes every
/// handshake from its own cookie with the options our SYN-ACK offered, and nothing waits in its
/// SYN queue.
#[test]
fn kernel_cookie_engine_answers_every_first_request_with_matching_options_v4_and_v6() {
    require_root(
        "kernel_cookie_engine_answers_every_first_request_with_matching_options_v4_and_v6",
    );
    let t = rig();
    let st = status(&t);
    assert_eq!(st["engine"], "kernel-cookie", "{st}");
    assert_eq!(st["tc_handoff_attached"], false, "no TC program: {st}");
    assert_eq!(st["healthy"], true, "{st}");
    assert_eq!(
        sysctls(&t),
        ("2".into(), "2".into()),
        "intercept mode's sysctls"
    );
    let cap = Capture::start(&t.lab.server, t.srv_if()).expect("capture");
    let before = t.stats();
    let n = 20;
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        for shape in [Shape::One, Shape::Split, Shape::WithFin] {
            let _ = answered_first_time(&t, "kernel cookie", addr(ip), shape, n);
        }
        let server = check_connection(&t, SocketAddr::new(ip, PORT + 3), 8 << 20, None);
        assert!(
            server.ts && server.sack && server.wscale.is_some(),
            "{ip}: the options a Linux client offers reach the server: {server:?}"
        );
    }
    let seen = cap.finish();
    let d = t.stats().delta(&before);
    let handshakes = 2 * (3 * n as u64 + 1);
    assert_eq!(seen.syn, 0, "the server's kernel saw a SYN: {seen:?}");
    assert_eq!(
        seen.syn_ack_out, 0,
        "the server's kernel sent a SYN-ACK: {seen:?}"
    );
    assert_eq!(d.get(SynAckSent), handshakes, "{d:?}");
    assert!(d.get(AckValid) >= handshakes, "{d:?}");
    assert_eq!(d.get(HandedOff), d.get(AckValid), "{d:?}");
    for k in [
        AckBadMac,
        Aborted,
        SynCookieRefused,
        SynOwnWindow,
        SynNoListener,
    ] {
        assert_eq!(d.get(k), 0, "{}: {d:?}", k.name());
    }
    assert_eq!(syn_recv_count(&t.lab.server).unwrap(), 0);
}

/// A listener that sets `SO_RCVBUF` gets a window scale of its own from the kernel, which our
/// SYN-ACK cannot know: its SYNs go to the kernel, which answers with its own cookie (still no
/// SYN queue), and the connection's window scales agree.
#[test]
fn kernel_cookie_engine_leaves_a_listener_with_its_own_window_to_the_kernel() {
    require_root("kernel_cookie_engine_leaves_a_listener_with_its_own_window_to_the_kernel");
    let port = PORT + 1;
    let t = InterceptLab::attached(port, &["--engine", "kernel-cookie"]);
    let before = t.stats();
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let _ = check_connection(&t, SocketAddr::new(ip, port), 1 << 20, Some(16 << 10));
    }
    let d = t.stats().delta(&before);
    assert_eq!(d.get(SynOwnWindow), 2, "{d:?}");
    let st = status(&t);
    assert!(
        st["limitations"].as_array().is_some_and(|l| l
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("own receive window")))),
        "status says those SYNs cost the kernel: {st}"
    );
    assert_eq!(d.get(SynAckSent), 0, "{d:?}");
    assert_eq!(
        syn_recv_count(&t.lab.server).unwrap(),
        0,
        "the kernel used cookies"
    );
}

/// The sysctls: set on the way into intercept mode (each change said), `tcp_syncookies` restored
/// on the way out, both at detach; a value changed under a running attachment makes it
/// unhealthy, with the fix, until a mode change sets it again.
#[test]
fn kernel_cookie_engine_sets_and_restores_its_sysctls() {
    require_root("kernel_cookie_engine_sets_and_restores_its_sysctls");
    let port = PORT + 2;
    let t = InterceptLab::attached(port, &["--engine", "kernel-cookie", "--mode", "watch"]);
    let set = |k: &str, v: &str| {
        let _ = t
            .lab
            .server
            .exec("sysctl", &["-qw", &format!("{k}={v}")])
            .expect("sysctl");
    };
    set("net.ipv4.tcp_syncookies", "1");
    set("net.ipv4.tcp_timestamps", "1");
    let o = ctl(&["--netns", t.srv(), "mode", t.srv_if(), "intercept"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = stderr(&o);
    assert!(
        said.contains("net.ipv4.tcp_syncookies=2 (was 1)")
            && said.contains("net.ipv4.tcp_timestamps=2 (was 1)"),
        "each change is said: {said}"
    );
    assert_eq!(sysctls(&t), ("2".into(), "2".into()));
    // Changed under it: unhealthy, with what to do.
    set("net.ipv4.tcp_syncookies", "1");
    let o = ctl(&["--netns", t.srv(), "--json", "status", t.srv_if()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status JSON");
    assert_eq!(st["health"]["problem"], "kernel_settings", "{st}");
    assert!(
        st["health"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("net.ipv4.tcp_syncookies=1 (needs 2)")),
        "{st}"
    );
    // Any configuration write in intercept mode sets it again.
    t.ctl(&["mode", t.srv_if(), "intercept"]);
    assert_eq!(status(&t)["healthy"], true);
    // The window scale the kernel gives connections changes with tcp_rmem: the SYN-ACKs'
    // would no longer match, and status says so until a write recomputes it.
    let rmem = t
        .lab
        .server
        .exec("sysctl", &["-n", "net.ipv4.tcp_rmem"])
        .expect("sysctl");
    let mut r: Vec<&str> = rmem.split_whitespace().collect();
    r[2] = "67108864";
    set("net.ipv4.tcp_rmem", &r.join(" "));
    let o = ctl(&["--netns", t.srv(), "--json", "status", t.srv_if()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status JSON");
    assert!(
        st["health"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("window scale")),
        "{st}"
    );
    t.ctl(&["mode", t.srv_if(), "intercept"]);
    let st = status(&t);
    assert_eq!(st["healthy"], true, "{st}");
    assert_eq!(
        st["synack"]["wscale"], 11,
        "64 MiB in 16 bits: scale 11: {st}"
    );
    assert_eq!(st["ecn"], false, "the engine never negotiates ECN: {st}");
    t.ctl(&["mode", t.srv_if(), "watch"]);
    assert_eq!(
        sysctls(&t),
        ("1".into(), "2".into()),
        "tcp_syncookies restored on leaving intercept mode, timestamps kept for handshakes in \
         flight"
    );
    t.ctl(&["mode", t.srv_if(), "intercept"]);
    // Our window scale is the kernel's, computed from its sysctls: an operator's is refused.
    let o = ctl(&["--netns", t.srv(), "synack", t.srv_if(), "--wscale", "3"]);
    assert!(
        !o.status.success() && stderr(&o).contains("window scale the kernel itself"),
        "{}",
        stderr(&o)
    );
    // A second attachment of the engine in the namespace: the sysctls are the namespace's, so
    // they stay while either needs them, and only the last detach restores them.
    t.lab
        .server
        .ip(&["link", "add", "kc1", "type", "veth", "peer", "name", "kc2"])
        .expect("a second interface");
    t.ctl(&["attach", "kc1", "--engine", "kernel-cookie"]);
    let o = ctl(&["--netns", t.srv(), "detach", t.srv_if()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        sysctls(&t),
        ("2".into(), "2".into()),
        "kept for the other attachment"
    );
    let o = ctl(&["--netns", t.srv(), "detach", "kc1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        sysctls(&t),
        ("1".into(), "1".into()),
        "both restored at the last detach"
    );
}

/// An attach that fails after its configuration set the sysctls (here by fault injection, as a
/// refused program would) puts them back: nothing is attached, so nothing needs them.
#[test]
fn a_failed_attach_of_the_kernel_cookie_engine_restores_its_sysctls() {
    require_root("a_failed_attach_of_the_kernel_cookie_engine_restores_its_sysctls");
    let t = InterceptLab::attached(PORT + 4, &["--engine", "kernel-cookie", "--mode", "watch"]);
    let _ = ctl(&["--netns", t.srv(), "detach", t.srv_if()]);
    assert_eq!(
        sysctls(&t),
        ("1".into(), "1".into()),
        "the namespace's defaults"
    );
    let o = std::process::Command::new(intercept_tests::ctl_bin())
        .args([
            "--netns",
            t.srv(),
            "attach",
            t.srv_if(),
            "--engine",
            "kernel-cookie",
        ])
        .env(intercept_ctl::faults::VAR, "attach:configure")
        .output()
        .expect("run intercept-ctl");
    let said = stderr(&o);
    assert!(
        !o.status.success() && said.contains("fault injection: attach:configure failed"),
        "{said}"
    );
    assert!(
        said.contains("set net.ipv4.tcp_syncookies=2") && said.contains("restored"),
        "the change and its undoing are said: {said}"
    );
    assert_eq!(
        sysctls(&t),
        ("1".into(), "1".into()),
        "restored after the failed attach"
    );
}
