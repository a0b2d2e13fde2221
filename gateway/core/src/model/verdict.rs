//! The risk verdict: what the risk phase decided and why, as the audit record carries it.

use serde::Serialize;

/// An action, ordered by severity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Let the request through.
    #[default]
    Allow,
    /// Ask for stronger authentication (RFC 9470).
    StepUp,
    /// Ask the client to prove it is not a bot.
    Challenge,
    /// Refuse.
    Deny,
}

impl Action {
    /// The kebab-case name used in WIT, audit records and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::StepUp => "step-up",
            Action::Challenge => "challenge",
            Action::Deny => "deny",
        }
    }
}

/// One plugin's or built-in check's part in a decision, for the audit record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Contribution {
    /// Plugin name, or `bot.<check>` for a built-in bot check (`bot.automation`, …).
    pub plugin: String,
    /// Score (absent when the plugin failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<u8>,
    /// Suggested action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Labels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Reason or failure detail.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Set when the plugin failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The combined verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RiskVerdict {
    /// Combined score.
    pub score: u8,
    /// The chosen action.
    pub action: Action,
    /// Set when a failing plugin's `on_error = "deny"` refuses the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Every part: built-in bot checks first (`bot.<check>`), then the plugins.
    pub plugins: Vec<Contribution>,
    /// For a challenge: the client's clearance cookie (`valid`, or why it was refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clearance: Option<String>,
}

impl RiskVerdict {
    /// The most relevant reason text: the failure, or the highest-scoring plugin's reason.
    pub fn detail(&self) -> String {
        if let Some(f) = &self.failed {
            return f.clone();
        }
        let top = self
            .plugins
            .iter()
            .filter(|c| c.error.is_none())
            .max_by_key(|c| (c.action, c.score));
        match top {
            Some(c) if !c.reason.is_empty() => {
                format!("risk score {} ({}): {}", self.score, c.plugin, c.reason)
            }
            _ => format!("risk score {}", self.score),
        }
    }
}
