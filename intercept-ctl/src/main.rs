//! intercept-ctl: attach xdp-intercept to a NIC, change it while it runs, and read its counters.
mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use intercept_ctl::{errors::CtlError, pins::PinDir};

/// Controller of xdp-intercept, the XDP SYN-flood protection (SYN cookies and TCP intercept).
///
/// Data goes to stdout (a short aligned summary, or JSON with --json); diagnostics go to stderr.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Act inside this network namespace (`ip netns list`), like `ip -n`.
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attach the XDP program to an interface and pin it, so it keeps running after this exits.
    ///
    /// Example: intercept-ctl attach eth0
    Attach(cmd::attach::Args),
    /// Detach from an interface and remove its pins.
    ///
    /// Example: intercept-ctl detach eth0
    Detach(cmd::detach::Args),
    /// Show an attachment: its health from the kernel's view (exit 3 if the interface or its
    /// namespace was deleted), mode, scope size, SYN-ACK parameters, secret generation (never the
    /// secrets).
    ///
    /// Example: intercept-ctl status eth0 --json
    Status(cmd::status::Args),
    /// Change the mode while running (off, watch, intercept, auto).
    ///
    /// Example: intercept-ctl mode eth0 intercept
    Mode(cmd::mode::Args),
    /// Protected destinations (prefixes and ports), changed live.
    #[command(subcommand)]
    Scope(cmd::scope::Cmd),
    /// Exempt sources, changed live.
    #[command(subcommand)]
    Exempt(cmd::scope::ExemptCmd),
    /// Watch-mode timeout, thresholds (high/low, with hysteresis) and drop-mode, changed live.
    ///
    /// Example: intercept-ctl thresholds eth0 --watch-timeout 30 --max-incomplete-high 1100 --max-incomplete-low 900
    Thresholds(cmd::thresholds::Args),
    /// The half-open connections tracked in watch mode (client, server, state, age, time left).
    ///
    /// Example: intercept-ctl connections eth0 --json
    Connections(cmd::connections::Args),
    /// Show or change the SYN-ACK of the cookie path (MSS, window, window scale, TTL, ECN), live.
    ///
    /// Example: intercept-ctl synack eth0 --mss-v4 1400 --wscale 8
    Synack(cmd::synack::Args),
    /// Apply a configuration file to a running attachment (the daemon does this on SIGHUP).
    ///
    /// Example: intercept-ctl reload eth0 --config /etc/xdp-intercept/eth0.toml
    Reload(cmd::reload::Args),
    /// Replace the cookie secret; handshakes in flight keep verifying with the previous one.
    ///
    /// Example: intercept-ctl rotate-secret eth0
    RotateSecret(cmd::rotate::Args),
    /// Print the counters of an attached interface, summed over CPUs.
    ///
    /// Example: intercept-ctl stats eth0 --json
    Stats(cmd::stats::Args),
    /// The controller daemon: attaches (if not attached, or attached but dead), then runs watch
    /// mode's timeouts and auto mode's thresholds every 100 ms, checks the attachment's health
    /// every second (re-attaching if the interface is re-created), rotates the cookie secret
    /// (the file's secrets.rotate_every), serves Prometheus metrics (--metrics-listen), re-reads
    /// --config on SIGHUP, and prints live counters every second until Ctrl-C, SIGTERM or
    /// --seconds. On exit it detaches what it attached, unless --keep. One per interface.
    ///
    /// Example: intercept-ctl run eth0 --keep --config /etc/xdp-intercept/eth0.toml
    Run(cmd::run::Args),
    /// The built-in lab: network namespaces with a real server, real clients and a bounded SYN
    /// flood, protected by the program, with live counters. Needs root. Cleans up after itself.
    ///
    /// Example: intercept-ctl lab --seconds 10
    Lab(cmd::lab::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Command::Run(_) | Command::Lab(_)) {
        // A one-shot command piped into `head` ends quietly when the reader goes, as Unix tools
        // do, instead of panicking on EPIPE. (Not the daemon and the lab: they write to sockets,
        // where a peer going away must not kill them.)
        // SAFETY: setting a signal's disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = (|| {
        if let Some(ns) = &cli.netns {
            enter_netns(ns, &cli.cmd)?;
        }
        let ctx = cmd::Ctx {
            json: cli.json,
            netns: cli.netns.as_deref(),
        };
        // The verbs that read or write an attachment wait for an attach or detach in progress
        // (the daemon's re-attach replaces the pins) and hold the next off until they are done
        // (a moment: none of them waits for anything else meanwhile). The rest take the attach
        // lock themselves, at their moments.
        let _attaches_held_off = match &cli.cmd {
            Command::Attach(_) | Command::Detach(_) | Command::Run(_) | Command::Lab(_) => None,
            // It runs until stopped: it holds them off for each read instead.
            Command::Stats(a) if a.watch => None,
            _ => intercept_ctl::loader::wait_for_attaches()?,
        };
        match &cli.cmd {
            Command::Attach(a) => cmd::attach::run(&ctx, a),
            Command::Detach(a) => cmd::detach::run(&ctx, a),
            Command::Stats(a) => cmd::stats::run(&ctx, a),
            Command::Mode(a) => cmd::mode::run(&ctx, a),
            Command::Status(a) => cmd::status::run(&ctx, a),
            Command::Scope(c) => cmd::scope::run(&ctx, c),
            Command::Exempt(c) => cmd::scope::run_exempt(&ctx, c),
            Command::RotateSecret(a) => cmd::rotate::run(&ctx, a),
            Command::Thresholds(a) => cmd::thresholds::run(&ctx, a),
            Command::Reload(a) => cmd::reload::run(&ctx, a),
            Command::Synack(a) => cmd::synack::run(&ctx, a),
            Command::Connections(a) => cmd::connections::run(&ctx, a),
            Command::Run(a) => cmd::run::run(&ctx, a),
            Command::Lab(a) => cmd::lab::run(&ctx, a),
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("intercept-ctl: error: {e:#}");
            // 3: the attachment is dead (status printed it; a writing verb refused; the daemon
            // lost its namespace), distinct from other failures (1) and bad usage (2).
            if e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<CtlError>(),
                    Some(CtlError::Unhealthy { .. } | CtlError::NotProtected { .. })
                )
            }) {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Enters `--netns NAME`. When the namespace is gone but attachments of it are still pinned
/// (`ip netns del` leaves the pins, which protect nothing), `detach` proceeds without entering
/// it (pins are in bpffs, which every namespace shares), and every other verb says how to remove
/// them.
fn enter_netns(ns: &str, cmd: &Command) -> anyhow::Result<()> {
    let Err(e) = intercept_ctl::netns::enter(ns) else {
        return Ok(());
    };
    let pins = PinDir::new(Some(ns), "x");
    let dir = pins.path().parent().expect("pin dir has a parent");
    let mut names: Vec<String> = std::fs::read_dir(dir).map_or_default(|d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    });
    if names.is_empty() || !matches!(e.downcast_ref(), Some(CtlError::UnknownNetns(_))) {
        return Err(e);
    }
    if matches!(cmd, Command::Detach(_)) {
        return Ok(());
    }
    names.sort();
    let how: Vec<String> = names
        .iter()
        .map(|n| format!("`intercept-ctl --netns {ns} detach {n}`"))
        .collect();
    anyhow::bail!(
        "no network namespace named '{ns}' (deleted?), but its attachments are still pinned at \
         {} and protect nothing; remove them with {}",
        dir.display(),
        how.join(", ")
    )
}
