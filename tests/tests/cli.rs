//! The real intercept-ctl binary: exit codes, stdout JSON and stderr messages for bad input.
use intercept_ctl::netns::Netns;
use intercept_tests::{ctl, ctl_bin, require_root};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unknown_interface_says_how_to_list_them() {
    require_root("unknown_interface_says_how_to_list_them");
    let ns = Netns::new("cli").expect("netns");
    for verb in ["attach", "run"] {
        let o = ctl(&["--netns", ns.name(), verb, "nosuch0"]);
        assert_eq!(o.status.code(), Some(1), "{verb}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("no network interface named 'nosuch0'") && e.contains("ip link"),
            "{verb}: {e}"
        );
    }
}

#[test]
fn stats_and_detach_of_an_unattached_interface_say_how_to_attach() {
    require_root("stats_and_detach_of_an_unattached_interface_say_how_to_attach");
    let ns = Netns::new("cli").expect("netns");
    for verb in ["stats", "detach"] {
        let o = ctl(&["--netns", ns.name(), verb, "lo"]);
        assert_eq!(o.status.code(), Some(1), "{verb}");
        assert!(
            stderr(&o).contains("not attached to 'lo'")
                && stderr(&o).contains("intercept-ctl attach lo"),
            "{verb}: {}",
            stderr(&o)
        );
        assert!(o.stdout.is_empty(), "{verb} printed data on failure");
    }
}

#[test]
fn unknown_netns_and_bad_arguments_are_rejected() {
    require_root("unknown_netns_and_bad_arguments_are_rejected");
    let o = ctl(&["--netns", "xi-no-such-ns", "stats", "lo"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no network namespace named 'xi-no-such-ns'"),
        "{}",
        stderr(&o)
    );
    let o = ctl(&["attach", "lo", "--xdp-mode", "turbo"]);
    assert_eq!(o.status.code(), Some(2), "clap usage errors exit 2");
    assert!(
        stderr(&o).contains("native") && stderr(&o).contains("generic"),
        "{}",
        stderr(&o)
    );
    let o = ctl(&["attach"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn attach_twice_is_refused_and_detach_cleans_up() {
    require_root("attach_twice_is_refused_and_detach_cleans_up");
    let ns = Netns::new("cli").expect("netns");
    ns.ip(&["link", "add", "xd0", "type", "veth", "peer", "name", "xd1"])
        .expect("veth");
    ns.ip(&["link", "set", "xd0", "up"]).expect("up");
    // The explicit slow fallback, with its warning.
    let o = ctl(&[
        "--netns",
        ns.name(),
        "--json",
        "attach",
        "xd0",
        "--xdp-mode",
        "generic",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("slower"),
        "generic mode warns: {}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("attach --json");
    assert_eq!(v["interface"], "xd0");
    assert_eq!(v["xdp_mode"], "generic");
    assert!(v["program_id"].as_u64().unwrap() > 0);
    let pin = v["pin_dir"].as_str().unwrap().to_owned();
    assert!(std::path::Path::new(&pin).join("link_xdp").exists());
    let o = ctl(&[
        "--netns",
        ns.name(),
        "attach",
        "xd0",
        "--xdp-mode",
        "generic",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("already attached") && stderr(&o).contains("detach xd0"),
        "{}",
        stderr(&o)
    );
    let o = ctl(&["--netns", ns.name(), "detach", "xd0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!std::path::Path::new(&pin).exists(), "pin dir left behind");
    let link = ns.ip(&["link", "show", "xd0"]).expect("link");
    assert!(!link.contains("xdp"), "program still attached: {link}");
}

#[test]
fn without_privileges_it_says_what_it_needs() {
    require_root("without_privileges_it_says_what_it_needs");
    // Drop to nobody with no capabilities, as an operator forgetting sudo would be.
    let o = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(ctl_bin())
        .args(["attach", "lo"])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("permission denied") && stderr(&o).contains("run as root"),
        "{}",
        stderr(&o)
    );
}
