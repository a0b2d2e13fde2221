//! Prometheus text metrics: decisions by outcome and reason, latency, key-set refreshes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// The host's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    decisions: Mutex<BTreeMap<(String, String), u64>>,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
    /// Requests that failed inside the host (instantiation, traps).
    pub host_errors: AtomicU64,
}

impl Metrics {
    /// Counts a decision.
    pub fn decision(&self, decision: &str, reason: Option<&str>) {
        if let Ok(mut map) = self.decisions.lock() {
            *map.entry((decision.to_owned(), reason.unwrap_or("").to_owned()))
                .or_default() += 1;
        }
    }

    /// Records a request's latency.
    pub fn latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, counter) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Renders everything, with `extra` lines appended (key-set and cache metrics).
    pub fn render(&self, extra: &str) -> String {
        let mut out = String::new();
        out.push_str("# HELP portcullis_requests_total Decisions by outcome and reason.\n# TYPE portcullis_requests_total counter\n");
        if let Ok(map) = self.decisions.lock() {
            for ((decision, reason), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "portcullis_requests_total{{decision=\"{decision}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP portcullis_request_duration_seconds Time from request to response headers.\n# TYPE portcullis_request_duration_seconds histogram\n");
        for (bound, counter) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "portcullis_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "portcullis_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "portcullis_request_duration_seconds_sum {}",
            self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "portcullis_request_duration_seconds_count {count}");
        let _ = writeln!(
            out,
            "# TYPE portcullis_host_errors_total counter\nportcullis_host_errors_total {}",
            self.host_errors.load(Ordering::Relaxed)
        );
        out.push_str(extra);
        out
    }
}
