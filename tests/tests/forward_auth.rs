//! Issue 19: forward-auth mode. Real nginx (`auth_request`) and real Envoy (`ext_authz`,
//! HTTP) in front of the gateway make the same decisions as the gateway inline on the same
//! cases — status, the backend the residency rules chose (the proxies route on
//! `X-Portcullis-Backend` / `X-Portcullis-Region`), the identity headers the backend gets
//! and the client-supplied ones it never gets — on both engines. Calls from peers that are
//! not trusted proxies, and calls that describe no request, are refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use portcullis_tests::host::{Gateway, reason};
use portcullis_tests::net::{Backend, Resp, request};
use portcullis_tests::proxies::{Proxy, envoy, nginx};
use portcullis_tests::{
    INTERNAL_ISSUER_TABLE, INTERNAL_SECRET, b64, internal_key_file, internal_token,
    on_every_engine, unix_now,
};
use serde_json::{Value, json};

fn config(eu: &str, us: &str, trusted: &str) -> String {
    format!(
        r#"{INTERNAL_ISSUER_TABLE}
[region.eu]
jurisdiction = "EU"
backends = ["{eu}"]

[region.us]
jurisdiction = "US"
backends = ["{us}"]

[residency]
claim = "residency"
missing = "us"
anonymous = "us"

[[route]]
path = "/api/orders"
auth = "required"
scopes_any = ["orders:read"]

[[route]]
path = "/public"
auth = "public"

[identity]
strip = ["x-user-*"]
headers = {{ "x-user-id" = "sub", "x-user-region" = "region" }}

[client]
trusted_proxies = ["{trusted}"]

[forward_auth]

[audit]
subject_key_file = "audit.key"
"#
    )
}

struct World {
    eu: Backend,
    us: Backend,
    gw: Gateway,
}

fn world(engine: &str, trusted: &str) -> World {
    let eu = Backend::start("eu");
    let us = Backend::start("us");
    let gw = portcullis_tests::host::start_engine_with(
        &config(&eu.server.url(), &us.server.url(), trusted),
        engine,
        &[internal_key_file()],
    );
    World { eu, us, gw }
}

fn token(extra: Value) -> String {
    internal_token(extra)
}

/// One case: what the client sends.
struct Case {
    name: &'static str,
    path: &'static str,
    token: Option<String>,
    headers: Vec<(&'static str, &'static str)>,
}

fn cases() -> Vec<Case> {
    let case = |name, path, token: Option<String>, headers| Case {
        name,
        path,
        token,
        headers,
    };
    vec![
        case(
            "eu resident",
            "/api/orders?id=7",
            Some(token(json!({}))),
            vec![],
        ),
        case(
            "us resident",
            "/api/orders",
            Some(token(json!({"residency": "us", "sub": "user-2"}))),
            vec![],
        ),
        case("no token", "/api/orders", None, vec![]),
        case(
            "missing scope",
            "/api/orders",
            Some(token(json!({"scope": "profile"}))),
            vec![],
        ),
        case(
            "expired",
            "/api/orders",
            Some(token(json!({"exp": unix_now() - 600}))),
            vec![],
        ),
        case(
            "spoofed identity on a public route",
            "/public/page",
            None,
            vec![("x-user-id", "admin"), ("x-user-region", "eu")],
        ),
        case(
            "spoofed identity beside a token",
            "/api/orders",
            Some(token(json!({}))),
            vec![("x-user-id", "admin")],
        ),
    ]
}

/// What a client saw, and what reached a backend: (status, backend, x-user-id,
/// x-user-region, reason).
type Seen = (u16, Option<String>, Option<String>, Option<String>, String);

fn send(addr: std::net::SocketAddr, case: &Case, w: &World) -> Seen {
    let auth = case.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    headers.extend(case.headers.iter().copied());
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let (eu_before, us_before) = (hits(&w.eu), hits(&w.us));
    let r = request(addr, "GET", case.path, &headers, b"").unwrap();
    let reached = if hits(&w.eu) > eu_before {
        Some(&w.eu)
    } else if hits(&w.us) > us_before {
        Some(&w.us)
    } else {
        None
    };
    let header = |b: &Backend, name: &str| {
        b.last
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (
        r.status,
        reached.map(|b| {
            body["backend"].as_str().unwrap_or("?").to_owned() + &format!("@{}", b.server.url())
        }),
        reached.and_then(|b| header(b, "x-user-id")),
        reached.and_then(|b| header(b, "x-user-region")),
        reason_of(&r),
    )
}

fn hits(b: &Backend) -> usize {
    b.hits.load(std::sync::atomic::Ordering::SeqCst)
}

fn reason_of(r: &Resp) -> String {
    if r.status == 200 {
        String::new()
    } else {
        reason(r)
    }
}

/// nginx in front of `gw`: `auth_request` asks the gateway, the identity headers it answers
/// replace the client's, and the request goes to the backend it names.
fn nginx_in_front(gw: &Gateway) -> Proxy {
    nginx(&format!(
        r#"
    location = /_portcullis/authz {{
      internal;
      proxy_pass http://{gw}/_portcullis/authz;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
    location / {{
      auth_request /_portcullis/authz;
      auth_request_set $portcullis_backend $upstream_http_x_portcullis_backend;
      auth_request_set $user_id $upstream_http_x_user_id;
      auth_request_set $user_region $upstream_http_x_user_region;
      proxy_set_header X-User-Id $user_id;
      proxy_set_header X-User-Region $user_region;
      proxy_pass $portcullis_backend;
    }}
"#,
        gw = gw.addr
    ))
}

/// Envoy in front of `gw`: `ext_authz` over HTTP with `path_prefix`, the answer's identity
/// headers allowed upstream, its removals applied, and the route chosen again on the
/// region it names (`clear_route_cache`).
fn envoy_in_front(w: &World) -> Proxy {
    let cluster = |name: &str, addr: &str| {
        let (host, port) = addr.trim_start_matches("http://").rsplit_once(':').unwrap();
        format!(
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {host}, port_value: {port} }}"#
        )
    };
    let gw = format!("http://{}", w.gw.addr);
    envoy(&format!(
        r#"
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {{ADMIN}} }}
static_resources:
  listeners:
  - name: front
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {{PORT}} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match:
                  prefix: "/"
                  headers: [{{ name: x-portcullis-region, string_match: {{ exact: eu }} }}]
                route: {{ cluster: eu }}
              - match:
                  prefix: "/"
                  headers: [{{ name: x-portcullis-region, string_match: {{ exact: us }} }}]
                route: {{ cluster: us }}
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 599 }}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              clear_route_cache: true
              allowed_headers:
                patterns: [{{ safe_regex: {{ regex: ".*" }} }}]
              http_service:
                server_uri: {{ uri: "{gw}", cluster: portcullis, timeout: 5s }}
                path_prefix: /_portcullis/authz
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{{ prefix: x-user- }}, {{ exact: x-portcullis-region }}]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:{portcullis}{eu}{us}
"#,
        portcullis = cluster("portcullis", &gw),
        eu = cluster("eu", &w.eu.server.url()),
        us = cluster("us", &w.us.server.url()),
    ))
}

fn a_proxy_in_front_decides_as_the_gateway_inline(engine: &str) {
    let w = world(engine, "127.0.0.1/32");
    let nginx = nginx_in_front(&w.gw);
    let envoy = envoy_in_front(&w);
    for case in cases() {
        let inline = send(w.gw.addr, &case, &w);
        let via_envoy = send(envoy.addr, &case, &w);
        assert_eq!(via_envoy, inline, "{}: Envoy vs inline", case.name);
        let via_nginx = send(nginx.addr, &case, &w);
        // nginx passes 2xx, 401 and 403 on (any other answer of the subrequest becomes 500);
        // its 401/403 pages are its own, so compare the status and what reached a backend.
        assert_eq!(
            (via_nginx.0, &via_nginx.1, &via_nginx.2, &via_nginx.3),
            (inline.0, &inline.1, &inline.2, &inline.3),
            "{}: nginx vs inline",
            case.name
        );
        match case.name {
            "eu resident" => {
                assert_eq!(inline.0, 200);
                assert!(inline.1.as_deref().unwrap().starts_with("eu@"));
                assert_eq!(inline.2.as_deref(), Some("user-1"));
                assert_eq!(inline.3.as_deref(), Some("eu"));
            }
            "us resident" => {
                assert!(inline.1.as_deref().unwrap().starts_with("us@"));
                assert_eq!(inline.2.as_deref(), Some("user-2"));
            }
            "no token" | "expired" => assert_eq!(inline.0, 401, "{}", case.name),
            "missing scope" => assert_eq!(inline.4, "insufficient_scope"),
            "spoofed identity on a public route" => {
                assert_eq!(inline.0, 200);
                // The spoofed user is gone; the region is the gateway's (anonymous: us).
                assert_eq!(
                    (inline.2.as_deref(), inline.3.as_deref()),
                    (None, Some("us"))
                );
            }
            "spoofed identity beside a token" => assert_eq!(inline.2.as_deref(), Some("user-1")),
            _ => {}
        }
    }
    // Envoy passes the whole refusal on: the problem body and the challenge.
    let r = request(envoy.addr, "GET", "/api/orders", &[], b"").unwrap();
    assert_eq!(reason(&r), "authentication_required");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    // The gateway audited the described request (path, region), not its own endpoint.
    let records = portcullis_tests::host::audit_records(&w.gw, |r| {
        r.iter()
            .filter(|x| x["path"] == "/api/orders" && x["region"] == "eu")
            .count()
            >= 6
    });
    assert!(records.iter().all(|r| r["path"] != "/_portcullis/authz"));
}

/// Traefik ForwardAuth and Caddy `forward_auth` describe the request in `X-Forwarded-*`
/// headers to a fixed address; an untrusted peer, a call that describes nothing and a
/// described target that is the endpoint itself are refused.
fn the_forwarded_header_convention_and_refused_calls(engine: &str) {
    let w = world(engine, "127.0.0.1/32");
    let t = format!("Bearer {}", token(json!({})));
    let r = request(
        w.gw.addr,
        "GET",
        "/_portcullis/authz",
        &[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.test"),
            ("x-forwarded-uri", "/api/orders?id=1"),
            ("x-forwarded-for", "198.51.100.7"),
            ("authorization", &t),
            ("x-user-id", "admin"),
            ("x-user-role", "admin"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-user-id"), Some("user-1"));
    assert_eq!(r.header("x-portcullis-region"), Some("eu"));
    assert_eq!(
        r.header("x-portcullis-backend"),
        Some(w.eu.server.url().as_str())
    );
    // A spoofed identity header the answer sets is replaced; one it does not set is to be
    // removed.
    assert_eq!(
        r.header("x-envoy-auth-headers-to-remove"),
        Some("x-user-role")
    );
    assert_eq!(hits(&w.eu) + hits(&w.us), 0, "forward-auth never forwards");
    // A POST described as such is decided as a POST (public route here).
    let r = request(
        w.gw.addr,
        "GET",
        "/_portcullis/authz",
        &[
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-uri", "/public/x"),
            ("x-forwarded-host", "shop.test"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let records =
        portcullis_tests::host::audit_records(&w.gw, |r| r.iter().any(|x| x["method"] == "DELETE"));
    let record = records.iter().find(|x| x["method"] == "DELETE").unwrap();
    assert_eq!(record["path"], "/public/x");

    let refused = |headers: &[(&str, &str)], path: &str| {
        let r = request(w.gw.addr, "GET", path, headers, b"").unwrap();
        (r.status, reason(&r))
    };
    assert_eq!(
        refused(&[], "/_portcullis/authz"),
        (400, "forward_auth_invalid".into())
    );
    assert_eq!(
        refused(
            &[("x-forwarded-uri", "/a"), ("x-original-uri", "/b")],
            "/_portcullis/authz"
        ),
        (400, "forward_auth_invalid".into())
    );
    assert_eq!(
        refused(
            &[("x-forwarded-uri", "/_portcullis/authz/x")],
            "/_portcullis/authz"
        ),
        (400, "forward_auth_invalid".into())
    );
    assert_eq!(
        refused(
            &[("x-forwarded-uri", "https://evil.test/x")],
            "/_portcullis/authz"
        ),
        (400, "forward_auth_invalid".into())
    );

    // The same call from a peer outside trusted_proxies.
    let untrusted = world(engine, "10.0.0.0/8");
    let r = request(
        untrusted.gw.addr,
        "GET",
        "/_portcullis/authz/api/orders",
        &[("authorization", &t)],
        b"",
    )
    .unwrap();
    assert_eq!(
        (r.status, reason(&r)),
        (403, "forward_auth_untrusted".into())
    );
}

on_every_engine!(
    a_proxy_in_front_decides_as_the_gateway_inline,
    the_forwarded_header_convention_and_refused_calls,
);

/// Without `[client] trusted_proxies`, `[forward_auth]` is a startup error.
#[test]
fn forward_auth_needs_trusted_proxies() {
    let text = config("http://127.0.0.1:9", "http://127.0.0.1:9", "127.0.0.1/32")
        .replace("[client]\ntrusted_proxies = [\"127.0.0.1/32\"]\n", "");
    let files = portcullis_core::config::MapFiles::default()
        .with("hs.key", b64(&INTERNAL_SECRET))
        .with("audit.key", b64(&portcullis_tests::AUDIT_KEY));
    let err = portcullis_core::config::load(&text, "t.toml", &files).unwrap_err();
    assert!(
        err.to_string().contains("trusted_proxies")
            || format!("{err:?}").contains("trusted_proxies"),
        "{err:?}"
    );
}
