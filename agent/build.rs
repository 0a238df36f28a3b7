//! Builds the eBPF programs (ebpf/vnetd-ebpf) for bpfel-unknown-none with aya-build; the agent
//! embeds the object with `include_bytes_aligned!`. Needs nightly's rust-src and bpf-linker:
//! `cargo xtask setup` installs both.
use std::path::PathBuf;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // Read at run time, not with env!(), so a copied tree builds its own eBPF crate.
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("agent crate has no parent directory")?
        .join("ebpf/vnetd-ebpf");
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    // aya-build relays every line the nested cargo prints as a warning: keep it to real ones.
    // SAFETY: build scripts are single-threaded here.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "vnetd-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
