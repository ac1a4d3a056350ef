use intercept_common::config::Mode;
use intercept_ctl::loader::{self, AttachMode, Program};

use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface to protect (with --gateway: the one facing the clients).
    pub iface: String,
    /// Gateway mode: protect servers behind this box, reached through SERVER_IFACE, as a
    /// router's TCP intercept does. The XDP program runs on both interfaces; a proven client's
    /// connection is opened to its server by the box and spliced (the `splice` engine). Needs IP
    /// forwarding on. Example: `intercept-ctl attach eth0 --gateway eth1`.
    #[arg(long, value_name = "SERVER_IFACE")]
    pub gateway: Option<String>,
    /// With --gateway: how translated segments are forwarded: redirect (a route lookup and an
    /// XDP redirect from the data path), kernel (the kernel's forwarding path, queued by its qdisc:
    /// no drops at a veth's full ring, and for NICs without XDP redirect), or
    /// auto (default: kernel if either interface is a veth, else redirect). Example:
    /// `--forward kernel`.
    #[arg(long, value_enum, requires = "gateway")]
    pub forward: Option<intercept_ctl::gateway::Forward>,
    /// XDP mode: native (in the driver, default) or generic (slow fallback for drivers without
    /// native XDP).
    #[arg(long, value_enum, default_value = "native")]
    pub xdp_mode: AttachMode,
    /// Program: intercept (the protection) or pass (pass-through, for the far end of a veth that
    /// must carry XDP_TX replies).
    #[arg(long, value_enum, default_value = "intercept")]
    pub program: Program,
    /// Initial mode (default: intercept; replacing a dead attachment, the mode it had).
    /// Nothing is protected until `scope add` names destinations.
    #[arg(long, value_enum)]
    pub mode: Option<super::mode::ModeArg>,
    /// Handoff engine (default: the best this kernel offers; `status` lists them): `kfunc`
    /// (Linux >= 6.9), `kernel-cookie` (the kernel's own cookie, Linux >= 5.18; sets
    /// tcp_syncookies=2 and tcp_timestamps=2 in intercept mode), `none` (watch mode only) or
    /// `splice` (a gateway's, forced by --gateway).
    /// Example: `--engine kernel-cookie`.
    #[arg(long, value_enum)]
    pub engine: Option<intercept_ctl::engine::Engine>,
    /// Apply this configuration file (validated whole before anything is attached).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// What the data path logs for `run` to drain into its log, fixed for this attachment: error
    /// (aborted verdicts), warn (also refused handoffs and socket-table inserts), or off (the
    /// verifier removes the code). Example: `--log-level error`.
    #[arg(long, value_enum, default_value = "warn")]
    pub log_level: intercept_ctl::datalog::LogLevel,
}

pub fn run(ctx: &Ctx, a: &Args) -> anyhow::Result<()> {
    intercept_ctl::datalog::set_level(a.log_level);
    if a.xdp_mode == AttachMode::Generic {
        eprintln!(
            "intercept-ctl: warning: generic XDP runs after the kernel allocated the skb; it \
             protects, but is several times slower than native"
        );
    }
    let settings = a
        .config
        .as_deref()
        .map(intercept_ctl::config::load)
        .transpose()?;
    let initial = a.mode.map_or(Mode::Intercept, Mode::from);
    let att = match &a.gateway {
        Some(server) => {
            anyhow::ensure!(
                a.program == Program::Intercept,
                "--gateway attaches the gateway's own program: drop `--program pass`"
            );
            // Refused with what to do if another engine is named.
            intercept_ctl::engine::for_attach(
                &intercept_ctl::engine::Features::default(),
                a.engine,
                true,
            )?;
            intercept_ctl::gateway::set_forward(a.forward.unwrap_or_default());
            loader::attach_gateway(&a.iface, server, ctx.netns, a.xdp_mode, initial)?
        }
        None => loader::attach_engine(
            &a.iface, ctx.netns, a.program, a.xdp_mode, initial, a.engine,
        )?,
    };
    for l in &att.limitations {
        eprintln!("intercept-ctl: warning: {}: {l}", a.iface);
    }
    if let Some(reason) = &att.replaced_dead_attachment {
        eprintln!(
            "intercept-ctl: removed the dead attachment of {} ({reason}) and attached afresh",
            a.iface
        );
    }
    // A dead attachment's settings carry over (its maps outlived it), so the interface is
    // protected as before; a configuration file says everything instead, and an explicit
    // --mode wins.
    if let Some(old) = att
        .previous_settings
        .as_ref()
        .filter(|_| settings.is_none())
    {
        let mut old = old.clone();
        if let Some(m) = a.mode {
            old.mode = Some(m.into());
        }
        if let Err(e) = intercept_ctl::config::apply(&a.iface, ctx.netns, &old) {
            let _ = loader::detach(&a.iface, ctx.netns);
            return Err(e.context("carry the dead attachment's settings over (detached again)"));
        }
        eprintln!(
            "intercept-ctl: carried its settings over: {} protected, {} exempt, mode {}",
            old.protect.len(),
            old.exempt.len(),
            old.mode.map_or("unchanged", Mode::name)
        );
    }
    if let Some(s) = &settings
        && let Err(e) = intercept_ctl::config::apply(&a.iface, ctx.netns, s)
    {
        let _ = loader::detach(&a.iface, ctx.netns);
        return Err(e.context("apply the configuration (detached again)"));
    }
    if ctx.json {
        print_json(&serde_json::to_value(&att)?);
    } else {
        println!(
            "attached {} (id {}) to {}{} ({} XDP{}), pinned at {}",
            att.program,
            att.program_id,
            att.interface,
            att.server_interface
                .as_ref()
                .map_or_default(|s| format!(" and {s} (facing the servers)")),
            att.xdp_mode,
            att.engine
                .map_or_default(|e| format!(", handoff engine {e}")),
            att.pin_dir
        );
    }
    Ok(())
}
