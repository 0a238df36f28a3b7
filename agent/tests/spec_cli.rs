//! `vnetd validate FILE`, end to end: every example is valid; every broken spec under
//! `tests/specs/` is refused with exit code 1 and exactly the `<path>: <message>` lines of its
//! `.out` file. `VNETD_BLESS=1 cargo test --test spec_cli` rewrites the `.out` files.

use std::path::{Path, PathBuf};
use std::process::Command;

fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .collect();
    files.sort();
    files
}

fn validate(file: &Path) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_vnetd"))
        .arg("validate")
        .arg(file)
        .output()
        .expect("runs vnetd");
    (
        output.status.code(),
        String::from_utf8(output.stdout).expect("UTF-8 output"),
    )
}

#[test]
fn every_example_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let examples = files(&dir, |name| {
        name.ends_with(".yaml") || name.ends_with(".json")
    });
    assert!(examples.len() >= 3, "examples: {examples:?}");
    for example in examples {
        let (code, stdout) = validate(&example);
        assert_eq!(code, Some(0), "{}:\n{stdout}", example.display());
        assert_eq!(stdout, format!("{}: valid\n", example.display()));
    }
}

#[test]
fn broken_specs_are_refused_with_every_problem() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs");
    let specs = files(&dir, |name| {
        name.starts_with("bad-") && (name.ends_with(".yaml") || name.ends_with(".json"))
    });
    assert!(specs.len() >= 5, "specs: {specs:?}");
    let bless = std::env::var_os("VNETD_BLESS").is_some();
    for spec in specs {
        let (code, stdout) = validate(&spec);
        assert_eq!(code, Some(1), "{}:\n{stdout}", spec.display());
        let expected_file = spec.with_extension(format!(
            "{}.out",
            spec.extension().unwrap().to_str().unwrap()
        ));
        if bless {
            std::fs::write(&expected_file, &stdout).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_file.display()));
        assert_eq!(stdout, expected, "{}", spec.display());
        for line in stdout.lines() {
            let (path, message) = line.split_once(": ").expect("<path>: <message>");
            assert!(!path.is_empty() && !message.is_empty(), "{line}");
        }
    }
}
