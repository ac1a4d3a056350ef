//! Where an attachment lives in bpffs: one directory per interface (mode 0700) holding the XDP
//! link, the program and the maps, so one-shot commands find what `attach` (or a daemon) set up.
use std::path::{Path, PathBuf};

use crate::errors::CtlError;

/// Root of every pin directory.
pub const ROOT: &str = "/sys/fs/bpf/xdp-intercept";
/// `statfs` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin directory of one interface.
#[derive(Debug, Clone)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// `ROOT/<iface>`, or `ROOT/netns-<ns>/<iface>` for an interface in a named namespace (the
    /// same name may exist in several namespaces).
    #[must_use]
    pub fn new(netns: Option<&str>, iface: &str) -> PinDir {
        let mut path = PathBuf::from(ROOT);
        if let Some(ns) = netns {
            path.push(format!("netns-{ns}"));
        }
        path.push(iface);
        PinDir { path }
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pinned XDP link.
    #[must_use]
    pub fn link(&self) -> PathBuf {
        self.path.join("link_xdp")
    }

    /// The pinned XDP program.
    #[must_use]
    pub fn prog(&self) -> PathBuf {
        self.path.join("prog_xdp")
    }

    /// What `attach` recorded of the interface and namespace (a symlink; see
    /// [`crate::health::Record`]).
    #[must_use]
    pub fn record(&self) -> PathBuf {
        self.path.join("attachment")
    }

    /// A pinned map, by its name in the object.
    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether an attachment is pinned here.
    #[must_use]
    pub fn is_attached(&self) -> bool {
        self.link().exists()
    }

    /// The directory shared by every attachment of this one's network namespace (`ROOT`, or
    /// `ROOT/netns-<ns>`): where what concerns the whole namespace is pinned.
    #[must_use]
    pub fn namespace_dir(&self) -> &Path {
        self.path.parent().unwrap_or(&self.path)
    }

    /// [`PinDir::namespace_dir`] as a directory to lock (see [`crate::lock::settings`]): what
    /// the namespace's attachments share is changed under its lock.
    #[must_use]
    pub fn namespace(&self) -> PinDir {
        PinDir {
            path: self.namespace_dir().to_path_buf(),
        }
    }

    /// The other attachments of this one's network namespace, made or being made (their engine
    /// is recorded before anything else is configured): (interface, its pin directory).
    #[must_use]
    pub fn others(&self) -> Vec<(String, PinDir)> {
        let Ok(dir) = std::fs::read_dir(self.namespace_dir()) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter(|e| {
                e.path() != self.path
                    && std::fs::symlink_metadata(e.path().join(crate::engine::ENGINE_PIN)).is_ok()
            })
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    PinDir { path: e.path() },
                )
            })
            .collect()
    }
}

/// Checks that /sys/fs/bpf is a mounted bpffs.
///
/// # Errors
/// [`CtlError::NoBpffs`] if not.
///
/// # Panics
/// Never: the path holds no NUL.
pub fn check_bpffs() -> Result<(), CtlError> {
    let dir = "/sys/fs/bpf";
    let is_bpffs = rustix::fs::statfs(dir).is_ok_and(|st| st.f_type == BPF_FS_MAGIC);
    if !is_bpffs {
        let advice = match named_netns_entered() {
            Some(name) => format!(
                "this runs inside network namespace {name} through `ip netns exec`, whose private \
                 /sys has no bpffs and would lose anything pinned with the command: run \
                 `intercept-ctl --netns {name} ...` from outside instead"
            ),
            None => "mount it with `mount -t bpf bpf /sys/fs/bpf`".to_owned(),
        };
        return Err(CtlError::NoBpffs {
            path: dir.to_owned(),
            advice,
        });
    }
    Ok(())
}

/// The name under /run/netns of the network namespace this process is in, if it is a named one
/// (as under `ip netns exec NAME`): the same namespace file (device and inode) as
/// `/proc/thread-self/ns/net`.
fn named_netns_entered() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    std::fs::read_dir("/run/netns")
        .ok()?
        .flatten()
        .find_map(|e| {
            let m = std::fs::metadata(e.path()).ok()?;
            (m.dev() == me.dev() && m.ino() == me.ino())
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
}
