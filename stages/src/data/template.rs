//! Prompt templates: text with `{field}` holes filled from a row.
//!
//! ```text
//! Consider the following claim: {claim|strip|ensure_end(".", "?")} Is this claim true or false. The claim is
//! ```
//!
//! - `{name}` is the row's field `name` (a string as it is; a number as JSON writes it;
//!   `true`/`false`); a field the row lacks, or a null, list or object, is an error
//!   naming the field.
//! - `{{` and `}}` are a literal `{` and `}`.
//! - `{name|filter|filter(args)}` passes the value through filters, left to right:
//!
//! | filter | what |
//! |---|---|
//! | `strip`, `lstrip`, `rstrip` | Python's `str.strip()` / `lstrip()` / `rstrip()` (Unicode whitespace plus U+001C..U+001F) |
//! | `lower`, `upper` | lower / upper case |
//! | `ensure_end("a", "b", ...)` | append `"a"` unless the value already ends with one of the arguments |
//!
//! Arguments are double-quoted strings (`\"` and `\\` escape). LASER's prompt quirks
//! are written with these: FEVER's `{question|strip|ensure_end(".", "?")}` (a period
//! unless the stripped claim ends in `.` or `?`), HotPotQA's
//! `{question|strip|ensure_end("?", ".")}`.

use super::error::FieldError;
use super::pystr::is_python_space;
use super::pystr::python_strip;
use serde_json::{Map, Value};

/// One filter of a hole.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Filter {
    Strip,
    LStrip,
    RStrip,
    Lower,
    Upper,
    /// Append the first suffix unless the value ends with one of them.
    EnsureEnd(Vec<String>),
}

impl Filter {
    fn apply(&self, s: String) -> String {
        match self {
            Filter::Strip => python_strip(&s).to_owned(),
            Filter::LStrip => s.trim_start_matches(is_python_space).to_owned(),
            Filter::RStrip => s.trim_end_matches(is_python_space).to_owned(),
            Filter::Lower => s.to_lowercase(),
            Filter::Upper => s.to_uppercase(),
            Filter::EnsureEnd(ends) => {
                if ends.iter().any(|e| s.ends_with(e.as_str())) {
                    s
                } else {
                    s + &ends[0]
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Piece {
    Text(String),
    Field { name: String, filters: Vec<Filter> },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

/// Parses `s` as double-quoted string arguments: `"a", "b"`.
fn parse_args(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None if out.is_empty() => return Ok(out),
            Some('"') => {}
            other => {
                return Err(format!(
                    "expected a double-quoted string argument, found {}",
                    other.map_or("the end".to_string(), |c| format!("`{c}`"))
                ))
            }
        }
        let mut arg = String::new();
        loop {
            match chars.next() {
                None => return Err("an argument string is not closed with `\"`".into()),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(c @ ('"' | '\\')) => arg.push(c),
                    Some('n') => arg.push('\n'),
                    Some('t') => arg.push('\t'),
                    other => {
                        return Err(format!(
                            "unknown escape `\\{}` in an argument (use \\\", \\\\, \\n or \\t)",
                            other.map(String::from).unwrap_or_default()
                        ))
                    }
                },
                Some(c) => arg.push(c),
            }
        }
        out.push(arg);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Ok(out),
            Some(',') => continue,
            Some(c) => {
                return Err(format!(
                    "expected `,` or `)` after an argument, found `{c}`"
                ))
            }
        }
    }
}

fn parse_filter(text: &str) -> Result<Filter, String> {
    let text = text.trim();
    let (name, args) = match text.find('(') {
        Some(i) => {
            let inner = text[i + 1..]
                .strip_suffix(')')
                .ok_or_else(|| format!("filter `{text}`: the arguments do not end with `)`"))?;
            (text[..i].trim(), Some(parse_args(inner)?))
        }
        None => (text, None),
    };
    let no_args = |f: Filter| match &args {
        None => Ok(f),
        Some(_) => Err(format!("filter `{name}` takes no arguments")),
    };
    match name {
        "strip" => no_args(Filter::Strip),
        "lstrip" => no_args(Filter::LStrip),
        "rstrip" => no_args(Filter::RStrip),
        "lower" => no_args(Filter::Lower),
        "upper" => no_args(Filter::Upper),
        "ensure_end" => match args {
            Some(a) if !a.is_empty() && a.iter().all(|x| !x.is_empty()) => {
                Ok(Filter::EnsureEnd(a))
            }
            _ => Err(
                "filter `ensure_end` needs one or more non-empty suffixes, e.g. ensure_end(\".\", \"?\")"
                    .into(),
            ),
        },
        "" => Err("an empty filter after `|`".into()),
        other => Err(format!(
            "unknown filter `{other}`: expected strip, lstrip, rstrip, lower, upper or ensure_end(...)"
        )),
    }
}

/// Splits a hole's content at `|` outside double-quoted arguments.
fn split_hole(hole: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in hole.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '|' if !quoted => {
                parts.push(&hole[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&hole[start..]);
    parts
}

impl Template {
    /// Parses a template; the error says what is wrong and where (a 0-based char offset).
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|x| x.1) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|x| x.1) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => {
                    return Err(format!(
                        "a lone `}}` at character {i} (write `}}}}` for a literal brace)"
                    ))
                }
                '{' => {
                    // The hole runs to the next `}` outside a quoted argument.
                    let (mut quoted, mut escaped, mut end) = (false, false, None);
                    for (j, d) in chars.by_ref() {
                        if escaped {
                            escaped = false;
                            continue;
                        }
                        match d {
                            '\\' if quoted => escaped = true,
                            '"' => quoted = !quoted,
                            '}' if !quoted => {
                                end = Some(j);
                                break;
                            }
                            '{' if !quoted => {
                                return Err(format!(
                                    "a `{{` inside the field opened at character {i} (write `{{{{` for a literal brace)"
                                ))
                            }
                            _ => {}
                        }
                    }
                    let end = end.ok_or_else(|| {
                        format!("the field opened at character {i} is not closed with `}}` (write `{{{{` for a literal brace)")
                    })?;
                    let hole = &source[i + 1..end];
                    let parts = split_hole(hole);
                    let name = parts[0].trim();
                    if name.is_empty() {
                        return Err(format!("an empty field name at character {i}"));
                    }
                    let filters = parts[1..]
                        .iter()
                        .map(|f| parse_filter(f))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("field `{name}` at character {i}: {e}"))?;
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Field {
                        name: name.to_owned(),
                        filters,
                    });
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template {
            source: source.to_owned(),
            pieces,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The fields the template reads, in order of first use.
    pub fn fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.pieces {
            if let Piece::Field { name, .. } = p {
                if !out.contains(&name.as_str()) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// Fills the template from a row's fields.
    pub fn render(&self, row: &Map<String, Value>) -> Result<String, FieldError> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field { name, filters } => {
                    let v = field_text(row, name)?;
                    out.push_str(&filters.iter().fold(v, |v, f| f.apply(v)));
                }
            }
        }
        Ok(out)
    }
}

/// The text of a scalar field (for templates): a string as it is, a number as JSON
/// writes it, `true`/`false`.
pub fn field_text(row: &Map<String, Value>, name: &str) -> Result<String, FieldError> {
    match row.get(name) {
        None => Err(FieldError::new(
            name,
            format!(
                "missing (the row has {})",
                if row.is_empty() {
                    "no fields".to_string()
                } else {
                    row.keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(other) => Err(FieldError::new(
            name,
            format!(
                "expected text or a number, found {}",
                super::record::type_name(other)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(j: &str) -> Map<String, Value> {
        serde_json::from_str(j).unwrap()
    }

    #[test]
    fn fields_braces_and_filters() {
        let t = Template::parse("Q: {q|strip|ensure_end(\"?\", \".\")} {{x}} {n}").unwrap();
        assert_eq!(t.fields(), vec!["q", "n"]);
        assert_eq!(
            t.render(&row(r#"{"q": "  Who  ", "n": 3}"#)).unwrap(),
            "Q: Who? {x} 3"
        );
        assert_eq!(
            t.render(&row(r#"{"q": "Who.", "n": 1.5}"#)).unwrap(),
            "Q: Who. {x} 1.5"
        );
        let t = Template::parse("{a|lower}{b|upper}|{c|rstrip}|{c|lstrip}|").unwrap();
        assert_eq!(
            t.render(&row(r#"{"a": "AbC", "b": "dé", "c": " x "}"#))
                .unwrap(),
            "abcDÉ| x|x |"
        );
        // Arguments may hold `|`, `}` and escaped quotes.
        let t = Template::parse(r#"{a|ensure_end("|}", "\"")}"#).unwrap();
        assert_eq!(t.render(&row(r#"{"a": "x"}"#)).unwrap(), "x|}");
        assert_eq!(t.render(&row(r#"{"a": "x\""}"#)).unwrap(), "x\"");
        assert_eq!(
            Template::parse("plain").unwrap().fields(),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn bad_templates_say_what_and_where() {
        for (t, want) in [
            ("a } b", "lone `}`"),
            ("a {b", "not closed"),
            ("{}", "empty field name"),
            ("{a|frob}", "unknown filter `frob`"),
            ("{a|strip(\"x\")}", "takes no arguments"),
            ("{a|ensure_end()}", "needs one or more"),
            ("{a|ensure_end(x)}", "double-quoted"),
            ("{a|ensure_end(\"x\"}", "do not end with `)`"),
            ("{a {b}}", "inside the field"),
            ("{a|}", "empty filter"),
        ] {
            let e = Template::parse(t).unwrap_err();
            assert!(e.contains(want), "{t}: {e}");
        }
    }

    #[test]
    fn missing_and_non_scalar_fields_name_the_field() {
        let t = Template::parse("{claim}").unwrap();
        let e = t.render(&row(r#"{"question": "x"}"#)).unwrap_err();
        assert_eq!(e.field, "claim");
        assert!(e.problem.contains("missing") && e.problem.contains("`question`"));
        for (j, found) in [
            (r#"{"claim": null}"#, "null"),
            (r#"{"claim": [1]}"#, "an array"),
            (r#"{"claim": {}}"#, "an object"),
        ] {
            let e = t.render(&row(j)).unwrap_err();
            assert!(e.problem.contains(found), "{}", e.problem);
        }
        assert_eq!(t.render(&row(r#"{"claim": true}"#)).unwrap(), "true");
    }
}
