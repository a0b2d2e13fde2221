//! The risk-plugin records, copied between the types that hold them. The core's
//! [`RiskContext`](portcullis_core::risk::RiskContext), the WIT `request-context` of
//! `portcullis:gateway/risk` and of `portcullis:plugin/risk` (as each runtime's bindings
//! generate it) and the plugin SDK's context have the same fields under the same names, so
//! one copy written as a macro serves every pair; each runtime names only the fields one
//! side lacks (the plugin's view adds the client's address, country and ASN) and which
//! headers it passes.

/// Builds the request-context record `$Target` (with identity record `$Identity`, session
/// record `$Session` and its sign-in's client-signals record `$Signals`) from `$from`, a
/// reference to any record of the same shape: the request's id, route, method, path,
/// query, host, verified identity and session are cloned; the remaining fields (at least
/// `headers`) are given as `name: value` after the `;`.
#[macro_export]
macro_rules! risk_context {
    ($from:expr => $($Target:ident)::+, $($Identity:ident)::+, $($Session:ident)::+, $($Signals:ident)::+; $($field:ident : $value:expr),* $(,)?) => {{
        let from = $from;
        $($Target)::+ {
            request_id: from.request_id.clone(),
            route: from.route.clone(),
            method: from.method.clone(),
            path: from.path.clone(),
            query: from.query.clone(),
            host: from.host.clone(),
            identity: from.identity.as_ref().map(|i| $($Identity)::+ {
                subject: i.subject.clone(),
                issuer: i.issuer.clone(),
                scopes: i.scopes.clone(),
                acr: i.acr.clone(),
                amr: i.amr.clone(),
                actor: i.actor.clone(),
                session_id: i.session_id.clone(),
                client_id: i.client_id.clone(),
            }),
            session: from.session.as_ref().map(|s| $($Session)::+ {
                id: s.id.clone(),
                provider_session: s.provider_session.clone(),
                browser: s.browser,
                age_secs: s.age_secs,
                sign_in: s.sign_in.as_ref().map(|c| $($Signals)::+ {
                    network: c.network.clone(),
                    asn: c.asn,
                    country: c.country.clone(),
                    agent: c.agent.clone(),
                    platform: c.platform.clone(),
                }),
            }),
            $($field: $value,)*
        }
    }};
}

/// Maps a plugin action between two enums of the WIT `action` (`allow`, `step-up`,
/// `challenge`, `deny`): `risk_action!(a, from::Action => to::Action)`.
#[macro_export]
macro_rules! risk_action {
    ($a:expr, $($from:ident)::+ => $($to:ident)::+) => {
        match $a {
            $($from)::+::Allow => $($to)::+::Allow,
            $($from)::+::StepUp => $($to)::+::StepUp,
            $($from)::+::Challenge => $($to)::+::Challenge,
            $($from)::+::Deny => $($to)::+::Deny,
        }
    };
}

/// Moves an assessment (score, labels, action, reason) into the assessment record
/// `$Target`, mapping its action: `risk_assessment!(a => Target, from::Action =>
/// to::Action)`.
#[macro_export]
macro_rules! risk_assessment {
    ($a:expr => $($Target:ident)::+, $($from:ident)::+ => $($to:ident)::+) => {{
        let a = $a;
        $($Target)::+ {
            score: a.score,
            labels: a.labels,
            action: $crate::risk_action!(a.action, $($from)::+ => $($to)::+),
            reason: a.reason,
        }
    }};
}

/// Runs plugins `$plugins` (`&[PluginId]`) in order on `$ctx` (`&RiskContext`) through an
/// imported `portcullis:gateway/risk`, `$risk` the module its bindings generated (e.g.
/// `bindings::portcullis::gateway::risk`): the context goes as the interface's record (the
/// plugins see the client as the gateway resolved it), each answer comes back as the core's
/// (`Vec<PluginAnswer>`). The wasm gateways that import the risk chain share it: the
/// gateway component (its host runs the plugins) and an edge bundle's gateway (the plugins
/// linked into the bundle).
#[macro_export]
macro_rules! assess_through {
    ($($risk:ident)::+, $plugins:expr, $ctx:expr) => {{
        let ctx: &::portcullis_core::risk::RiskContext = $ctx;
        let ids: Vec<u32> = $plugins
            .iter()
            .map(|p: &::portcullis_core::config::PluginId| u32::try_from(p.0).unwrap_or(u32::MAX))
            .collect();
        let wit_ctx = $crate::risk_context!(ctx => $($risk)::+::RequestContext, $($risk)::+::Identity, $($risk)::+::Session, $($risk)::+::ClientSignals;
            headers: ctx.headers.clone(),
            client_ip: ctx.client.ip.map(|ip| ip.to_string()),
            country: ctx.client.country.clone(),
            asn: ctx.client.asn,
        );
        $($risk)::+::assess(&ids, &wit_ctx)
            .into_iter()
            .map(|answer| {
                answer.map(|a| {
                    $crate::risk_assessment!(a => portcullis_core::risk::Assessment, $($risk)::+::Action => portcullis_core::risk::Action)
                })
            })
            .collect::<Vec<::portcullis_core::risk::PluginAnswer>>()
    }};
}
