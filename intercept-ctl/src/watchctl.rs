//! The controller's half of watch mode, one [`Watcher::tick`] at a time (the daemon ticks every
//! 100 ms): close the half-open connections the data path displaced or evicted, mark those older
//! than the watch timeout closing and close them a grace later, ask the kernel about those whose
//! client sent an RST, derive the exact half-open count and the one-minute request rate from the
//! per-CPU counters, evaluate the thresholds with hysteresis, switch `auto` between watch and
//! intercept, and write the state back for `status`.
//!
//! On a gateway (`attach --gateway`) the servers are not local, so there is no socket to
//! destroy: a handshake past the timeout (or marked closing, or displaced while still tracked) is
//! ended by two resets the controller sends over the wire, one to each end
//! ([`crate::gateway::resets`]), and once a second the idle spliced connections are freed
//! ([`crate::gateway::sweep`]).
use std::{collections::VecDeque, time::Duration};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData, PerCpuArray, PerCpuValues};
use intercept_common::{
    Counter,
    config::{CLOSE_GRACE_NS, FlowKey, HalfOpen, Mode, TransitionCause, Watch, evaluate, flags},
    maps::{self, CounterBlock},
};

use crate::{
    control::Maps,
    errors::{CtlError, explain},
    pins::PinDir,
    sockdiag::{SockDiag, TCP_SYN_RECV},
    stats::{Counters, read_map},
};

/// How long watch mode keeps verifying our cookies after intercept mode ends: a cookie lives at
/// most two slots (137.4 s).
pub const COOKIE_GRACE: Duration = Duration::from_secs(140);

/// At most this many tracked handshakes whose client sent an RST are checked with the kernel per
/// tick (one sock_diag request each, a few microseconds); the others wait for the next ticks,
/// counted half-open meanwhile (never hidden), so a flood of RSTs costs the controller a bounded
/// time per tick.
pub const RESET_CHECKS_PER_TICK: usize = 256;

/// CLOCK_MONOTONIC in ns (the data path reads the same clock at tick resolution).
#[must_use]
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The watch-mode maps of one attachment.
pub struct WatchMaps {
    /// Tracked half-open handshakes.
    pub half_open: HashMap<MapData, FlowKey, HalfOpen>,
    /// Victims queued for closing, with when (see `maps::CLOSING`).
    pub closing: HashMap<MapData, FlowKey, u64>,
    closing_gate: Array<MapData, u64>,
    watch: Array<MapData, Watch>,
    counters: PerCpuArray<MapData, CounterBlock>,
    /// Where they are pinned, and for which interface (writes of WATCH hold its settings lock).
    pinned: (PinDir, String),
}

fn open(pins: &PinDir, name: &str) -> anyhow::Result<MapData> {
    MapData::from_pin(pins.map(name)).map_err(|e| explain(e.into(), &format!("open map {name}")))
}

impl WatchMaps {
    /// Opens the pinned maps of `iface`.
    ///
    /// # Errors
    /// [`CtlError::NotAttached`] if nothing is pinned.
    pub fn open(iface: &str, netns: Option<&str>) -> anyhow::Result<WatchMaps> {
        let pins = PinDir::new(netns, iface);
        if !pins.map(maps::HALF_OPEN).exists() {
            return Err(CtlError::NotAttached {
                iface: iface.to_owned(),
                pin: pins.path().display().to_string(),
            }
            .into());
        }
        Ok(WatchMaps {
            half_open: HashMap::try_from(Map::HashMap(open(&pins, maps::HALF_OPEN)?))?,
            closing: HashMap::try_from(Map::HashMap(open(&pins, maps::CLOSING)?))?,
            closing_gate: Array::try_from(Map::Array(open(&pins, maps::CLOSING_GATE)?))?,
            watch: Array::try_from(Map::Array(open(&pins, maps::WATCH)?))
                .map_err(|e| crate::errors::other_build(e, maps::WATCH))?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(open(&pins, maps::COUNTERS)?))
                .map_err(|e| crate::errors::other_build(e, maps::COUNTERS))?,
            pinned: (pins, iface.to_owned()),
        })
    }

    /// The knobs and state.
    ///
    /// # Errors
    /// bpf() failure.
    pub fn watch(&self) -> anyhow::Result<Watch> {
        Ok(self.watch.get(&0, 0)?)
    }

    /// Replaces knobs and state.
    ///
    /// # Errors
    /// bpf() failure.
    pub fn set_watch(&mut self, w: &Watch) -> anyhow::Result<()> {
        let _lock = crate::lock::settings(&self.pinned.0, &self.pinned.1)?;
        self.watch.set(0, w, 0).context("write WATCH")
    }

    /// Reads, changes and writes the knobs and state under the settings lock (see
    /// [`crate::lock`]); returns what was written.
    ///
    /// # Errors
    /// Lock or bpf() failure.
    pub fn update_watch(&mut self, f: impl FnOnce(&mut Watch)) -> anyhow::Result<Watch> {
        let _lock = crate::lock::settings(&self.pinned.0, &self.pinned.1)?;
        let mut w = self.watch()?;
        f(&mut w);
        self.set_watch(&w)?;
        Ok(w)
    }

    /// Every counter, summed.
    ///
    /// # Errors
    /// bpf() failure.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        read_map(&self.counters)
    }

    /// Adds `n` to a controller-owned counter (the data path never writes these indexes, so
    /// updating CPU 0's slot races with nothing).
    /// Adds `n` to a controller counter (the controller's own block of COUNTERS).
    ///
    /// # Errors
    /// bpf() failure.
    pub fn bump(&mut self, c: Counter, n: u64) -> anyhow::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let cur = self.counters.get(&maps::COUNTERS_CONTROLLER, 0)?;
        let mut v: Vec<CounterBlock> = cur.iter().copied().collect();
        v[0][c as usize] += n;
        self.counters
            .set(maps::COUNTERS_CONTROLLER, PerCpuValues::try_from(v)?, 0)
            .context("write COUNTERS")
    }
}

/// The half-open count the counters imply: exact, as every insertion and every removal is counted
/// on one side or the other.
#[must_use]
pub fn half_open_count(c: &Counters) -> u64 {
    let removed = c.get(Counter::HalfOpenCompleted)
        + c.get(Counter::HalfOpenAborted)
        + c.get(Counter::HalfOpenDropped)
        + c.get(Counter::HalfOpenTimedOut)
        + c.get(Counter::HalfOpenGone)
        + c.get(Counter::HalfOpenEvicted);
    c.get(Counter::HalfOpenNew).saturating_sub(removed)
}

/// What one tick did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Tick {
    /// Half-open connections now.
    pub half_open: u64,
    /// Connection requests in the rate window.
    pub one_minute: u64,
    /// Aggressive state after the tick.
    pub aggressive: bool,
    /// A transition this tick: (now aggressive, cause).
    pub transition: Option<(bool, &'static str)>,
    /// Half-open connections closed on the server for timing out.
    pub timed_out: u64,
    /// Half-open connections timed out this tick, to be closed at least `CLOSE_GRACE_NS` later.
    pub marked: u64,
    /// Displaced or evicted connections closed on the server.
    pub victims_closed: u64,
    /// Gateway: resets sent this tick (two per handshake ended).
    pub resets_sent: u64,
    /// Gateway: resets that failed this tick (said on stderr, counted in `controller_errors`;
    /// their handshakes stay tracked and are tried again next tick).
    pub reset_failures: u64,
    /// Gateway: idle spliced connections freed this tick.
    pub freed: u64,
    /// Gateway: SYNs sent again to servers that have not answered (see
    /// [`crate::gateway::resend_syns`]).
    pub syn_resent: u64,
}

/// The gateway's part of a [`Watcher`].
struct Gateway {
    splice: HashMap<MapData, FlowKey, intercept_common::splice::Splice>,
    /// Its held segments (`HELD`), swept with it.
    held: HashMap<MapData, FlowKey, intercept_common::splice::Held>,
    sender: crate::gateway::RawSender,
    /// When the splice table was last swept.
    last_sweep: u64,
    /// When a failure to reset was last said, and how many since.
    said: Option<(u64, u64)>,
    /// When victims that could not be reset were last said, and how many since.
    unknown_said: (u64, u64),
    /// SYNs sent again per splice still waiting for its server.
    resent: crate::gateway::SynResends,
    /// Splices held per bucket of client addresses, set at each sweep.
    sources: crate::gateway::SourceCounts,
    /// When a failure to send a SYN again was last said, and how many since.
    resend_said: (u64, u64),
}

/// How often the gateway's splice table is swept (its timeouts are 10 s and more).
const SWEEP_EVERY_NS: u64 = 1_000_000_000;
/// How often a lasting failure to send resets is said again (each failure is counted).
const SAY_EVERY_NS: u64 = 10_000_000_000;

/// The watch-mode controller of one attachment.
pub struct Watcher {
    maps: Maps,
    wmaps: WatchMaps,
    diag: SockDiag,
    samples: VecDeque<(u64, u64)>,
    /// Per tracked flow whose client sent RSTs, how many of them the kernel was last asked
    /// about (see `HalfOpen::resets`).
    resets_seen: std::collections::HashMap<FlowKey, u32>,
    /// When this controller saw each tracked flow marked closing (the grace starts then; one
    /// marked by an earlier controller starts its grace when this one first sees it).
    closing_since: std::collections::HashMap<FlowKey, u64>,
    /// Since when this controller has seen the CLOSING gate open without a break.
    gate_since: Option<u64>,
    /// A gateway's attachment: resets instead of `SOCK_DESTROY`, and the splice sweep.
    gateway: Option<Gateway>,
}

impl Watcher {
    /// Counts `n` failed daemon steps (`controller_errors`, which `stats` and the metrics show).
    ///
    /// # Errors
    /// bpf() failure.
    pub fn count_errors(&mut self, n: u64) -> anyhow::Result<()> {
        self.wmaps.bump(Counter::ControllerErrors, n)
    }

    /// Opens everything for `iface` (call inside its network namespace).
    ///
    /// # Errors
    /// If the attachment or sock_diag cannot be opened.
    pub fn open(iface: &str, netns: Option<&str>) -> anyhow::Result<Watcher> {
        let gateway = if crate::engine::recorded(&PinDir::new(netns, iface)).is_gateway() {
            Some(Gateway {
                splice: crate::gateway::open_splice(iface, netns)?,
                held: crate::gateway::open_held(iface, netns)?,
                sender: crate::gateway::RawSender::default(),
                last_sweep: 0,
                said: None,
                unknown_said: (0, 0),
                resent: crate::gateway::SynResends::default(),
                sources: crate::gateway::SourceCounts::open(iface, netns)?,
                resend_said: (0, 0),
            })
        } else {
            None
        };
        Ok(Watcher {
            gateway,
            maps: Maps::open(iface, netns)?,
            wmaps: WatchMaps::open(iface, netns)?,
            diag: SockDiag::open()?,
            samples: VecDeque::new(),
            resets_seen: std::collections::HashMap::new(),
            closing_since: std::collections::HashMap::new(),
            gate_since: None,
        })
    }

    /// One round; see the module docs.
    ///
    /// # Errors
    /// On a map or netlink failure.
    pub fn tick(&mut self) -> anyhow::Result<Tick> {
        let now = monotonic_ns();
        let mut t = Tick::default();
        if self.gateway.is_some() {
            let tracked = self.gateway_tick(now, &mut t)?;
            return self.evaluate(now, t, tracked);
        }
        // Closing happens in two steps, at least `CLOSE_GRACE_NS` apart: first the handshake is
        // marked closing (the data path marks the victims it queues in CLOSING; this tick marks
        // those timed out), after which the data path drops the client's ACKs of it; then it is
        // closed on the server, when no ACK can complete it meanwhile (SOCK_DESTROY would reset
        // the connection: the child inherits the request's cookie).
        self.close_victims(now, &mut t)?;
        let w = self.wmaps.watch()?;
        let aggressive = self.maps.config()?.aggressive != 0;
        // Reap: older than the timeout (halved while aggressive, as Cisco does).
        let timeout_ns = u64::from(w.timeout_ms) * 1_000_000 / if aggressive { 2 } else { 1 };
        let entries: Vec<(FlowKey, HalfOpen)> = crate::batch::entries(self.wmaps.half_open.map())?;
        let (mut timed_out, mut gone) = (0, 0);
        let mut reset = Vec::new();
        for (key, e) in &entries {
            if e.closing != 0 {
                let since = *self.closing_since.entry(*key).or_insert(now);
                if now.saturating_sub(since) < CLOSE_GRACE_NS {
                    continue;
                }
                let closed = self.diag.close_half_open(key)?;
                // Whoever removes the entry owns its accounting (the tracepoint, had an ACK
                // passed before the mark and completed it, or drop-mode evicting it).
                if self.wmaps.half_open.remove(key).is_ok() {
                    if closed {
                        timed_out += 1;
                    } else {
                        gone += 1;
                    }
                }
                continue;
            }
            if now.saturating_sub(e.first_seen_ns) >= timeout_ns {
                // Marked in place (BPF_EXIST: not if the entry went meanwhile). The rest of the
                // value is rewritten as read: a SYN retransmission counted meanwhile is lost.
                let marked = HalfOpen { closing: 1, ..*e };
                if self.wmaps.half_open.insert(key, &marked, BPF_EXIST).is_ok() {
                    self.closing_since.insert(*key, now);
                    t.marked += 1;
                }
                continue;
            }
            if e.resets != self.resets_seen.get(key).copied().unwrap_or(0) {
                reset.push((*key, e.resets));
            }
        }
        // The client sent an RST since the kernel was last asked: the kernel dropped the request
        // socket if the RST was in its window (`tcp_check_req`), else ignored it.
        let mut aborted = 0;
        for (key, resets) in reset.into_iter().take(RESET_CHECKS_PER_TICK) {
            match self.diag.state(&key)? {
                Some(s) if s.state == TCP_SYN_RECV => {
                    self.resets_seen.insert(key, resets);
                }
                // Completed meanwhile: the tracepoint untracks it.
                Some(_) => {}
                None => {
                    if self.wmaps.half_open.remove(&key).is_ok() {
                        aborted += 1;
                    }
                }
            }
        }
        if !self.resets_seen.is_empty() || !self.closing_since.is_empty() {
            let live: std::collections::HashSet<&FlowKey> =
                entries.iter().map(|(k, _)| k).collect();
            self.resets_seen.retain(|k, _| live.contains(k));
            self.closing_since.retain(|k, _| live.contains(k));
        }
        self.wmaps.bump(Counter::HalfOpenTimedOut, timed_out)?;
        self.wmaps.bump(Counter::HalfOpenGone, gone)?;
        self.wmaps.bump(Counter::HalfOpenAborted, aborted)?;
        t.timed_out = timed_out;
        self.evaluate(now, t, !entries.is_empty())
    }

    /// The end of every tick: the half-open count and request rate from the counters, the
    /// thresholds, auto mode's switch, and the state written back (`tracked`: the table held
    /// entries at this tick's walk).
    fn evaluate(&mut self, now: u64, mut t: Tick, tracked: bool) -> anyhow::Result<Tick> {
        let w = self.wmaps.watch()?;
        let aggressive = self.maps.config()?.aggressive != 0;
        // Exact counts from the counters; the request rate over the window from samples of the
        // protected-SYN counter (which both modes advance).
        let c = self.wmaps.counters()?;
        t.half_open = half_open_count(&c);
        let requests = c.get(Counter::SynProtected);
        let window_ns = u64::from(if w.rate_window_s == 0 {
            60
        } else {
            w.rate_window_s
        }) * 1_000_000_000;
        self.samples.push_back((now, requests));
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|(ts, _)| now - ts > window_ns)
        {
            self.samples.pop_front();
        }
        t.one_minute = requests - self.samples.front().map_or(requests, |(_, r)| *r);
        let (agg, cause) = evaluate(
            &w,
            aggressive,
            u32::try_from(t.half_open).unwrap_or(u32::MAX),
            u32::try_from(t.one_minute).unwrap_or(u32::MAX),
        );
        t.aggressive = agg;
        // Written back onto fresh copies under the settings lock, changing only what the tick
        // decides: a tick can take a good part of a second with a full table, and the
        // operator's `thresholds`, `mode` or `scope` written meanwhile must not be undone.
        let _lock = self.maps.lock()?;
        let mut cfg = self.maps.config()?;
        let mut w = self.wmaps.watch()?;
        let mode = Mode::from_u32(cfg.mode);
        let mut cfg_changed = false;
        if let Some(cause) = cause {
            t.transition = Some((agg, cause.name()));
            w.last_transition_ns = now;
            w.last_cause = cause as u32;
            cfg.aggressive = u32::from(agg);
            if mode == Mode::Auto {
                // `set_config` ensures what intercept mode needs on the way in (tcp_syncookies)
                // and the cookie grace period on the way out.
                cfg.active = if agg {
                    Mode::Intercept as u32
                } else {
                    Mode::Watch as u32
                };
            }
            cfg_changed = true;
        }
        let tracking = tracked || t.half_open > 0;
        if tracking != (cfg.flags & flags::TRACKING != 0) {
            cfg.flags ^= flags::TRACKING;
            cfg_changed = true;
        }
        if cfg_changed {
            self.maps.set_config(&cfg)?;
        }
        w.half_open = u32::try_from(t.half_open).unwrap_or(u32::MAX);
        w.one_minute = u32::try_from(t.one_minute).unwrap_or(u32::MAX);
        w.aggressive = u32::from(agg);
        self.wmaps.set_watch(&w)?;
        Ok(t)
    }

    /// Closes on the server the victims the data path queued in CLOSING, each once both it and
    /// the gate (the data path looking untracked flows up in CLOSING and dropping their ACKs)
    /// have been there `CLOSE_GRACE_NS`, and forgets them. Keeps the gate open while victims
    /// wait, and closes it once there are none.
    fn close_victims(&mut self, now: u64, t: &mut Tick) -> anyhow::Result<()> {
        let queued: Vec<(FlowKey, u64)> = crate::batch::entries(self.wmaps.closing.map())?;
        let gate = self.wmaps.closing_gate.get(&0, 0)? != 0;
        if queued.is_empty() {
            if gate {
                self.set_gate(0)?;
            }
            self.gate_since = None;
            return Ok(());
        }
        if !gate {
            // Cleared by the previous tick after a victim was queued: open now, grace anew.
            self.set_gate(1)?;
            self.gate_since = None;
        }
        let since = *self.gate_since.get_or_insert(now);
        for (key, at) in queued {
            if now.saturating_sub(at.max(since)) < CLOSE_GRACE_NS {
                continue;
            }
            if self.diag.close_half_open(&key)? {
                t.victims_closed += 1;
            }
            let _ = self.wmaps.closing.remove(&key);
        }
        Ok(())
    }

    /// A gateway's tick: ends the handshakes past the timeout, marked closing, or queued as
    /// victims with two resets each (see [`crate::gateway::resets`]) and untracks them; frees
    /// idle spliced connections once a second.
    /// Returns whether the half-open table held entries.
    fn gateway_tick(&mut self, now: u64, t: &mut Tick) -> anyhow::Result<bool> {
        let w = self.wmaps.watch()?;
        let aggressive = self.maps.config()?.aggressive != 0;
        let timeout_ns = u64::from(w.timeout_ms) * 1_000_000 / if aggressive { 2 } else { 1 };
        let entries: Vec<(FlowKey, HalfOpen)> = crate::batch::entries(self.wmaps.half_open.map())?;
        let mut ended = Vec::new();
        for (key, e) in &entries {
            if e.closing != 0 || now.saturating_sub(e.first_seen_ns) >= timeout_ns {
                ended.push((*key, *e, Counter::HalfOpenTimedOut));
            }
        }
        // Victims the data path queued: reset only if their numbers are still tracked (see
        // `intercept_common::maps::CLOSING`); no grace, as no ACK can complete a handshake both
        // of whose ends were reset.
        let queued: Vec<(FlowKey, u64)> = crate::batch::entries(self.wmaps.closing.map())?;
        let mut unknown = 0;
        for (key, _) in &queued {
            match self.wmaps.half_open.get(key, 0) {
                Ok(e) if !ended.iter().any(|(k, _, _)| k == key) => {
                    ended.push((*key, e, Counter::HalfOpenDropped));
                }
                Ok(_) => {}
                Err(_) => unknown += 1,
            }
            let _ = self.wmaps.closing.remove(key);
        }
        if queued.is_empty() && self.wmaps.closing_gate.get(&0, 0)? != 0 {
            self.set_gate(0)?;
        }
        let gw = self.gateway.as_mut().expect("a gateway's tick");
        let (mut timed_out, mut dropped, mut first_err) = (0, 0, None);
        for (key, e, counter) in ended {
            match crate::gateway::send_resets(&mut gw.sender, &key, &e) {
                Ok(n) => t.resets_sent += n,
                Err((n, err)) => {
                    t.resets_sent += n;
                    t.reset_failures += 1;
                    first_err.get_or_insert(err);
                    // Still tracked: tried again next tick.
                    continue;
                }
            }
            if self.wmaps.half_open.remove(&key).is_ok() {
                if counter == Counter::HalfOpenTimedOut {
                    timed_out += 1;
                } else {
                    dropped += 1;
                }
            }
        }
        if let Some(err) = first_err {
            let (since, n) = gw.said.get_or_insert((0, 0));
            *n += t.reset_failures;
            if *since == 0 || now.saturating_sub(*since) >= SAY_EVERY_NS {
                eprintln!(
                    "intercept-ctl: error: {n} timed-out handshakes could not be reset (they stay \
                     tracked and are tried again): {err:#}"
                );
                gw.said = Some((now, 0));
            }
        }
        gw.unknown_said.1 += unknown;
        let (since, n) = gw.unknown_said;
        if n > 0 && (since == 0 || now.saturating_sub(since) >= SAY_EVERY_NS) {
            eprintln!(
                "intercept-ctl: warning: {n} displaced handshakes were untracked before their \
                 numbers could be read: not reset by the gateway (their servers drop them at \
                 their own SYN-ACK timeout)"
            );
            gw.unknown_said = (now, 0);
        }
        t.timed_out = timed_out;
        t.victims_closed = dropped;
        if now.saturating_sub(gw.last_sweep) >= SWEEP_EVERY_NS {
            gw.last_sweep = now;
            let before = gw.sources.snapshot();
            let (freed, kept) = crate::gateway::sweep_kept(&mut gw.splice, now)?;
            t.freed = freed;
            crate::gateway::sweep_held(&mut gw.held, &gw.splice)?;
            gw.sources.set_from(&before, &kept);
            let r = crate::gateway::resend_syns(&kept, &mut gw.resent, &mut gw.sender, now);
            t.syn_resent = r.sent;
            t.reset_failures += r.failed;
            gw.resend_said.1 += r.failed;
            let (since, n) = gw.resend_said;
            if let Some(err) = r.error
                && (since == 0 || now.saturating_sub(since) >= SAY_EVERY_NS)
            {
                eprintln!(
                    "intercept-ctl: error: {n} SYNs to servers that have not answered could not \
                     be sent again (tried again next second): {err:#}"
                );
                gw.resend_said = (now, 0);
            }
        }
        self.wmaps.bump(Counter::HalfOpenTimedOut, timed_out)?;
        self.wmaps.bump(Counter::HalfOpenDropped, dropped)?;
        self.wmaps.bump(Counter::GwWatchReset, t.resets_sent)?;
        self.wmaps
            .bump(Counter::ControllerErrors, t.reset_failures)?;
        self.wmaps.bump(Counter::GwFreed, t.freed)?;
        self.wmaps.bump(Counter::GwSynResent, t.syn_resent)?;
        Ok(!entries.is_empty())
    }

    fn set_gate(&mut self, v: u64) -> anyhow::Result<()> {
        self.wmaps
            .closing_gate
            .set(0, &v, 0)
            .context("write CLOSING_GATE")
    }
}

/// `BPF_EXIST` (include/uapi/linux/bpf.h): update an existing entry only.
const BPF_EXIST: u64 = 2;

/// The cause's display name.
#[must_use]
pub fn cause_name(v: u32) -> &'static str {
    TransitionCause::from_u32(v).name()
}
