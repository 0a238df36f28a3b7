//! `vnetd-cni`: the CNI plugin. The logic lives in `vnetd::cni`; this reads the environment and
//! stdin, runs it, prints the answer and exits with its code.
use std::io::{IsTerminal as _, Read as _};

use vnetd::cni;

fn main() {
    let mut stdin = Vec::new();
    // VERSION needs no configuration; don't wait on a terminal when someone runs it by hand.
    let version_by_hand =
        std::env::var("CNI_COMMAND").as_deref() == Ok("VERSION") && std::io::stdin().is_terminal();
    if !version_by_hand && let Err(err) = std::io::stdin().read_to_end(&mut stdin) {
        let err = cni::CniError::new(cni::CniError::IO_FAILURE, "cannot read stdin")
            .with_details(err.to_string());
        eprintln!(
            "vnetd-cni: {}: {} [CNI error {}]",
            err.msg, err.details, err.code
        );
        println!("{}", cni::error_json(cni::LATEST_VERSION, &err));
        std::process::exit(1);
    }
    let (exit_code, stdout) = cni::run(|name| std::env::var(name).ok(), &stdin);
    if !stdout.is_empty() {
        println!("{stdout}");
    }
    std::process::exit(exit_code);
}
