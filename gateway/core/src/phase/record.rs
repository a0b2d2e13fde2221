//! Phase `record`: the audit record's outcome ([`crate::audit`]). Every decision gets one
//! record; refusals name the phase that refused.

use crate::audit::AuditRecord;
use crate::decision::Outcome;

/// Completes `audit` for `outcome`; `phase` is the phase that answered, if one did.
pub fn finish(audit: &mut AuditRecord, outcome: &Outcome, phase: Option<&'static str>) {
    match outcome {
        Outcome::Forward(_) => audit.decision = "forward",
        // The gateway's own redirects (a solved challenge, login) are not refusals.
        Outcome::Respond(r) if r.status.is_redirection() => {
            audit.decision = "redirect";
            audit.status = Some(r.status.as_u16());
        }
        // Its own endpoints' successful answers (back-channel logout).
        Outcome::Respond(r) if r.status.is_success() => {
            audit.decision = "answer";
            audit.status = Some(r.status.as_u16());
        }
        Outcome::Respond(r) => {
            audit.decision = "deny";
            audit.status = Some(r.status.as_u16());
            audit.reason = Some(r.reason.code());
        }
    }
    if let Outcome::Respond(_) = outcome {
        audit.phase = phase;
    }
}
