//! Hot reload: SIGHUP, `POST /reload` on the admin listener, and a watch of the
//! configuration file load the configuration again, validate it completely (every located
//! problem, plugins accepting their configuration, key files), prepare it beside the running
//! one — metrics, audit sink, shared state, listener TLS and unchanged issuers' key sets
//! carry over — and swap it in atomically: each request is decided by the configuration
//! current when it arrived, and requests in flight finish on theirs. A configuration that
//! does not load leaves the running one in place and says why (log, metric, admin answer).
//! SIGHUP also reopens the audit file (logrotate). The watch compares the file with the
//! version the last reload read, whatever triggered it: a change loaded by SIGHUP or
//! `POST /reload` is not loaded a second time when the watch next looks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::serve::ServeOptions;
use crate::serve::server::Gateway;

/// What the file watch compares: a file's modification time and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp(SystemTime, u64);

impl FileStamp {
    /// The stamp of the file at `path` now (`None`: it cannot be read).
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self(
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        ))
    }
}

/// Where reloads come from.
pub struct Reload {
    /// The configuration file (`None`: an embedded configuration, never reloaded).
    pub source: Option<PathBuf>,
    /// The file's stamp taken just before the running configuration was read from it.
    pub read: Option<FileStamp>,
    /// How the running configuration was served (reloads prepare the same way).
    pub opts: ServeOptions,
    /// How often the file is checked for change (`None`: no watch).
    pub watch: Option<Duration>,
}

/// The configuration in use, and reloading it.
pub struct Live {
    current: ArcSwap<Gateway>,
    reload: Reload,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
    /// The file's stamp when the last reload (or the start) read it: the watch reloads
    /// when the file differs from it.
    read: Mutex<Option<FileStamp>>,
    generation: AtomicU64,
    loaded: AtomicU64,
    refused: AtomicU64,
}

impl Live {
    /// Serving `first`, reloading from `reload`.
    pub fn new(first: Arc<Gateway>, reload: Reload) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::new(first),
            read: Mutex::new(reload.read),
            reload,
            busy: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(1),
            loaded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The gateway of the current configuration.
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Loads the configuration file again and, if it is valid, swaps it in: the new
    /// generation's number, or every reason it was refused (the running one stays).
    pub async fn reload(&self, trigger: &str) -> Result<u64, String> {
        let _one = self.busy.lock().await;
        self.reload_locked(trigger).await
    }

    /// As [`Live::reload`], when the file differs from the version the last reload read
    /// (checked once no other reload runs): `None` when it does not.
    pub async fn reload_if_changed(&self, trigger: &str) -> Option<Result<u64, String>> {
        let _one = self.busy.lock().await;
        if !self.file_changed() {
            return None;
        }
        Some(self.reload_locked(trigger).await)
    }

    async fn reload_locked(&self, trigger: &str) -> Result<u64, String> {
        self.note_read();
        let outcome = self.load_next().await;
        match &outcome {
            Ok(generation) => {
                self.loaded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(trigger, generation, "configuration reloaded");
            }
            Err(why) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(trigger, error = %why, "configuration reload refused; the running configuration stays");
            }
        }
        outcome
    }

    /// Records the file's stamp as read (before reading it: a write that lands after
    /// the stamp and before the read is loaded now and once more by the watch, never lost).
    fn note_read(&self) {
        if let (Some(path), Ok(mut read)) = (&self.reload.source, self.read.lock()) {
            *read = FileStamp::of(path);
        }
    }

    /// Whether the file differs from the version the last reload read (a file that cannot
    /// be read is not a change: the running configuration stays until it is back).
    fn file_changed(&self) -> bool {
        let Some(path) = &self.reload.source else {
            return false;
        };
        let now = FileStamp::of(path);
        now.is_some() && self.read.lock().is_ok_and(|read| *read != now)
    }

    async fn load_next(&self) -> Result<u64, String> {
        let Some(path) = &self.reload.source else {
            return Err("the gateway runs an embedded configuration: nothing to reload".into());
        };
        let loaded = crate::config::load_config_file(path)?;
        let running = self.current();
        let prepared = crate::serve::prepare_next(loaded, &self.reload.opts, &running)
            .await
            .map_err(|e| format!("{}: {e:#}", path.display()))?;
        if let (Some(staged), Some(front)) = (prepared.staged_tls, &running.shared().tls) {
            front.install(staged);
        }
        self.current.store(prepared.gateway);
        Ok(self.generation.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Starts the triggers: SIGHUP (reload, and reopen the audit file) and the file watch.
    pub fn start_triggers(self: &Arc<Self>) {
        #[cfg(unix)]
        {
            let live = Arc::downgrade(self);
            tokio::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut hup) = signal(SignalKind::hangup()) else {
                    tracing::warn!("SIGHUP cannot be handled: reload with POST /reload");
                    return;
                };
                while hup.recv().await.is_some() {
                    let Some(live) = live.upgrade() else { break };
                    let shared = live.current().shared().clone();
                    let _ = tokio::task::spawn_blocking(move || shared.audit.sink.reopen()).await;
                    let _ = live.reload("sighup").await;
                }
            });
        }
        if let (Some(every), Some(_)) = (self.reload.watch, &self.reload.source) {
            let live = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(live) = live.upgrade() else { break };
                    if live.file_changed() {
                        let _ = live.reload_if_changed("watch").await;
                    }
                }
            });
        }
    }

    /// Adds the reload counters to a metrics scrape.
    pub fn add_metrics(&self, scrape: &mut crate::metrics::Scrape) {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        let reloads = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        reloads
            .get_or_create(&vec![("result", "loaded")])
            .inc_by(self.loaded.load(Ordering::Relaxed));
        reloads
            .get_or_create(&vec![("result", "refused")])
            .inc_by(self.refused.load(Ordering::Relaxed));
        scrape.add(
            "config_reloads",
            "Configuration reloads (SIGHUP, POST /reload, file watch), by result",
            reloads,
        );
        let generation = Gauge::<i64>::default();
        generation.set(i64::try_from(self.generation.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        scrape.add(
            "config_generation",
            "The configuration in use: 1 at start, one more at every reload",
            generation,
        );
    }
}
