//! `cargo xtask setup`: installs what a fresh machine lacks, idempotently, saying what it does.
//! A second run only checks.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::exec;

/// Debian packages the build, the tests, the demo and the benchmarks use.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",     // bpf-linker links against LLVM 22 (rustc nightly's LLVM major)
    "libpolly-22-dev", // needed to link against llvm-22
    "iproute2",        // ip, tc: the lab
    "iputils-ping",
    "iperf3",
    "tcpdump",
    "iptables",                    // the reference dataplane (bridge + iptables)
    "containernetworking-plugins", // the reference CNI plugins (bridge, host-local, ...)
    "ethtool",
    "util-linux",                 // nsenter
    "procps",                     // sysctl, pgrep
    "golang-go",                  // builds the libcni test driver (tests/tests/e2e_libcni.rs)
    "golang-github-appc-cni-dev", // libcni's sources (CNI 1.1.2), for that driver
    "containerd",                 // a real runtime for the plugin (e2e_containerd.rs)
    "busybox-static",             // that test's offline image (no registry is reachable)
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> Result<()> {
    println!("== setup: checking prerequisites");
    if !nix_is_root() {
        bail!("vnetd's tasks load BPF programs and create namespaces: run them as root");
    }
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    bpffs()?;
    println!("== setup: done");
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("   apt packages: all present");
        return Ok(());
    }
    println!("   apt packages missing: {}", missing.join(" "));
    exec(Command::new("apt-get").arg("update"))?;
    exec(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

fn nightly_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup is required")?;
    let listing = String::from_utf8_lossy(&installed.stdout);
    if !installed.status.success() {
        println!("   nightly toolchain missing: installing it");
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if listing.lines().any(|l| l.starts_with("rust-src")) {
        println!("   nightly rust-src: present");
        return Ok(());
    }
    println!(
        "   nightly rust-src missing: installing it (the eBPF target builds core from source)"
    );
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output()
        && out.status.success()
    {
        println!(
            "   bpf-linker: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        return Ok(());
    }
    println!("   bpf-linker missing: building it against LLVM 22 (about a minute)");
    // Both variables: llvm-sys finds llvm-config by the first, bpf-linker's build.rs the
    // library directory by the second; without them it picks Debian's default LLVM 14.
    exec(
        Command::new("cargo")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
}

fn bpffs() -> Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        println!("   bpffs: mounted at /sys/fs/bpf");
        return Ok(());
    }
    if !Path::new("/sys/fs/bpf").exists() {
        bail!("/sys/fs/bpf does not exist: is this a Linux kernel with BPF?");
    }
    println!("   bpffs not mounted: mounting it at /sys/fs/bpf");
    exec(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
