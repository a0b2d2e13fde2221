//! Phase `residency`: the caller's home region and a healthy backend in its jurisdiction
//! ([`crate::residency`]); never a backend elsewhere. Refusals: `residency_not_permitted`
//! (403), `residency_unavailable` (503) and the home-region errors.

use super::{Ctx, Matched, Scope, Step};
use crate::config::Region;
use crate::fnv::fnv1a;
use crate::model::{BackendId, Entropy as _};
use crate::reason::Reason;
use crate::residency::{choose_backend, home_region};

/// Chooses the backend; the audit record gets its region and URL.
pub fn run<'a>(scope: &Scope<'a>, m: Matched<'a>, cx: &mut Ctx) -> Step<(BackendId, &'a Region)> {
    let input = &scope.input;
    let cfg = input.config();
    let refuse = |(reason, detail): (Reason, String)| input.refuse(reason, &detail);
    let home = home_region(cfg, cx.identity.as_ref()).map_err(refuse)?;
    if !m.route.regions.is_empty() && !m.route.regions.contains(&home) {
        let name = cfg.regions.get(home.0).map_or("", |r| r.name.as_str());
        return Err(input.refuse(
            Reason::ResidencyNotPermitted,
            &format!("this route is not offered in region `{name}`"),
        ));
    }
    let backend =
        choose_backend(cfg, home, input.services.health, || spread(scope)).map_err(refuse)?;
    let Some(region) = cfg.regions.get(backend.region.0) else {
        return Err(input.refuse(Reason::ResidencyUnavailable, "backend region vanished"));
    };
    cx.audit.region = Some(region.name.clone());
    cx.audit.backend = region.backends.get(backend.index).map(|b| b.url.clone());
    Ok((backend, region))
}

/// Which of several healthy backends gets the request: random (the runtime's random
/// source; drawn only when there is a choice, so one-backend regions cost no draw).
/// Not the request id: that is the client's own `x-request-id` when it sends one (a client
/// could aim all its requests at one backend) and `-` on runtimes that assign none, which
/// sent every request of a bundle or a Worker to the same backend. Without a random source
/// (offline decisions, tests) the request id's hash still spreads them.
fn spread(scope: &Scope<'_>) -> u64 {
    let input = &scope.input;
    let mut bytes = [0u8; 8];
    match input.io.fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => fnv1a(input.req.request_id),
    }
}
