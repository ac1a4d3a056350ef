//! The data path's log: rare events its programs tell through aya-log (a handoff the kernel
//! refused, a flow the socket table could not record, an XDP_ABORTED verdict, each with the
//! kernel's return code), the level they are loaded with, and the daemon's drain of them into its
//! own log (stderr), each line naming the interface.
//!
//! The level is fixed when the object is loaded (aya-log's `AYA_LOG_LEVEL`, read-only data the
//! verifier sees, so the code of a disabled level is removed and costs nothing). The programs
//! log at most [`LOG_LINES_PER_SECOND`] lines a second per CPU and count the rest
//! (`log_suppressed`); the daemon says how many it missed.
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::Context as _;
pub use intercept_common::maps::LOG_LINES_PER_SECOND;

/// How much of the data path's log its programs keep, chosen when they are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Nothing: the verifier removes the logging code.
    Off,
    /// Aborted verdicts (XDP_ABORTED: a kernel call failed where it should not).
    Error,
    /// Also refused handoffs and refused socket-table inserts.
    Warn,
}

impl LogLevel {
    /// The level the programs are loaded with unless told otherwise.
    pub const DEFAULT: LogLevel = LogLevel::Warn;

    /// aya-log's value for it (`AYA_LOG_LEVEL`: lines of a level at or below it are kept).
    #[must_use]
    pub const fn ebpf(self) -> u8 {
        match self {
            LogLevel::Off => 0,
            LogLevel::Error => aya_log::Level::Error as u8,
            LogLevel::Warn => aya_log::Level::Warn as u8,
        }
    }

    const fn from_ebpf(v: u8) -> LogLevel {
        match v {
            0 => LogLevel::Off,
            1 => LogLevel::Error,
            _ => LogLevel::Warn,
        }
    }
}

/// The level this process loads the data path with (see [`set_level`]).
static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::DEFAULT.ebpf());

/// Sets the level every later load in this process uses (`attach --log-level`,
/// `run --log-level`); an attachment keeps the level it was loaded with.
pub fn set_level(level: LogLevel) {
    LEVEL.store(level.ebpf(), Ordering::Relaxed);
}

/// The level the next load uses.
#[must_use]
pub fn level() -> LogLevel {
    LogLevel::from_ebpf(LEVEL.load(Ordering::Relaxed))
}

/// Writes each record on stderr as one line naming the interface, as the daemon's other lines.
struct Stderr {
    iface: String,
}

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warning",
            _ => "note",
        };
        eprintln!(
            "intercept-ctl: {}: data path {level}: {}",
            self.iface,
            record.args()
        );
    }

    fn flush(&self) {}
}

/// A task draining one attachment's log into stderr; stopped when dropped.
pub struct Drain {
    task: tokio::task::JoinHandle<()>,
}

impl Drain {
    /// Starts draining the log of the attachment whose XDP program is `program_id` (its ring
    /// buffer, found among that program's maps). Must run inside a tokio `LocalSet`.
    ///
    /// # Errors
    /// If the program or its log cannot be found (a pass-through program has none).
    pub fn start(iface: &str, program_id: u32) -> anyhow::Result<Drain> {
        let logger = aya_log::EbpfLogger::init_from_id_with_logger(
            program_id,
            Stderr {
                iface: iface.to_owned(),
            },
        )
        .with_context(|| format!("open the data path's log of program {program_id}"))?;
        // SAFETY: the logger owns its ring buffer's fd, keeps it open while it lives and always
        // answers that same fd; flushing only reads from it.
        let mut fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)
        .context("watch the data path's log")?;
        let task = tokio::task::spawn_local(async move {
            while let Ok(mut ready) = fd.readable_mut().await {
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
        });
        Ok(Drain { task })
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.task.abort();
    }
}
