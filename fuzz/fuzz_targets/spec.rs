//! Arbitrary bytes through everything a spec goes through in the agent: parse, validate,
//! compile (also the unchecked compile, on specs that failed validation). Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(spec) = vnetd_spec::spec::parse_str(&text) else {
        return;
    };
    let problems = vnetd_spec::spec::validate(&spec);
    for node in &spec.nodes {
        let compiled = vnetd_spec::compile::compile(&spec, &node.name);
        assert_eq!(compiled.is_ok(), problems.is_empty());
        let _ = vnetd_spec::compile::compile_valid(&spec, &node.name);
    }
    // What parses writes back to text that parses to the same spec.
    let json = serde_json::to_string(&spec).expect("a spec serializes");
    assert_eq!(
        vnetd_spec::spec::parse_str(&json).ok().as_ref(),
        Some(&spec),
        "{json}"
    );
});
