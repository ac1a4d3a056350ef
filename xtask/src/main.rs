//! Orchestration behind `./x` (which runs scripts/setup.sh first): test, run, bench, soak, fuzz.
//! It only sequences cargo and the binaries; no product logic lives here.
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod vm;

#[derive(Debug, Parser)]
#[command(about = "xdp-intercept tasks (use ./x, which installs what is missing first)")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run every test: host unit tests, BPF_PROG_TEST_RUN on the real object, the real binary's
    /// CLI, and end to end in network namespaces. Needs root; without it the privileged tests fail
    /// and say so.
    Test {
        /// Extra arguments for `cargo test` after `--` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The main job. With no interface: the built-in lab (namespaces, server, clients, flood)
    /// with live counters. With an interface: protect it and show live counters until Ctrl-C.
    Run {
        /// Interface to protect (default: the built-in lab).
        iface: Option<String>,
        /// Extra arguments for `intercept-ctl lab` / `intercept-ctl run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The privileged tests (the `intercept-tests` binaries) on another kernel, booted under QEMU
    /// over this machine's root file system (read-only, under a tmpfs overlay). Installs QEMU,
    /// virtiofsd and a static busybox with apt, and downloads the kernel package, once. KVM if it
    /// boots, else TCG (slower). Example: `./x vm-test --kernel 6.1 -- e2e::`.
    VmTest {
        /// The kernel: `6.1` (Debian 12's cloud kernel) or `host` (the running kernel's
        /// /boot image, if this machine has one).
        #[arg(long, value_enum, default_value = "6.1")]
        kernel: vm::Kernel,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 2048)]
        memory: u32,
        /// Kill the guest after this many seconds.
        #[arg(long, default_value_t = 1200)]
        timeout: u64,
        /// Arguments for every test binary after `--` (a name filter, `--exact`...); none runs
        /// every test.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks: ns per packet of each program path, and request latency through the lab
    /// (figures, not assertions).
    Bench {
        /// Extra arguments for the benchmark.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The comparison with the defences users would pick instead (not part of `test`): no
    /// protection, kernel SYN cookies, nftables synproxy, ours in intercept, auto and watch mode,
    /// under spoofed SYN floods from zero to the generator's maximum, interleaved and repeated;
    /// writes bench/results/compare.{json,md} and SVG plots. Needs root; about 10 minutes
    /// (`-- --quick`: under a minute). Example: `./x compare -- --repeats 5 --seconds 6`.
    Compare {
        /// Extra arguments for the comparison (`--quick`, `--repeats N`, `--seconds S`,
        /// `--rates 0,100000,max`, `--defences ...`, `--requests N`, `--out DIR`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The soak (not part of `test`, nor of CI): intercept mode on the NIC-like lab under the
    /// heaviest mixed flood the rig sends, bounded in count and time (60 s by default), with the
    /// daemon running and a legitimate client throughout; exits non-zero if a request failed, the
    /// counters do not add up or the daemon's memory grew.
    Soak {
        /// Extra arguments for `intercept-ctl lab --soak` (e.g. `--seconds 120`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The differential test of the data path, longer than the pass `test` runs: FRAMES
    /// generated and mutated frames (default 10,000,000) through the real object with
    /// `BPF_PROG_TEST_RUN`, each compared with the reference model; SEED reproduces a run (default:
    /// from the clock, printed). Needs root. Example: `./x difftest -- 5000000 0x2a`.
    Difftest {
        /// After `--`: FRAMES, then SEED.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fuzz the host-side parsers, the configuration file and the cookie codec (cargo-fuzz,
    /// libFuzzer; installs cargo-fuzz first if it is missing): every target, or TARGET, for a
    /// bounded time each. Not part of `test`.
    Fuzz {
        /// One target (default: all of them in turn).
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(FUZZ_TARGETS))]
        target: Option<String>,
        /// After `--`: seconds per target (default 30), then any libFuzzer flags.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// The tests `./x test` runs a second time with the kernel-cookie engine (name filters): every
/// end-to-end test of intercept and auto mode whose lab takes the engine it is given.
const KERNEL_COOKIE_TESTS: [&str; 21] = [
    "every_first_request",
    "legitimate_clients_get_through",
    "a_request_whose_handshake",
    "watch_and_auto_modes",
    "request_latency_is_within",
    "a_full_accept_queue",
    "a_flood_switches_auto",
    "auto_switching_to_intercept",
    "handshakes_in_flight",
    "connections_opened_before",
    "syns_padded",
    "syn_with_data",
    "data_after_the_server",
    "a_syn_reusing",
    "fragmented_and",
    "clients_leaving",
    "syn_acks_take",
    "asymmetric_routing",
    "a_connection_only_in",
    "live_changes",
    "protection_survives",
];

/// The tests `./x test` runs on Linux 6.1 under QEMU (name filters).
/// Not auto switching: under TCG its switch took from under 6 s to 9.8 s in runs of the same
/// code, a figure of the emulation's load, not of the product (it passes there on its own:
/// `./x vm-test -- a_flood_switches_auto`).
const VM_CI_TESTS: [&str; 8] = [
    "kernel_cookie_engine",
    "without_a_handoff_engine",
    "legitimate_clients_get_through",
    "half_open_connections_are_counted",
    // Gateway mode: its stages load and splice on 6.1's verifier too, the per-source limit's
    // atomic add and the option learning included.
    "a_splice_translates_every_number_both_ways",
    "blind_resets_and_spoofed_handshakes_change_no_state",
    "one_address_holds_at_most_its_splices",
    "only_options_walked_to_their_end_are_learned",
];

/// `./x vm-test`: the test binaries, built here, run with `args` in a guest booting `kernel`.
fn vm_test(kernel: vm::Kernel, memory: u32, timeout: u64, args: &[String]) -> anyhow::Result<()> {
    let tests = build_test_binaries()?;
    let ctl = target_dir().join("debug/intercept-ctl");
    let ctl = std::fs::canonicalize(&ctl).with_context(|| ctl.display().to_string())?;
    let opts = vm::Options {
        kernel,
        memory_mib: memory,
        timeout: std::time::Duration::from_secs(timeout),
        tests: &tests,
        args,
        ctl: &ctl,
    };
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let started = std::time::Instant::now();
    let target = std::fs::canonicalize(target_dir())?;
    let code = vm::run_tests(&target, &opts, &mut |line| {
        println!("{line}");
        tally(line, &mut passed, &mut failed, &mut ignored);
    })?;
    println!(
        "\nvm-test ({kernel:?}, {:.0} s): {passed} passed, {failed} failed, {ignored} skipped",
        started.elapsed().as_secs_f64()
    );
    if code != 0 || failed > 0 {
        bail!("tests in the guest failed (exit status {code})");
    }
    Ok(())
}

/// The fuzz targets (`fuzz/fuzz_targets/<name>.rs`).
const FUZZ_TARGETS: [&str; 5] = ["dissect", "tcpopt", "synack", "config", "cookie"];

fn cargo(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .context("run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, then prints one closing line totalling every test
/// binary's `test result:` line.
fn test_with_total(args: &[&str], ctl: &str, envs: &[(&str, &str)]) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .env("INTERCEPT_CTL", ctl)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("run cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        tally(&line, &mut passed, &mut failed, &mut ignored);
    }
    let status = child.wait()?;
    println!("\nall tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() || failed > 0 {
        bail!("tests failed ({status})");
    }
    Ok(())
}

/// Adds the counts of a `test result:` line to the totals.
fn tally(line: &str, passed: &mut u64, failed: &mut u64, ignored: &mut u64) {
    let Some(rest) = line.strip_prefix("test result: ") else {
        return;
    };
    for part in rest.split(['.', ';']) {
        let mut w = part.split_whitespace();
        if let (Some(n), Some(what)) = (w.next().and_then(|n| n.parse::<u64>().ok()), w.next()) {
            match what {
                "passed" => *passed += n,
                "failed" => *failed += n,
                "ignored" => *ignored += n,
                _ => {}
            }
        }
    }
}

/// Builds intercept-ctl and the `intercept-tests` test binaries without running them; returns
/// each binary with its package directory.
fn build_test_binaries() -> anyhow::Result<Vec<(std::path::PathBuf, std::path::PathBuf)>> {
    cargo(&["build", "-p", "intercept-ctl"], &[])?;
    let out = Command::new(env!("CARGO"))
        .args([
            "test",
            "-p",
            "intercept-tests",
            "--tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed ({})", out.status);
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        if let (Some(exe), Some(manifest)) = (v["executable"].as_str(), v["manifest_path"].as_str())
        {
            let dir = std::path::Path::new(manifest)
                .parent()
                .context("manifest path")?;
            bins.push((dir.to_path_buf(), exe.into()));
        }
    }
    Ok(bins)
}

/// Installs cargo-fuzz unless `cargo fuzz` already runs.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new(env!("CARGO"))
        .args(["fuzz", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        eprintln!("fuzz: installing cargo-fuzz (once)");
        cargo(&["install", "cargo-fuzz", "--locked"], &[])?;
    }
    Ok(())
}

/// What one target's run came to.
struct FuzzRun {
    target: &'static str,
    runs: Option<u64>,
    crashed: bool,
}

/// Runs one fuzz target for `seconds` (its corpus under the target directory, seeded from
/// `fuzz/seeds/<target>`), echoing libFuzzer's output; reads the executions from its final stats.
fn fuzz_one(target: &'static str, seconds: u64, extra: &[String]) -> anyhow::Result<FuzzRun> {
    use std::io::{BufRead as _, BufReader};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let corpus = target_dir().join("fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    let fuzz_target_dir = target_dir().join("fuzz");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .args(["fuzz", "run", target, "--target-dir"])
        .arg(&fuzz_target_dir)
        .arg(&corpus);
    let seeds = root.join("fuzz/seeds").join(target);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.args([
        "--",
        &format!("-max_total_time={seconds}"),
        "-timeout=10",
        "-print_final_stats=1",
    ]);
    let dict = root.join("fuzz/dict").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    cmd.args(extra);
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run cargo fuzz")?;
    let mut runs = None;
    for line in BufReader::new(child.stderr.take().context("stderr")?).lines() {
        let line = line?;
        eprintln!("{line}");
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            runs = n.trim().parse().ok();
        }
    }
    let status = child.wait()?;
    Ok(FuzzRun {
        target,
        runs,
        crashed: !status.success(),
    })
}

/// Fails on unformatted code or any clippy warning (the pedantic group less the lints the
/// workspace's Cargo.toml allows, each with its reason), in every crate: the host crates with
/// their tests and benchmarks, and the eBPF crate for its own target.
fn lint_gate() -> anyhow::Result<()> {
    eprintln!("lint gate: cargo fmt --check, cargo clippy -D warnings (host crates, eBPF crate)");
    cargo(&["fmt", "--all", "--", "--check"], &[]).context(
        "formatting differs from rustfmt's: run `cargo fmt --all` and commit the result",
    )?;
    cargo(
        &[
            "clippy",
            "--quiet",
            "--workspace",
            "--exclude",
            "intercept-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )
    .context("clippy found warnings in the host crates (listed above)")?;
    let ebpf_dir = target_dir().join("ebpf-clippy");
    cargo(
        &[
            "clippy",
            "--quiet",
            "-p",
            "intercept-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--target-dir",
            ebpf_dir.to_str().context("non-UTF-8 target dir")?,
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )
    .context("clippy found warnings in the eBPF crate (listed above)")
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        Into::into,
    )
}

#[allow(clippy::too_many_lines, reason = "one arm per task")]
fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Test { args } => {
            // The whole suite (CI's run) starts with the lint gate; a filtered run, a developer's
            // loop, goes straight to its tests.
            if args.is_empty() {
                lint_gate()?;
            }
            cargo(&["build", "-p", "intercept-ctl"], &[])?;
            let ctl = target_dir().join("debug/intercept-ctl");
            let ctl = ctl.to_str().context("non-UTF-8 target dir")?;
            // No doc tests: the crates have no runnable examples, and their empty runs would be
            // the last summaries printed.
            let mut a = vec![
                "test",
                "--workspace",
                "--exclude",
                "intercept-ebpf",
                "--lib",
                "--bins",
                "--tests",
            ];
            if !args.is_empty() {
                a.push("--");
                a.extend(args.iter().map(String::as_str));
                return test_with_total(&a, ctl, &[]);
            }
            test_with_total(&a, ctl, &[])?;
            // The end-to-end tests of intercept and auto mode once more with the engine of
            // kernels before 6.9, forced on this kernel.
            println!(
                "\nagain with the kernel-cookie engine (INTERCEPT_TEST_ENGINE=kernel-cookie):"
            );
            let mut a = vec!["test", "-p", "intercept-tests", "--tests", "--"];
            a.extend(KERNEL_COOKIE_TESTS);
            test_with_total(&a, ctl, &[("INTERCEPT_TEST_ENGINE", "kernel-cookie")])?;
            // And on the kernel most servers run, under QEMU: the engine probe, the refusals, the
            // kernel-cookie engine end to end, a flood and watch mode's timeouts (about 7 minutes
            // with TCG).
            println!("\non Debian 12's Linux 6.1 under QEMU:");
            let subset = VM_CI_TESTS.map(str::to_owned);
            vm_test(vm::Kernel::Debian61, 2048, 1200, &subset)
        }
        Task::VmTest {
            kernel,
            memory,
            timeout,
            args,
        } => vm_test(kernel, memory, timeout, &args),
        Task::Run { iface, args } => {
            cargo(&["build", "--release", "-p", "intercept-ctl"], &[])?;
            let ctl = target_dir().join("release/intercept-ctl");
            let mut cmd = Command::new(ctl);
            match &iface {
                None => cmd.arg("lab"),
                Some(i) => cmd.args(["run", i]),
            };
            let status = cmd.args(&args).status().context("run intercept-ctl")?;
            if !status.success() {
                bail!("intercept-ctl failed ({status})");
            }
            Ok(())
        }
        Task::Bench { args } => {
            cargo(&["build", "-p", "intercept-ctl"], &[])?;
            let mut a = vec![
                "bench",
                "-p",
                "intercept-tests",
                "--bench",
                "xdp",
                "--bench",
                "latency",
                "--bench",
                "forgery",
                "--",
            ];
            a.extend(args.iter().map(String::as_str));
            cargo(&a, &[])
        }
        Task::Compare { args } => {
            cargo(&["build", "--release", "-p", "intercept-ctl"], &[])?;
            let ctl = target_dir().join("release/intercept-ctl");
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let status = Command::new(env!("CARGO"))
                .current_dir(&root)
                .args([
                    "run",
                    "--quiet",
                    "--release",
                    "-p",
                    "intercept-bench",
                    "--",
                    "--ctl",
                ])
                .arg(&ctl)
                .args(&args)
                .status()
                .context("run the comparison")?;
            if !status.success() {
                bail!("the comparison failed ({status})");
            }
            Ok(())
        }
        Task::Soak { args } => {
            cargo(&["build", "--release", "-p", "intercept-ctl"], &[])?;
            let status = Command::new(target_dir().join("release/intercept-ctl"))
                .args(["lab", "--soak"])
                .args(&args)
                .status()
                .context("run intercept-ctl")?;
            if !status.success() {
                bail!("the soak failed ({status})");
            }
            Ok(())
        }
        Task::Difftest { args } => {
            let frames = args.first().map_or("10000000", String::as_str);
            let mut envs = vec![("DIFFTEST_FRAMES", frames)];
            if let Some(seed) = args.get(1) {
                envs.push(("DIFFTEST_SEED", seed));
            }
            cargo(
                &[
                    "test",
                    "-p",
                    "intercept-tests",
                    "--test",
                    "difftest",
                    "--",
                    "--nocapture",
                ],
                &envs,
            )
        }
        Task::Fuzz { target, args } => {
            let (seconds, extra) = match args.split_first() {
                Some((s, rest)) => (
                    s.parse::<u64>()
                        .with_context(|| format!("`{s}` is not a number of seconds"))?,
                    rest,
                ),
                None => (30, &[][..]),
            };
            ensure_cargo_fuzz()?;
            let targets: Vec<&'static str> = FUZZ_TARGETS
                .into_iter()
                .filter(|t| target.as_deref().is_none_or(|want| want == *t))
                .collect();
            let mut done = Vec::new();
            for t in targets {
                done.push(fuzz_one(t, seconds, extra)?);
            }
            println!("\nfuzz: {seconds} s per target");
            for r in &done {
                let runs = r.runs.map_or_else(|| "?".to_owned(), |n| n.to_string());
                let verdict = if r.crashed {
                    "FAILED (crash, or the build failed: see above; inputs in fuzz/artifacts/)"
                } else {
                    "no crash"
                };
                println!("  {:<8} {runs:>12} executions  {verdict}", r.target);
            }
            let failed: Vec<_> = done
                .iter()
                .filter(|r| r.crashed)
                .map(|r| r.target)
                .collect();
            if !failed.is_empty() {
                bail!("fuzz targets failed: {}", failed.join(", "));
            }
            Ok(())
        }
    }
}
