//! TLS and authentication to PostgreSQL and Redis.
//!
//! - One rustls crypto provider, ring, installed once at start ([`install_provider`]): with
//!   more than one provider compiled in (ring, aws-lc-rs) rustls panics when none is installed.
//! - The servers are verified against the system trust store (rustls-native-certs: the image
//!   ships Debian's ca-certificates, and an operator adds a private CA there the usual way) or,
//!   instead of it, a CA file (`--database-ca-file`, `--redis-ca-file`).
//! - [`PgTarget`]: a PostgreSQL URL as managed services hand them out (`sslmode=require`,
//!   `verify-full`, `sslrootcert=…`), translated for tokio-postgres, which knows neither
//!   `verify-ca`/`verify-full` nor `sslrootcert`.
//! - [`redis_client`]: `rediss://` with the system roots or the CA file.
//! - [`Class`]: why a service fails (tls, auth, unreachable), for the line a refused start
//!   prints and for `/readyz`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Installs ring as the process's rustls crypto provider. Call it before anything builds a
/// TLS configuration (`main` does, first thing); later calls do nothing.
pub fn install_provider() {
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange
    // (X25519MLKEM768, aws-lc-rs only). ring is kept on purpose: every TLS client here
    // (tokio-postgres-rustls, redis's rustls, our Kafka connections on tokio-rustls) is
    // built without aws-lc-rs, so the binary carries one provider, and aws-lc-rs would add a
    // large C build; these connections go to the deployment's own backing services.
    // Err only when a provider is installed already: then that one stays.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {problem}")]
    CaFile { path: String, problem: String },
    #[error("the system trust store has no usable certificate ({0}); give a CA file")]
    NoSystemRoots(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// A CA file's certificates (PEM), read and checked once.
#[derive(Clone)]
pub struct CaFile {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for CaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaFile({})", self.path.display())
    }
}

impl CaFile {
    /// Reads a PEM file holding one or more CA certificates.
    pub fn read(path: &Path) -> Result<CaFile, TlsError> {
        let bad = |problem: String| TlsError::CaFile {
            path: path.display().to_string(),
            problem,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(bad("holds no PEM certificate".into()));
        }
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(bad("holds no usable CA certificate".into()));
        }
        Ok(CaFile {
            path: path.to_owned(),
            pem,
        })
    }
}

/// The trust anchors: the CA file's certificates if one is given, else the system's.
pub fn roots(ca: Option<&CaFile>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(ca) => {
            let certs = CertificateDer::pem_slice_iter(&ca.pem).filter_map(Result::ok);
            store.add_parsable_certificates(certs);
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(TlsError::NoSystemRoots(why));
            }
        }
    }
    Ok(store)
}

/// A client configuration that verifies the server's chain against `roots` and, with
/// `verify_host`, that the certificate names the host connected to (libpq's `verify-full`;
/// without it, `verify-ca`).
pub fn client_config(roots: RootCertStore, verify_host: bool) -> Result<ClientConfig, TlsError> {
    install_provider();
    if verify_host {
        return Ok(ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth());
    }
    let inner = WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    Ok(ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
        .with_no_client_auth())
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first, the name last: a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// `sslmode` of a PostgreSQL URL, as chat applies it. Every TLS connection is verified:
/// unlike libpq, `prefer` and `require` check the certificate too (see README, "TLS").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS (also when the URL names no sslmode and no CA file is given).
    Disable,
    /// TLS when the server offers it, verified; plaintext when it does not.
    Prefer,
    /// TLS, the chain verified against the roots and the host name checked.
    Require,
    /// TLS, the chain verified, the host name not checked.
    VerifyCa,
}

/// A PostgreSQL server to connect to: the URL for tokio-postgres and how to do TLS.
#[derive(Clone)]
pub struct PgTarget {
    /// What tokio-postgres parses: `sslmode` mapped to one it knows, `sslrootcert` removed.
    url: String,
    pub mode: SslMode,
    /// Replaces the system roots (`--database-ca-file`, or the URL's `sslrootcert`).
    pub ca: Option<CaFile>,
    /// `host:port`, for messages (no user, no password).
    pub address: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &crate::config::redact(&self.url))
            .field("mode", &self.mode)
            .field("ca", &self.ca)
            .finish()
    }
}

/// libpq options about client certificates and the like that chat does not implement; named
/// in the refusal rather than passed to tokio-postgres ("unknown option").
const UNSUPPORTED: [&str; 7] = [
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslnegotiation",
];

impl PgTarget {
    /// Parses a `postgres://` URL and the CA file setting. Refuses, in one line, what it
    /// cannot honour.
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<PgTarget, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept: Vec<&str> = Vec::new();
        let mut mode: Option<&str> = None;
        let mut rootcert: Option<String> = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => mode = Some(v),
                "sslrootcert" => rootcert = Some(percent_decode(v)),
                k if UNSUPPORTED.contains(&k) => {
                    return Err(format!(
                        "`{k}` is not supported (no client certificates); remove it from the URL"
                    ))
                }
                _ => kept.push(pair),
            }
        }
        let ca_path: Option<PathBuf> = match (ca_file, rootcert.as_deref()) {
            (Some(f), Some(r)) if r != "system" && Path::new(r) != f => {
                return Err(format!(
                    "the URL's sslrootcert={r} and --database-ca-file {} differ; give one",
                    f.display()
                ))
            }
            (Some(f), _) => Some(f.to_owned()),
            (None, Some("system")) | (None, None) => None,
            (None, Some(r)) => Some(PathBuf::from(r)),
        };
        let mode = match mode {
            None if ca_path.is_some() => SslMode::Require,
            None | Some("disable") => SslMode::Disable,
            Some("allow") => {
                return Err(
                    "sslmode=allow (TLS only if the server insists) is not supported; use \
                     prefer, require, verify-ca or verify-full"
                        .into(),
                )
            }
            Some("prefer") => SslMode::Prefer,
            Some("require") | Some("verify-full") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some(other) => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                ))
            }
        };
        if mode == SslMode::Disable && ca_path.is_some() {
            return Err("sslmode=disable with a CA file: drop one of them".into());
        }
        let ca = ca_path
            .map(|p| CaFile::read(&p))
            .transpose()
            .map_err(|e| format!("CA file {e}"))?;
        let tp_mode = match mode {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa => "require",
        };
        kept.push(match tp_mode {
            "disable" => "sslmode=disable",
            "prefer" => "sslmode=prefer",
            _ => "sslmode=require",
        });
        Ok(PgTarget {
            url: format!("{base}?{}", kept.join("&")),
            mode,
            ca,
            address: pg_address(base),
        })
    }

    /// The URL for tokio-postgres (it holds the password: never log it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The rustls configuration, None for `sslmode=disable`.
    pub fn tls_config(&self) -> Result<Option<ClientConfig>, TlsError> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let roots = roots(self.ca.as_ref())?;
        client_config(roots, self.mode != SslMode::VerifyCa).map(Some)
    }
}

/// `host:port` of a `postgres://user:password@host:port/db` URL (port 5432 by default).
fn pg_address(base: &str) -> String {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hosts.is_empty() {
        return "localhost:5432".into();
    }
    let has_port = hosts
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if has_port || hosts.contains(',') {
        hosts.to_owned()
    } else {
        format!("{hosts}:5432")
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A Redis server: its URL (`redis://` or `rediss://`, with the password) and the CA file
/// that replaces the system roots for `rediss://`; or a Redis Cluster: its seed nodes
/// (`cluster`, the first of them also in `url`, which messages and start-up probes use).
#[derive(Clone)]
pub struct RedisTarget {
    pub url: String,
    pub ca: Option<CaFile>,
    /// The seed nodes of a Redis Cluster (`--redis-cluster-nodes`); empty for one server.
    pub cluster: Vec<String>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &crate::config::redact(&self.url))
            .field("ca", &self.ca)
            .field(
                "cluster",
                &self
                    .cluster
                    .iter()
                    .map(|u| crate::config::redact(u))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl RedisTarget {
    /// A target without a CA file (plain, or `rediss://` with the system roots).
    pub fn new(url: impl Into<String>) -> RedisTarget {
        RedisTarget {
            url: url.into(),
            ca: None,
            cluster: Vec::new(),
        }
    }

    /// A Redis Cluster given by its seed nodes (at least one), without a CA file.
    pub fn cluster(nodes: Vec<String>) -> RedisTarget {
        RedisTarget {
            url: nodes.first().cloned().unwrap_or_default(),
            ca: None,
            cluster: nodes,
        }
    }

    /// Whether this is a Redis Cluster (`--redis-cluster-nodes`).
    pub fn is_cluster(&self) -> bool {
        !self.cluster.is_empty()
    }

    pub fn tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        let rest = self.url.split_once("://").map_or(&*self.url, |(_, r)| r);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host.contains(':') && !host.ends_with(']') {
            host.to_owned()
        } else {
            format!("{host}:6379")
        }
    }

    /// The client for `url` (the target's own, or one derived from it, e.g. with
    /// `protocol=resp3`): TLS verified against the CA file or the system roots.
    pub fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        install_provider();
        match &self.ca {
            Some(ca) if self.tls() => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.pem.clone()),
                },
            ),
            _ => redis::Client::open(url),
        }
    }

    /// The client of a Redis Cluster (its seed nodes; TLS verified against the CA file or
    /// the system roots, the password from the URLs), speaking RESP3 when asked (the bus's
    /// sharded subscriptions need it) with pushes sent to `push`. Commands time out after
    /// 2 s per attempt and are retried (redirections, a failing-over master) within 4 s.
    pub fn cluster_client(
        &self,
        resp3: bool,
        push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> redis::RedisResult<redis::cluster::ClusterClient> {
        install_provider();
        let mut b =
            redis::cluster::ClusterClientBuilder::new(self.cluster.iter().map(String::as_str))
                .connection_timeout(std::time::Duration::from_secs(2))
                .response_timeout(std::time::Duration::from_secs(2))
                .overall_response_timeout(Some(std::time::Duration::from_secs(4)))
                .retries(8)
                .min_retry_wait(50)
                .max_retry_wait(500)
                .tcp_settings(cluster_tcp());
        if resp3 {
            b = b.use_protocol(redis::ProtocolVersion::RESP3);
        }
        if let Some(ca) = self.ca.as_ref().filter(|_| self.tls()) {
            b = b.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.pem.clone()),
            });
        }
        if let Some(tx) = push {
            b = b.push_sender(tx);
        }
        b.build()
    }
}

/// TCP settings of the cluster's connections. Keepalive probes (and, on Linux, a user
/// time-out) make a node that vanished without closing its socket (a host crash, a
/// partition) an I/O error within ~10 s: the subscriber connection only receives, so
/// without them a dead master's subscriptions would go quiet with no `Disconnection` push,
/// and the bus would never report them lost. No Nagle delay for small commands.
fn cluster_tcp() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::socket2::TcpKeepalive;
    let keepalive = TcpKeepalive::new().with_time(std::time::Duration::from_secs(5));
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let keepalive = keepalive
        .with_interval(std::time::Duration::from_secs(2))
        .with_retries(2);
    let tcp = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let tcp = tcp.set_user_timeout(std::time::Duration::from_secs(10));
    tcp
}

/// Connects once as the bus does (RESP3: `HELLO 3 AUTH user password`) and sends `PING`:
/// Err is the line a refused start prints (service, address, class, reason).
pub async fn probe_redis(target: &RedisTarget) -> anyhow::Result<()> {
    redis_reason(target, std::time::Duration::from_secs(10))
        .await
        .map_err(|m| anyhow::anyhow!(failure_line("Redis", &target.address(), &m)))
}

/// Why Redis cannot be used, found with one connection of its own within `within`: the
/// bus's connections retry in the background, so a command only sees a time-out. A
/// cluster is usable when any of its seed nodes answers (the client learns the others
/// from it): every seed is tried at once, the first answer ends the wait (a seed that
/// never answers does not hold up the others'), and when none answers the first seed's
/// reason is given.
pub async fn redis_reason(target: &RedisTarget, within: std::time::Duration) -> Result<(), String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    if target.cluster.len() > 1 {
        let mut seeds: FuturesUnordered<_> = target
            .cluster
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let one = RedisTarget {
                    url: url.clone(),
                    ca: target.ca.clone(),
                    cluster: Vec::new(),
                };
                async move { (i, node_reason(&one, within).await) }
            })
            .collect();
        // The reason of the earliest seed in the list that failed.
        let mut first: Option<(usize, String)> = None;
        while let Some((i, r)) = seeds.next().await {
            match r {
                Ok(()) => return Ok(()),
                Err(e) if first.as_ref().is_none_or(|(j, _)| i < *j) => first = Some((i, e)),
                Err(_) => {}
            }
        }
        let others = target.cluster.len() - 1;
        return Err(first.map_or_else(String::new, |(_, first)| {
            format!("{first} (nor did the {others} other seed node(s) answer)")
        }));
    }
    node_reason(target, within).await
}

/// [`redis_reason`] for one server (or one seed node).
async fn node_reason(target: &RedisTarget, within: std::time::Duration) -> Result<(), String> {
    let attempt = async {
        let client = target.client(&crate::bus::resp3_url(&target.url))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(within))
            .set_response_timeout(Some(within));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING")
            .query_async::<redis::Value>(&mut conn)
            .await?;
        Ok::<(), redis::RedisError>(())
    };
    match tokio::time::timeout(within + std::time::Duration::from_millis(200), attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if !e.is_timeout() => Err(error_chain(&e)),
        _ => Err(silent_server(&target.address(), target.tls(), within).await),
    }
}

/// Why a server gave no answer in time: nothing accepts TCP there (unreachable), or it
/// does but never answered the TLS handshake, which is what a plaintext port does with a
/// ClientHello (Redis waits for the end of a command line that never comes).
pub async fn silent_server(address: &str, tls: bool, waited: std::time::Duration) -> String {
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(address),
    )
    .await;
    let s = waited.as_secs_f32();
    match tcp {
        Ok(Ok(_)) if tls => format!(
            "the port accepts connections but did not answer the TLS handshake within {s} s \
             (a plaintext port?)"
        ),
        Ok(Ok(_)) => format!("no answer within {s} s"),
        Ok(Err(e)) => format!("cannot connect: {e}"),
        Err(_) => "cannot connect: no answer within 2 s".to_owned(),
    }
}

/// An error and its sources, `outer: inner: …`, each text once (tokio-postgres's own text
/// is only its kind, "db error", with the server's message in the source).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Failure classes

/// Why a service cannot be used: the class `/readyz` and a refused start name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The TLS handshake failed: certificate not trusted or not for this host, the server
    /// speaks no TLS on that port, or refuses plaintext.
    Tls,
    /// The server refused the credentials (or the user may not do what chat needs).
    Auth,
    /// No connection or no answer.
    Unreachable,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Tls => "tls",
            Class::Auth => "auth",
            Class::Unreachable => "unreachable",
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of an error message from tokio-postgres, the redis crate or rustls (their
/// texts are all this gets by the time an error reaches `/readyz`).
pub fn classify(message: &str) -> Class {
    let m = message.to_ascii_lowercase();
    const TLS: [&str; 9] = [
        "certificate",
        "tls",
        "ssl",
        "handshake",
        "corrupt message",
        "peer is incompatible",
        "no encryption",
        "invalidcontenttype",
        "alert",
    ];
    const AUTH: [&str; 9] = [
        "password",
        "wrongpass",
        "noauth",
        "noperm",
        "authentication",
        "auth failed",
        "permission denied",
        "pg_hba.conf",
        "role \"",
    ];
    // The peer went away or never answered: whatever was under way (a TLS handshake too),
    // nothing reached a server that could judge the certificate or the password.
    const GONE: [&str; 7] = [
        "eof",
        "end of file",
        "connection reset",
        "broken pipe",
        "connection refused",
        "timed out",
        "no answer",
    ];
    if GONE.iter().any(|p| m.contains(p)) {
        Class::Unreachable
    } else if TLS.iter().any(|p| m.contains(p)) {
        Class::Tls
    } else if AUTH.iter().any(|p| m.contains(p)) {
        Class::Auth
    } else {
        Class::Unreachable
    }
}

/// The one line a refused start prints: `PostgreSQL at 127.0.0.1:5441: tls: …`.
pub fn failure_line(service: &str, address: &str, message: &str) -> String {
    let flat: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{service} at {address}: {}: {flat}", classify(&flat))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_urls_as_managed_services_hand_them_out() {
        let t = PgTarget::parse(
            "postgres://u:p@db.example.com:25060/defaultdb?sslmode=require",
            None,
        )
        .unwrap();
        assert_eq!(t.mode, SslMode::Require);
        assert_eq!(t.address, "db.example.com:25060");
        assert_eq!(
            t.url(),
            "postgres://u:p@db.example.com:25060/defaultdb?sslmode=require"
        );
        let t = PgTarget::parse(
            "postgresql://u:p@h/db?sslmode=verify-full&application_name=x",
            None,
        )
        .unwrap();
        assert_eq!(t.mode, SslMode::Require);
        assert_eq!(
            t.url(),
            "postgresql://u:p@h/db?application_name=x&sslmode=require"
        );
        assert_eq!(t.address, "h:5432");
        let t = PgTarget::parse("postgres://u:p@h/db?sslmode=verify-ca", None).unwrap();
        assert_eq!(t.mode, SslMode::VerifyCa);
        let t = PgTarget::parse("postgres://u:p@h/db", None).unwrap();
        assert_eq!(t.mode, SslMode::Disable);
        assert_eq!(t.url(), "postgres://u:p@h/db?sslmode=disable");
        assert!(t.tls_config().unwrap().is_none());
        let t = PgTarget::parse("postgres://u:p@h/db?sslmode=prefer", None).unwrap();
        assert_eq!(t.mode, SslMode::Prefer);
    }

    #[test]
    fn pg_refuses_what_it_cannot_honour_in_one_line() {
        for (url, want) in [
            ("postgres://u:p@h/db?sslmode=allow", "sslmode=allow"),
            ("postgres://u:p@h/db?sslmode=bogus", "sslmode=bogus"),
            (
                "postgres://u:p@h/db?sslmode=require&sslcert=/c.pem",
                "sslcert",
            ),
            (
                "postgres://u:p@h/db?sslrootcert=/nonexistent/ca.pem",
                "/nonexistent/ca.pem",
            ),
        ] {
            let e = PgTarget::parse(url, None).unwrap_err();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains('\n') && !e.contains(":p@"), "{e}");
        }
        let e = PgTarget::parse(
            "postgres://u:p@h/db?sslmode=disable",
            Some(Path::new("/nonexistent/ca.pem")),
        )
        .unwrap_err();
        assert!(e.contains("disable"), "{e}");
    }

    #[test]
    fn pg_sslrootcert_becomes_the_ca_file() {
        let dir = std::env::temp_dir().join(format!("chat-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = PgTarget::parse(
            &format!(
                "postgres://u:p@h/db?sslmode=verify-full&sslrootcert={}",
                empty.display()
            ),
            None,
        )
        .unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = PgTarget::parse(
            &format!("postgres://u:p@h/db?sslrootcert={}", empty.display()),
            Some(Path::new("/other.pem")),
        )
        .unwrap_err();
        assert!(e.contains("differ"), "{e}");
        // `sslrootcert=system` is the system roots (libpq 16).
        let t = PgTarget::parse(
            "postgres://u:p@h/db?sslmode=require&sslrootcert=system",
            None,
        )
        .unwrap();
        assert!(t.ca.is_none());
        assert!(!t.url().contains("sslrootcert"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn redis_addresses() {
        assert_eq!(
            RedisTarget::new("rediss://u:p@r.example.com:6380/0").address(),
            "r.example.com:6380"
        );
        assert_eq!(
            RedisTarget::new("redis://127.0.0.1").address(),
            "127.0.0.1:6379"
        );
        assert!(RedisTarget::new("rediss://h").tls());
    }

    #[test]
    fn classes_of_the_messages_the_clients_give() {
        for (m, c) in [
            ("error performing TLS handshake: invalid peer certificate: UnknownIssuer", Class::Tls),
            ("invalid peer certificate: NotValidForName", Class::Tls),
            ("server does not support TLS", Class::Tls),
            ("received corrupt message of type InvalidContentType", Class::Tls),
            ("db error: FATAL: pg_hba.conf rejects connection for host \"127.0.0.1\", user \"postgres\", database \"postgres\", no encryption", Class::Tls),
            ("db error: FATAL: password authentication failed for user \"chat\"", Class::Auth),
            ("WRONGPASS: invalid username-password pair or user is disabled.", Class::Auth),
            ("NOPERM: this user has no permissions to access one of the keys", Class::Auth),
            ("error connecting to server: Connection refused (os error 111)", Class::Unreachable),
            ("no answer within 2 s", Class::Unreachable),
            ("tls handshake eof", Class::Unreachable),
            ("error performing TLS handshake: unexpected end of file", Class::Unreachable),
            ("the port accepts connections but did not answer the TLS handshake within 10 s (a plaintext port?)", Class::Tls),
        ] {
            assert_eq!(classify(m), c, "{m}");
        }
        assert_eq!(
            failure_line("Redis", "127.0.0.1:6390", "WRONGPASS:\n invalid"),
            "Redis at 127.0.0.1:6390: auth: WRONGPASS: invalid"
        );
    }

    #[test]
    fn a_provider_is_installed_and_configs_build() {
        install_provider();
        install_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        let roots = RootCertStore::empty();
        assert!(client_config(roots.clone(), true).is_ok());
        // An empty root store cannot build the chain-only verifier.
        assert!(client_config(roots, false).is_err());
    }
}
