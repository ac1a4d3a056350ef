use std::time::{Duration, Instant};

use anyhow::Context as _;
use intercept_common::Counter;
use intercept_ctl::{
    errors::CtlError,
    health::{self, Problem},
    loader::{self, AttachMode, Program},
    pins::PinDir,
    stats::{Counters, read_pinned},
    watchctl::Watcher,
};

use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface to protect (with --gateway: the one facing the clients).
    pub iface: String,
    /// Gateway mode (see `attach --gateway`): when this run attaches, it attaches a gateway
    /// with this server-facing interface. An attached gateway is adopted without it. Each tick
    /// also frees idle spliced connections; watch-mode timeouts reset both ends over the wire.
    /// Example: `intercept-ctl run eth0 --gateway eth1`.
    #[arg(long, value_name = "SERVER_IFACE")]
    pub gateway: Option<String>,
    /// With --gateway: how translated segments are forwarded (see `attach --forward`).
    #[arg(long, value_enum, requires = "gateway")]
    pub forward: Option<intercept_ctl::gateway::Forward>,
    /// XDP mode.
    #[arg(long, value_enum, default_value = "native")]
    pub xdp_mode: AttachMode,
    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// On exit, leave the protection attached (default: detach if this run attached it).
    #[arg(long)]
    pub keep: bool,
    /// Print no live counters (transitions are still logged on stderr).
    #[arg(long)]
    pub quiet: bool,
    /// Configuration file: applied at start and again on SIGHUP (an invalid file is rejected
    /// whole and the running configuration kept).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics over HTTP at this address (overrides the file's metrics.listen).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// What the data path logs when this run attaches (an adopted attachment keeps its own):
    /// error (aborted verdicts), warn (also refused handoffs and socket-table inserts), or off.
    /// Its lines come on stderr, naming the interface, at most 10 a second per CPU; the number
    /// cut is said. Example: `--log-level error`.
    #[arg(long, value_enum, default_value = "warn")]
    pub log_level: intercept_ctl::datalog::LogLevel,
}

/// Counters shown in the live view, in order.
pub const LIVE: [Counter; 8] = [
    Counter::Packets,
    Counter::Syn,
    Counter::SynAckSent,
    Counter::AckValid,
    Counter::Dropped,
    Counter::HalfOpenNew,
    Counter::HalfOpenTimedOut,
    Counter::Passed,
];

/// The live view: counters once a second, with rates since the previous reading.
pub struct Live {
    start: Instant,
    prev: Counters,
    last: Instant,
}

impl Live {
    /// Starts from a first reading.
    #[must_use]
    pub fn new(first: Counters) -> Live {
        Live {
            start: Instant::now(),
            prev: first,
            last: Instant::now(),
        }
    }

    /// Whether a second has passed since the last line.
    #[must_use]
    pub fn due(&self) -> bool {
        self.last.elapsed() >= Duration::from_secs(1)
    }

    /// Takes a new reading and prints it (unless `quiet`).
    pub fn update(&mut self, ctx: &Ctx, now: Counters, quiet: bool) {
        if !quiet {
            print_live(
                ctx,
                self.start.elapsed().as_secs_f64(),
                &now,
                &self.prev,
                self.last.elapsed().as_secs_f64(),
            );
        }
        self.prev = now;
        self.last = Instant::now();
    }

    /// The latest reading.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.prev
    }
}

/// Prints one live line (or JSON object) with totals and per-second rates.
pub fn print_live(ctx: &Ctx, t: f64, now: &Counters, prev: &Counters, dt: f64) {
    if ctx.json {
        let rates: serde_json::Map<_, _> = LIVE
            .iter()
            .map(|c| {
                (
                    c.name().to_owned(),
                    serde_json::json!(now.rate(*c, prev, dt)),
                )
            })
            .collect();
        print_json(&serde_json::json!({ "t": t, "counters": now.to_json(), "rates": rates }));
        return;
    }
    let mut line = format!("{t:>6.1}s");
    for c in LIVE {
        let rate = now.rate(c, prev, dt);
        use std::fmt::Write as _;
        let _ = write!(line, "  {}={} ({:.0}/s)", c.name(), now.get(c), rate);
    }
    println!("{line}");
}

/// The daemon: attach if needed, then every 100 ms run the watch controller (timeouts, displaced
/// connections, thresholds, auto mode), once a second check the attachment's health (see
/// [`health_step`]) and print counters, until the time is up or SIGINT/SIGTERM arrives.
pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    intercept_ctl::datalog::set_level(a.log_level);
    let mut settings = a
        .config
        .as_deref()
        .map(intercept_ctl::config::load)
        .transpose()?;
    // Before anything else: one daemon per interface, or two would race each other's attach,
    // tick and detach.
    let _claim = intercept_ctl::lock::Daemon::claim(&a.iface, ctx.netns)?;
    let pins = PinDir::new(ctx.netns, &a.iface);
    // The program id of the attachment this run made, which it detaches on exit (unless
    // --keep): never one that replaced it meanwhile. A dead attachment it replaces stands in for
    // whoever attached before, so it is left running like an adopted one.
    let mut ours = None;
    if !pins.is_attached() {
        intercept_ctl::gateway::set_forward(a.forward.unwrap_or_default());
        let att = match &a.gateway {
            Some(server) => loader::attach_gateway(
                &a.iface,
                server,
                ctx.netns,
                a.xdp_mode,
                intercept_common::config::Mode::Intercept,
            )?,
            None => loader::attach(&a.iface, ctx.netns, Program::Intercept, a.xdp_mode)?,
        };
        eprintln!(
            "intercept-ctl: attached to {} (program id {})",
            att.interface, att.program_id
        );
        ours = Some(att.program_id);
    } else if let h = health::check(&a.iface, ctx.netns)?
        && let Some(reason) = h.reason.clone()
    {
        let server = h.server.as_ref().map(|s| s.interface.clone());
        reattach(ctx, a, reattach_mode(a, &h), server.as_deref(), &reason)?;
    } else {
        eprintln!(
            "intercept-ctl: adopting the protection already attached to {}",
            a.iface
        );
    }
    if let Some(s) = &settings {
        intercept_ctl::config::apply(&a.iface, ctx.netns, s)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, async {
        let mut watcher = Watcher::open(&a.iface, ctx.netns)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        if let Some(addr) = a.metrics_listen.or(settings.as_ref().and_then(|s| s.metrics_listen)) {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listen for metrics on {addr}"))?;
            eprintln!("intercept-ctl: Prometheus metrics on http://{addr}/metrics");
            tokio::task::spawn_local(serve_metrics(listener, a.iface.clone(), ctx.netns.map(str::to_owned)));
        }
        let mut last_rotation = Instant::now();
        let mut live = Live::new(read_pinned(&a.iface, ctx.netns)?);
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_health = Instant::now();
        let mut gone = false;
        let mut trouble = Trouble::default();
        // The attachment the watcher and the live view read: another `attach` may replace it.
        let mut followed = pinned_program(&pins);
        let mut _drain = drain_log(&a.iface, followed);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    match a.config.as_deref().map(intercept_ctl::config::load) {
                        None => eprintln!("intercept-ctl: SIGHUP ignored: no --config file"),
                        Some(Err(e)) => eprintln!("intercept-ctl: reload rejected: {e:#}"),
                        Some(Ok(s)) => match intercept_ctl::config::apply(&a.iface, ctx.netns, &s) {
                            Ok(()) => {
                                eprintln!("intercept-ctl: reloaded {}", a.config.as_ref().map_or_default(|p| p.display().to_string()));
                                settings = Some(s);
                            }
                            Err(e) => eprintln!("intercept-ctl: reload failed: {e:#}"),
                        },
                    }
                    continue;
                }
            }
            if a.seconds
                .is_some_and(|s| start.elapsed() >= Duration::from_secs(s))
            {
                break;
            }
            // Once a second, the kernel's view of the attachment (a few syscalls): a deleted
            // interface leaves the pins behind, and one re-created under the same name would
            // be protected by nothing.
            if gone || last_health.elapsed() >= HEALTH_EVERY {
                last_health = Instant::now();
                let step = health_step(ctx, a, settings.as_ref(), gone);
                match trouble.check("the health check", step) {
                    None => {}
                    Some(Step::Fatal(e)) => return Err(e),
                    Some(Step::Healthy) => {
                        gone = false;
                        let now = pinned_program(&pins);
                        if now != followed {
                            eprintln!(
                                "intercept-ctl: {} was attached again by another command \
                                 (program id {}); following the new attachment",
                                a.iface,
                                now.unwrap_or(0)
                            );
                            let Some(w) = trouble.check("opening the new attachment", Watcher::open(&a.iface, ctx.netns)) else { continue };
                            let Some(l) = trouble.check("reading counters", read_pinned(&a.iface, ctx.netns)) else { continue };
                            (watcher, live, followed) = (w, Live::new(l), now);
                            _drain = drain_log(&a.iface, followed);
                        }
                    }
                    // Nothing to watch or rotate on maps nothing reads.
                    Some(Step::Gone) => {
                        gone = true;
                        continue;
                    }
                    Some(Step::Reattached(att)) => {
                        ours = ours.map(|_| att.program_id);
                        gone = false;
                        let Some(w) = trouble.check("opening the new attachment", Watcher::open(&a.iface, ctx.netns)) else { continue };
                        // Fresh counters: rates start again from them.
                        let Some(l) = trouble.check("reading counters", read_pinned(&a.iface, ctx.netns)) else { continue };
                        (watcher, live, followed) = (w, Live::new(l), Some(att.program_id));
                        _drain = drain_log(&a.iface, followed);
                    }
                }
            }
            if let Some(every) = settings.as_ref().and_then(|s| s.rotate_every)
                && last_rotation.elapsed() >= Duration::from_secs(every) {
                    let rotated = intercept_ctl::control::Maps::open(&a.iface, ctx.netns).and_then(|mut m| m.rotate_secret());
                    if let Some(generation) = trouble.check("rotating the cookie secret", rotated) {
                        eprintln!("intercept-ctl: rotated the cookie secret (generation {generation})");
                        last_rotation = Instant::now();
                    }
                }
            // Failed steps so far, counted where `stats` and the metrics show them.
            if trouble.uncounted > 0 && watcher.count_errors(trouble.uncounted).is_ok() {
                trouble.uncounted = 0;
            }
            let t = intercept_ctl::faults::fail_point("daemon:tick").and_then(|()| watcher.tick());
            let Some(t) = trouble.check("the watch tick", t) else { continue };
            if let Some((aggressive, cause)) = t.transition {
                eprintln!(
                    "intercept-ctl: {:.1}s state {} ({cause}): half-open {}, one-minute {}",
                    start.elapsed().as_secs_f64(),
                    if aggressive { "aggressive" } else { "calm" },
                    t.half_open,
                    t.one_minute
                );
            }
            if live.due()
                && let Some(now) = trouble.check("reading counters", read_pinned(&a.iface, ctx.netns))
            {
                say_log_cut(&a.iface, &now, live.counters());
                live.update(ctx, now, a.quiet);
            }
        }
        anyhow::Ok(())
    });
    if ours.is_some() && ours == pinned_program(&pins) && !a.keep {
        loader::detach(&a.iface, ctx.netns)?;
        eprintln!("intercept-ctl: detached from {}", a.iface);
    } else if health::check(&a.iface, ctx.netns).is_ok_and(|h| h.healthy) {
        eprintln!("intercept-ctl: protection left running on {}", a.iface);
    }
    result
}

/// Drains the data path's log of the attachment whose XDP program is `program` into stderr (see
/// [`intercept_ctl::datalog`]); says so, and goes on without, if it cannot.
fn drain_log(iface: &str, program: Option<u32>) -> Option<intercept_ctl::datalog::Drain> {
    let id = program?;
    intercept_ctl::datalog::Drain::start(iface, id)
        .inspect_err(|e| {
            eprintln!("intercept-ctl: {iface}: the data path's log is not shown: {e:#}");
        })
        .ok()
}

/// Says how many lines the data path's log lost to its rate limit since the last reading.
fn say_log_cut(iface: &str, now: &Counters, before: &Counters) {
    let cut = now
        .get(Counter::LogSuppressed)
        .saturating_sub(before.get(Counter::LogSuppressed));
    if cut > 0 {
        eprintln!(
            "intercept-ctl: {iface}: {cut} more data-path log lines cut by the rate limit ({} a \
             second per CPU)",
            intercept_ctl::datalog::LOG_LINES_PER_SECOND
        );
    }
}

/// The id of the XDP program pinned in `pins`, if any.
fn pinned_program(pins: &PinDir) -> Option<u32> {
    aya::programs::ProgramInfo::from_pin(pins.prog())
        .ok()
        .map(|i| i.id())
}

/// How often the daemon asks the kernel whether its attachment still protects the interface.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// What the daemon's health step found.
enum Step {
    /// The attachment protects the interface.
    Healthy,
    /// The interface is gone; nothing to protect until it returns.
    Gone,
    /// The interface returned (or was replaced) and was attached to again.
    Reattached(Box<loader::Attached>),
    /// Only a restart helps: the daemon stops with this error.
    Fatal(anyhow::Error),
}

/// The daemon's failing steps. A step that fails (a map read, a sock_diag call the kernel
/// refuses, a rotation) never stops the daemon: the protection stays attached with its last good
/// configuration, the next tick tries again, and stderr says when a failure starts, every
/// [`Trouble::REPEAT`] while it lasts (with the count), and when it ends.
#[derive(Default)]
struct Trouble {
    /// Failures of each failing step, and when they were last said.
    failing: std::collections::HashMap<&'static str, (u64, Instant)>,
    /// Failures not yet counted in `controller_errors`.
    uncounted: u64,
}

impl Trouble {
    const REPEAT: Duration = Duration::from_secs(10);

    /// The step's value, or `None` (said on stderr) if it failed.
    fn check<T>(&mut self, step: &'static str, r: anyhow::Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                if let Some((n, _)) = self.failing.remove(step) {
                    eprintln!("intercept-ctl: {step} works again after {n} failures");
                }
                Some(v)
            }
            Err(e) => {
                self.uncounted += 1;
                let (n, said) = self.failing.entry(step).or_insert((0, Instant::now()));
                *n += 1;
                if *n == 1 || said.elapsed() >= Self::REPEAT {
                    *said = Instant::now();
                    eprintln!(
                        "intercept-ctl: error: {step} failed ({n} times so far): {e:#}; the \
                         protection stays attached with its last configuration, retrying"
                    );
                }
                None
            }
        }
    }
}

/// The daemon's health step (see [`health::check`]): re-attaches when the interface of that
/// name is not the one the programs run on, waits (saying so once) while no such interface
/// exists, and fails when this process's namespace lost its name.
fn health_step(
    ctx: &Ctx,
    a: &Args,
    settings: Option<&intercept_ctl::config::Settings>,
    gone: bool,
) -> anyhow::Result<Step> {
    let h = {
        let _held = loader::hold_off_attaches()?;
        health::check(&a.iface, ctx.netns)?
    };
    let Some(reason) = h.reason.clone() else {
        return Ok(Step::Healthy);
    };
    if h.problem == Some(Problem::NetnsRenamed) {
        // This process (its sockets, the metrics listener) lives in the old namespace: a
        // restart enters the new one and re-attaches there.
        return Ok(Step::Fatal(
            CtlError::Unhealthy {
                iface: a.iface.clone(),
                reason,
                fix: restart_command(ctx, &a.iface),
            }
            .into(),
        ));
    }
    if h.problem == Some(Problem::ForwardingOff) {
        // The operator's to set again: the programs and maps work meanwhile.
        if !gone {
            eprintln!("intercept-ctl: {reason}");
        }
        return Ok(Step::Gone);
    }
    if h.problem == Some(Problem::KernelSettings) {
        // The programs run; only the sysctls changed under them.
        // A configuration write, under the settings lock, in the mode in force then: it sets
        // the sysctls again and recomputes what the SYN-ACKs offer (`Maps::set_config`).
        eprintln!("intercept-ctl: {reason}; setting it right");
        intercept_ctl::control::Maps::open(&a.iface, ctx.netns)?.update_config(|_| {})?;
        return Ok(Step::Healthy);
    }
    let server_gone = h.server.as_ref().is_some_and(|s| s.ifindex.is_none());
    if h.ifindex.is_none() || server_gone {
        let missing = if h.ifindex.is_none() {
            a.iface.clone()
        } else {
            h.server.as_ref().map_or_default(|s| s.interface.clone())
        };
        if !gone {
            eprintln!(
                "intercept-ctl: {reason}: {missing} is gone and nothing is protected; \
                 re-attaching when it returns"
            );
        }
        return Ok(Step::Gone);
    }
    let server = h.server.as_ref().map(|s| s.interface.as_str());
    let att = match reattach(ctx, a, reattach_mode(a, &h), server, &reason) {
        Ok(att) => att,
        // Another command re-attached first (the attach lock made this one wait for it): the
        // caller follows that attachment.
        Err(e)
            if e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<CtlError>(),
                    Some(CtlError::AlreadyAttached { .. })
                )
            }) =>
        {
            return Ok(Step::Healthy);
        }
        Err(e) => return Err(e),
    };
    if let Some(s) = settings {
        intercept_ctl::config::apply(&a.iface, ctx.netns, s)
            .context("apply the configuration to the new attachment")?;
    }
    Ok(Step::Reattached(Box::new(att)))
}

/// The XDP mode to re-attach in: generic if the driver refused metadata in native mode (where no
/// handshake completes), else the one asked for.
fn reattach_mode(a: &Args, h: &health::Health) -> AttachMode {
    if h.problem == Some(Problem::NoXdpMetadata) {
        eprintln!(
            "intercept-ctl: {} refuses XDP metadata in native mode; re-attaching in generic mode",
            a.iface
        );
        AttachMode::Generic
    } else {
        a.xdp_mode
    }
}

/// Replaces a dead attachment: attaches afresh and restores the dead one's settings (scope,
/// exempt sources, mode, SYN-ACK, thresholds: its maps outlive it), so the interface is
/// protected as before; the configuration file, if any, is applied after by the caller.
fn reattach(
    ctx: &Ctx,
    a: &Args,
    mode: AttachMode,
    server: Option<&str>,
    reason: &str,
) -> anyhow::Result<loader::Attached> {
    eprintln!(
        "intercept-ctl: the attachment of {} is dead ({reason}); re-attaching",
        a.iface
    );
    // A gateway stays a gateway, with the server-facing interface and forwarding it had.
    if let Some(rec) = intercept_ctl::gateway::ServerIface::read(&intercept_ctl::pins::PinDir::new(
        ctx.netns, &a.iface,
    )) {
        intercept_ctl::gateway::set_forward(rec.forward);
    }
    let att = match server {
        Some(server) => loader::attach_gateway(
            &a.iface,
            server,
            ctx.netns,
            mode,
            intercept_common::config::Mode::Intercept,
        ),
        None => loader::attach(&a.iface, ctx.netns, Program::Intercept, mode),
    }
    .with_context(|| format!("re-attach to {}", a.iface))?;
    if let Some(s) = &att.previous_settings {
        intercept_ctl::config::apply(&a.iface, ctx.netns, s)
            .context("restore the dead attachment's settings on the new attachment")?;
    }
    eprintln!(
        "intercept-ctl: re-attached to {} (program id {}) with the dead attachment's settings \
         ({} protected, {} exempt)",
        a.iface,
        att.program_id,
        att.previous_settings
            .as_ref()
            .map_or(0, |s| s.protect.len()),
        att.previous_settings.as_ref().map_or(0, |s| s.exempt.len()),
    );
    Ok(att)
}

/// `intercept-ctl [--netns NS ]run IFACE`: what brings a daemon that lost its namespace back.
fn restart_command(ctx: &Ctx, iface: &str) -> String {
    match ctx.netns {
        Some(ns) => format!("intercept-ctl --netns {ns} run {iface}"),
        None => format!("intercept-ctl run {iface}"),
    }
}

/// Answers `GET /metrics` with the exposition text; anything else with 404.
async fn serve_metrics(listener: tokio::net::TcpListener, iface: String, netns: Option<String>) {
    // Each connection is served by a task of its own, so a client that connects and sends
    // nothing (or reads slowly) holds up only itself; at most `MAX` at once, further ones wait
    // in the listen backlog.
    const MAX: usize = 32;
    let errors = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let busy = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX));
    loop {
        let Ok(permit) = busy.clone().acquire_owned().await else {
            return;
        };
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let (iface, netns, errors) = (iface.clone(), netns.clone(), errors.clone());
        tokio::task::spawn_local(async move {
            answer_scrape(sock, &iface, netns.as_deref(), &errors).await;
            drop(permit);
        });
    }
}

/// Answers one connection to the metrics endpoint: one request, one response, closed.
async fn answer_scrape(
    mut sock: tokio::net::TcpStream,
    iface: &str,
    netns: Option<&str>,
    errors: &std::cell::Cell<u64>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = [0u8; 2048];
    let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await else {
        return;
    };
    let req = String::from_utf8_lossy(&buf[..n]);
    let (status, ctype, body) =
        if req.starts_with("GET /metrics ") || req.starts_with("GET /metrics?") {
            let mut e = errors.get();
            let body = intercept_ctl::metrics::render(iface, netns, &mut e);
            errors.set(e);
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        } else {
            ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
        };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        sock.write_all(head.as_bytes()).await?;
        sock.write_all(body.as_bytes()).await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
}
