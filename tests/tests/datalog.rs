//! The data path's log: a rare event (here, handoffs the kernel refuses) reaches the daemon's log
//! naming the interface and the kernel's return code, and a flood of them is cut to
//! `LOG_LINES_PER_SECOND` lines a second per CPU, the lines cut counted (`log_suppressed`) and
//! said by the daemon.
use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use intercept_common::{Counter, maps::LOG_LINES_PER_SECOND};
use intercept_ctl::lab::SERVER_V4;
use intercept_tests::{Daemon, InterceptLab, require_root};

const PORT: u16 = 8080;

/// Handshakes whose handoff the kernel refuses, as fast as one client makes them.
const HANDSHAKES: usize = 200;

/// CPUs the kernel runs programs on (each has its own budget of lines).
fn cpus() -> u64 {
    // SAFETY: a plain sysconf(3) query.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(n).expect("online CPUs")
}

#[test]
fn refused_handoffs_reach_the_daemon_log_at_a_bounded_rate() {
    require_root("refused_handoffs_reach_the_daemon_log_at_a_bounded_rate");
    let t = InterceptLab::new(PORT);
    let (_l4, _l6) = t.lab.listen(PORT).expect("listen");
    // With SACK off in the server's namespace, `bpf_sk_assign_tcp_reqsk` refuses (-EINVAL) the
    // handoff of every cookie that carries SACK-permitted, as a Linux client's SYN asks for.
    t.lab
        .server
        .exec("sysctl", &["-qw", "net.ipv4.tcp_sack=0"])
        .expect("sysctl");
    let d = Daemon::start(t.srv(), t.srv_if());
    let before = t.stats();
    let start = Instant::now();
    let target = SocketAddr::new(IpAddr::V4(SERVER_V4), PORT);
    t.lab
        .client
        .spawn(move || {
            for _ in 0..HANDSHAKES {
                // connect() returns once the cookie SYN-ACK is in and the ACK is sent; the
                // server's kernel then refuses that ACK's handoff and resets the connection.
                let _ = TcpStream::connect_timeout(&target, Duration::from_secs(2));
            }
        })
        .join()
        .expect("client thread");
    let took = start.elapsed();
    // The daemon reads the counters once a second and says what its log missed: two readings.
    std::thread::sleep(Duration::from_millis(2500));
    let after = t.stats();
    let (_, err) = d.stop();
    let refused = after.get(Counter::HandoffFailed) - before.get(Counter::HandoffFailed);
    let cut = after.get(Counter::LogSuppressed) - before.get(Counter::LogSuppressed);
    assert!(
        refused >= HANDSHAKES as u64 / 2,
        "the kernel refused only {refused} of {HANDSHAKES} handoffs to {target}; daemon log:\n{err}"
    );
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("data path warning: handoff refused"))
        .collect();
    for l in &lines {
        assert!(
            l.starts_with(&format!("intercept-ctl: {}: ", t.srv_if()))
                && l.contains("bpf_sk_assign_tcp_reqsk returned -22 for port 8080; client [::ffff:198.18.0.2]:"),
            "a refused handoff to {target} logged as: {l}"
        );
    }
    assert_eq!(
        lines.len() as u64 + cut,
        refused,
        "every refused handoff to {target} is either logged or counted as cut ({} logged, {cut} \
         cut); daemon log:\n{err}",
        lines.len()
    );
    // Lines of a CPU fall in the seconds the flood touched: at most one more than it lasted.
    let most = LOG_LINES_PER_SECOND * cpus() * (took.as_secs() + 2);
    assert!(
        !lines.is_empty() && lines.len() as u64 <= most && cut > 0,
        "{} lines logged for {refused} refused handoffs in {took:?} (at most {most}), {cut} cut",
        lines.len()
    );
    let said: u64 = err
        .lines()
        .filter_map(|l| {
            l.split_once(": ")?
                .1
                .split_once(": ")?
                .1
                .strip_suffix(&format!(
                    " more data-path log lines cut by the rate limit ({LOG_LINES_PER_SECOND} a \
                     second per CPU)"
                ))?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(
        said, cut,
        "the daemon says how many lines were cut; its log:\n{err}"
    );
}
