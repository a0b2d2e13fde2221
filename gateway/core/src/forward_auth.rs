//! Forward-auth mode (`[forward_auth]`): the gateway as the authorization service of a
//! proxy in front of it. The proxy calls [`FORWARD_AUTH_PATH`] and describes the client's
//! request in its own headers:
//!
//! | proxy | method | target | host | scheme |
//! |---|---|---|---|---|
//! | Traefik ForwardAuth, Caddy `forward_auth` | `X-Forwarded-Method` | `X-Forwarded-Uri` | `X-Forwarded-Host` | `X-Forwarded-Proto` |
//! | nginx `auth_request` (set in its configuration) | `X-Original-Method` | `X-Original-URI` | `X-Forwarded-Host` or `Host` | `X-Forwarded-Proto` |
//! | Envoy `ext_authz` (HTTP, `path_prefix` = the path) | its own | the path after the prefix | `Host` | `X-Forwarded-Proto` |
//!
//! Only a peer in `[client] trusted_proxies` may ask (its `X-Forwarded-For` gives the
//! client's address, as for any proxied request). The request so described goes through
//! the same pipeline as one received directly; where the gateway would forward it, it
//! answers 200 with what the proxy is to change on the request ([`answer`]); otherwise its
//! answer is the usual one (401, 403, a login redirect, 429…).

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

use crate::config::{Config, ForwardAuth};
use crate::decision::{Forward, Response};
use crate::model::RequestParts;
use crate::reason::Reason;

/// Where proxies ask.
pub const FORWARD_AUTH_PATH: &str = "/_portcullis/authz";

/// The header listing the request headers the proxy must remove (Envoy's `ext_authz`
/// removes them itself; other proxies are configured to).
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Headers that describe the original request to this endpoint; never part of it.
const DESCRIBING: [&str; 7] = [
    "x-forwarded-method",
    "x-original-method",
    "x-forwarded-uri",
    "x-original-uri",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-original-url",
];

/// The client's request a proxy described.
#[derive(Debug)]
pub struct Original {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Original {
    /// The described request, with the call's id, peer and hints.
    pub fn parts<'a>(&'a self, call: &RequestParts<'a>) -> RequestParts<'a> {
        RequestParts {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            request_id: call.request_id,
            peer: call.peer,
            peer_hints: call.peer_hints,
            body: &[],
        }
    }
}

/// Whether `req` asks the forward-auth endpoint: `None` when it does not (or forward-auth
/// is off), else the request it describes or the refusal of the call.
pub fn described(config: &Config, req: &RequestParts<'_>) -> Option<Result<Original, Response>> {
    config.forward_auth.as_ref()?;
    let path = req.uri.path();
    let rest = path.strip_prefix(FORWARD_AUTH_PATH)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let refuse = |reason: Reason, detail: &str| {
        crate::decision::problem(reason, detail, req.request_id, &[])
    };
    let peer = req.peer.map(crate::client::canonical);
    let trusted =
        peer.is_some_and(|ip| config.client.trusted_proxies.iter().any(|n| n.contains(ip)));
    if !trusted {
        return Some(Err(refuse(
            Reason::ForwardAuthUntrusted,
            "only a proxy in [client] trusted_proxies may ask for a forward-auth decision",
        )));
    }
    Some(describe(req, rest).map_err(|(reason, detail)| refuse(reason, &detail)))
}

fn describe(req: &RequestParts<'_>, rest: &str) -> Result<Original, (Reason, String)> {
    // The call's own Host is refused as any request's would be (every runtime alike).
    let own = crate::normalize::authority(req.uri, req.headers)
        .map_err(|detail| (Reason::HostInvalid, detail))?;
    from_headers(req, rest, own).map_err(|detail| (Reason::ForwardAuthInvalid, detail))
}

fn from_headers(
    req: &RequestParts<'_>,
    rest: &str,
    own: crate::canonical::Authority,
) -> Result<Original, String> {
    let one = |names: &[&str]| -> Result<Option<&str>, String> {
        let mut found = None;
        for name in names {
            for v in req.headers.get_all(*name) {
                if found.is_some() {
                    return Err(format!("more than one {}", names.join(" or ")));
                }
                let text = v
                    .to_str()
                    .map_err(|_| format!("{name} is not ASCII"))?
                    .trim();
                found = Some(text);
            }
        }
        Ok(found)
    };
    let method = match one(&["x-forwarded-method", "x-original-method"])? {
        Some(m) => Method::from_bytes(m.as_bytes()).map_err(|_| format!("method {m:?}"))?,
        None => req.method.clone(),
    };
    let target = match one(&["x-forwarded-uri", "x-original-uri"])? {
        Some(t) => t.to_owned(),
        None if !rest.is_empty() => {
            let query = req.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            format!("{rest}{query}")
        }
        None => {
            return Err(
                "the original target is missing: send X-Forwarded-Uri or X-Original-URI, or append it to the path"
                    .into(),
            );
        }
    };
    if !target.starts_with('/') {
        return Err(format!(
            "the original target {target:?} is not in origin form"
        ));
    }
    let described_host = one(&["x-forwarded-host"])?;
    let host = match described_host {
        Some(h) => h.to_owned(),
        None => own.to_header(),
    };
    let scheme = match one(&["x-forwarded-proto"])? {
        None => req.uri.scheme_str().unwrap_or("http").to_ascii_lowercase(),
        Some(p) if p.eq_ignore_ascii_case("https") => "https".into(),
        Some(p) if p.eq_ignore_ascii_case("http") => "http".into(),
        Some(p) => return Err(format!("X-Forwarded-Proto {p:?} is not http or https")),
    };
    let authority = crate::canonical::Authority::parse(&host).map_err(|e| format!("host: {e}"))?;
    let uri: Uri = format!("{scheme}://{}{target}", authority.to_header())
        .parse()
        .map_err(|_| format!("the original target {target:?} is not a valid URI"))?;
    if uri
        .path()
        .get(..FORWARD_AUTH_PATH.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(FORWARD_AUTH_PATH))
    {
        return Err("the original target is the forward-auth endpoint itself".into());
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for (name, value) in req.headers {
        if !DESCRIBING.contains(&name.as_str()) && name != http::header::HOST {
            headers.append(name.clone(), value.clone());
        }
    }
    let host_value =
        HeaderValue::from_str(&authority.to_header()).map_err(|_| "host is not a header value")?;
    headers.insert(http::header::HOST, host_value);
    Ok(Original {
        method,
        uri,
        headers,
    })
}

/// The answer to a forward-auth call the gateway would forward: 200, the headers to set on
/// the request (identity, gateway token, the client's cookies without the gateway's own,
/// `traceparent`; not the forwarding headers, which are the proxy's), the ones to remove
/// ([`HEADERS_TO_REMOVE`]), the response headers for the client (`Set-Cookie`,
/// `RateLimit`), and with `routing_headers` the chosen backend and region.
pub fn answer(config: &Config, fa: &ForwardAuth, fwd: Forward) -> Response {
    let forwarding = |n: &HeaderName| crate::forwarding::REMOVED.contains(&n.as_str());
    let mut headers: Vec<(HeaderName, HeaderValue)> = fwd
        .set_headers
        .into_iter()
        .filter(|(n, _)| !forwarding(n))
        .collect();
    // A header the answer sets replaces the client's: only the others are to be removed
    // (Envoy removes after setting).
    let remove: Vec<&str> = fwd
        .remove_headers
        .iter()
        .filter(|n| !forwarding(n) && !headers.iter().any(|(s, _)| s == *n))
        .map(HeaderName::as_str)
        .collect();
    if !remove.is_empty()
        && let Ok(v) = HeaderValue::from_str(&remove.join(","))
    {
        headers.push((HeaderName::from_static(HEADERS_TO_REMOVE), v));
    }
    if fa.routing_headers
        && let Some(region) = config.regions.get(fwd.backend.region.0)
        && let Some(backend) = region.backends.get(fwd.backend.index)
    {
        let url = format!("{}://{}", backend.scheme, backend.authority);
        if let (Ok(b), Ok(r)) = (
            HeaderValue::from_str(&url),
            HeaderValue::from_str(&region.name),
        ) {
            headers.push((HeaderName::from_static("x-portcullis-backend"), b));
            headers.push((HeaderName::from_static("x-portcullis-region"), r));
        }
    }
    headers.extend(fwd.response_headers);
    if !headers
        .iter()
        .any(|(n, _)| n == http::header::CACHE_CONTROL)
    {
        headers.push((
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        ));
    }
    Response {
        status: StatusCode::OK,
        headers,
        body: Vec::new(),
        // Not recorded: a success carries no reason.
        reason: Reason::InvalidRequest,
    }
}
