//! JSON as Python's `json` module sees it: objects keep their key order, and
//! [`PyJson::dumps`] writes what `json.dumps(value, ensure_ascii=...)` writes with the
//! default separators (`", "`, `": "`).
//!
//! BIG-bench de-duplicates a task's examples by `json.dumps(example)`; two examples are
//! the same iff their dumps are equal, which depends on key order and on the int/float
//! distinction (`1` vs `1.0`). `serde_json::Value` forgets key order unless the
//! workspace-wide `preserve_order` feature is on (and its maps compare unordered
//! anyway), so this module has its own small value type.
//!
//! Limits: integers outside the 64-bit range are read as floats (Python keeps them
//! exact), and floats are parsed by serde_json, whose rare last-bit differences from
//! Python's correctly rounded parser would matter only for two floats that differ in
//! the 17th digit. Neither occurs in BIG-bench's task files.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt::{self, Write as _};

/// A JSON value with ordered objects and Python's int/float distinction.
#[derive(Debug, Clone, PartialEq)]
pub enum PyJson {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<PyJson>),
    /// Keys in document order; a repeated key keeps its first position and its last
    /// value, as a Python dict built by `json.loads` does.
    Dict(Vec<(String, PyJson)>),
}

impl PyJson {
    /// Parse JSON text.
    pub fn parse(text: &str) -> Result<PyJson, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// `json.dumps(self, ensure_ascii=ensure_ascii)` with default separators.
    pub fn dumps(&self, ensure_ascii: bool) -> String {
        let mut out = String::new();
        self.write(&mut out, ensure_ascii);
        out
    }

    fn write(&self, out: &mut String, ascii: bool) {
        match self {
            PyJson::Null => out.push_str("null"),
            PyJson::Bool(true) => out.push_str("true"),
            PyJson::Bool(false) => out.push_str("false"),
            PyJson::Int(i) => {
                let _ = write!(out, "{i}");
            }
            PyJson::Float(f) => out.push_str(&python_float_repr(*f)),
            PyJson::Str(s) => write_str(out, s, ascii),
            PyJson::List(xs) => {
                out.push('[');
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    x.write(out, ascii);
                }
                out.push(']');
            }
            PyJson::Dict(kv) => {
                out.push('{');
                for (i, (k, v)) in kv.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str(out, k, ascii);
                    out.push_str(": ");
                    v.write(out, ascii);
                }
                out.push('}');
            }
        }
    }

    /// The value of `key` in a dict.
    pub fn get(&self, key: &str) -> Option<&PyJson> {
        match self {
            PyJson::Dict(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyJson::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The number as f64, if this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PyJson::Int(i) => Some(*i as f64),
            PyJson::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Python's type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyJson::Null => "null",
            PyJson::Bool(_) => "a boolean",
            PyJson::Int(_) | PyJson::Float(_) => "a number",
            PyJson::Str(_) => "a string",
            PyJson::List(_) => "an array",
            PyJson::Dict(_) => "an object",
        }
    }
}

/// Write `s` as a JSON string the way Python's `json` encoder does.
/// `ensure_ascii`: every character outside `' '..='~'` becomes `\uXXXX` (UTF-16
/// surrogate pairs above U+FFFF); otherwise only `"`, `\` and U+0000..U+001F are escaped.
pub fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` (`float_repr_style == 'short'`): the shortest digits that
/// round-trip, in positional notation when the decimal exponent is in [-4, 16),
/// otherwise `d[.ddd]e±XX`; integral values get `.0`.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let e = format!("{x:e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let nd = digits.len() as i32;
    // Value = 0.d1d2...dn * 10^decpt.
    let decpt = exp + 1;
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(&digits);
        } else if decpt >= nd {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (decpt - nd) as usize));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if nd > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exp.abs());
    }
    out
}

impl<'de> Deserialize<'de> for PyJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PyJsonVisitor)
    }
}

struct PyJsonVisitor;

impl<'de> Visitor<'de> for PyJsonVisitor {
    type Value = PyJson;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<PyJson, E> {
        Ok(PyJson::Null)
    }
    fn visit_none<E>(self) -> Result<PyJson, E> {
        Ok(PyJson::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<PyJson, E> {
        Ok(PyJson::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<PyJson, E> {
        Ok(PyJson::Int(i128::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<PyJson, E> {
        Ok(PyJson::Int(i128::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<PyJson, E> {
        Ok(PyJson::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<PyJson, E> {
        Ok(PyJson::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<PyJson, E> {
        Ok(PyJson::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PyJson, A::Error> {
        let mut xs = Vec::new();
        while let Some(x) = seq.next_element()? {
            xs.push(x);
        }
        Ok(PyJson::List(xs))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PyJson, A::Error> {
        let mut kv: Vec<(String, PyJson)> = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, PyJson>()? {
            match kv.iter_mut().find(|(k0, _)| *k0 == k) {
                Some(slot) => slot.1 = v,
                None => kv.push((k, v)),
            }
        }
        Ok(PyJson::Dict(kv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_matches_python() {
        // python3 -c 'import json; print(json.dumps({"a": [1, 1.0, 1e-5, 1e16, 1.5e300,
        //   -0.0, 123456789.123, "é\u2028\x7f\x01\"\\ \U0001F600", None, True]}))'
        let v = PyJson::parse(
            r#"{"a": [1, 1.0, 1e-5, 1e16, 1.5e300, -0.0, 123456789.123, "é\u2028\u007f\u0001\"\\ 😀", null, true]}"#,
        )
        .unwrap();
        assert_eq!(
            v.dumps(true),
            r#"{"a": [1, 1.0, 1e-05, 1e+16, 1.5e+300, -0.0, 123456789.123, "\u00e9\u2028\u007f\u0001\"\\ \ud83d\ude00", null, true]}"#
        );
        assert_eq!(
            v.dumps(false),
            "{\"a\": [1, 1.0, 1e-05, 1e+16, 1.5e+300, -0.0, 123456789.123, \"é\u{2028}\u{7f}\\u0001\\\"\\\\ 😀\", null, true]}"
        );
    }

    #[test]
    fn float_repr_cases() {
        for (x, s) in [
            (0.1, "0.1"),
            (1e15, "1000000000000000.0"),
            (1.5e15, "1500000000000000.0"),
            (1e16, "1e+16"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (1.2e-5, "1.2e-05"),
            (-2.5, "-2.5"),
            (1e100, "1e+100"),
            (123.0, "123.0"),
        ] {
            assert_eq!(python_float_repr(x), s, "{x}");
        }
    }

    #[test]
    fn key_order_and_int_float_matter() {
        let a = PyJson::parse(r#"{"x": 1, "y": 0}"#).unwrap();
        let b = PyJson::parse(r#"{"y": 0, "x": 1}"#).unwrap();
        let c = PyJson::parse(r#"{"x": 1.0, "y": 0}"#).unwrap();
        assert_ne!(a.dumps(true), b.dumps(true));
        assert_ne!(a.dumps(true), c.dumps(true));
        let d = PyJson::parse(r#"{"x": 1, "y": 0, "x": 2}"#).unwrap();
        assert_eq!(d.dumps(true), r#"{"x": 2, "y": 0}"#);
    }
}
