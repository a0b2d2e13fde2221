//! Phase `normalize`: one canonical request before anything else looks at it
//! ([`crate::normalize`]): the canonical path, the one authority, the scheme, and the
//! client-supplied identity headers marked for removal. Refusals: `path_invalid`,
//! `host_invalid` (400).

use super::{Ctx, Input, Step};
use crate::normalize::{Normalized, normalize};

/// Normalizes the request; the audit record gets its canonical path and host.
pub fn run(input: &Input<'_>, cx: &mut Ctx) -> Step<Normalized> {
    let norm = normalize(input.req, &input.prep.strip, &input.config().paths)
        .map_err(|(reason, detail)| input.refuse(reason, &detail))?;
    cx.audit.path.clone_from(&norm.path);
    cx.audit.host = Some(norm.authority.host.clone());
    Ok(norm)
}
