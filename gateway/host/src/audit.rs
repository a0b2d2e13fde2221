//! The audit sink: one JSON line per decision, to a file or standard output.

use std::io::Write;
use std::sync::Mutex;

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

    /// Writes one record (a JSON line, see [`portcullis_driver::audit::json_line`]).
    pub fn write(&self, record: &impl serde::Serialize) {
        let line = portcullis_driver::audit::json_line(record);
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}
