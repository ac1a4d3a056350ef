//! Attachment health from the kernel's own view (issue 14, "never silently unprotected"): when
//! the protected interface is deleted and re-created (a driver reload), or its namespace is,
//! the pins outlive the attachment. `status` must say so, verbs that write maps must refuse,
//! `attach` must clean the dead pins and protect the new interface, and `run` must never adopt
//! a dead attachment, at start or while it runs.
use std::{
    net::{IpAddr, SocketAddr},
    process::Output,
    time::{Duration, Instant},
};

use intercept_common::Counter;
use intercept_ctl::{
    lab::{SERVER_V4, SERVER_V6},
    netns::Netns,
    pins::PinDir,
};
use intercept_tests::{
    Daemon, InterceptLab, ctl, ctl_ok, deltas, echo_server, ping, require_root, stderr,
};

const PORT: u16 = 8080;

/// `status --json` of the server interface, whatever its exit code.
fn status_of(t: &InterceptLab) -> (Output, serde_json::Value) {
    let o = ctl(&["--netns", t.srv(), "--json", "status", t.srv_if()]);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json printed no JSON ({e}); exit {}, stderr: {}",
            o.status,
            stderr(&o)
        )
    });
    (o, v)
}

/// Asserts the server interface's attachment is reported dead, and that a verb writing its
/// maps refuses and says to attach again. `why` must appear in the reason.
fn assert_dead(t: &InterceptLab, why: &str) {
    let fix = format!("intercept-ctl --netns {} attach {}", t.srv(), t.srv_if());
    for verb in [
        vec!["scope", "add", t.srv_if(), "198.18.0.1", "--ports", "9090"],
        vec!["exempt", "add", t.srv_if(), "198.18.0.77"],
        vec!["mode", t.srv_if(), "watch"],
        vec!["rotate-secret", t.srv_if()],
        vec!["synack", t.srv_if(), "--ttl", "33"],
        vec!["thresholds", t.srv_if(), "--watch-timeout", "9"],
    ] {
        let mut a = vec!["--netns", t.srv()];
        a.extend_from_slice(&verb);
        let o = ctl(&a);
        assert_eq!(
            o.status.code(),
            Some(3),
            "{verb:?} on a dead attachment must refuse (exit 3); stderr: {}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains(&fix) && stderr(&o).contains(why),
            "{verb:?} says why and what to do: {}",
            stderr(&o)
        );
    }
    // Verbs that only read still answer, and say that what they read is dead.
    for verb in [vec!["stats", t.srv_if()], vec!["connections", t.srv_if()]] {
        let mut a = vec!["--netns", t.srv()];
        a.extend_from_slice(&verb);
        let o = ctl(&a);
        assert!(
            o.status.success()
                && stderr(&o).contains("dead attachment")
                && stderr(&o).contains(&fix),
            "{verb:?} on a dead attachment warns and says what to do: {}",
            stderr(&o)
        );
    }
    let (o, v) = status_of(t);
    assert_eq!(
        v["healthy"], false,
        "status reports the dead attachment healthy (or not at all): {v}"
    );
    let reason = v["health"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(why), "reason should say '{why}': {v}");
    assert_eq!(
        o.status.code(),
        Some(3),
        "status of a dead attachment exits 3; stderr: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains(&fix),
        "status says how to fix it ({fix}): {}",
        stderr(&o)
    );
}

/// Re-attaches both ends with the real binary (the client's pass-through program died with the
/// veth too) and checks `attach` said it replaced a dead attachment, carrying the server's
/// scope over.
fn reattach(t: &InterceptLab) {
    for (ns, dev, extra) in [
        (t.srv(), t.srv_if(), &[][..]),
        (
            t.lab.client.name(),
            t.lab.veth.b.as_str(),
            &["--program", "pass"][..],
        ),
    ] {
        let mut a = vec!["--netns", ns, "--json", "attach", dev];
        a.extend_from_slice(extra);
        let o = ctl(&a);
        assert!(
            o.status.success(),
            "attach {dev} over its dead attachment: {}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains("dead attachment"),
            "attach says it replaced a dead attachment: {}",
            stderr(&o)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("attach --json");
        assert!(
            v["replaced_dead_attachment"].is_string(),
            "attach --json names the dead attachment it replaced: {v}"
        );
    }
    let (o, v) = status_of(t);
    assert!(o.status.success(), "status after re-attach: {}", stderr(&o));
    assert_eq!(v["healthy"], true, "re-attached: {v}");
    assert_eq!(
        (v["scope_entries"].as_u64(), v["mode"].as_str()),
        (Some(2), Some("intercept")),
        "attach carried the dead attachment's scope and mode over: {v}"
    );
}

/// Connects over IPv4 and IPv6 through the server interface and checks XDP answered the SYNs
/// with cookies and handed the handshakes off (so the new interface is protected).
fn assert_protected(t: &InterceptLab, what: &str) {
    let (l4, l6) = t.lab.listen(PORT).expect("listen");
    echo_server(l4);
    echo_server(l6);
    let before = t.stats();
    for ip in [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)] {
        let mut c = t
            .lab
            .connect(SocketAddr::new(ip, PORT), Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{what}: connect to {ip}: {e:#}"));
        ping(&mut c, what);
    }
    let after = t.stats();
    let d = after.delta(&before);
    assert_eq!(
        (d.get(Counter::SynAckSent), d.get(Counter::HandedOff)),
        (2, 2),
        "{what}: XDP answers both SYNs with cookies and hands both off: {:?}",
        deltas(&before, &after)
    );
}

/// Waits (up to 10 s: a daemon loads and verifies the object first) until XDP runs on the
/// server interface again and `status` calls the attachment healthy; returns that status.
fn wait_reattached(t: &InterceptLab, what: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let link = t.lab.server.ip(&["link", "show", t.srv_if()]).unwrap();
        // XDP shows on the link tens of milliseconds before the attach is complete (the XDP
        // link is pinned last, after TC and the tracepoint): until then `status` finds nothing
        // attached and prints no JSON.
        if link.contains("xdp") && PinDir::new(Some(t.srv()), t.srv_if()).is_attached() {
            let (o, v) = status_of(t);
            if o.status.success() && v["healthy"] == true {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: XDP is back but status is not healthy: {}: {v}",
                stderr(&o)
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no XDP on the re-created interface within 10 s: {link}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn interface_recreated_is_reported_dead_refused_and_reattached() {
    require_root("interface_recreated_is_reported_dead_refused_and_reattached");
    let mut t = InterceptLab::new(PORT);
    t.lab
        .server
        .ip(&["link", "del", t.srv_if()])
        .expect("delete the veth");
    t.lab.recreate_veth().expect("re-create the veth");
    assert_dead(&t, "deleted");
    reattach(&t);
    assert_protected(&t, "after re-attaching the re-created interface");
    // A live, healthy attachment still refuses a second attach.
    let o = ctl(&["--netns", t.srv(), "attach", t.srv_if()]);
    assert!(
        o.status.code() == Some(1) && stderr(&o).contains("already attached"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn namespace_recreated_is_reported_dead_refused_and_reattached() {
    require_root("namespace_recreated_is_reported_dead_refused_and_reattached");
    let mut t = InterceptLab::new(PORT);
    t.lab.server.recreate().expect("re-create the namespace");
    t.lab.recreate_veth().expect("re-create the veth");
    assert_dead(&t, "namespace");
    reattach(&t);
    assert_protected(&t, "after re-attaching in the re-created namespace");
}

#[test]
fn detach_works_after_the_namespace_was_deleted() {
    require_root("detach_works_after_the_namespace_was_deleted");
    let ns = Netns::new("hd").expect("netns");
    ns.ip(&["link", "add", "xh0", "type", "veth", "peer", "name", "xh1"])
        .expect("veth");
    ns.ip(&["link", "set", "xh0", "up"]).expect("up");
    let _ = ctl_ok(&["--netns", ns.name(), "attach", "xh0"]);
    let pins = PinDir::new(Some(ns.name()), "xh0");
    intercept_ctl::netns::run("ip", &["netns", "del", ns.name()]).expect("ip netns del");
    let o = ctl(&["--netns", ns.name(), "status", "xh0"]);
    assert!(
        !o.status.success()
            && stderr(&o).contains(&format!("intercept-ctl --netns {} detach xh0", ns.name())),
        "status in a deleted namespace with pins left says how to remove them: {}",
        stderr(&o)
    );
    let o = ctl(&["--netns", ns.name(), "detach", "xh0"]);
    assert!(
        o.status.success(),
        "detach of an attachment whose namespace was deleted: {}",
        stderr(&o)
    );
    assert!(
        !pins.path().exists() && !pins.path().parent().unwrap().exists(),
        "pins left behind at {}",
        pins.path().display()
    );
}

/// `run` restarted (as systemd would) after the interface was re-created: it re-attaches, with
/// the dead attachment's scope, instead of adopting the dead pins.
#[test]
fn run_restarted_after_the_interface_was_recreated_reattaches() {
    require_root("run_restarted_after_the_interface_was_recreated_reattaches");
    let mut t = InterceptLab::new(PORT);
    let (status, _) = Daemon::start(t.srv(), t.srv_if()).stop();
    assert!(status.success(), "first run: {status}");
    let (_, v) = status_of(&t);
    let old_id = v["program_id"].as_u64().expect("program id");
    t.lab
        .server
        .ip(&["link", "del", t.srv_if()])
        .expect("delete the veth");
    t.lab.recreate_veth().expect("re-create the veth");
    t.reattach_client_pass();
    let d = Daemon::start(t.srv(), t.srv_if());
    let v = wait_reattached(&t, "run restarted after the interface was re-created");
    assert_ne!(
        v["program_id"].as_u64(),
        Some(old_id),
        "run adopted the dead attachment: {v}"
    );
    assert_eq!(
        v["scope_entries"], 2,
        "run kept the dead attachment's scope: {v}"
    );
    assert_protected(&t, "after run re-attached");
    let (status, err) = d.stop();
    assert!(status.success(), "run: {status}: {err}");
    assert!(
        err.contains("dead") && err.contains("re-attached"),
        "run says it re-attached over a dead attachment: {err}"
    );
}

/// The daemon's own tick: the interface goes away and comes back while `run` runs; it re-attaches
/// by itself within a few seconds, keeping the scope, and says so.
#[test]
fn running_daemon_reattaches_when_the_interface_comes_back() {
    require_root("running_daemon_reattaches_when_the_interface_comes_back");
    let mut t = InterceptLab::new(PORT);
    let d = Daemon::start(t.srv(), t.srv_if());
    t.lab
        .server
        .ip(&["link", "del", t.srv_if()])
        .expect("delete the veth");
    // Long enough for the daemon to see the interface gone before it returns.
    std::thread::sleep(Duration::from_millis(1500));
    t.lab.recreate_veth().expect("re-create the veth");
    t.reattach_client_pass();
    let v = wait_reattached(&t, "the running daemon");
    assert_eq!(v["scope_entries"], 2, "the daemon kept the scope: {v}");
    assert_protected(&t, "after the daemon re-attached");
    let (status, err) = d.stop();
    assert!(status.success(), "run: {status}: {err}");
    // It logs the interface leaving ("gone") if one of its once-a-second checks fell in the
    // gap, else the dead attachment it found; either way, its re-attachment.
    assert!(
        (err.contains("gone") || err.contains("dead")) && err.contains("re-attached"),
        "the daemon logs the interface leaving and its re-attachment: {err}"
    );
}

/// The daemon's namespace is deleted and re-created under the same name: the daemon, still in the
/// old one, exits loudly; started again, it re-attaches in the new one.
#[test]
fn running_daemon_fails_loudly_when_its_namespace_is_recreated() {
    require_root("running_daemon_fails_loudly_when_its_namespace_is_recreated");
    let mut t = InterceptLab::new(PORT);
    let mut d = Daemon::start(t.srv(), t.srv_if());
    t.lab.server.recreate().expect("re-create the namespace");
    let (status, err) = d
        .exited_within(Duration::from_secs(5))
        .expect("the daemon keeps running in a namespace that no longer has its name");
    assert_eq!(status.code(), Some(3), "run exits 3: {err}");
    assert!(err.contains("namespace"), "run says why: {err}");
    t.lab.recreate_veth().expect("re-create the veth");
    t.reattach_client_pass();
    let d = Daemon::start(t.srv(), t.srv_if());
    let _ = wait_reattached(&t, "run restarted in the re-created namespace");
    assert_protected(&t, "after run re-attached in the new namespace");
    drop(d);
}

/// An attach interrupted before its last step (killed, e.g. a daemon stopped while it attached)
/// leaves maps pinned without the XDP link that marks an attachment complete: the next attach
/// must clean them instead of failing on every pin.
#[test]
fn attach_over_an_interrupted_attach_cleans_up() {
    require_root("attach_over_an_interrupted_attach_cleans_up");
    let ns = Netns::new("hi").expect("netns");
    ns.ip(&["link", "add", "xi0", "type", "veth", "peer", "name", "xi1"])
        .expect("veth");
    ns.ip(&["link", "set", "xi0", "up"]).expect("up");
    let _ = ctl_ok(&["--netns", ns.name(), "attach", "xi0"]);
    let pins = PinDir::new(Some(ns.name()), "xi0");
    // What an interrupted attach leaves: everything but the XDP link, pinned last.
    std::fs::remove_file(pins.link()).expect("unpin the XDP link");
    let o = ctl(&["--netns", ns.name(), "attach", "xi0"]);
    assert!(
        o.status.success(),
        "attach over an interrupted attach: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("incomplete"),
        "attach says it removed an incomplete attachment: {}",
        stderr(&o)
    );
    let _ = ctl_ok(&["--netns", ns.name(), "detach", "xi0"]);
    assert!(
        !pins.path().exists(),
        "pins left at {}",
        pins.path().display()
    );
}

/// Another command re-attaches to the re-created interface before the daemon does (here the
/// daemon is stopped meanwhile, so the order is certain): the daemon follows that attachment
/// instead of watching the dead one's maps.
#[test]
fn running_daemon_follows_an_attachment_made_by_another_command() {
    require_root("running_daemon_follows_an_attachment_made_by_another_command");
    let mut t = InterceptLab::new(PORT);
    let d = Daemon::start(t.srv(), t.srv_if());
    let pid = i32::try_from(d.pid()).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    t.lab
        .server
        .ip(&["link", "del", t.srv_if()])
        .expect("delete the veth");
    t.lab.recreate_veth().expect("re-create the veth");
    reattach(&t);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(1500));
    let (o, v) = status_of(&t);
    assert!(o.status.success(), "status: {}", stderr(&o));
    assert_eq!(v["controller_running"], true, "the daemon died: {v}");
    assert_protected(&t, "after another command re-attached under the daemon");
    let (status, err) = d.stop();
    assert!(status.success(), "run: {status}: {err}");
    assert!(
        err.contains("following the new attachment"),
        "the daemon says it follows the new attachment: {err}"
    );
}

/// A driver that refuses XDP metadata in native mode (the counter the data path keeps when
/// `bpf_xdp_adjust_meta` fails, set here as such a driver would make it) aborts every proven
/// handshake: `status` reports the attachment unhealthy with the fix, and the daemon re-attaches
/// in generic mode, keeping the settings, after which handshakes complete. Before, nothing said
/// anything while every handshake failed.
#[test]
fn a_driver_refusing_metadata_is_reported_and_the_daemon_moves_to_generic() {
    require_root("a_driver_refusing_metadata_is_reported_and_the_daemon_moves_to_generic");
    use aya::maps::{MapData, PerCpuArray, PerCpuValues};
    use intercept_common::maps::{COUNTERS, COUNTERS_DATA_PATH, CounterBlock};
    let t = InterceptLab::echoing(PORT);
    let pins = PinDir::new(Some(t.srv()), t.srv_if());
    let mut counters: PerCpuArray<MapData, CounterBlock> = PerCpuArray::try_from(
        aya::maps::Map::PerCpuArray(MapData::from_pin(pins.map(COUNTERS)).expect("pin")),
    )
    .expect("per-CPU array");
    let mut blocks: Vec<CounterBlock> = counters
        .get(&COUNTERS_DATA_PATH, 0)
        .expect("read")
        .iter()
        .copied()
        .collect();
    blocks[0][Counter::MetaUnsupported as usize] += 3;
    counters
        .set(
            COUNTERS_DATA_PATH,
            PerCpuValues::try_from(blocks).expect("one per CPU"),
            0,
        )
        .expect("write");
    let (o, v) = status_of(&t);
    assert_eq!(o.status.code(), Some(3), "{v}");
    assert_eq!(v["health"]["problem"], "no_xdp_metadata", "{v}");
    assert!(
        stderr(&o).contains("--xdp-mode generic"),
        "says what to do: {}",
        stderr(&o)
    );
    let d = Daemon::start(t.srv(), t.srv_if());
    let deadline = Instant::now() + Duration::from_secs(15);
    let v = loop {
        let (o, v) = status_of(&t);
        if o.status.success() {
            break v;
        }
        assert!(Instant::now() < deadline, "not re-attached: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v["xdp_mode"], "generic", "{v}");
    let mut s = t
        .lab
        .connect(
            SocketAddr::new(IpAddr::V4(SERVER_V4), PORT),
            Duration::from_secs(3),
        )
        .expect("connect after the move to generic mode");
    ping(&mut s, "after the move");
    let (st, err) = d.stop();
    assert!(st.success(), "{err}");
}

/// A verb run while an attach or detach replaces the pins (the daemon moving to generic mode,
/// re-attaching a re-created interface, or an operator's `attach`) waits for it, then reads the
/// new attachment. Held here as an attach holds it: the attach lock taken, the pin directory
/// away. Before, `status` failed mid-replacement with "`BPF_OBJ_GET` failed: No such file or
/// directory" and printed nothing (CI caught it once, in the metadata test above).
#[test]
fn verbs_wait_for_an_attach_in_progress() {
    require_root("verbs_wait_for_an_attach_in_progress");
    use std::{os::fd::AsRawFd, process::Stdio};
    let t = InterceptLab::echoing(PORT);
    let pins = PinDir::new(Some(t.srv()), t.srv_if());
    let root = std::fs::File::open(intercept_ctl::pins::ROOT).expect("open the pin root");
    // SAFETY: flock on a file this function owns.
    assert_eq!(unsafe { libc::flock(root.as_raw_fd(), libc::LOCK_EX) }, 0);
    // (bpffs refuses names with dots.)
    let away = pins
        .path()
        .with_file_name(format!("{}-replacing", t.srv_if()));
    std::fs::rename(pins.path(), &away).expect("move the pins away");
    let verbs: Vec<Vec<&str>> = vec![
        vec!["--json", "status", t.srv_if()],
        vec!["--json", "stats", t.srv_if()],
        vec!["exempt", "add", t.srv_if(), "198.18.0.77"],
        vec!["thresholds", t.srv_if(), "--watch-timeout", "9"],
    ];
    let children: Vec<_> = verbs
        .iter()
        .map(|v| {
            std::process::Command::new(intercept_tests::ctl_bin())
                .args(["--netns", t.srv()])
                .args(v)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn intercept-ctl")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let mut children: Vec<_> = children
        .into_iter()
        .zip(&verbs)
        .map(|(mut c, v)| {
            let early = c.try_wait().expect("try_wait");
            (c, v, early)
        })
        .collect();
    std::fs::rename(&away, pins.path()).expect("put the pins back");
    drop(root);
    for (c, v, early) in children.drain(..) {
        let o = c.wait_with_output().expect("wait");
        assert!(
            early.is_none(),
            "{v:?} ended ({}) while the attach was in progress: {}",
            o.status,
            stderr(&o)
        );
        assert!(o.status.success(), "{v:?}: {}: {}", o.status, stderr(&o));
        if v[0] == "--json" {
            serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .unwrap_or_else(|e| panic!("{v:?} printed no JSON ({e}): {}", stderr(&o)));
        }
    }
    let (o, v) = status_of(&t);
    assert!(o.status.success(), "{v}");
    assert_eq!(v["exempt_entries"], 1, "the exempt entry was written: {v}");
    assert_eq!(v["watch"]["timeout_s"], 9, "{v}");
}

/// `stats --watch` runs until stopped: it must not hold attaches and detaches off meanwhile (a
/// daemon re-attaching, an operator detaching). Before, it held the pin root's lock for its
/// whole life, and `detach` waited for it to end.
#[test]
fn a_running_stats_watch_holds_no_detach_off() {
    require_root("a_running_stats_watch_holds_no_detach_off");
    let t = InterceptLab::echoing(PORT);
    let mut watch = std::process::Command::new(intercept_tests::ctl_bin())
        .args(["--netns", t.srv(), "stats", t.srv_if(), "--watch"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn stats --watch");
    std::thread::sleep(Duration::from_millis(1500));
    let mut detach = std::process::Command::new(intercept_tests::ctl_bin())
        .args(["--netns", t.srv(), "detach", t.srv_if()])
        .spawn()
        .expect("spawn detach");
    let start = Instant::now();
    let done = loop {
        if let Some(st) = detach.try_wait().expect("try_wait") {
            break Some(st);
        }
        if start.elapsed() > Duration::from_secs(5) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = watch.kill();
    let _ = watch.wait();
    if done.is_none() {
        let _ = detach.kill();
        let _ = detach.wait();
    }
    let st = done.expect("detach did not finish within 5 s of a running stats --watch");
    assert!(st.success(), "detach: {st}");
}

/// An attachment made by another build, whose maps hold values of another size (a counter or a
/// knob added since), is said to be one, with what to do, by every verb that reads it, instead
/// of aya's bare "invalid value size". Stood in for here by re-pinning `WATCH` and `COUNTERS`
/// as arrays of the size the previous build's were.
#[test]
fn an_attachment_of_another_build_says_so() {
    require_root("an_attachment_of_another_build_says_so");
    let t = InterceptLab::echoing(PORT);
    let pins = PinDir::new(Some(t.srv()), t.srv_if());
    for (name, map_type, value_size) in [
        (intercept_common::maps::WATCH, 2u32, 48u32),
        (intercept_common::maps::COUNTERS, 6, 8 * 60),
    ] {
        let path = pins.map(name);
        std::fs::remove_file(&path).expect("unpin");
        pin_new_array(&path, map_type, value_size);
    }
    for verb in [
        vec!["--json", "status", t.srv_if()],
        vec!["--json", "stats", t.srv_if()],
        vec!["thresholds", t.srv_if(), "--watch-timeout", "9"],
    ] {
        let mut a = vec!["--netns", t.srv()];
        a.extend_from_slice(&verb);
        let o = ctl(&a);
        assert!(!o.status.success(), "{verb:?} succeeded");
        assert!(
            stderr(&o).contains("attached by another build of intercept-ctl")
                && stderr(&o).contains("detach it and attach again")
                && stderr(&o).contains("where this build expects"),
            "{verb:?}: {}",
            stderr(&o)
        );
    }
    let _ = ctl(&["--netns", t.srv(), "detach", t.srv_if()]);
}

/// Creates an array map (`map_type` 2: array, 6: per-CPU array) of one `value_size`-byte
/// value and pins it at `path` (the bpf(2) system call itself: the test needs a map of a size
/// no object of this build has).
fn pin_new_array(path: &std::path::Path, map_type: u32, value_size: u32) {
    use std::os::unix::ffi::OsStrExt as _;
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, ...
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[map_type, 4, value_size, 1]);
    // SAFETY: bpf(BPF_MAP_CREATE) with an attribute block of its size, zero past the fields.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            create.as_ptr(),
            std::mem::size_of_val(&create),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // union bpf_attr for BPF_OBJ_PIN: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut pin = [0u64; 4];
    pin[0] = c.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: bpf(BPF_OBJ_PIN) with the path and the fd made above.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_ptr(), std::mem::size_of_val(&pin)) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: our own fd, pinned now.
    unsafe { libc::close(fd as i32) };
}
