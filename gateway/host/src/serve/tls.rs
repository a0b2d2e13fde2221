//! TLS on the gateway's own listener (`[server.tls]`): certificates chosen by the client's
//! SNI name, HTTP/2 and HTTP/1.1 offered by ALPN, and the certificate files watched so that
//! a renewed certificate is served to new connections without a restart.
//!
//! A file that does not load (unreadable, not PEM, a key that does not match its
//! certificate) is a startup error; at a reload it is logged and counted, and the
//! certificates already loaded stay in use.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow};
use portcullis_core::config::ServerTls;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ServerConfig, crypto::ring};

/// The ALPN protocol id of HTTP/2.
pub const H2: &[u8] = b"h2";

/// The listener's TLS: the acceptor and the watched certificate files.
pub struct TlsFront {
    acceptor: TlsAcceptor,
    certs: Arc<Certificates>,
    watch: Duration,
    http2: bool,
}

/// Certificates loaded from a reloaded configuration's `[server.tls]`, ready to replace the
/// ones in use ([`TlsFront::install`]): every file was read, so a configuration whose
/// certificates do not load is refused before anything changes.
pub struct Staged {
    files: Vec<Pair>,
    loaded: Vec<Loaded>,
}

impl TlsFront {
    /// Loads every certificate of `cfg` (paths relative to `base`): any that does not
    /// load is an error naming its entry.
    pub fn load(cfg: &ServerTls, base: &Path) -> anyhow::Result<Self> {
        let files = pairs(cfg, base);
        let provider = Arc::new(ring::default_provider());
        let loaded = load_all(&files, &provider)?;
        let certs = Arc::new(Certificates {
            stamps: RwLock::new(stamps(&files)),
            files: RwLock::new(files),
            current: RwLock::new(Arc::new(loaded)),
            provider: provider.clone(),
            reloads: AtomicU64::new(0),
            failed_reloads: AtomicU64::new(0),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("TLS protocol versions: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = if cfg.http2 {
            vec![H2.to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certs,
            watch: cfg.watch,
            http2: cfg.http2,
        })
    }

    /// Whether `cfg` differs from this listener's only in its certificates (`http2` and
    /// `watch` are fixed while it runs).
    pub fn accepts(&self, cfg: &ServerTls) -> bool {
        cfg.http2 == self.http2 && cfg.watch == self.watch
    }

    /// Loads the certificates of `cfg` (a reloaded configuration) without using them yet.
    pub fn stage(&self, cfg: &ServerTls, base: &Path) -> anyhow::Result<Staged> {
        let files = pairs(cfg, base);
        let loaded = load_all(&files, &self.certs.provider)?;
        Ok(Staged { files, loaded })
    }

    /// Serves `staged` to new connections from now on, and watches its files.
    pub fn install(&self, staged: Staged) {
        let now = stamps(&staged.files);
        if let (Ok(mut files), Ok(mut seen), Ok(mut current)) = (
            self.certs.files.write(),
            self.certs.stamps.write(),
            self.certs.current.write(),
        ) {
            *files = staged.files;
            *seen = now;
            *current = Arc::new(staged.loaded);
        }
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Checks the files every `watch` interval while the listener lives, and loads them
    /// again when one changed.
    pub fn start_watching(&self) {
        let certs = Arc::downgrade(&self.certs);
        let watch = self.watch;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(watch);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(certs) = certs.upgrade() else { break };
                certs.reload_if_changed();
            }
        });
    }

    /// Reloads attempted since start: (loaded, refused).
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.certs.reloads.load(Ordering::Relaxed),
            self.certs.failed_reloads.load(Ordering::Relaxed),
        )
    }

    /// Adds the reload counters to a metrics scrape.
    pub fn add_metrics(&self, scrape: &mut crate::metrics::Scrape) {
        let reloads = prometheus_client::metrics::family::Family::<
            Vec<(&'static str, &'static str)>,
            prometheus_client::metrics::counter::Counter,
        >::default();
        let (ok, refused) = self.reload_counts();
        reloads
            .get_or_create(&vec![("result", "loaded")])
            .inc_by(ok);
        reloads
            .get_or_create(&vec![("result", "refused")])
            .inc_by(refused);
        scrape.add(
            "tls_reloads",
            "Reloads of the listener's certificate files after a change, by result",
            reloads,
        );
    }
}

/// One configured certificate's files.
#[derive(Debug)]
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

/// A loaded certificate: the chain with its key.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
}

/// What identifies a file's version without reading it.
type Stamp = Option<(SystemTime, u64)>;

/// The certificates in use and the files they came from.
#[derive(Debug)]
struct Certificates {
    files: RwLock<Vec<Pair>>,
    stamps: RwLock<Vec<(Stamp, Stamp)>>,
    current: RwLock<Arc<Vec<Loaded>>>,
    provider: Arc<CryptoProvider>,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
}

impl Certificates {
    fn reload_if_changed(&self) {
        let Ok(files) = self.files.read() else {
            return;
        };
        let now = stamps(&files);
        let changed = self.stamps.read().map(|s| *s != now).unwrap_or(true);
        if !changed {
            return;
        }
        // Remembered before loading: a file that does not load is reported once, then
        // again only when it changes.
        if let Ok(mut s) = self.stamps.write() {
            *s = now;
        }
        match load_all(&files, &self.provider) {
            Ok(loaded) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::new(loaded);
                }
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(certificates = files.len(), "TLS certificates reloaded");
            }
            Err(e) => {
                self.failed_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    error = format!("{e:#}"),
                    "TLS certificate files changed but do not load; the previous certificates stay in use"
                );
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().ok()?.clone();
        let first = current.first()?;
        let Some(name) = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n).ok())
        else {
            return Some(first.key.clone());
        };
        let covers = |l: &&Loaded| {
            l.key.end_entity_cert().ok().is_some_and(|der| {
                webpki::EndEntityCert::try_from(der)
                    .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
            })
        };
        Some(current.iter().find(covers).unwrap_or(first).key.clone())
    }
}

fn pairs(cfg: &ServerTls, base: &Path) -> Vec<Pair> {
    cfg.certificates
        .iter()
        .map(|c| Pair {
            cert: base.join(&c.cert),
            key: base.join(&c.key),
        })
        .collect()
}

fn stamps(files: &[Pair]) -> Vec<(Stamp, Stamp)> {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    files
        .iter()
        .map(|f| (stamp(&f.cert), stamp(&f.key)))
        .collect()
}

fn load_all(files: &[Pair], provider: &CryptoProvider) -> anyhow::Result<Vec<Loaded>> {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            load_one(f, provider).with_context(|| format!("server.tls.certificates[{i}]"))
        })
        .collect()
}

fn load_one(pair: &Pair, provider: &CryptoProvider) -> anyhow::Result<Loaded> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .and_then(Iterator::collect)
        .map_err(|e| anyhow!("cert {}: {e}", pair.cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(anyhow!(
            "cert {}: no CERTIFICATE in the file",
            pair.cert.display()
        ));
    };
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| anyhow!("cert {}: the first certificate: {e}", pair.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&pair.key)
        .map_err(|e| anyhow!("key {}: {e}", pair.key.display()))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        anyhow!(
            "key {} does not fit cert {}: {e}",
            pair.key.display(),
            pair.cert.display()
        )
    })?;
    Ok(Loaded { key: Arc::new(key) })
}
