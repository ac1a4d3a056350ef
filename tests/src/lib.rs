//! Helpers for the privileged tests: the root check (a test that lacks privileges fails, never
//! skips), the real intercept-ctl binary, counter deltas, and running the real object with
//! BPF_PROG_TEST_RUN.
use std::{
    path::PathBuf,
    process::{Command, Output},
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp},
};
use intercept_common::{Counter, maps};
use intercept_ctl::stats::{Counters, read_map};

pub mod framegen;
pub mod model;

/// Fails the test (never skips it) unless it runs as root: BPF and network namespaces need it.
///
/// # Panics
/// When not root, with what to do.
pub fn require_root(test: &str) {
    // SAFETY: geteuid has no failure mode.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "{test} needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for network namespaces and \
         bpffs); run `sudo ./x test`. It fails rather than skips so CI cannot pass without it."
    );
}

/// The intercept-ctl binary of this build (`./x test` builds it first): `$INTERCEPT_CTL`, or the
/// first `intercept-ctl` in a directory above this test executable (target/<profile>/).
///
/// # Panics
/// If it was not built.
#[must_use]
pub fn ctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("INTERCEPT_CTL") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .skip(1)
        .map(|d| d.join("intercept-ctl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no intercept-ctl above {}; run `./x test` (it builds intercept-ctl first)",
                exe.display()
            )
        })
}

/// What a command wrote on stderr.
#[must_use]
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs intercept-ctl with `args`.
///
/// # Panics
/// If it cannot be started.
#[must_use]
pub fn ctl(args: &[&str]) -> Output {
    Command::new(ctl_bin())
        .args(args)
        .output()
        .expect("run intercept-ctl")
}

/// Runs intercept-ctl and expects success; returns stdout.
///
/// # Panics
/// If it fails, with its stderr.
#[must_use]
pub fn ctl_ok(args: &[&str]) -> String {
    let out = ctl(args);
    assert!(
        out.status.success(),
        "intercept-ctl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 stdout")
}

/// The counters in `stats --json` output.
///
/// # Panics
/// If the JSON does not match the schema.
#[must_use]
pub fn counters_from_json(stdout: &str) -> Vec<(Counter, u64)> {
    let v: serde_json::Value = serde_json::from_str(stdout).expect("stats --json is JSON");
    let obj = v["counters"]
        .as_object()
        .expect("stats --json has a counters object");
    assert_eq!(
        obj.len(),
        Counter::ALL.len(),
        "stats --json lists every counter: {obj:?}"
    );
    Counter::ALL
        .iter()
        .map(|c| {
            (
                *c,
                obj.get(c.name())
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or_else(|| panic!("counter {} missing", c.name())),
            )
        })
        .collect()
}

/// The real embedded object, loaded, with its main XDP program loaded (not attached).
pub struct Loaded {
    /// The object.
    pub ebpf: Ebpf,
}

impl Loaded {
    /// Loads the object and the named XDP programs.
    ///
    /// # Panics
    /// If the kernel refuses them (the verifier log is in the message).
    #[must_use]
    pub fn new(progs: &[&str]) -> Loaded {
        let mut ebpf = intercept_ctl::loader::load_object().expect("load the eBPF object");
        for name in progs {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .expect("program in object")
                .try_into()
                .expect("XDP program");
            p.load().unwrap_or_else(|e| panic!("load {name}: {e:?}"));
        }
        Loaded { ebpf }
    }

    /// The counters, summed over CPUs.
    ///
    /// # Panics
    /// If the map cannot be read.
    #[must_use]
    pub fn counters(&self) -> Counters {
        let map = self.ebpf.map(maps::COUNTERS).expect("COUNTERS map");
        let arr: PerCpuArray<&MapData, intercept_common::maps::CounterBlock> =
            PerCpuArray::try_from(map).expect("per-CPU array");
        read_map(&arr).expect("read counters")
    }

    /// The loaded XDP program `prog`.
    fn xdp(&self, prog: &str) -> &Xdp {
        self.ebpf
            .program(prog)
            .expect("program in the object")
            .try_into()
            .expect("an XDP program")
    }

    /// Runs `prog` once on `frame`; returns (verdict, output frame).
    ///
    /// # Errors
    /// The kernel's error (e.g. EINVAL for a frame shorter than an Ethernet header).
    ///
    /// # Panics
    /// If the program is missing from the object or is not XDP.
    pub fn run(&self, prog: &str, frame: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
        let p = self.xdp(prog);
        let mut out = vec![0u8; frame.len() + 512];
        let r = p.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }
}

impl Loaded {
    /// Runs `prog` once on `frame` arriving with `meta` as XDP metadata already (as a frame
    /// another program redirected here keeps its own); returns (verdict, output with its
    /// metadata in front).
    ///
    /// # Errors
    /// The kernel's error.
    ///
    /// # Panics
    /// If the program is missing from the object or is not XDP, or the metadata is longer than 4 GiB.
    pub fn run_with_meta(
        &self,
        prog: &str,
        meta: &[u8],
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), ProgramError> {
        let p = self.xdp(prog);
        let input = [meta, frame].concat();
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. For a test run, `data` is where the frame starts after the metadata.
        let md: [u32; 6] = [
            u32::try_from(meta.len()).expect("short"),
            u32::try_from(input.len()).expect("short"),
            0,
            0,
            0,
            0,
        ];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = vec![0u8; input.len() + 512];
        let r = p.test_run(TestRunOptions {
            data_in: Some(&input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// Runs `prog` once on `frame` and checks the verdict and that exactly `counters` moved, each
    /// by one (nothing else); returns the output frame. `what` names the fixture in failures.
    ///
    /// # Panics
    /// On a test_run failure or any mismatch.
    #[must_use]
    pub fn run_expect(
        &self,
        prog: &str,
        what: &str,
        frame: &[u8],
        verdict: u32,
        counters: &[Counter],
    ) -> Vec<u8> {
        let before = self.counters();
        let (v, out) = self
            .run(prog, frame)
            .unwrap_or_else(|e| panic!("{what}: test_run: {e:?}"));
        let mut want: Vec<(Counter, u64)> = counters.iter().map(|c| (*c, 1)).collect();
        want.sort_by_key(|(c, _)| *c as u32);
        assert_eq!(
            deltas(&before, &self.counters()),
            want,
            "{what}: counter deltas"
        );
        assert_eq!(v, verdict, "{what}: verdict");
        out
    }
}

/// Counter deltas between two readings, only the non-zero ones.
#[must_use]
pub fn deltas(before: &Counters, after: &Counters) -> Vec<(Counter, u64)> {
    Counter::ALL
        .iter()
        .map(|c| (*c, after.get(*c) - before.get(*c)))
        .filter(|(_, d)| *d != 0)
        .collect()
}

/// Closes `s` with SO_LINGER 0, so the kernel sends one RST instead of a FIN exchange.
///
/// # Panics
/// If setsockopt fails.
#[allow(
    clippy::needless_pass_by_value,
    reason = "taking the stream is the point: it is closed here"
)]
pub fn abort(s: std::net::TcpStream) {
    use std::os::fd::AsRawFd as _;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket and option buffer of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            u32::try_from(size_of::<libc::linger>()).unwrap(),
        )
    };
    assert_eq!(rc, 0, "SO_LINGER 0: {}", std::io::Error::last_os_error());
}

/// A lab whose server end runs the intercept program (attached with the real binary) protecting
/// port `port` on the server's IPv4 and IPv6 addresses, and whose client end runs the
/// pass-through program (veth drops XDP_TX frames unless the peer has XDP), on a veth pair
/// configured like a NIC (see `Lab::new`), where the races a NIC exposes show. Detaches on drop.
pub struct InterceptLab {
    /// The namespaces and veth.
    pub lab: intercept_ctl::lab::Lab,
    /// Protected port.
    pub port: u16,
}

impl InterceptLab {
    /// Builds it.
    ///
    /// # Panics
    /// On any set-up failure.
    #[must_use]
    pub fn new(port: u16) -> InterceptLab {
        InterceptLab::attached(port, &[])
    }

    /// [`InterceptLab::new`] attached in watch mode (`attach --mode watch`), which needs no
    /// handoff engine: watch mode's tests run on kernels without one (before 6.9).
    ///
    /// # Panics
    /// On any set-up failure.
    #[must_use]
    pub fn watching(port: u16) -> InterceptLab {
        InterceptLab::attached(port, &["--mode", "watch"])
    }

    /// [`InterceptLab::new`] with more arguments to `attach` (`--engine kernel-cookie`, say).
    ///
    /// # Panics
    /// On any set-up failure.
    #[must_use]
    pub fn attached(port: u16, attach_args: &[&str]) -> InterceptLab {
        let lab = intercept_ctl::lab::Lab::new().expect("lab");
        let l = InterceptLab { lab, port };
        let p = port.to_string();
        let mut attach = vec!["--netns", l.srv(), "attach", l.srv_if()];
        attach.extend_from_slice(attach_args);
        let engine = test_engine();
        if let Some(e) = &engine
            && !attach_args.contains(&"--engine")
        {
            attach.extend_from_slice(&["--engine", e]);
        }
        let _ = ctl_ok(&attach);
        let _ = ctl_ok(&[
            "--netns",
            l.lab.client.name(),
            "attach",
            &l.lab.veth.b,
            "--program",
            "pass",
        ]);
        for prefix in ["198.18.0.1/32", "2001:db8::1/128"] {
            let _ = ctl_ok(&[
                "--netns",
                l.srv(),
                "scope",
                "add",
                l.srv_if(),
                prefix,
                "--ports",
                &p,
            ]);
        }
        l
    }

    /// [`InterceptLab::new`] with an echo server on `port` (IPv4 and IPv6) in the server
    /// namespace.
    ///
    /// # Panics
    /// On any set-up failure.
    #[must_use]
    pub fn echoing(port: u16) -> InterceptLab {
        let t = InterceptLab::new(port);
        let (l4, l6) = t.lab.listen(port).expect("listen");
        echo_server(l4);
        echo_server(l6);
        t
    }

    /// Attaches the pass-through program to the client's end again, after the veth was
    /// re-created (its old pins are dead: detached first). The test's own plumbing: veth drops
    /// the frames XDP sends back unless the peer runs XDP.
    ///
    /// # Panics
    /// If intercept-ctl fails.
    pub fn reattach_client_pass(&self) {
        let b = self.lab.veth.b.as_str();
        let _ = ctl_ok(&["--netns", self.lab.client.name(), "detach", b]);
        let _ = ctl_ok(&[
            "--netns",
            self.lab.client.name(),
            "attach",
            b,
            "--program",
            "pass",
        ]);
    }

    /// Server namespace name.
    #[must_use]
    pub fn srv(&self) -> &str {
        self.lab.server.name()
    }

    /// Server interface.
    #[must_use]
    pub fn srv_if(&self) -> &str {
        &self.lab.veth.a
    }

    /// The server side's counters (`stats --json`).
    #[must_use]
    pub fn stats(&self) -> Counters {
        Counters(counters_from_json(&ctl_ok(&[
            "--netns",
            self.srv(),
            "--json",
            "stats",
            self.srv_if(),
        ])))
    }

    /// [`end_lookup_window`] on the server interface's pinned maps.
    ///
    /// # Panics
    /// As [`end_lookup_window`].
    pub fn end_lookup_window(&self) {
        end_lookup_window(
            &mut intercept_ctl::control::Maps::open(self.srv_if(), Some(self.srv())).expect("maps"),
        );
    }

    /// intercept-ctl with `--netns <server>` prepended; fails the test if it fails. Returns
    /// stdout (often ignored: many calls are made for their effect).
    #[allow(
        clippy::must_use_candidate,
        reason = "most calls are made for their effect"
    )]
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut a = vec!["--netns", self.srv()];
        a.extend_from_slice(args);
        ctl_ok(&a)
    }
}

impl Drop for InterceptLab {
    fn drop(&mut self) {
        let _ = ctl(&[
            "--netns",
            self.lab.server.name(),
            "detach",
            &self.lab.veth.a,
        ]);
        let _ = ctl(&[
            "--netns",
            self.lab.client.name(),
            "detach",
            &self.lab.veth.b,
        ]);
    }
}

/// A gateway lab ([`intercept_ctl::gwlab::GatewayLab`]) whose gateway runs gateway mode
/// (`attach CLIENT_IF --gateway SERVER_IF`, attached with the real binary) protecting port
/// `port` on the server's IPv4 and IPv6 addresses, and whose client and server ends run the
/// pass-through program (a veth drops the frames XDP sends or redirects into it unless its peer
/// runs XDP). Detaches everything on drop.
pub struct GatewayTest {
    /// The namespaces and veth pairs.
    pub lab: intercept_ctl::gwlab::GatewayLab,
    /// Protected port.
    pub port: u16,
}

impl GatewayTest {
    /// Builds it in intercept mode (the attachment's default).
    ///
    /// # Panics
    /// On any set-up failure, with intercept-ctl's stderr.
    #[must_use]
    pub fn new(port: u16) -> GatewayTest {
        GatewayTest::attached(port, &[])
    }

    /// [`GatewayTest::new`] with more arguments to `attach` (`--mode watch`, say).
    ///
    /// # Panics
    /// On any set-up failure, with intercept-ctl's stderr.
    #[must_use]
    pub fn attached(port: u16, attach_args: &[&str]) -> GatewayTest {
        let lab = intercept_ctl::gwlab::GatewayLab::new().expect("gateway lab");
        let t = GatewayTest { lab, port };
        for (ns, dev) in [
            (&t.lab.client, t.lab.client_if()),
            (&t.lab.server, t.lab.server_if()),
        ] {
            let _ = ctl_ok(&["--netns", ns.name(), "attach", dev, "--program", "pass"]);
        }
        let mut attach = vec![
            "--netns",
            t.gw(),
            "attach",
            t.gw_if(),
            "--gateway",
            t.lab.gateway_server_if(),
        ];
        attach.extend_from_slice(attach_args);
        let _ = ctl_ok(&attach);
        let p = port.to_string();
        for prefix in ["198.18.20.2/32", "2001:db8:20::2/128"] {
            t.ctl(&["scope", "add", t.gw_if(), prefix, "--ports", &p]);
        }
        t
    }

    /// [`GatewayTest::new`] with an echo server on `port` (IPv4 and IPv6) in the server
    /// namespace.
    ///
    /// # Panics
    /// On any set-up failure.
    #[must_use]
    pub fn echoing(port: u16, attach_args: &[&str]) -> GatewayTest {
        let t = GatewayTest::attached(port, attach_args);
        let (l4, l6) = t.lab.listen(port).expect("listen");
        echo_server(l4);
        echo_server(l6);
        t
    }

    /// Gateway namespace name.
    #[must_use]
    pub fn gw(&self) -> &str {
        self.lab.gateway.name()
    }

    /// The gateway's client-facing interface: the attachment's name in every command.
    #[must_use]
    pub fn gw_if(&self) -> &str {
        self.lab.gateway_client_if()
    }

    /// The server's address of `v6`'s family on the protected port.
    #[must_use]
    pub fn target(&self, v6: bool) -> std::net::SocketAddr {
        intercept_ctl::gwlab::GatewayLab::server_addr(v6, self.port)
    }

    /// The gateway's counters (`stats --json CLIENT_IF`).
    #[must_use]
    pub fn stats(&self) -> Counters {
        Counters(counters_from_json(&self.ctl(&[
            "--json",
            "stats",
            self.gw_if(),
        ])))
    }

    /// intercept-ctl with `--netns <gateway>` prepended; fails the test if it fails. Returns
    /// stdout.
    #[allow(
        clippy::must_use_candidate,
        reason = "most calls are made for their effect"
    )]
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut a = vec!["--netns", self.gw()];
        a.extend_from_slice(args);
        ctl_ok(&a)
    }
}

impl Drop for GatewayTest {
    fn drop(&mut self) {
        let _ = ctl(&["--netns", self.gw(), "detach", self.gw_if()]);
        for (ns, dev) in [
            (&self.lab.client, self.lab.client_if()),
            (&self.lab.server, self.lab.server_if()),
        ] {
            let _ = ctl(&["--netns", ns.name(), "detach", dev]);
        }
    }
}

/// The current cookie slot, from CLOCK_MONOTONIC (the clock of `bpf_ktime_get_coarse_ns`, which the data path reads).
///
/// # Panics
/// If the clock cannot be read.
#[must_use]
pub fn now_slot() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    intercept_common::cookie::slot_of(
        u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap(),
    )
}

/// Fixed secrets for tests and benchmarks.
#[must_use]
pub fn test_secrets() -> intercept_common::cookie::Secrets {
    use intercept_common::cookie::{Key, Secrets};
    Secrets {
        keys: [
            Key {
                k: [0x1111, 0x2222],
            },
            Key {
                k: [0x3333, 0x4444],
            },
        ],
        current: 0,
        generation: 1,
        ts_offset: [0x0123_4567, 0x89ab_cdef],
    }
}

/// Puts a loaded object in intercept mode with [`test_secrets`], protecting 198.18.0.1/32 and
/// 2001:db8::1/128 on every port and exempting 198.18.0.77; returns its maps.
///
/// # Panics
/// If a map write fails.
#[must_use]
pub fn configure_intercept(obj: &mut Loaded) -> intercept_ctl::control::Maps {
    use intercept_common::config::{Config, Mode};
    use intercept_ctl::control::{Maps, Prefix};
    let mut maps = Maps::from_ebpf(&mut obj.ebpf).expect("maps");
    maps.set_config(&Config {
        mode: Mode::Intercept as u32,
        ..Config::default()
    })
    .unwrap();
    maps.set_secrets(&test_secrets()).unwrap();
    for p in ["198.18.0.1/32", "2001:db8::1/128"] {
        maps.scope_add(&p.parse::<Prefix>().unwrap(), None).unwrap();
    }
    maps.exempt_add(&"198.18.0.77/32".parse::<Prefix>().unwrap())
        .unwrap();
    maps
}

/// Attaches the socket-table tracepoint program of `obj`, seeds the table from this namespace's
/// sockets and ends the lookup window, as an attachment does (the window is cleared so the table
/// is authoritative at once). Keep the returned link: dropping it detaches the program.
///
/// # Panics
/// On any failure.
pub fn start_socket_table(
    obj: &mut Loaded,
    maps: &mut intercept_ctl::control::Maps,
) -> aya::programs::links::FdLink {
    let link = intercept_ctl::loader::attach_socket_tracker(&mut obj.ebpf).expect("tracepoint");
    intercept_ctl::loader::seed_sockets(&mut obj.ebpf).expect("seed");
    maps.mark_seeded().expect("mark seeded");
    end_lookup_window(maps);
    link
}

/// Ends the lookup window that opened when intercept mode came into force (as 75 s without
/// kernel handshakes would): from then on the socket table alone decides ACKs failing the cookie.
///
/// # Panics
/// If the maps cannot be written, or the table is still not authoritative.
pub fn end_lookup_window(maps: &mut intercept_ctl::control::Maps) {
    maps.set_lookup_until(0).unwrap();
    assert!(
        maps.socket_table()
            .unwrap()
            .authoritative(intercept_ctl::watchctl::monotonic_ns())
    );
}

/// A TCP connection from `client` to `server`:`port` (addresses already on this namespace).
///
/// # Panics
/// If it cannot connect.
#[must_use]
pub fn connect_from(
    client: std::net::IpAddr,
    server: std::net::IpAddr,
    port: u16,
) -> std::net::TcpStream {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(std::net::SocketAddr::new(client, 0)),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    s.bind(&std::net::SocketAddr::new(client, 0).into())
        .expect("bind");
    s.connect(&std::net::SocketAddr::new(server, port).into())
        .expect("connect");
    s.into()
}

/// A `intercept-ctl run` daemon for the lab's server interface, stopped with SIGTERM on drop.
pub struct Daemon {
    child: std::process::Child,
    /// Set once the child was waited for (its pid may be reused: never signal it again).
    reaped: bool,
}

impl Daemon {
    /// Starts it (it adopts the attachment; `--keep` so stopping it leaves protection running).
    ///
    /// # Panics
    /// If it cannot be started or dies at once.
    #[must_use]
    pub fn start(netns: &str, iface: &str) -> Daemon {
        Daemon::start_with(netns, iface, &[])
    }

    /// As [`Daemon::start`], with more arguments for `run`.
    ///
    /// # Panics
    /// If it cannot be started or dies at once.
    #[must_use]
    pub fn start_with(netns: &str, iface: &str, extra: &[&str]) -> Daemon {
        Daemon::start_env(netns, iface, extra, &[])
    }

    /// As [`Daemon::start_with`], with environment variables (fault injection).
    ///
    /// # Panics
    /// If it cannot be started or dies at once.
    #[must_use]
    pub fn start_env(netns: &str, iface: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let child = std::process::Command::new(ctl_bin())
            .args(["--netns", netns, "run", iface, "--quiet", "--keep"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start intercept-ctl run");
        let mut d = Daemon {
            child,
            reaped: false,
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        if let Ok(Some(status)) = d.child.try_wait() {
            let mut err = String::new();
            use std::io::Read as _;
            let _ = d
                .child
                .stderr
                .take()
                .map(|mut e| e.read_to_string(&mut err));
            panic!("intercept-ctl run exited at once ({status}): {err}");
        }
        d
    }

    /// Its pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it with SIGTERM; returns its exit status and what it wrote on stderr.
    ///
    /// # Panics
    /// If it cannot be reaped.
    #[must_use]
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(i32::try_from(self.child.id()).unwrap_or(0), libc::SIGTERM) };
        self.reap()
    }

    /// Waits up to `timeout` for it to exit by itself: its exit status and stderr, or `None` if
    /// it still runs (it is then stopped on drop).
    ///
    /// # Panics
    /// If it cannot be waited for.
    #[must_use]
    pub fn exited_within(
        &mut self,
        timeout: std::time::Duration,
    ) -> Option<(std::process::ExitStatus, String)> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().expect("try_wait").is_some() {
                return Some(self.reap());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    fn reap(&mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read as _;
        let status = self.child.wait().expect("wait for intercept-ctl run");
        self.reaped = true;
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }

    /// Sends `sig` and reaps the process (SIGKILL: no cleanup runs).
    pub fn signal(mut self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(i32::try_from(self.child.id()).unwrap_or(0), sig) };
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(i32::try_from(self.child.id()).unwrap_or(0), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// `n` requests of `shape` to `target` from the lab's client (see `Lab::requests`: connect, the
/// request right after, the echo); fails the test unless every one was answered within 2 s
/// without a single retransmission by the client. What a legitimate client experiences, not
/// only whether it connected.
///
/// # Panics
/// As said, with the latency figures.
#[allow(
    clippy::must_use_candidate,
    reason = "most callers want only its assertions"
)]
pub fn answered_first_time(
    t: &InterceptLab,
    what: &str,
    target: std::net::SocketAddr,
    shape: intercept_ctl::lab::Shape,
    n: usize,
) -> intercept_ctl::lab::Requests {
    let r = t
        .lab
        .requests(target, shape, n, std::time::Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{what}: requests to {target}: {e:#}"));
    assert_eq!(
        r.failures, 0,
        "{what}, {target}, {shape:?}: {} of {n} requests unanswered within 2 s (first: {:?})",
        r.failures, r.first_error
    );
    assert_eq!(
        r.retrans,
        intercept_ctl::lab::TcpRetrans::default(),
        "{what}, {target}, {shape:?}: the client retransmitted (request latency median {:?}, p90 \
         {:?}, p99 {:?}; {} of {n} over 100 ms)",
        r.median(),
        r.percentile(90),
        r.percentile(99),
        r.latencies.iter().filter(|l| l.as_millis() > 100).count()
    );
    r
}

/// How much slower than this machine the tests run: `INTERCEPT_TEST_TIME_SCALE` (an integer; 1
/// if unset), which `./x vm-test` sets to 5 in a guest emulated without KVM, where everything
/// (a `status` call, a flood's sending) takes several times longer. Only the tests' own waiting
/// limits scale, never a timeout of the product under test.
#[must_use]
pub fn time_scale() -> u32 {
    std::env::var("INTERCEPT_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// `d` times [`time_scale`].
#[must_use]
pub fn scaled(d: std::time::Duration) -> std::time::Duration {
    d * time_scale()
}

/// The handoff engine the labs attach with when a test names none: `INTERCEPT_TEST_ENGINE`
/// (`kfunc`, `kernel-cookie`), else the best the kernel has. `./x test` runs the intercept-mode
/// tests once more with `kernel-cookie`, the engine of kernels before 6.9.
#[must_use]
pub fn test_engine() -> Option<String> {
    std::env::var("INTERCEPT_TEST_ENGINE")
        .ok()
        .filter(|e| !e.is_empty())
}

/// Whether the labs of this run use the kernel-cookie engine (forced, or the best the kernel
/// has): it counts no handoff of its own (`handed_off`), the listener completes the handshake.
#[must_use]
pub fn kernel_cookie_engine() -> bool {
    test_engine().map_or_else(
        || {
            intercept_ctl::engine::Features::probe().engines()[0]
                == intercept_ctl::engine::Engine::KernelCookie
        },
        |e| e == "kernel-cookie",
    )
}

/// What [`flood_while_connecting`] saw.
#[derive(Debug)]
pub struct FloodRun {
    /// Flood frames sent.
    pub sent: u64,
    /// Legitimate connections that connected and were echoed.
    pub ok: usize,
    /// Legitimate connections tried.
    pub tried: usize,
    /// The most SYN_RECV entries seen in the server's socket table meanwhile.
    pub max_synq: usize,
    /// The server's counters over the run.
    pub delta: Counters,
}

/// A bounded spoofed flood of segments with `flags` to `target` (30,000 frames, 8 s at most)
/// while a real client connects and pings, alternately over IPv4 and IPv6 to `target`'s port,
/// until the flood ends (and at least 10 times). Panics naming `what` if a legitimate connection
/// fails.
///
/// # Panics
/// As said, or on any set-up failure.
#[must_use]
pub fn flood_while_connecting(
    t: &InterceptLab,
    target: std::net::SocketAddr,
    flags: u8,
    what: &str,
) -> FloodRun {
    use intercept_ctl::lab::{FloodSpec, SERVER_V4, SERVER_V6, flood, syn_recv_count};
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let before = t.stats();
    let sender = t.lab.raw_sender().expect("raw sender");
    let spec = FloodSpec {
        target,
        count: 30_000,
        max_time: std::time::Duration::from_secs(8),
        rate: 0,
        flags,
        payload: 0,
    };
    let running = Arc::new(AtomicBool::new(true));
    let r = running.clone();
    let flooder = std::thread::spawn(move || {
        let n = flood(&sender, spec);
        r.store(false, Ordering::Relaxed);
        n
    });
    let (mut ok, mut max_synq, mut tried) = (0, 0, 0);
    let start = std::time::Instant::now();
    while (running.load(Ordering::Relaxed) || tried < 10)
        && start.elapsed() < std::time::Duration::from_secs(20)
    {
        tried += 1;
        let ip = if tried % 2 == 0 {
            std::net::IpAddr::V4(SERVER_V4)
        } else {
            std::net::IpAddr::V6(SERVER_V6)
        };
        let to = std::net::SocketAddr::new(ip, target.port());
        let mut c = t
            .lab
            .connect(to, std::time::Duration::from_secs(3))
            .unwrap_or_else(|e| {
                panic!("{what} flood: legitimate connection {tried} to {ip} failed: {e:#}")
            });
        ping(&mut c, "legit");
        ok += 1;
        max_synq = max_synq.max(syn_recv_count(&t.lab.server).unwrap());
    }
    let sent = flooder.join().unwrap().expect("flood");
    let delta = t.stats().delta(&before);
    eprintln!(
        "{what} flood: {sent} frames sent, {ok}/{tried} legitimate connections, max SYN_RECV \
         {max_synq}; {delta:?}"
    );
    FloodRun {
        sent,
        ok,
        tried,
        max_synq,
        delta,
    }
}

/// `status --json` of the lab's server interface.
///
/// # Panics
/// If the command fails.
#[must_use]
pub fn status(lab: &InterceptLab) -> serde_json::Value {
    serde_json::from_str(&lab.ctl(&["--json", "status", lab.srv_if()])).expect("status JSON")
}

pub use intercept_ctl::lab::echo_server;

/// Sends `what` and expects it echoed within 3 s.
///
/// # Panics
/// If the write or the echo fails, naming `what`.
pub fn ping(s: &mut std::net::TcpStream, what: &str) {
    use std::io::{Read as _, Write as _};
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    s.write_all(what.as_bytes())
        .unwrap_or_else(|e| panic!("write {what}: {e}"));
    let mut b = vec![0u8; what.len()];
    s.read_exact(&mut b)
        .unwrap_or_else(|e| panic!("read echo of {what}: {e}"));
    assert_eq!(b, what.as_bytes(), "echo of {what}");
}

/// Another agent's TC program, as Cilium's or any would be: two instructions, `r0 = verdict;
/// exit`, named `name`, loaded with the bpf() syscall and linked into `ifindex`'s TCX ingress
/// chain in the calling thread's namespace, first in the chain or last. Lives while the returned
/// descriptors (link, program) do.
///
/// # Panics
/// If the kernel refuses to load or link it.
#[must_use]
pub fn foreign_tcx(
    ifindex: u32,
    name: &str,
    verdict: i32,
    first: bool,
) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd as _;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_F_BEFORE: u32 = 1 << 3;
    // mov64 r0, imm (BPF_ALU64 | BPF_MOV | BPF_K); exit (BPF_JMP | BPF_EXIT).
    let mut insns = [0u8; 16];
    insns[0] = 0xb7;
    insns[4..8].copy_from_slice(&verdict.to_le_bytes());
    insns[8] = 0x95;
    let license = b"GPL\0";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
    // log_size, log_buf, kern_version, prog_flags, prog_name[16] (include/uapi/linux/bpf.h).
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_le_bytes());
    attr[4..8].copy_from_slice(&2u32.to_le_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_le_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_le_bytes());
    let n = name.len().min(15);
    attr[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: bpf(2) with an attr buffer of the size passed.
    let prog = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    assert!(
        prog >= 0,
        "load {name}: {}",
        std::io::Error::last_os_error()
    );
    let prog = i32::try_from(prog).unwrap();
    // BPF_LINK_CREATE: prog_fd, target_ifindex, attach_type, flags, tcx.relative_fd (0: the
    // chain itself, so BPF_F_BEFORE means first), tcx.expected_revision.
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&u32::try_from(prog).unwrap().to_le_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_le_bytes());
    attr[8..12].copy_from_slice(&BPF_TCX_INGRESS.to_le_bytes());
    attr[12..16].copy_from_slice(&(if first { BPF_F_BEFORE } else { 0 }).to_le_bytes());
    // SAFETY: as above.
    let link = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, attr.as_ptr(), attr.len()) };
    assert!(
        link >= 0,
        "link {name}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: both are descriptors the kernel just gave us.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(i32::try_from(link).unwrap()),
            std::os::fd::OwnedFd::from_raw_fd(prog),
        )
    }
}

/// The programs of `ifindex`'s TCX ingress chain in the calling thread's namespace, in order:
/// (name, times run since `aya::sys::enable_stats` was turned on).
///
/// # Panics
/// If the kernel cannot be queried.
#[must_use]
pub fn tcx_chain(iface: &str) -> Vec<(String, u64)> {
    let c = std::ffi::CString::new(iface).unwrap();
    let (_, progs) = aya::programs::SchedClassifier::query_tcx(
        c.as_c_str(),
        aya::programs::tc::TcAttachType::Ingress,
    )
    .expect("query the TCX chain");
    progs
        .iter()
        .map(|p| (p.name_as_str().unwrap_or("?").to_owned(), p.run_count()))
        .collect()
}

/// An nftables table of its own in a namespace, whose output chain drops what its rules match;
/// deleted with the guard. (The tests' way to lose or hold back a client's segments.)
pub struct NftDrop<'a> {
    ns: &'a intercept_ctl::netns::Netns,
    table: &'static str,
}

impl<'a> NftDrop<'a> {
    /// Creates table `table` in `ns` dropping, on output, what each of `rules` (an nft
    /// expression, e.g. `tcp dport 80 tcp flags == ack`) matches.
    ///
    /// # Panics
    /// If nft fails.
    #[must_use]
    pub fn new(
        ns: &'a intercept_ctl::netns::Netns,
        table: &'static str,
        rules: &[String],
    ) -> NftDrop<'a> {
        let chain = "{ type filter hook output priority 0 ; }";
        let nft = |args: &[&str]| {
            ns.exec("nft", args).unwrap_or_else(|e| {
                panic!("nft {} (installed by ./x setup): {e:#}", args.join(" "))
            });
        };
        nft(&["add", "table", "inet", table]);
        nft(&["add", "chain", "inet", table, "out", chain]);
        for r in rules {
            // nft joins its arguments into one rule.
            nft(&["add", "rule", "inet", table, "out", r, "drop"]);
        }
        NftDrop { ns, table }
    }
}

impl Drop for NftDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .exec("nft", &["delete", "table", "inet", self.table]);
    }
}

/// Holds the client's ACKs back (every segment it sends to the port with ACK and without SYN is
/// dropped), so a handshake stays half-open on the server while the guard lives; once it is
/// dropped, the client's next segment carries the ACK that completes it.
pub struct HoldAcks;

impl HoldAcks {
    /// Holds the ACKs `ns` sends to `port` (any address).
    ///
    /// # Panics
    /// If nft fails.
    #[must_use]
    pub fn on_port(ns: &intercept_ctl::netns::Netns, port: u16) -> NftDrop<'_> {
        NftDrop::new(
            ns,
            "xi_hold",
            &[format!("tcp dport {port} tcp flags & (syn|ack) == ack")],
        )
    }
}

/// The flow key of a connection's inbound direction (client -> server), as the data path and
/// the controller key it.
#[must_use]
pub fn flow_key(
    client: std::net::SocketAddr,
    server: std::net::SocketAddr,
) -> intercept_common::config::FlowKey {
    use intercept_common::cookie::words_of;
    intercept_common::config::FlowKey {
        saddr: words_of(client.ip()),
        daddr: words_of(server.ip()),
        sport: client.port(),
        dport: server.port(),
    }
}
