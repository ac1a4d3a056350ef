//! Faults and concurrent controllers (issue 14, "never silently unprotected"): the controller
//! killed with SIGKILL at each step of attach, reload and rotation, then restarted; two
//! controllers at once (racing attaches, two daemons, an operator writing while another writes);
//! a daemon whose every tick fails. Throughout, the data path keeps its last good configuration,
//! `status` never calls protected what is not, and a forged ACK (one with a cookie of the
//! all-zero key among them) is dropped.
use std::{
    net::{IpAddr, SocketAddr},
    process::{Command, Output},
    sync::Mutex,
    time::Duration,
};

use intercept_common::{
    Counter,
    config::Mode,
    cookie::{CookieOpts, Flow, Key, SynInput, make, words_of},
    craft::{TcpSegment, tcp_frame},
    parse::tcp_flags,
};
use intercept_ctl::{
    control::Maps,
    faults,
    lab::{SERVER_V4, Shape},
};
use intercept_tests::{Daemon, InterceptLab, ctl, ctl_bin, deltas, require_root, stderr};

const PORT: u16 = 8080;

/// One lab at a time: these tests attach and detach repeatedly and time requests.
static SERIAL: Mutex<()> = Mutex::new(());

/// intercept-ctl `args` in the server namespace with fault `point` named.
fn ctl_fault(t: &InterceptLab, point: &str, args: &[&str]) -> Output {
    Command::new(ctl_bin())
        .args(["--netns", t.srv()])
        .args(args)
        .env(faults::VAR, point)
        .output()
        .expect("run intercept-ctl")
}

fn assert_killed(o: &Output, point: &str) {
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGKILL),
        "the fault at {point} must kill the controller ({}): {}",
        o.status,
        stderr(o)
    );
}

/// Whether the kernel has an XDP program on the server interface (its own view, not ours).
fn kernel_has_xdp(t: &InterceptLab) -> bool {
    let out = t
        .lab
        .server
        .ip(&["-j", "-d", "link", "show", "dev", t.srv_if()])
        .expect("ip link");
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    !v[0]["xdp"].is_null()
}

/// `status` of the server interface: (exit code, healthy, stderr).
fn status(t: &InterceptLab) -> (Option<i32>, bool, String) {
    let o = ctl(&["--netns", t.srv(), "--json", "status", t.srv_if()]);
    let healthy =
        serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok_and(|v| v["healthy"] == true);
    (o.status.code(), healthy, stderr(&o))
}

/// Waits until `status` says healthy (a daemon attaching), up to 20 s.
fn wait_attached(t: &InterceptLab, when: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, healthy, err) = status(t);
        if healthy {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{when}: not attached after 20 s: {err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Protects the lab's port again (a fresh attachment starts with an empty scope).
fn protect(t: &InterceptLab) {
    for prefix in ["198.18.0.1/32", "2001:db8::1/128"] {
        let _ = t.ctl(&[
            "scope",
            "add",
            t.srv_if(),
            prefix,
            "--ports",
            &PORT.to_string(),
        ]);
    }
}

/// The attachment protects: healthy in `status`, in the kernel's view, in intercept mode with
/// a loaded secret; legitimate requests succeed at once; a forged ACK with a cookie of the
/// all-zero key is dropped.
fn assert_protecting(t: &InterceptLab, when: &str) {
    let (code, healthy, err) = status(t);
    assert!(
        code == Some(0) && healthy,
        "{when}: status must say healthy: {err}"
    );
    assert!(kernel_has_xdp(t), "{when}: the kernel shows no XDP program");
    let m = Maps::open(t.srv_if(), Some(t.srv())).expect("maps");
    let cfg = m.config().expect("config");
    assert_eq!(
        Mode::effective(&cfg),
        Mode::Intercept,
        "{when}: mode {:?}",
        cfg.mode
    );
    assert!(
        m.secrets()
            .expect("secrets")
            .keys
            .iter()
            .all(|k| k.k != [0, 0]),
        "{when}: a zero secret is loaded"
    );
    let before = t.stats();
    let target = SocketAddr::new(IpAddr::V4(SERVER_V4), PORT);
    let r = t
        .lab
        .requests(target, Shape::One, 5, Duration::from_secs(2))
        .expect("requests");
    assert_eq!(r.failures, 0, "{when}: legitimate requests failed: {r:?}");
    send_zero_key_ack(t);
    std::thread::sleep(Duration::from_millis(100));
    let d = deltas(&before, &t.stats());
    let got = |c| d.iter().find(|(k, _)| *k == c).map_or(0, |(_, n)| *n);
    assert!(
        got(Counter::SynAckSent) >= 5 && got(Counter::HandedOff) >= 5,
        "{when}: the handshakes were not ours: {d:?}"
    );
    assert_eq!(
        got(Counter::AckBadMac),
        1,
        "{when}: the zero-key ACK was not dropped as forged: {d:?}"
    );
}

/// Sends the ACK a blind attacker makes with the all-zero key (the key of an attachment whose
/// secrets were never written).
fn send_zero_key_ack(t: &InterceptLab) {
    let client: IpAddr = "198.18.0.2".parse().expect("addr");
    let flow = Flow {
        saddr: words_of(client),
        daddr: words_of(IpAddr::V4(SERVER_V4)),
        sport: 40_999,
        dport: PORT,
    };
    let isn = 77_000;
    let opts = CookieOpts {
        mss_idx: 3,
        wscale: 7,
        sack: true,
        ecn: false,
    };
    let zero = Key { k: [0, 0] };
    let cookie = make(
        &zero,
        0,
        0,
        &SynInput {
            flow,
            isn,
            now_ns: intercept_ctl::watchctl::monotonic_ns(),
            opts,
            ts: false,
        },
    );
    let mut seg = TcpSegment::new(client, IpAddr::V4(SERVER_V4), 40_999, PORT, tcp_flags::ACK);
    seg.seq = isn.wrapping_add(1);
    seg.ack_seq = cookie.isn.wrapping_add(1);
    let sender = t.lab.raw_sender().expect("raw sender");
    sender
        .send(&tcp_frame(&sender.link, &seg))
        .expect("send the forged ACK");
}

/// A lab with an echo server whose server interface is not attached.
fn bare_lab() -> InterceptLab {
    let t = InterceptLab::echoing(PORT);
    let _ = t.ctl(&["detach", t.srv_if()]);
    t
}

/// Killed at each step of attach (by `run`, as a daemon starting under systemd would be), the
/// interface is either not protected and every view says so, or protected with a complete
/// configuration; a restarted daemon protects it in both cases.
#[test]
fn sigkill_at_each_step_of_attach_then_restart() {
    require_root("sigkill_at_each_step_of_attach_then_restart");
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let t = bare_lab();
    for point in [
        "attach:maps-pinned",
        "attach:configured",
        "attach:tc-attached",
        "attach:seeded",
        "attach:xdp-attached",
        "attach:pinned",
    ] {
        let o = ctl_fault(&t, point, &["run", t.srv_if(), "--quiet", "--seconds", "5"]);
        assert_killed(&o, point);
        let (code, healthy, err) = status(&t);
        if point == "attach:pinned" {
            protect(&t);
            assert_protecting(&t, &format!("killed at {point}"));
        } else {
            assert!(
                !healthy && code == Some(3) && err.contains("interrupted"),
                "killed at {point}: status must say the attach was interrupted (exit 3), got \
                 {code:?}: {err}"
            );
            assert!(
                !kernel_has_xdp(&t),
                "killed at {point}: an XDP program outlived the attach"
            );
        }
        // The restarted daemon (kept running protection on exit) protects the interface.
        let d = Daemon::start(t.srv(), t.srv_if());
        wait_attached(&t, point);
        protect(&t);
        assert_protecting(&t, &format!("restarted after {point}"));
        let (st, err) = d.stop();
        assert!(st.success(), "the restarted daemon failed: {err}");
        let _ = t.ctl(&["detach", t.srv_if()]);
    }
}

/// Killed at each step of a reload, the data path keeps protecting with a consistent mix of the
/// old and new settings (never less than both protect), and the next reload completes it.
#[test]
fn sigkill_at_each_step_of_reload_and_rotation() {
    require_root("sigkill_at_each_step_of_reload_and_rotation");
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let t = InterceptLab::echoing(PORT);
    let file = std::env::temp_dir().join(format!("faults-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        format!(
            "mode = \"intercept\"\n[[protect]]\nprefix = \"198.18.0.1/32\"\nports = [{PORT}, 9090]\n\
             [[protect]]\nprefix = \"2001:db8::1/128\"\nports = [{PORT}]\n\
             [synack]\nttl = 61\n"
        ),
    )
    .expect("write config");
    let path = file.clone();
    let file = path.to_str().expect("path");
    for point in [
        "apply:watch-written",
        "apply:scope-added",
        "apply:before-config",
    ] {
        let o = ctl_fault(&t, point, &["reload", t.srv_if(), "--config", file]);
        assert_killed(&o, point);
        assert_protecting(&t, &format!("reload killed at {point}"));
    }
    let _ = t.ctl(&["reload", t.srv_if(), "--config", file]);
    assert_protecting(&t, "reloaded");
    let m = Maps::open(t.srv_if(), Some(t.srv())).expect("maps");
    assert_eq!(m.config().expect("config").ttl, 61, "the reload completed");
    let generation = m.secrets().expect("secrets").generation;
    let o = ctl_fault(&t, "rotate:before-secrets", &["rotate-secret", t.srv_if()]);
    assert_killed(&o, "rotate:before-secrets");
    assert_eq!(
        m.secrets().expect("secrets").generation,
        generation,
        "a rotation killed before writing must leave the secrets as they were"
    );
    assert_protecting(&t, "rotation killed");
    let _ = t.ctl(&["rotate-secret", t.srv_if()]);
    assert_eq!(m.secrets().expect("secrets").generation, generation + 1);
    assert_protecting(&t, "rotated");
    // The daemon's reload (SIGHUP) is the same code: killed at each of its steps on the second
    // pass (the first is the daemon's start), then restarted with the file.
    for point in [
        "apply:watch-written",
        "apply:scope-added",
        "apply:before-config",
    ] {
        let mut d = Daemon::start_env(
            t.srv(),
            t.srv_if(),
            &["--config", file],
            &[(faults::VAR, &format!("{point}#2"))],
        );
        // Its SIGHUP handler is set once its start is done (well within this).
        std::thread::sleep(Duration::from_millis(700));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(i32::try_from(d.pid()).expect("pid"), libc::SIGHUP) };
        let (st, err) = d
            .exited_within(Duration::from_secs(10))
            .expect("the fault kills the daemon at its reload");
        assert!(
            err.contains(&format!("SIGKILL at {point}")),
            "daemon reload killed at {point}: {st}: {err}"
        );
        assert_protecting(&t, &format!("daemon reload killed at {point}"));
        let d = Daemon::start_with(t.srv(), t.srv_if(), &["--config", file]);
        assert_protecting(&t, &format!("daemon restarted after {point}"));
        let (st, err) = d.stop();
        assert!(st.success(), "{err}");
    }
    let _ = std::fs::remove_file(&path);
}

/// Two writers of the same attachment at once, each changing its own field many times: no
/// change is lost (before the settings lock, each read-modify-write could write back a stale
/// copy of the other's field).
#[test]
fn concurrent_writers_lose_no_update() {
    require_root("concurrent_writers_lose_no_update");
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let t = InterceptLab::new(PORT);
    const N: u16 = 2000;
    let (srv, iface) = (t.srv().to_owned(), t.srv_if().to_owned());
    let start_mss = Maps::open(&iface, Some(&srv))
        .expect("maps")
        .config()
        .expect("cfg")
        .mss_v6;
    let go = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        // The operator flips the mode, as `mode` does.
        s.spawn(|| {
            let mut m = Maps::open(&iface, Some(&srv)).expect("maps");
            go.wait();
            for i in 0..N {
                m.set_mode(if i % 2 == 0 {
                    Mode::Auto
                } else {
                    Mode::Intercept
                })
                .expect("set_mode");
            }
        });
        // Another writer steps the IPv6 MSS, as `synack` changes its fields.
        s.spawn(|| {
            let mut m = Maps::open(&iface, Some(&srv)).expect("maps");
            go.wait();
            for _ in 0..N {
                m.update_config(|c| c.mss_v6 = c.mss_v6.wrapping_add(1))
                    .expect("update_config");
            }
        });
    });
    let cfg = Maps::open(&iface, Some(&srv))
        .expect("maps")
        .config()
        .expect("cfg");
    assert_eq!(
        cfg.mss_v6,
        start_mss.wrapping_add(N),
        "MSS changes were lost to the concurrent mode changes"
    );
    assert_eq!(
        Mode::from_u32(cfg.mode),
        Mode::Intercept,
        "the last mode change"
    );
}

/// Racing attaches: exactly one wins, the others say it is attached, and none removes the
/// winner's pins.
#[test]
fn racing_attaches_one_wins_nothing_lost() {
    require_root("racing_attaches_one_wins_nothing_lost");
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let t = bare_lab();
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(ctl_bin())
                .args(["--netns", t.srv(), "attach", t.srv_if()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn attach")
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    let won = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        won,
        1,
        "exactly one attach wins: {:?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert!(
            stderr(o).contains("already attached"),
            "the losers say why: {}",
            stderr(o)
        );
    }
    protect(&t);
    assert_protecting(&t, "after racing attaches");
}

/// A second `run` for the same interface refuses while the first lives, and starts once the
/// first was killed (its pid file is then unlocked, whatever pid it names).
#[test]
fn second_daemon_refuses() {
    require_root("second_daemon_refuses");
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let t = InterceptLab::echoing(PORT);
    let first = Daemon::start(t.srv(), t.srv_if());
    let o = ctl(&[
        "--netns",
        t.srv(),
        "run",
        t.srv_if(),
        "--seconds",
        "2",
        "--keep",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("already runs"),
        "a second run must refuse: {} {}",
        o.status,
        stderr(&o)
    );
    let v: serde_json::Value =
        serde_json::from_str(&t.ctl(&["--json", "status", t.srv_if()])).expect("status");
    assert_eq!(v["controller_running"], true, "{v}");
    first.signal(libc::SIGKILL);
    let v: serde_json::Value =
        serde_json::from_str(&t.ctl(&["--json", "status", t.srv_if()])).expect("status");
    assert_eq!(
        v["controller_running"], false,
        "a killed daemon is not running: {v}"
    );
    let second = Daemon::start(t.srv(), t.srv_if());
    assert_protecting(&t, "second daemon");
    let (st, err) = second.stop();
    assert!(st.success(), "{err}");
}

/// A daemon whose every watch tick fails keeps running, says so on stderr (once, not every
/// 100 ms), and never detaches: before, the first failed tick ended it and, without `--keep`,
/// removed the protection.
#[test]
fn daemon_survives_failing_ticks() {
    require_root("daemon_survives_failing_ticks");
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let t = bare_lab();
    let mut d = Daemon::start_env(
        t.srv(),
        t.srv_if(),
        &["--seconds", "3"],
        &[(faults::VAR, "daemon:tick")],
    );
    wait_attached(&t, "ticks failing");
    protect(&t);
    assert_protecting(&t, "ticks failing");
    let (st, err) = d
        .exited_within(Duration::from_secs(10))
        .expect("the daemon ends after --seconds");
    assert!(
        st.success(),
        "the daemon must not fail on tick errors: {st}: {err}"
    );
    assert_eq!(
        err.matches("the watch tick failed").count(),
        1,
        "said once, not every tick: {err}"
    );
    // And counted where monitoring sees it: one per failed tick (ten a second).
    let n = t.stats().get(intercept_common::Counter::ControllerErrors);
    assert!(n >= 10, "controller_errors counts the failed ticks: {n}");
}

/// An unprivileged user cannot lock the daemon's pid file (and so keep every `run` from
/// starting, and `status` reporting a daemon that does not exist): the directory is root's alone.
/// Before, the file was world-readable, and a shared lock on it held off every daemon.
#[test]
fn an_unprivileged_user_cannot_hold_off_the_daemon() {
    require_root("an_unprivileged_user_cannot_hold_off_the_daemon");
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let t = InterceptLab::echoing(PORT);
    let (st, err) = Daemon::start(t.srv(), t.srv_if()).stop();
    assert!(st.success(), "{err}");
    let pid = intercept_ctl::pid_file(t.srv_if(), Some(t.srv()));
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "flock",
            "-n",
            "-s",
        ])
        .arg(&pid)
        .arg("true")
        .output()
        .expect("setpriv");
    // Refused for want of permission, not for any other reason (a missing tool would fail too).
    assert!(
        !o.status.success() && stderr(&o).contains("Permission denied"),
        "user nobody locked {}, or failed otherwise ({}): {}",
        pid.display(),
        o.status,
        stderr(&o)
    );
    let d = Daemon::start(t.srv(), t.srv_if());
    assert_protecting(&t, "daemon after nobody tried");
    let (st, err) = d.stop();
    assert!(st.success(), "{err}");
}
