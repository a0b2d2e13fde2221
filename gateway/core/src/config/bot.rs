//! The bot sections: `[bot]` (`automation_agents`, `[[bot.list]]`, `[[bot.verified]]`) and a
//! route's `[route.risk] checks`.

use toml::de::DeValue;

use super::model::*;
use super::reader::{Diags, Span, Table, closest};

pub(super) fn read_bot(top: &mut Table<'_, '_>, d: &mut Diags<'_>) -> BotConfig {
    let mut bot = BotConfig::default();
    let Some(mut t) = top.table(d, "bot") else {
        return bot;
    };
    for (agent, span) in t
        .strings(d, "automation_agents")
        .map(|l| l.0)
        .unwrap_or_default()
    {
        if agent.trim().is_empty() {
            d.error(
                &span,
                "an empty `bot.automation_agents` entry would match every User-Agent",
                None,
            );
        } else {
            bot.automation_agents.push(agent);
        }
    }
    for lt in t.tables(d, "list") {
        if let Some(list) = read_list(lt, d, &bot.lists) {
            bot.lists.push(list);
        }
    }
    for vt in t.tables(d, "verified") {
        if let Some(v) = read_verified(vt, d, &bot.verified) {
            bot.verified.push(v);
        }
    }
    t.finish(d);
    bot
}

/// A list or verified-bot name: required, label-safe and unique among `taken`.
fn read_name(
    t: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    hint: &str,
    taken: impl Iterator<Item = String>,
) -> Option<String> {
    let (name, span) = t.req_string(d, "name", Some(hint))?;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        d.error(
            &span,
            format!(
                "`{}.name` `{name}` must be lowercase letters, digits, `-` or `_`",
                t.name
            ),
            None,
        );
        return None;
    }
    let mut taken = taken;
    if taken.any(|n| n == name) {
        d.error(
            &span,
            format!("`{}`: the name `{name}` is already used", t.name),
            Some("names must be unique: they label the signals in audit records".into()),
        );
        return None;
    }
    Some(name)
}

fn read_cidrs(t: &mut Table<'_, '_>, d: &mut Diags<'_>) -> Option<(Vec<IpNet>, Span)> {
    let (list, span) = t.strings(d, "cidrs")?;
    let mut out = Vec::with_capacity(list.len());
    for (text, span) in list {
        match IpNet::parse(&text) {
            Ok(n) => out.push(n),
            Err(e) => d.error(&span, e, None),
        }
    }
    Some((out, span))
}

fn read_asns(t: &mut Table<'_, '_>, d: &mut Diags<'_>) -> Vec<u32> {
    let name = format!("{}.asns", t.name);
    let Some(v) = t.get("asns") else {
        return Vec::new();
    };
    let DeValue::Array(items) = v.get_ref() else {
        d.error(
            &v.span(),
            format!(
                "`{name}` must be an array of AS numbers, found {}",
                v.get_ref().type_str()
            ),
            Some("e.g. asns = [64496, 64511]".into()),
        );
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let n = match item.get_ref() {
            DeValue::Integer(i) => {
                i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            _ => None,
        };
        match n.and_then(|n| u32::try_from(n).ok()) {
            Some(asn) => out.push(asn),
            None => d.error(
                &item.span(),
                format!("`{name}` must hold AS numbers (integers in 0..=4294967295)"),
                Some("write 64496, not \"AS64496\"".into()),
            ),
        }
    }
    out
}

fn read_list(mut t: Table<'_, '_>, d: &mut Diags<'_>, seen: &[BotList]) -> Option<BotList> {
    let name = read_name(
        &mut t,
        d,
        "the list's name, used in `list:NAME` labels, e.g. name = \"tor-exits\"",
        seen.iter().map(|l| l.name.clone()),
    );
    let cidrs = read_cidrs(&mut t, d).map(|c| c.0).unwrap_or_default();
    let asns = read_asns(&mut t, d);
    let score = match t.integer(d, "score") {
        None => {
            t.missing(
                d,
                "score",
                Some(
                    "the ip_lists score of a client on this list, 0..=100, e.g. score = 80".into(),
                ),
            );
            None
        }
        Some((n, span)) => match u8::try_from(n) {
            Ok(n) if n <= 100 => Some(n),
            _ => {
                d.error(
                    &span,
                    format!("`{}.score` = {n} is outside 0..=100", t.name),
                    None,
                );
                None
            }
        },
    };
    let span = t.span.clone();
    let table = t.name.clone();
    t.finish(d);
    if cidrs.is_empty() && asns.is_empty() {
        d.error(
            &span,
            format!("`{table}` lists no networks and no ASNs: it could never match"),
            Some("add cidrs = [\"198.51.100.0/24\"] and/or asns = [64496]".into()),
        );
        return None;
    }
    Some(BotList {
        name: name?,
        cidrs,
        asns,
        score: score?,
    })
}

fn read_verified(
    mut t: Table<'_, '_>,
    d: &mut Diags<'_>,
    seen: &[VerifiedBot],
) -> Option<VerifiedBot> {
    let name = read_name(
        &mut t,
        d,
        "the bot's name, used in `verified:NAME` labels, e.g. name = \"googlebot\"",
        seen.iter().map(|v| v.name.clone()),
    );
    let user_agent = t
        .req_string(
            d,
            "user_agent",
            Some("the User-Agent substring the bot sends, e.g. user_agent = \"Googlebot\""),
        )
        .and_then(|(ua, span)| {
            if ua.trim().is_empty() {
                d.error(
                    &span,
                    format!(
                        "`{}.user_agent` is empty: every client would claim to be this bot",
                        t.name
                    ),
                    None,
                );
                None
            } else {
                Some(ua)
            }
        });
    let cidrs = match read_cidrs(&mut t, d) {
        Some((c, span)) if c.is_empty() => {
            d.error(
                &span,
                format!(
                    "`{}.cidrs` is empty: the bot could never be verified",
                    t.name
                ),
                Some("list the networks the bot's operator publishes".into()),
            );
            None
        }
        Some((c, _)) => Some(c),
        None => {
            t.missing(
                d,
                "cidrs",
                Some("the networks the bot crawls from, e.g. cidrs = [\"66.249.64.0/19\"]".into()),
            );
            None
        }
    };
    t.finish(d);
    Some(VerifiedBot {
        name: name?,
        user_agent: user_agent?,
        cidrs: cidrs?,
    })
}

/// `[route.risk] checks`: known names, each once, with the data they need configured.
pub(super) fn read_checks(
    t: &mut Table<'_, '_>,
    d: &mut Diags<'_>,
    bot: &BotConfig,
) -> Vec<BotCheck> {
    let mut checks = Vec::new();
    for (name, span) in t.strings(d, "checks").map(|l| l.0).unwrap_or_default() {
        let Some(check) = BotCheck::from_name(&name) else {
            let names: Vec<&str> = BotCheck::ALL.iter().map(|c| c.name()).collect();
            let valid = format!("valid checks: {}", names.join(", "));
            let hint = match closest(&name, &names) {
                Some(c) => format!("did you mean `{c}`? ({valid})"),
                None => valid,
            };
            d.error(&span, format!("unknown bot check `{name}`"), Some(hint));
            continue;
        };
        if checks.contains(&check) {
            d.error(&span, format!("check `{name}` is listed twice"), None);
            continue;
        }
        match check {
            BotCheck::IpLists if bot.lists.is_empty() => d.error(
                &span,
                "check `ip_lists` needs at least one [[bot.list]]",
                Some("declare [[bot.list]] with name, cidrs and/or asns, and score".into()),
            ),
            BotCheck::VerifiedBots if bot.verified.is_empty() => d.error(
                &span,
                "check `verified_bots` needs at least one [[bot.verified]]",
                Some("declare [[bot.verified]] with name, user_agent and cidrs".into()),
            ),
            _ => {}
        }
        checks.push(check);
    }
    checks
}

#[cfg(test)]
mod tests {
    use crate::config::{BotCheck, Config, ConfigError, load};

    const BASE: &str = r#"
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
[audit]
subject_key_file = "k"
"#;

    fn try_load(extra: &str) -> Result<Config, ConfigError> {
        load(
            &format!("{BASE}{extra}"),
            "t.toml",
            &crate::MapFiles::default().with("k", "abcd".repeat(16)),
        )
    }

    /// The diagnostics as "message | hint" lines.
    fn errors(extra: &str) -> Vec<String> {
        match try_load(extra) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .diagnostics
                .into_iter()
                .map(|d| format!("{} | {}", d.message, d.hint.unwrap_or_default()))
                .collect(),
        }
    }

    fn assert_error(extra: &str, needle: &str) {
        let errs = errors(extra);
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "expected an error containing {needle:?}, got {errs:#?}"
        );
    }

    const FULL: &str = r#"
[bot]
automation_agents = ["MyScraper"]
[[bot.list]]
name = "tor-exits"
cidrs = ["198.51.100.0/24", "2001:db8:dead::/48"]
asns = [64496]
score = 80
[[bot.list]]
name = "hosting"
asns = [64511]
score = 30
[[bot.verified]]
name = "googlebot"
user_agent = "Googlebot"
cidrs = ["66.249.64.0/19"]
[[route]]
path = "/"
auth = "public"
[route.risk]
checks = ["browser_headers", "automation", "ip_lists", "verified_bots"]
challenge = 60
"#;

    #[test]
    fn bot_section_and_route_checks_load_and_survive_a_snapshot() {
        let cfg = try_load(FULL).unwrap();
        assert_eq!(cfg.bot.automation_agents, ["MyScraper"]);
        assert_eq!(cfg.bot.lists.len(), 2);
        let tor = &cfg.bot.lists[0];
        assert_eq!((tor.name.as_str(), tor.score), ("tor-exits", 80));
        assert_eq!(tor.cidrs.len(), 2);
        assert_eq!(tor.asns, [64496]);
        assert_eq!(cfg.bot.verified[0].user_agent, "Googlebot");
        let risk = cfg.routes[0].risk.as_ref().unwrap();
        assert_eq!(risk.checks, BotCheck::ALL[..4]);
        assert!(
            risk.plugins.is_empty(),
            "checks alone make a valid risk phase"
        );
        let back = Config::from_snapshot(&cfg.to_snapshot()).unwrap();
        assert_eq!(back.bot, cfg.bot);
        assert_eq!(back.routes[0].risk, cfg.routes[0].risk);
    }

    #[test]
    fn a_config_without_bot_section_has_empty_bot_data() {
        let cfg = try_load("[[route]]\npath = \"/\"\n").unwrap();
        assert_eq!(cfg.bot, Default::default());
    }

    #[test]
    fn unknown_check_names_list_the_valid_ones() {
        let route = "[[route]]\npath = \"/\"\n[route.risk]\nchecks = [\"browser_header\"]\n";
        assert_error(route, "unknown bot check `browser_header`");
        assert_error(route, "did you mean `browser_headers`?");
        let route = "[[route]]\npath = \"/\"\n[route.risk]\nchecks = [\"captcha\"]\n";
        assert_error(
            route,
            "valid checks: browser_headers, automation, ip_lists, verified_bots",
        );
    }

    #[test]
    fn checks_needing_data_refuse_an_empty_bot_section() {
        assert_error(
            "[[route]]\npath = \"/\"\n[route.risk]\nchecks = [\"ip_lists\"]\n",
            "check `ip_lists` needs at least one [[bot.list]]",
        );
        assert_error(
            "[[route]]\npath = \"/\"\n[route.risk]\nchecks = [\"verified_bots\"]\n",
            "check `verified_bots` needs at least one [[bot.verified]]",
        );
        assert_error(
            "[[route]]\npath = \"/\"\n[route.risk]\nchecks = [\"automation\", \"automation\"]\n",
            "check `automation` is listed twice",
        );
    }

    #[test]
    fn a_risk_table_needs_plugins_or_checks() {
        assert_error(
            "[[route]]\npath = \"/\"\n[route.risk]\nchallenge = 50\n",
            "`risk` lists no plugins and no checks",
        );
        assert_error(
            "[[route]]\npath = \"/\"\n[route.risk]\nchecks = []\n",
            "`risk` lists no plugins and no checks",
        );
    }

    #[test]
    fn unknown_bot_keys_are_errors_with_hints() {
        assert_error(
            "[bot]\nautomation_agent = [\"x\"]\n[[route]]\npath = \"/\"\n",
            "did you mean `automation_agents`?",
        );
        assert_error(
            "[[bot.list]]\nname = \"l\"\ncidr = [\"10.0.0.0/8\"]\nscore = 5\n[[route]]\npath = \"/\"\n",
            "unknown key `bot.list[0].cidr`",
        );
        assert_error(
            "[[bot.verified]]\nname = \"g\"\nuser_agent = \"G\"\ncidrs = [\"10.0.0.0/8\"]\nasns = [1]\n[[route]]\npath = \"/\"\n",
            "unknown key `bot.verified[0].asns`",
        );
        assert_error(
            "[[route]]\npath = \"/\"\n[route.risk]\ncheck = [\"automation\"]\n",
            "did you mean `checks`?",
        );
    }

    #[test]
    fn bad_lists_are_reported() {
        let route = "[[route]]\npath = \"/\"\n";
        assert_error(
            &format!("[[bot.list]]\nname = \"l\"\ncidrs = [\"10.0.0.1/8\"]\nscore = 5\n{route}"),
            "host bits",
        );
        assert_error(
            &format!("[[bot.list]]\nname = \"l\"\nasns = [\"AS64496\"]\nscore = 5\n{route}"),
            "must hold AS numbers",
        );
        assert_error(
            &format!("[[bot.list]]\nname = \"l\"\nasns = [-1]\nscore = 5\n{route}"),
            "must hold AS numbers",
        );
        assert_error(
            &format!("[[bot.list]]\nname = \"l\"\nasns = [1]\nscore = 101\n{route}"),
            "`bot.list[0].score` = 101 is outside 0..=100",
        );
        assert_error(
            &format!("[[bot.list]]\nname = \"l\"\nasns = [1]\n{route}"),
            "`bot.list[0].score` is required",
        );
        assert_error(
            &format!("[[bot.list]]\nname = \"l\"\nscore = 5\n{route}"),
            "lists no networks and no ASNs",
        );
        assert_error(
            &format!(
                "[[bot.list]]\nname = \"l\"\nasns = [1]\nscore = 5\n[[bot.list]]\nname = \"l\"\nasns = [2]\nscore = 5\n{route}"
            ),
            "the name `l` is already used",
        );
        assert_error(
            &format!("[[bot.list]]\nname = \"Tor Exits\"\nasns = [1]\nscore = 5\n{route}"),
            "must be lowercase letters",
        );
        assert_error(
            &format!("[bot]\nautomation_agents = [\"\"]\n{route}"),
            "would match every User-Agent",
        );
    }

    #[test]
    fn bad_verified_bots_are_reported() {
        let route = "[[route]]\npath = \"/\"\n";
        assert_error(
            &format!("[[bot.verified]]\nname = \"g\"\nuser_agent = \"G\"\n{route}"),
            "`bot.verified[0].cidrs` is required",
        );
        assert_error(
            &format!("[[bot.verified]]\nname = \"g\"\nuser_agent = \"G\"\ncidrs = []\n{route}"),
            "the bot could never be verified",
        );
        assert_error(
            &format!(
                "[[bot.verified]]\nname = \"g\"\nuser_agent = \"\"\ncidrs = [\"10.0.0.0/8\"]\n{route}"
            ),
            "every client would claim to be this bot",
        );
        assert_error(
            &format!("[[bot.verified]]\nname = \"g\"\ncidrs = [\"10.0.0.0/8\"]\n{route}"),
            "`bot.verified[0].user_agent` is required",
        );
    }
}
