//! Errors of the data module. Every error about a file names the file; errors about
//! one line of a JSON-lines file name the 1-based line and the field.

use std::path::PathBuf;

/// What can go wrong while reading, parsing, splitting or sampling a data set.
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
    /// A line of a JSON-lines file is not a JSON object.
    #[error("{}:{line}: not a valid JSON object: {message}", path.display())]
    Json {
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        message: String,
    },
    /// A field of one line is missing, has the wrong type or an unknown value.
    #[error("{}:{line}: field `{field}`: {problem}", path.display())]
    Field {
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        field: String,
        problem: String,
    },
    /// The file holds no example at all.
    #[error("{}: no examples", path.display())]
    Empty { path: PathBuf },
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
    /// A task name that is none of the five.
    #[error(
        "unknown task `{0}`: expected one of epistemic_reasoning, qa_wikidata, fever, \
         truthfulqa, hotpotqa"
    )]
    UnknownTask(String),
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

/// A problem with one field of one record, before the file and line are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        FieldError {
            field,
            problem: problem.into(),
        }
    }
}
