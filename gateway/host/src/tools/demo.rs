//! `portcullis demo`: the gateway with `edge-config/demo.toml`, a demo issuer (discovery and
//! key set) and two regional echo backends, all on 127.0.0.1, plus ready-to-paste curl
//! commands with freshly minted tokens.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use portcullis_core::b64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The demo configuration.
pub const DEMO_CONFIG: &str = include_str!("../../../../edge-config/demo.toml");
const DEMO_AUDIT_KEY: &[u8] = include_bytes!("../../../../edge-config/secrets/demo-audit.key");
/// Where the demo issuer listens.
pub const ISSUER_ADDR: &str = "127.0.0.1:9000";
/// The EU and US echo backends.
pub const BACKENDS: [(&str, &str); 2] = [("eu", "127.0.0.1:9101"), ("us", "127.0.0.1:9201")];

/// A demo token issuer with one ES256 key.
pub struct DemoIssuer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// Its issuer URL.
    pub issuer: String,
}

impl DemoIssuer {
    /// A fresh key.
    pub fn generate(issuer: &str) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("key generation"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("key"))?;
        Ok(Self {
            key,
            rng,
            issuer: issuer.to_owned(),
        })
    }

    /// The public key set.
    pub fn jwks(&self) -> Value {
        let point = self.key.public_key().as_ref();
        let (x, y) = (
            point.get(1..33).unwrap_or_default(),
            point.get(33..65).unwrap_or_default(),
        );
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "demo-1", "alg": "ES256", "use": "sig", "x": b64::encode(x), "y": b64::encode(y)}]})
    }

    /// Signs an access token with `claims` (issuer, audience and lifetime added).
    pub fn mint(&self, claims: Value) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let mut payload =
            json!({"iss": self.issuer, "aud": "api://demo", "iat": now, "exp": now + 3600});
        if let (Some(p), Value::Object(extra)) = (payload.as_object_mut(), claims) {
            p.extend(extra);
        }
        let header = json!({"alg": "ES256", "kid": "demo-1", "typ": "at+jwt"});
        let input = format!(
            "{}.{}",
            b64::encode(header.to_string().as_bytes()),
            b64::encode(payload.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing"))?;
        Ok(format!("{input}.{}", b64::encode(sig.as_ref())))
    }
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Serves `handler` on `listener` forever.
pub async fn serve_fn<F>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let h = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h(req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves discovery and the key set of `issuer`.
pub async fn serve_issuer(listener: TcpListener, issuer: Arc<DemoIssuer>) {
    serve_fn(listener, move |req| match req.uri().path() {
        "/.well-known/openid-configuration" => json_response(
            200,
            &json!({"issuer": issuer.issuer, "jwks_uri": format!("{}/jwks.json", issuer.issuer), "id_token_signing_alg_values_supported": ["ES256"]}),
        ),
        "/jwks.json" => json_response(200, &issuer.jwks()),
        _ => json_response(404, &json!({"error": "not found"})),
    })
    .await;
}

/// An echo backend: answers with what it received, naming its region.
pub async fn serve_echo(listener: TcpListener, region: &'static str) {
    serve_fn(listener, move |req| {
        let headers: BTreeMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        json_response(200, &json!({"backend": region, "method": req.method().as_str(), "path": req.uri().to_string(), "headers": headers}))
    })
    .await;
}

/// Runs the demo until Ctrl-C.
pub async fn run(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    let issuer = Arc::new(DemoIssuer::generate(&format!("http://{ISSUER_ADDR}"))?);
    tokio::spawn(serve_issuer(
        crate::serve::bind("the demo issuer", ISSUER_ADDR.parse()?).await?,
        issuer.clone(),
    ));
    for (region, addr) in BACKENDS {
        let what = format!("the demo's {region} backend");
        tokio::spawn(serve_echo(
            crate::serve::bind(&what, addr.parse()?).await?,
            region,
        ));
    }
    let files = BTreeMap::from([("secrets/demo-audit.key".to_owned(), DEMO_AUDIT_KEY.to_vec())]);
    let map = portcullis_core::MapFiles(files.clone());
    let config = portcullis_core::config::load(DEMO_CONFIG, "edge-config/demo.toml", &map)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let loaded = crate::config::LoadedConfig {
        config,
        source: DEMO_CONFIG.to_owned(),
        files,
        base: std::path::PathBuf::from("."),
    };
    let opts = crate::serve::ServeOptions {
        audit: "-".into(),
        ..crate::serve::ServeOptions::default()
    };
    let prepared = crate::serve::prepare(loaded, &opts).await?;
    let listener = crate::serve::bind("--listen", listen).await?;
    let admin_listener = crate::serve::bind("--admin", admin).await?;

    let eu =
        issuer.mint(json!({"sub": "alice", "residency": "eu", "scope": "orders:read profile"}))?;
    let us = issuer.mint(json!({"sub": "bob", "residency": "us", "scope": "orders:read"}))?;
    let no_scope = issuer.mint(json!({"sub": "carol", "residency": "eu", "scope": "profile"}))?;
    let base = format!("http://{listen}");
    println!(
        "Portcullis demo: gateway on {base} (admin http://{admin}), demo issuer http://{ISSUER_ADDR}, backends eu=127.0.0.1:9101 us=127.0.0.1:9201.\n\
         Audit records follow on this terminal. Try:\n\n\
         # an EU resident is routed to the EU backend, with verified identity headers\n\
         curl -s {base}/api/orders -H 'authorization: Bearer {eu}'\n\n\
         # a US resident goes to the US backend\n\
         curl -s {base}/api/orders -H 'authorization: Bearer {us}'\n\n\
         # no token: 401 with WWW-Authenticate and a problem document\n\
         curl -si {base}/api/orders\n\n\
         # a token without the orders:read scope: 403 insufficient_scope\n\
         curl -si {base}/api/orders -H 'authorization: Bearer {no_scope}'\n\n\
         # a spoofed x-user-id is stripped; the backend sees the verified one (alice)\n\
         curl -s {base}/api/orders -H 'x-user-id: admin' -H 'authorization: Bearer {eu}'\n\n\
         # bot defence: curl scores as automation, so /signup asks for a challenge (403);\n\
         # open {base}/signup in a browser to solve the proof-of-work page instead\n\
         curl -si {base}/signup\n\n\
         # the same route allows a burst of 3 per address, then 5 a minute: 200s turn into 429s\n\
         for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} ' {base}/signup -A Mozilla/5.0; done; echo\n\n\
         # metrics and readiness\n\
         curl -s http://{admin}/metrics | grep portcullis_requests_total\n\n\
         Ctrl-C stops everything.\n"
    );
    crate::serve::serve(
        prepared,
        listener,
        admin_listener,
        crate::serve::shutdown_signal(),
        crate::serve::reload::Reload {
            source: None,
            read: None,
            opts,
            watch: None,
        },
    )
    .await;
    Ok(())
}
