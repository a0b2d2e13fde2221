//! Built-in bot signals (used by the `risk` phase, [`crate::phase::risk`]): named checks a route switches on with `[route.risk]
//! checks = [...]`, scored from the request's headers, the client address and its ASN, and
//! combined with the route's plugins by [`crate::risk::combine_with`]. Pure functions: the
//! adapter resolves the client ([`crate::client::client_info`]) and passes what it knows.
//!
//! ```text
//! let signals = bot::evaluate(&cfg.bot, &risk.checks, &BotInput { headers, client_ip, asn });
//! let verdict = risk::combine_with(cfg, risk, signals, answers);
//! ```
//!
//! # Scores
//!
//! Each check gives one [`Signal`] scored 0..=100. `browser_headers` adds the points of every
//! rule that fires (capped at 100); `automation` takes the highest of its rules; `ip_lists`
//! takes the highest configured list score; `verified_bots` is 0 or 100.
//!
//! | check | rule | label | score |
//! |---|---|---|---|
//! | `automation` | User-Agent names an HTTP library or automation tool (built-in list or `[bot] automation_agents`) | `automation:<tool>` | [`AUTOMATION_AGENT`] = 80 |
//! | `automation` | `HeadlessChrome` in the User-Agent, or a `Headless…` brand in `Sec-CH-UA` | `headless` | [`HEADLESS`] = 80 |
//! | `automation` | no User-Agent, or only empty ones | `no-user-agent` | [`NO_USER_AGENT`] = 70 |
//! | `browser_headers` | no `Accept` | `missing:accept` | [`MISSING_ACCEPT`] = 25 |
//! | `browser_headers` | no `Accept-Language` | `missing:accept-language` | [`MISSING_ACCEPT_LANGUAGE`] = 20 |
//! | `browser_headers` | no `Accept-Encoding` | `missing:accept-encoding` | [`MISSING_ACCEPT_ENCODING`] = 20 |
//! | `browser_headers` | Chromium ≥ 80 or Firefox ≥ 90 without all of `Sec-Fetch-Site`/`-Mode`/`-Dest` | `missing:sec-fetch` | [`MISSING_SEC_FETCH`] = 30 |
//! | `browser_headers` | Chromium ≥ 90 (not an Android WebView) without `Sec-CH-UA` | `missing:sec-ch-ua` | [`MISSING_SEC_CH_UA`] = 25 |
//! | `browser_headers` | `Sec-CH-UA` that does not parse as a brand list | `malformed:sec-ch-ua` | [`SEC_CH_UA_MISMATCH`] = 40 |
//! | `browser_headers` | a `Chromium`/`Google Chrome`/`HeadlessChrome` brand whose major version is not the User-Agent's `Chrome/N` | `mismatch:sec-ch-ua-version` | [`SEC_CH_UA_MISMATCH`] = 40 |
//! | `browser_headers` | any `Sec-CH-UA*` header from a Firefox or Safari (WebKit) User-Agent | `unexpected:sec-ch-ua` | [`SEC_CH_UA_MISMATCH`] = 40 |
//! | `browser_headers` | `Sec-CH-UA-Mobile: ?1` with a desktop Chromium User-Agent | `mismatch:sec-ch-ua-mobile` | [`HINT_MISMATCH`] = 30 |
//! | `browser_headers` | `Sec-CH-UA-Platform` naming another OS than the User-Agent | `mismatch:sec-ch-ua-platform` | [`HINT_MISMATCH`] = 30 |
//! | `browser_headers` | (User-Agent claims no browser: only the three `missing:accept*` rules apply) | `non-browser-user-agent` | 0 |
//! | `ip_lists` | client address in a list's `cidrs`, or its ASN in the list's `asns` | `list:NAME` | the highest matching list's `score` |
//! | `verified_bots` | User-Agent contains a verified bot's `user_agent` and the address is in its `cidrs` | `verified:NAME` | [`VERIFIED`] = 0, and every other signal is forced to 0 |
//! | `verified_bots` | User-Agent claims a verified bot, address outside its `cidrs` or unknown | `impersonation:NAME` | [`IMPERSONATION`] = 100 |
//! | `session_anomaly` | a browser session's request from another network (/24, /64), AS, country, browser family or major version, or hinted platform than its sign-in's ([`crate::client_signals`]) | `changed:<what>` | the sum of `[session.anomaly]` weights, at most 100; 0 without a session |
//!
//! # Assumptions
//!
//! - **TLS at the edge.** Browsers send `Sec-Fetch-*` and the `Sec-CH-UA*` client hints only
//!   to secure origins (https, or `localhost`). The gateway is meant to sit behind TLS, so a
//!   browser that omits them is lying about being one. On a plain-http origin the two
//!   `missing:sec-*` rules would flag real Chromium and Firefox: do not switch
//!   `browser_headers` on for such routes.
//! - **Browser-facing routes.** `automation` and `browser_headers` are about browsers; an API
//!   route called by scripts, servers or mobile apps should not switch them on. Mobile-app
//!   HTTP stacks (okhttp, Dart, CFNetwork, Alamofire) are deliberately not in the automation
//!   list: they are how legitimate native apps talk to their backends.
//! - **Headers are untrusted text.** Values that are not UTF-8 are read lossily; repeated
//!   headers are read as one comma-joined list value (a client sending two User-Agents is
//!   matched against both). Nothing here panics on any input.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;

use crate::client_signals::{Change, ClientSignals};
use crate::config::{AnomalyWeights, BotCheck, BotConfig};

/// `automation`: a User-Agent naming an HTTP library or automation tool.
pub const AUTOMATION_AGENT: u8 = 80;
/// `automation`: a headless browser (`HeadlessChrome` User-Agent or `Sec-CH-UA` brand).
pub const HEADLESS: u8 = 80;
/// `automation`: no User-Agent at all (every browser and most libraries send one).
pub const NO_USER_AGENT: u8 = 70;
/// `browser_headers`: no `Accept` (browsers send one on every request).
pub const MISSING_ACCEPT: u8 = 25;
/// `browser_headers`: no `Accept-Language` (browsers send one on every request).
pub const MISSING_ACCEPT_LANGUAGE: u8 = 20;
/// `browser_headers`: no `Accept-Encoding` (browsers send one on every request).
pub const MISSING_ACCEPT_ENCODING: u8 = 20;
/// `browser_headers`: a Chromium ≥ 80 or Firefox ≥ 90 User-Agent without `Sec-Fetch-*`.
pub const MISSING_SEC_FETCH: u8 = 30;
/// `browser_headers`: a Chromium ≥ 90 User-Agent without `Sec-CH-UA`.
pub const MISSING_SEC_CH_UA: u8 = 25;
/// `browser_headers`: `Sec-CH-UA` contradicting the User-Agent (or unparseable).
pub const SEC_CH_UA_MISMATCH: u8 = 40;
/// `browser_headers`: `Sec-CH-UA-Mobile` or `-Platform` contradicting the User-Agent.
pub const HINT_MISMATCH: u8 = 30;
/// `verified_bots`: a verified bot (and every other signal is forced to 0).
pub const VERIFIED: u8 = 0;
/// `verified_bots`: a User-Agent claiming a verified bot from outside its networks.
pub const IMPERSONATION: u8 = 100;

/// Built-in automation User-Agent markers: (lowercase substring, label suffix). Each is a
/// library's or tool's default product token, so a real browser never contains one.
const AUTOMATION_MARKERS: [(&str, &str); 22] = [
    ("curl/", "curl"),
    ("wget/", "wget"),
    ("python-requests/", "python-requests"),
    ("python-urllib/", "python-urllib"),
    ("aiohttp/", "aiohttp"),
    ("python-httpx/", "httpx"),
    ("go-http-client/", "go-http-client"),
    ("java/", "java"),
    ("java-http-client/", "java-http-client"),
    ("apache-httpclient/", "apache-httpclient"),
    ("libwww-perl/", "libwww-perl"),
    ("scrapy/", "scrapy"),
    ("phantomjs", "phantomjs"),
    ("selenium", "selenium"),
    ("puppeteer", "puppeteer"),
    ("playwright", "playwright"),
    ("axios/", "axios"),
    ("node-fetch", "node-fetch"),
    ("undici", "undici"),
    ("httpie/", "httpie"),
    ("postmanruntime/", "postman"),
    ("guzzlehttp/", "guzzle"),
];

/// User-Agents that are a runtime's bare default, compared whole (ignoring case): Node's
/// built-in `fetch` sends `node`, Ruby's `Net::HTTP` sends `Ruby`.
const AUTOMATION_EXACT: [(&str, &str); 2] = [("node", "node"), ("ruby", "ruby")];

/// What [`evaluate`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct BotInput<'a> {
    /// The request headers as received (before any stripping).
    pub headers: &'a HeaderMap,
    /// The client address, as resolved through trusted proxies.
    pub client_ip: Option<IpAddr>,
    /// The client's autonomous system number, when a trusted proxy supplies it.
    pub asn: Option<u32>,
    /// A browser session's request: its sign-in's client and this one (`session_anomaly`).
    pub session: Option<SessionView<'a>>,
}

/// A browser session's request, as `session_anomaly` compares it.
#[derive(Clone, Copy, Debug)]
pub struct SessionView<'a> {
    /// What the sign-in's request showed (`None`: a session signed in before they were
    /// kept).
    pub login: Option<&'a ClientSignals>,
    /// What this request shows.
    pub now: &'a ClientSignals,
    /// What the recent uses show (impossible travel, concurrent use).
    pub uses: &'a [crate::recent_uses::UseFinding],
    /// What each change scores.
    pub weights: &'a AnomalyWeights,
}

/// One check's result; becomes a `bot.<check>` contribution in the risk verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    /// The check.
    pub check: BotCheck,
    /// 0..=100.
    pub score: u8,
    /// Machine-readable findings (`automation:curl`, `missing:sec-fetch`, `list:tor-exits`, …).
    pub labels: Vec<String>,
    /// What was found, for people reading audit records.
    pub reason: String,
}

/// Runs `checks` (a route's [`crate::config::RouteRisk::checks`]) on a request: one
/// [`Signal`] per check, in the same order. A verified bot (see `verified_bots` in the
/// module table) forces every other signal of the evaluation to 0.
pub fn evaluate(cfg: &BotConfig, checks: &[BotCheck], input: &BotInput<'_>) -> Vec<Signal> {
    let ua = header_text(input.headers, "user-agent");
    let mut verified_as = None;
    let mut signals: Vec<Signal> = checks
        .iter()
        .map(|check| match check {
            BotCheck::Automation => automation(cfg, ua.as_deref(), input.headers),
            BotCheck::BrowserHeaders => browser_headers(ua.as_deref(), input.headers),
            BotCheck::IpLists => ip_lists(cfg, input),
            BotCheck::VerifiedBots => {
                let (signal, name) = verified_bots(cfg, ua.as_deref(), input.client_ip);
                if verified_as.is_none() {
                    verified_as = name;
                }
                signal
            }
            BotCheck::SessionAnomaly => session_anomaly(input.session),
        })
        .collect();
    if let Some(name) = verified_as {
        for s in signals
            .iter_mut()
            .filter(|s| s.check != BotCheck::VerifiedBots)
        {
            s.reason = format!(
                "verified bot `{name}`: not scored (the check alone scored {}: {})",
                s.score, s.reason
            );
            s.score = 0;
        }
    }
    signals
}

/// `session_anomaly`: the sum of the weights of what changed since the sign-in and of what
/// the recent uses show (at most 100), one `changed:<what>` label per change and one
/// `impossible_travel` / `concurrent_use` label per use finding. Scores 0 for a request
/// without a session (a token caller); a session that kept no sign-in signals is labelled
/// `no_signals` and judged on its uses alone.
fn session_anomaly(view: Option<SessionView<'_>>) -> Signal {
    let check = BotCheck::SessionAnomaly;
    let Some(view) = view else {
        return signal(check, 0, Vec::new(), "not a browser session".into());
    };
    let shown = |s: &ClientSignals, c: Change| -> String {
        match c {
            Change::Network => s.network.clone().unwrap_or_default(),
            Change::Asn => s.asn.map(|a| format!("AS{a}")).unwrap_or_default(),
            Change::Country => s.country.clone().unwrap_or_default(),
            Change::Agent => s.agent.clone().unwrap_or_default(),
            Change::Platform => s.platform.clone().unwrap_or_default(),
        }
    };
    let (mut score, mut labels, mut found) = (0u32, Vec::new(), Vec::new());
    match view.login {
        Some(login) => {
            let mut list = Vec::new();
            for c in login.changes(view.now) {
                score += u32::from(c.weight(view.weights));
                labels.push(format!("changed:{}", c.name()));
                list.push(format!(
                    "{} {} -> {}",
                    c.name(),
                    shown(login, c),
                    shown(view.now, c)
                ));
            }
            if !list.is_empty() {
                found.push(format!("since sign-in: {}", list.join(", ")));
            }
        }
        None => {
            labels.push("no_signals".into());
            found.push("the session kept no sign-in signals".into());
        }
    }
    for u in view.uses {
        score += u32::from(u.weight(view.weights));
        labels.push(u.label().into());
        found.push(u.describe());
    }
    if score == 0 && view.login.is_some() {
        return signal(check, 0, labels, "the client that signed in".into());
    }
    signal(
        check,
        u8::try_from(score.min(100)).unwrap_or(100),
        labels,
        found.join("; "),
    )
}

/// A header's values, lossily decoded and joined with `, ` (`None` when absent).
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<Cow<'_, str>> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// True when the header is present with a non-blank value.
fn present(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace))
}

fn signal(check: BotCheck, score: u8, labels: Vec<String>, reason: String) -> Signal {
    Signal {
        check,
        score: score.min(100),
        labels,
        reason,
    }
}

/// `automation`: known library and tool User-Agents, headless browsers, no User-Agent.
fn automation(cfg: &BotConfig, ua: Option<&str>, headers: &HeaderMap) -> Signal {
    let mut score = 0u8;
    let mut labels = Vec::new();
    let mut found = Vec::new();
    let ua = ua.map(str::trim).unwrap_or_default();
    if ua.is_empty() {
        score = NO_USER_AGENT;
        labels.push("no-user-agent".to_owned());
        found.push("no User-Agent".to_owned());
    }
    let lower = ua.to_ascii_lowercase();
    let builtin = AUTOMATION_MARKERS
        .iter()
        .filter(|(marker, _)| lower.contains(marker))
        .chain(AUTOMATION_EXACT.iter().filter(|(whole, _)| lower == *whole))
        .map(|(_, label)| *label);
    let configured = cfg
        .automation_agents
        .iter()
        .filter(|a| lower.contains(&a.to_ascii_lowercase()))
        .map(String::as_str);
    for tool in builtin.chain(configured) {
        score = score.max(AUTOMATION_AGENT);
        labels.push(format!("automation:{tool}"));
        found.push(format!("User-Agent names {tool}"));
    }
    let headless_ua = lower.contains("headlesschrome");
    let headless_brand = header_text(headers, "sec-ch-ua").is_some_and(|v| {
        brands(&v).is_some_and(|b| {
            b.iter()
                .any(|(brand, _)| brand.to_ascii_lowercase().starts_with("headless"))
        })
    });
    if headless_ua || headless_brand {
        score = score.max(HEADLESS);
        labels.push("headless".to_owned());
        found.push(
            match (headless_ua, headless_brand) {
                (true, true) => "headless Chrome (User-Agent and Sec-CH-UA brand)",
                (true, false) => "headless Chrome (User-Agent)",
                _ => "headless Chrome (Sec-CH-UA brand)",
            }
            .to_owned(),
        );
    }
    let reason = if found.is_empty() {
        "no automation marker".to_owned()
    } else {
        found.join("; ")
    };
    signal(BotCheck::Automation, score, labels, reason)
}

/// The browser engine a User-Agent claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    /// A `Chrome/N` (or `HeadlessChrome/N`) token: Chrome, Edge, Opera, Brave, Chromium, ….
    Chromium(u32),
    /// `Firefox/N` without a Chrome token.
    Gecko(u32),
    /// `AppleWebKit` without a Chrome or Firefox token: Safari, and every iOS browser.
    WebKit,
    /// `Mozilla/…` but none of the above (old IE, `compatible;` crawlers, …).
    Other,
}

/// The engine a User-Agent claims, `None` when it does not claim a browser (`Mozilla/`).
fn engine(ua: &str) -> Option<Engine> {
    if !ua.trim_start().starts_with("Mozilla/") {
        return None;
    }
    if let Some(v) = product_major(ua, "Chrome/", &["", " ", "Headless"]) {
        return Some(Engine::Chromium(v));
    }
    if let Some(v) = product_major(ua, "Firefox/", &["", " "]) {
        return Some(Engine::Gecko(v));
    }
    Some(if ua.contains("AppleWebKit/") {
        Engine::WebKit
    } else {
        Engine::Other
    })
}

/// The major version after `token` where the text before it ends in one of `after`
/// (`""` meaning the start of the string).
fn product_major(ua: &str, token: &str, after: &[&str]) -> Option<u32> {
    ua.match_indices(token).find_map(|(i, _)| {
        let before = ua.get(..i).unwrap_or_default();
        let boundary = after.iter().any(|a| {
            if a.is_empty() {
                before.is_empty()
            } else {
                before.ends_with(a)
            }
        });
        if !boundary {
            return None;
        }
        leading_number(ua.get(i + token.len()..).unwrap_or_default())
    })
}

/// The decimal number at the start of `s` (at most 9 digits).
fn leading_number(s: &str) -> Option<u32> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).take(9).collect();
    digits.parse().ok()
}

/// The OS a User-Agent names, in `Sec-CH-UA-Platform` terms.
fn ua_platform(ua: &str) -> Option<&'static str> {
    [
        ("Android", "Android"),
        ("CrOS", "Chrome OS"),
        ("iPhone", "iOS"),
        ("iPad", "iOS"),
        ("Windows", "Windows"),
        ("Macintosh", "macOS"),
        ("Linux", "Linux"),
    ]
    .into_iter()
    .find(|(token, _)| ua.contains(token))
    .map(|(_, platform)| platform)
}

/// `browser_headers`: the headers a browser always sends, consistent with what it claims.
fn browser_headers(ua: Option<&str>, headers: &HeaderMap) -> Signal {
    let ua = ua.unwrap_or_default();
    let engine = engine(ua);
    let mut score = 0u8;
    let mut labels = Vec::new();
    let mut found = Vec::new();
    let mut hit = |points: u8, label: &str, what: String| {
        score = score.saturating_add(points);
        labels.push(label.to_owned());
        found.push(what);
    };
    if engine.is_none() {
        // Not a browser by its own account: only the headers every browser sends on every
        // request are looked at, so that scripts score above 0 here too. Libraries that
        // send all three (rare) pass; `automation` is the check that names them.
        hit(
            0,
            "non-browser-user-agent",
            "User-Agent claims no browser".to_owned(),
        );
    }
    for (name, points) in [
        ("accept", MISSING_ACCEPT),
        ("accept-language", MISSING_ACCEPT_LANGUAGE),
        ("accept-encoding", MISSING_ACCEPT_ENCODING),
    ] {
        if !present(headers, name) {
            hit(points, &format!("missing:{name}"), format!("no {name}"));
        }
    }
    let sec_fetch = ["sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest"]
        .iter()
        .all(|h| present(headers, h));
    // Sec-Fetch-Dest, the last of the three, shipped in Chromium 80 and Firefox 90.
    let fetch_metadata_expected = match engine {
        Some(Engine::Chromium(v)) => v >= 80,
        Some(Engine::Gecko(v)) => v >= 90,
        _ => false,
    };
    if fetch_metadata_expected && !sec_fetch {
        hit(
            MISSING_SEC_FETCH,
            "missing:sec-fetch",
            "a browser that sends Sec-Fetch-* did not".to_owned(),
        );
    }
    let ch_ua = header_text(headers, "sec-ch-ua");
    let any_hint = headers.keys().any(|k| k.as_str().starts_with("sec-ch-ua"));
    match engine {
        Some(Engine::Chromium(major)) => {
            // Android WebViews (`; wv)`) sent no client hints until recently; in-app
            // browsers are real users, so only full Chromium browsers are held to this.
            let webview = ua.contains("; wv)");
            match ch_ua.as_deref().map(|v| (v, brands(v))) {
                None if major >= 90 && !webview => hit(
                    MISSING_SEC_CH_UA,
                    "missing:sec-ch-ua",
                    format!("Chrome/{major} without Sec-CH-UA"),
                ),
                None => {}
                Some((raw, None)) => hit(
                    SEC_CH_UA_MISMATCH,
                    "malformed:sec-ch-ua",
                    format!("Sec-CH-UA {raw:?} is not a brand list"),
                ),
                Some((_, Some(list))) => {
                    // Only brands that track the engine version are compared: Edge, Opera
                    // and others carry their own version next to a `Chromium` brand, and
                    // GREASE brands carry an arbitrary one.
                    let wrong = list.iter().find(|(brand, v)| {
                        matches!(
                            brand.as_str(),
                            "Chromium" | "Google Chrome" | "HeadlessChrome"
                        ) && leading_number(v) != Some(major)
                    });
                    if let Some((brand, v)) = wrong {
                        hit(
                            SEC_CH_UA_MISMATCH,
                            "mismatch:sec-ch-ua-version",
                            format!("Sec-CH-UA says {brand} {v}, the User-Agent Chrome/{major}"),
                        );
                    }
                }
            }
            let mobile_hint =
                header_text(headers, "sec-ch-ua-mobile").is_some_and(|v| v.trim() == "?1");
            let desktop = !ua.contains("Mobile") && !ua.contains("Android");
            if mobile_hint && desktop {
                hit(
                    HINT_MISMATCH,
                    "mismatch:sec-ch-ua-mobile",
                    "Sec-CH-UA-Mobile ?1 with a desktop User-Agent".to_owned(),
                );
            }
            let hinted = header_text(headers, "sec-ch-ua-platform")
                .map(|v| v.trim().trim_matches('"').to_owned());
            if let (Some(hinted), Some(claimed)) = (hinted, ua_platform(ua)) {
                // Chrome OS reports either name; Android's "request desktop site" sends a
                // Linux User-Agent but keeps the Android hint; "Unknown" is no claim.
                let same = hinted == claimed
                    || (claimed == "Chrome OS" && hinted == "Chromium OS")
                    || (claimed == "Linux" && hinted == "Android")
                    || hinted == "Unknown"
                    || hinted.is_empty();
                if !same {
                    hit(
                        HINT_MISMATCH,
                        "mismatch:sec-ch-ua-platform",
                        format!("Sec-CH-UA-Platform {hinted:?}, the User-Agent {claimed}"),
                    );
                }
            }
        }
        // Neither Gecko nor WebKit implements User-Agent client hints.
        Some(Engine::Gecko(_) | Engine::WebKit) if any_hint => hit(
            SEC_CH_UA_MISMATCH,
            "unexpected:sec-ch-ua",
            "Sec-CH-UA client hints from a Firefox or Safari User-Agent".to_owned(),
        ),
        _ => {}
    }
    let reason = if score == 0 && engine.is_some() {
        "browser headers consistent with the User-Agent".to_owned()
    } else {
        found.join("; ")
    };
    signal(BotCheck::BrowserHeaders, score, labels, reason)
}

/// Brands of a `Sec-CH-UA` value (an RFC 8941 list of strings with a `v` parameter), as
/// `(brand, version)`; `None` when any item is not of that shape.
fn brands(value: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in split_unquoted(value, ',') {
        let mut parts = split_unquoted(item, ';').into_iter();
        let brand = unquote(parts.next()?.trim())?;
        let version = parts.find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k.trim() == "v").then(|| unquote(v.trim())).flatten()
        })?;
        out.push((brand, version));
    }
    (!out.is_empty()).then_some(out)
}

/// `s` split at `sep` outside double-quoted strings (backslash escapes honoured).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(s.get(start..i).unwrap_or_default());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(s.get(start..).unwrap_or_default());
    parts
}

/// The content of a double-quoted structured-field string.
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(out)
}

/// `ip_lists`: the highest score among lists holding the client's address or ASN.
fn ip_lists(cfg: &BotConfig, input: &BotInput<'_>) -> Signal {
    if input.client_ip.is_none() && input.asn.is_none() {
        return signal(
            BotCheck::IpLists,
            0,
            Vec::new(),
            "client address and ASN unknown".to_owned(),
        );
    }
    let hits: Vec<_> = cfg
        .lists
        .iter()
        .filter(|l| {
            input
                .client_ip
                .is_some_and(|ip| l.cidrs.iter().any(|n| n.contains(ip)))
                || input.asn.is_some_and(|a| l.asns.contains(&a))
        })
        .collect();
    let score = hits.iter().map(|l| l.score).max().unwrap_or(0);
    let labels = hits.iter().map(|l| format!("list:{}", l.name)).collect();
    let reason = if hits.is_empty() {
        "client on no list".to_owned()
    } else {
        let names: Vec<String> = hits
            .iter()
            .map(|l| format!("{} ({})", l.name, l.score))
            .collect();
        format!("client on {}", names.join(", "))
    };
    signal(BotCheck::IpLists, score, labels, reason)
}

/// `verified_bots`: the signal, and the verified bot's name when there is one.
fn verified_bots(
    cfg: &BotConfig,
    ua: Option<&str>,
    ip: Option<IpAddr>,
) -> (Signal, Option<String>) {
    let lower = ua.unwrap_or_default().to_ascii_lowercase();
    // Matched ignoring case, so that `googlebot` from anywhere still counts as a claim.
    let claimed: Vec<_> = cfg
        .verified
        .iter()
        .filter(|b| lower.contains(&b.user_agent.to_ascii_lowercase()))
        .collect();
    if claimed.is_empty() {
        let s = signal(
            BotCheck::VerifiedBots,
            0,
            Vec::new(),
            "claims no verified bot".to_owned(),
        );
        return (s, None);
    }
    let verified: Vec<_> = claimed
        .iter()
        .filter(|b| ip.is_some_and(|ip| b.cidrs.iter().any(|n| n.contains(ip))))
        .collect();
    if let Some(first) = verified.first() {
        let labels = verified
            .iter()
            .map(|b| format!("verified:{}", b.name))
            .collect();
        let reason = format!(
            "verified bot `{}`: User-Agent and address match",
            first.name
        );
        return (
            signal(BotCheck::VerifiedBots, VERIFIED, labels, reason),
            Some(first.name.clone()),
        );
    }
    let names: Vec<&str> = claimed.iter().map(|b| b.name.as_str()).collect();
    let labels = names.iter().map(|n| format!("impersonation:{n}")).collect();
    let reason = match ip {
        Some(ip) => format!(
            "User-Agent claims {} but {ip} is not in its networks",
            names.join(", ")
        ),
        None => format!(
            "User-Agent claims {} but the client address is unknown",
            names.join(", ")
        ),
    };
    (
        signal(BotCheck::VerifiedBots, IMPERSONATION, labels, reason),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BotList, IpNet, VerifiedBot};
    use http::{HeaderName, HeaderValue};

    const CHROMIUM_HEADLESS: &str =
        include_str!("../../../tests/fixtures/headers/chromium-148-navigation.txt");
    const CHROME_DESKTOP: &str =
        include_str!("../../../tests/fixtures/headers/chrome-148-desktop-derived.txt");
    const CURL: &str = include_str!("../../../tests/fixtures/headers/curl.txt");

    /// A fixture's `name: value` lines (comments skipped) as a header map, in order.
    fn fixture(text: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, value) = line.split_once(':').unwrap();
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value.trim()).unwrap(),
            );
        }
        h
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// `base` with `name` replaced by `value` (or removed when `None`).
    fn with(mut base: HeaderMap, name: &'static str, value: Option<&str>) -> HeaderMap {
        base.remove(name);
        if let Some(v) = value {
            base.insert(name, HeaderValue::from_str(v).unwrap());
        }
        base
    }

    fn cfg() -> BotConfig {
        BotConfig {
            automation_agents: vec!["MyScraper".into()],
            lists: vec![
                BotList {
                    name: "tor-exits".into(),
                    cidrs: vec![
                        IpNet::parse("198.51.100.0/24").unwrap(),
                        IpNet::parse("2001:db8:dead::/48").unwrap(),
                    ],
                    asns: vec![64496],
                    score: 80,
                },
                BotList {
                    name: "hosting".into(),
                    cidrs: vec![IpNet::parse("198.51.0.0/16").unwrap()],
                    asns: vec![64511],
                    score: 30,
                },
            ],
            verified: vec![VerifiedBot {
                name: "googlebot".into(),
                user_agent: "Googlebot".into(),
                cidrs: vec![IpNet::parse("66.249.64.0/19").unwrap()],
            }],
        }
    }

    fn run(check: BotCheck, h: &HeaderMap) -> Signal {
        run_from(check, h, None, None)
    }

    fn run_from(check: BotCheck, h: &HeaderMap, ip: Option<&str>, asn: Option<u32>) -> Signal {
        let input = BotInput {
            headers: h,
            client_ip: ip.map(|i| i.parse().unwrap()),
            asn,
            session: None,
        };
        let mut s = evaluate(&cfg(), &[check], &input);
        assert_eq!(s.len(), 1);
        s.remove(0)
    }

    fn labels(s: &Signal) -> Vec<&str> {
        s.labels.iter().map(String::as_str).collect()
    }

    #[test]
    fn recorded_headless_chromium_has_browser_headers_but_is_flagged_headless() {
        let h = fixture(CHROMIUM_HEADLESS);
        let b = run(BotCheck::BrowserHeaders, &h);
        assert_eq!(b.score, 0, "{b:?}");
        assert!(b.labels.is_empty(), "{b:?}");
        let a = run(BotCheck::Automation, &h);
        assert_eq!(a.score, HEADLESS);
        assert_eq!(labels(&a), ["headless"]);
        assert!(a.reason.contains("User-Agent"), "{}", a.reason);
    }

    #[test]
    fn desktop_chrome_passes_both_header_checks() {
        let h = fixture(CHROME_DESKTOP);
        for check in [BotCheck::BrowserHeaders, BotCheck::Automation] {
            let s = run(check, &h);
            assert_eq!((s.score, s.labels.len()), (0, 0), "{s:?}");
        }
    }

    #[test]
    fn recorded_curl_is_automation_and_lacks_browser_headers() {
        let h = fixture(CURL);
        let a = run(BotCheck::Automation, &h);
        assert_eq!(a.score, AUTOMATION_AGENT);
        assert_eq!(labels(&a), ["automation:curl"]);
        let b = run(BotCheck::BrowserHeaders, &h);
        assert_eq!(b.score, MISSING_ACCEPT_LANGUAGE + MISSING_ACCEPT_ENCODING);
        assert_eq!(
            labels(&b),
            [
                "non-browser-user-agent",
                "missing:accept-language",
                "missing:accept-encoding"
            ]
        );
    }

    #[test]
    fn automation_names_libraries_configured_agents_and_missing_agents() {
        let cases = [
            ("python-requests/2.32.3", "automation:python-requests"),
            ("Python-urllib/3.12", "automation:python-urllib"),
            ("Python/3.12 aiohttp/3.9.5", "automation:aiohttp"),
            ("python-httpx/0.27.0", "automation:httpx"),
            ("Go-http-client/2.0", "automation:go-http-client"),
            ("Java/17.0.2", "automation:java"),
            ("Wget/1.21.3", "automation:wget"),
            ("Scrapy/2.11.2 (+https://scrapy.org)", "automation:scrapy"),
            ("axios/1.7.2", "automation:axios"),
            ("node", "automation:node"),
            (
                "Mozilla/5.0 (compatible; myscraper/1.0)",
                "automation:MyScraper",
            ),
            (
                "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 Safari/538.1",
                "automation:phantomjs",
            ),
        ];
        for (ua, label) in cases {
            let s = run(BotCheck::Automation, &headers(&[("user-agent", ua)]));
            assert_eq!(s.score, AUTOMATION_AGENT, "{ua}");
            assert!(s.labels.iter().any(|l| l == label), "{ua}: {s:?}");
        }
        let none = run(BotCheck::Automation, &HeaderMap::new());
        assert_eq!(
            (none.score, labels(&none)),
            (NO_USER_AGENT, vec!["no-user-agent"])
        );
        let blank = run(BotCheck::Automation, &headers(&[("user-agent", "  ")]));
        assert_eq!(blank.score, NO_USER_AGENT);
    }

    #[test]
    fn mobile_app_clients_and_browsers_are_not_automation() {
        for ua in [
            "okhttp/4.12.0",
            "Dart/3.4 (dart:io)",
            "MyApp/1.2 CFNetwork/1494.0.7 Darwin/23.4.0",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
        ] {
            let s = run(BotCheck::Automation, &headers(&[("user-agent", ua)]));
            assert_eq!(s.score, 0, "{ua}: {s:?}");
        }
    }

    #[test]
    fn a_headless_brand_in_client_hints_is_flagged_even_with_a_desktop_user_agent() {
        let h = with(
            fixture(CHROME_DESKTOP),
            "sec-ch-ua",
            Some(r#""Chromium";v="148", "HeadlessChrome";v="148", "Not/A)Brand";v="99""#),
        );
        let a = run(BotCheck::Automation, &h);
        assert_eq!((a.score, labels(&a)), (HEADLESS, vec!["headless"]));
        assert!(a.reason.contains("brand"), "{}", a.reason);
    }

    #[test]
    fn non_utf8_and_repeated_headers_never_panic() {
        let mut h = HeaderMap::new();
        h.append(
            "user-agent",
            HeaderValue::from_bytes(b"curl/8.0 \xff\xfe").unwrap(),
        );
        h.append("user-agent", HeaderValue::from_static("Mozilla/5.0"));
        h.append(
            "sec-ch-ua",
            HeaderValue::from_bytes(b"\"\xff\";v=\"1").unwrap(),
        );
        h.append("sec-ch-ua", HeaderValue::from_static("\\\""));
        h.append(
            "sec-ch-ua-platform",
            HeaderValue::from_bytes(b"\xc3").unwrap(),
        );
        let s = evaluate(
            &cfg(),
            &BotCheck::ALL,
            &BotInput {
                headers: &h,
                client_ip: None,
                asn: None,
                session: None,
            },
        );
        assert_eq!(s.len(), BotCheck::ALL.len());
        assert!(s[1].labels.iter().any(|l| l == "automation:curl"), "{s:?}");
        for odd in ["", ",", ";", "\"", "\"a\";v", "\"a\";v=\"1\",", "\"\\"] {
            let _ = brands(odd);
        }
        assert_eq!(
            brands(r#""Not/A)Brand";v="99", "Chromium";v="148""#).unwrap(),
            [
                ("Not/A)Brand".to_owned(), "99".to_owned()),
                ("Chromium".to_owned(), "148".to_owned())
            ]
        );
        assert_eq!(brands(r#""a,b";v="1""#).unwrap()[0].0, "a,b");
    }

    #[test]
    fn missing_generic_browser_headers_each_add_points() {
        let base = fixture(CHROME_DESKTOP);
        for (name, points) in [
            ("accept", MISSING_ACCEPT),
            ("accept-language", MISSING_ACCEPT_LANGUAGE),
            ("accept-encoding", MISSING_ACCEPT_ENCODING),
        ] {
            let s = run(BotCheck::BrowserHeaders, &with(base.clone(), name, None));
            assert_eq!(s.score, points, "{name}");
            assert_eq!(labels(&s), [format!("missing:{name}")]);
        }
        let blank = with(base, "accept-language", Some(""));
        assert_eq!(
            run(BotCheck::BrowserHeaders, &blank).score,
            MISSING_ACCEPT_LANGUAGE
        );
    }

    #[test]
    fn fetch_metadata_is_expected_from_chromium_80_and_firefox_90() {
        let chrome = with(fixture(CHROME_DESKTOP), "sec-fetch-mode", None);
        let s = run(BotCheck::BrowserHeaders, &chrome);
        assert_eq!(
            (s.score, labels(&s)),
            (MISSING_SEC_FETCH, vec!["missing:sec-fetch"])
        );
        let old = headers(&[
            (
                "user-agent",
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/79.0.3945.88 Safari/537.36",
            ),
            ("accept", "*/*"),
            ("accept-language", "en"),
            ("accept-encoding", "gzip"),
        ]);
        assert_eq!(run(BotCheck::BrowserHeaders, &old).score, 0);
        let firefox = |version: &str| {
            headers(&[
                ("user-agent", format!("Mozilla/5.0 (X11; Linux x86_64; rv:{version}) Gecko/20100101 Firefox/{version}").as_str()),
                ("accept", "*/*"),
                ("accept-language", "en"),
                ("accept-encoding", "gzip"),
            ])
        };
        let s = run(BotCheck::BrowserHeaders, &firefox("128.0"));
        assert_eq!(labels(&s), ["missing:sec-fetch"]);
        assert_eq!(run(BotCheck::BrowserHeaders, &firefox("89.0")).score, 0);
    }

    #[test]
    fn client_hints_are_expected_from_chromium_90_except_webviews() {
        let s = run(
            BotCheck::BrowserHeaders,
            &with(fixture(CHROME_DESKTOP), "sec-ch-ua", None),
        );
        assert_eq!(
            (s.score, labels(&s)),
            (MISSING_SEC_CH_UA, vec!["missing:sec-ch-ua"])
        );
        let ua89 = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/89.0.4389.90 Safari/537.36";
        let h = with(fixture(CHROME_DESKTOP), "sec-ch-ua", None);
        let h = with(h, "user-agent", Some(ua89));
        assert_eq!(run(BotCheck::BrowserHeaders, &h).score, 0);
        let webview = "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.43 Mobile Safari/537.36";
        let h = with(fixture(CHROME_DESKTOP), "sec-ch-ua", None);
        let h = with(h, "sec-ch-ua-platform", None);
        let h = with(h, "user-agent", Some(webview));
        assert_eq!(run(BotCheck::BrowserHeaders, &h).score, 0);
    }

    #[test]
    fn client_hints_must_agree_with_the_user_agent() {
        let base = fixture(CHROME_DESKTOP);
        let older = with(
            base.clone(),
            "sec-ch-ua",
            Some(r#""Chromium";v="147", "Google Chrome";v="147", "Not/A)Brand";v="99""#),
        );
        let s = run(BotCheck::BrowserHeaders, &older);
        assert_eq!(
            (s.score, labels(&s)),
            (SEC_CH_UA_MISMATCH, vec!["mismatch:sec-ch-ua-version"])
        );
        // Edge and Opera carry their own version beside the engine's: not a mismatch.
        let edge = with(
            base.clone(),
            "sec-ch-ua",
            Some(r#""Microsoft Edge";v="131", "Chromium";v="148", "Not_A Brand";v="24""#),
        );
        assert_eq!(run(BotCheck::BrowserHeaders, &edge).score, 0);
        let junk = with(base.clone(), "sec-ch-ua", Some("Chrome 148"));
        assert_eq!(
            labels(&run(BotCheck::BrowserHeaders, &junk)),
            ["malformed:sec-ch-ua"]
        );
        let mobile = with(base.clone(), "sec-ch-ua-mobile", Some("?1"));
        let s = run(BotCheck::BrowserHeaders, &mobile);
        assert_eq!(
            (s.score, labels(&s)),
            (HINT_MISMATCH, vec!["mismatch:sec-ch-ua-mobile"])
        );
        let windows = with(base.clone(), "sec-ch-ua-platform", Some("\"Windows\""));
        let s = run(BotCheck::BrowserHeaders, &windows);
        assert_eq!(labels(&s), ["mismatch:sec-ch-ua-platform"]);
        // Android's "request desktop site" keeps the Android hint on a Linux User-Agent.
        let desktop_site = with(base, "sec-ch-ua-platform", Some("\"Android\""));
        assert_eq!(run(BotCheck::BrowserHeaders, &desktop_site).score, 0);
        let android_phone = headers(&[
            (
                "user-agent",
                "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/148.0.0.0 Mobile Safari/537.36",
            ),
            (
                "sec-ch-ua",
                r#""Chromium";v="148", "Google Chrome";v="148", "Not/A)Brand";v="99""#,
            ),
            ("sec-ch-ua-mobile", "?1"),
            ("sec-ch-ua-platform", "\"Android\""),
            ("sec-fetch-site", "none"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
            ("accept", "text/html"),
            ("accept-language", "de"),
            ("accept-encoding", "gzip"),
        ]);
        assert_eq!(run(BotCheck::BrowserHeaders, &android_phone).score, 0);
    }

    #[test]
    fn client_hints_from_firefox_or_safari_are_forged() {
        for ua in [
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
        ] {
            let h = with(fixture(CHROME_DESKTOP), "user-agent", Some(ua));
            let h = with(h, "sec-ch-ua", None);
            let h = with(h, "sec-ch-ua-platform", None);
            let s = run(BotCheck::BrowserHeaders, &h);
            assert_eq!(
                (s.score, labels(&s)),
                (SEC_CH_UA_MISMATCH, vec!["unexpected:sec-ch-ua"]),
                "{ua}"
            );
            let clean = with(h, "sec-ch-ua-mobile", None);
            assert_eq!(run(BotCheck::BrowserHeaders, &clean).score, 0, "{ua}");
        }
    }

    #[test]
    fn browser_header_points_are_capped_at_100() {
        let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/148.0.0.0 Safari/537.36";
        let s = run(
            BotCheck::BrowserHeaders,
            &headers(&[("user-agent", ua), ("sec-ch-ua-mobile", "?1")]),
        );
        assert_eq!(s.score, 100);
        assert_eq!(s.labels.len(), 6, "{s:?}");
    }

    #[test]
    fn ip_lists_take_the_highest_matching_list() {
        let h = HeaderMap::new();
        let s = run_from(BotCheck::IpLists, &h, Some("198.51.100.7"), None);
        assert_eq!(
            (s.score, labels(&s)),
            (80, vec!["list:tor-exits", "list:hosting"])
        );
        let s = run_from(BotCheck::IpLists, &h, Some("198.51.7.7"), None);
        assert_eq!((s.score, labels(&s)), (30, vec!["list:hosting"]));
        let s = run_from(BotCheck::IpLists, &h, Some("2001:db8:dead:1::9"), None);
        assert_eq!(s.score, 80);
        let s = run_from(BotCheck::IpLists, &h, Some("::ffff:198.51.100.7"), None);
        assert_eq!(s.score, 80, "IPv4-mapped addresses count as IPv4");
        let s = run_from(BotCheck::IpLists, &h, Some("203.0.113.1"), Some(64511));
        assert_eq!((s.score, labels(&s)), (30, vec!["list:hosting"]));
        let s = run_from(BotCheck::IpLists, &h, Some("203.0.113.1"), Some(1));
        assert_eq!((s.score, s.labels.len()), (0, 0));
        let s = run_from(BotCheck::IpLists, &h, None, None);
        assert!(s.reason.contains("unknown"), "{}", s.reason);
    }

    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    #[test]
    fn a_verified_bot_zeroes_every_signal() {
        let h = headers(&[("user-agent", GOOGLEBOT), ("accept", "*/*")]);
        let input = BotInput {
            headers: &h,
            client_ip: Some("66.249.66.1".parse().unwrap()),
            asn: Some(64496),
            session: None,
        };
        let checks = [
            BotCheck::BrowserHeaders,
            BotCheck::IpLists,
            BotCheck::VerifiedBots,
            BotCheck::Automation,
        ];
        let s = evaluate(&cfg(), &checks, &input);
        let order: Vec<BotCheck> = s.iter().map(|s| s.check).collect();
        assert_eq!(order, checks);
        assert!(s.iter().all(|s| s.score == 0), "{s:#?}");
        assert_eq!(labels(&s[2]), ["verified:googlebot"]);
        assert!(
            s[0].reason.starts_with("verified bot `googlebot`"),
            "{}",
            s[0].reason
        );
        assert!(s[0].reason.contains("scored 40"), "{}", s[0].reason);
        assert_eq!(labels(&s[1]), ["list:tor-exits"], "findings stay visible");
        // Without the verified_bots check there is no verification to lean on.
        let s = evaluate(&cfg(), &[BotCheck::BrowserHeaders], &input);
        assert_eq!(s[0].score, 40);
    }

    #[test]
    fn a_claimed_bot_from_elsewhere_is_an_impersonation() {
        let h = headers(&[("user-agent", GOOGLEBOT)]);
        let s = run_from(BotCheck::VerifiedBots, &h, Some("203.0.113.9"), None);
        assert_eq!(
            (s.score, labels(&s)),
            (IMPERSONATION, vec!["impersonation:googlebot"])
        );
        let lower = headers(&[("user-agent", "googlebot")]);
        assert_eq!(run(BotCheck::VerifiedBots, &lower).score, IMPERSONATION);
        let s = run_from(
            BotCheck::VerifiedBots,
            &fixture(CHROME_DESKTOP),
            Some("66.249.66.1"),
            None,
        );
        assert_eq!(
            (s.score, s.labels.len()),
            (0, 0),
            "no claim, nothing to verify"
        );
        let both = evaluate(
            &cfg(),
            &[BotCheck::Automation, BotCheck::VerifiedBots],
            &BotInput {
                headers: &headers(&[("user-agent", "curl/8.0 Googlebot")]),
                client_ip: Some("203.0.113.9".parse().unwrap()),
                asn: None,
                session: None,
            },
        );
        assert_eq!(
            (both[0].score, both[1].score),
            (AUTOMATION_AGENT, IMPERSONATION)
        );
    }

    #[test]
    fn no_checks_no_signals() {
        let h = fixture(CURL);
        let input = BotInput {
            headers: &h,
            client_ip: None,
            asn: None,
            session: None,
        };
        assert!(evaluate(&cfg(), &[], &input).is_empty());
    }

    #[test]
    fn session_anomaly_sums_the_weights_of_what_changed() {
        let h = HeaderMap::new();
        let weights = AnomalyWeights::default();
        let login = ClientSignals {
            network: Some("192.0.2.0/24".into()),
            agent: Some("Chrome/131".into()),
            platform: Some("Windows".into()),
            ..ClientSignals::default()
        };
        let run = |session: Option<SessionView<'_>>| {
            let input = BotInput {
                headers: &h,
                client_ip: None,
                asn: None,
                session,
            };
            evaluate(&BotConfig::default(), &[BotCheck::SessionAnomaly], &input).remove(0)
        };
        let same = run(Some(SessionView {
            login: Some(&login),
            now: &login,
            uses: &[],
            weights: &weights,
        }));
        assert_eq!((same.score, same.labels.len()), (0, 0));
        let moved = ClientSignals {
            network: Some("198.51.100.0/24".into()),
            ..login.clone()
        };
        let s = run(Some(SessionView {
            login: Some(&login),
            now: &moved,
            uses: &[],
            weights: &weights,
        }));
        assert_eq!(
            (s.score, s.labels.clone()),
            (20, vec!["changed:network".to_owned()])
        );
        assert!(
            s.reason.contains("192.0.2.0/24 -> 198.51.100.0/24"),
            "{}",
            s.reason
        );
        let copied = ClientSignals {
            agent: Some("curl/8".into()),
            platform: Some("Linux".into()),
            ..moved.clone()
        };
        let s = run(Some(SessionView {
            login: Some(&login),
            now: &copied,
            uses: &[],
            weights: &weights,
        }));
        // 20 + 60 + 60, capped.
        assert_eq!(s.score, 100);
        assert_eq!(
            s.labels,
            ["changed:network", "changed:agent", "changed:platform"]
        );
        assert_eq!(run(None).score, 0);
        let old = run(Some(SessionView {
            login: None,
            now: &copied,
            uses: &[],
            weights: &weights,
        }));
        assert_eq!(
            (old.score, old.labels.clone()),
            (0, vec!["no_signals".to_owned()])
        );
        // What the recent uses show adds up with the changes, even without sign-in signals.
        let travel = crate::recent_uses::UseFinding::ImpossibleTravel {
            from: "192.0.2.0/24".into(),
            km: 16_960.0,
            secs: 7_200,
        };
        let s = run(Some(SessionView {
            login: Some(&login),
            now: &moved,
            uses: std::slice::from_ref(&travel),
            weights: &weights,
        }));
        assert_eq!(
            (s.score, s.labels.clone()),
            (
                90,
                vec!["changed:network".to_owned(), "impossible_travel".to_owned()]
            )
        );
        assert!(
            s.reason.contains("impossible travel: 16960 km"),
            "{}",
            s.reason
        );
        let s = run(Some(SessionView {
            login: None,
            now: &moved,
            uses: std::slice::from_ref(&travel),
            weights: &weights,
        }));
        assert_eq!(
            (s.score, s.labels),
            (
                70,
                vec!["no_signals".to_owned(), "impossible_travel".to_owned()]
            )
        );
    }
}
