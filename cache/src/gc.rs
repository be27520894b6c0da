//! Garbage collection: drop action entries by policy, then the blobs that no remaining
//! entry references.

use crate::blob::BlobRef;
use crate::error::Result;
use crate::fsutil::{self, walk_fanout};
use crate::hash::{Digest, Key};
use crate::store::Store;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Which action entries [`Store::gc`] removes. Rules apply to unpinned entries only, in
/// this order: `remove_unpinned`, `max_age`, `keep_last`, `max_total_bytes`. Entry
/// files that cannot be read are always removed. The default removes no readable
/// entry, only blobs that nothing references (after the grace period).
#[derive(Clone, Debug)]
pub struct GcPolicy {
    /// Entries never removed (say, every key of the current pipeline).
    pub pinned: BTreeSet<Key>,
    /// Remove every entry that is not pinned.
    pub remove_unpinned: bool,
    /// Remove unpinned entries not used for longer than this.
    pub max_age: Option<Duration>,
    /// Keep only this many unpinned entries, the most recently used.
    pub keep_last: Option<usize>,
    /// Then remove least-recently-used unpinned entries until the distinct blobs the
    /// remaining entries reference fit in this many bytes.
    pub max_total_bytes: Option<u64>,
    /// Unreferenced blobs and temporary files younger than this are kept, so that gc
    /// does not race a writer that has stored its blobs but not yet its entry.
    pub grace: Duration,
    /// Report what would be removed without removing anything.
    pub dry_run: bool,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            pinned: BTreeSet::new(),
            remove_unpinned: false,
            max_age: None,
            keep_last: None,
            max_total_bytes: None,
            grace: Duration::from_secs(3600),
            dry_run: false,
        }
    }
}

/// Why gc removed an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcReason {
    /// The file could not be read.
    Unreadable,
    /// Not pinned, and `remove_unpinned` was set.
    NotPinned,
    /// Unused for longer than `max_age`.
    MaxAge,
    /// Beyond the `keep_last` most recently used.
    KeepLast,
    /// Evicted to fit `max_total_bytes`.
    MaxTotalBytes,
}

/// An entry gc removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemovedEntry {
    /// Its key, when the file name is one.
    pub key: Option<Key>,
    /// Its stage, when readable.
    pub stage: Option<String>,
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: GcReason,
}

/// What [`Store::gc`] removed (or would remove, on a dry run).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Nothing was actually removed.
    pub dry_run: bool,
    /// Removed entries.
    pub removed_entries: Vec<RemovedEntry>,
    /// Removed blobs.
    pub removed_blobs: Vec<BlobRef>,
    /// Removed temporary files of interrupted writes.
    pub removed_temp_files: Vec<PathBuf>,
    /// Removed descriptions of actions that have no entry.
    pub removed_descriptions: u64,
    /// Bytes of the removed blobs.
    pub freed_bytes: u64,
    /// Entries left.
    pub kept_entries: usize,
    /// Bytes of the distinct blobs the remaining entries reference.
    pub kept_bytes: u64,
}

fn older_than(path: &std::path::Path, now: SystemTime, grace: Duration) -> bool {
    match fs::metadata(path).and_then(|m| m.modified()) {
        Ok(t) => now.duration_since(t).map(|d| d >= grace).unwrap_or(false),
        Err(_) => false,
    }
}

impl Store {
    /// Removes entries according to `policy`, then every blob no remaining entry
    /// references (a blob a remaining entry names is never removed), then old
    /// temporary files and orphaned last-use records.
    pub fn gc(&self, policy: &GcPolicy) -> Result<GcReport> {
        let now = SystemTime::now();
        let scanned = self.scan_entries()?;
        let mut reason: BTreeMap<usize, GcReason> = BTreeMap::new();
        let mut candidates: Vec<usize> = Vec::new();
        for (i, s) in scanned.iter().enumerate() {
            match (&s.entry, s.key) {
                (Err(_), _) | (Ok(_), None) => {
                    reason.insert(i, GcReason::Unreadable);
                }
                (Ok(_), Some(k)) if policy.pinned.contains(&k) => {}
                (Ok(_), Some(_)) => candidates.push(i),
            }
        }
        // Most recently used first.
        candidates.sort_by(|&a, &b| {
            scanned[b]
                .last_used
                .cmp(&scanned[a].last_used)
                .then(scanned[a].path.cmp(&scanned[b].path))
        });
        let mut mark = |list: &mut Vec<usize>, keep: &dyn Fn(usize, usize) -> bool, r: GcReason| {
            let mut rest = Vec::new();
            for (rank, &i) in list.iter().enumerate() {
                if keep(rank, i) {
                    rest.push(i);
                } else {
                    reason.insert(i, r);
                }
            }
            *list = rest;
        };
        if policy.remove_unpinned {
            mark(&mut candidates, &|_, _| false, GcReason::NotPinned);
        }
        if let Some(age) = policy.max_age {
            let young = |_: usize, i: usize| {
                now.duration_since(scanned[i].last_used)
                    .map(|d| d <= age)
                    .unwrap_or(true)
            };
            mark(&mut candidates, &young, GcReason::MaxAge);
        }
        if let Some(n) = policy.keep_last {
            mark(&mut candidates, &|rank, _| rank < n, GcReason::KeepLast);
        }

        // Distinct referenced bytes of what is left, with reference counts.
        let mut refs: BTreeMap<Digest, (usize, u64)> = BTreeMap::new();
        for (i, s) in scanned.iter().enumerate() {
            if reason.contains_key(&i) {
                continue;
            }
            if let Ok(e) = &s.entry {
                for b in e.outputs.values() {
                    refs.entry(b.digest).or_insert((0, b.size)).0 += 1;
                }
            }
        }
        let mut total: u64 = refs.values().map(|&(_, size)| size).sum();
        if let Some(cap) = policy.max_total_bytes {
            // Least recently used first.
            for &i in candidates.iter().rev() {
                if total <= cap {
                    break;
                }
                reason.insert(i, GcReason::MaxTotalBytes);
                if let Ok(e) = &scanned[i].entry {
                    for b in e.outputs.values() {
                        if let Some(r) = refs.get_mut(&b.digest) {
                            r.0 -= 1;
                            if r.0 == 0 {
                                total -= r.1;
                                refs.remove(&b.digest);
                            }
                        }
                    }
                }
            }
        }

        let mut report = GcReport {
            dry_run: policy.dry_run,
            kept_entries: scanned.len() - reason.len(),
            kept_bytes: total,
            ..GcReport::default()
        };
        for (&i, &r) in &reason {
            let s = &scanned[i];
            if !policy.dry_run {
                fsutil::remove_if_present(&s.path)?;
                if let Some(k) = &s.key {
                    fsutil::remove_if_present(&self.used_path(k))?;
                }
            }
            report.removed_entries.push(RemovedEntry {
                key: s.key,
                stage: s.entry.as_ref().ok().map(|e| e.stage.clone()),
                path: s.path.clone(),
                reason: r,
            });
        }

        // Blobs: keep every one a remaining entry references.
        for f in walk_fanout(&self.blobs_dir())? {
            if f.temp {
                if older_than(&f.path, now, policy.grace) {
                    if !policy.dry_run {
                        fsutil::remove_if_present(&f.path)?;
                    }
                    report.removed_temp_files.push(f.path);
                }
                continue;
            }
            let Some(id) = f.id else { continue };
            let digest = Digest::from_bytes(id);
            if refs.contains_key(&digest) || !older_than(&f.path, now, policy.grace) {
                continue;
            }
            let size = fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0);
            if !policy.dry_run && !fsutil::remove_if_present(&f.path)? {
                continue;
            }
            report.freed_bytes += size;
            report.removed_blobs.push(BlobRef { digest, size });
        }

        // Old temporary entry files, and last-use records with no entry.
        for f in walk_fanout(&self.actions_dir())? {
            if f.temp && older_than(&f.path, now, policy.grace) {
                if !policy.dry_run {
                    fsutil::remove_if_present(&f.path)?;
                }
                report.removed_temp_files.push(f.path);
            }
        }
        // Descriptions of actions with no entry (removed above, or never computed),
        // once older than the grace period (a description is written before its
        // action runs).
        for f in walk_fanout(&self.descriptions_dir())? {
            let orphan = match f.id {
                Some(id) => !self.entry_path(&Key::from_bytes(id)).exists(),
                None => f.temp,
            };
            if orphan && older_than(&f.path, now, policy.grace) {
                if !policy.dry_run {
                    fsutil::remove_if_present(&f.path)?;
                }
                report.removed_descriptions += 1;
            }
        }
        if !policy.dry_run {
            for f in walk_fanout(&self.used_dir())? {
                let orphan = match f.id {
                    Some(id) => !self.entry_path(&Key::from_bytes(id)).exists(),
                    None => f.temp,
                };
                if orphan && older_than(&f.path, now, policy.grace) {
                    fsutil::remove_if_present(&f.path)?;
                }
            }
        }
        tracing::info!(
            entries = report.removed_entries.len(),
            blobs = report.removed_blobs.len(),
            freed = report.freed_bytes,
            dry_run = policy.dry_run,
            "gc"
        );
        Ok(report)
    }
}
