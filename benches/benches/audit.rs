//! Cost of one audit record on the request's thread (`AuditSink::write`): serialising the
//! record to its JSON line and handing it to the writer thread through the bounded queue.
//! The writer appends to a file on the same machine meanwhile; with `drop` the queue never
//! makes the request wait, so the figure is what a request pays.
//!
//! * `write/drop`: `--audit-when-full drop` — serialise and `try_send`.
//! * `write/block`: `--audit-when-full block` (the default) — the same, waiting for room
//!   when the writer falls behind (here it keeps up: a local file).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use portcullis_core::{AuditRecord, PhaseTime};
use portcullis_host::audit::{AuditSink, WhenFull};

fn record() -> AuditRecord {
    AuditRecord {
        time_ms: 1_795_910_000_000,
        request_id: "6b12b62d-1".into(),
        method: "GET".into(),
        host: Some("shop.example".into()),
        path: "/api/orders/7".into(),
        route: Some("/api/orders".into()),
        decision: "forward",
        issuer: Some("main".into()),
        subject: Some("Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eA".into()),
        region: Some("eu".into()),
        backend: Some("https://eu-1.internal".into()),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        span_id: Some("00f067aa0ba902b7".into()),
        parent_span_id: Some("53995c3f42cd8ad8".into()),
        backend_status: Some(200),
        backend_us: Some(1_250),
        // Every phase of a forwarded request, as the pipeline records them.
        phases: portcullis_core::PHASE_NAMES
            .iter()
            .filter(|p| !matches!(**p, "record"))
            .enumerate()
            .map(|(i, phase)| PhaseTime {
                phase,
                start_us: 10 * i as u64,
                us: 9,
            })
            .collect(),
        ..AuditRecord::default()
    }
}

fn audit(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("portcullis-bench-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut group = c.benchmark_group("audit");
    let r = record();
    for (name, when_full) in [("drop", WhenFull::Drop), ("block", WhenFull::Block)] {
        let path = dir.join(format!("{name}.jsonl"));
        let sink = AuditSink::open(path.to_str().unwrap(), 16_384, when_full).unwrap();
        // What the request's thread pays: the record moved into the queue (its clone, the
        // setup, is not timed; the writer thread serializes and appends it meanwhile).
        group.bench_function(format!("write/{name}"), |b| {
            b.iter_batched(|| r.clone(), |r| sink.write(r), BatchSize::SmallInput)
        });
        sink.flush(std::time::Duration::from_secs(30));
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, audit);
criterion_main!(benches);
