//! Typed access to the fields of one JSON-lines record, with errors that name the field.

use super::error::FieldError;
use serde_json::{Map, Value};

/// JSON type name of a value, for error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn get<'a>(rec: &'a Map<String, Value>, field: &'static str) -> Result<&'a Value, FieldError> {
    rec.get(field)
        .ok_or_else(|| FieldError::new(field, "missing"))
}

/// A string field.
pub(crate) fn get_str<'a>(
    rec: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, FieldError> {
    match get(rec, field)? {
        Value::String(s) => Ok(s),
        other => Err(FieldError::new(
            field,
            format!("expected a string, found {}", type_name(other)),
        )),
    }
}

/// A 0/1 integer label field (FEVER's `answer`, TruthfulQA's `label`).
pub(crate) fn get_binary_label(
    rec: &Map<String, Value>,
    field: &'static str,
) -> Result<usize, FieldError> {
    match get(rec, field)? {
        Value::Number(n) => match n.as_u64() {
            Some(0) => Ok(0),
            Some(1) => Ok(1),
            _ => Err(FieldError::new(
                field,
                format!("unknown label {n}: expected the integer 0 or 1"),
            )),
        },
        other => Err(FieldError::new(
            field,
            format!("expected the integer 0 or 1, found {}", type_name(other)),
        )),
    }
}
