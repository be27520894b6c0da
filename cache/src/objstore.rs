//! [`RemoteBackend`] through the `object_store` crate: a shared directory
//! (`LocalFileSystem`) or S3 (`AmazonS3`).
//!
//! `object_store` is async; the backend keeps its own small tokio current-thread
//! runtime and blocks on each call, so the rest of c2i stays synchronous.
//!
//! Writes are create-only (`PutMode::Create`: a hard link on a directory, a
//! conditional `PUT` with `If-None-Match: *` on S3); `AlreadyExists` means another
//! writer got there first, which is success since the name fixes the content.
//!
//! Nothing here hangs: S3 requests have a connect timeout (5 s), a request timeout
//! ([`RemoteOptions::timeout`]) and at most two retries within 15 s.

use crate::error::{CacheError, Result};
use crate::remote::{object_name, ObjectKind, RemoteBackend};
use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where a remote cache lives, as written in a pipeline or on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteUrl {
    /// A shared directory: `file:///abs/path` or `/abs/path`.
    Dir(PathBuf),
    /// `s3://bucket/prefix` (prefix may be empty).
    S3 {
        /// The bucket.
        bucket: String,
        /// Key prefix without leading or trailing `/` (may be empty).
        prefix: String,
    },
}

/// What a remote location must look like, for error messages.
pub const REMOTE_URL_FORMS: &str =
    "`s3://BUCKET/PREFIX`, `file:///ABSOLUTE/PATH` or an absolute path";

impl RemoteUrl {
    /// Parses `s3://bucket/prefix`, `file:///path` or `/path`; the error says what is
    /// expected.
    pub fn parse(s: &str) -> std::result::Result<RemoteUrl, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("`{s}`: no bucket; expected {REMOTE_URL_FORMS}"));
            }
            return Ok(RemoteUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        if s.contains("://") && !s.starts_with("file://") {
            return Err(format!(
                "`{s}`: unknown scheme; expected {REMOTE_URL_FORMS}"
            ));
        }
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!(
                "`{s}`: not an absolute path; expected {REMOTE_URL_FORMS}"
            ));
        }
        Ok(RemoteUrl::Dir(path))
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteUrl::Dir(p) => write!(f, "file://{}", p.display()),
            RemoteUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            RemoteUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// How to reach a remote.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// S3 endpoint (e.g. `http://127.0.0.1:9000`), used only when none of
    /// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT` is set.
    pub endpoint: Option<String>,
    /// Whether `endpoint` may be plain `http://` (signed requests, unencrypted). An
    /// endpoint from the environment is the user's own choice and always allowed; one
    /// from a pipeline file needs `[cache] allow_http = true`.
    pub allow_http: bool,
    /// Longest time one request may take, body included.
    pub timeout: Duration,
    /// Longest time to wait for a connection.
    pub connect_timeout: Duration,
    /// More S3 settings by `object_store` name (`aws_access_key_id`, `aws_region`,
    /// ...), applied after the environment.
    pub s3_config: Vec<(String, String)>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            endpoint: None,
            allow_http: false,
            timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            s3_config: Vec::new(),
        }
    }
}

/// A remote cache in a directory or an S3 bucket.
pub struct ObjectStoreRemote {
    url: RemoteUrl,
    store: Arc<dyn ObjectStore>,
    /// `""` or `"prefix/"`.
    prefix: String,
    rt: tokio::runtime::Runtime,
    /// Credentials and other settings never to show in a message.
    secrets: Vec<String>,
}

impl fmt::Debug for ObjectStoreRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectStoreRemote({})", self.url)
    }
}

/// A directory remote: created (with the `LAYOUT` marker) when missing or empty;
/// adopted when it holds only c2i's tables (a remote made before the marker);
/// refused when it holds anything else, since gc and repairs act on what is there.
fn adopt_dir(dir: &Path) -> Result<()> {
    let marker = dir.join("LAYOUT");
    if let Ok(found) = std::fs::read(&marker) {
        if found == crate::store::LAYOUT.as_bytes() {
            return Ok(());
        }
        return Err(CacheError::Layout {
            path: marker,
            found: String::from_utf8_lossy(&found).into_owned(),
            expected: crate::store::LAYOUT.to_string(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| CacheError::io("create directory", dir, e))?;
    let entries = std::fs::read_dir(dir).map_err(|e| CacheError::io("read directory", dir, e))?;
    for e in entries {
        let e = e.map_err(|e| CacheError::io("read directory", dir, e))?;
        let name = e.file_name();
        let ours = [
            ObjectKind::Blob.dir(),
            ObjectKind::Action.dir(),
            ObjectKind::Description.dir(),
        ]
        .iter()
        .any(|d| name == *d);
        if !ours {
            return Err(CacheError::NotACache {
                path: dir.to_path_buf(),
                reason: format!("it holds {} but no LAYOUT marker", e.path().display()),
            });
        }
    }
    crate::fsutil::write_replace(&marker, crate::store::LAYOUT.as_bytes())
}

/// An `object_store` error message fit to show and to store in run.json: an HTTP
/// response body (for S3, an XML document that for a signature error echoes the
/// access key id, the string to sign and the canonical request with its session
/// token) is replaced by its error code, and any credential still in the text is
/// masked.
pub(crate) fn sanitize_error(msg: &str, secrets: &[String]) -> String {
    let code = msg
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(c, _)| c.trim().to_string())
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 64
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '.')
        });
    let body_start = ["<?xml", "<", "{\""]
        .iter()
        .filter_map(|m| msg.find(m))
        .min();
    let mut out = match body_start {
        Some(i) => {
            let head = msg[..i].trim_end().trim_end_matches(':').to_string();
            match &code {
                Some(c) => format!("{head}: {c} (response body not shown)"),
                None => format!("{head} (response body not shown)"),
            }
        }
        None => msg.to_string(),
    };
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[redacted]");
        }
    }
    out
}

fn env_endpoint() -> Option<String> {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

impl ObjectStoreRemote {
    /// Opens the remote. Builds the client only (no request is made); a directory is
    /// created if missing.
    pub fn open(url: &RemoteUrl, opts: &RemoteOptions) -> Result<ObjectStoreRemote> {
        let err = |reason: String| CacheError::Remote {
            backend: url.to_string(),
            op: "open".into(),
            reason,
        };
        // Few helper threads: each costs a thread stack and a malloc arena of address
        // space, and c2i blocks on one request at a time anyway (the remote must work
        // under a 1 GiB address-space limit).
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(2)
            .enable_all()
            .build()
            .map_err(|e| err(format!("cannot start an async runtime: {e}")))?;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match url {
            RemoteUrl::Dir(dir) => {
                adopt_dir(dir)?;
                let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| err(e.to_string()))?;
                (Arc::new(fs), String::new())
            }
            RemoteUrl::S3 { bucket, prefix } => {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
                let (endpoint, http_ok) = match env_endpoint() {
                    Some(e) => (Some(e), true),
                    None => (opts.endpoint.clone(), opts.allow_http),
                };
                if let Some(e) = &endpoint {
                    if e.starts_with("http://") {
                        if !http_ok {
                            return Err(err(format!(
                                "endpoint {e} is plain HTTP: every request, signed with your \
                                 credentials, would travel unencrypted to that host; use https, \
                                 or set `allow_http = true` in [cache] if this is what you want"
                            )));
                        }
                        b = b.with_allow_http(true);
                    }
                    b = b.with_endpoint(e);
                }
                if std::env::var("AWS_REGION").is_err()
                    && std::env::var("AWS_DEFAULT_REGION").is_err()
                {
                    b = b.with_region("us-east-1");
                }
                for (k, v) in &opts.s3_config {
                    let key: AmazonS3ConfigKey = k
                        .parse()
                        .map_err(|e| err(format!("S3 setting `{k}`: {e}")))?;
                    b = b.with_config(key, v);
                }
                let secs = |d: Duration| format!("{}ms", d.as_millis().max(1));
                b = b
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                        secs(opts.timeout),
                    )
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                        secs(opts.connect_timeout),
                    )
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig::default(),
                        max_retries: 2,
                        retry_timeout: Duration::from_secs(15),
                    });
                let s3 = b.build().map_err(|e| err(e.to_string()))?;
                let prefix = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                (Arc::new(s3), prefix)
            }
        };
        let mut secrets: Vec<String> = [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
        ]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .chain(opts.s3_config.iter().map(|(_, v)| v.clone()))
        .filter(|v| v.len() >= 4)
        .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(ObjectStoreRemote {
            url: url.clone(),
            store,
            prefix,
            rt,
            secrets,
        })
    }

    /// Parses `url` ([`RemoteUrl::parse`]) and opens it.
    pub fn open_str(url: &str, opts: &RemoteOptions) -> Result<ObjectStoreRemote> {
        let parsed = RemoteUrl::parse(url).map_err(|reason| CacheError::Remote {
            backend: url.to_string(),
            op: "open".into(),
            reason,
        })?;
        Self::open(&parsed, opts)
    }

    /// The location.
    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    fn path(&self, kind: ObjectKind, id: &[u8; 32]) -> ObjPath {
        ObjPath::from(format!("{}{}", self.prefix, object_name(kind, id)))
    }

    fn fail(&self, op: String, e: impl fmt::Display) -> CacheError {
        CacheError::Remote {
            backend: self.url.to_string(),
            op,
            reason: sanitize_error(&e.to_string(), &self.secrets),
        }
    }

    fn payload(&self, src: &Path) -> Result<PutPayload> {
        let file = std::fs::File::open(src).map_err(|e| CacheError::io("open", src, e))?;
        let len = file
            .metadata()
            .map_err(|e| CacheError::io("stat", src, e))?
            .len();
        if len == 0 {
            return Ok(PutPayload::from(Bytes::new()));
        }
        // SAFETY: store files are immutable once placed and only ever replaced by
        // rename or removed, which keeps this map valid (see `Blob`).
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| CacheError::io("memory-map", src, e))?;
        Ok(PutPayload::from(Bytes::from_owner(map)))
    }

    fn put(&self, kind: ObjectKind, id: &[u8; 32], src: &Path, mode: PutMode) -> Result<bool> {
        let path = self.path(kind, id);
        let payload = self.payload(src)?;
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self.rt.block_on(self.store.put_opts(&path, payload, opts)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.fail(format!("upload {path}"), e)),
        }
    }
}

impl RemoteBackend for ObjectStoreRemote {
    fn describe(&self) -> String {
        self.url.to_string()
    }

    fn size(&self, kind: ObjectKind, id: &[u8; 32]) -> Result<Option<u64>> {
        let path = self.path(kind, id);
        match self.rt.block_on(self.store.head(&path)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail(format!("stat {path}"), e)),
        }
    }

    fn upload(&self, kind: ObjectKind, id: &[u8; 32], src: &Path) -> Result<bool> {
        self.put(kind, id, src, PutMode::Create)
    }

    fn replace(&self, kind: ObjectKind, id: &[u8; 32], src: &Path) -> Result<()> {
        self.put(kind, id, src, PutMode::Overwrite).map(|_| ())
    }

    fn download(&self, kind: ObjectKind, id: &[u8; 32], dst: &mut dyn Write) -> Result<bool> {
        let path = self.path(kind, id);
        let op = || format!("download {path}");
        self.rt.block_on(async {
            let got = match self.store.get(&path).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(self.fail(op(), e)),
            };
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.fail(op(), e))?;
                dst.write_all(&chunk).map_err(|e| CacheError::Source {
                    what: format!("the local copy of {}/{path}", self.url),
                    source: e,
                })?;
            }
            Ok(true)
        })
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<[u8; 32]>> {
        let prefix = ObjPath::from(format!("{}{}", self.prefix, kind.dir()));
        let metas = self.rt.block_on(async {
            let mut out = Vec::new();
            let mut s = self.store.list(Some(&prefix));
            while let Some(m) = s.next().await {
                match m {
                    Ok(m) => out.push(m.location),
                    Err(object_store::Error::NotFound { .. }) => break,
                    Err(e) => return Err(self.fail(format!("list {prefix}"), e)),
                }
            }
            Ok(out)
        })?;
        let mut ids: Vec<[u8; 32]> = metas
            .iter()
            .filter_map(|loc| {
                let parts: Vec<_> = loc.parts().collect();
                let n = parts.len();
                if n < 2 {
                    return None;
                }
                let hex = format!("{}{}", parts[n - 2].as_ref(), parts[n - 1].as_ref());
                crate::hash::parse_hex(&hex)
            })
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

#[cfg(test)]
mod sanitize_tests {
    use super::sanitize_error;

    #[test]
    fn bodies_become_their_code_and_secrets_are_masked() {
        let msg = "Generic S3 error: Error performing GET http://127.0.0.1:9/b/k in 1ms - \
                   Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>\
                   <Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>AKIASECRET1</AWSAccessKeyId>\
                   <CanonicalRequest>x-amz-security-token:TOKEN2</CanonicalRequest></Error>";
        let out = sanitize_error(msg, &["AKIASECRET1".into(), "TOKEN2".into()]);
        assert!(
            out.ends_with("403 Forbidden: SignatureDoesNotMatch (response body not shown)"),
            "{out}"
        );
        assert!(
            !out.contains("AKIASECRET1") && !out.contains("TOKEN2"),
            "{out}"
        );
        let plain = "connection refused (key AKIASECRET1)";
        assert_eq!(
            sanitize_error(plain, &["AKIASECRET1".into()]),
            "connection refused (key [redacted])"
        );
    }
}
