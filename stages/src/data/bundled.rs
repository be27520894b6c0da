//! The data sets that ship with c2i (`data/` in the repository, its README says where
//! each came from and under which license), compiled into the binary.
//!
//! A built-in task reads its rows from here, so a run needs nothing but the model: the
//! file is written once to `$C2I_HOME/data/<name>` (the path the stages hash, key on and
//! hand to workers) and rewritten when that copy is missing or differs from the
//! compiled-in bytes. The task files under `tasks/` name the same files by relative
//! path, so a task given by name and by file read the same bytes and share cache
//! entries.

use super::error::DataError;
use std::path::{Path, PathBuf};

/// One shipped file: its path under `data/` and its bytes.
#[derive(Debug)]
pub struct Bundled {
    pub name: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! bundled {
    ($($name:literal),* $(,)?) => {
        &[$(Bundled {
            name: $name,
            bytes: include_bytes!(concat!("../../../data/", $name)),
        }),*]
    };
}

/// Every file a built-in task reads.
pub const FILES: &[Bundled] = bundled!(
    "bigbench/epistemic_reasoning/task.json",
    "bigbench/qa_wikidata/task.json",
    "fever/laser_fever.jsonl",
    "truthfulqa/laser_truthfulqa_pointwise.jsonl",
    "hotpotqa/laser_hotpot_unfiltered.jsonl",
    "bbh/boolean_expressions.json",
    "bbh/disambiguation_qa.json",
    "bbh/dyck_languages.json",
    "bbh/geometric_shapes.json",
    "bbh/hyperbaton.json",
    "bbh/logical_deduction_five_objects.json",
    "bbh/logical_deduction_seven_objects.json",
    "bbh/logical_deduction_three_objects.json",
    "bbh/movie_recommendation.json",
    "bbh/multistep_arithmetic_two.json",
    "bbh/navigate.json",
    "bbh/object_counting.json",
    "bbh/penguins_in_a_table.json",
    "bbh/reasoning_about_colored_objects.json",
    "bbh/ruin_names.json",
    "bbh/salient_translation_error_detection.json",
    "bbh/snarks.json",
    "bbh/sports_understanding.json",
    "bbh/temporal_sequences.json",
    "bbh/tracking_shuffled_objects_five_objects.json",
    "bbh/tracking_shuffled_objects_seven_objects.json",
    "bbh/tracking_shuffled_objects_three_objects.json",
    "bbh/web_of_lies.json",
    "bbh/word_sorting.json",
);

/// A shipped file by its path under `data/`.
pub fn find(name: &str) -> Option<&'static Bundled> {
    FILES.iter().find(|b| b.name == name)
}

/// The directory shipped files are written to: `$C2I_HOME/data`.
pub fn dir() -> Result<PathBuf, DataError> {
    crate::assets::c2i_home()
        .map(|h| h.join("data"))
        .map_err(|e| DataError::File {
            path: PathBuf::from("$C2I_HOME"),
            message: e.to_string(),
        })
}

impl Bundled {
    /// The file on disk under `dir`, written (atomically) when missing or different.
    pub fn materialize_in(&self, dir: &Path) -> Result<PathBuf, DataError> {
        let dest = dir.join(self.name);
        if std::fs::read(&dest).is_ok_and(|b| b == self.bytes) {
            return Ok(dest);
        }
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| DataError::Write { path, source }
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(write_err(parent))?;
        }
        let tmp = dest.with_file_name(format!(
            ".{}.{}.tmp",
            dest.file_name().and_then(|n| n.to_str()).unwrap_or("data"),
            std::process::id()
        ));
        std::fs::write(&tmp, self.bytes).map_err(write_err(&tmp))?;
        std::fs::rename(&tmp, &dest).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            write_err(&dest)(e)
        })?;
        Ok(dest)
    }

    /// [`Bundled::materialize_in`] under `$C2I_HOME/data`.
    pub fn materialize(&self) -> Result<PathBuf, DataError> {
        self.materialize_in(&dir()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha256(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The files are the ones `data/README.md` pins (the sources' bytes).
    #[test]
    fn shipped_files_are_the_pinned_sources() {
        let readme = include_str!("../../../data/README.md");
        let pinned: Vec<(&str, &str)> = readme
            .lines()
            .filter_map(|l| l.split_once("  "))
            .filter(|(h, _)| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        assert!(pinned.len() >= 5, "data/README.md pins {pinned:?}");
        for (hash, name) in pinned {
            if let Some(b) = find(name) {
                assert_eq!(sha256(b.bytes), hash, "{name}");
            }
        }
        for b in FILES {
            assert!(!b.bytes.is_empty(), "{}", b.name);
        }
    }

    #[test]
    fn materialize_writes_once_and_repairs_a_changed_copy() {
        let dir = tempfile::tempdir().unwrap();
        let b = find("bbh/navigate.json").unwrap();
        let p = b.materialize_in(dir.path()).unwrap();
        assert_eq!(p, dir.path().join("bbh/navigate.json"));
        assert_eq!(std::fs::read(&p).unwrap(), b.bytes);
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        assert_eq!(b.materialize_in(dir.path()).unwrap(), p);
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), mtime);
        // An edited copy is replaced by the shipped bytes.
        std::fs::write(&p, b"{\"examples\": []}").unwrap();
        b.materialize_in(dir.path()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b.bytes);
        assert!(find("bbh/no_such_task.json").is_none());
    }
}
