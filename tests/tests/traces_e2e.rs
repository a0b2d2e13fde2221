//! End to end: traces. The gateway (both engines) continues a caller's W3C trace, hands
//! the backend a `traceparent` naming the backend call's span, records the trace, phase
//! timings and the backend's status and latency in the audit record, and exports the
//! request span, one span per phase and the backend call's span over OTLP/HTTP to a
//! receiver started here (which decodes the protobuf with the OpenTelemetry messages).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use portcullis_tests::host::{audit_records, get, start_engine_args};
use portcullis_tests::net::{Backend, KeyServer, Resp, Server};
use portcullis_tests::*;
use prost::Message as _;
use serde_json::{Value, json};

fn config(keys: &KeyServer, backend: &str) -> String {
    format!(
        r#"
[[issuer]]
name = "main"
issuer = "{ISSUER}"
jwks_uri = "{}/jwks.json"
insecure_http_jwks = true
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]

[region.eu]
jurisdiction = "EU"
backends = ["{backend}"]

[residency]
missing = "eu"
anonymous = "eu"

[[route]]
path = "/api/orders"
scopes_any = ["orders:read"]

[audit]
subject_key_file = "audit.key"
"#,
        keys.server.url()
    )
}

/// An OTLP/HTTP receiver: every span of every `POST /v1/traces`, decoded.
struct Receiver {
    server: Server,
    spans: Arc<Mutex<Vec<Span>>>,
    services: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let services = Arc::new(Mutex::new(Vec::new()));
        let (s, names) = (spans.clone(), services.clone());
        let server = Server::start(move |req| {
            let content_type = req
                .headers
                .iter()
                .find(|(n, _)| n == "content-type")
                .map(|(_, v)| v.as_str());
            if req.method != "POST"
                || req.path != "/v1/traces"
                || content_type != Some("application/x-protobuf")
            {
                return Resp::json(415, &json!({"error": "OTLP/HTTP protobuf only"}));
            }
            let Ok(export) = ExportTraceServiceRequest::decode(req.body.as_slice()) else {
                return Resp::json(400, &json!({"error": "not an ExportTraceServiceRequest"}));
            };
            for rs in export.resource_spans {
                for kv in rs.resource.map(|r| r.attributes).unwrap_or_default() {
                    if kv.key == "service.name"
                        && let Some(Any::StringValue(v)) = kv.value.and_then(|v| v.value)
                    {
                        names.lock().unwrap().push(v);
                    }
                }
                for ss in rs.scope_spans {
                    s.lock().unwrap().extend(ss.spans);
                }
            }
            Resp {
                status: 200,
                headers: vec![("content-type".into(), "application/x-protobuf".into())],
                body: Vec::new(),
            }
        });
        Self {
            server,
            spans,
            services,
        }
    }

    /// The spans of `trace` (hex), waiting until `ready` holds (bounded).
    fn trace(&self, trace: &str, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| hex(&s.trace_id) == trace)
                .cloned()
                .collect();
            if ready(&spans) || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn the_trace_is_continued_recorded_and_exported(engine: &str) {
    let keys = KeyServer::start(TestIdp::shared().jwks());
    let backend = Backend::start("eu");
    let receiver = Receiver::start();
    let otlp = receiver.server.url();
    let gw = start_engine_args(
        &config(&keys, &backend.server.url()),
        engine,
        &[],
        "127.0.0.1:0",
        |_| vec!["--otlp-endpoint".into(), otlp],
    );
    let token = TestIdp::shared().sign("ES256", live_claims(json!({"scope": "orders:read"})));
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let incoming = format!("00-{caller_trace}-{caller_span}-01");
    let r = get(
        &gw,
        "/api/orders/7",
        Some(&token),
        &[("traceparent", &incoming), ("tracestate", "vendor=1")],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // The backend got the caller's trace, a span of the gateway's, and the caller's state.
    let seen = r.json_body()["headers"].clone();
    let sent = seen["traceparent"].as_str().unwrap().to_owned();
    let fields: Vec<&str> = sent.split('-').collect();
    assert_eq!(fields.len(), 4, "{sent}");
    assert_eq!(
        (fields[0], fields[1], fields[3]),
        ("00", caller_trace, "01")
    );
    let backend_span = fields[2].to_owned();
    assert_ne!(
        backend_span, caller_span,
        "the backend call is a span of its own"
    );
    assert_eq!(seen["tracestate"], "vendor=1");

    // The audit record names the trace, the spans, the backend's answer and the phases.
    let records = audit_records(&gw, |r| r.iter().any(|r| r["path"] == "/api/orders/7"));
    let rec = records
        .iter()
        .find(|r| r["path"] == "/api/orders/7")
        .unwrap();
    assert_eq!(rec["trace_id"], caller_trace, "{rec}");
    assert_eq!(rec["parent_span_id"], caller_span);
    let request_span = rec["span_id"].as_str().unwrap().to_owned();
    assert_eq!(request_span.len(), 16);
    assert_ne!(request_span, backend_span);
    assert_eq!(rec["backend_status"], 200);
    assert!(rec["backend_us"].as_u64().unwrap() > 0, "{rec}");
    let phases: Vec<&str> = rec["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "normalize",
            "endpoints",
            "route",
            "limits",
            "authenticate",
            "delegate",
            "limits",
            "risk",
            "authorize",
            "residency",
            "forward"
        ]
    );
    let mut last_start = 0;
    for p in rec["phases"].as_array().unwrap() {
        let start = p["start_us"].as_u64().unwrap();
        assert!(start >= last_start, "phases in order: {rec}");
        last_start = start;
    }

    // The exported trace: the request span under the caller's, one span per phase and the
    // backend call under it, the backend call's id the one the backend was given.
    let spans = receiver.trace(caller_trace, |s| s.len() >= 2 + phases.len());
    let by_id = |id: &str| spans.iter().find(|s| hex(&s.span_id) == id);
    let request = by_id(&request_span).unwrap_or_else(|| panic!("no request span in {spans:?}"));
    assert_eq!(hex(&request.parent_span_id), caller_span);
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(request.name, "GET /api/orders");
    assert_eq!(
        attr(request, "http.response.status_code"),
        Some(&Any::IntValue(200))
    );
    assert_eq!(
        attr(request, "portcullis.decision"),
        Some(&Any::StringValue("forward".into()))
    );
    let call = by_id(&backend_span).unwrap_or_else(|| panic!("no backend span in {spans:?}"));
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(hex(&call.parent_span_id), request_span);
    assert_eq!(
        attr(call, "http.response.status_code"),
        Some(&Any::IntValue(200))
    );
    assert_eq!(
        attr(call, "portcullis.region"),
        Some(&Any::StringValue("eu".into()))
    );
    let mut phase_spans: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("portcullis."))
        .collect();
    phase_spans.sort_by_key(|s| s.start_time_unix_nano);
    let names: Vec<String> = phase_spans
        .iter()
        .map(|s| s.name.trim_start_matches("portcullis.").to_owned())
        .collect();
    assert_eq!(names, phases);
    for s in &phase_spans {
        assert_eq!(hex(&s.parent_span_id), request_span, "{}", s.name);
        assert!(s.start_time_unix_nano >= request.start_time_unix_nano);
        assert!(
            s.end_time_unix_nano <= request.end_time_unix_nano,
            "{}",
            s.name
        );
    }
    assert!(call.start_time_unix_nano >= request.start_time_unix_nano);
    assert!(call.end_time_unix_nano <= request.end_time_unix_nano);
    assert!(
        receiver
            .services
            .lock()
            .unwrap()
            .iter()
            .all(|s| s == "portcullis")
    );

    // Without a (valid) traceparent the gateway starts a trace; a caller's tracestate does
    // not go on with a trace it is not part of.
    let r = get(
        &gw,
        "/api/orders/8",
        Some(&token),
        &[
            ("traceparent", "00-zz-not-a-trace"),
            ("tracestate", "vendor=2"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = r.json_body()["headers"].clone();
    let sent = seen["traceparent"].as_str().unwrap();
    assert!(!sent.contains("zz"), "{sent}");
    assert_eq!(seen["tracestate"], Value::Null, "{seen}");
    let records = audit_records(&gw, |r| r.iter().any(|r| r["path"] == "/api/orders/8"));
    let rec = records
        .iter()
        .find(|r| r["path"] == "/api/orders/8")
        .unwrap();
    let started = rec["trace_id"].as_str().unwrap();
    assert_eq!(sent.split('-').nth(1), Some(started));
    assert_eq!(rec["parent_span_id"], Value::Null);
    let spans = receiver.trace(started, |s| !s.is_empty());
    assert!(
        spans
            .iter()
            .any(|s| s.parent_span_id.is_empty() && s.kind == SpanKind::Server as i32),
        "a root request span: {spans:?}"
    );

    // A refusal is a trace too, with its reason and no backend call.
    let r = get(&gw, "/api/orders/9", None, &[("traceparent", &incoming)]);
    assert_eq!(r.status, 401);
    let spans = receiver.trace(caller_trace, |s| {
        s.iter().any(|s| attr(s, "portcullis.reason").is_some())
    });
    let denied = spans
        .iter()
        .find(|s| attr(s, "portcullis.reason").is_some())
        .unwrap_or_else(|| panic!("no refused request span in {spans:?}"));
    assert_eq!(
        attr(denied, "portcullis.reason"),
        Some(&Any::StringValue("authentication_required".into()))
    );
    assert_eq!(
        attr(denied, "http.response.status_code"),
        Some(&Any::IntValue(401))
    );
}

portcullis_tests::on_every_engine!(the_trace_is_continued_recorded_and_exported);
