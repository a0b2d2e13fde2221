//! The admin listener's `/metrics`, in the OpenMetrics text format, on the Prometheus
//! project's own Rust client (`prometheus-client`): it escapes label values, groups each
//! family's samples under one `# TYPE`, and ends with `# EOF`.
//!
//! The host's own counters (decisions, latency, sessions, host errors) live here. The
//! services keep their counters where they are counted (key sets in the core's key store,
//! the token cache, plugins, the shared state); each scrape snapshots them into the same
//! registry through [`Scrape`], so a scrape is one consistent document.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// The media type of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A decision's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Decided {
    decision: String,
    reason: String,
}

/// A session event's label (`valid`, `renewed`, `refreshed`, `adopted`, `refresh_failed`,
/// `revoked`, …, as in the audit record's `session`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionEvent {
    event: String,
}

/// A backend region's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Region {
    region: String,
}

/// A failed backend call's labels: the region and `connect`, `timeout` or `other`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendFailure {
    region: String,
    kind: String,
}

/// A histogram over the latency buckets (seconds, 100 µs to 1 s).
pub fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// A float counter (seconds).
pub type SecondsCounter = Counter<f64, std::sync::atomic::AtomicU64>;
/// A float gauge (seconds).
pub type SecondsGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The host's metrics.
#[derive(Debug)]
pub struct Metrics {
    decisions: Family<Decided, Counter>,
    sessions: Family<SessionEvent, Counter>,
    latency: Histogram,
    host_errors: Counter,
    instances: Counter,
    instance_waits: Counter,
    idle_instances: Gauge,
    backend_latency: Family<Region, Histogram, fn() -> Histogram>,
    backend_failures: Family<BackendFailure, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            decisions: Family::default(),
            sessions: Family::default(),
            latency: Histogram::new(BUCKETS),
            host_errors: Counter::default(),
            instances: Counter::default(),
            instance_waits: Counter::default(),
            idle_instances: Gauge::default(),
            backend_latency: Family::new_with_constructor(latency_histogram),
            backend_failures: Family::default(),
        }
    }
}

/// A counter for one scrape, from a service's own atomic count.
pub fn counter_of(n: &std::sync::atomic::AtomicU64) -> Counter {
    let c = Counter::<u64>::default();
    c.inc_by(n.load(std::sync::atomic::Ordering::Relaxed));
    c
}

/// One scrape's registry, for services to add their snapshot to.
pub struct Scrape {
    registry: Registry,
}

impl Scrape {
    /// Registers `metric` as `portcullis_<name>` (counters get `_total` appended).
    pub fn add(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .register(format!("portcullis_{name}"), help, metric);
    }
}

impl Metrics {
    /// Counts a decision and, for requests that used a browser session, what happened to
    /// the session.
    pub fn decision(&self, decision: &str, reason: Option<&str>, session: Option<&str>) {
        self.decisions
            .get_or_create(&Decided {
                decision: decision.to_owned(),
                reason: reason.unwrap_or_default().to_owned(),
            })
            .inc();
        if let Some(event) = session {
            self.sessions
                .get_or_create(&SessionEvent {
                    event: event.to_owned(),
                })
                .inc();
        }
    }

    /// Records a request's latency.
    pub fn latency(&self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }

    /// Records a backend's answer in `region`: the time until its response head.
    pub fn backend_answered(&self, region: &str, d: Duration) {
        self.backend_latency
            .get_or_create(&Region {
                region: region.to_owned(),
            })
            .observe(d.as_secs_f64());
    }

    /// Counts a backend call in `region` that failed: `connect`, `timeout` or `other`.
    pub fn backend_failed(&self, region: &str, kind: &str) {
        self.backend_failures
            .get_or_create(&BackendFailure {
                region: region.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a request that failed inside the host (instantiation, traps).
    pub fn host_error(&self) {
        self.host_errors.inc();
    }

    /// Counts a gateway-component instance created (component engine).
    pub fn instance_created(&self) {
        self.instances.inc();
    }

    /// Counts a request that waited for a free gateway-component instance (every one of
    /// `--max-instances` in use when it came).
    pub fn instance_wait(&self) {
        self.instance_waits.inc();
    }

    /// Sets how many gateway-component instances wait idle to be reused.
    pub fn idle_instances(&self, idle: usize) {
        self.idle_instances
            .set(i64::try_from(idle).unwrap_or(i64::MAX));
    }

    /// The whole document: these metrics, build and process information, and what
    /// `services` add to the scrape.
    pub fn render(&self, services: impl FnOnce(&mut Scrape)) -> String {
        let mut scrape = Scrape {
            registry: Registry::default(),
        };
        scrape.add(
            "requests",
            "Decisions by outcome and reason code (empty: none)",
            self.decisions.clone(),
        );
        scrape.add(
            "request_duration_seconds",
            "Time from request to response headers",
            self.latency.clone(),
        );
        scrape.add(
            "sessions",
            "Requests with a browser session, by what happened to the session",
            self.sessions.clone(),
        );
        scrape.add(
            "backend_response_seconds",
            "Time from sending a request to a backend to its response head, by region",
            self.backend_latency.clone(),
        );
        scrape.add(
            "backend_failures",
            "Backend calls that failed, by region and kind (connect, timeout, other)",
            self.backend_failures.clone(),
        );
        scrape.add(
            "host_errors",
            "Requests that failed inside the host (instantiation, traps)",
            self.host_errors.clone(),
        );
        scrape.add(
            "gateway_instances",
            "Gateway component instances created (component engine; with --instance-reuse, fewer than requests)",
            self.instances.clone(),
        );
        scrape.add(
            "gateway_instance_waits",
            "Requests that waited for a free gateway component instance (all --max-instances in use)",
            self.instance_waits.clone(),
        );
        scrape.add(
            "gateway_instances_idle",
            "Gateway component instances kept idle for the next requests (--instance-reuse)",
            self.idle_instances.clone(),
        );
        scrape.add(
            "build",
            "The running build",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", env!("PORTCULLIS_GIT_REV")),
                ("wit", env!("PORTCULLIS_WIT_PACKAGE")),
                ("wasmtime", env!("PORTCULLIS_WASMTIME_VERSION")),
            ]),
        );
        process(&mut scrape.registry);
        services(&mut scrape);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &scrape.registry).is_err() {
            return "# EOF\n".to_owned();
        }
        out
    }
}

/// `process_*` metrics from `/proc/self` (Linux; nothing elsewhere): CPU seconds, resident
/// memory and open file descriptors, under the names Prometheus clients use.
fn process(registry: &mut Registry) {
    // utime and stime, fields 14 and 15 of /proc/self/stat, in USER_HZ ticks (100 per
    // second in the Linux ABI); the command name (field 2) may hold spaces, so count from
    // its closing parenthesis.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            let cpu = SecondsCounter::default();
            cpu.inc_by((user + system) as f64 / 100.0);
            registry.register("process_cpu_seconds", "User and system CPU time", cpu);
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
    {
        let rss = Gauge::<i64>::default();
        rss.set(kib.saturating_mul(1024));
        registry.register("process_resident_memory_bytes", "Resident memory size", rss);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds = Gauge::<i64>::default();
        fds.set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
        registry.register("process_open_fds", "Open file descriptors", fds);
    }
}
