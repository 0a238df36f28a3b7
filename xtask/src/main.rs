//! Project tasks. `cargo xtask setup|build|test|lint|demo|bench`.
//!
//! Every task that needs the toolchain or kernel tools runs `setup` first, so a fresh clone on
//! a fresh machine needs nothing but `cargo xtask test` (as root).

mod bench;
mod demo;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "vnetd project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks (apt packages, nightly rust-src, bpf-linker, bpffs).
    Setup,
    /// Setup, then build the release binaries (agent, CNI plugin, eBPF programs).
    Build,
    /// Setup, build, lint, then run every test (unit, BPF_PROG_RUN, end-to-end).
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
        /// Skip `cargo fmt --check` and both clippy passes.
        #[arg(long)]
        no_lint: bool,
    },
    /// `cargo fmt --check` and the clippy passes (workspace, fuzz target library, eBPF crate).
    Lint,
    /// Check that nextest's serial group `kernel` holds every kernel test (run by `test`).
    KernelGroup,
    /// Setup, build, then bring up a lab and show the dataplane working; Ctrl-C tears it down.
    Demo {
        /// Tear down after showing everything instead of waiting for Ctrl-C.
        #[arg(long)]
        no_wait: bool,
    },
    /// Setup, build, then measure vnetd against the Linux bridge + iptables (the reference CNI
    /// plugins) in one lab: pod to pod, to the internet, with NSGs of 1 to 1000 rules, the
    /// 64-byte packet rate (with a bare forwarder), BPF_PROG_RUN costs, the control plane;
    /// prints a table and writes target/bench/report.json, report.md and SVG plots beside.
    Bench {
        /// One short repetition: a smoke run of the bench itself.
        #[arg(long)]
        quick: bool,
        /// Repetitions of every measurement (default 3; 1 with --quick).
        #[arg(long)]
        reps: Option<u32>,
        /// Where to write the JSON report (default target/bench/report.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only the control plane's CNI ADD/DEL latency (report: target/bench/control-plane.json).
        #[arg(long)]
        control_plane_only: bool,
        /// Only this scenario (repeatable): progrun, pod_to_pod, cross_node, pod_to_internet,
        /// nsg, packet_rate, flow_setup, retrans, control_plane.
        #[arg(long = "scenario", value_name = "NAME")]
        scenarios: Vec<String>,
        /// Pods the control plane's CNI ADD/DEL latency is measured on (default 100; 25 with
        /// --quick; at most 250).
        #[arg(long, value_name = "N")]
        cni_pods: Option<usize>,
        /// Client threads making new connections at once, to the internet and through NSGs
        /// (default 8).
        #[arg(long, value_name = "N")]
        connect_clients: Option<usize>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build()
        }
        Task::Test { filter, no_lint } => {
            setup::run()?;
            build()?;
            if !no_lint {
                lint()?;
            }
            test(filter.as_deref())
        }
        Task::Lint => {
            setup::run()?;
            lint()
        }
        Task::KernelGroup => check_kernel_group(),
        Task::Demo { no_wait } => {
            setup::run()?;
            build()?;
            demo::run(&workspace_root(), !no_wait)
        }
        Task::Bench {
            quick,
            reps,
            out,
            control_plane_only,
            scenarios,
            cni_pods,
            connect_clients,
        } => {
            // A misspelt scenario fails before minutes of setup and build.
            bench::check_scenarios(&scenarios)?;
            setup::run()?;
            build()?;
            let opts = bench::Options {
                quick,
                reps,
                out,
                scenarios,
                cni_pods,
                connect_clients,
            };
            if control_plane_only {
                bench::run_control_plane(&workspace_root(), opts)
            } else {
                bench::run(&workspace_root(), opts)
            }
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// Runs a command from the workspace root, echoing it, and fails on a non-zero exit.
pub fn exec(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(workspace_root());
    println!("+ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Cargo sets RUSTUP_TOOLCHAIN for us; the nested cargo must pick its own per crate.
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

fn build() -> Result<()> {
    // Without --workspace: the default members, i.e. all but the eBPF crate, which builds only
    // for its own target (the agent's build.rs does that).
    exec(cargo().args(["build", "--release", "--bins"]))
}

fn lint() -> Result<()> {
    exec(cargo().args(["fmt", "--all", "--check"]))?;
    exec(cargo().args([
        "clippy",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The cargo-fuzz target (its own workspace): its body is the library, built and linted
    // without libFuzzer (which cargo-fuzz adds, from crates.io, with nightly).
    exec(cargo().args([
        "clippy",
        "--release",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--no-default-features",
        "--lib",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crates are not default members: they only build for the BPF target.
    exec(Command::new("rustup").args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--release",
        "--package",
        "vnetd-ebpf",
        "--package",
        "vnetd-pktgen-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Unit tests and BPF_PROG_RUN tests, then the end-to-end tests. Tests that share kernel state
/// (attach programs, make namespaces) serialise on a lock in `vnetd-lab`; nextest groups them
/// (see .config/nextest.toml), and without nextest every test runs on one thread.
fn test(filter: Option<&str>) -> Result<()> {
    let bins = workspace_root().join("target/release");
    let mut cmd = cargo();
    cmd.env("VNETD_BIN_DIR", &bins);
    if Command::new("cargo-nextest")
        .arg("--version")
        .output()
        .is_ok()
    {
        check_kernel_group()?;
        cmd.args(["nextest", "run", "--release", "--no-fail-fast"]);
        if let Some(filter) = filter {
            cmd.arg(filter);
        }
    } else {
        cmd.args(["test", "--release", "--no-fail-fast", "--"]);
        if let Some(filter) = filter {
            cmd.arg(filter);
        }
        cmd.arg("--test-threads=1");
    }
    exec(&mut cmd)
}

/// The nextest group that runs kernel tests one at a time (`.config/nextest.toml`) must hold
/// every binary that touches the kernel: each `agent/tests/kernel_*.rs`, the BPF_PROG_RUN
/// microbenchmark, every test of the lab package, and the agent library's netlink kernel tests.
/// A filter that matches by test name is emptied silently by a rename; this lists the group's
/// members as nextest resolves them and fails on anything missing.
fn check_kernel_group() -> Result<()> {
    let root = workspace_root();
    let mut cmd = cargo();
    cmd.current_dir(&root).args([
        "nextest",
        "show-config",
        "test-groups",
        "--release",
        "--run-ignored",
        "all",
        "--groups",
        "kernel",
    ]);
    println!("+ {}", display(&cmd));
    let out = cmd
        .output()
        .context("running cargo nextest show-config test-groups")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "cargo nextest show-config test-groups failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let members = kernel_group_members(&listing);
    let mut required: Vec<(String, Option<&str>)> = Vec::new();
    let stems = |dir: &str, keep: &dyn Fn(&str) -> bool| -> Result<Vec<String>> {
        let dir = root.join(dir);
        let mut stems = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "rs")
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                && keep(stem)
            {
                stems.push(stem.to_string());
            }
        }
        Ok(stems)
    };
    for stem in stems("agent/tests", &|s| {
        s.starts_with("kernel_") || s == "progrun_bench"
    })? {
        required.push((format!("vnetd::{stem}"), None));
    }
    for stem in stems("tests/tests", &|_| true)? {
        required.push((format!("vnetd-lab::{stem}"), None));
    }
    required.push(("vnetd".into(), Some("netlink::kernel_tests::")));
    let missing: Vec<String> = required
        .iter()
        .filter(|(binary, prefix)| {
            !members
                .iter()
                .any(|(b, test)| b == binary && prefix.is_none_or(|p| test.starts_with(p)))
        })
        .map(|(binary, prefix)| match prefix {
            Some(p) => format!("{binary} {p}*"),
            None => binary.clone(),
        })
        .collect();
    if members.is_empty() || !missing.is_empty() {
        bail!(
            "the nextest test group `kernel` (.config/nextest.toml) misses kernel tests: {}\n{listing}",
            if members.is_empty() {
                "it is empty".to_string()
            } else {
                missing.join(", ")
            }
        );
    }
    println!(
        "nextest group `kernel`: {} tests, every kernel test binary included",
        members.len()
    );
    Ok(())
}

/// (binary id, test name) pairs from `cargo nextest show-config test-groups` output: a binary
/// id is a line ending in `:` indented by six spaces, its tests follow indented by ten.
fn kernel_group_members(listing: &str) -> Vec<(String, String)> {
    let mut members = Vec::new();
    let mut binary = None;
    for line in listing.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent == 6 && text.ends_with(':') {
            binary = Some(text.trim_end_matches(':').to_string());
        } else if indent >= 10 && !text.is_empty() {
            if let Some(b) = &binary {
                members.push((b.clone(), text.to_string()));
            }
        } else if indent < 6 {
            binary = None;
        }
    }
    members
}

#[cfg(test)]
mod tests {
    use super::kernel_group_members;

    #[test]
    fn reads_nextest_group_listing() {
        let listing = "group: kernel (max threads = 1)\n  * override for default profile with filter 'x':\n      vnetd:\n          netlink::kernel_tests::a\n      vnetd::kernel_progrun:\n          b\n          c\n";
        assert_eq!(
            kernel_group_members(listing),
            [
                ("vnetd".into(), "netlink::kernel_tests::a".into()),
                ("vnetd::kernel_progrun".into(), "b".into()),
                ("vnetd::kernel_progrun".into(), "c".into()),
            ]
        );
        assert!(kernel_group_members("group: kernel (max threads = 1)\n").is_empty());
    }
}
