//! Errors of the data module. Every error about a file names the file; errors about
//! one row name where the row is ([`Loc`]: a line, a Parquet row or a BigBench
//! example) and the field.

use std::fmt;
use std::path::PathBuf;

/// Where a row is in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loc {
    /// 1-based line of a JSON-lines or CSV file (a CSV record's first line).
    Line(usize),
    /// 1-based row of a Parquet file.
    Row(usize),
    /// 0-based index in a BigBench `task.json`'s `examples` list.
    Example(usize),
}

impl Loc {
    /// The 1-based line, for a line-based file.
    pub fn line(self) -> Option<usize> {
        match self {
            Loc::Line(l) => Some(l),
            _ => None,
        }
    }
}

impl fmt::Display for Loc {
    /// `12` (a line: the file name and `:` go before it), `row 12`, `examples[12]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Line(l) => write!(f, "{l}"),
            Loc::Row(r) => write!(f, " row {r}"),
            Loc::Example(i) => write!(f, " examples[{i}]"),
        }
    }
}

/// `path:12` for a line, `path: row 12` for a Parquet row, `path: examples[3]`.
fn at(path: &std::path::Path, loc: &Loc) -> String {
    format!("{}:{loc}", path.display())
}

/// What can go wrong while reading a task file, reading rows, rendering prompts,
/// splitting or sampling.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A row of a file is not valid in its format (not a JSON object, not UTF-8, a
    /// malformed CSV record, an unreadable Parquet page).
    #[error("{}: {message}", at(path, loc))]
    Malformed {
        path: PathBuf,
        loc: Loc,
        message: String,
    },
    /// A field of one row is missing, has the wrong type or an unusable value.
    #[error("{}: field `{field}`: {problem}", at(path, loc))]
    Field {
        path: PathBuf,
        loc: Loc,
        field: String,
        problem: String,
    },
    /// A whole-file problem in the rows (no header, unreadable Parquet footer).
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// The file holds no row at all.
    #[error("{}: no examples", path.display())]
    Empty { path: PathBuf },
    /// A key of a task file is missing, of the wrong type or has an unusable value.
    /// `line` is the key's line when it is in the file.
    #[error(
        "{}{}: field `{field}`: {problem}",
        path.display(),
        line.map(|l| format!(":{l}")).unwrap_or_default()
    )]
    TaskFile {
        path: PathBuf,
        line: Option<usize>,
        field: String,
        problem: String,
    },
    /// A BIG-bench `task.json` is not valid JSON or lacks what the rebuild needs.
    /// `example` is the 0-based index in its `examples` list, when the problem is
    /// in one example.
    #[error(
        "{}: {}field `{field}`: {problem}",
        path.display(),
        example.map(|i| format!("examples[{i}]: ")).unwrap_or_default()
    )]
    TaskJson {
        path: PathBuf,
        example: Option<usize>,
        field: String,
        problem: String,
    },
    /// A task name that is neither built in nor a task file.
    #[error(
        "unknown task `{0}`: expected a built-in task (epistemic_reasoning, qa_wikidata, \
         fever, truthfulqa, hotpotqa) or the path of a task file (.toml)"
    )]
    UnknownTask(String),
    /// A chat template could not be rendered.
    #[error("chat template of {model}: {message}")]
    Chat { model: String, message: String },
    /// A split name that is none of `selection`, `held_out`, `all`.
    #[error(
        "unknown split `{0}`: expected selection (alias validation), held_out (alias test) or all"
    )]
    UnknownSplit(String),
    /// A sample size that is neither a non-negative integer nor `all`.
    #[error("invalid sample size `{0}`: expected a non-negative integer or `all`")]
    InvalidSampleSize(String),
    /// More samples were asked for than the pool holds.
    #[error(
        "cannot draw {requested} {what} samples: only {available} rows are available \
         ({detail}); ask for fewer samples or `all`"
    )]
    SampleTooLarge {
        what: String,
        requested: usize,
        available: usize,
        detail: String,
    },
}

/// A problem with one field of one row, before the file and row are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The error with its file and row.
    pub fn at(self, path: &std::path::Path, loc: Loc) -> DataError {
        DataError::Field {
            path: path.to_owned(),
            loc,
            field: self.field,
            problem: self.problem,
        }
    }
}
