//! The WIT `risk` interface: the gateway component asks the host to run the route's
//! plugins, each sandboxed in a store of its own, and later tells it the outcome for
//! `observe`.

use std::sync::Arc;

use portcullis_core::client::ClientInfo;

use crate::bindings::portcullis::gateway::risk;
use crate::risk::{self as plugins, PluginRuntime};

/// One request's view of the plugin runtime.
pub struct RiskHost {
    /// The plugins.
    pub runtime: Arc<PluginRuntime>,
    /// Who the client is (the plugins see its address, country and ASN).
    pub client: ClientInfo,
    /// The plugins that assessed this request and what they saw, for `observe`.
    pub assessed: Option<Vec<(usize, plugins::RequestContext)>>,
}

impl risk::Host for RiskHost {
    async fn assess(
        &mut self,
        ids: Vec<u32>,
        ctx: risk::RequestContext,
    ) -> Vec<Result<risk::Assessment, String>> {
        let base = plugin_context(ctx, &self.client);
        let ids: Vec<usize> = ids.into_iter().map(|id| id as usize).collect();
        let runs = self.runtime.run(&ids, &base).await;
        let (answers, shown): (Vec<_>, Vec<_>) = runs.into_iter().unzip();
        self.assessed = Some(shown);
        answers
            .into_iter()
            .map(|answer| {
                answer.map(|a| {
                    portcullis_driver::risk_assessment!(a => risk::Assessment, plugins::Action => risk::Action)
                })
            })
            .collect()
    }

    async fn observe(&mut self, status: u16) {
        let Some(shown) = self.assessed.take() else {
            return;
        };
        for (id, ctx) in shown {
            self.runtime.observe(id, &ctx, status).await;
        }
    }
}

/// The plugin's view of a request: the gateway's context plus what the host knows of the
/// client.
fn plugin_context(ctx: risk::RequestContext, client: &ClientInfo) -> plugins::RequestContext {
    portcullis_driver::risk_context!(&ctx => plugins::RequestContext, plugins::Identity, plugins::Session, plugins::ClientSignals;
        headers: ctx.headers.clone(),
        client_ip: client.ip.map(|ip| ip.to_string()),
        country: client.country.clone(),
        asn: client.asn,
    )
}
