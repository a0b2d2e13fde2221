//! The audit sink: one JSON line per decision, to a file or standard output, written by a
//! thread of its own so a slow destination (a full disk, a log pipe nobody drains) never
//! holds up the request that produced the record.
//!
//! Records wait in a bounded queue. When it is full, [`WhenFull`] decides, never silently:
//! `Block` applies back-pressure (the request waits for room: no record is lost), `Drop`
//! keeps serving and counts each lost record (`portcullis_audit_dropped_total`, and a
//! warning at most every 10 s).

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records held before [`WhenFull`] applies (the default of `--audit-queue`).
pub const DEFAULT_QUEUE: usize = 16_384;

/// What a full queue does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenFull {
    /// The request waits until the writer makes room: every record is kept.
    #[default]
    Block,
    /// The record is dropped and counted: requests never wait for the sink.
    Drop,
}

/// A record waiting for the writer thread, which turns it into its JSON line: the request's
/// thread only moves it into the queue.
trait Record: Send {
    fn line(&self) -> String;
}

impl<T: serde::Serialize + Send> Record for T {
    fn line(&self) -> String {
        portcullis_driver::audit::json_line(self)
    }
}

enum Message {
    Record(Box<dyn Record>),
    Flush(std::sync::mpsc::Sender<()>),
    /// Close the destination and open it again (logrotate moved the file).
    Reopen,
}

/// Opens the destination; called again at every reopen.
type Opener = Box<dyn Fn() -> std::io::Result<Box<dyn Write>> + Send>;

/// Where audit records go.
pub struct AuditSink {
    queue: Option<SyncSender<Message>>,
    when_full: WhenFull,
    counters: Arc<Counters>,
    last_warning: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Counters {
    queued: AtomicUsize,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl AuditSink {
    /// Records to `path` (opened by the writer thread, so a destination that blocks on
    /// open, such as a FIFO without a reader, blocks only the writer), or standard output
    /// for `-`; at most `queue` records wait.
    pub fn open(path: &str, queue: usize, when_full: WhenFull) -> std::io::Result<Self> {
        let open: Opener = if path == "-" {
            Box::new(|| Ok(Box::new(std::io::stdout()) as Box<dyn Write>))
        } else {
            // Fail at startup on a path that cannot be written (a missing directory).
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
                && !dir.is_dir()
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no directory {}", dir.display()),
                ));
            }
            let path = path.to_owned();
            Box::new(move || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map(|f| Box::new(f) as Box<dyn Write>)
            })
        };
        let (tx, rx) = sync_channel(queue.max(1));
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || write_all(open, &rx, &c))?;
        Ok(Self {
            queue: Some(tx),
            when_full,
            counters,
            last_warning: Mutex::new(None),
        })
    }

    /// Discards records.
    pub fn discard() -> Self {
        Self {
            queue: None,
            when_full: WhenFull::Drop,
            counters: Arc::default(),
            last_warning: Mutex::new(None),
        }
    }

    /// Queues one record; the writer thread serializes it (one JSON line, see
    /// [`portcullis_driver::audit::json_line`]), so the caller pays for a move, not for
    /// the serialization.
    pub fn write(&self, record: impl serde::Serialize + Send + 'static) {
        let Some(queue) = &self.queue else {
            return;
        };
        let line = Message::Record(Box::new(record));
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        let sent = match self.when_full {
            WhenFull::Block => match queue.try_send(line) {
                Ok(()) => true,
                // Full: wait for room. On a runtime worker, tell the runtime first, so
                // its other tasks move to other threads while this one waits.
                Err(TrySendError::Full(line)) => match tokio::runtime::Handle::try_current() {
                    Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(|| queue.send(line).is_ok())
                    }
                    _ => queue.send(line).is_ok(),
                },
                Err(TrySendError::Disconnected(_)) => false,
            },
            WhenFull::Drop => match queue.try_send(line) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    self.dropped();
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            },
        };
        if !sent {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn dropped(&self) {
        let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut last) = self.last_warning.lock()
            && last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            *last = Some(Instant::now());
            tracing::warn!(
                dropped = n,
                "audit queue full: records dropped (--audit-when-full drop)"
            );
        }
    }

    /// Closes the destination file and opens it again after the records already queued
    /// (SIGHUP: logrotate moved it). Waits for room in the queue.
    pub fn reopen(&self) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(Message::Reopen);
        }
    }

    /// Waits up to `timeout` until every record queued so far is written (shutdown).
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(queue) = &self.queue else {
            return true;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut flush = Message::Flush(tx);
        loop {
            match queue.try_send(flush) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    flush = m;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return false,
            }
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Audit metrics for one scrape.
    pub fn add_metrics(&self, scrape: &mut crate::metrics::Scrape) {
        use prometheus_client::metrics::gauge::Gauge;
        let counter = crate::metrics::counter_of;
        let c = &self.counters;
        let queued = Gauge::<i64>::default();
        queued.set(i64::try_from(c.queued.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        scrape.add(
            "audit_queued",
            "Audit records waiting to be written",
            queued,
        );
        scrape.add(
            "audit_written",
            "Audit records written",
            counter(&c.written),
        );
        scrape.add(
            "audit_dropped",
            "Audit records dropped because the queue was full (--audit-when-full drop)",
            counter(&c.dropped),
        );
        scrape.add(
            "audit_write_errors",
            "Audit records the destination refused (disk full, closed pipe)",
            counter(&c.failed),
        );
    }
}

/// The writer thread: opens the destination, writes lines as they come, flushes whenever
/// the queue runs empty.
fn write_all(open: Opener, rx: &Receiver<Message>, counters: &Counters) {
    let mut out = match open() {
        Ok(out) => Some(out),
        Err(e) => {
            tracing::error!(error = %e, "audit destination cannot be opened: records are counted as failed");
            None
        }
    };
    while let Ok(message) = rx.recv() {
        let mut next = Some(message);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => {
                    counters.queued.fetch_sub(1, Ordering::Relaxed);
                    let line = record.line();
                    let ok = out.as_mut().is_some_and(|o| writeln!(o, "{line}").is_ok());
                    let n = if ok {
                        &counters.written
                    } else {
                        &counters.failed
                    };
                    n.fetch_add(1, Ordering::Relaxed);
                }
                Message::Flush(done) => {
                    if let Some(o) = out.as_mut() {
                        let _ = o.flush();
                    }
                    let _ = done.send(());
                }
                Message::Reopen => {
                    if let Some(o) = out.as_mut() {
                        let _ = o.flush();
                    }
                    out = match open() {
                        Ok(o) => Some(o),
                        Err(e) => {
                            tracing::error!(error = %e, "audit destination cannot be reopened: records are counted as failed");
                            None
                        }
                    };
                }
            }
            next = rx.try_recv().ok();
        }
        if let Some(o) = out.as_mut() {
            let _ = o.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn records_are_written_in_order_and_flush_waits_for_them() {
        let dir = std::env::temp_dir().join(format!("portcullis-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let sink = AuditSink::open(path.to_str().unwrap(), 4, WhenFull::Block).unwrap();
        for i in 0..100 {
            sink.write(serde_json::json!({ "n": i }));
        }
        assert!(sink.flush(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        let seen: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(sink.counters.written.load(Ordering::Relaxed), 100);
        assert_eq!(sink.counters.queued.load(Ordering::Relaxed), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_directory_is_a_startup_error() {
        assert!(AuditSink::open("/nonexistent-portcullis/audit.jsonl", 4, WhenFull::Drop).is_err());
    }
}
