//! Reading rows: JSON lines, CSV, Parquet and BIG-bench `task.json`, each into
//! [`Row`]s of named JSON values in file order, every problem an error naming the
//! file, the row ([`Loc`]) and, where there is one, the field.
//!
//! - **JSONL**: one JSON object a line; blank lines are skipped; a leading BOM is
//!   ignored; invalid UTF-8 is an error naming the line.
//! - **CSV**: a header row, then records (RFC 4180 quoting, a record may span lines;
//!   its location is its first line). Every value is text; a cell that holds a list
//!   (per-row choices) is written as a JSON array, `["a", "b"]`.
//! - **Parquet**: each column a field: strings, integers, floats, booleans, lists
//!   (of anything), structs (objects), nulls; dates and times as their text. Only the
//!   columns the task reads are converted.
//! - **BigBench**: [`super::bigbench::laser_rows`] in LASER's order, each row with the
//!   fields `input` (raw), `inputs` (BIG-bench's formatting), `target` (for a row with
//!   `target_scores`, its highest-scored key, else its target), `targets` (all of
//!   them), `choices` (the `target_scores` keys, when there are some) and `split`
//!   (`validation` or `train`).
//! - **BBH**: a BIG-Bench-Hard file, `{"examples": [{"input", "target"}]}`, in file
//!   order ([`read_bbh`]).

use super::bigbench::{self, BigBenchRow};
use super::error::{DataError, Loc};
use super::task::{Kind, MultipleTargets};
use serde_json::{Map, Value};
use std::path::Path;

/// One row: where it is and its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub loc: Loc,
    pub fields: Map<String, Value>,
}

/// A row left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub loc: Loc,
    pub reason: String,
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Read {
        path: path.to_owned(),
        source,
    })
}

fn malformed(path: &Path, loc: Loc, message: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.to_owned(),
        loc,
        message: message.into(),
    }
}

/// JSON lines.
pub fn read_jsonl(path: &Path) -> Result<Vec<Row>, DataError> {
    parse_jsonl(&read_bytes(path)?, path)
}

/// [`read_jsonl`] on bytes already read; `path` names them in errors.
pub fn parse_jsonl(bytes: &[u8], path: &Path) -> Result<Vec<Row>, DataError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut rows = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let loc = Loc::Line(i + 1);
        let line = std::str::from_utf8(line).map_err(|e| {
            malformed(
                path,
                loc,
                format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1),
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Map<String, Value> = serde_json::from_str(line)
            .map_err(|e| malformed(path, loc, format!("not a valid JSON object: {e}")))?;
        rows.push(Row { loc, fields });
    }
    Ok(rows)
}

/// The 1-based line of the first byte at or after `offset` that is not a line break
/// (the csv crate's position of a record may point at blank lines before it).
fn line_at(bytes: &[u8], offset: usize) -> usize {
    let mut offset = offset.min(bytes.len());
    while offset < bytes.len() && matches!(bytes[offset], b'\n' | b'\r') {
        offset += 1;
    }
    bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Comma-separated values with a header row.
pub fn read_csv(path: &Path) -> Result<Vec<Row>, DataError> {
    parse_csv(&read_bytes(path)?, path)
}

/// [`read_csv`] on bytes already read.
pub fn parse_csv(bytes: &[u8], path: &Path) -> Result<Vec<Row>, DataError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let csv_err = |e: csv::Error| {
        let line = e
            .position()
            .map_or(1, |p| line_at(bytes, p.byte() as usize));
        let message = match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!(
                "malformed CSV: this record has {len} fields, the header has {expected_len}"
            ),
            _ => format!("malformed CSV: {e}"),
        };
        malformed(path, Loc::Line(line), message)
    };
    let header: Vec<String> = reader
        .byte_headers()
        .map_err(csv_err)?
        .iter()
        .enumerate()
        .map(|(i, h)| {
            std::str::from_utf8(h).map(str::to_owned).map_err(|_| {
                malformed(
                    path,
                    Loc::Line(1),
                    format!("header column {} is not UTF-8", i + 1),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    for (i, h) in header.iter().enumerate() {
        if header[..i].contains(h) {
            return Err(malformed(
                path,
                Loc::Line(1),
                format!("the header names column `{h}` twice"),
            ));
        }
    }
    let mut rows = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_err(e)),
        }
        // The csv crate does not count line breaks inside quoted cells: count them.
        let line = record
            .position()
            .map_or(0, |p| line_at(bytes, p.byte() as usize));
        let loc = Loc::Line(line);
        if record.len() == 1 && record[0].is_empty() {
            continue; // a blank line
        }
        let mut fields = Map::new();
        for (name, value) in header.iter().zip(record.iter()) {
            let v = std::str::from_utf8(value).map_err(|e| DataError::Field {
                path: path.to_owned(),
                loc,
                field: name.clone(),
                problem: format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1),
            })?;
            fields.insert(name.clone(), Value::String(v.to_owned()));
        }
        rows.push(Row { loc, fields });
    }
    Ok(rows)
}

/// A Parquet value as JSON.
fn parquet_value(f: &parquet::record::Field) -> Value {
    use parquet::record::Field as F;
    match f {
        F::Null => Value::Null,
        F::Bool(b) => Value::Bool(*b),
        F::Byte(x) => Value::from(*x),
        F::Short(x) => Value::from(*x),
        F::Int(x) => Value::from(*x),
        F::Long(x) => Value::from(*x),
        F::UByte(x) => Value::from(*x),
        F::UShort(x) => Value::from(*x),
        F::UInt(x) => Value::from(*x),
        F::ULong(x) => Value::from(*x),
        F::Float16(x) => float(f64::from(*x)),
        F::Float(x) => float(f64::from(*x)),
        F::Double(x) => float(*x),
        F::Str(s) => Value::String(s.clone()),
        F::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => Value::Null,
        },
        F::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(k, v)| (k.clone(), parquet_value(v)))
                .collect(),
        ),
        F::ListInternal(list) => Value::Array(list.elements().iter().map(parquet_value).collect()),
        F::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        F::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (key, parquet_value(v))
                })
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

fn float(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Apache Parquet; only the columns named in `columns` are converted (all of them
/// when `columns` is empty).
pub fn read_parquet(path: &Path, columns: &[&str]) -> Result<Vec<Row>, DataError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|source| DataError::Read {
        path: path.to_owned(),
        source,
    })?;
    let reader = SerializedFileReader::new(file).map_err(|e| DataError::File {
        path: path.to_owned(),
        message: format!("not a readable Parquet file: {e}"),
    })?;
    let iter = reader.get_row_iter(None).map_err(|e| DataError::File {
        path: path.to_owned(),
        message: format!("cannot read the Parquet rows: {e}"),
    })?;
    let mut rows = Vec::new();
    for (i, row) in iter.enumerate() {
        let loc = Loc::Row(i + 1);
        let row = row.map_err(|e| malformed(path, loc, format!("unreadable Parquet row: {e}")))?;
        let mut fields = Map::new();
        for (name, value) in row.get_column_iter() {
            if columns.is_empty() || columns.contains(&name.as_str()) {
                if let parquet::record::Field::Bytes(b) = value {
                    if std::str::from_utf8(b.data()).is_err() {
                        return Err(DataError::Field {
                            path: path.to_owned(),
                            loc,
                            field: name.clone(),
                            problem: "binary data that is not UTF-8 text".into(),
                        });
                    }
                }
                fields.insert(name.clone(), parquet_value(value));
            }
        }
        rows.push(Row { loc, fields });
    }
    Ok(rows)
}

/// The options a BIG-Bench-Hard input lists after its last `Options:` line: `(A) ...`
/// lines give their labels (`(A)`), `- Yes` lines their text (`Yes`); `None` when the
/// input has no such section.
pub fn bbh_options(input: &str) -> Option<Vec<String>> {
    let at = input.rfind("Options:")?;
    let mut options = Vec::new();
    for line in input[at + "Options:".len()..].lines() {
        let bytes = line.as_bytes();
        if line.trim().is_empty() && options.is_empty() {
            continue;
        }
        if bytes.len() >= 4 && bytes[0] == b'(' && bytes[1].is_ascii_uppercase() && bytes[2] == b')'
        {
            options.push(line[..3].to_string());
        } else if let Some(text) = line.strip_prefix("- ") {
            options.push(text.trim().to_string());
        } else {
            break;
        }
    }
    Some(options)
}

/// A BIG-Bench-Hard file: `{"examples": [{"input": ..., "target": ...}]}`, rows in file
/// order with the fields `input`, `target` and, when the input lists them, `options`
/// ([`bbh_options`]). A row whose input lists options that do not include its target,
/// or fewer than two, is left out with the reason (three rows of the published files:
/// movie_recommendation 163, ruin_names 99 and 144, and snarks 21, whose options were
/// cut off).
pub fn read_bbh(path: &Path) -> Result<(Vec<Row>, Vec<Skipped>), DataError> {
    parse_bbh(&read_bytes(path)?, path)
}

/// [`read_bbh`] on bytes already read; `path` names them in errors.
pub fn parse_bbh(bytes: &[u8], path: &Path) -> Result<(Vec<Row>, Vec<Skipped>), DataError> {
    let doc_err = |message: String| DataError::File {
        path: path.to_owned(),
        message,
    };
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| doc_err(format!("not a BIG-Bench-Hard file: not valid JSON: {e}")))?;
    let examples = doc
        .get("examples")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            doc_err(
                "not a BIG-Bench-Hard file: expected an object with an `examples` list of \
             {\"input\", \"target\"} objects"
                    .into(),
            )
        })?;
    let mut rows = Vec::with_capacity(examples.len());
    let mut skipped = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        let loc = Loc::Example(i);
        let text = |field: &str| -> Result<String, DataError> {
            match ex.get(field) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Err(DataError::Field {
                    path: path.to_owned(),
                    loc,
                    field: field.to_owned(),
                    problem: format!("expected a string, found {}", super::record::type_name(v)),
                }),
                None => Err(DataError::Field {
                    path: path.to_owned(),
                    loc,
                    field: field.to_owned(),
                    problem: "missing".into(),
                }),
            }
        };
        let (input, target) = (text("input")?, text("target")?);
        let mut fields = Map::new();
        if let Some(options) = bbh_options(&input) {
            let reason = if options.len() < 2 {
                Some(format!(
                    "its input lists {} option(s) after `Options:`",
                    options.len()
                ))
            } else if !options.contains(&target) {
                Some(format!(
                    "its target `{target}` is not one of the options its input lists ({})",
                    options.join(", ")
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                skipped.push(Skipped { loc, reason });
                continue;
            }
            fields.insert(
                "options".into(),
                Value::Array(options.into_iter().map(Value::String).collect()),
            );
        }
        fields.insert("input".into(), Value::String(input));
        fields.insert("target".into(), Value::String(target));
        rows.push(Row { loc, fields });
    }
    Ok((rows, skipped))
}

/// A BIG-bench `task.json` in LASER's order as rows (see the module docs). For a
/// generation task, a row with several targets follows `multiple`; the rows left
/// out come back with the reason.
pub fn read_bigbench(
    path: &Path,
    kind: Kind,
    multiple: MultipleTargets,
) -> Result<(Vec<Row>, Vec<Skipped>), DataError> {
    let rows = bigbench::read_laser_rows(path)?;
    bigbench_rows(rows, path, kind, multiple)
}

/// [`read_bigbench`] on rows already rebuilt.
pub fn bigbench_rows(
    rows: Vec<BigBenchRow>,
    path: &Path,
    kind: Kind,
    multiple: MultipleTargets,
) -> Result<(Vec<Row>, Vec<Skipped>), DataError> {
    let mut out = Vec::with_capacity(rows.len());
    let mut skipped = Vec::new();
    for r in rows {
        let ex = r.example;
        let loc = Loc::Example(ex.example);
        let target = match (kind, &ex.best) {
            (Kind::Choice, Some(best)) => best.clone(),
            _ => match (ex.targets.len(), multiple) {
                (1, _) | (_, MultipleTargets::First) if !ex.targets.is_empty() => {
                    ex.targets[0].clone()
                }
                (0, _) => {
                    return Err(DataError::Field {
                        path: path.to_owned(),
                        loc,
                        field: "target".into(),
                        problem: "an empty list of targets".into(),
                    })
                }
                (n, MultipleTargets::Skip) => {
                    skipped.push(Skipped {
                        loc,
                        reason: format!("{n} targets (multiple_targets = \"skip\")"),
                    });
                    continue;
                }
                (n, _) => {
                    return Err(DataError::Field {
                        path: path.to_owned(),
                        loc,
                        field: "target".into(),
                        problem: format!(
                            "{n} targets; set multiple_targets = \"skip\" or \"first\" in the task file"
                        ),
                    })
                }
            },
        };
        let mut fields = Map::new();
        fields.insert("input".into(), Value::String(ex.input));
        fields.insert("inputs".into(), Value::String(ex.inputs));
        fields.insert("target".into(), Value::String(target));
        fields.insert(
            "targets".into(),
            Value::Array(ex.targets.into_iter().map(Value::String).collect()),
        );
        if let Some(c) = ex.choices {
            fields.insert(
                "choices".into(),
                Value::Array(c.into_iter().map(Value::String).collect()),
            );
        }
        fields.insert("split".into(), Value::String(r.split.name().into()));
        out.push(Row { loc, fields });
    }
    Ok((out, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn p(name: &str) -> PathBuf {
        PathBuf::from(name)
    }

    #[test]
    fn jsonl_lines_blanks_bom_and_errors() {
        let rows = parse_jsonl(
            b"\xef\xbb\xbf{\"a\": 1}\n\n {\"a\": \"x\"}\r\n",
            &p("d.jsonl"),
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].loc, Loc::Line(3));
        assert_eq!(rows[1].fields["a"], "x");
        let e = parse_jsonl(b"{\"a\": 1}\n[1]\n", &p("d.jsonl")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("d.jsonl:2: not a valid JSON object"),
            "{e}"
        );
        let e = parse_jsonl(b"{\"a\": 1}\n{\"a\": \"\xff\"}\n", &p("d.jsonl")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.jsonl:2: invalid UTF-8 at byte 8 of the line"
        );
    }

    #[test]
    fn csv_quoting_multiline_records_and_errors() {
        let text = "claim,label\n\"A, quoted \"\"claim\"\"\",1\n\"two\nlines\",0\n\nlast,1\n";
        let rows = parse_csv(text.as_bytes(), &p("d.csv")).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].fields["claim"], "A, quoted \"claim\"");
        assert_eq!(rows[1].fields["claim"], "two\nlines");
        assert_eq!(rows[1].loc, Loc::Line(3));
        assert_eq!(rows[2].loc, Loc::Line(6));
        assert_eq!(rows[2].fields["label"], "1");
        let e = parse_csv(b"a,b\n1,2\n3\n", &p("d.csv")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.csv:3: malformed CSV: this record has 1 fields, the header has 2"
        );
        let e = parse_csv(b"a,b\n1,\xff\n", &p("d.csv")).unwrap_err();
        assert_eq!(e.to_string(), "d.csv:2: field `b`: invalid UTF-8 at byte 1");
        let e = parse_csv(b"a,a\n1,2\n", &p("d.csv")).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        assert!(matches!(
            parse_csv(b"", &p("d.csv")).unwrap_err(),
            DataError::Empty { .. }
        ));
        assert!(parse_csv(b"a,b\n", &p("d.csv")).unwrap().is_empty());
    }
}
