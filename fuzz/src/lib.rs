//! The agent's spec and compile modules, compiled from their sources (see Cargo.toml), and the
//! fuzz target's body.

#[path = "../../agent/src/spec/mod.rs"]
pub mod spec;

#[path = "../../agent/src/compile/mod.rs"]
pub mod compile;

/// Arbitrary bytes through everything a spec goes through in the agent: parse, validate,
/// compile (also the unchecked compile, on specs that failed validation). Any panic is a bug.
pub fn exercise(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(spec) = spec::parse_str(&text) else {
        return;
    };
    let problems = spec::validate(&spec);
    for node in &spec.nodes {
        let compiled = compile::compile(&spec, &node.name);
        assert_eq!(compiled.is_ok(), problems.is_empty());
        let _ = compile::compile_valid(&spec, &node.name);
    }
    // What parses writes back to text that parses to the same spec.
    let json = serde_json::to_string(&spec).expect("a spec serializes");
    assert_eq!(spec::parse_str(&json).ok().as_ref(), Some(&spec), "{json}");
}
