//! The `session_anomaly` check's inputs and what it does beyond its score, for the `risk`
//! phase ([`super::risk`]): whose client a request is compared with — a browser session's
//! sign-in (sealed in the session), or the first request a DPoP-bound app key made (kept in
//! the shared state) — and with its recent uses (impossible travel, concurrent use,
//! [`crate::recent_uses`]); anomalies counted per user across channels, and ending a
//! provider session from the app channel.

use std::time::Duration;

use super::{Ctx, Scope, Step};
use crate::bot::Signal;
use crate::claims::VerifiedIdentity;
use crate::client_signals::ClientSignals;
use crate::config::{AnomalyWeights, BotCheck, FailPolicy, RouteRisk};
use crate::decision::Response;
use crate::reason::Reason;
use crate::recent_uses::{HISTORY_TTL, RecentUses, UseFinding};

/// How long the first request of a DPoP key stays its app's baseline.
const APP_BASELINE_TTL: Duration = Duration::from_secs(24 * 3600);
/// The window in which a user's anomalies (any channel) add up.
const REPEAT_WINDOW: Duration = Duration::from_secs(3600);

/// This request's client and what it is compared with (`None`: nothing to compare).
pub(super) struct Baseline {
    /// What this request shows.
    pub now: ClientSignals,
    /// The sign-in's, or the app key's first request's.
    pub then: Option<ClientSignals>,
    /// What the recent uses show (impossible travel, concurrent use).
    pub uses: Vec<UseFinding>,
}

/// The comparison for this request: `None` when the route does not run `session_anomaly`,
/// or the caller is neither a browser session nor a DPoP-bound token. A DPoP key seen for
/// the first time records this request as its app's baseline; every request is compared
/// with the session's (or key's) recent uses and recorded among them.
pub(super) fn baseline(
    scope: &Scope<'_>,
    cx: &Ctx,
    risk: &RouteRisk,
    weights: Option<&AnomalyWeights>,
) -> Step<Option<Baseline>> {
    if !risk.checks.contains(&BotCheck::SessionAnomaly) {
        return Ok(None);
    }
    let input = &scope.input;
    let now = ClientSignals::observe(&scope.client, input.req.headers);
    let unavailable = |what: &str, e: &dyn std::fmt::Display| -> Step<()> {
        if input.config().state.on_unavailable == FailPolicy::Allow {
            Ok(())
        } else {
            Err(input.refuse(Reason::StateUnavailable, &format!("{what}: {e}")))
        }
    };
    let (then, uses_key, signed_in) = if let Some(sid) = &cx.session.sid {
        let signed_in = cx.session.signals.as_ref().zip(cx.session.created);
        (
            cx.session.signals.clone(),
            format!("uses/s/{sid}"),
            signed_in,
        )
    } else {
        let Some(key) = cx.identity.as_ref().and_then(|id| app_key(scope, id)) else {
            return Ok(None);
        };
        let then = match input.io.get(&key) {
            Ok(Some(stored)) => serde_json::from_slice(&stored).ok(),
            Ok(None) => {
                // This key's first request: the app's client from now on. (Not storable:
                // this request is compared with itself.)
                if let Ok(json) = serde_json::to_vec(&now) {
                    let _ = input.io.set(&key, &json, APP_BASELINE_TTL);
                }
                Some(now.clone())
            }
            Err(e) => {
                unavailable("the app's client cannot be compared", &e)?;
                None
            }
        };
        (then, format!("uses/{key}"), None)
    };
    let uses = match weights {
        Some(w) => recent_uses(scope, w, &now, &uses_key, signed_in, &unavailable)?,
        None => Vec::new(),
    };
    Ok(Some(Baseline { now, then, uses }))
}

/// What the recent uses under `key` show about `now`, recording it among them. A session
/// without a history starts from its sign-in (`signed_in`: its signals and time). Costs
/// one state read, and a write when the client moved (or a while after the last one); not
/// looked up at all when both use rules weigh 0.
fn recent_uses(
    scope: &Scope<'_>,
    w: &AnomalyWeights,
    now: &ClientSignals,
    key: &str,
    signed_in: Option<(&ClientSignals, u64)>,
    unavailable: &dyn Fn(&str, &dyn std::fmt::Display) -> Step<()>,
) -> Step<Vec<UseFinding>> {
    let input = &scope.input;
    if (w.travel == 0 && w.concurrent == 0) || now.network.is_none() {
        return Ok(Vec::new());
    }
    let mut history = match input.io.get(key) {
        Ok(stored) => stored
            .as_deref()
            .and_then(RecentUses::from_stored)
            .or_else(|| signed_in.map(|(s, at)| RecentUses::signed_in(s, at)))
            .unwrap_or_default(),
        Err(e) => {
            unavailable("the recent uses cannot be compared", &e)?;
            return Ok(Vec::new());
        }
    };
    let at = input.now.unix_secs();
    let found = history.assess(now, at, w);
    if history.record(now, at) {
        let _ = input.io.set(key, &history.to_stored(), HISTORY_TTL);
    }
    Ok(found)
}

/// The shared-state key of a DPoP-bound token's app: its issuer and key thumbprint.
fn app_key(scope: &Scope<'_>, id: &VerifiedIdentity) -> Option<String> {
    let jkt = id.claims.get("cnf")?.get("jkt")?.as_str()?;
    let issuer = scope.input.config().issuers.get(id.issuer.0)?;
    Some(format!(
        "appclient/{}",
        crate::audit::pseudonymize(&scope.input.config().audit.subject_key, &issuer.issuer, jkt)
    ))
}

/// A user's anomalies add up across channels (browser sessions and apps): this request's
/// `session_anomaly` signal, when it found something, gains `repeated` × the anomalies the
/// same user had within the last hour (label `repeated:N`), and counts itself. Best effort:
/// an unreachable state leaves the signal as it was.
pub(super) fn count_per_user(
    scope: &Scope<'_>,
    cx: &Ctx,
    weights: &AnomalyWeights,
    signals: &mut [Signal],
) {
    let Some(signal) = signals
        .iter_mut()
        .find(|s| s.check == BotCheck::SessionAnomaly && s.score > 0)
    else {
        return;
    };
    let Some(subject) = &cx.audit.subject else {
        return;
    };
    let io = scope.input.io;
    let key = format!("anomalies/{subject}");
    let Ok(stored) = io.get(&key) else {
        return;
    };
    let before: u32 = stored
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let _ = io.set(&key, (before + 1).to_string().as_bytes(), REPEAT_WINDOW);
    if before == 0 || weights.repeated == 0 {
        return;
    }
    let extra = u32::from(weights.repeated).saturating_mul(before);
    signal.score = u8::try_from((u32::from(signal.score) + extra).min(100)).unwrap_or(100);
    signal.labels.push(format!("repeated:{before}"));
    signal.reason.push_str(&format!(
        "; {before} other anomalies of this user within the hour"
    ));
}

/// `revoke` reached by an app's token: the provider session it names ends (for every
/// session-bound token of it, and the browser session signed in through it) and the token
/// is refused. `None` when the token names no session of a `session_bound_tokens` issuer.
pub(super) fn revoke_token(
    scope: &Scope<'_>,
    id: &VerifiedIdentity,
    detail: &str,
) -> Option<Response> {
    let input = &scope.input;
    let cfg = input.config();
    let issuer = cfg.issuers.get(id.issuer.0)?;
    let op_sid = id.claims.get("sid")?.as_str()?;
    if !issuer.session_bound_tokens {
        return None;
    }
    let iss = id
        .claims
        .get("iss")
        .and_then(serde_json::Value::as_str)
        .unwrap_or(&issuer.issuer);
    let ended = crate::login::end_provider_session(cfg, input.io, id.issuer, Some(iss), op_sid)
        .and_then(|()| crate::login::end_browser_session_of(input.io, iss, op_sid));
    let detail = match ended {
        Ok(_) => format!("{detail}; the provider session of this token was ended"),
        Err(e) => format!("{detail}; the provider session could not be ended ({e})"),
    };
    Some(input.refuse(Reason::TokenInactive, &detail))
}
