//! A fast reader for the plain YAML specs are written in: block mappings and sequences, flow
//! collections on one line, plain and quoted scalars on one line, comments. It builds the same
//! [`Value`] as serde-saphyr with the options of [`super::value::parse_document`], several
//! times faster (a spec of 1000 NSG rules is read on every one-rule change). Anything outside
//! that subset, or anything it is not sure of (anchors, tags, block and multi-line scalars,
//! floats, explicit keys, tabs, a syntax error, ...), makes it give up (`None`): then
//! serde-saphyr reads the document, and reports its errors with their positions, as before.
//! Whatever it accepts, serde-saphyr accepts and reads the same way (tested against it on the
//! examples, generated documents and random edits of them).

use super::value::Value;

/// The document's value, or `None` to leave the document to serde-saphyr.
pub(crate) fn parse(text: &str) -> Option<Value> {
    // Tabs, carriage returns and what YAML does not print (a byte order mark inside the
    // text, control characters) are left to serde-saphyr.
    let printable = |c: char| {
        matches!(c, '\n' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
            && c != '\u{feff}'
    };
    // By blocks without an early exit inside, which the compiler vectorizes (a byte at a time
    // this check took a twentieth of a 1000-rule spec's reload).
    let plain_ascii = text.as_bytes().chunks(64).all(|block| {
        block.iter().fold(true, |ok, &b| {
            ok & ((b == b'\n') | (b.wrapping_sub(b' ') <= b'~' - b' '))
        })
    });
    if !plain_ascii && !text.chars().all(printable) {
        return None;
    }
    let mut lines = Vec::new();
    for raw in text.split('\n') {
        let rest = raw.trim_start_matches(' ');
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        let indent = raw.len() - rest.len();
        // Documents and directives: only a first `---` alone.
        if indent == 0 && (rest.starts_with("---") || rest.starts_with("...")) {
            if lines.is_empty() && rest.trim_end() == "---" {
                continue;
            }
            return None;
        }
        if indent == 0 && rest.starts_with('%') {
            return None;
        }
        lines.push(Line {
            indent,
            rest: rest.trim_end_matches(' '),
        });
    }
    let first = lines.first()?.indent;
    let mut reader = Reader {
        lines,
        at: 0,
        depth: 0,
    };
    let value = reader.block(first)?;
    (reader.at == reader.lines.len() && nodes(&value) <= MAX_NODES).then_some(value)
}

/// Nesting deeper than this (blocks, and flows within a line) is left to serde-saphyr, whose
/// budget allows 64 levels.
const MAX_DEPTH: usize = 30;
/// Documents of more nodes are left to serde-saphyr, whose budget allows 250,000.
const MAX_NODES: usize = 100_000;
/// YAML limits an implicit key to 1024 characters (serde-saphyr too); longer ones, and a
/// margin, are left to it.
const MAX_KEY: usize = 512;

fn nodes(value: &Value) -> usize {
    1 + match value {
        Value::Seq(items) => items.iter().map(nodes).sum(),
        Value::Map(entries) => entries.iter().map(|(_, v)| 1 + nodes(v)).sum(),
        _ => 0,
    }
}

/// A line with content: its indentation and the rest (no trailing spaces).
#[derive(Clone, Copy)]
struct Line<'t> {
    indent: usize,
    rest: &'t str,
}

struct Reader<'t> {
    lines: Vec<Line<'t>>,
    at: usize,
    depth: usize,
}

/// `-` then a space or the end of the line: a block sequence entry.
fn is_entry(rest: &str) -> bool {
    rest == "-" || rest.starts_with("- ")
}

impl<'t> Reader<'t> {
    fn line(&self) -> Option<Line<'t>> {
        self.lines.get(self.at).copied()
    }

    /// The block node whose first line is the current one, at `indent`.
    fn block(&mut self, indent: usize) -> Option<Value> {
        let line = self.line()?;
        if line.indent != indent || self.depth == MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let value = if is_entry(line.rest) {
            self.sequence(indent)
        } else {
            self.mapping(indent)
        };
        self.depth -= 1;
        value
    }

    /// The value after `key:` or `- ` with nothing after it on the line: the block on the next
    /// lines if they are indented more than `indent` (or a sequence at `indent` itself, after
    /// a key), null otherwise.
    fn nested(&mut self, indent: usize, after_key: bool) -> Option<Value> {
        match self.line() {
            Some(next) if next.indent > indent => self.block(next.indent),
            Some(next) if after_key && next.indent == indent && is_entry(next.rest) => {
                self.sequence(indent)
            }
            _ => Some(Value::Null),
        }
    }

    /// A value on the rest of a line; the next line may not continue it.
    fn inline(&mut self, text: &str, indent: usize) -> Option<Value> {
        let value = inline_value(text)?;
        match self.line() {
            Some(next) if next.indent > indent => None,
            _ => Some(value),
        }
    }

    fn sequence(&mut self, indent: usize) -> Option<Value> {
        let mut items = Vec::new();
        while let Some(line) = self.line() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent || !is_entry(line.rest) {
                return None;
            }
            let after = line.rest[1..].trim_start_matches(' ');
            let column = indent + (line.rest.len() - after.len());
            if after.is_empty() || after.starts_with('#') {
                self.at += 1;
                items.push(self.nested(indent, false)?);
            } else if is_entry(after) {
                return None;
            } else if key_of(after).is_some() {
                // `- key: value`: a mapping whose keys are at the column of the first one.
                self.lines[self.at] = Line {
                    indent: column,
                    rest: after,
                };
                items.push(self.block(column)?);
            } else {
                self.at += 1;
                items.push(self.inline(after, indent)?);
            }
        }
        Some(Value::Seq(items))
    }

    fn mapping(&mut self, indent: usize) -> Option<Value> {
        let mut entries = Vec::new();
        while let Some(line) = self.line() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent || is_entry(line.rest) {
                return None;
            }
            let (key, after) = key_of(line.rest)?;
            let key = string_key(key)?;
            self.at += 1;
            let value = if after.is_empty() || after.starts_with('#') {
                self.nested(indent, true)?
            } else {
                self.inline(after, indent)?
            };
            entries.push((key, value));
        }
        Some(Value::Map(entries))
    }
}

/// Characters that may not start a plain scalar (or key).
const INDICATORS: &[char] = &[
    '-', '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`',
];

/// `key: rest` (or `key:` at the end): the plain key and what follows the colon, spaces
/// skipped.
fn key_of(text: &str) -> Option<(&str, &str)> {
    if text.starts_with(INDICATORS) {
        return None;
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b':' if i + 1 == bytes.len() || bytes[i + 1] == b' ' => {
                let key = text[..i].trim_end_matches(' ');
                if key.contains(" #") || key.contains(['{', '}', '[', ']', ',']) {
                    return None;
                }
                return Some((key, text[i + 1..].trim_start_matches(' ')));
            }
            b'#' if i > 0 && bytes[i - 1] == b' ' => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

/// A scalar or flow collection that makes up the rest of a line (a comment may follow).
fn inline_value(text: &str) -> Option<Value> {
    let mut cursor = Cursor {
        text,
        at: 0,
        depth: 0,
    };
    let value = match cursor.peek()? {
        b'{' | b'[' => cursor.flow()?,
        b'"' => Value::Str(cursor.double_quoted()?),
        b'\'' => Value::Str(cursor.single_quoted()?),
        _ => {
            if text.starts_with(INDICATORS) && !starts_plain_dash(text) {
                return None;
            }
            let end = text.find(" #").unwrap_or(text.len());
            let plain = text[..end].trim_end_matches(' ');
            if plain.contains(": ") || plain.ends_with(':') {
                return None;
            }
            return resolve_plain(plain);
        }
    };
    cursor.end_of_line()?;
    Some(value)
}

/// `-5`, `-x`: a plain scalar may start with `-` when neither a space nor a flow indicator
/// follows.
fn starts_plain_dash(text: &str) -> bool {
    text.starts_with('-')
        && text[1..]
            .chars()
            .next()
            .is_some_and(|c| !matches!(c, ' ' | ',' | '[' | ']' | '{' | '}'))
}

struct Cursor<'t> {
    text: &'t str,
    at: usize,
    depth: usize,
}

impl<'t> Cursor<'t> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    /// Nothing left but spaces and a comment after at least one space.
    fn end_of_line(&mut self) -> Option<()> {
        let before = self.at;
        self.spaces();
        match self.peek() {
            None => Some(()),
            Some(b'#') if self.at > before => Some(()),
            _ => None,
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    /// `{ key: value, ... }` or `[ value, ... ]`, on this line.
    fn flow(&mut self) -> Option<Value> {
        if self.depth == MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let value = self.flow_collection();
        self.depth -= 1;
        value
    }

    fn flow_collection(&mut self) -> Option<Value> {
        let open = self.peek()?;
        self.at += 1;
        let close = if open == b'{' { b'}' } else { b']' };
        let mut items = Vec::new();
        // A rule's mapping has nine fields: one allocation, not four.
        let mut entries = Vec::with_capacity(if open == b'{' { 10 } else { 0 });
        self.spaces();
        if self.peek() == Some(close) {
            self.at += 1;
        } else {
            loop {
                self.spaces();
                if open == b'{' {
                    let key = self.flow_plain()?;
                    self.expect(b':')?;
                    if self.peek() != Some(b' ') {
                        return None;
                    }
                    self.spaces();
                    let value = self.flow_value()?;
                    entries.push((string_key(key)?, value));
                } else {
                    items.push(self.flow_value()?);
                }
                self.spaces();
                match self.peek()? {
                    b',' => {
                        self.at += 1;
                        self.spaces();
                        // A trailing comma is left to serde-saphyr.
                        if self.peek() == Some(close) {
                            return None;
                        }
                    }
                    byte if byte == close => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        Some(if open == b'{' {
            Value::Map(entries)
        } else {
            Value::Seq(items)
        })
    }

    fn flow_value(&mut self) -> Option<Value> {
        match self.peek()? {
            b'{' | b'[' => self.flow(),
            b'"' => self.double_quoted().map(Value::Str),
            b'\'' => self.single_quoted().map(Value::Str),
            _ => {
                let plain = self.flow_plain()?;
                // `a: b` inside a sequence (a one-pair mapping) is left to serde-saphyr.
                if self.peek() == Some(b':') {
                    return None;
                }
                resolve_plain(plain)
            }
        }
    }

    /// A plain scalar in a flow collection: up to `,`, `]`, `}` or `:`, trailing spaces
    /// dropped; empty, or with anything doubtful in it, is left to serde-saphyr.
    fn flow_plain(&mut self) -> Option<&'t str> {
        let text = self.text;
        let rest = &text[self.at..];
        if rest.starts_with(INDICATORS) && !starts_plain_dash(rest) {
            return None;
        }
        // Bytes, not chars: the indicators are ASCII, which no multi-byte character contains.
        let end = rest
            .bytes()
            .position(|b| matches!(b, b',' | b']' | b'}' | b':' | b'[' | b'{' | b'#'))
            .unwrap_or(rest.len());
        let plain = rest[..end].trim_end_matches(' ');
        if plain.is_empty() || rest[end..].starts_with(['[', '{', '#']) {
            return None;
        }
        self.at += plain.len();
        Some(plain)
    }

    fn double_quoted(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let rest = &self.text[self.at..];
        // Without escapes (most are: "*", an address, a port), one copy of the slice.
        if let Some(end) = rest.find(['"', '\\'])
            && rest.as_bytes()[end] == b'"'
            && !rest[..end].chars().any(char::is_control)
        {
            self.at += end + 1;
            return Some(rest[..end].to_string());
        }
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += i + 1;
                    return Some(out);
                }
                '\\' => {
                    let (_, escape) = chars.next()?;
                    out.push(match escape {
                        '\\' => '\\',
                        '"' => '"',
                        '/' => '/',
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '0' => '\0',
                        ' ' => ' ',
                        'u' => {
                            let mut code = 0u32;
                            for _ in 0..4 {
                                code = code * 16 + chars.next()?.1.to_digit(16)?;
                            }
                            char::from_u32(code)?
                        }
                        _ => return None,
                    });
                }
                c if c.is_control() => return None,
                c => out.push(c),
            }
        }
        None
    }

    fn single_quoted(&mut self) -> Option<String> {
        self.expect(b'\'')?;
        let mut out = String::new();
        let rest = &self.text[self.at..];
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' if chars.peek().is_some_and(|(_, next)| *next == '\'') => {
                    chars.next();
                    out.push('\'');
                }
                '\'' => {
                    self.at += i + 1;
                    return Some(out);
                }
                c if c.is_control() => return None,
                c => out.push(c),
            }
        }
        None
    }
}

/// A key that is a string (a key that reads as null, a boolean or a number, and the merge
/// key `<<`, are left to serde-saphyr).
fn string_key(text: &str) -> Option<String> {
    if text.len() > MAX_KEY || text == "<<" {
        return None;
    }
    match resolve_plain(text)? {
        Value::Str(key) => Some(key),
        _ => None,
    }
}

/// A plain scalar's value as serde-saphyr resolves it (YAML 1.2 core schema, booleans strict),
/// or `None` where the resolution depends on options or is a float (rare in a spec).
fn resolve_plain(text: &str) -> Option<Value> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    let control = if text.is_ascii() {
        text.bytes().any(|b| b.is_ascii_control())
    } else {
        text.chars().any(char::is_control)
    };
    if control {
        return None;
    }
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let digits = !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit());
    if digits {
        if text.starts_with('+') || (unsigned.len() > 1 && unsigned.starts_with('0')) {
            return None;
        }
        let n: i128 = if text.starts_with('-') {
            i64::try_from(text.parse::<i128>().ok()?).ok()?.into()
        } else {
            u64::try_from(text.parse::<i128>().ok()?).ok()?.into()
        };
        return Some(Value::Int(n));
    }
    // Radix prefixes, underscores, floats and the non-finite spellings (Rust's float parser
    // takes `inf` and `nan` too): serde-saphyr's call.
    let numeric_start = unsigned
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'.' | b'i' | b'I' | b'n' | b'N'));
    let radix = matches!(
        unsigned.as_bytes(),
        [b'0', b'x' | b'X' | b'o' | b'O' | b'b' | b'B', ..]
    );
    let dotted = unsigned.eq_ignore_ascii_case(".nan") || unsigned.eq_ignore_ascii_case(".inf");
    if text.contains('_') || radix || dotted || (numeric_start && text.parse::<f64>().is_ok()) {
        return None;
    }
    Some(Value::Str(text.to_string()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::spec::value::saphyr_document;

    const EXAMPLES: [&str; 3] = [
        include_str!("../../../examples/contract.yaml"),
        include_str!("../../../examples/minimal.yaml"),
        include_str!("../../../examples/lab.yaml"),
    ];

    /// What a reader must guarantee: whatever the fast one reads, serde-saphyr reads the same.
    #[track_caller]
    fn agrees(text: &str) -> Option<Value> {
        let fast = parse(text)?;
        match saphyr_document(text) {
            Ok(reference) => assert_eq!(fast, reference, "read differently:\n{text}"),
            Err(problem) => panic!(
                "serde-saphyr refuses ({problem}) what the fast reader read as {fast:?}:\n{text}"
            ),
        }
        Some(fast)
    }

    /// The examples, the bench's spec of 1000 rules and the test specs are all read fast, as
    /// serde-saphyr reads them.
    #[test]
    fn the_examples_and_the_bench_spec_are_read_fast_and_the_same() {
        let bench = crate::spec::timing::bench_spec(1000, 999);
        for text in EXAMPLES.into_iter().chain([bench.as_str()]) {
            assert!(agrees(text).is_some(), "not read fast:\n{text}");
        }
        let specs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs");
        for entry in std::fs::read_dir(specs).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                agrees(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }

    #[test]
    fn what_it_is_not_sure_of_is_left_to_serde_saphyr() {
        for text in [
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: |\n  text\n",
            "a: >\n  text\n",
            "a: 1.5\n",
            "a: 0x10\n",
            "a: 1_000\n",
            "a: 010\n",
            "a: .inf\n",
            "a: nan\n",
            "a: multi\n  line\n",
            "a: \"two\n  lines\"\n",
            "a: [1,\n  2]\n",
            "a:\tb\n",
            "? a\n: b\n",
            "\"a\": b\n",
            "a: b: c\n",
            "a: [b,]\n",
            "a: {b}\n",
            "a: [b: c]\n",
            "- - a\n",
            "---\na: 1\n---\nb: 2\n",
            "%YAML 1.2\n---\na: 1\n",
            "a: 1\n b: 2\n",
            "a: \"\\x41\"\n",
            "a: sourcePortRange: *\n",
            "true: 1\n",
            "a: 1\n<<: {b: 2}\n",
            "k: [-, -]\n",
            "",
            "# only a comment\n",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn block_and_flow_styles_read_as_serde_saphyr_reads_them() {
        for text in [
            "a: 1\nb: -2\nc: x y\nd:\ne: ~\nf: null\ng: true\nh: False\n",
            "a:\n- 1\n- x\n-\n- [a, 'b', \"c\"]\n",
            "a:\n  - name: x\n    value: 1\n  -   name: y\n      list:\n      - z\n",
            "- a\n- b: 1\n  c: 2\n- {d: 3, e: [4, {f: g}]}\n",
            "a: { }\nb: []\nc: [ ]\nd: {x: 'it''s', y: \"q\\\"\\u00e9\"}\n",
            "---\na: 10.0.2.0/23 # a comment\nb: a#b\nc: \"*\"\nd: '*'\n",
            "a: 0.0.0.0/0\nb: 10.0.1.10-10.0.1.20\nc: Microsoft.ContainerInstance/containerGroups\n",
            "a: 0\nb: -0\nc: 18446744073709551615\nd: -9223372036854775808\n",
            "a: yes\nb: no\nc: on\nd: Off\ne: y\n",
            "dup: 1\ndup: 2\n",
            "  indented: 1\n  too: 2\n",
            "a: b\n\n   # comment\n\nc: d\n",
            "a: é ü ✓\n",
            "k: \"\\/\\ \\0\"\n",
        ] {
            assert!(agrees(text).is_some(), "not read fast: {text:?}");
        }
    }

    /// Characters that make YAML what it is, and some that make scalars something else.
    const EDITS: &[&str] = &[
        " ", "  ", "-", "- ", ":", ": ", "#", " #", "'", "\"", "[", "]", "{", "}", ",", "\n",
        "\n  ", "\n- ", "|", ">", "&", "*", "!", "~", "?", "%", "@", "0", "1", ".", "e", "x", "_",
        "\\", "null", "true", "\t", "\r", "\u{feff}", "é",
    ];

    fn edited(text: &str, edits: &[(usize, usize, usize)]) -> String {
        let mut out = text.to_string();
        for &(at, delete, insert) in edits {
            let mut at = at % (out.len() + 1);
            while !out.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + delete % 3).min(out.len());
            while !out.is_char_boundary(end) {
                end += 1;
            }
            out.replace_range(at..end, EDITS[insert % EDITS.len()]);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 3000,
            rng_algorithm: prop::test_runner::RngAlgorithm::XorShift,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Random edits of the examples: whatever the fast reader still reads, serde-saphyr
        /// reads the same.
        #[test]
        fn edited_examples_read_the_same_or_are_left_to_serde_saphyr(
            example in 0..EXAMPLES.len(),
            edits in prop::collection::vec((any::<usize>(), any::<usize>(), any::<usize>()), 1..4),
        ) {
            agrees(&edited(EXAMPLES[example], &edits));
        }

        /// Scalars of every shape in every place a scalar goes.
        #[test]
        fn scalars_read_the_same_or_are_left_to_serde_saphyr(
            scalar in "[a-zA-Z0-9 .:/_#'\"+~*&!-]{0,8}",
            other in "[a-z0-9.+-]{1,6}",
        ) {
            for text in [
                format!("k: {scalar}\n"),
                format!("- {scalar}\n- {other}\n"),
                format!("k: [{scalar}, {other}]\n"),
                format!("k: {{a: {scalar}, b: {other}}}\n"),
                format!("{scalar}: {other}\n"),
                format!("k:\n  {scalar}: {other}\n"),
                format!("k: \"{scalar}\"\n"),
                format!("k: '{scalar}'\n"),
            ] {
                agrees(&text);
            }
        }
    }
}
