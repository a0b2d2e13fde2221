//! The audit sink: one JSON line per decision, to a file or standard output.

use std::io::Write;
use std::sync::Mutex;

use serde_json::json;

use crate::runtime::DecisionRecord;

/// Where audit records go.
pub struct AuditSink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl AuditSink {
    /// Records to `path`, or standard output for `-`.
    pub fn open(path: &str) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        Ok(Self {
            out: Mutex::new(out),
        })
    }

    /// Discards records.
    pub fn discard() -> Self {
        Self {
            out: Mutex::new(Box::new(std::io::sink())),
        }
    }

    /// Writes one record.
    pub fn write(&self, r: &DecisionRecord) {
        let line = json!({
            "time_ms": r.time_ms,
            "request_id": r.request_id,
            "method": r.method,
            "host": r.host,
            "path": r.path,
            "route": r.route,
            "decision": r.decision,
            "status": r.status,
            "reason": r.reason,
            "issuer": r.issuer,
            "subject": r.subject,
            "region": r.region,
            "backend": r.backend,
            "actor": r.actor,
            "session": r.session,
            "risk": r.risk.as_deref().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()),
        });
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}
