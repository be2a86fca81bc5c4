//! `cargo xtask setup`: idempotent. Installs the eBPF toolchain pieces and checks the machine,
//! saying exactly what is missing and how to fix it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::run_command;

/// The bpf-linker that matches the nightly's LLVM (see the README's "Toolchain" section).
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(clap::Args, Default)]
pub struct Options {
    /// Also install the Debian packages the integration tests and benchmarks use.
    #[arg(long)]
    pub test_deps: bool,
}

/// Debian packages the build needs: `protoc` for etcd-client's gRPC code (the fleet).
const BUILD_PACKAGES: &[&str] = &["protobuf-compiler"];

/// Debian packages used by tests, demo and benchmarks.
const TEST_PACKAGES: &[&str] = &[
    // tests/tests/fleet.rs and `cargo xtask bench fleet`: a real etcd 3.4 (server, etcdctl).
    "etcd-server",
    "etcd-client",
    "iproute2",
    "ethtool",
    "nftables",
    "iptables",
    "haproxy",
    "nginx-light",
    "wrk",
    "curl",
    // `cargo xtask bench --compare` (IPVS is measured only where the kernel has it).
    "ipvsadm",
    // tests/tests/packaging.rs: `systemd-analyze verify`/`security` on the unit, the man
    // page rendered, completions sourced, the .deb built and installed into a scratch root.
    "systemd",
    "groff-base",
    "bash-completion",
    "gzip",
    // tests/tests/dashboard.rs: a real Prometheus 2.42 scrapes the daemon and runs every
    // query of the Grafana dashboard; promtool lints the exposition.
    "prometheus",
];

pub fn run(options: &Options) -> anyhow::Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_packages(BUILD_PACKAGES)?;
    check_privileges()?;
    check_bpffs()?;
    if options.test_deps {
        ensure_packages(TEST_PACKAGES)?;
    }
    eprintln!(
        "setup: ok (nightly rust-src, bpf-linker {BPF_LINKER_VERSION}, protoc, root, BPF, bpffs)"
    );
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("no nightly toolchain: install one with `rustup toolchain install nightly`")?;
    Ok(PathBuf::from(sysroot.trim()))
}

/// `-Z build-std=core` needs the nightly's rust-src.
fn ensure_rust_src() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    let marker = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if marker.exists() {
        return Ok(());
    }
    let added = run_command(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]));
    if added.is_err() || !marker.exists() {
        // Offline fallback shipped with these machines (only valid for the same nightly).
        let fallback = crate::workspace_root().join("../shared/toolchain/install-rust-src.sh");
        if fallback.exists() {
            run_command(Command::new("bash").arg(&fallback))?;
        }
    }
    if !marker.exists() {
        bail!(
            "the nightly toolchain has no rust-src; run `rustup component add rust-src --toolchain nightly`"
        );
    }
    Ok(())
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// bpf-linker linked against the nightly's own libLLVM, so the LLVM versions always match.
/// (`cargo install bpf-linker` with default features wants a system LLVM and fails here.)
fn ensure_bpf_linker() -> anyhow::Result<()> {
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
        || cargo_bin().join("bpf-linker").exists();
    if installed {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"))
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib.display()))?;
    let link = lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)
        .with_context(|| format!("linking {} -> {llvm}", link.display()))?;
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV printed no LLVM version")?
        .to_owned();
    run_command(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--locked", "--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &sysroot),
    )
    .context("building bpf-linker against the nightly's LLVM")
}

fn check_privileges() -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "not root: loading XDP/TC programs and creating network namespaces need root \
             (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); run as root, e.g. `sudo -E cargo xtask test`"
        );
    }
    // A tiny array map proves the bpf() syscall works for us.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }
    let attr = MapCreate {
        map_type: 2, // BPF_MAP_TYPE_ARRAY
        key_size: 4,
        value_size: 4,
        max_entries: 1,
    };
    let mut buf = [0u8; 128];
    unsafe {
        std::ptr::copy_nonoverlapping(
            &attr as *const MapCreate as *const u8,
            buf.as_mut_ptr(),
            size_of::<MapCreate>(),
        )
    };
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, buf.as_ptr(), buf.len() as u32) };
    if fd < 0 {
        bail!(
            "the bpf() syscall is refused ({}): the kernel needs CONFIG_BPF_SYSCALL and the \
             process CAP_BPF (check kernel.unprivileged_bpf_disabled, seccomp, containers)",
            std::io::Error::last_os_error()
        );
    }
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// The daemon pins under a bpffs: one must be mounted, or at least mountable (checked without
/// leaving a mount behind).
fn check_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|line| line.split_whitespace().nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    // Mountable? Try on a scratch directory and unmount at once: setup leaves no mount (and no
    // kernel-preloaded `*.debug` pins) behind. The tests mount their own bpffs under /run.
    let probe = std::env::temp_dir().join(format!("splitter-bpffs-probe-{}", std::process::id()));
    std::fs::create_dir_all(&probe)?;
    let mounted = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&probe)
        .status()
        .is_ok_and(|status| status.success());
    if mounted {
        let _ = Command::new("umount").arg(&probe).status();
    }
    let _ = std::fs::remove_dir(&probe);
    if !mounted {
        bail!(
            "no bpffs is mounted and none can be: the kernel needs CONFIG_BPF_SYSCALL and we need \
             CAP_SYS_ADMIN; the daemon pins under `control.bpffs` (default /sys/fs/bpf/splitter): \
             `mount -t bpf bpf /sys/fs/bpf`"
        );
    }
    eprintln!(
        "setup: bpffs is mountable but not mounted; before running the daemon with the default \
         control.bpffs: mount -t bpf bpf /sys/fs/bpf"
    );
    Ok(())
}

/// Installs the Debian packages of `packages` that are missing.
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run_command(Command::new("apt-get").args(["update", "-q"]))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {missing:?}"))
}
