//! The audit service both engines emit through, and the WIT `audit` interface the gateway
//! component reaches it by.

use std::sync::Arc;
use std::time::SystemTime;

use crate::audit::AuditSink;
use crate::audit::traces::{BackendCall, DecisionSpan, Traces};
use crate::bindings::portcullis::gateway::audit;
use crate::metrics::Metrics;

/// Where decisions go: the audit sink, the decision counters and, when configured, span
/// export.
pub struct AuditService {
    /// Audit records.
    pub sink: AuditSink,
    /// Span export (OTLP), when configured.
    pub traces: Traces,
    /// The decision counters.
    pub metrics: Arc<Metrics>,
}

impl AuditService {
    /// Writes a decision's record, counts it and, when traces are exported, queues its
    /// spans with those of the backend `calls` made for it. `started` is when the request
    /// arrived (now, when unknown).
    pub fn emit<R: Audited>(&self, record: R, started: Option<SystemTime>, calls: &[BackendCall]) {
        let (decision, reason, session) = record.counted();
        self.metrics.decision(decision, reason, session);
        if self.traces.enabled() {
            let now = SystemTime::now();
            self.traces
                .decision(&record.span(), started.unwrap_or(now), now, calls);
        }
        self.sink.write(record);
    }
}

/// An audit record either engine emits: the core's (native) or the component's.
pub trait Audited: serde::Serialize + Send + 'static {
    /// What the decision counters count: decision, reason, session event.
    fn counted(&self) -> (&str, Option<&str>, Option<&str>);
    /// The record as the request span sees it.
    fn span(&self) -> DecisionSpan<'_>;
}

impl Audited for portcullis_core::AuditRecord {
    fn counted(&self) -> (&str, Option<&str>, Option<&str>) {
        (self.decision, self.reason, self.session)
    }

    fn span(&self) -> DecisionSpan<'_> {
        self.into()
    }
}

impl Audited for audit::DecisionRecord {
    fn counted(&self) -> (&str, Option<&str>, Option<&str>) {
        (
            &self.decision,
            self.reason.as_deref(),
            self.session.as_deref(),
        )
    }

    fn span(&self) -> DecisionSpan<'_> {
        self.into()
    }
}

/// One request's view of the audit service, for a component that writes a record itself
/// through the `audit` import. (The gateway component returns its decision's record with
/// the decision instead, and the host completes it with the backend's answer and the
/// backend calls made: [`crate::serve::carry`].)
pub struct AuditHost {
    /// The service.
    pub service: Arc<AuditService>,
    /// When the request arrived (its span's start).
    pub started: SystemTime,
}

impl audit::Host for AuditHost {
    fn emit(&mut self, record: audit::DecisionRecord) {
        self.service.emit(record, Some(self.started), &[]);
    }
}
