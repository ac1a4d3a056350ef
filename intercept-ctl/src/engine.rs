//! Handoff engines: how a handshake that XDP proved with a cookie reaches the listening socket.
//!
//! Chosen at attach by probing the running kernel (its BTF: what it can do, never its version
//! string), recorded in the pin directory, shown by `status`, and forced with `attach --engine`
//! (tests force `none` to see a kernel without any engine on any kernel). A gateway
//! (`attach --gateway`) has an engine of its own, `splice`: it hands a proven handshake to a
//! server behind the box, not to a local listener.
use std::fs;

use crate::{errors::CtlError, pins::PinDir};

/// The kfunc the `kfunc` engine calls.
const KFUNC_NAME: &str = "bpf_sk_assign_tcp_reqsk";
/// A type only kernels with TCX links (Linux >= 6.6) have.
const TCX_NAME: &str = "tcx_link";
/// The helpers the `kernel-cookie` engine calls (Linux >= 5.3; the kernel's BTF names the
/// functions behind them).
const GEN_SYNCOOKIE: &str = "bpf_tcp_gen_syncookie";
const CHECK_SYNCOOKIE: &str = "bpf_tcp_check_syncookie";
/// The helper that copies frame bytes for them (Linux >= 5.18).
const XDP_LOAD_BYTES: &str = "bpf_xdp_load_bytes";
/// Pin (a symlink naming the engine) in the attachment's pin directory.
pub const ENGINE_PIN: &str = "engine";

/// A handoff engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// XDP answers SYNs with its own keyed cookie and verifies the ACK; a TC ingress program
    /// hands the proven connection to the listener with the kfunc `bpf_sk_assign_tcp_reqsk`
    /// (Linux >= 6.9). Keeps every TCP option; forged ACKs never reach the kernel.
    Kfunc,
    /// XDP answers SYNs with the kernel's own cookie, made from the listener with
    /// `bpf_tcp_gen_syncookie`, drops ACKs that fail `bpf_tcp_check_syncookie`, and leaves valid
    /// ones to the listener, which completes them itself (Linux >= 5.3). Needs
    /// `net.ipv4.tcp_syncookies=2` and `net.ipv4.tcp_timestamps=2` while intercept mode is in
    /// force (set and restored by the controller). Keeps MSS (from the kernel's table of four),
    /// window scale and SACK when the client sends timestamps, only the MSS otherwise; no ECN.
    KernelCookie,
    /// No handoff: watch mode, its thresholds and every counter work; intercept and auto mode
    /// are refused with what the kernel lacks.
    None,
    /// Gateway mode only (`attach CLIENT_IFACE --gateway SERVER_IFACE`): XDP answers SYNs with
    /// its own cookie on the client-facing interface and, once the ACK proves it, opens the
    /// connection to the server behind this box itself and splices the two (see
    /// `intercept_common::splice`). No local listener, no TC program, no sysctl changed.
    Splice,
}

impl Engine {
    /// The name `status` and the pin use.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Engine::Kfunc => "kfunc",
            Engine::KernelCookie => "kernel-cookie",
            Engine::None => "none",
            Engine::Splice => "splice",
        }
    }

    fn from_name(s: &str) -> Option<Engine> {
        match s {
            "kfunc" => Some(Engine::Kfunc),
            "kernel-cookie" => Some(Engine::KernelCookie),
            "none" => Some(Engine::None),
            "splice" => Some(Engine::Splice),
            _ => None,
        }
    }

    /// Whether this engine can complete handshakes (intercept and auto mode need one). The
    /// splice engine completes them with the server itself.
    #[must_use]
    pub const fn hands_off(self) -> bool {
        !matches!(self, Engine::None)
    }

    /// Whether this is a gateway's engine (its attachment spans two interfaces, has no local
    /// listener, and changes no sysctl).
    #[must_use]
    pub const fn is_gateway(self) -> bool {
        matches!(self, Engine::Splice)
    }
}

/// The engine of an attachment from `attach`'s arguments: `splice` for a gateway (forced by
/// `--gateway`, which takes no other engine), else the best this kernel offers or the one forced.
///
/// # Errors
/// [`CtlError::GatewayEngine`] for `--gateway` with another `--engine`;
/// [`CtlError::SpliceWithoutGateway`] for `--engine splice` without `--gateway`; as
/// [`Features::choose`].
pub fn for_attach(
    features: &Features,
    forced: Option<Engine>,
    gateway: bool,
) -> Result<Engine, CtlError> {
    match (gateway, forced) {
        (true, None | Some(Engine::Splice)) => Ok(Engine::Splice),
        (true, Some(e)) => Err(CtlError::GatewayEngine { engine: e.name() }),
        (false, Some(Engine::Splice)) => Err(CtlError::SpliceWithoutGateway),
        (false, forced) => features.choose(forced),
    }
}

/// What the running kernel offers, probed from its BTF.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Features {
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    /// The kfunc `bpf_sk_assign_tcp_reqsk` (Linux >= 6.9).
    pub kfunc_bpf_sk_assign_tcp_reqsk: bool,
    /// TCX links for TC programs (Linux >= 6.6).
    pub tcx: bool,
    /// The helpers `bpf_tcp_gen_syncookie` and `bpf_tcp_check_syncookie` (Linux >= 5.3), and
    /// the kernel's SYN cookies built in (`CONFIG_SYN_COOKIES`: `net.ipv4.tcp_syncookies`).
    pub syncookie_helpers: bool,
    /// The helper `bpf_xdp_load_bytes` (Linux >= 5.18).
    pub xdp_load_bytes: bool,
    /// Where a listening socket records its own receive window (`sock.sk_userlocks`,
    /// `tcp_sock.window_clamp`), found in the kernel's BTF.
    pub listener_fields: bool,
}

impl Features {
    /// Probes the running kernel.
    #[must_use]
    pub fn probe() -> Features {
        if crate::btf_patch::vmlinux().is_none() {
            return Features::default();
        }
        Features {
            btf: true,
            kfunc_bpf_sk_assign_tcp_reqsk: crate::btf_patch::vmlinux_has_func(KFUNC_NAME),
            tcx: crate::btf_patch::vmlinux_has_struct(TCX_NAME),
            syncookie_helpers: crate::btf_patch::vmlinux_has_func(GEN_SYNCOOKIE)
                && crate::btf_patch::vmlinux_has_func(CHECK_SYNCOOKIE)
                && std::path::Path::new(crate::sysctl::SYNCOOKIES).exists(),
            xdp_load_bytes: crate::btf_patch::vmlinux_has_func(XDP_LOAD_BYTES),
            listener_fields: crate::loader::listener_offsets().known(),
        }
    }

    /// The engines this kernel can run, best first (`none` always last).
    #[must_use]
    pub fn engines(&self) -> Vec<Engine> {
        let mut out = Vec::new();
        if self.kfunc_bpf_sk_assign_tcp_reqsk && self.tcx {
            out.push(Engine::Kfunc);
        }
        if self.syncookie_helpers && self.xdp_load_bytes && self.listener_fields {
            out.push(Engine::KernelCookie);
        }
        out.push(Engine::None);
        out
    }

    /// The best engine, or `forced` if this kernel can run it.
    ///
    /// # Errors
    /// [`CtlError::EngineUnavailable`] when `forced` needs what this kernel lacks.
    pub fn choose(&self, forced: Option<Engine>) -> Result<Engine, CtlError> {
        let engines = self.engines();
        match forced {
            None => Ok(engines[0]),
            Some(e) if engines.contains(&e) => Ok(e),
            Some(e) => Err(CtlError::EngineUnavailable {
                engine: e.name(),
                missing: self.missing(e),
            }),
        }
    }

    /// What this kernel lacks to run `engine`, as a phrase naming each feature.
    #[must_use]
    pub fn missing(&self, engine: Engine) -> String {
        let mut out = Vec::new();
        if engine == Engine::Kfunc {
            if !self.kfunc_bpf_sk_assign_tcp_reqsk {
                out.push("the kfunc bpf_sk_assign_tcp_reqsk (Linux >= 6.9)");
            }
            if !self.tcx {
                out.push("TCX links (Linux >= 6.6)");
            }
        }
        if engine == Engine::KernelCookie {
            if !self.syncookie_helpers {
                out.push(
                    "the helpers bpf_tcp_gen_syncookie and bpf_tcp_check_syncookie with SYN \
                     cookies built in (Linux >= 5.3, CONFIG_SYN_COOKIES)",
                );
            }
            if !self.xdp_load_bytes {
                out.push("the helper bpf_xdp_load_bytes (Linux >= 5.18)");
            }
            if !self.listener_fields {
                out.push("sock.sk_userlocks and tcp_sock.window_clamp in the kernel's BTF");
            }
        }
        if out.is_empty() {
            "nothing".to_owned()
        } else {
            out.join(" and ")
        }
    }

    /// Why no engine is possible here, for [`CtlError::NoHandoffEngine`].
    #[must_use]
    pub fn why_none(&self) -> String {
        format!(
            "the kfunc engine needs {}; the kernel-cookie engine needs {}",
            self.missing(Engine::Kfunc),
            self.missing(Engine::KernelCookie)
        )
    }
}

/// Records `engine` in the pin directory (before the configuration is first written, which
/// reads it).
///
/// # Errors
/// The symlink cannot be made.
pub fn record(pins: &PinDir, engine: Engine) -> Result<(), CtlError> {
    let path = pins.path().join(ENGINE_PIN);
    std::os::unix::fs::symlink(engine.name(), &path).map_err(|source| CtlError::Io {
        what: format!("record the handoff engine at {}", path.display()),
        source,
    })
}

/// The engine recorded for the attachment at `pins`. An attachment made before engines were
/// recorded could only attach with the kfunc engine.
#[must_use]
pub fn recorded(pins: &PinDir) -> Engine {
    fs::read_link(pins.path().join(ENGINE_PIN))
        .ok()
        .and_then(|t| Engine::from_name(&t.to_string_lossy()))
        .unwrap_or(Engine::Kfunc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_follow_the_features() {
        let all = Features {
            btf: true,
            kfunc_bpf_sk_assign_tcp_reqsk: true,
            tcx: true,
            syncookie_helpers: true,
            xdp_load_bytes: true,
            listener_fields: true,
        };
        assert_eq!(all.choose(None).unwrap(), Engine::Kfunc);
        assert_eq!(all.choose(Some(Engine::None)).unwrap(), Engine::None);
        assert_eq!(
            all.choose(Some(Engine::KernelCookie)).unwrap(),
            Engine::KernelCookie
        );
        // Linux 6.1: no kfunc, no TCX, the helpers.
        let six_one = Features {
            kfunc_bpf_sk_assign_tcp_reqsk: false,
            tcx: false,
            ..all
        };
        assert_eq!(six_one.choose(None).unwrap(), Engine::KernelCookie);
        let e = six_one.choose(Some(Engine::Kfunc)).unwrap_err().to_string();
        assert!(
            e.contains("bpf_sk_assign_tcp_reqsk (Linux >= 6.9)") && e.contains("TCX"),
            "{e}"
        );
        let old = Features {
            btf: true,
            ..Features::default()
        };
        assert_eq!(old.choose(None).unwrap(), Engine::None);
        let e = old
            .choose(Some(Engine::KernelCookie))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bpf_tcp_gen_syncookie") && e.contains("5.18"),
            "{e}"
        );
        assert!(
            old.why_none().contains("kernel-cookie"),
            "{}",
            old.why_none()
        );
        assert!(!Engine::None.hands_off() && Engine::Kfunc.hands_off());
        assert!(Engine::KernelCookie.hands_off());
        for e in [
            Engine::Kfunc,
            Engine::KernelCookie,
            Engine::None,
            Engine::Splice,
        ] {
            assert_eq!(Engine::from_name(e.name()), Some(e));
        }
        assert!(!all.engines().contains(&Engine::Splice), "a gateway's only");
    }

    /// `--gateway` forces the splice engine and takes no other; `--engine splice` needs it.
    #[test]
    fn the_splice_engine_goes_with_the_gateway() {
        let none = Features::default();
        assert_eq!(for_attach(&none, None, true).unwrap(), Engine::Splice);
        assert_eq!(
            for_attach(&none, Some(Engine::Splice), true).unwrap(),
            Engine::Splice
        );
        for other in [Engine::Kfunc, Engine::KernelCookie, Engine::None] {
            let e = for_attach(&none, Some(other), true)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--gateway") && e.contains(other.name()) && e.contains("splice"),
                "{e}"
            );
        }
        let e = for_attach(&none, Some(Engine::Splice), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--gateway SERVER_IFACE"), "{e}");
        assert_eq!(for_attach(&none, None, false).unwrap(), Engine::None);
        assert!(Engine::Splice.hands_off() && Engine::Splice.is_gateway());
    }
}
