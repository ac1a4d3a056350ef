//! `./x vm-test`: the privileged tests on another kernel, booted under QEMU over the host's own
//! root file system.
//!
//! The guest kernel comes from a Debian package (its modules beside it, under
//! `target/vm/<kernel>/`); the host's root is shared read-only through virtio-fs (`virtiofsd`)
//! under a tmpfs overlay, so the guest runs the very test binaries and tools of the host and
//! writes nothing back. A small initramfs (static busybox, the few modules needed to mount the
//! root, and `vm-init.sh` as `/init`) mounts it all, runs `target/vm/run.sh` and prints its exit
//! status on the serial console, which is how the result comes back.
//!
//! KVM is tried first when `/dev/kvm` is usable; a guest that has not reached `/init` within
//! [`KVM_BOOT_SECONDS`] (nested virtualisation can hang) is killed and booted again with TCG
//! (`-cpu max`, software emulation: about 5 s to `/init`, everything several times slower).
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use std::fmt::Write as _;

use anyhow::{Context as _, bail};

/// The `/init` of the initramfs.
const INIT: &str = include_str!("vm-init.sh");
/// What `/init` prints once the host's root is mounted and the tests are about to start.
const UP_MARK: &str = "vm-init: up: ";
/// What `/init` prints last: the tests' exit status follows.
const EXIT_MARK: &str = "VM-EXIT-STATUS=";
/// How much slower the tests run under TCG than on the host, for their waiting limits
/// (`INTERCEPT_TEST_TIME_SCALE` in the guest; see `intercept_tests::time_scale`).
const TCG_TIME_SCALE: u32 = 5;

/// How long a KVM guest may take to reach `/init` before TCG is used instead.
const KVM_BOOT_SECONDS: u64 = 15;
/// Modules the initramfs loads (with what they depend on) to mount the host's root; absent ones
/// are taken to be built in.
const BOOT_MODULES: [&str; 8] = [
    "virtio",
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "fuse",
    "virtiofs",
    "overlay",
];
/// Where Debian's QEMU keeps its virtio-fs daemon (older packages, newer ones).
const VIRTIOFSD: [&str; 3] = [
    "/usr/lib/qemu/virtiofsd",
    "/usr/libexec/virtiofsd",
    "/usr/bin/virtiofsd",
];

/// A kernel to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    /// Debian 12's 6.1 cloud kernel (the newest `linux-image-6.1.0-*-cloud-amd64-unsigned` apt
    /// offers; downloaded once into target/vm/6.1).
    #[value(name = "6.1")]
    Debian61,
    /// The running kernel's image, `/boot/vmlinuz-$(uname -r)`, with `/lib/modules` of the host.
    Host,
}

/// What the run is given.
pub struct Options<'a> {
    /// The kernel.
    pub kernel: Kernel,
    /// The guest's memory, MiB.
    pub memory_mib: u32,
    /// Give up after this long (the guest is killed).
    pub timeout: Duration,
    /// The test binaries and their arguments, as `(package dir, executable)`.
    pub tests: &'a [(PathBuf, PathBuf)],
    /// Arguments for every test binary (a filter, `--test-threads`...).
    pub args: &'a [String],
    /// The intercept-ctl binary the tests run.
    pub ctl: &'a Path,
}

/// A kernel image, its modules directory (on the host's file system, which the guest sees) and
/// its release name.
struct Boot {
    image: PathBuf,
    modules: PathBuf,
    name: String,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn virtiofsd() -> Option<&'static str> {
    VIRTIOFSD.into_iter().find(|p| Path::new(p).is_file())
}

/// Installs QEMU, static busybox and virtiofsd with apt unless they are present.
fn ensure_tools() -> anyhow::Result<()> {
    let have = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let busybox_static = output(Command::new("sh").args(["-c", "file -L $(command -v busybox)"]))
        .map_or(have("busybox"), |o| !o.contains("dynamically"));
    if have("qemu-system-x86_64") && busybox_static && virtiofsd().is_some() {
        return Ok(());
    }
    eprintln!("vm-test: installing qemu-system-x86 and busybox-static (once)");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "qemu-system-x86",
            "busybox-static",
        ]))?;
    if virtiofsd().is_none() {
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "virtiofsd"]))?;
    }
    Ok(())
}

/// The kernel image and modules of `kernel`, downloaded and unpacked into `dir` if needed.
fn prepare_kernel(kernel: Kernel, dir: &Path) -> anyhow::Result<Boot> {
    match kernel {
        Kernel::Host => {
            let release = output(Command::new("uname").arg("-r"))?.trim().to_owned();
            let image = PathBuf::from(format!("/boot/vmlinuz-{release}"));
            if !image.is_file() {
                bail!(
                    "no image of the running kernel at {} (a container or a VM booted from \
                     outside keeps none): run the suite on this kernel directly with `./x test`",
                    image.display()
                );
            }
            Ok(Boot {
                image,
                modules: PathBuf::from(format!("/lib/modules/{release}")),
                name: release,
            })
        }
        Kernel::Debian61 => {
            let root = dir.join("6.1");
            let find = |sub: &str, prefix: &str| -> Option<PathBuf> {
                std::fs::read_dir(root.join(sub))
                    .ok()?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(prefix))
                    })
            };
            if find("boot", "vmlinuz-").is_none() {
                download_debian_61(&root)?;
            }
            let image = find("boot", "vmlinuz-").context("no vmlinuz in the package")?;
            let modules = find("lib/modules", "6.1").context("no modules in the package")?;
            let name = modules
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("6.1")
                .to_owned();
            if !modules.join("modules.dep").is_file() {
                // The guest loads modules with busybox's modprobe, which reads this.
                run(Command::new("busybox")
                    .arg("depmod")
                    .arg("-b")
                    .arg(&root)
                    .arg(&name))?;
            }
            Ok(Boot {
                image,
                modules,
                name,
            })
        }
    }
}

/// Downloads the 6.1 cloud kernel apt's `linux-image-cloud-amd64` points at (its unsigned
/// build: same image, and it carries BTF and the modules) and unpacks it into `root`.
fn download_debian_61(root: &Path) -> anyhow::Result<()> {
    let deps = output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))
        .or_else(|_| {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))
        })?;
    let image = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-6.1."))
        .context(
            "apt knows no Debian 12 cloud kernel (linux-image-cloud-amd64 -> linux-image-6.1.*); \
             is this Debian 12 with its main archive in the apt sources?",
        )?;
    let package = format!("{image}-unsigned");
    let tmp = root.with_extension("download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    eprintln!("vm-test: downloading {package} (once)");
    run(Command::new("apt-get")
        .args(["download", &package])
        .current_dir(&tmp))?;
    let deb = std::fs::read_dir(&tmp)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let _ = std::fs::remove_dir_all(root);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root))?;
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}

/// Writes the initramfs (newc cpio, uncompressed) for `boot` into `dir`.
fn build_initramfs(boot: &Boot, dir: &Path) -> anyhow::Result<PathBuf> {
    let stage = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&stage);
    for d in [
        "bin",
        "mods",
        "proc",
        "sys",
        "dev",
        "mnt/lower",
        "mnt/rw",
        "newroot",
    ] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    let busybox = output(Command::new("sh").args(["-c", "command -v busybox"]))?;
    std::fs::copy(busybox.trim(), stage.join("bin/busybox")).context("copy busybox")?;
    std::fs::write(stage.join("init"), INIT)?;
    run(Command::new("chmod").arg("755").arg(stage.join("init")))?;
    // Each module after those it depends on (modinfo's `depends=`, which changes between
    // package versions), listed in the order /init loads them.
    let mut order: Vec<String> = Vec::new();
    for m in BOOT_MODULES {
        add_module(&boot.modules, m, &stage.join("mods"), &mut order)?;
    }
    std::fs::write(stage.join("mods/order"), order.join("\n") + "\n")?;
    let image = dir.join("initramfs.cpio");
    let file = std::fs::File::create(&image)?;
    let mut cpio = Command::new("sh")
        .args(["-c", "find . | busybox cpio -o -H newc"])
        .current_dir(&stage)
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .context("run busybox cpio")?;
    if !cpio.wait()?.success() {
        bail!("busybox cpio failed");
    }
    Ok(image)
}

/// Copies module `name` (found under `modules`) and, first, those it depends on into `to`,
/// appending each to `order` once; a module not found is taken to be built in.
fn add_module(
    modules: &Path,
    name: &str,
    to: &Path,
    order: &mut Vec<String>,
) -> anyhow::Result<()> {
    if order.iter().any(|m| m == name) {
        return Ok(());
    }
    // File names use `-` or `_` interchangeably with module names.
    let found = output(Command::new("find").arg(modules).args([
        "-name",
        &format!("{name}.ko*"),
        "-o",
        "-name",
        &format!("{}.ko*", name.replace('_', "-")),
    ]))?;
    let Some(path) = found.lines().next() else {
        return Ok(());
    };
    if Path::new(path).extension().is_none_or(|e| e != "ko") {
        bail!("{path}: compressed modules are not supported by the initramfs");
    }
    let bytes = std::fs::read(path)?;
    let key = b"depends=";
    if let Some(at) = bytes.windows(key.len()).position(|w| w == key) {
        let rest = &bytes[at + key.len()..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        for dep in String::from_utf8_lossy(&rest[..end]).split(',') {
            if !dep.is_empty() {
                add_module(modules, dep, to, order)?;
            }
        }
    }
    std::fs::copy(path, to.join(format!("{name}.ko")))?;
    order.push(name.to_owned());
    Ok(())
}

/// The script the guest runs: every test binary with `args`, from its package directory as
/// `cargo test` would; exits non-zero if any failed.
fn write_script(dir: &Path, opts: &Options<'_>) -> anyhow::Result<PathBuf> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut s = String::from("# Written by `./x vm-test`; run by the guest's /init.\nrc=0\n");
    let _ = writeln!(
        s,
        "export INTERCEPT_CTL={}\nexport RUST_BACKTRACE=1",
        quote(&opts.ctl.display().to_string())
    );
    let args: Vec<String> = opts.args.iter().map(|a| quote(a)).collect();
    for (pkg, exe) in opts.tests {
        let _ = writeln!(
            s,
            "echo \"     Running {}\"\n(cd {} && {} {}) || rc=1",
            exe.display(),
            quote(&pkg.display().to_string()),
            quote(&exe.display().to_string()),
            args.join(" ")
        );
    }
    s.push_str("exit $rc\n");
    let path = dir.join("run.sh");
    std::fs::write(&path, s)?;
    Ok(path)
}

/// Kills a child (and waits for it) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a boot ended.
enum Outcome {
    /// The script's exit status.
    Exited(i32),
    /// KVM was tried and the guest never reached `/init`.
    KvmHung,
}

/// Boots `boot` once (`kvm` or TCG), streams the console through `on_line`, returns the outcome.
#[allow(clippy::too_many_lines, reason = "one QEMU command line")]
fn boot_once(
    boot: &Boot,
    initramfs: &Path,
    script: &Path,
    dir: &Path,
    opts: &Options<'_>,
    kvm: bool,
    on_line: &mut dyn FnMut(&str),
) -> anyhow::Result<Outcome> {
    let socket = dir.join("virtiofs.sock");
    let _ = std::fs::remove_file(&socket);
    let daemon = virtiofsd().context("virtiofsd is missing")?;
    let fsd = Reaped(
        Command::new(daemon)
            .arg(format!("--socket-path={}", socket.display()))
            .args(["-o", "source=/", "-o", "sandbox=chroot", "-o", "cache=auto"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {daemon}"))?,
    );
    let t0 = Instant::now();
    while !socket.exists() {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("{daemon} made no socket at {} in 10 s", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mem = format!("{}M", opts.memory_mib);
    let append = format!(
        "console=ttyS0 panic=-1 quiet intercept.run={} intercept.modules={} \
         intercept.time_scale={}",
        script.display(),
        boot.modules.display(),
        if kvm { 1 } else { TCG_TIME_SCALE }
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    if kvm {
        qemu.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
    }
    qemu.args(["-smp", "2", "-m", &mem])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ])
        .args(["-numa", "node,memdev=mem"])
        .args([
            "-chardev",
            &format!("socket,id=vfs,path={}", socket.display()),
        ])
        .args(["-device", "vhost-user-fs-pci,chardev=vfs,tag=hostroot"])
        .arg("-kernel")
        .arg(&boot.image)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &append])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .args(["-no-reboot", "-nic", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut vm = Reaped(qemu.spawn().context("start qemu-system-x86_64")?);
    let stdout = vm.0.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut up = false;
    loop {
        let left = opts.timeout.saturating_sub(started.elapsed());
        let wait = if kvm && !up {
            Duration::from_secs(KVM_BOOT_SECONDS).saturating_sub(started.elapsed())
        } else {
            left
        };
        match rx.recv_timeout(wait) {
            Ok(line) => {
                let line = strip_escapes(&line);
                let line = line.trim_end_matches('\r');
                if let Some(code) = line.find(EXIT_MARK).map(|at| &line[at + EXIT_MARK.len()..]) {
                    let code = code.trim().parse().unwrap_or(125);
                    // The guest powers off next; its file server goes after it.
                    let t0 = Instant::now();
                    while vm.0.try_wait()?.is_none() && t0.elapsed() < Duration::from_secs(15) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    drop(vm);
                    drop(fsd);
                    return Ok(Outcome::Exited(code));
                }
                if !up && line.contains(UP_MARK) {
                    up = true;
                    on_line(&format!(
                        "{line} ({}, {:.1} s on the host)",
                        if kvm { "KVM" } else { "TCG" },
                        started.elapsed().as_secs_f64()
                    ));
                    continue;
                }
                on_line(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if kvm && !up => return Ok(Outcome::KvmHung),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!(
                    "the guest ran longer than {} s: killed",
                    opts.timeout.as_secs()
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = vm.0.wait()?;
                bail!(
                    "the guest stopped ({status}) before its tests reported (kernel panic or \
                     /init failure: see above)"
                );
            }
        }
    }
}

/// `line` without terminal control sequences (the firmware clears the screen on the serial
/// line before the kernel starts).
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ params letter, or ESC and one character.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// Whether `/dev/kvm` can be opened.
fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Boots the kernel and runs the tests; `on_line` sees the guest's console. Returns the exit
/// status of the tests (0: all passed).
///
/// # Errors
/// A tool could not be installed, the kernel not fetched, or the guest did not report.
pub fn run_tests(
    target: &Path,
    opts: &Options<'_>,
    on_line: &mut dyn FnMut(&str),
) -> anyhow::Result<i32> {
    ensure_tools()?;
    let dir = target.join("vm");
    std::fs::create_dir_all(&dir)?;
    let boot = prepare_kernel(opts.kernel, &dir)?;
    eprintln!(
        "vm-test: kernel {} ({}), modules {}",
        boot.name,
        boot.image.display(),
        boot.modules.display()
    );
    let initramfs = build_initramfs(&boot, &dir)?;
    let script = write_script(&dir, opts)?;
    if kvm_usable() {
        match boot_once(&boot, &initramfs, &script, &dir, opts, true, on_line)? {
            Outcome::Exited(code) => return Ok(code),
            Outcome::KvmHung => eprintln!(
                "vm-test: the KVM guest did not reach /init in {KVM_BOOT_SECONDS} s (nested \
                 virtualisation?): booting again with TCG"
            ),
        }
    }
    match boot_once(&boot, &initramfs, &script, &dir, opts, false, on_line)? {
        Outcome::Exited(code) => Ok(code),
        Outcome::KvmHung => unreachable!("TCG is not KVM"),
    }
}
