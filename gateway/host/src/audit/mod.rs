//! Audit: the record of every decision, written by a sink of its own (a file or standard
//! output), and the same decision as OpenTelemetry spans when an exporter is configured.
//! Both engines emit through [`AuditService`]; the component reaches it through the WIT
//! `audit` interface ([`AuditHost`]).

mod sink;
pub mod traces;
mod wit;

pub use sink::{AuditSink, DEFAULT_QUEUE, WhenFull};
pub use wit::{AuditHost, AuditService, Audited};
