//! Risk combination (the `risk` phase, [`crate::phase::risk`]): a route's plugins assess the request and their scores combine, with the
//! route's built-in bot signals ([`crate::bot`]), into one action through the route's
//! thresholds. Running the plugins is the adapter's job (behind [`RiskAssessor`]); what
//! their answers mean is decided here, the same on every runtime.

use crate::bot::Signal;
use crate::config::{Combine, Config, FailPolicy, RouteRisk};
pub use crate::model::{Action, Contribution, RiskVerdict};

pub use crate::ports::risk::{
    Assessment, NoPlugins, PluginAnswer, RiskAssessor, RiskContext, RiskIdentity, RiskSession,
    RiskSignals,
};

/// Combines `answers` (one per plugin of `risk`, in order) under the route's rules; the
/// same as [`combine_with`] without bot signals.
pub fn combine(cfg: &Config, risk: &RouteRisk, answers: Vec<PluginAnswer>) -> RiskVerdict {
    combine_with(cfg, risk, Vec::new(), answers)
}

/// Combines the route's built-in bot `signals` (from [`crate::bot::evaluate`] on
/// `risk.checks`) and plugin `answers` (one per plugin of `risk`, in order) under the
/// route's rules. Each signal counts exactly like a plugin that answered with its score:
/// in `max`, and with weight 1.0 in `weighted`, against the same thresholds. A signal
/// suggests no action of its own (`allow`), and is listed as `bot.<check>` before the
/// plugins.
pub fn combine_with(
    cfg: &Config,
    risk: &RouteRisk,
    signals: Vec<Signal>,
    answers: Vec<PluginAnswer>,
) -> RiskVerdict {
    let mut verdict = RiskVerdict::default();
    let mut sum = 0.0f64;
    let mut suggested = Action::Allow;
    for s in signals {
        let score = s.score.min(100);
        if risk.combine == Combine::Max {
            verdict.score = verdict.score.max(score);
        }
        sum += f64::from(score);
        verdict.plugins.push(Contribution {
            plugin: format!("bot.{}", s.check.name()),
            score: Some(score),
            action: Some(Action::Allow),
            labels: s.labels,
            reason: s.reason,
            error: None,
        });
    }
    let mut answers = answers.into_iter();
    for id in &risk.plugins {
        let Some(plugin) = cfg.plugins.get(id.0) else {
            continue;
        };
        let answer = answers
            .next()
            .unwrap_or_else(|| Err("no answer from the plugin runtime".to_owned()))
            .and_then(|a| {
                if a.score > 100 {
                    Err(format!("malformed answer: score {} > 100", a.score))
                } else {
                    Ok(a)
                }
            });
        match answer {
            Ok(a) => {
                verdict.score = match risk.combine {
                    Combine::Max => verdict.score.max(a.score),
                    Combine::WeightedSum => verdict.score,
                };
                sum += f64::from(a.score) * plugin.weight;
                suggested = suggested.max(a.action);
                verdict.plugins.push(Contribution {
                    plugin: plugin.name.clone(),
                    score: Some(a.score),
                    action: Some(a.action),
                    labels: a.labels,
                    reason: a.reason,
                    error: None,
                });
            }
            Err(e) => {
                if plugin.on_error == FailPolicy::Deny && verdict.failed.is_none() {
                    verdict.failed = Some(format!("risk plugin `{}` failed: {e}", plugin.name));
                }
                verdict.plugins.push(Contribution {
                    plugin: plugin.name.clone(),
                    score: None,
                    action: None,
                    labels: Vec::new(),
                    reason: String::new(),
                    error: Some(e),
                });
            }
        }
    }
    if risk.combine == Combine::WeightedSum {
        verdict.score = sum.clamp(0.0, 100.0).round() as u8;
    }
    let by_threshold = [
        (risk.deny, Action::Deny),
        (risk.challenge, Action::Challenge),
        (risk.step_up, Action::StepUp),
    ]
    .into_iter()
    .find_map(|(t, action)| t.filter(|t| verdict.score >= *t).map(|_| action))
    .unwrap_or(Action::Allow);
    verdict.action = if risk.plugin_actions {
        by_threshold.max(suggested)
    } else {
        by_threshold
    };
    if verdict.failed.is_some() {
        verdict.action = Action::Deny;
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BotCheck, PluginConfig, PluginId};
    use std::time::Duration;

    fn config(policies: &[(f64, FailPolicy)]) -> Config {
        let mut cfg = crate::config::load(
            r#"
[[issuer]]
name = "t"
issuer = "https://t"
audiences = ["a"]
algorithms = ["HS256"]
hmac_secret_file = "k"
[region.eu]
jurisdiction = "EU"
backends = ["http://127.0.0.1:1"]
[residency]
claim = "region"
missing = "eu"
anonymous = "eu"
[[route]]
path = "/"
[audit]
subject_key_file = "k"
"#,
            "t.toml",
            &crate::MapFiles::default().with("k", "abcd".repeat(16)),
        )
        .unwrap();
        cfg.plugins = policies
            .iter()
            .enumerate()
            .map(|(i, (weight, on_error))| PluginConfig {
                name: format!("p{i}"),
                path: String::new(),
                on_error: *on_error,
                deadline: Duration::from_millis(5),
                memory_bytes: 1 << 20,
                fuel: None,
                weight: *weight,
                headers: Vec::new(),
                config_json: "{}".into(),
                component_sha256: None,
            })
            .collect();
        cfg
    }

    fn route(n: usize, combine: Combine) -> RouteRisk {
        RouteRisk {
            plugins: (0..n).map(PluginId).collect(),
            combine,
            step_up: Some(40),
            challenge: Some(60),
            deny: Some(90),
            revoke: None,
            step_up_acr: vec!["mfa".into()],
            plugin_actions: true,
            checks: Vec::new(),
            anomaly: None,
        }
    }

    fn scored(score: u8) -> PluginAnswer {
        Ok(Assessment {
            score,
            reason: format!("scored {score}"),
            ..Assessment::default()
        })
    }

    #[test]
    fn max_combination_picks_the_threshold_action() {
        let cfg = config(&[(1.0, FailPolicy::Deny), (1.0, FailPolicy::Deny)]);
        let r = route(2, Combine::Max);
        let v = combine(&cfg, &r, vec![scored(10), scored(65)]);
        assert_eq!((v.score, v.action), (65, Action::Challenge));
        assert!(v.detail().contains("p1"), "{}", v.detail());
        let v = combine(&cfg, &r, vec![scored(10), scored(39)]);
        assert_eq!(v.action, Action::Allow);
        let v = combine(&cfg, &r, vec![scored(90), scored(0)]);
        assert_eq!(v.action, Action::Deny);
    }

    #[test]
    fn weighted_sum_is_capped_and_weights_count() {
        let cfg = config(&[(0.5, FailPolicy::Deny), (2.0, FailPolicy::Deny)]);
        let r = route(2, Combine::WeightedSum);
        let v = combine(&cfg, &r, vec![scored(40), scored(20)]);
        assert_eq!(v.score, 60);
        let v = combine(&cfg, &r, vec![scored(100), scored(100)]);
        assert_eq!(v.score, 100);
    }

    #[test]
    fn suggested_actions_count_unless_disabled() {
        let cfg = config(&[(1.0, FailPolicy::Deny)]);
        let mut r = route(1, Combine::Max);
        let deny = Ok(Assessment {
            score: 5,
            action: Action::Deny,
            ..Assessment::default()
        });
        assert_eq!(combine(&cfg, &r, vec![deny.clone()]).action, Action::Deny);
        r.plugin_actions = false;
        assert_eq!(combine(&cfg, &r, vec![deny]).action, Action::Allow);
    }

    fn signal(check: BotCheck, score: u8) -> Signal {
        Signal {
            check,
            score,
            labels: vec![format!("l{score}")],
            reason: format!("signal {score}"),
        }
    }

    #[test]
    fn bot_signals_count_like_plugins_and_come_first() {
        let cfg = config(&[(1.0, FailPolicy::Deny)]);
        let r = route(1, Combine::Max);
        let v = combine_with(
            &cfg,
            &r,
            vec![
                signal(BotCheck::Automation, 80),
                signal(BotCheck::IpLists, 0),
            ],
            vec![scored(10)],
        );
        assert_eq!((v.score, v.action), (80, Action::Challenge));
        let names: Vec<&str> = v.plugins.iter().map(|c| c.plugin.as_str()).collect();
        assert_eq!(names, ["bot.automation", "bot.ip_lists", "p0"]);
        assert_eq!(v.plugins[0].action, Some(Action::Allow));
        assert_eq!(v.plugins[0].labels, ["l80"]);
        assert!(v.detail().contains("bot.automation"), "{}", v.detail());
        // Weighted: each signal with weight 1.0, beside the plugin's own weight.
        let cfg = config(&[(0.5, FailPolicy::Deny)]);
        let r = route(1, Combine::WeightedSum);
        let v = combine_with(
            &cfg,
            &r,
            vec![
                signal(BotCheck::BrowserHeaders, 20),
                signal(BotCheck::Automation, 25),
            ],
            vec![scored(40)],
        );
        assert_eq!((v.score, v.action), (65, Action::Challenge));
        let v = combine_with(
            &cfg,
            &r,
            vec![
                signal(BotCheck::BrowserHeaders, 90),
                signal(BotCheck::Automation, 80),
            ],
            vec![scored(0)],
        );
        assert_eq!((v.score, v.action), (100, Action::Deny));
    }

    #[test]
    fn checks_without_plugins_decide_alone() {
        let cfg = config(&[]);
        let mut r = route(0, Combine::Max);
        r.checks = vec![BotCheck::VerifiedBots];
        let v = combine_with(
            &cfg,
            &r,
            vec![signal(BotCheck::VerifiedBots, 100)],
            Vec::new(),
        );
        assert_eq!((v.score, v.action, v.failed), (100, Action::Deny, None));
        let v = combine_with(
            &cfg,
            &r,
            vec![signal(BotCheck::VerifiedBots, 0)],
            Vec::new(),
        );
        assert_eq!((v.score, v.action), (0, Action::Allow));
        // Signals suggest nothing, so thresholds alone decide even with plugin_actions.
        r.deny = None;
        r.challenge = None;
        r.step_up = None;
        let v = combine_with(
            &cfg,
            &r,
            vec![signal(BotCheck::Automation, 100)],
            Vec::new(),
        );
        assert_eq!(v.action, Action::Allow);
        // The plain combine has no signals.
        assert!(combine(&cfg, &r, Vec::new()).plugins.is_empty());
    }

    #[test]
    fn a_failing_plugin_still_denies_beside_signals() {
        let cfg = config(&[(1.0, FailPolicy::Deny)]);
        let r = route(1, Combine::Max);
        let v = combine_with(
            &cfg,
            &r,
            vec![signal(BotCheck::Automation, 0)],
            vec![Err("trap".into())],
        );
        assert_eq!(v.action, Action::Deny);
        assert_eq!(v.plugins.len(), 2);
        assert!(v.failed.unwrap().contains("p0"));
    }

    #[test]
    fn failures_follow_each_plugins_policy() {
        let cfg = config(&[(1.0, FailPolicy::Allow), (1.0, FailPolicy::Deny)]);
        let r = route(2, Combine::Max);
        let v = combine(&cfg, &r, vec![Err("trap".into()), scored(0)]);
        assert_eq!(v.action, Action::Allow);
        assert_eq!(v.plugins[0].error.as_deref(), Some("trap"));
        let v = combine(&cfg, &r, vec![scored(0), Err("deadline".into())]);
        assert_eq!(v.action, Action::Deny);
        assert!(v.failed.unwrap().contains("p1"));
        // A missing answer and an out-of-range score are failures too.
        let v = combine(&cfg, &r, vec![scored(0)]);
        assert!(v.failed.is_some());
        let v = combine(&cfg, &r, vec![scored(0), scored(101)]);
        assert!(v.failed.unwrap().contains("malformed"));
    }
}
