//! The real intercept-ctl binary: exit codes, stdout JSON and stderr messages for bad input.
use intercept_ctl::netns::Netns;
use intercept_tests::{ctl, ctl_bin, ctl_ok, require_root, stderr};

/// `status --json` without the fields that move with the clock (ages and the lookup window's
/// countdown, in whole seconds), so two readings compare equal unless the configuration changed.
fn settled_status(t: &intercept_tests::InterceptLab) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&t.ctl(&["--json", "status", t.srv_if()])).expect("status JSON");
    for (obj, key) in [
        (None, "attached_s_ago"),
        (None, "secret_age_s"),
        (Some("socket_table"), "lookup_window_s"),
        (Some("watch"), "last_transition_s_ago"),
    ] {
        let o = match obj {
            Some(o) => &mut v[o],
            None => &mut v,
        };
        o.as_object_mut()
            .unwrap_or_else(|| panic!("status has no {obj:?} object"))
            .remove(key)
            .unwrap_or_else(|| panic!("status has no {key}"));
    }
    v
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

/// Under `ip netns exec`, /sys is private and has no bpffs: pins made there would vanish with
/// the command. The error says to use `--netns` from outside, not to mount bpffs there.
#[test]
fn inside_ip_netns_exec_it_points_at_netns() {
    require_root("inside_ip_netns_exec_it_points_at_netns");
    let ns = Netns::new("cli").expect("netns");
    ns.ip(&["link", "add", "xd0", "type", "veth", "peer", "name", "xd1"])
        .expect("veth");
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(ctl_bin())
        .args(["attach", "xd0"])
        .output()
        .expect("ip netns exec");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("--netns {}", ns.name())) && !err.contains("mount -t bpf"),
        "points at --netns: {err}"
    );
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

/// Every configuration verb rejects bad input with exit code 1 (or 2 for usage) and a message
/// that says what is accepted, and changes nothing.
#[test]
fn bad_input_to_every_verb_is_rejected_with_a_precise_message() {
    require_root("bad_input_to_every_verb_is_rejected_with_a_precise_message");
    let t = intercept_tests::InterceptLab::new(8080);
    let (ns, ifc) = (t.srv().to_owned(), t.srv_if().to_owned());
    let before = settled_status(&t);
    let cases: [(&[&str], i32, &str); 12] = [
        (
            &["scope", "add", &ifc, "198.18.0.0/33"],
            2,
            "prefix length must be 0..=32",
        ),
        (
            &["scope", "add", &ifc, "not-an-address"],
            2,
            "is not an IPv4 or IPv6 address",
        ),
        (
            &["scope", "add", &ifc, "198.18.0.1", "--ports", "0"],
            2,
            "port 0 is out of range: ports are 1-65535",
        ),
        (
            &["scope", "add", &ifc, "198.18.0.1", "--ports", "65536"],
            2,
            "port 65536 is out of range",
        ),
        (
            &["scope", "add", &ifc, "198.18.0.1", "--ports", "90-80"],
            2,
            "reversed",
        ),
        (
            &["scope", "del", &ifc, "198.18.0.99/32"],
            1,
            "is not in the protected scope",
        ),
        (
            &["exempt", "del", &ifc, "198.18.0.99/32"],
            1,
            "is not exempt",
        ),
        (
            &[
                "thresholds",
                &ifc,
                "--max-incomplete-high",
                "100",
                "--max-incomplete-low",
                "200",
            ],
            1,
            "max-incomplete low (200) is above high (100)",
        ),
        (
            &[
                "thresholds",
                &ifc,
                "--one-minute-high",
                "10",
                "--one-minute-low",
                "20",
            ],
            1,
            "one-minute low (20) is above high (10)",
        ),
        (
            &["thresholds", &ifc, "--watch-timeout", "0"],
            2,
            "0 is not in 1..=3600",
        ),
        (
            &["mode", &ifc, "turbo"],
            2,
            "possible values: off, intercept, watch, auto",
        ),
        (
            &["rotate-secret", "nosuch0"],
            1,
            "not attached to 'nosuch0'",
        ),
    ];
    for (args, code, msg) in cases {
        let mut a = vec!["--netns", ns.as_str()];
        a.extend_from_slice(args);
        let o = ctl(&a);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(msg),
            "{args:?}: want '{msg}' in: {}",
            stderr(&o)
        );
        assert!(o.stdout.is_empty(), "{args:?} printed data on failure");
    }
    // A configuration file with an unknown key, and one with a bad value: rejected whole, with
    // line and column, and the running configuration unchanged.
    let dir = std::env::temp_dir().join(format!("xi-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    let reload = |f: &std::path::Path| {
        ctl(&[
            "--netns",
            &ns,
            "reload",
            &ifc,
            "--config",
            f.to_str().unwrap(),
        ])
    };
    std::fs::write(&bad, "mode = \"watch\"\n\n[[protect]]\nprefix = \"198.18.0.1\"\nports = [80]\nfrobnicate = true\n").unwrap();
    let o = reload(&bad);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("bad.toml:6:1") && stderr(&o).contains("unknown field `frobnicate`"),
        "{}",
        stderr(&o)
    );
    std::fs::write(
        &bad,
        "mode = \"watch\"\n[watch]\nmax_incomplete_high = 10\nmax_incomplete_low = 20\n",
    )
    .unwrap();
    let o = reload(&bad);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("bad.toml:4:22") && stderr(&o).contains("unchanged"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        settled_status(&t),
        before,
        "a rejected file changed the running configuration"
    );
    // A good one applies: scope exactly as written, mode and thresholds.
    let good = dir.join("good.toml");
    std::fs::write(&good, "mode = \"watch\"\nexempt = [\"198.19.0.0/16\"]\n[watch]\ntimeout = 10\n[[protect]]\nprefix = \"198.18.0.0/24\"\nports = [443, 8443]\n").unwrap();
    let v: serde_json::Value = serde_json::from_str(&t.ctl(&[
        "--json",
        "reload",
        &ifc,
        "--config",
        good.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(
        (
            v["mode"].as_str(),
            v["protect"].as_u64(),
            v["exempt"].as_u64()
        ),
        (Some("watch"), Some(2), Some(1)),
        "{v}"
    );
    let scope: serde_json::Value =
        serde_json::from_str(&t.ctl(&["--json", "scope", "list", &ifc])).unwrap();
    let entries: Vec<String> = scope["scope"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["prefix"].as_str().unwrap(), e["port"]))
        .collect();
    assert_eq!(
        entries,
        vec!["198.18.0.0/24 443", "198.18.0.0/24 8443"],
        "the file's scope replaces the old one"
    );
    let s = intercept_tests::status(&t);
    assert_eq!(
        (
            s["mode"].as_str(),
            s["watch"]["timeout_s"].as_u64(),
            s["exempt_entries"].as_u64()
        ),
        (Some("watch"), Some(10), Some(1)),
        "{s}"
    );
    // A file that names no mode leaves the mode in force as it is (it used to switch to
    // intercept).
    let no_mode = dir.join("no_mode.toml");
    std::fs::write(&no_mode, "[[protect]]\nprefix = \"198.18.0.1\"\n").unwrap();
    t.ctl(&["reload", &ifc, "--config", no_mode.to_str().unwrap()]);
    assert_eq!(
        intercept_tests::status(&t)["mode"],
        "watch",
        "reload kept the mode"
    );
    // Nor does `attach --mode watch --config` with such a file end in intercept mode.
    let ns = Netns::new("cli").expect("netns");
    ns.ip(&["link", "add", "xd0", "type", "veth", "peer", "name", "xd1"])
        .expect("veth");
    ns.ip(&["link", "set", "xd0", "up"]).expect("up");
    let o = ctl(&[
        "--netns",
        ns.name(),
        "attach",
        "xd0",
        "--mode",
        "watch",
        "--config",
        no_mode.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st: serde_json::Value =
        serde_json::from_str(&ctl_ok(&["--netns", ns.name(), "--json", "status", "xd0"])).unwrap();
    assert_eq!(st["mode"], "watch", "attach --mode watch --config: {st}");
    let _ = ctl(&["--netns", ns.name(), "detach", "xd0"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The JSON of the read-only verbs has a stable shape.
#[test]
fn json_output_schemas() {
    require_root("json_output_schemas");
    let t = intercept_tests::InterceptLab::new(8080);
    let s = intercept_tests::status(&t);
    for k in [
        "interface",
        "mode",
        "active_mode",
        "scope_entries",
        "secret_generation",
        "secret_age_s",
        "xdp_mode",
        "program_id",
        "tc_program_id",
        "tc_handoff_attached",
        "watch",
        "synack",
        "kernel",
    ] {
        assert!(!s[k].is_null(), "status lacks {k}: {s}");
    }
    assert!(
        s.get("secrets").is_none() && !s.to_string().contains("\"keys\""),
        "status must never show the secrets"
    );
    assert_eq!(
        (
            s["xdp_mode"].as_str(),
            s["kernel"]["kfunc_bpf_sk_assign_tcp_reqsk"].as_bool()
        ),
        (Some("native"), Some(true)),
        "{s}"
    );
    let sa: serde_json::Value = serde_json::from_str(&t.ctl(&[
        "--json",
        "synack",
        t.srv_if(),
        "--mss-v4",
        "1400",
        "--wscale",
        "9",
        "--ecn",
        "off",
    ]))
    .unwrap();
    assert_eq!(
        (
            sa["mss_v4"].as_u64(),
            sa["wscale"].as_u64(),
            sa["ecn"].as_bool()
        ),
        (Some(1400), Some(9), Some(false)),
        "{sa}"
    );
    let s = intercept_tests::status(&t);
    assert_eq!(
        (
            s["synack"]["mss_v4"].as_u64(),
            s["synack"]["wscale"].as_u64(),
            s["ecn"].as_bool()
        ),
        (Some(1400), Some(9), Some(false)),
        "{s}"
    );
    let all: serde_json::Value = serde_json::from_str(&t.ctl(&["--json", "status"])).unwrap();
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(1),
        "status without an interface lists every attachment: {all}"
    );
    let th: serde_json::Value =
        serde_json::from_str(&t.ctl(&["--json", "thresholds", t.srv_if()])).unwrap();
    assert_eq!(th["max_incomplete"]["high"], 1100, "Cisco's default: {th}");
    assert_eq!(th["watch_timeout_s"], 30);
    let c: serde_json::Value =
        serde_json::from_str(&t.ctl(&["--json", "connections", t.srv_if()])).unwrap();
    assert_eq!(c["connections"].as_array().unwrap().len(), 0, "{c}");
    let w: Vec<serde_json::Value> = t
        .ctl(&["--json", "stats", t.srv_if(), "--watch", "--count", "2"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(w.len(), 2);
    assert!(w[1]["rates"]["packets"].is_number() && w[1]["counters"]["packets"].is_u64());
}

/// The options `intercept-ctl VERB --help` lists (without the global and help ones).
fn help_flags(verb: &[&str]) -> std::collections::BTreeSet<String> {
    let mut a = verb.to_vec();
    a.push("--help");
    let help = ctl_ok(&a);
    // Option lines: `  --name <V>` or `  -x, --name`.
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = if l.starts_with('-') && l.get(2..4) == Some(", ") {
                &l[4..]
            } else {
                l
            };
            l.strip_prefix("--")?.split([' ', '=']).next()
        })
        .filter(|f| !f.is_empty() && !["help", "json", "netns", "version"].contains(f))
        .map(|f| format!("--{f}"))
        .collect()
}

/// The README's synopsis and the binary agree both ways: every verb and flag the synopsis names
/// exists in the binary's help, and every flag the binary accepts is in the synopsis. Every mode
/// the program accepts is named in the top-level help. Before, the help said `mode` took "(off,
/// intercept)" and the synopsis lacked `run --xdp-mode`, `--quiet` and others.
#[test]
fn readme_synopsis_and_help_agree() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme.find("## intercept-ctl\n").expect("synopsis section");
    let block = &readme[start..];
    let block = &block[block.find("```\n").expect("code block") + 4..];
    let block = &block[..block.find("```").expect("end of code block")];
    // Each verb's synopsis lines: a line starting `intercept-ctl VERB`, and its continuations.
    let mut verbs: Vec<(Vec<String>, String)> = Vec::new();
    for line in block.lines() {
        let code = line.split(" # ").next().unwrap_or_default();
        if let Some(rest) = code.strip_prefix("intercept-ctl ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let mut verb = vec![words[0].to_owned()];
            // scope/exempt: `add|del` and `list` are subcommands.
            if ["scope", "exempt"].contains(&words[0]) {
                verb.push(words[1].split('|').next().unwrap_or_default().to_owned());
            }
            verbs.push((verb, code.to_owned()));
        } else if code.starts_with(' ')
            && !code.trim().is_empty()
            && let Some(last) = verbs.last_mut()
        {
            last.1.push(' ');
            last.1.push_str(code);
        }
    }
    assert!(verbs.len() >= 15, "synopsis parsed: {verbs:?}");
    for (verb, text) in &verbs {
        let args: Vec<&str> = verb.iter().map(String::as_str).collect();
        let in_help = help_flags(&args);
        let in_readme: std::collections::BTreeSet<String> = text
            .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
            .filter(|w| w.starts_with("--"))
            .map(|w| w.trim_end_matches([',', '.', ')']).to_owned())
            .collect();
        for f in &in_readme {
            assert!(
                in_help.contains(f),
                "README names `{f}` for {verb:?}, which its help lacks"
            );
        }
        for f in &in_help {
            assert!(
                in_readme.contains(f),
                "{verb:?} accepts `{f}`, which the README synopsis lacks"
            );
        }
    }
    let top = ctl_ok(&["--help"]);
    let mode_help = ctl_ok(&["mode", "--help"]);
    for mode in ["off", "watch", "intercept", "auto"] {
        assert!(
            mode_help.contains(&format!("- {mode}:")),
            "`mode` accepts {mode}"
        );
        let line = top
            .lines()
            .find(|l| l.trim_start().starts_with("mode "))
            .expect("mode line");
        assert!(
            line.contains(mode),
            "the top-level help names mode {mode}: {line}"
        );
    }
    assert!(!top.contains("table"), "the help promises no tables: {top}");
}

/// The handoff engine is chosen by probing the kernel, named by `attach` and `status`, and
/// forced with `--engine`; an attachment without one (`--engine none` here, or a kernel before
/// 6.9) watches, and refuses intercept and auto mode saying what is missing and what works.
#[test]
fn without_a_handoff_engine_watch_works_and_intercept_says_what_is_missing() {
    require_root("without_a_handoff_engine_watch_works_and_intercept_says_what_is_missing");
    let kernel = intercept_ctl::engine::Features::probe();
    let best = kernel.engines()[0];
    let ns = Netns::new("cli").expect("netns");
    ns.ip(&["link", "add", "xe0", "type", "veth", "peer", "name", "xe1"])
        .expect("veth");
    ns.ip(&["link", "set", "xe0", "up"]).expect("up");
    let n = ns.name();
    let pin = format!("/sys/fs/bpf/xdp-intercept/netns-{n}/xe0");

    // The default: the best engine, intercept mode where there is one.
    let o = ctl(&["--netns", n, "--json", "attach", "xe0"]);
    if best.hands_off() {
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("attach --json");
        assert_eq!(v["engine"], best.name(), "attach names the engine");
        let st: serde_json::Value =
            serde_json::from_str(&ctl_ok(&["--netns", n, "--json", "status", "xe0"])).unwrap();
        assert_eq!(st["engine"], best.name());
        assert_eq!(st["kernel"]["engines"][0], best.name(), "{st}");
        let _ = ctl_ok(&["--netns", n, "detach", "xe0"]);
    } else {
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("intercept mode needs a handoff engine")
                && e.contains("bpf_sk_assign_tcp_reqsk")
                && e.contains("--mode watch"),
            "{e}"
        );
        assert!(
            !std::path::Path::new(&pin).exists(),
            "a refused attach leaves nothing pinned"
        );
        let o = ctl(&["--netns", n, "attach", "xe0", "--engine", "kfunc"]);
        assert!(
            stderr(&o).contains("kfunc handoff engine cannot run on this kernel")
                && stderr(&o).contains("bpf_sk_assign_tcp_reqsk (Linux >= 6.9)"),
            "{}",
            stderr(&o)
        );
    }

    // Forced to none: watch mode attaches, with no TC handoff.
    let o = ctl(&["--netns", n, "attach", "xe0", "--engine", "none"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "intercept without an engine is refused"
    );
    assert!(
        stderr(&o).contains("needs a handoff engine"),
        "{}",
        stderr(&o)
    );
    let out = ctl_ok(&[
        "--netns", n, "attach", "xe0", "--engine", "none", "--mode", "watch",
    ]);
    assert!(out.contains("handoff engine none"), "{out}");
    let st: serde_json::Value =
        serde_json::from_str(&ctl_ok(&["--netns", n, "--json", "status", "xe0"])).unwrap();
    assert_eq!(st["engine"], "none");
    assert_eq!(st["mode"], "watch");
    assert_eq!(st["healthy"], true, "{st}");
    assert_eq!(st["tc_handoff_attached"], false);
    for mode in ["intercept", "auto"] {
        let o = ctl(&["--netns", n, "mode", "xe0", mode]);
        assert_eq!(o.status.code(), Some(1), "mode {mode}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&format!("{mode} mode needs a handoff engine"))
                && e.contains("mode xe0 watch"),
            "mode {mode}: {e}"
        );
    }
    let _ = ctl_ok(&["--netns", n, "mode", "xe0", "off"]);
    let _ = ctl_ok(&["--netns", n, "mode", "xe0", "watch"]);
    let _ = ctl_ok(&["--netns", n, "detach", "xe0"]);
    assert!(!std::path::Path::new(&pin).exists());
}
