//! Orchestration behind `./x` (which runs scripts/setup.sh first): test, run, bench. It only
//! sequences cargo and the binaries; no product logic lives here.
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

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
    /// Benchmarks: ns per packet of each program path, and request latency through the lab
    /// (figures, not assertions).
    Bench {
        /// Extra arguments for the benchmark.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

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
fn test_with_total(args: &[&str], ctl: &str) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .env("INTERCEPT_CTL", ctl)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("run cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut w = part.split_whitespace();
                if let (Some(n), Some(what)) =
                    (w.next().and_then(|n| n.parse::<u64>().ok()), w.next())
                {
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    println!("\nall tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() || failed > 0 {
        bail!("tests failed ({status})");
    }
    Ok(())
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        Into::into,
    )
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Test { args } => {
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
            }
            test_with_total(&a, ctl)
        }
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
    }
}
