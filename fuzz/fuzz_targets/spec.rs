//! Arbitrary bytes through everything a spec goes through in the agent (see
//! `vnetd_spec::exercise`). Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vnetd_spec::exercise(data));
