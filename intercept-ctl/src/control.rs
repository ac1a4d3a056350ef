//! Live configuration of an attached interface through its pinned maps: mode, SYN-ACK parameters,
//! cookie secrets, protected scope and exempt sources. Every change is one map update the data
//! path sees on its next packet.
use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, bail, ensure};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, lpm_trie::Key};
use intercept_common::{
    config::{
        AddrKey, Config, FlowKey, Info, Mode, PrefixList, REQUEST_SOCK_LIFETIME_NS, SCOPE_LIST_MAX,
        ScopeEntry, ScopeKey, ScopeList, ScopeValue, SocketTable, flags, table_word,
    },
    cookie::{Key as SipKey, Secrets, ip_of, words_of},
    maps,
};

use crate::{
    errors::{CtlError, explain},
    pins::PinDir,
};

/// A prefix: address and length, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length (0..=32 or 0..=128).
    pub len: u8,
}

impl std::str::FromStr for Prefix {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Prefix> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| {
            anyhow::anyhow!(
                "'{s}' is not an IPv4 or IPv6 address or prefix (e.g. 198.18.0.0/24, 2001:db8::/64)"
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| anyhow::anyhow!("'{s}': prefix length must be 0..={max}"))?,
        };
        Ok(Prefix {
            addr: mask(addr, len),
            len,
        })
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl Prefix {
    /// The address in the data path's word form (IPv4-mapped for IPv4) and its length on 128 bits.
    #[must_use]
    pub fn words(&self) -> ([u32; 4], u32) {
        let bits = if self.addr.is_ipv4() { 96 } else { 0 } + u32::from(self.len);
        (words_of(self.addr), bits)
    }

    fn from_words(w: &[u32; 4], bits: u32) -> Prefix {
        let addr = ip_of(w);
        let len = if addr.is_ipv4() {
            bits.saturating_sub(96)
        } else {
            bits
        };
        Prefix {
            addr,
            len: u8::try_from(len).unwrap_or(128),
        }
    }
}

/// Parses a port list "80,443,8000-8010" (1..=65535; ranges of at most 1024 ports).
///
/// # Errors
/// On port 0, a port over 65535, a reversed or too large range, or junk.
pub fn parse_ports(s: &str) -> anyhow::Result<Vec<u16>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let one = |p: &str| -> anyhow::Result<u16> {
            let v: u32 = p
                .parse()
                .map_err(|_| anyhow::anyhow!("'{p}' is not a port number"))?;
            ensure!(
                (1..=65535).contains(&v),
                "port {v} is out of range: ports are 1-65535"
            );
            Ok(u16::try_from(v)?)
        };
        if let Some((a, b)) = part.split_once('-') {
            let (a, b) = (one(a)?, one(b)?);
            ensure!(a <= b, "port range {part} is reversed");
            ensure!(
                b - a < 1024,
                "port range {part} is larger than 1024 ports; list several ranges"
            );
            out.extend(a..=b);
        } else {
            out.push(one(part)?);
        }
    }
    ensure!(!out.is_empty(), "empty port list");
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The pinned maps of one interface.
pub struct Maps {
    config: Array<MapData, Config>,
    secrets: Array<MapData, Secrets>,
    scope: LpmTrie<MapData, ScopeKey, ScopeValue>,
    scope_hosts: HashMap<MapData, ScopeKey, ScopeValue>,
    scope_list: Array<MapData, ScopeList>,
    exempt_list: Array<MapData, PrefixList>,
    exempt: LpmTrie<MapData, AddrKey, u32>,
    info: Array<MapData, Info>,
    sockets: HashMap<MapData, FlowKey, u32>,
    socket_table: Array<MapData, u64>,
    /// Where the maps are pinned, and for which interface: writes hold its settings lock (see
    /// [`crate::lock`]). `None` for an unpinned object's maps (tests), which nothing else writes.
    pinned: Option<(PinDir, String)>,
    /// The handoff engine of an unpinned object's maps (a pinned attachment's is recorded in its
    /// pin directory).
    engine: crate::engine::Engine,
}

fn open(dir: &Path, name: &str) -> anyhow::Result<MapData> {
    MapData::from_pin(dir.join(name)).map_err(|e| explain(e.into(), &format!("open map {name}")))
}

impl Maps {
    /// Opens the maps pinned for `iface`.
    ///
    /// # Errors
    /// [`CtlError::NotAttached`] if nothing is pinned there.
    pub fn open(iface: &str, netns: Option<&str>) -> anyhow::Result<Maps> {
        let pins = PinDir::new(netns, iface);
        if !pins.map(maps::CONFIG).exists() {
            return Err(CtlError::NotAttached {
                iface: iface.to_owned(),
                pin: pins.path().display().to_string(),
            }
            .into());
        }
        let d = pins.path();
        Ok(Maps {
            config: Array::try_from(Map::Array(open(d, maps::CONFIG)?))
                .map_err(|e| crate::errors::other_build(e, maps::CONFIG))?,
            secrets: Array::try_from(Map::Array(open(d, maps::SECRETS)?))
                .map_err(|e| crate::errors::other_build(e, maps::SECRETS))?,
            scope: LpmTrie::try_from(Map::LpmTrie(open(d, maps::SCOPE)?))?,
            scope_hosts: HashMap::try_from(Map::HashMap(open(d, maps::SCOPE_HOSTS)?))?,
            scope_list: Array::try_from(Map::Array(open(d, maps::SCOPE_LIST)?))
                .map_err(|e| crate::errors::other_build(e, maps::SCOPE_LIST))?,
            exempt_list: Array::try_from(Map::Array(open(d, maps::EXEMPT_LIST)?))
                .map_err(|e| crate::errors::other_build(e, maps::EXEMPT_LIST))?,
            exempt: LpmTrie::try_from(Map::LpmTrie(open(d, maps::EXEMPT)?))?,
            info: Array::try_from(Map::Array(open(d, maps::INFO)?))
                .map_err(|e| crate::errors::other_build(e, maps::INFO))?,
            sockets: HashMap::try_from(Map::HashMap(open(d, maps::SOCKETS)?))?,
            socket_table: Array::try_from(Map::Array(open(d, maps::SOCKET_TABLE)?))
                .map_err(|e| crate::errors::other_build(e, maps::SOCKET_TABLE))?,
            pinned: Some((pins.clone(), iface.to_owned())),
            engine: crate::engine::recorded(&pins),
        })
    }

    /// Takes the maps out of a loaded object (tests drive a loaded, unattached object this way).
    ///
    /// # Errors
    /// If a map is missing or of the wrong type.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> anyhow::Result<Maps> {
        let mut take = |n: &str| ebpf.take_map(n).with_context(|| format!("map {n} missing"));
        Ok(Maps {
            config: Array::try_from(take(maps::CONFIG)?)?,
            secrets: Array::try_from(take(maps::SECRETS)?)?,
            scope: LpmTrie::try_from(take(maps::SCOPE)?)?,
            scope_hosts: HashMap::try_from(take(maps::SCOPE_HOSTS)?)?,
            scope_list: Array::try_from(take(maps::SCOPE_LIST)?)?,
            exempt_list: Array::try_from(take(maps::EXEMPT_LIST)?)?,
            exempt: LpmTrie::try_from(take(maps::EXEMPT)?)?,
            info: Array::try_from(take(maps::INFO)?)?,
            sockets: HashMap::try_from(take(maps::SOCKETS)?)?,
            socket_table: Array::try_from(take(maps::SOCKET_TABLE)?)?,
            pinned: None,
            engine: crate::engine::Engine::Kfunc,
        })
    }

    /// Makes an unpinned object's maps configure the data path for `engine` (tests and
    /// benchmarks drive a loaded, unattached object with either engine).
    pub fn use_engine(&mut self, engine: crate::engine::Engine) {
        self.engine = engine;
    }

    /// Takes the attachment's settings lock (see [`crate::lock`]) until the guard is dropped;
    /// the methods that write take it themselves, this is for a change spanning several.
    ///
    /// # Errors
    /// As [`crate::lock::settings`].
    pub fn lock(&self) -> anyhow::Result<Option<crate::lock::Settings>> {
        self.pinned
            .as_ref()
            .map(|(pins, iface)| crate::lock::settings(pins, iface))
            .transpose()
    }

    /// Reads, changes and writes the configuration under the settings lock, so no other
    /// controller's change made meanwhile is undone; returns what was written (see
    /// [`Maps::set_config`]).
    ///
    /// # Errors
    /// Lock or bpf() failure.
    pub fn update_config(&mut self, f: impl FnOnce(&mut Config)) -> anyhow::Result<Config> {
        let _lock = self.lock()?;
        let mut c = self.config()?;
        f(&mut c);
        self.set_config(&c)?;
        Ok(c)
    }

    /// Replaces the secrets (tests; operators rotate).
    ///
    /// # Errors
    /// bpf() failure.
    pub fn set_secrets(&mut self, s: &Secrets) -> anyhow::Result<()> {
        self.secrets.set(0, s, 0).context("write SECRETS")
    }

    /// The configuration.
    ///
    /// # Errors
    /// bpf() failure.
    pub fn config(&self) -> anyhow::Result<Config> {
        Ok(self.config.get(&0, 0)?)
    }

    /// Replaces the configuration. The flags that say which tries hold entries are recomputed
    /// from the tries, whatever `c` says, so the data path never skips a lookup it needs.
    ///
    /// # Errors
    /// bpf() failure.
    ///
    /// When intercept mode comes into force (from off or watch, or at attach), the data path
    /// asks the kernel's socket table about ACKs failing the cookie for a request socket's lifetime
    /// (`intercept_common::config::REQUEST_SOCK_LIFETIME_NS`): the
    /// kernel's own half-open handshakes (request sockets, absent from the socket table) can
    /// still complete.
    ///
    /// Every writer of the configuration (attach, `mode`, `reload`, the daemon's `auto`
    /// switching) comes through here, so here is where what a mode change needs is ensured:
    /// entering intercept mode sets `net.ipv4.tcp_syncookies` to 1 if it is 0 (the kernel resets
    /// every cookie handshake without it; said on stderr), leaving it keeps verifying our
    /// cookies for [`crate::watchctl::COOKIE_GRACE`] (handshakes in flight still complete).
    pub fn set_config(&mut self, c: &Config) -> anyhow::Result<()> {
        let _lock = self.lock()?;
        let mut c = *c;
        // Intercept mode, and auto mode (which switches to it), need a handoff engine.
        let mode = Mode::from_u32(c.mode);
        if let (Some((pins, iface)), Mode::Intercept | Mode::Auto) = (&self.pinned, mode)
            && !crate::engine::recorded(pins).hands_off()
        {
            return Err(CtlError::NoHandoffEngine {
                mode: mode.name(),
                iface: iface.clone(),
                why: {
                    let kernel = crate::engine::Features::probe();
                    if kernel.engines()[0].hands_off() {
                        "it was attached with `--engine none`".to_owned()
                    } else {
                        kernel.why_none()
                    }
                },
            }
            .into());
        }
        c.flags = (c.flags & !flags::DERIVED) | self.derived_flags()?;
        let pins = self.pinned.as_ref().map(|(p, _)| p.clone());
        let pins = pins.as_ref();
        let engine = self.engine;
        if engine.is_gateway() {
            c.flags |= flags::GATEWAY;
            // The cookie SYN-ACK would agree to ECN with the client, but the server decides
            // whether the connection uses it, after: a gateway offers none (see the README).
            c.flags &= !flags::ECN;
            let forward = pins
                .and_then(crate::gateway::ServerIface::read)
                .map_or(crate::gateway::Forward::Redirect, |s| s.forward);
            if forward == crate::gateway::Forward::Redirect {
                c.flags |= flags::GW_REDIRECT;
            }
        }
        if engine == crate::engine::Engine::KernelCookie {
            // The kernel's cookie: the window scale and SACK the kernel itself will give the
            // connection, whatever an operator asked for.
            c.flags |= flags::KERNEL_COOKIE;
            if !crate::sysctl::sack()? {
                c.flags |= flags::NO_SACK;
            }
            c.wscale = crate::sysctl::kernel_wscale()?;
        }
        let before = self.config()?;
        let (was, is) = (
            Mode::effective(&before) == Mode::Intercept,
            Mode::effective(&c) == Mode::Intercept,
        );
        if is {
            // On every write while intercept mode is in force, not only on the way in: a value
            // someone changed since is set again (and said).
            for msg in crate::sysctl::enter_intercept(pins, engine)? {
                eprintln!("intercept-ctl: {msg}");
            }
        }
        if is && !was {
            let until = crate::watchctl::monotonic_ns() + REQUEST_SOCK_LIFETIME_NS;
            self.set_lookup_until(until.max(self.socket_table()?.lookup_until_ns))?;
        }
        if was && !is {
            c.cookie_grace_until_ns = crate::watchctl::monotonic_ns()
                + u64::try_from(crate::watchctl::COOKIE_GRACE.as_nanos())?;
        }
        self.config.set(0, &c, 0).context("write CONFIG")?;
        if was && !is {
            for msg in crate::sysctl::leave_intercept(pins, engine)? {
                eprintln!("intercept-ctl: {msg}");
            }
        }
        Ok(())
    }

    /// Marks the socket table seeded, once [`crate::loader::seed_sockets`] has seeded it (with
    /// the tracepoint program attached before, so no socket created meanwhile is missed).
    ///
    /// # Errors
    /// bpf() failure.
    pub fn mark_seeded(&mut self) -> anyhow::Result<()> {
        self.socket_table
            .set(table_word::SEEDED, &1, 0)
            .context("write SOCKET_TABLE")
    }

    /// The socket table's state.
    ///
    /// # Errors
    /// bpf() failure.
    pub fn socket_table(&self) -> anyhow::Result<SocketTable> {
        let w = |i| self.socket_table.get(&i, 0).context("read SOCKET_TABLE");
        Ok(SocketTable {
            seeded: w(table_word::SEEDED)? == 1,
            refused: w(table_word::REFUSED)?,
            lookup_until_ns: w(table_word::LOOKUP_UNTIL)?,
        })
    }

    /// Sets until when ACKs failing the cookie are checked against the kernel's sockets (0: the
    /// window ends now; tests use that to stand for a request socket's lifetime gone by).
    ///
    /// # Errors
    /// bpf() failure.
    pub fn set_lookup_until(&mut self, until_ns: u64) -> anyhow::Result<()> {
        self.socket_table
            .set(table_word::LOOKUP_UNTIL, &until_ns, 0)
            .context("write SOCKET_TABLE")
    }

    /// Whether the socket table holds this inbound flow.
    ///
    /// # Errors
    /// bpf() failure other than "absent".
    pub fn socket_known(&self, k: &FlowKey) -> anyhow::Result<bool> {
        match self.sockets.get(k, 0) {
            Ok(_) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The trie-occupancy flags, from the tries themselves; with `SCOPE_LIST`, the list is
    /// written first (the data path reads it as soon as the flag is in the configuration).
    fn derived_flags(&mut self) -> anyhow::Result<u32> {
        let mut f = flags::SCOPE_HOSTS | flags::SCOPE_LIST;
        let mut list = ScopeList::default();
        for k in self.scope.keys() {
            let k = k?;
            let d = k.data();
            if k.prefix_len() != ScopeKey::prefix_len(128) {
                f &= !(flags::SCOPE_HOSTS | flags::SCOPE_LIST);
            } else if let Some(e) = list.entries.get_mut(list.len as usize) {
                *e = ScopeEntry {
                    addr: d.addr(),
                    port: u32::from(d.port()),
                };
                list.len += 1;
            } else {
                f &= !flags::SCOPE_LIST;
            }
            f |= if d.port() == 0 {
                flags::SCOPE_ANY_PORT
            } else {
                flags::SCOPE_PORTS
            };
        }
        let mut exempt = PrefixList::default();
        f |= flags::EXEMPT_LIST;
        for k in self.exempt.keys() {
            let k = k?;
            f |= flags::EXEMPT;
            if !exempt.push(&k.data().words(), k.prefix_len()) {
                f &= !flags::EXEMPT_LIST;
            }
        }
        if f & flags::EXEMPT_LIST != 0 {
            self.exempt_list
                .set(0, &exempt, 0)
                .context("write EXEMPT_LIST")?;
        }
        if f & flags::SCOPE_LIST != 0 {
            debug_assert!(list.len as usize <= SCOPE_LIST_MAX);
            self.scope_list
                .set(0, &list, 0)
                .context("write SCOPE_LIST")?;
        }
        Ok(f)
    }

    /// Re-derives the occupancy flags after a scope or exempt change.
    fn refresh(&mut self) -> anyhow::Result<()> {
        self.update_config(|_| {}).map(|_| ())
    }

    /// Sets the mode.
    ///
    /// # Errors
    /// bpf() failure.
    pub fn set_mode(&mut self, mode: Mode) -> anyhow::Result<()> {
        self.update_config(|c| c.mode = mode as u32).map(|_| ())
    }

    /// The secrets (never printed; `status` shows only their generation).
    ///
    /// # Errors
    /// bpf() failure.
    pub fn secrets(&self) -> anyhow::Result<Secrets> {
        Ok(self.secrets.get(&0, 0)?)
    }

    /// Rotates: a new random secret goes into the slot not in use, which becomes current. Cookies
    /// made with the previous secret keep verifying until the next rotation.
    ///
    /// # Errors
    /// No randomness, or bpf() failure.
    pub fn rotate_secret(&mut self) -> anyhow::Result<u32> {
        let _lock = self.lock()?;
        self.touch_secret_time()?;
        crate::faults::kill_point("rotate:before-secrets");
        let mut s = self.secrets()?;
        let next = (s.current ^ 1) & 1;
        s.keys[next as usize] = random_key()?;
        s.ts_offset[next as usize] = random_ts_offset()?;
        s.current = next;
        s.generation = s.generation.wrapping_add(1);
        self.secrets.set(0, &s, 0).context("write SECRETS")?;
        Ok(s.generation)
    }

    /// Installs two fresh secrets (at attach).
    ///
    /// # Errors
    /// No randomness, or bpf() failure.
    pub fn init_secrets(&mut self) -> anyhow::Result<()> {
        self.touch_secret_time()?;
        let s = Secrets {
            keys: [random_key()?, random_key()?],
            current: 0,
            generation: 1,
            ts_offset: [random_ts_offset()?, random_ts_offset()?],
        };
        self.secrets.set(0, &s, 0).context("write SECRETS")
    }

    /// Attach facts.
    ///
    /// # Errors
    /// bpf() failure.
    pub fn info(&self) -> anyhow::Result<Info> {
        Ok(self.info.get(&0, 0)?)
    }

    /// Records attach facts.
    ///
    /// # Errors
    /// bpf() failure.
    pub fn set_info(&mut self, i: &Info) -> anyhow::Result<()> {
        self.info.set(0, i, 0).context("write INFO")
    }

    fn touch_secret_time(&mut self) -> anyhow::Result<()> {
        let mut i = self.info()?;
        i.secret_set_ns = crate::watchctl::monotonic_ns();
        self.set_info(&i)
    }

    /// Protects `prefix` on `ports` (None: every port).
    ///
    /// # Errors
    /// bpf() failure (e.g. the trie is full).
    pub fn scope_add(&mut self, prefix: &Prefix, ports: Option<&[u16]>) -> anyhow::Result<()> {
        let (w, bits) = prefix.words();
        for port in ports.unwrap_or(&[0]) {
            let key = Key::new(ScopeKey::prefix_len(bits), ScopeKey::new(*port, &w));
            let v = ScopeValue { protect: 1 };
            self.scope
                .insert(&key, &v, 0)
                .with_context(|| format!("add {prefix} port {port} to SCOPE"))?;
            if bits == 128 {
                self.scope_hosts
                    .insert(&key.data(), &v, 0)
                    .with_context(|| format!("add {prefix} port {port} to SCOPE_HOSTS"))?;
            }
        }
        self.refresh()
    }

    /// Removes `prefix` on `ports` (None: the every-port entry).
    ///
    /// # Errors
    /// If an entry does not exist, or bpf() failure.
    pub fn scope_del(&mut self, prefix: &Prefix, ports: Option<&[u16]>) -> anyhow::Result<()> {
        let (w, bits) = prefix.words();
        for port in ports.unwrap_or(&[0]) {
            let key = Key::new(ScopeKey::prefix_len(bits), ScopeKey::new(*port, &w));
            if bits == 128 {
                let _ = self.scope_hosts.remove(&key.data());
            }
            self.scope.remove(&key).map_err(|_| {
                anyhow::anyhow!(
                    "{prefix} port {} is not in the protected scope (see `scope list`)",
                    if *port == 0 {
                        "any".to_owned()
                    } else {
                        port.to_string()
                    }
                )
            })?;
        }
        self.refresh()
    }

    /// Every protected (prefix, port) pair; port 0 means every port.
    ///
    /// # Errors
    /// bpf() failure.
    pub fn scope_list(&self) -> anyhow::Result<Vec<(Prefix, u16)>> {
        let mut out = Vec::new();
        for k in self.scope.keys() {
            let k = k?;
            let d = k.data();
            out.push((Prefix::from_words(&d.addr(), k.prefix_len() - 32), d.port()));
        }
        out.sort_by_key(|(p, port)| (p.to_string(), *port));
        Ok(out)
    }

    /// Exempts a source prefix.
    ///
    /// # Errors
    /// bpf() failure.
    pub fn exempt_add(&mut self, prefix: &Prefix) -> anyhow::Result<()> {
        let (w, bits) = prefix.words();
        self.exempt
            .insert(&Key::new(bits, AddrKey::new(&w)), &1, 0)
            .context("add to EXEMPT")?;
        self.refresh()
    }

    /// Removes an exempt source prefix.
    ///
    /// # Errors
    /// If it is not there.
    pub fn exempt_del(&mut self, prefix: &Prefix) -> anyhow::Result<()> {
        let (w, bits) = prefix.words();
        self.exempt
            .remove(&Key::new(bits, AddrKey::new(&w)))
            .map_err(|_| anyhow::anyhow!("{prefix} is not exempt (see `exempt list`)"))?;
        self.refresh()
    }

    /// Every exempt source prefix.
    ///
    /// # Errors
    /// bpf() failure.
    pub fn exempt_list(&self) -> anyhow::Result<Vec<Prefix>> {
        let mut out = Vec::new();
        for k in self.exempt.keys() {
            let k = k?;
            out.push(Prefix::from_words(&k.data().words(), k.prefix_len()));
        }
        out.sort_by_key(ToString::to_string);
        Ok(out)
    }
}

/// A fresh 128-bit SipHash key from the kernel's CSPRNG.
///
/// # Errors
/// If getrandom fails.
pub fn random_key() -> anyhow::Result<SipKey> {
    let mut b = [0u8; 16];
    let n = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
        .map_err(std::io::Error::from)
        .context("getrandom")?;
    if n != b.len() {
        bail!("getrandom returned {n} of 16 bytes");
    }
    Ok(SipKey {
        k: [
            u64::from_le_bytes(b[..8].try_into()?),
            u64::from_le_bytes(b[8..].try_into()?),
        ],
    })
}

/// A random TSval offset for a new secret (see `Secrets::ts_offset`).
///
/// # Errors
/// No randomness.
pub fn random_ts_offset() -> anyhow::Result<u32> {
    // 32 random bits from a fresh key's material.
    Ok(random_key()?.k[0] as u32)
}

/// A fresh metadata tag for an attachment (see `Config::meta_tag`): random, never 0 nor the
/// default one.
///
/// # Errors
/// If getrandom fails.
pub fn random_meta_tag() -> anyhow::Result<u32> {
    loop {
        let t = random_key()?.k[1] as u32;
        if t != 0 && t != intercept_common::config::HANDOFF_MAGIC {
            return Ok(t);
        }
    }
}

/// The interface's MTU (in the current network namespace).
///
/// # Errors
/// If the ioctl fails.
pub fn mtu(iface: &str) -> anyhow::Result<u32> {
    use rustix::{
        ioctl::{Updater, ioctl},
        net::{AddressFamily, SocketType, socket},
    };
    const SIOCGIFMTU: rustix::ioctl::Opcode = libc::SIOCGIFMTU as rustix::ioctl::Opcode;
    let fd = socket(AddressFamily::INET, SocketType::DGRAM, None)
        .map_err(std::io::Error::from)
        .context("socket")?;
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    ensure!(
        iface.len() < req.ifr_name.len(),
        "interface name too long: {iface}"
    );
    for (i, b) in iface.bytes().enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the name and writes the MTU of the ifreq it is given.
    unsafe { ioctl(&fd, Updater::<SIOCGIFMTU, libc::ifreq>::new(&mut req)) }
        .map_err(std::io::Error::from)
        .with_context(|| format!("SIOCGIFMTU {iface}"))?;
    // SAFETY: the kernel filled the MTU member.
    Ok(u32::try_from(unsafe { req.ifr_ifru.ifru_mtu })?)
}
