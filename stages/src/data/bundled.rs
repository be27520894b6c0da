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

/// One shipped file: its path under `data/` and its bytes (the built-in tasks' table,
/// [`super::task::builtins`], holds one per task).
#[derive(Debug)]
pub struct Bundled {
    pub name: &'static str,
    pub bytes: &'static [u8],
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
        let write_err = |e: crate::assets::AssetError| match e {
            crate::assets::AssetError::Io { path, source } => DataError::Write { path, source },
            other => DataError::File {
                path: dest.clone(),
                message: other.to_string(),
            },
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|source| DataError::Write {
                path: parent.to_owned(),
                source,
            })?;
        }
        crate::assets::write_atomic(&dest, self.bytes).map_err(write_err)?;
        Ok(dest)
    }

    /// [`Bundled::materialize_in`] under `$C2I_HOME/data`.
    pub fn materialize(&self) -> Result<PathBuf, DataError> {
        self.materialize_in(&dir()?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::task::builtins;
    use crate::assets::sha256_hex;

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
        for b in builtins() {
            let (hash, _) = pinned
                .iter()
                .find(|(_, name)| *name == b.data.name)
                .unwrap_or_else(|| panic!("data/README.md pins no sha256 for {}", b.data.name));
            assert_eq!(sha256_hex(b.data.bytes), *hash, "{}", b.data.name);
        }
    }

    #[test]
    fn materialize_writes_once_and_repairs_a_changed_copy() {
        let dir = tempfile::tempdir().unwrap();
        let b = &builtins().find(|b| b.name == "bbh_navigate").unwrap().data;
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
    }
}
