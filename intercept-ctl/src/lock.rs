//! Locks between controllers. Every process that changes an attachment's settings (an
//! operator's `mode`, `synack`, `thresholds`, `scope`, `exempt`, `reload`, `rotate-secret`; the
//! daemon's tick; `attach` itself) reads, modifies and writes map values whole, so two of them at
//! once would silently undo each other. Each such change holds the attachment's settings lock
//! (an exclusive `flock` on its pin directory) from its read to its write. The kernel releases a
//! `flock` when its holder dies, so a killed controller never leaves an attachment locked.
//!
//! A second lock, on the daemon's pid file, makes `run` the one owner of the daemon's work for
//! an interface: a second `run` refuses instead of ticking alongside the first.
use std::{
    cell::RefCell,
    collections::HashSet,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use rustix::fs::FlockOperation;

use crate::{errors::CtlError, pins::PinDir};

thread_local! {
    /// Pin directories whose settings lock this thread holds: taking it again is a no-op (a
    /// second `flock` on a new descriptor would wait for the first, held by this very thread).
    static HELD: RefCell<HashSet<PathBuf>> = RefCell::new(HashSet::new());
}

/// How long a change waits for another controller's change to the same attachment.
pub const SETTINGS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The settings lock of one attachment, held until dropped.
#[derive(Debug)]
pub struct Settings {
    /// The locked directory and its descriptor; `None` when this thread already held it.
    held: Option<(PathBuf, fs::File)>,
}

impl Drop for Settings {
    fn drop(&mut self) {
        if let Some((path, file)) = self.held.take() {
            HELD.with(|h| h.borrow_mut().remove(&path));
            // Closing the descriptor releases the flock.
            drop(file);
        }
    }
}

/// Takes the settings lock of the attachment pinned in `pins`, waiting for its holder.
///
/// # Errors
/// [`CtlError::NotAttached`] if nothing is pinned there; open or flock failures.
pub fn settings(pins: &PinDir, iface: &str) -> anyhow::Result<Settings> {
    let path = pins.path().to_path_buf();
    if HELD.with(|h| h.borrow().contains(&path)) {
        return Ok(Settings { held: None });
    }
    let dir = fs::File::open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::Error::new(CtlError::NotAttached {
                iface: iface.to_owned(),
                pin: path.display().to_string(),
            })
        } else {
            anyhow::Error::new(e).context(format!("open {}", path.display()))
        }
    })?;
    // Never blocks for good: a controller stopped or hung while holding the lock must not freeze
    // the daemon's tick (it reports the failure and tries again).
    let deadline = std::time::Instant::now() + SETTINGS_WAIT;
    let mut pause = std::time::Duration::from_micros(20);
    loop {
        match flock(&dir, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(2));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => anyhow::bail!(
                "the settings of {iface} have been locked by another intercept-ctl for {} s (a \
                 stopped or hung process? see `fuser -v {}`)",
                SETTINGS_WAIT.as_secs(),
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("lock {}", path.display())),
        }
    }
    HELD.with(|h| h.borrow_mut().insert(path.clone()));
    Ok(Settings {
        held: Some((path, dir)),
    })
}

/// `flock`, retried when a signal interrupts it.
pub(crate) fn flock(f: &fs::File, how: FlockOperation) -> std::io::Result<()> {
    loop {
        match rustix::fs::flock(f, how) {
            Err(rustix::io::Errno::INTR) => {}
            r => return r.map_err(std::io::Error::from),
        }
    }
}

/// The daemon's claim on an interface: its pid file, locked for the daemon's life. The file is
/// never removed (removing it would let a second `run` lock a new file while a third still
/// waits on the old one); a file nobody locks means no daemon, whatever pid it names.
#[derive(Debug)]
pub struct Daemon {
    _file: fs::File,
    path: PathBuf,
}

impl Daemon {
    /// Claims `iface` for this process's `run`.
    ///
    /// # Errors
    /// [`CtlError::DaemonRunning`] if another `run` holds it; file failures.
    ///
    /// # Panics
    /// Never: the pid file's path has a parent.
    pub fn claim(iface: &str, netns: Option<&str>) -> anyhow::Result<Daemon> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
        let path = crate::pid_file(iface, netns);
        let dir = path.parent().expect("the pid file has a parent");
        // Root's alone: anyone who can open a pid file can lock it, and so keep every daemon
        // from starting.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 700 {}", dir.display()))?;
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", path.display()))?;
        // A `status` checking whether a daemon runs holds the lock for an instant: wait that out.
        let mut locked = flock(&file, FlockOperation::NonBlockingLockExclusive);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while locked
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
            locked = flock(&file, FlockOperation::NonBlockingLockExclusive);
        }
        if let Err(e) = locked {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Err(CtlError::DaemonRunning {
                    iface: iface.to_owned(),
                    pid: fs::read_to_string(&path)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                }
                .into());
            }
            return Err(e).with_context(|| format!("lock {}", path.display()));
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())
            .with_context(|| format!("write {}", path.display()))?;
        Ok(Daemon { _file: file, path })
    }

    /// The pid file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether a `run` holds `iface` (its pid file is locked). A pid file left by a killed daemon is
/// unlocked, so a reused pid never counts.
#[must_use]
pub fn daemon_running(iface: &str, netns: Option<&str>) -> bool {
    let Ok(f) = fs::File::open(crate::pid_file(iface, netns)) else {
        return false;
    };
    match flock(&f, FlockOperation::NonBlockingLockShared) {
        Ok(()) => false,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}
