//! Whether an attachment still protects its interface, from the kernel's own view.
//!
//! The pins outlive what they describe: `ip link del` (or a driver reload, or `ip netns del` of
//! the interface's namespace) makes the kernel detach the XDP and TC links and leaves the pin
//! directory, with its maps, behind. A re-created interface of the same name is then protected
//! by nothing although the pins say otherwise. So every check asks the kernel: the pinned XDP
//! link's device (`BPF_OBJ_GET_INFO_BY_FD` on the link: ifindex 0 once the device is gone)
//! against the interface's current index, the TC link's likewise, and the network namespace
//! the attachment was made in (its cookie, recorded at attach) against the one we are in now.
//! A gateway's attachment is checked on both its interfaces: its server-facing XDP link must be
//! on the interface of the recorded name too.
use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::Path,
};

use crate::{errors::CtlError, pins::PinDir};

/// What `attach` records of the interface it attached to, as the target of a symlink in the pin
/// directory (bpffs holds no regular files, but it holds symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The interface's index at attach.
    pub ifindex: u32,
    /// The cookie of the network namespace attached in (`SO_NETNS_COOKIE`: unique for the
    /// kernel's uptime, never reused, unlike the namespace's inode number).
    pub netns_cookie: u64,
}

impl Record {
    /// `ifindex=N netns_cookie=C`.
    fn encode(self) -> String {
        format!(
            "ifindex={} netns_cookie={}",
            self.ifindex, self.netns_cookie
        )
    }

    fn decode(s: &str) -> Option<Record> {
        let mut ifindex = None;
        let mut netns_cookie = None;
        for kv in s.split_whitespace() {
            match kv.split_once('=')? {
                ("ifindex", v) => ifindex = v.parse().ok(),
                ("netns_cookie", v) => netns_cookie = v.parse().ok(),
                _ => {}
            }
        }
        Some(Record {
            ifindex: ifindex?,
            netns_cookie: netns_cookie?,
        })
    }

    /// Writes the record into `pins` (before the XDP link is pinned, which marks the attachment
    /// complete).
    ///
    /// # Errors
    /// [`CtlError::Io`] if the symlink cannot be made.
    pub fn write(self, pins: &PinDir) -> Result<(), CtlError> {
        let path = pins.record();
        std::os::unix::fs::symlink(self.encode(), &path).map_err(|source| CtlError::Io {
            what: format!("record the attachment at {}", path.display()),
            source,
        })
    }

    /// The record in `pins`; `None` for attachments made before records existed.
    #[must_use]
    pub fn read(pins: &PinDir) -> Option<Record> {
        let target = fs::read_link(pins.record()).ok()?;
        Record::decode(&target.to_string_lossy())
    }

    /// The record of `iface` as it is now in the current namespace.
    ///
    /// # Errors
    /// Unknown interface, or the namespace cookie cannot be read.
    pub fn now(iface: &str, netns: Option<&str>) -> Result<Record, CtlError> {
        Ok(Record {
            ifindex: crate::loader::ifindex(iface, netns)?,
            netns_cookie: netns_cookie()?,
        })
    }
}

/// Why an attachment does not protect its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// This process runs in a namespace that no longer has the name it was entered by
    /// (`ip netns del`, perhaps followed by `ip netns add` of the same name): a long-running
    /// process (the daemon) keeps the old one alive, with the old interface in it.
    NetnsRenamed,
    /// The attachment was made in another network namespace than the current one (the named
    /// namespace was deleted and re-created; the old interface died with the old namespace).
    OtherNetns,
    /// The kernel detached the XDP link: its device was unregistered (deleted, driver unloaded).
    LinkDetached,
    /// The XDP link is alive but no interface of that name exists here (moved to another
    /// namespace, or renamed).
    NoInterface,
    /// The interface of that name is not the device the XDP link is on (renamed and replaced).
    OtherInterface,
    /// The XDP link is fine but the TC handoff link is not on the same device.
    TcDetached,
    /// Other programs run before the TC handoff in the interface's TCX ingress chain: one that
    /// ends the chain (`TC_ACT_OK`, as many do) skips every handoff, and the kernel then resets
    /// every cookie handshake. Attaching again puts the handoff first.
    TcNotFirst,
    /// The driver refused XDP metadata (native mode on a driver without metadata support):
    /// every proven handshake is aborted. Generic mode always has metadata.
    NoXdpMetadata,
    /// A gateway's server-facing interface was deleted: the kernel detached its XDP link, so
    /// the servers' answers are not completed nor translated.
    ServerLinkDetached,
    /// A gateway's server-facing XDP link is alive but no interface of the recorded name
    /// exists here.
    NoServerInterface,
    /// The interface of the gateway's server-facing name is not the device its XDP link is on
    /// (deleted and re-created, or renamed and replaced).
    OtherServerInterface,
    /// A gateway's namespace forwards no IP packets any more (`net.ipv4.ip_forward` and
    /// `net.ipv6.conf.all.forwarding` are off): no server is reachable through it.
    ForwardingOff,
    /// The kernel-cookie engine is in intercept mode but a sysctl it needs has another value
    /// (someone changed it since): every protected SYN is passed to the kernel, or our cookie
    /// handshakes decode wrong options. The daemon sets it again.
    KernelSettings,
}

/// The health of one attachment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    /// Whether the pinned programs run on the interface of that name in this namespace.
    pub healthy: bool,
    /// What is wrong, if anything.
    pub problem: Option<Problem>,
    /// A sentence saying what is wrong, naming the interface.
    pub reason: Option<String>,
    /// The interface's index now, in this namespace (`None`: no such interface).
    pub ifindex: Option<u32>,
    /// The device of the pinned XDP link, per the kernel (0: detached).
    pub link_ifindex: u32,
    /// The device of the pinned TC link, per the kernel (0: detached; `None`: none pinned).
    pub tc_link_ifindex: Option<u32>,
    /// The interface's index at attach (`None`: not recorded, an older attachment).
    pub attached_ifindex: Option<u32>,
    /// Whether the attachment was made in this network namespace (`None`: not recorded).
    pub same_netns: Option<bool>,
    /// The programs before the TC handoff in the interface's TCX ingress chain (names).
    pub tc_before: Vec<String>,
    /// A gateway's server-facing interface (`None`: a host's attachment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerHealth>,
}

/// The server-facing half of a gateway's attachment, from the kernel's view.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerHealth {
    /// Its name, as recorded at attach.
    pub interface: String,
    /// Its index at attach.
    pub attached_ifindex: u32,
    /// The index of the interface of that name now (`None`: no such interface).
    pub ifindex: Option<u32>,
    /// The device of the pinned server-facing XDP link, per the kernel (0: detached).
    pub link_ifindex: u32,
}

/// The server-facing half of the gateway attachment at `pins`, if it is one.
fn server_health(pins: &PinDir, netns: Option<&str>) -> Result<Option<ServerHealth>, CtlError> {
    let Some(rec) = crate::gateway::ServerIface::read(pins) else {
        return Ok(None);
    };
    let link = pins.path().join(crate::gateway::SERVER_LINK_PIN);
    // Pinned before the client-facing link: a complete attachment has it.
    let link_ifindex = if link.exists() {
        link_ifindex_of(&link)?
    } else {
        0
    };
    Ok(Some(ServerHealth {
        ifindex: crate::loader::ifindex(&rec.name, netns).ok(),
        interface: rec.name,
        attached_ifindex: rec.ifindex,
        link_ifindex,
    }))
}

/// Why the server-facing half `s` does not work, if it does not.
fn server_problem(s: &ServerHealth) -> Option<(Problem, String)> {
    let name = &s.interface;
    if s.link_ifindex == 0 {
        Some((
            Problem::ServerLinkDetached,
            format!(
                "the gateway's server-facing interface {name} was deleted (the kernel detached \
                 its XDP link): servers' answers are neither completed nor translated{}",
                now_here(name, s.ifindex)
            ),
        ))
    } else if s.ifindex.is_none() {
        Some((
            Problem::NoServerInterface,
            format!(
                "no interface {name} here: the gateway's server-facing XDP link is on ifindex \
                 {}, which has another name or namespace now",
                s.link_ifindex
            ),
        ))
    } else if s.ifindex != Some(s.link_ifindex) {
        Some((
            Problem::OtherServerInterface,
            format!(
                "the gateway's server-facing interface {name} is ifindex {}, but its XDP link \
                 is on ifindex {} (renamed and replaced)",
                s.ifindex.unwrap_or(0),
                s.link_ifindex
            ),
        ))
    } else {
        None
    }
}

/// Checks the attachment pinned for `iface` against the kernel. Call it from the namespace the
/// interface lives in (the binary enters `--netns` first), as every verb does.
///
/// # Errors
/// [`CtlError::NotAttached`] if nothing is pinned; [`CtlError::NoPrivilege`] or
/// [`CtlError::Io`] if the kernel refuses to describe the pinned links.
pub fn check(iface: &str, netns: Option<&str>) -> Result<Health, CtlError> {
    let pins = PinDir::new(netns, iface);
    let half_made = || !pins.is_attached() && pins.map(intercept_common::maps::CONFIG).exists();
    // An attach in progress holds the attach lock: wait for it to finish (or die) first.
    if half_made() {
        let _wait = crate::loader::hold_off_attaches().map_err(|e| CtlError::Io {
            what: format!("wait for the attach in progress on {iface}: {e:#}"),
            source: io::Error::other("lock"),
        })?;
    }
    if half_made() {
        // Maps pinned, XDP link not: an attach died before it completed (the XDP link is pinned
        // last). Whatever it left (maps, the TC program) protects nothing.
        return Err(unhealthy(
            iface,
            netns,
            "an attach was interrupted before it completed (its maps and TC program are pinned, \
             its XDP program is not attached)",
        ));
    }
    if !pins.is_attached() {
        return Err(CtlError::NotAttached {
            iface: iface.to_owned(),
            pin: pins.path().display().to_string(),
        });
    }
    let link_ifindex = link_ifindex_of(&pins.link())?;
    let tc = pins.path().join("link_tc");
    let tc_link_ifindex = if tc.exists() {
        Some(link_ifindex_of(&tc)?)
    } else {
        None
    };
    let ifindex = crate::loader::ifindex(iface, netns).ok();
    let tc_before = match (tc_link_ifindex, ifindex) {
        (Some(t), Some(i)) if t == i && t == link_ifindex => tc_programs_before(&pins, i)?,
        _ => Vec::new(),
    };
    let record = Record::read(&pins);
    let same_netns = match record {
        Some(r) => Some(r.netns_cookie == netns_cookie()?),
        None => None,
    };
    let server = server_health(&pins, netns)?;
    let server_problem = server.as_ref().and_then(server_problem);
    let forwarding = server.as_ref().map(|_| crate::sysctl::forwarding());
    let ns_name = netns.map_or_else(String::new, |n| format!(" {n}"));
    let (problem, reason) = if let Some(gone) = netns.and_then(netns_renamed) {
        (Some(Problem::NetnsRenamed), Some(gone))
    } else if same_netns == Some(false) {
        (
            Some(Problem::OtherNetns),
            Some(format!(
                "the attachment of {iface} was made in another network namespace: the \
                 namespace{ns_name} was deleted and re-created (its interfaces died with it){}",
                now_here(iface, ifindex)
            )),
        )
    } else if link_ifindex == 0 {
        (
            Some(Problem::LinkDetached),
            Some(format!(
                "interface {iface} was deleted (the kernel detached the XDP link){}",
                now_here(iface, ifindex)
            )),
        )
    } else if ifindex.is_none() {
        (
            Some(Problem::NoInterface),
            Some(format!(
                "no interface {iface} here: the attachment is on ifindex {link_ifindex}, \
                 which has another name or namespace now"
            )),
        )
    } else if ifindex != Some(link_ifindex) {
        (
            Some(Problem::OtherInterface),
            Some(format!(
                "interface {iface} is ifindex {}, but the attachment is on ifindex \
                 {link_ifindex} (renamed and replaced)",
                ifindex.unwrap_or(0)
            )),
        )
    } else if let Some((p, why)) = server_problem {
        (Some(p), Some(why))
    } else if tc_link_ifindex.is_some_and(|t| t != link_ifindex) {
        (
            Some(Problem::TcDetached),
            Some(format!(
                "the TC handoff link of {iface} is detached (cookie handshakes cannot complete)"
            )),
        )
    } else if !tc_before.is_empty() {
        (
            Some(Problem::TcNotFirst),
            Some(format!(
                "TC programs run before the cookie handoff on {iface} ({}): one that ends the \
                 chain skips every handoff, and the kernel resets every cookie handshake",
                tc_before.join(", ")
            )),
        )
    } else if let Some(n) = metadata_refused(iface, netns) {
        (
            Some(Problem::NoXdpMetadata),
            Some(format!(
                "the driver of {iface} refused XDP metadata to {n} proven handshakes (aborted: \
                 none completes in native mode); attach in generic mode (`--xdp-mode generic`)"
            )),
        )
    } else if let Some(f) = forwarding.filter(|f| f.none) {
        (
            Some(Problem::ForwardingOff),
            Some(format!(
                "the gateway of {iface} reaches no server: this namespace forwards no IP packets; \
                 set {}",
                f.off.join(" and ")
            )),
        )
    } else if let Some(drift) = kernel_settings_drift(iface, netns, &pins) {
        (
            Some(Problem::KernelSettings),
            Some(format!(
                "the kernel-cookie engine of {iface} is in intercept mode but {drift}: protected \
                 SYNs are left to the kernel; `intercept-ctl mode {iface} intercept` (or the \
                 daemon) sets it again"
            )),
        )
    } else {
        (None, None)
    };
    Ok(Health {
        healthy: problem.is_none(),
        problem,
        reason,
        ifindex,
        link_ifindex,
        tc_link_ifindex,
        attached_ifindex: record.map(|r| r.ifindex),
        same_netns,
        tc_before,
        server,
    })
}

/// What the kernel-cookie engine needs of the sysctls and does not have, while intercept mode
/// is in force (see [`crate::sysctl`]).
fn kernel_settings_drift(iface: &str, netns: Option<&str>, pins: &PinDir) -> Option<String> {
    if crate::engine::recorded(pins) != crate::engine::Engine::KernelCookie {
        return None;
    }
    let cfg = crate::control::Maps::open(iface, netns)
        .ok()?
        .config()
        .ok()?;
    if intercept_common::config::Mode::effective(&cfg) != intercept_common::config::Mode::Intercept
    {
        return None;
    }
    let drift = crate::sysctl::kernel_cookie_drift(&cfg);
    (!drift.is_empty()).then(|| drift.join(", "))
}

/// How many proven handshakes the driver refused metadata to, if any, on a native-mode
/// attachment (a generic one always has metadata: its count, if any, is from another cause).
fn metadata_refused(iface: &str, netns: Option<&str>) -> Option<u64> {
    let m = crate::control::Maps::open(iface, netns).ok()?;
    if m.info().ok()?.xdp_mode != 1 {
        return None;
    }
    let n = crate::stats::read_pinned(iface, netns)
        .ok()?
        .get(intercept_common::Counter::MetaUnsupported);
    (n > 0).then_some(n)
}

/// The names of the programs before our TC handoff (pinned in `pins`) in the TCX ingress chain of
/// device `ifindex`, in chain order (`BPF_PROG_QUERY`).
fn tc_programs_before(pins: &PinDir, ifindex: u32) -> Result<Vec<String>, CtlError> {
    let io = |e: &dyn std::fmt::Display| CtlError::Io {
        what: "query the TCX ingress chain".to_owned(),
        source: io::Error::other(e.to_string()),
    };
    let ours = aya::programs::ProgramInfo::from_pin(pins.path().join("prog_tc"))
        .map_err(|e| io(&e))?
        .id();
    let (_, chain) = aya::programs::SchedClassifier::query_tcx(
        ifindex,
        aya::programs::tc::TcAttachType::Ingress,
    )
    .map_err(|e| io(&e))?;
    Ok(chain
        .iter()
        .take_while(|p| p.id() != ours)
        .map(|p| format!("{} (id {})", p.name_as_str().unwrap_or("unnamed"), p.id()))
        .collect())
}

/// "; an interface of that name exists again (ifindex N), unprotected" or "; none exists now".
fn now_here(iface: &str, ifindex: Option<u32>) -> String {
    match ifindex {
        Some(i) => format!("; {iface} exists again (ifindex {i}) and nothing protects it"),
        None => format!("; no interface {iface} exists now"),
    }
}

/// [`check`], turned into an error unless the attachment is healthy: what verbs that write the
/// maps call first, so nothing reports success while writing into orphaned maps.
///
/// # Errors
/// [`CtlError::Unhealthy`] with the reason and the command that fixes it; as [`check`].
pub fn require_healthy(iface: &str, netns: Option<&str>) -> Result<Health, CtlError> {
    let h = check(iface, netns)?;
    match (&h.problem, &h.reason) {
        // The verb's own configuration write sets the sysctls again (`Maps::set_config`); an
        // operator's forwarding is theirs to turn on again: the maps still work.
        (Some(Problem::KernelSettings | Problem::ForwardingOff), Some(reason)) => {
            eprintln!("intercept-ctl: warning: {reason}");
        }
        (_, Some(reason)) => return Err(unhealthy(iface, netns, reason)),
        _ => {}
    }
    Ok(h)
}

/// The error for a dead attachment of `iface`.
#[must_use]
pub fn unhealthy(iface: &str, netns: Option<&str>, reason: &str) -> CtlError {
    CtlError::Unhealthy {
        iface: iface.to_owned(),
        reason: reason.to_owned(),
        fix: fix_command(iface, netns),
    }
}

/// `intercept-ctl [--netns NS ]attach IFACE[ --gateway SERVER_IFACE]` (a gateway's attachment
/// is made again with its recorded server-facing interface).
#[must_use]
pub fn fix_command(iface: &str, netns: Option<&str>) -> String {
    let gateway = crate::gateway::ServerIface::read(&PinDir::new(netns, iface))
        .map_or_default(|s| format!(" --gateway {}", s.name));
    match netns {
        Some(ns) => format!("intercept-ctl --netns {ns} attach {iface}{gateway}"),
        None => format!("intercept-ctl attach {iface}{gateway}"),
    }
}

/// If `/run/netns/NAME` no longer is the namespace this thread runs in, why.
fn netns_renamed(name: &str) -> Option<String> {
    let named = fs::metadata(format!("/run/netns/{name}"));
    let ours = fs::metadata("/proc/thread-self/ns/net").ok()?;
    match named {
        Err(_) => Some(format!(
            "the network namespace {name} was deleted; this process still runs in it"
        )),
        Ok(m) if (m.dev(), m.ino()) != (ours.dev(), ours.ino()) => Some(format!(
            "the network namespace {name} was deleted and re-created; this process still runs \
             in the old one, whose interfaces nothing reaches"
        )),
        Ok(_) => None,
    }
}

/// The cookie of the current thread's network namespace.
///
/// # Errors
/// [`CtlError::Io`] if no socket can be opened or the kernel lacks `SO_NETNS_COOKIE` (< 5.14).
pub fn netns_cookie() -> Result<u64, CtlError> {
    let io = |source| CtlError::Io {
        what: "read the network namespace cookie (SO_NETNS_COOKIE, Linux >= 5.14)".to_owned(),
        source,
    };
    // SAFETY: plain socket call; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io(io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len: libc::socklen_t = 8;
    // SAFETY: valid fd and an out-buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io(io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// The ifindex a pinned XDP or TCX link is attached to, from the kernel's `bpf_link_info`
/// (`xdp.ifindex` and `tcx.ifindex` are both the first word of the union); 0 once the kernel
/// detached the link from its device. aya's `LinkInfo` exposes neither, so this is the syscall.
fn link_ifindex_of(path: &Path) -> Result<u32, CtlError> {
    let what = || format!("read the link info of {}", path.display());
    let fd = bpf_obj_get(path).map_err(|e| bpf_error(&what(), e))?;
    bpf_link_ifindex(&fd).map_err(|e| bpf_error(&what(), e))
}

fn bpf_error(what: &str, source: io::Error) -> CtlError {
    if source.raw_os_error() == Some(libc::EPERM) {
        return CtlError::NoPrivilege {
            what: what.to_owned(),
        };
    }
    CtlError::Io {
        what: what.to_owned(),
        source,
    }
}

/// Detaches the pinned link at `path` from its device now (`BPF_LINK_DETACH`), before its pin
/// goes: the kernel frees an unpinned link only later (bpffs drops its inode after an RCU grace
/// period, then a workqueue puts the link), so the program would still run on the interface for
/// a moment after `detach` returned. A link already detached (its device gone) is fine.
///
/// # Errors
/// If the pin cannot be opened or the kernel refuses for another reason.
pub fn detach_link(path: &Path) -> Result<(), CtlError> {
    let what = || format!("detach the link {}", path.display());
    let fd = bpf_obj_get(path).map_err(|e| bpf_error(&what(), e))?;
    let mut attr = Attr([0; 64]);
    attr.put_u32(0, u32::try_from(fd.as_raw_fd()).unwrap_or(0));
    match bpf(BPF_LINK_DETACH, &mut attr) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => Ok(()),
        Err(e) => Err(bpf_error(&what(), e)),
    }
}

/// `BPF_OBJ_GET` (7), `BPF_OBJ_GET_INFO_BY_FD` (15) and `BPF_LINK_DETACH` (34), from
/// `include/uapi/linux/bpf.h`.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr`, large enough for both commands (the kernel requires the bytes it does not
/// know to be zero, and reads only the size passed).
#[repr(C, align(8))]
struct Attr([u8; 64]);

impl Attr {
    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zero-initialised buffer of the size passed, laid out as the command's
    // struct of `union bpf_attr`; pointers inside it are valid for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (&raw mut attr.0).cast::<u8>(),
            size_of::<Attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Opens a pinned object (`BPF_OBJ_GET`: `pathname` at offset 0).
fn bpf_obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = Attr([0; 64]);
    attr.put_u64(0, c.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(io::Error::other)?) })
}

/// The first word of the union in `struct bpf_link_info` (after `type`, `id`, `prog_id` and
/// padding to its 8-byte alignment, at offset 16): `xdp.ifindex` and `tcx.ifindex` alike.
fn bpf_link_ifindex(fd: &OwnedFd) -> io::Result<u32> {
    // Bigger than the kernel's struct: it checks that a longer tail is zero and fills what it
    // knows.
    let mut info = [0u8; 256];
    let mut attr = Attr([0; 64]);
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; } info;
    attr.put_u32(0, u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)?);
    attr.put_u32(4, u32::try_from(info.len()).expect("256"));
    attr.put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(u32::from_ne_bytes(
        info[16..20].try_into().expect("4 bytes"),
    ))
}

#[cfg(test)]
mod tests {
    use super::Record;

    #[test]
    fn record_round_trips_and_rejects_junk() {
        let r = Record {
            ifindex: 7,
            netns_cookie: 4_096_123,
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode("ifindex=7"), None);
        assert_eq!(Record::decode("junk"), None);
    }
}
