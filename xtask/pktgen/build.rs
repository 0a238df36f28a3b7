//! Builds the generator's eBPF programs (xtask/pktgen-ebpf) with aya-build, as the agent's
//! build.rs builds vnetd's; `cargo xtask setup` installs what that needs.
use std::path::PathBuf;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // Read at run time, not with env!(), so a copied tree builds its own eBPF crate.
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("the pktgen crate has no parent directory")?
        .join("pktgen-ebpf");
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    // SAFETY: build scripts are single-threaded here.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "vnetd-pktgen-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
