//! Traces: each decision as OpenTelemetry spans, exported over OTLP/HTTP (protobuf) when an
//! endpoint is configured.
//!
//! The core continues the caller's W3C trace (or starts one), names the gateway's span in
//! the audit record and hands the backend a `traceparent` naming the backend call's span
//! ([`portcullis_core::trace`]). From those, after the fact, the host builds:
//! - the request span (kind server): trace and span id from the record, the caller's span
//!   as parent, method, route, status and decision as attributes;
//! - one child span per phase that ran, from the record's phase timings;
//! - one child span per backend call (kind client), with the span id the backend was given.
//!
//! Spans go through a bounded queue to one exporter task that posts batches to
//! `<endpoint>/v1/traces` (at most [`BATCH`] spans, or what arrived within [`LINGER`]).
//! A full queue drops spans and counts them; an export never delays a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http_body_util::BodyExt as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use portcullis_core::trace::{TRACEPARENT, id_from_hex, parse};
use prost::Message as _;
use tokio::sync::mpsc;

use crate::client::backends::{BackendClient, BackendOutcome};

/// Spans per export request at most.
pub const BATCH: usize = 512;
/// How long the exporter waits for more spans before posting what it has.
pub const LINGER: Duration = Duration::from_millis(500);
/// Spans waiting for export at most; more are dropped (and counted).
const QUEUE: usize = 8192;
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The decision as the request span sees it: from the core's audit record (native engine)
/// or the record a gateway component emits.
#[derive(Debug, Default)]
pub struct DecisionSpan<'a> {
    /// The trace (32 hex digits).
    pub trace_id: Option<&'a str>,
    /// The gateway's span (16 hex digits).
    pub span_id: Option<&'a str>,
    /// The caller's span.
    pub parent_span_id: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// Normalised path.
    pub path: &'a str,
    /// The matched route.
    pub route: Option<&'a str>,
    /// `forward`, `deny`, `redirect`, `answer`.
    pub decision: &'a str,
    /// The gateway's own status, when it answered.
    pub status: Option<u16>,
    /// The reason code of a refusal.
    pub reason: Option<&'a str>,
    /// The phase that answered.
    pub phase: Option<&'a str>,
    /// The region forwarded to.
    pub region: Option<&'a str>,
    /// The backend's status, when it answered.
    pub backend_status: Option<u16>,
    /// `(phase, start µs, µs)` from the decision's start.
    pub phases: Vec<(&'a str, u64, u64)>,
}

/// A [`DecisionSpan`] of either audit record: the two have the same fields, the core's with
/// static names and the component's with owned strings.
macro_rules! decision_span {
    ($a:expr) => {{
        let a = $a;
        DecisionSpan {
            trace_id: a.trace_id.as_deref(),
            span_id: a.span_id.as_deref(),
            parent_span_id: a.parent_span_id.as_deref(),
            method: &a.method,
            path: &a.path,
            route: a.route.as_deref(),
            decision: as_str(&a.decision),
            status: a.status,
            reason: a.reason.as_ref().map(as_str),
            phase: a.phase.as_ref().map(as_str),
            region: a.region.as_deref(),
            backend_status: a.backend_status,
            phases: a
                .phases
                .iter()
                .map(|p| (as_str(&p.phase), p.start_us, p.us))
                .collect(),
        }
    }};
}

fn as_str<S: AsRef<str> + ?Sized>(s: &S) -> &str {
    s.as_ref()
}

impl<'a> From<&'a portcullis_core::AuditRecord> for DecisionSpan<'a> {
    fn from(a: &'a portcullis_core::AuditRecord) -> Self {
        decision_span!(a)
    }
}

impl<'a> From<&'a crate::bindings::DecisionRecord> for DecisionSpan<'a> {
    fn from(a: &'a crate::bindings::DecisionRecord) -> Self {
        decision_span!(a)
    }
}

/// One call to a backend, as the host saw it: kept until the decision's record names the
/// request span it belongs to.
#[derive(Clone, Debug)]
pub struct BackendCall {
    /// The `traceparent` the backend was sent, parsed.
    pub trace: Option<portcullis_core::trace::TraceParent>,
    /// Method.
    pub method: String,
    /// The backend's authority (`host:port`).
    pub authority: String,
    /// The backend's region.
    pub region: String,
    /// When it was sent.
    pub sent: SystemTime,
    /// How long until its response head, or until it failed.
    pub took: Duration,
    /// How it ended.
    pub outcome: BackendOutcome,
    /// Its status, when it answered.
    pub status: Option<u16>,
    clock: std::time::Instant,
}

impl BackendCall {
    /// A call about to be sent with `headers` to `authority`.
    pub fn new(method: &str, authority: &str, region: &str, headers: &HeaderMap) -> Self {
        Self {
            trace: headers
                .get(TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .and_then(parse),
            method: method.to_owned(),
            authority: authority.to_owned(),
            region: region.to_owned(),
            sent: SystemTime::now(),
            took: Duration::ZERO,
            outcome: BackendOutcome::Other,
            status: None,
            clock: std::time::Instant::now(),
        }
    }

    /// The call ended with `outcome` (and `status`, when the backend answered).
    pub fn finish(&mut self, outcome: BackendOutcome, status: Option<u16>) {
        self.took = self.clock.elapsed();
        self.outcome = outcome;
        self.status = status;
    }
}

/// Export counters.
#[derive(Debug, Default)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// The span exporter (or none, when no endpoint is configured).
#[derive(Debug, Default)]
pub struct Traces {
    queue: Option<mpsc::Sender<Span>>,
    counters: Arc<Counters>,
}

impl Traces {
    /// No export: spans are not built at all.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Exports to the OTLP/HTTP `endpoint` (`http(s)://host:port`, `/v1/traces` appended
    /// unless the URL already ends with it) with `client`, as service `service`. Spawns the
    /// exporter task: call within the Tokio runtime.
    pub fn otlp(endpoint: &str, client: BackendClient, service: &str) -> anyhow::Result<Self> {
        let url = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
            endpoint.to_owned()
        } else {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--otlp-endpoint {url}: {e}"))?;
        anyhow::ensure!(
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some(),
            "--otlp-endpoint {url}: not an http(s) URL"
        );
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        let resource = Resource {
            attributes: vec![
                kv("service.name", text(service)),
                kv("service.version", text(env!("CARGO_PKG_VERSION"))),
            ],
            ..Resource::default()
        };
        tokio::spawn(export_loop(rx, uri, client, resource, counters.clone()));
        Ok(Self {
            queue: Some(tx),
            counters,
        })
    }

    /// True when spans are exported (callers skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues the spans of one decision that started at `started` and ended at `ended`,
    /// with the backend calls made for it.
    pub fn decision(
        &self,
        d: &DecisionSpan<'_>,
        started: SystemTime,
        ended: SystemTime,
        calls: &[BackendCall],
    ) {
        let Some(queue) = &self.queue else {
            return;
        };
        let (Some(trace_id), Some(span_id)) = (
            d.trace_id.and_then(id_from_hex::<16>),
            d.span_id.and_then(id_from_hex::<8>),
        ) else {
            return;
        };
        let parent = d.parent_span_id.and_then(id_from_hex::<8>);
        let status = d.backend_status.or(d.status);
        let mut attributes = vec![
            kv("http.request.method", text(d.method)),
            kv("url.path", text(d.path)),
            kv("portcullis.decision", text(d.decision)),
        ];
        let optional = [
            ("http.route", d.route),
            ("portcullis.reason", d.reason),
            ("portcullis.phase", d.phase),
            ("portcullis.region", d.region),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                attributes.push(kv(key, text(v)));
            }
        }
        if let Some(s) = status {
            attributes.push(kv("http.response.status_code", int(i64::from(s))));
        }
        let request = Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: match d.route {
                Some(route) => format!("{} {route}", d.method),
                None => d.method.to_owned(),
            },
            kind: SpanKind::Server as i32,
            start_time_unix_nano: nanos(started),
            end_time_unix_nano: nanos(ended),
            attributes,
            status: status.filter(|s| *s >= 500).map(|_| Status {
                code: StatusCode::Error as i32,
                message: d.reason.unwrap_or_default().to_owned(),
            }),
            ..Span::default()
        };
        let mut spans = vec![request];
        for &(phase, start_us, us) in &d.phases {
            let start = started + Duration::from_micros(start_us);
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: fresh_span_id().to_vec(),
                parent_span_id: span_id.to_vec(),
                name: format!("portcullis.{phase}"),
                kind: SpanKind::Internal as i32,
                start_time_unix_nano: nanos(start),
                end_time_unix_nano: nanos(start + Duration::from_micros(us)),
                ..Span::default()
            });
        }
        for call in calls {
            let Some(sent) = call.trace.filter(|t| t.trace_id == trace_id) else {
                continue;
            };
            let mut attributes = vec![
                kv("http.request.method", text(&call.method)),
                kv("server.address", text(&call.authority)),
                kv("portcullis.region", text(&call.region)),
            ];
            if let Some(s) = call.status {
                attributes.push(kv("http.response.status_code", int(i64::from(s))));
            }
            let failed = call.outcome != BackendOutcome::Answered;
            if failed {
                attributes.push(kv(
                    "error.type",
                    text(match call.outcome {
                        BackendOutcome::Timeout => "timeout",
                        BackendOutcome::Connect => "connect",
                        BackendOutcome::Local => "local",
                        BackendOutcome::Identity => "identity",
                        _ => "other",
                    }),
                ));
            }
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: sent.parent_id.to_vec(),
                parent_span_id: span_id.to_vec(),
                name: call.method.clone(),
                kind: SpanKind::Client as i32,
                start_time_unix_nano: nanos(call.sent),
                end_time_unix_nano: nanos(call.sent + call.took),
                attributes,
                status: (failed || call.status.is_some_and(|s| s >= 500)).then(|| Status {
                    code: StatusCode::Error as i32,
                    message: String::new(),
                }),
                ..Span::default()
            });
        }
        for span in spans {
            if queue.try_send(span).is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Export metrics for one scrape.
    pub fn add_metrics(&self, scrape: &mut crate::metrics::Scrape) {
        let counter = crate::metrics::counter_of;
        let c = &self.counters;
        scrape.add(
            "spans_exported",
            "Spans the OTLP endpoint accepted",
            counter(&c.exported),
        );
        scrape.add(
            "spans_dropped",
            "Spans dropped: the export queue was full",
            counter(&c.dropped),
        );
        scrape.add(
            "spans_failed",
            "Spans lost to failed exports (endpoint unreachable or refusing)",
            counter(&c.failed),
        );
    }
}

/// Collects batches and posts them until every sender is gone.
async fn export_loop(
    mut rx: mpsc::Receiver<Span>,
    uri: http::Uri,
    client: BackendClient,
    resource: Resource,
    counters: Arc<Counters>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                more = rx.recv() => match more {
                    Some(span) => batch.push(span),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        let n = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "portcullis".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    spans: batch,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        match post(&client, &uri, request.encode_to_vec()).await {
            Ok(()) => counters.exported.fetch_add(n, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(endpoint = %uri, error = %e, spans = n, "span export failed");
                counters.failed.fetch_add(n, Ordering::Relaxed)
            }
        };
    }
}

/// One OTLP/HTTP export: 2xx is success.
async fn post(client: &BackendClient, uri: &http::Uri, body: Vec<u8>) -> Result<(), String> {
    let request = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(crate::client::backends::full_body(body))
        .map_err(|e| e.to_string())?;
    let call = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        // Read the (small) answer so the connection returns to the pool.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the endpoint answered {status}"))
        }
    };
    tokio::time::timeout(EXPORT_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {EXPORT_TIMEOUT:?}")))
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(value),
        ..KeyValue::default()
    }
}

fn text(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    }
}

fn int(i: i64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::IntValue(i)),
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A random span id for a phase span (never all zero).
fn fresh_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    if getrandom::fill(&mut id).is_err() || id == [0; 8] {
        // A failing OS source: a fixed, valid id rather than no span.
        id = [1; 8];
    }
    id
}
