//! Typed columns from a topic's declared value schema: a JSON Schema object whose top-level
//! properties become nullable columns next to the raw `value` in every Parquet file the
//! compactor writes (and so in the topic's table), e.g.
//!
//! ```json
//! {"type": "object",
//!  "properties": {"order_id": {"type": "integer"}, "amount": {"type": "number"},
//!                 "currency": {"type": "string"}, "paid": {"type": "boolean"},
//!                 "items": {"type": "array"}}}
//! ```
//!
//! `string` becomes UTF-8, `integer` a 64-bit integer, `number` a double, `boolean` a
//! boolean, and `object` or `array` the property's JSON text. A value that is not a JSON
//! object, or a property that is absent or of another type, is NULL in its column: the raw
//! `value` is always kept, so nothing is lost to a producer that does not follow the
//! schema.

use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_schema::DataType;

/// Most typed columns one topic may have.
pub const MAX_VALUE_COLUMNS: usize = 256;
/// Largest declared schema document, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;
/// Longest column name.
const MAX_NAME_LEN: usize = 128;

/// Column names the table already uses (compared without case, as Delta Lake and most
/// engines do).
pub const RESERVED_COLUMNS: &[&str] = &[
    "partition",
    "offset",
    "timestamp",
    "key",
    "value",
    "headers",
    "producer_id",
    "sequence",
];

/// The type of a typed column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// JSON strings, as UTF-8.
    String,
    /// JSON numbers that are integers, as signed 64-bit.
    Integer,
    /// JSON numbers, as doubles.
    Number,
    /// JSON booleans.
    Boolean,
    /// JSON objects and arrays, as their JSON text.
    Json,
}

impl ValueType {
    /// The name the schema and the metadata use (`string`, `integer`, `number`, `boolean`,
    /// `json`).
    pub fn name(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Integer => "integer",
            ValueType::Number => "number",
            ValueType::Boolean => "boolean",
            ValueType::Json => "json",
        }
    }

    /// The type named `name` (see [`ValueType::name`]).
    pub fn from_name(name: &str) -> Option<ValueType> {
        Some(match name {
            "string" => ValueType::String,
            "integer" => ValueType::Integer,
            "number" => ValueType::Number,
            "boolean" => ValueType::Boolean,
            "json" => ValueType::Json,
            _ => return None,
        })
    }

    /// The Arrow type of the column.
    pub fn data_type(self) -> DataType {
        match self {
            ValueType::String | ValueType::Json => DataType::Utf8,
            ValueType::Integer => DataType::Int64,
            ValueType::Number => DataType::Float64,
            ValueType::Boolean => DataType::Boolean,
        }
    }
}

/// One typed column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValueColumn {
    /// The property, and the column's name.
    pub name: String,
    /// Its type.
    pub kind: ValueType,
}

/// A schema document that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Not JSON.
    #[error("the value schema is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not a schema Cairn can turn into columns.
    #[error("the value schema {at}: {reason}")]
    Invalid {
        /// Where in the document (`root`, `property "amount"`).
        at: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
}

fn invalid(at: impl Into<String>, reason: impl Into<String>) -> SchemaError {
    SchemaError::Invalid {
        at: at.into(),
        reason: reason.into(),
    }
}

/// Checks a column name: a letter or `_`, then letters, digits and `_`, at most 128, not a
/// column the table already has.
pub fn validate_column_name(name: &str) -> Result<(), SchemaError> {
    let at = format!("property {name:?}");
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok
        || name.len() > MAX_NAME_LEN
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(invalid(
            at,
            format!(
                "a column name is 1 to {MAX_NAME_LEN} characters of [A-Za-z0-9_], not starting \
                 with a digit"
            ),
        ));
    }
    if RESERVED_COLUMNS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(invalid(
            at,
            format!(
                "`{name}` is one of the table's own columns ({}); rename the property",
                RESERVED_COLUMNS.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The columns a JSON Schema document declares, in the document's order.
pub fn parse_json_schema(text: &str) -> Result<Vec<ValueColumn>, SchemaError> {
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(invalid(
            "root",
            format!(
                "{} bytes is over the {MAX_SCHEMA_BYTES}-byte limit",
                text.len()
            ),
        ));
    }
    let root: serde_json::Value = serde_json::from_str(text)?;
    let Some(root) = root.as_object() else {
        return Err(invalid("root", "must be a JSON object"));
    };
    match root.get("type").and_then(|t| t.as_str()) {
        Some("object") => {}
        _ => {
            return Err(invalid(
                "root",
                "must say \"type\": \"object\" (the topic's values are JSON objects)",
            ));
        }
    }
    let Some(properties) = root.get("properties").and_then(|p| p.as_object()) else {
        return Err(invalid(
            "root",
            "must have \"properties\": an object of the fields that become columns",
        ));
    };
    if properties.is_empty() {
        return Err(invalid("root", "declares no properties"));
    }
    if properties.len() > MAX_VALUE_COLUMNS {
        return Err(invalid(
            "root",
            format!(
                "{} properties is over the limit of {MAX_VALUE_COLUMNS} columns",
                properties.len()
            ),
        ));
    }
    let order = property_order(text);
    let mut columns: Vec<ValueColumn> = Vec::with_capacity(properties.len());
    for name in order {
        // A key listed twice in the document: serde_json kept the last; so do we, once.
        let Some(property) = properties.get(&name) else {
            continue;
        };
        if columns.iter().any(|c| c.name == name) {
            continue;
        }
        validate_column_name(&name)?;
        if columns.iter().any(|c| c.name.eq_ignore_ascii_case(&name)) {
            return Err(invalid(
                format!("property {name:?}"),
                "is declared twice (names are compared without case)",
            ));
        }
        columns.push(ValueColumn {
            kind: property_type(&name, property)?,
            name,
        });
    }
    Ok(columns)
}

/// The property names in the order the document lists them (serde_json's map sorts them).
fn property_order(text: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Root {
        properties: Names,
    }
    /// The keys of a JSON object, in document order.
    struct Names(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Names {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Names;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Names, A::Error> {
                    let mut names = Vec::new();
                    while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        names.push(k);
                    }
                    Ok(Names(names))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    serde_json::from_str::<Root>(text)
        .map(|r| r.properties.0)
        .unwrap_or_default()
}

fn property_type(name: &str, property: &serde_json::Value) -> Result<ValueType, SchemaError> {
    let at = || format!("property {name:?}");
    let accepted = "\"type\" is one of string, integer, number, boolean, object, array \
                    (optionally with \"null\", as [\"integer\", \"null\"])";
    let types: Vec<&str> = match property.get("type") {
        Some(serde_json::Value::String(t)) => vec![t.as_str()],
        Some(serde_json::Value::Array(ts)) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ => return Err(invalid(at(), format!("has no type: {accepted}"))),
    };
    let non_null: Vec<&str> = types.into_iter().filter(|t| *t != "null").collect();
    match non_null.as_slice() {
        ["string"] => Ok(ValueType::String),
        ["integer"] => Ok(ValueType::Integer),
        ["number"] => Ok(ValueType::Number),
        ["integer", "number"] | ["number", "integer"] => Ok(ValueType::Number),
        ["boolean"] => Ok(ValueType::Boolean),
        ["object"] | ["array"] => Ok(ValueType::Json),
        [] => Err(invalid(at(), format!("is only null: {accepted}"))),
        other => Err(invalid(at(), format!("has type {other:?}: {accepted}"))),
    }
}

/// The typed columns of `values`, one array per column, in `columns`' order.
pub fn typed_arrays<'a>(
    values: impl ExactSizeIterator<Item = &'a [u8]>,
    columns: &[ValueColumn],
) -> Vec<ArrayRef> {
    enum Builder {
        Str(StringBuilder),
        Int(Int64Builder),
        Num(Float64Builder),
        Bool(BooleanBuilder),
    }
    let n = values.len();
    let mut builders: Vec<Builder> = columns
        .iter()
        .map(|c| match c.kind {
            ValueType::String | ValueType::Json => Builder::Str(StringBuilder::with_capacity(n, 0)),
            ValueType::Integer => Builder::Int(Int64Builder::with_capacity(n)),
            ValueType::Number => Builder::Num(Float64Builder::with_capacity(n)),
            ValueType::Boolean => Builder::Bool(BooleanBuilder::with_capacity(n)),
        })
        .collect();
    for v in values {
        let parsed: Option<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_slice(v).ok();
        for (c, b) in columns.iter().zip(builders.iter_mut()) {
            let field = parsed.as_ref().and_then(|m| m.get(&c.name));
            match b {
                Builder::Str(b) => match (c.kind, field) {
                    (ValueType::String, Some(serde_json::Value::String(s))) => b.append_value(s),
                    (
                        ValueType::Json,
                        Some(j @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))),
                    ) => b.append_value(j.to_string()),
                    _ => b.append_null(),
                },
                Builder::Int(b) => b.append_option(field.and_then(|f| f.as_i64())),
                Builder::Num(b) => b.append_option(field.and_then(|f| f.as_f64())),
                Builder::Bool(b) => b.append_option(field.and_then(|f| f.as_bool())),
            }
        }
    }
    builders
        .into_iter()
        .map(|b| -> ArrayRef {
            match b {
                Builder::Str(mut b) => Arc::new(b.finish()),
                Builder::Int(mut b) => Arc::new(b.finish()),
                Builder::Num(mut b) => Arc::new(b.finish()),
                Builder::Bool(mut b) => Arc::new(b.finish()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};

    use super::*;

    #[test]
    fn parses_properties_in_document_order() {
        let cols = parse_json_schema(
            r#"{"type":"object","properties":{"zeta":{"type":"string"},"amount":{"type":["number","null"]},
                "n":{"type":"integer"},"ok":{"type":"boolean"},"items":{"type":"array"}}}"#,
        )
        .unwrap();
        let got: Vec<(&str, ValueType)> = cols.iter().map(|c| (c.name.as_str(), c.kind)).collect();
        assert_eq!(
            got,
            vec![
                ("zeta", ValueType::String),
                ("amount", ValueType::Number),
                ("n", ValueType::Integer),
                ("ok", ValueType::Boolean),
                ("items", ValueType::Json),
            ]
        );
    }

    #[test]
    fn refuses_what_cannot_be_a_column() {
        for (doc, needle) in [
            ("[1]", "must be a JSON object"),
            (r#"{"type":"array"}"#, "\"type\": \"object\""),
            (r#"{"type":"object"}"#, "\"properties\""),
            (r#"{"type":"object","properties":{}}"#, "no properties"),
            (
                r#"{"type":"object","properties":{"value":{"type":"string"}}}"#,
                "table's own",
            ),
            (
                r#"{"type":"object","properties":{"Offset":{"type":"string"}}}"#,
                "table's own",
            ),
            (
                r#"{"type":"object","properties":{"a b":{"type":"string"}}}"#,
                "[A-Za-z0-9_]",
            ),
            (
                r#"{"type":"object","properties":{"9a":{"type":"string"}}}"#,
                "[A-Za-z0-9_]",
            ),
            (r#"{"type":"object","properties":{"a":{}}}"#, "has no type"),
            (
                r#"{"type":"object","properties":{"a":{"type":"date"}}}"#,
                "has type",
            ),
            (
                r#"{"type":"object","properties":{"a":{"type":"null"}}}"#,
                "only null",
            ),
            (
                r#"{"type":"object","properties":{"a":{"type":"string"},"A":{"type":"string"}}}"#,
                "twice",
            ),
            ("{", "not JSON"),
        ] {
            let e = parse_json_schema(doc).unwrap_err().to_string();
            assert!(e.contains(needle), "{doc}: {e}");
        }
    }

    #[test]
    fn values_that_do_not_follow_the_schema_are_null() {
        let cols = parse_json_schema(
            r#"{"type":"object","properties":{"amount":{"type":"number"},"n":{"type":"integer"},
                "who":{"type":"string"},"ok":{"type":"boolean"},"items":{"type":"array"}}}"#,
        )
        .unwrap();
        let values: Vec<&[u8]> = vec![
            br#"{"amount": 12.5, "n": 3, "who": "ada", "ok": true, "items": [1, 2]}"#,
            br#"{"amount": "12", "n": 3.5, "who": 7, "ok": "yes", "items": 4}"#,
            b"not json",
            br#"[1, 2]"#,
            br#"{"amount": 7}"#,
        ];
        let arrays = typed_arrays(values.into_iter(), &cols);
        let amount = arrays[0].as_primitive::<Float64Type>();
        assert_eq!(amount.value(0), 12.5);
        assert!(amount.is_null(1) && amount.is_null(2) && amount.is_null(3));
        assert_eq!(amount.value(4), 7.0);
        let n = arrays[1].as_primitive::<Int64Type>();
        assert_eq!(n.value(0), 3);
        assert!(n.is_null(1));
        assert_eq!(arrays[2].as_string::<i32>().value(0), "ada");
        assert!(arrays[2].is_null(1));
        assert!(arrays[3].as_boolean().value(0));
        assert!(arrays[3].is_null(1));
        assert_eq!(arrays[4].as_string::<i32>().value(0), "[1,2]");
        assert!(arrays[4].is_null(1) && arrays[4].is_null(4));
    }
}
