//! The untyped document tree a spec is read into before the schema walk of [`super::parse`].
//!
//! Why not deserialize straight into the model with serde derive: derive stops at the first
//! error, and the contract asks for every problem at once, each with its path. A tree keeps
//! mapping entries in order and keeps duplicate keys (which a `HashMap` would silently merge) so
//! that the walk can report them.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Problem;

/// A YAML or JSON value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Value>),
    /// Entries in document order, duplicates kept.
    Map(Vec<(String, Value)>),
}

impl Value {
    /// "a string", "the integer 5", ... for "expected X, found Y" messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Value::Null => "nothing (null)".to_string(),
            Value::Bool(b) => format!("the boolean {b}"),
            Value::Int(n) => format!("the integer {n}"),
            Value::Float(x) => format!("the number {x}"),
            Value::Str(s) => format!("the string {s:?}"),
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
        }
    }

    /// The text of a mapping key. YAML allows any value as a key; a spec only has string keys,
    /// so others are spelled out and then reported as unknown fields.
    fn into_key(self) -> String {
        match self {
            Value::Null => "null".to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Float(x) => x.to_string(),
            Value::Str(s) => s,
            Value::Seq(_) => "<list>".to_string(),
            Value::Map(_) => "<mapping>".to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i128::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("the integer {v} is too large")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Value, E> {
        Err(E::custom("binary values are not supported"))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<Value, Value>()? {
            entries.push((key.into_key(), value));
        }
        Ok(Value::Map(entries))
    }
}

/// Reads a document: JSON when it starts with `{` or `[` (serde_json's messages are the
/// clearer ones for JSON), YAML otherwise. A syntax error becomes one problem whose path is
/// the position in the text.
pub(crate) fn parse_document(text: &str) -> Result<Value, Problem> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with(['{', '[']) {
        return serde_json::from_str(text).map_err(|error| {
            let message = error.to_string();
            // serde_json appends " at line L column C"; the position goes into the path.
            let message = match message.rsplit_once(" at line ") {
                Some((head, _)) => head.to_string(),
                None => message,
            };
            Problem::new(
                format!("line {}, column {}", error.line(), error.column()),
                message,
            )
        });
    }
    // The fast reader takes the plain YAML specs are written in, and leaves the rest (and
    // every syntax error, to be located) to serde-saphyr.
    if let Some(value) = super::fast_yaml::parse(text) {
        return Ok(value);
    }
    saphyr_document(text)
}

/// A YAML document read by serde-saphyr (what [`super::fast_yaml`] must agree with).
pub(crate) fn saphyr_document(text: &str) -> Result<Value, Problem> {
    let mut options = serde_saphyr::Options::default();
    // Reported by the schema walk, with the path, instead of as a bare syntax error.
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    // `no` and `on` are strings in a spec, as in YAML 1.2.
    options.strict_booleans = true;
    options.with_snippet = false;
    match serde_saphyr::from_str_with_options::<Option<Value>>(text, options) {
        Ok(value) => Ok(value.unwrap_or(Value::Null)),
        Err(error) => {
            let location = error.location();
            let path = match location {
                Some(at) => format!("line {}, column {}", at.line(), at.column()),
                None => "(document)".to_string(),
            };
            let message = one_line(&error.to_string());
            // The position is in the path already.
            let mut message = match message.rsplit_once(" at line ") {
                Some((head, _)) => head.to_string(),
                None => message,
            };
            // The classic: `sourcePortRange: *` makes YAML read an alias.
            let line = location
                .and_then(|at| usize::try_from(at.line()).ok())
                .and_then(|n| text.lines().nth(n.checked_sub(1)?));
            if message.contains("alias") && line.is_some_and(|l| l.contains('*')) {
                message.push_str(" (a bare * starts a YAML alias: write \"*\")");
            }
            Err(Problem::new(path, message))
        }
    }
}

/// Error renderings may span lines; a problem is one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
