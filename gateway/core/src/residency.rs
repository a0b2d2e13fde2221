//! Data residency (the `residency` phase, [`crate::phase::residency`]): the user's home region and a healthy backend in it. A resident of a
//! region is only ever sent to that region's backends, or to failover regions the
//! configuration validated to share its jurisdiction; otherwise 503, never elsewhere.

use serde_json::Value;

use crate::claims::VerifiedIdentity;
use crate::config::{Config, RegionChoice, RegionId};
use crate::model::{BackendHealth, BackendId};
use crate::reason::Reason;

/// The home region of a caller (`None` identity: anonymous).
pub fn home_region(
    config: &Config,
    identity: Option<&VerifiedIdentity>,
) -> Result<RegionId, (Reason, String)> {
    let Some(id) = identity else {
        return match config.residency.anonymous {
            RegionChoice::Region(r) => Ok(r),
            RegionChoice::Deny => Err((
                Reason::ResidencyMissing,
                "anonymous requests have no home region here".into(),
            )),
        };
    };
    let claim = &config.residency.claim;
    match id.claims.get(claim) {
        None => match config.residency.missing {
            RegionChoice::Region(r) => Ok(r),
            RegionChoice::Deny => Err((
                Reason::ResidencyMissing,
                format!("the token has no `{claim}` claim"),
            )),
        },
        Some(Value::String(name)) => config
            .regions
            .iter()
            .position(|r| r.name == *name)
            .map(RegionId)
            .ok_or_else(|| {
                (
                    Reason::ResidencyUnknown,
                    format!("region {name:?} is not configured"),
                )
            }),
        Some(_) => Err((
            Reason::ResidencyUnknown,
            format!("`{claim}` must be a string"),
        )),
    }
}

/// A healthy backend of `home`, else of its same-jurisdiction failover regions in order.
/// `spread` picks among healthy backends (e.g. random bits); it is asked only when there
/// is more than one to pick from.
pub fn choose_backend(
    config: &Config,
    home: RegionId,
    health: &dyn BackendHealth,
    mut spread: impl FnMut() -> u64,
) -> Result<BackendId, (Reason, String)> {
    let region = config
        .regions
        .get(home.0)
        .ok_or_else(|| (Reason::ResidencyUnavailable, "unknown region".to_owned()))?;
    let candidates = std::iter::once(home).chain(region.failover.iter().copied());
    for rid in candidates {
        let Some(r) = config.regions.get(rid.0) else {
            continue;
        };
        if r.jurisdiction != region.jurisdiction {
            continue; // defence in depth: load() already refuses such failover
        }
        let healthy: Vec<BackendId> = (0..r.backends.len())
            .map(|index| BackendId { region: rid, index })
            .filter(|b| health.is_healthy(*b))
            .collect();
        match healthy.as_slice() {
            [] => {}
            [only] => return Ok(*only),
            _ => {
                let pick = usize::try_from(spread() % healthy.len() as u64).unwrap_or(0);
                if let Some(b) = healthy.get(pick) {
                    return Ok(*b);
                }
            }
        }
    }
    Err((
        Reason::ResidencyUnavailable,
        format!(
            "no healthy backend in region `{}` or its failover",
            region.name
        ),
    ))
}
