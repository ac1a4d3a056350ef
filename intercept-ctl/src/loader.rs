//! Loading the embedded object, attaching it to an interface and pinning what must outlive this
//! process; detaching undoes exactly that.
use std::{ffi::CString, fs, os::unix::fs::DirBuilderExt as _};

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, FEntry, LinkOrder, SchedClassifier, SockOps, TcAttachType, TracePoint,
        Xdp, XdpMode, links::FdLink, tc::TcAttach,
    },
};
use intercept_common::{
    config::{Config, ListenerOffsets, Mode, SockOffsets},
    maps,
};

use crate::{
    EBPF_OBJECT,
    engine::Engine,
    errors::{CtlError, explain, probe_kernel},
    pins::{PinDir, check_bpffs},
};

/// Which program to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Program {
    /// The protection (dissect, count, intercept/watch).
    Intercept,
    /// Pass-through: for the peer of a veth that must carry XDP_TX frames back.
    Pass,
}

impl Program {
    /// The program's name in the object.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Program::Intercept => maps::PROG_XDP,
            Program::Pass => maps::PROG_XDP_PASS,
        }
    }
}

/// Where XDP runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// In the driver (fast; veth, most 10G+ NICs).
    Native,
    /// In the generic stack path after the skb is built (works everywhere, much slower).
    Generic,
}

impl From<AttachMode> for XdpMode {
    fn from(m: AttachMode) -> XdpMode {
        match m {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }
}

/// Loads the embedded object (programs not yet loaded into the kernel), its log at this
/// process's level ([`crate::datalog::level`]).
///
/// # Errors
/// If the kernel lacks BTF/BPF or refuses the object.
pub fn load_object() -> anyhow::Result<Ebpf> {
    load_object_logging(crate::datalog::level())
}

/// [`load_object`] with the data path's log at `level`.
///
/// # Errors
/// As [`load_object`].
pub fn load_object_logging(level: crate::datalog::LogLevel) -> anyhow::Result<Ebpf> {
    let features = probe_kernel()?;
    let patched =
        crate::btf_patch::patch_object(EBPF_OBJECT, features.kfunc_bpf_sk_assign_tcp_reqsk)
            .context("declare the kfunc in the object BTF")?;
    // aya parses ELF structures in place: copy into 8-byte-aligned memory.
    let mut words = vec![0u64; patched.len().div_ceil(8)];
    let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..patched.len()];
    bytes.copy_from_slice(&patched);
    let (len_at, max_at) = accept_queue_offsets().unwrap_or((0, 0));
    let socks = sock_offsets();
    aya::EbpfLoader::new()
        .override_global("SK_ACK_BACKLOG_OFFSET", &len_at, true)
        .override_global("SK_MAX_ACK_BACKLOG_OFFSET", &max_at, true)
        .override_global("SOCK_OFFSETS", &socks, true)
        .override_global("LISTENER_OFFSETS", &listener_offsets(), true)
        .override_global(aya_log::LEVEL, &level.ebpf(), true)
        .load(bytes)
        .map_err(|e| explain(e.into(), "load the eBPF object"))
}

/// What the socket-tracking programs need to keep to this network namespace (the calling
/// thread's, where the loader attaches) and to read request sockets: its cookie
/// (`SO_NETNS_COOKIE`), and where the kernel keeps a socket's namespace, flow, and a namespace's
/// cookie, from its BTF. Unknown fields are zero (see [`SockOffsets`]).
#[must_use]
pub fn sock_offsets() -> SockOffsets {
    if crate::btf_patch::vmlinux().is_none() {
        return SockOffsets::default();
    }
    let at = |s, m| crate::btf_patch::vmlinux_member_offset(s, m).unwrap_or(0);
    SockOffsets {
        netns_cookie: crate::health::netns_cookie().unwrap_or(0),
        skc_net: at("sock_common", "skc_net"),
        net_cookie: at("net", "net_cookie"),
        skc_dport: at("sock_common", "skc_dport"),
        skc_num: at("sock_common", "skc_num"),
        skc_v6_daddr: at("sock_common", "skc_v6_daddr"),
        skc_v6_rcv_saddr: at("sock_common", "skc_v6_rcv_saddr"),
    }
}

/// Where a listening socket records its own receive window, from the kernel's BTF (see
/// [`ListenerOffsets`]); all zero if unknown.
#[must_use]
pub fn listener_offsets() -> ListenerOffsets {
    let locks = crate::btf_patch::vmlinux_member_bits("sock", "sk_userlocks");
    let clamp = crate::btf_patch::vmlinux_member_offset("tcp_sock", "window_clamp");
    match (locks, clamp) {
        (Some(bits), Some(clamp)) => ListenerOffsets {
            userlocks: bits / 8,
            userlocks_shift: bits % 8,
            window_clamp: clamp,
            reserved: 0,
        },
        _ => ListenerOffsets::default(),
    }
}

/// Where this kernel keeps a listener's accept-queue length and limit (`sk_ack_backlog`,
/// `sk_max_ack_backlog` in `struct sock`), from its BTF: the TC program reads them to drop a
/// handshake the kernel would overflow. `None` if the BTF lacks them (the check is then off).
#[must_use]
pub fn accept_queue_offsets() -> Option<(u32, u32)> {
    let at = |m| crate::btf_patch::vmlinux_member_offset("sock", m);
    Some((at("sk_ack_backlog")?, at("sk_max_ack_backlog")?))
}

/// The index of `iface` in the current network namespace.
///
/// # Errors
/// [`CtlError::UnknownInterface`] if there is none.
pub fn ifindex(iface: &str, netns: Option<&str>) -> Result<u32, CtlError> {
    let unknown = || CtlError::UnknownInterface {
        iface: iface.to_owned(),
        ns: netns.map_or_default(|n| format!(" (in netns {n})")),
    };
    let c = CString::new(iface).map_err(|_| unknown())?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(unknown()),
        i => Ok(i),
    }
}

/// What `attach` did.
#[derive(Debug, serde::Serialize)]
pub struct Attached {
    /// Interface name.
    pub interface: String,
    /// Interface index.
    pub ifindex: u32,
    /// A gateway's server-facing interface (`attach --gateway`), attached to with the same
    /// program and maps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_interface: Option<String>,
    /// Its index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_ifindex: Option<u32>,
    /// Program attached.
    pub program: String,
    /// Kernel program id.
    pub program_id: u32,
    /// Instructions the verifier processed to accept the program (its verification cost).
    pub verified_insns: Option<u32>,
    /// The handoff engine chosen for this kernel (`None` for a pass-through program).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<&'static str>,
    /// "native" or "generic".
    pub xdp_mode: String,
    /// Pin directory.
    pub pin_dir: String,
    /// Why the attachment pinned there before was dead, if `attach` replaced one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_dead_attachment: Option<String>,
    /// The settings of that dead attachment, read from its maps before they were removed
    /// (`None` for a pass-through program, which has none).
    #[serde(skip)]
    pub previous_settings: Option<crate::config::Settings>,
    /// What this kernel keeps the attachment from doing (see [`limitations`]); the attach
    /// itself succeeded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limitations: Vec<String>,
}

/// A dead attachment removed to make room for a new one.
#[derive(Debug)]
struct Dead {
    reason: String,
    settings: Option<crate::config::Settings>,
}

/// Makes room for a new attachment of `iface`: nothing when nothing is pinned; when a dead
/// attachment is (see [`crate::health`]), its settings are read and its pins removed; a healthy
/// one is refused. Call it holding [`lock_attaches`], so a pin directory without its XDP link
/// is an interrupted attach, not one in progress.
fn clear_dead(iface: &str, netns: Option<&str>, pins: &PinDir) -> anyhow::Result<Option<Dead>> {
    if !pins.is_attached() {
        if !pins.path().exists() {
            return Ok(None);
        }
        remove_pins(pins)?;
        return Ok(Some(Dead {
            reason: "it was incomplete: an attach was interrupted before it pinned the XDP link"
                .to_owned(),
            settings: None,
        }));
    }
    let health = crate::health::check(iface, netns)?;
    let Some(reason) = health.reason else {
        return Err(CtlError::AlreadyAttached {
            iface: iface.to_owned(),
            pin: pins.path().display().to_string(),
        }
        .into());
    };
    // A pass-through attachment has no maps to read.
    let settings = if pins.map(maps::CONFIG).exists() {
        Some(crate::config::snapshot(iface, netns).context("read the dead attachment's settings")?)
    } else {
        None
    };
    remove_pins(pins)?;
    Ok(Some(Dead { reason, settings }))
}

fn remove_pins(pins: &PinDir) -> anyhow::Result<()> {
    // A dead gateway attachment may still run on one of its interfaces (the other one was
    // deleted): off it now, or the new attachment would find the device busy.
    for link in link_pins(pins) {
        if let Err(e) = crate::health::detach_link(&link) {
            eprintln!("intercept-ctl: warning: {e}");
        }
    }
    fs::remove_dir_all(pins.path())
        .map_err(|e| explain(anyhow::Error::new(e), "remove the dead attachment's pins"))
        .with_context(|| format!("remove {}", pins.path().display()))
}

/// Serialises attaches on this machine (an exclusive `flock` on the pin root, released when the
/// returned file is dropped, or by the kernel if the process dies): a daemon re-attaching and an
/// operator's `attach` never take each other's half-made pin directory for a dead one.
fn lock_attaches() -> anyhow::Result<fs::File> {
    lock_root(rustix::fs::FlockOperation::LockExclusive)
}

/// Waits for attaches in progress and holds them off while the returned file lives (a shared
/// `flock` on the pin root): the daemon checks health under it, so it never sees a pin
/// directory another command is still filling. Never call it while attaching (the two locks
/// would wait for each other).
///
/// # Errors
/// If the pin root cannot be created, opened or locked.
pub fn hold_off_attaches() -> anyhow::Result<fs::File> {
    lock_root(rustix::fs::FlockOperation::LockShared)
}

/// For the verbs that read or write an attachment's pins (all but `attach`, `detach`, `run` and
/// `lab`): waits for an attach or detach in progress (one may be replacing the very pins the verb
/// is about to open) and holds the next one off while the returned file lives, so the verb sees
/// one attachment whole, never one half removed. `None` when nothing was ever attached here (no
/// pin root): there is nothing to wait for.
///
/// # Errors
/// If the pin root exists but cannot be opened or locked.
pub fn wait_for_attaches() -> anyhow::Result<Option<fs::File>> {
    if fs::symlink_metadata(crate::pins::ROOT).is_err() {
        return Ok(None);
    }
    lock_root(rustix::fs::FlockOperation::LockShared).map(Some)
}

fn lock_root(how: rustix::fs::FlockOperation) -> anyhow::Result<fs::File> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(crate::pins::ROOT)
        .map_err(|e| explain(anyhow::Error::new(e), "create the pin root"))
        .with_context(|| format!("create {}", crate::pins::ROOT))?;
    let root = fs::File::open(crate::pins::ROOT).map_err(|e| {
        if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
            anyhow::Error::new(CtlError::NoPrivilege {
                what: format!("open {}", crate::pins::ROOT),
            })
        } else {
            anyhow::Error::new(e).context(format!("open {}", crate::pins::ROOT))
        }
    })?;
    crate::lock::flock(&root, how).with_context(|| format!("lock {}", crate::pins::ROOT))?;
    Ok(root)
}

/// Loads, attaches and pins `program` on `iface`. For the intercept program this is the XDP
/// program and the TC ingress program (TCX) that completes handshakes, with the configuration set
/// to intercept mode, MSS from the interface MTU, and two fresh cookie secrets.
///
/// A dead attachment pinned for `iface` (its interface or namespace was deleted and perhaps
/// re-created; see [`crate::health`]) is removed first and named in [`Attached`]; a healthy one
/// is refused.
///
/// # Errors
/// Unknown interface, missing privileges or kernel features, already attached, or any load or
/// attach failure; on failure nothing stays pinned.
pub fn attach(
    iface: &str,
    netns: Option<&str>,
    program: Program,
    mode: AttachMode,
) -> anyhow::Result<Attached> {
    attach_with(iface, netns, program, mode, Mode::Intercept)
}

/// [`attach`] with the initial mode.
///
/// # Errors
/// As [`attach`].
pub fn attach_with(
    iface: &str,
    netns: Option<&str>,
    program: Program,
    mode: AttachMode,
    initial: Mode,
) -> anyhow::Result<Attached> {
    attach_engine(iface, netns, program, mode, initial, None)
}

/// [`attach_with`] with the handoff engine forced (`None`: the best this kernel offers; see
/// [`crate::engine`]).
///
/// # Errors
/// As [`attach`]; [`CtlError::EngineUnavailable`] if this kernel cannot run `engine`;
/// [`CtlError::NoHandoffEngine`] if `initial` needs an engine and there is none.
pub fn attach_engine(
    iface: &str,
    netns: Option<&str>,
    program: Program,
    mode: AttachMode,
    initial: Mode,
    engine: Option<Engine>,
) -> anyhow::Result<Attached> {
    attach_full(iface, None, netns, program, mode, initial, engine)
}

/// Attaches a gateway (issue 13): the `xdp_gateway` program, loaded once, on the client-facing
/// interface `client` and the server-facing interface `server` with the same maps, pinned under
/// `client`'s pin directory (the server-facing link as [`crate::gateway::SERVER_LINK_PIN`]),
/// with the interface roles written first and the splice engine recorded. Nothing of a host's
/// handoff (TC program, socket table, sysctls): the servers behind the box complete the
/// handshakes.
///
/// # Errors
/// As [`attach`]; [`CtlError::GatewaySameInterface`], [`CtlError::ForwardingOff`],
/// [`CtlError::ServerInterfaceAttached`], or an unknown server-facing interface.
pub fn attach_gateway(
    client: &str,
    server: &str,
    netns: Option<&str>,
    mode: AttachMode,
    initial: Mode,
) -> anyhow::Result<Attached> {
    attach_full(
        client,
        Some(server),
        netns,
        Program::Intercept,
        mode,
        initial,
        Some(Engine::Splice),
    )
}

/// Checks what a gateway needs of its server-facing interface and of the namespace.
fn check_gateway(
    client: &str,
    client_ifindex: u32,
    server: &str,
    netns: Option<&str>,
) -> anyhow::Result<crate::gateway::ServerIface> {
    if server == client {
        return Err(CtlError::GatewaySameInterface {
            iface: client.to_owned(),
        }
        .into());
    }
    let server_ifindex = ifindex(server, netns)
        .map_err(anyhow::Error::from)
        .context("the server-facing interface (--gateway)")?;
    if server_ifindex == client_ifindex {
        return Err(CtlError::GatewaySameInterface {
            iface: client.to_owned(),
        }
        .into());
    }
    let own = PinDir::new(netns, server);
    if own.path().exists() {
        return Err(CtlError::ServerInterfaceAttached {
            iface: server.to_owned(),
            pin: own.path().display().to_string(),
        }
        .into());
    }
    let fwd = crate::sysctl::forwarding();
    if fwd.none {
        return Err(CtlError::ForwardingOff {
            ns: netns.map_or_default(|n| format!(" ({n})")),
            example: fwd.off.first().cloned().unwrap_or_default(),
            sysctls: fwd.off.join(" and "),
        }
        .into());
    }
    Ok(crate::gateway::ServerIface {
        name: server.to_owned(),
        ifindex: server_ifindex,
        forward: crate::gateway::forward().resolve(&[client, server]),
    })
}

/// [`attach_engine`], or with `server` a gateway's ([`attach_gateway`]).
fn attach_full(
    iface: &str,
    server: Option<&str>,
    netns: Option<&str>,
    program: Program,
    mode: AttachMode,
    initial: Mode,
    engine: Option<Engine>,
) -> anyhow::Result<Attached> {
    let ifindex = ifindex(iface, netns)?;
    let engine = crate::engine::for_attach(&probe_kernel()?, engine, server.is_some())?;
    let server = server
        .map(|s| check_gateway(iface, ifindex, s, netns))
        .transpose()?;
    check_bpffs()?;
    let pins = PinDir::new(netns, iface);
    // Loading first: it needs no pins, and is where missing privileges show best.
    let mut ebpf = load_object()?;
    let _lock = lock_attaches()?;
    let dead = clear_dead(iface, netns, &pins)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(pins.path())
        .map_err(|e| explain(anyhow::Error::new(e), "create the pin directory"))
        .with_context(|| format!("create {}", pins.path().display()))?;
    // What health checks compare with later: the device and namespace attached in.
    let record = crate::health::netns_cookie().and_then(|netns_cookie| {
        crate::health::Record {
            ifindex,
            netns_cookie,
        }
        .write(&pins)?;
        server.as_ref().map_or(Ok(()), |s| s.write(&pins))
    });
    let result = record.map_err(anyhow::Error::from).and_then(|()| {
        attach_and_pin(
            &mut ebpf,
            iface,
            netns,
            ifindex,
            program,
            mode,
            initial,
            engine,
            &pins,
            server.as_ref(),
        )
    });
    if result.is_err() {
        // What the configuration's first write changed goes back with the failed attach.
        if let Ok(said) = crate::sysctl::restore(&pins) {
            for m in &said {
                eprintln!("intercept-ctl: {m}");
            }
        }
        let _ = fs::remove_dir_all(pins.path());
        remove_empty_parent(&pins, netns);
    }
    let (program_id, verified_insns) = result?;
    let limitations = if program == Program::Intercept {
        limitations(&pins)
    } else {
        Vec::new()
    };
    Ok(Attached {
        limitations,
        interface: iface.to_owned(),
        ifindex,
        server_interface: server.as_ref().map(|s| s.name.clone()),
        server_ifindex: server.as_ref().map(|s| s.ifindex),
        program: if server.is_some() {
            maps::PROG_GATEWAY
        } else {
            program.name()
        }
        .to_owned(),
        program_id,
        verified_insns,
        engine: (program == Program::Intercept).then(|| engine.name()),
        xdp_mode: format!("{mode:?}").to_lowercase(),
        pin_dir: pins.path().display().to_string(),
        replaced_dead_attachment: dead.as_ref().map(|d| d.reason.clone()),
        previous_settings: dead.and_then(|d| d.settings),
    })
}

/// Pins the maps, writes the configuration and secrets (intercept program), attaches the TC
/// handoff and the socket table's tracepoint, then loads and attaches the XDP program and pins
/// its link; returns the program id and its verification cost.
///
/// The order is what a crash at any step leaves behind: the XDP link, pinned last, is what makes
/// an attachment, so until it is pinned nothing protects the interface and `status` and the next
/// `attach` or `run` see an interrupted attach (its pins are cleared and it starts again); once it
/// is pinned, the configuration and secrets it reads are complete. An XDP program never runs on a
/// zero configuration or key.
#[allow(clippy::too_many_arguments)]
fn attach_and_pin(
    ebpf: &mut Ebpf,
    iface: &str,
    netns: Option<&str>,
    ifindex: u32,
    program: Program,
    mode: AttachMode,
    initial: Mode,
    engine: Engine,
    pins: &PinDir,
    server: Option<&crate::gateway::ServerIface>,
) -> anyhow::Result<(u32, Option<u32>)> {
    for (name, map) in ebpf.maps() {
        // Compiler-made maps (.rodata, .bss...) stay unpinned: bpffs refuses names with a dot
        // (EPERM), and the program keeps them alive.
        if name.contains('.') {
            continue;
        }
        map.pin(pins.map(name))
            .map_err(|e| explain(e.into(), "pin a map"))
            .with_context(|| format!("pin map {name}"))?;
    }
    crate::faults::kill_point("attach:maps-pinned");
    if let Some(server) = server {
        crate::engine::record(pins, engine)?;
        configure(iface, netns, initial, mode)?;
        crate::gateway::write_roles(pins, ifindex, server)?;
        crate::gateway::write_source_key(pins)?;
        crate::faults::kill_point("attach:configured");
        crate::faults::fail_point("attach:configure")?;
        return attach_gateway_links(ebpf, iface, ifindex, server, mode, pins);
    }
    if program == Program::Intercept {
        // What the configuration's first write checks the initial mode against.
        crate::engine::record(pins, engine)?;
        configure(iface, netns, initial, mode)?;
        crate::faults::kill_point("attach:configured");
        crate::faults::fail_point("attach:configure")?;
        if engine == Engine::Kfunc {
            attach_tc_handoff(ebpf, iface, ifindex, pins)?;
        }
        crate::faults::kill_point("attach:tc-attached");
        let link = attach_socket_tracker(ebpf)?;
        link.pin(pins.path().join("link_track"))
            .context("pin the socket-table tracepoint link")?;
        let socks = sock_offsets();
        if socks.filters_netns() {
            // What `status` reads: the programs keep to this namespace.
            std::os::unix::fs::symlink(
                format!("netns_cookie={}", socks.netns_cookie),
                pins.path().join(NETNS_FILTER_PIN),
            )
            .context("record the namespace filter in the pin directory")?;
        }
        // Asymmetric routing needs it, nothing else does: an attachment without it still
        // protects, and says what it lacks (see `limitations`).
        match attach_request_tracker(ebpf) {
            Ok((link, kind)) => {
                link.pin(pins.path().join(REQSK_LINK_PIN))
                    .context("pin the request-socket tracing link")?;
                std::os::unix::fs::symlink(kind, pins.path().join(REQSK_KIND_PIN))
                    .context("record the request-socket program's kind")?;
            }
            Err(e) => eprintln!(
                "intercept-ctl: warning: request sockets are not tracked on this kernel: {e:#}"
            ),
        }
        seed_sockets(ebpf).context("seed the socket table")?;
        crate::control::Maps::open(iface, netns)?.mark_seeded()?;
        crate::faults::kill_point("attach:seeded");
    }
    let prog: &mut Xdp = ebpf
        .program_mut(program.name())
        .with_context(|| format!("program {} missing from the object", program.name()))?
        .try_into()?;
    prog.load()
        .map_err(|e| explain(e.into(), "load the XDP program"))?;
    let info = prog.info()?;
    let (program_id, verified) = (info.id(), info.verified_instruction_count());
    let link_id = prog
        .attach(ifindex, mode.into())
        .map_err(|e| explain(e.into(), &format!("attach XDP to {iface}")))
        .with_context(|| format!("attach XDP ({mode:?}) to {iface}"))?;
    let link: FdLink = prog
        .take_link(link_id)?
        .try_into()
        .context("the kernel attached XDP without a bpf_link (kernel < 5.9?); cannot pin it")?;
    prog.pin(pins.prog()).context("pin the program")?;
    // Until its link is pinned, the XDP program lives only as long as this process.
    crate::faults::kill_point("attach:xdp-attached");
    link.pin(pins.link()).context("pin the XDP link")?;
    crate::faults::kill_point("attach:pinned");
    Ok((program_id, verified))
}

/// Loads the gateway's stages and puts them in `GW_PROGS`, where `xdp_gateway` tail-calls
/// them (see `intercept_common::maps::GW_PROGS`). Before `xdp_gateway` is attached: a frame
/// finding a stage missing is aborted.
///
/// # Errors
/// A stage the kernel refuses (the verifier's log says why), or the map write.
pub fn load_gateway_stages(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let mut fds = Vec::new();
    for name in maps::GW_STAGES {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|e| explain(e.into(), &format!("load the gateway stage {name}")))
                .with_context(|| format!("load the gateway stage {name}"))?;
        }
        fds.push(prog.fd()?.try_clone()?);
    }
    let mut stages: aya::maps::ProgramArray<_> = aya::maps::ProgramArray::try_from(
        ebpf.map_mut(maps::GW_PROGS)
            .context("map GW_PROGS missing from the object")?,
    )?;
    for (i, fd) in fds.iter().enumerate() {
        stages
            .set(u32::try_from(i)?, fd, 0)
            .with_context(|| format!("put stage {} in GW_PROGS", maps::GW_STAGES[i]))?;
    }
    Ok(())
}

/// Loads `xdp_gateway` and attaches it to the server-facing interface, then the client-facing
/// one, pinning each link (the client-facing one last: it marks the attachment complete).
fn attach_gateway_links(
    ebpf: &mut Ebpf,
    iface: &str,
    ifindex: u32,
    server: &crate::gateway::ServerIface,
    mode: AttachMode,
    pins: &PinDir,
) -> anyhow::Result<(u32, Option<u32>)> {
    load_gateway_stages(ebpf)?;
    let prog: &mut Xdp = ebpf
        .program_mut(maps::PROG_GATEWAY)
        .with_context(|| format!("program {} missing from the object", maps::PROG_GATEWAY))?
        .try_into()?;
    prog.load()
        .map_err(|e| explain(e.into(), "load the gateway's XDP program"))?;
    let info = prog.info()?;
    let (program_id, verified) = (info.id(), info.verified_instruction_count());
    prog.pin(pins.prog()).context("pin the program")?;
    for (dev, index, pin) in [
        (
            server.name.as_str(),
            server.ifindex,
            pins.path().join(crate::gateway::SERVER_LINK_PIN),
        ),
        (iface, ifindex, pins.link()),
    ] {
        let link_id = prog
            .attach(index, mode.into())
            .map_err(|e| explain(e.into(), &format!("attach XDP to {dev}")))
            .with_context(|| format!("attach XDP ({mode:?}) to {dev}"))?;
        let link: FdLink = prog
            .take_link(link_id)?
            .try_into()
            .context("the kernel attached XDP without a bpf_link (kernel < 5.9?); cannot pin it")?;
        crate::faults::kill_point("attach:xdp-attached");
        link.pin(&pin)
            .with_context(|| format!("pin the XDP link of {dev}"))?;
    }
    crate::faults::kill_point("attach:pinned");
    Ok((program_id, verified))
}

/// `mss` brought into `range`.
fn clamp_mss(mss: u32, range: &std::ops::RangeInclusive<u16>) -> u16 {
    u16::try_from(mss.clamp(u32::from(*range.start()), u32::from(*range.end())))
        .unwrap_or(*range.end())
}

/// Loads the TC handoff program of the kfunc engine and attaches it first in the interface's
/// TCX ingress chain, pinning program and link.
fn attach_tc_handoff(
    ebpf: &mut Ebpf,
    iface: &str,
    ifindex: u32,
    pins: &PinDir,
) -> anyhow::Result<()> {
    let tc: &mut SchedClassifier = ebpf
        .program_mut(maps::PROG_TC)
        .context("TC program missing from the object")?
        .try_into()?;
    tc.load()
        .map_err(|e| explain(e.into(), "load the TC handoff program"))?;
    let tc_id = tc
        .attach(
            ifindex,
            // First in the chain: a program before ours that ends it (`TC_ACT_OK`) would
            // skip every handoff, and the kernel would reset every cookie handshake.
            TcAttach::Tcx {
                attach_type: TcAttachType::Ingress,
                order: LinkOrder::first(),
            },
        )
        .map_err(|e| {
            explain(
                e.into(),
                &format!("attach TC ingress (TCX, Linux >= 6.6) to {iface}"),
            )
        })?;
    let tc_link: FdLink = tc.take_link(tc_id)?.try_into().context("TCX link")?;
    tc.pin(pins.path().join("prog_tc"))
        .context("pin the TC program")?;
    tc_link
        .pin(pins.path().join("link_tc"))
        .context("pin the TC link")?;
    Ok(())
}

/// Writes the initial configuration, secrets and watch knobs of a fresh attachment.
fn configure(
    iface: &str,
    netns: Option<&str>,
    initial: Mode,
    xdp: AttachMode,
) -> anyhow::Result<()> {
    let mut m = crate::control::Maps::open(iface, netns)?;
    m.set_info(&intercept_common::config::Info {
        xdp_mode: if xdp == AttachMode::Native { 1 } else { 2 },
        _pad: 0,
        attached_ns: crate::watchctl::monotonic_ns(),
        secret_set_ns: 0,
    })?;
    let mtu = crate::control::mtu(iface)?;
    let cfg = Config {
        mode: initial as u32,
        meta_tag: crate::control::random_meta_tag()?,
        mss_v4: clamp_mss(
            mtu.saturating_sub(40),
            &intercept_common::config::MSS_V4_RANGE,
        ),
        mss_v6: clamp_mss(
            mtu.saturating_sub(60),
            &intercept_common::config::MSS_V6_RANGE,
        ),
        ..Config::default()
    };
    m.set_config(&cfg)?;
    m.init_secrets()?;
    crate::watchctl::WatchMaps::open(iface, netns)?
        .set_watch(&intercept_common::config::Watch::default())?;
    Ok(())
}

/// Where tracefs is (mounted there if it is not yet).
const TRACEFS: &str = "/sys/kernel/tracing";

/// Loads the `track_sockets` program and attaches it to `sock:inet_sock_set_state`, after
/// checking the tracepoint's record layout is the one the program reads. Returns its link (the
/// caller pins or holds it).
///
/// # Errors
/// tracefs missing and not mountable, a different record layout, or a load/attach failure.
pub fn attach_socket_tracker(ebpf: &mut Ebpf) -> anyhow::Result<FdLink> {
    let (category, name) = maps::TRACEPOINT;
    let events = std::path::Path::new(TRACEFS).join("events");
    if !events.exists() {
        let (src, dst, ty) = (c"tracefs", CString::new(TRACEFS)?, c"tracefs");
        // SAFETY: valid NUL-terminated strings; no data argument.
        if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) } != 0
        {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!("mount tracefs on {TRACEFS} (needed for the {category}:{name} tracepoint)")
            });
        }
    }
    let format = events.join(category).join(name).join("format");
    let text = fs::read_to_string(&format).with_context(|| {
        format!(
            "read {} (the kernel needs CONFIG_TRACEPOINTS and the {category}:{name} tracepoint)",
            format.display()
        )
    })?;
    check_tracepoint_format(&text)
        .with_context(|| format!("{}: unexpected record layout", format.display()))?;
    let tp: &mut TracePoint = ebpf
        .program_mut(maps::PROG_TRACK)
        .context("tracepoint program missing from the object")?
        .try_into()?;
    tp.load()
        .map_err(|e| explain(e.into(), "load the socket-table tracepoint program"))?;
    let id = tp
        .attach(category, name)
        .map_err(|e| explain(e.into(), &format!("attach to tracepoint {category}:{name}")))?;
    tp.take_link(id)?
        .try_into()
        .context("the kernel attached the tracepoint without a bpf_link (kernel < 5.15?)")
}

/// Pin (a symlink naming the namespace cookie) present when the socket-tracking programs keep
/// to the attachment's network namespace.
pub const NETNS_FILTER_PIN: &str = "netns_filter";
/// Pin of the request-socket tracing link (see [`attach_request_tracker`]), whichever kind.
pub const REQSK_LINK_PIN: &str = "link_reqsk";
/// Pin (a symlink naming the kind: `fentry` or `sock_ops`) beside [`REQSK_LINK_PIN`].
pub const REQSK_KIND_PIN: &str = "reqsk_kind";

/// Loads the program that records the kernel's new request sockets of this namespace and
/// attaches it: as an fentry program on the kernel function that hashes one
/// (`intercept_common::maps::REQSK_FUNCTION`, with the kernel's BTF), or, if the kernel refuses
/// that (a kernel locked down in integrity mode answers fentry loads with `EPERM`), as a
/// `sock_ops` program on the root of the cgroup v2 hierarchy (so it sees every listener's
/// sockets; other `sock_ops` programs stay attached beside it). Returns its link (the caller pins
/// or holds it) and the kind used.
///
/// # Errors
/// The namespace cookie or the kernel's socket offsets are unknown, or both kinds failed; the
/// error names each failure.
pub fn attach_request_tracker(ebpf: &mut Ebpf) -> anyhow::Result<(FdLink, &'static str)> {
    let socks = sock_offsets();
    anyhow::ensure!(
        socks.netns_cookie != 0,
        "this network namespace's cookie is unknown (SO_NETNS_COOKIE, Linux >= 5.14)"
    );
    let fentry_err = match attach_request_fentry(ebpf, &socks) {
        Ok(link) => return Ok((link, "fentry")),
        Err(e) => e,
    };
    attach_request_sock_ops(ebpf)
        .map(|link| (link, "sock_ops"))
        .map_err(|e| anyhow::anyhow!("fentry: {fentry_err:#}; sock_ops: {e:#}"))
}

/// The fentry kind of [`attach_request_tracker`].
fn attach_request_fentry(ebpf: &mut Ebpf, socks: &SockOffsets) -> anyhow::Result<FdLink> {
    anyhow::ensure!(
        socks.reads_request_socks(),
        "the kernel's BTF lacks a field the program reads (sock_common.skc_net, skc_dport, \
         skc_num, skc_v6_daddr, skc_v6_rcv_saddr or net.net_cookie)"
    );
    let btf = aya::Btf::from_sys_fs().context("read the kernel's BTF")?;
    let prog: &mut FEntry = ebpf
        .program_mut(maps::PROG_REQSK)
        .context("request-socket program missing from the object")?
        .try_into()?;
    prog.load(maps::REQSK_FUNCTION, &btf)
        .with_context(|| format!("load fentry on {}", maps::REQSK_FUNCTION))?;
    let id = prog
        .attach()
        .with_context(|| format!("attach fentry to {}", maps::REQSK_FUNCTION))?;
    Ok(prog.take_link(id)?.into())
}

/// The `sock_ops` kind of [`attach_request_tracker`].
fn attach_request_sock_ops(ebpf: &mut Ebpf) -> anyhow::Result<FdLink> {
    let root = cgroup2_root().context("find the cgroup v2 hierarchy (mount cgroup2)")?;
    let cgroup = fs::File::open(&root).with_context(|| format!("open {}", root.display()))?;
    let prog: &mut SockOps = ebpf
        .program_mut(maps::PROG_REQSK_SOCKOPS)
        .context("request-socket sock_ops program missing from the object")?
        .try_into()?;
    prog.load().context("load the sock_ops program")?;
    // A cgroup link always runs beside the cgroup's other programs (the kernel attaches links
    // as `BPF_F_ALLOW_MULTI`) and refuses any flag (`cgroup_bpf_link_attach`: EINVAL), so the
    // mode passed is the one that sets none.
    let id = prog
        .attach(&cgroup, CgroupAttachMode::Single)
        .with_context(|| format!("attach sock_ops to the cgroup {}", root.display()))?;
    Ok(prog.take_link(id)?.try_into()?)
}

/// Where the root of the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`: a mount
/// whose root field is `/` (a bind mount of a subtree, or a cgroup namespace's view, would attach
/// the program to that subtree only and miss listeners elsewhere, so those are refused).
fn cgroup2_root() -> anyhow::Result<std::path::PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    cgroup2_root_in(&info)
}

/// [`cgroup2_root`] in the text of a mountinfo file.
fn cgroup2_root_in(info: &str) -> anyhow::Result<std::path::PathBuf> {
    let mut subtree = None;
    for l in info.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER-OPTIONS
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.get(dash + 1) != Some(&"cgroup2") || f.len() < 5 {
            continue;
        }
        if f[3] == "/" {
            return Ok(std::path::PathBuf::from(f[4]));
        }
        subtree.get_or_insert(f[4]);
    }
    match subtree {
        Some(dir) => anyhow::bail!(
            "cgroup2 is mounted at {dir} only as a subtree (a cgroup namespace or a bind mount): \
             a program attached there misses sockets of other cgroups"
        ),
        None => anyhow::bail!("no cgroup2 file system is mounted"),
    }
}

/// What the attachment pinned at `pins` cannot do on this kernel, one sentence each (empty when
/// nothing is missing): `attach` and `status` say these on stderr.
#[must_use]
pub fn limitations(pins: &PinDir) -> Vec<String> {
    let mut out = Vec::new();
    if crate::engine::recorded(pins).is_gateway() {
        // No socket table, no request sockets: only forwarding matters.
        out.extend(crate::sysctl::forwarding().limitation());
        return out;
    }
    if fs::symlink_metadata(pins.path().join(NETNS_FILTER_PIN)).is_err() {
        out.push(
            "the socket table takes sockets of every network namespace of the host (the \
             kernel's BTF lacks sock_common.skc_net or net.net_cookie, or SO_NETNS_COOKIE \
             failed): a connection of another namespace with one of this namespace's 4-tuples \
             can remove it from the table (its segments are then dropped) or pass forged ACKs \
             of its own"
                .to_owned(),
        );
    }
    if fs::symlink_metadata(pins.path().join(REQSK_LINK_PIN)).is_err() {
        out.push(format!(
            "asymmetric routing is unsupported: the kernel's own request sockets are not \
             tracked (neither fentry on {} nor sock_ops on the cgroup v2 root could be \
             attached), so once the socket table is authoritative the ACK of a \
             handshake whose SYN came over another interface is dropped as forged",
            maps::REQSK_FUNCTION
        ));
    }
    out
}

/// Seeds the socket table with the TCP sockets of the current network namespace (sock_diag),
/// through the object's `seed_socket` program run once per socket with BPF_PROG_TEST_RUN, so the
/// table and its bucket counters change exactly as the tracepoint changes them. Returns how many
/// sockets were seeded. Attach the tracepoint first (see [`attach_socket_tracker`]); mark the
/// table seeded after (`Maps::mark_seeded`).
///
/// # Errors
/// sock_diag failure, or the program refused to load or run.
pub fn seed_sockets(ebpf: &mut Ebpf) -> anyhow::Result<usize> {
    use aya::programs::{TestRun as _, TestRunOptions};
    let flows = crate::sockdiag::SockDiag::open()?.table_flows()?;
    let prog: &mut Xdp = ebpf
        .program_mut(maps::PROG_SEED)
        .context("seed program missing from the object")?
        .try_into()?;
    prog.load()
        .map_err(|e| explain(e.into(), "load the socket-table seed program"))?;
    let mut frame = [0u8; 14 + size_of::<intercept_common::config::FlowKey>()];
    for k in &flows {
        // The FlowKey's repr(C) layout: two address-word arrays, then the two ports.
        let words = k.saddr.iter().chain(&k.daddr).flat_map(|w| w.to_ne_bytes());
        for (d, b) in frame[14..].iter_mut().zip(
            words
                .chain(k.sport.to_ne_bytes())
                .chain(k.dport.to_ne_bytes()),
        ) {
            *d = b;
        }
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::default()
        })
        .context("run the seed program (BPF_PROG_TEST_RUN)")?;
    }
    seed_time_wait(ebpf).context("seed the time-wait flows")?;
    Ok(flows.len())
}

/// Records the time-wait sockets of the current network namespace (sock_diag) as the tracepoint
/// records those that come later (`intercept_common::maps::TIME_WAIT`), each for the longest a
/// time-wait socket lives from now.
fn seed_time_wait(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    use intercept_common::config::{FlowKey, TIME_WAIT_NS, time_wait_bucket};
    let flows = crate::sockdiag::SockDiag::open()?.time_wait_flows()?;
    if flows.is_empty() {
        return Ok(());
    }
    let until = crate::watchctl::monotonic_ns() + TIME_WAIT_NS;
    let mut tw: aya::maps::HashMap<_, FlowKey, u64> =
        aya::maps::HashMap::try_from(ebpf.map_mut(maps::TIME_WAIT).context("TIME_WAIT map")?)?;
    for k in &flows {
        tw.insert(k, &until, 0)?;
    }
    let mut filter: aya::maps::Array<_, u64> = aya::maps::Array::try_from(
        ebpf.map_mut(maps::TIME_WAIT_FILTER)
            .context("TIME_WAIT_FILTER map")?,
    )?;
    for k in &flows {
        filter.set(time_wait_bucket(k), &until, 0)?;
    }
    Ok(())
}

/// Checks a tracepoint `format` file has the fields `track_sockets` reads at its offsets.
///
/// # Errors
/// The first field missing or elsewhere.
pub fn check_tracepoint_format(text: &str) -> anyhow::Result<()> {
    for f in maps::trace_field::ALL {
        let want = format!("field:{};\toffset:{};\tsize:{};", f.decl, f.offset, f.size);
        anyhow::ensure!(
            text.lines().any(|l| l.trim().starts_with(&want)),
            "no `{}` at offset {}, size {}",
            f.decl,
            f.offset,
            f.size
        );
    }
    Ok(())
}

/// Detaches what `attach` pinned on `iface` and removes its pin directory.
///
/// # Errors
/// [`CtlError::NotAttached`] if nothing is pinned for `iface`.
pub fn detach(iface: &str, netns: Option<&str>) -> anyhow::Result<()> {
    check_bpffs()?;
    // Like an attach: no verb reads the pins while they go.
    let _lock = lock_attaches()?;
    let pins = PinDir::new(netns, iface);
    if !pins.is_attached() {
        return Err(CtlError::NotAttached {
            iface: iface.to_owned(),
            pin: pins.path().display().to_string(),
        }
        .into());
    }
    // Off the interfaces now, then the pins (removing the last reference to a link detaches it
    // too, but only a moment later).
    for link in link_pins(&pins) {
        crate::health::detach_link(&link)?;
    }
    // What the kernel-cookie engine changed goes back, and the pins go, under the namespace's
    // lock; a failure to restore is said, and the detach goes on.
    let remove = || {
        fs::remove_dir_all(pins.path())
            .map_err(|e| explain(anyhow::Error::new(e), "remove the pin directory"))
            .with_context(|| format!("remove {}", pins.path().display()))
    };
    match crate::sysctl::restore_then(&pins, remove) {
        Ok(said) => {
            for m in &said {
                eprintln!("intercept-ctl: {m}");
            }
        }
        Err(e) if pins.path().exists() => return Err(e),
        Err(e) => eprintln!("intercept-ctl: warning: {e:#}"),
    }
    remove_empty_parent(&pins, netns);
    Ok(())
}

/// The pinned links that put programs on interfaces: XDP (and a gateway's server-facing XDP
/// link) and the TC handoff, those present.
fn link_pins(pins: &PinDir) -> Vec<std::path::PathBuf> {
    [
        pins.link(),
        pins.path().join(crate::gateway::SERVER_LINK_PIN),
        pins.path().join("link_tc"),
    ]
    .into_iter()
    .filter(|l| l.exists())
    .collect()
}

/// Removes the per-namespace parent of a pin directory once it is empty (remove_dir refuses a
/// non-empty one).
fn remove_empty_parent(pins: &PinDir, netns: Option<&str>) {
    if netns.is_some()
        && let Some(parent) = pins.path().parent()
    {
        let _ = fs::remove_dir(parent);
    }
}

/// An attachment that is detached when dropped (labs and tests: nothing stays pinned on any
/// exit path).
#[derive(Debug)]
pub struct AttachGuard {
    iface: String,
    netns: Option<String>,
    /// What `attach` reported.
    pub info: Attached,
}

impl AttachGuard {
    /// Attaches `program` to `iface` in `netns` (entered on a short-lived thread, so the caller's
    /// namespace is untouched).
    ///
    /// # Errors
    /// As [`attach`].
    ///
    /// # Panics
    /// If a thread in the namespace panics.
    pub fn new(
        iface: &str,
        netns: Option<&str>,
        program: Program,
        mode: AttachMode,
    ) -> anyhow::Result<AttachGuard> {
        let (i, n) = (iface.to_owned(), netns.map(str::to_owned));
        let info = std::thread::spawn(move || {
            if let Some(ns) = &n {
                crate::netns::enter(ns)?;
            }
            attach(&i, n.as_deref(), program, mode)
        })
        .join()
        .expect("attach thread")?;
        Ok(AttachGuard {
            iface: iface.to_owned(),
            netns: netns.map(str::to_owned),
            info,
        })
    }
}

impl AttachGuard {
    /// A gateway's attachment ([`attach_gateway`]) of `client` and `server` in `netns`, in
    /// intercept mode, detached when dropped.
    ///
    /// # Errors
    /// As [`attach_gateway`].
    ///
    /// # Panics
    /// If a thread in the namespace panics.
    pub fn gateway(
        client: &str,
        server: &str,
        netns: Option<&str>,
        mode: AttachMode,
    ) -> anyhow::Result<AttachGuard> {
        let (c, s, n) = (
            client.to_owned(),
            server.to_owned(),
            netns.map(str::to_owned),
        );
        let info = std::thread::spawn(move || {
            if let Some(ns) = &n {
                crate::netns::enter(ns)?;
            }
            attach_gateway(&c, &s, n.as_deref(), mode, Mode::Intercept)
        })
        .join()
        .expect("attach thread")?;
        Ok(AttachGuard {
            iface: client.to_owned(),
            netns: netns.map(str::to_owned),
            info,
        })
    }
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        if let Err(e) = detach(&self.iface, self.netns.as_deref()) {
            eprintln!("warning: detach {}: {e:#}", self.iface);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cgroup2_root_in;

    /// The record layout of `sock:inet_sock_set_state` on Linux 6.18 (tracefs `format`, fields).
    const FORMAT_6_18: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    /// The cgroup v2 root is the mount whose root is `/`; a subtree alone (a cgroup namespace,
    /// a bind mount) is refused, as a program attached there would miss other cgroups.
    #[test]
    fn the_cgroup_root_is_the_mount_of_its_root() {
        let sub = "41 31 0:38 /system.slice /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw";
        let root = "42 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw";
        let proc = "22 1 0:21 / /proc rw - proc proc rw";
        assert_eq!(
            cgroup2_root_in(&format!("{proc}\n{sub}\n{root}\n")).unwrap(),
            std::path::PathBuf::from("/sys/fs/cgroup/unified")
        );
        let e = cgroup2_root_in(&format!("{proc}\n{sub}\n")).unwrap_err();
        assert!(e.to_string().contains("subtree"), "{e}");
        assert!(cgroup2_root_in(proc).is_err());
    }

    #[test]
    fn tracepoint_layout_is_checked() {
        super::check_tracepoint_format(FORMAT_6_18).expect("the layout the program reads");
        let moved = FORMAT_6_18.replace("offset:26;", "offset:28;");
        let e = super::check_tracepoint_format(&moved).unwrap_err();
        assert!(e.to_string().contains("__u16 dport"), "{e}");
        let gone = FORMAT_6_18.replace("field:__u8 daddr_v6[16]", "field:__u8 raddr_v6[16]");
        assert!(super::check_tracepoint_format(&gone).is_err());
    }
}
