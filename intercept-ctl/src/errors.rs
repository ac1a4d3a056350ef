//! Errors a user can cause, each saying what to do next.
use std::io;

/// Failures the controller explains to the operator.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The interface does not exist in this network namespace.
    #[error("no network interface named '{iface}' here{ns}; list them with `ip link`")]
    UnknownInterface {
        /// Name given.
        iface: String,
        /// " (in netns X)" or "".
        ns: String,
    },
    /// bpf() or netlink refused for lack of privileges.
    #[error(
        "{what}: permission denied; run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
         (e.g. `sudo intercept-ctl ...`)"
    )]
    NoPrivilege {
        /// What was attempted.
        what: String,
    },
    /// The kernel has no BTF.
    #[error(
        "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); xdp-intercept needs a \
         kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    /// The kernel has no bpf() syscall.
    #[error("this kernel has no bpf() syscall (CONFIG_BPF_SYSCALL=n); xdp-intercept needs BPF")]
    NoBpf,
    /// bpffs is not mounted where we pin.
    #[error("{path} is not a bpf filesystem; {advice}")]
    NoBpffs {
        /// The directory checked.
        path: String,
        /// What to do: mount it, or (inside `ip netns exec`, whose private /sys would lose the
        /// pins with the command) use `--netns` from outside.
        advice: String,
    },
    /// Already attached.
    #[error(
        "xdp-intercept is already attached to '{iface}' (pinned at {pin}); run `intercept-ctl \
         detach {iface}` first"
    )]
    AlreadyAttached {
        /// Interface.
        iface: String,
        /// Pin directory.
        pin: String,
    },
    /// Not attached.
    #[error(
        "xdp-intercept is not attached to '{iface}' (nothing pinned at {pin}); attach it with `intercept-ctl attach {iface}`"
    )]
    NotAttached {
        /// Interface.
        iface: String,
        /// Pin directory.
        pin: String,
    },
    /// Intercept (or auto) mode asked of an attachment whose kernel offers no handoff engine.
    #[error(
        "{mode} mode needs a handoff engine and this attachment of '{iface}' has none ({why}): \
         without one a proven handshake cannot reach the listener. Watch mode works here \
         (`intercept-ctl mode {iface} watch`, or `attach {iface} --mode watch`); for intercept \
         mode, run Linux >= 6.9"
    )]
    NoHandoffEngine {
        /// The mode asked for.
        mode: &'static str,
        /// Interface.
        iface: String,
        /// What the kernel lacks.
        why: String,
    },
    /// `attach --engine` named an engine this kernel cannot run.
    #[error(
        "the {engine} handoff engine cannot run on this kernel: it lacks {missing}; attach \
         without --engine to use the best one it has"
    )]
    EngineUnavailable {
        /// The engine asked for.
        engine: &'static str,
        /// What the kernel lacks.
        missing: String,
    },
    /// `attach --gateway` with an `--engine` other than `splice`.
    #[error(
        "a gateway (`--gateway`) hands proven connections to the servers behind it with the \
         splice engine; the {engine} engine hands them to local listeners and cannot run on a \
         gateway: drop `--engine {engine}` (or say `--engine splice`)"
    )]
    GatewayEngine {
        /// The engine asked for.
        engine: &'static str,
    },
    /// `attach --engine splice` without `--gateway`.
    #[error(
        "the splice engine is a gateway's: name the server-facing interface with `--gateway \
         SERVER_IFACE` (e.g. `intercept-ctl attach eth0 --gateway eth1`), or choose another \
         engine for a host's own listeners"
    )]
    SpliceWithoutGateway,
    /// `attach --gateway` naming the client-facing interface again.
    #[error(
        "'{iface}' cannot face both the clients and the servers: `--gateway` names the \
         server-facing interface, another one than '{iface}'"
    )]
    GatewaySameInterface {
        /// Interface named twice.
        iface: String,
    },
    /// `attach --gateway` where the kernel forwards no IP traffic.
    #[error(
        "this network namespace{ns} forwards no IP packets, so a gateway would reach no server: \
         set {sysctls} (e.g. `sysctl -w {example}`), then attach again"
    )]
    ForwardingOff {
        /// " (netns X)" or "".
        ns: String,
        /// The sysctls to set, `name=1` joined with " and ".
        sysctls: String,
        /// The first of them, for the example.
        example: String,
    },
    /// `attach --gateway` naming a server-facing interface that has an attachment of its own.
    #[error(
        "'{iface}' has an attachment of its own (pinned at {pin}); run `intercept-ctl detach \
         {iface}` before using it as a gateway's server-facing interface"
    )]
    ServerInterfaceAttached {
        /// The server-facing interface.
        iface: String,
        /// Its pin directory.
        pin: String,
    },
    /// The pinned attachment no longer protects its interface (see [`crate::health`]).
    #[error(
        "the attachment of '{iface}' is dead: {reason}. Nothing protects {iface}: run `{fix}` \
         to protect it again (it replaces the dead pins)"
    )]
    Unhealthy {
        /// Interface.
        iface: String,
        /// What is wrong, from the kernel's view.
        reason: String,
        /// The command that protects the interface again.
        fix: String,
    },
    /// The programs run on the interface, but a kernel setting they need is off: nothing is
    /// protected until it is set again (the reason says how).
    #[error("'{iface}' is attached but not protected: {reason}")]
    NotProtected {
        /// Interface.
        iface: String,
        /// What is wrong and what sets it right.
        reason: String,
    },
    /// A system call failed (the cause follows in the error chain).
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another `run` already owns the interface.
    #[error(
        "another `intercept-ctl run` (pid {pid}) already runs for '{iface}'; stop it first \
         (two daemons would undo each other's decisions)"
    )]
    DaemonRunning {
        /// Interface.
        iface: String,
        /// The pid its pid file names.
        pid: String,
    },
    /// The named network namespace does not exist.
    #[error("no network namespace named '{0}'; list them with `ip netns list`")]
    UnknownNetns(String),
}

/// A pinned map whose values are not this build's size (`map`: its name): the attachment was
/// made by another build of intercept-ctl, whose maps this one cannot read or write. Says so,
/// and what to do; any other error is returned as it was.
#[must_use]
pub fn other_build(err: aya::maps::MapError, map: &str) -> anyhow::Error {
    // aya's `size` is this build's, `expected` the pinned map's.
    if let aya::maps::MapError::InvalidValueSize { size, expected } = err {
        return anyhow::anyhow!(
            "map {map} of this attachment holds {expected}-byte values where this build expects \
             {size}: it was attached by another build of intercept-ctl; detach it and attach \
             again (with this build)"
        );
    }
    err.into()
}

/// Turns low-level failures anywhere in `err`'s chain into a [`CtlError`] that says what to do;
/// other errors are returned unchanged.
#[must_use]
pub fn explain(err: anyhow::Error, what: &str) -> anyhow::Error {
    for cause in err.chain() {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match io.raw_os_error() {
                // EPERM only: the verifier rejects programs with EACCES, which is no privilege issue.
                Some(libc::EPERM) => {
                    return anyhow::Error::new(CtlError::NoPrivilege {
                        what: what.to_owned(),
                    })
                    .context(format!("{err:#}"));
                }
                Some(libc::ENOSYS) => return anyhow::Error::new(CtlError::NoBpf),
                _ => {}
            }
        }
    }
    err
}

/// Checks the kernel features every verb that loads the object needs, and returns what else
/// it offers.
///
/// # Errors
/// [`CtlError::NoBtf`] when the kernel has no BTF.
pub fn probe_kernel() -> Result<crate::engine::Features, CtlError> {
    let features = crate::engine::Features::probe();
    if !features.btf {
        return Err(CtlError::NoBtf);
    }
    Ok(features)
}

/// What `status` reports of the kernel: the features xdp-intercept uses, probed now.
#[must_use]
pub fn kernel_features() -> serde_json::Value {
    let sysctl = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let features = crate::engine::Features::probe();
    serde_json::json!({
        "engines": features.engines().iter().map(|e| e.name()).collect::<Vec<_>>(),
        "btf": crate::btf_patch::vmlinux().is_some(),
        "kfunc_bpf_sk_assign_tcp_reqsk": features.kfunc_bpf_sk_assign_tcp_reqsk,
        "tcx": features.tcx,
        "syncookie_helpers": features.syncookie_helpers,
        "xdp_load_bytes": features.xdp_load_bytes,
        "listener_window_fields": features.listener_fields,
        "accept_queue_check": crate::loader::accept_queue_offsets().is_some(),
        "socket_netns_offsets": crate::loader::sock_offsets().filters_netns(),
        "request_socket_hook": crate::loader::sock_offsets().reads_request_socks()
            && crate::btf_patch::vmlinux_has_func(intercept_common::maps::REQSK_FUNCTION),
        "tcp_syncookies": sysctl(crate::sysctl::SYNCOOKIES),
        "tcp_timestamps": sysctl(crate::sysctl::TIMESTAMPS),
        "bpffs": crate::pins::check_bpffs().is_ok(),
    })
}
