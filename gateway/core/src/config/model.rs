//! The validated configuration the engine runs on; built only by [`super::load`].

use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::Algorithm;
use crate::jwk::ParsedJwks;
pub use crate::model::{IssuerId, PluginId, RegionId};

/// A loaded, validated deployment configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// Token issuers, in file order ([`IssuerId`] indexes this).
    pub issuers: Vec<IssuerConfig>,
    /// Regions, in name order ([`RegionId`] indexes this).
    pub regions: Vec<Region>,
    /// How a user's home region is found.
    pub residency: Residency,
    /// Routes, in file order.
    pub routes: Vec<Route>,
    /// Identity headers: what is stripped, what is injected.
    pub identity: Identity,
    /// Audit settings.
    pub audit: AuditConfig,
    /// Request limits.
    pub limits: Limits,
    /// Risk plugins, in name order ([`PluginId`] indexes this).
    pub plugins: Vec<PluginConfig>,
    /// Which peers are trusted proxies, and the headers they set.
    pub client: ClientConfig,
    /// Short-lived gateway-signed identity tokens for backends, if configured.
    pub gateway_token: Option<GatewayToken>,
    /// DPoP proof checks.
    pub dpop: DpopConfig,
    /// Shared state (in memory or Redis) and what happens when it is unreachable.
    pub state: StateConfig,
    /// The proof-of-work challenge.
    pub challenge: ChallengeConfig,
    /// Data for the built-in bot checks routes switch on (`[bot]`).
    pub bot: BotConfig,
    /// Browser sessions from the gateway's own OIDC login (`[session]`), if configured.
    pub session: Option<SessionConfig>,
    /// How request paths are read and matched (`[paths]`).
    pub paths: PathRules,
    /// Connection limits of the gateway's own listener (`[server]`).
    pub server: ServerLimits,
    /// TLS on the gateway's own listener (`[server.tls]`), if configured.
    pub tls: Option<ServerTls>,
    /// Forward-auth mode (`[forward_auth]`): trusted proxies may ask the gateway to decide
    /// a request they will forward themselves.
    pub forward_auth: Option<ForwardAuth>,
    /// How long a backend may take (`[timeouts]`).
    pub timeouts: BackendTimeouts,
}

/// How request paths are read and matched (`[paths]`). Paths are always put in their
/// RFC 3986 canonical form first (see [`crate::canonical::canonical_path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRules {
    /// `semicolons = "allow"`: keep `;` in path segments. The default, `"refuse"`, answers
    /// 400 `path_invalid`, because servlet containers read `/admin;x=1` as `/admin`.
    pub allow_semicolons: bool,
    /// `case = "sensitive"` (the default, RFC 3986) or `"insensitive"` for backends that
    /// treat `/API/profile` as `/api/profile` (IIS, some servlet and Windows file servers):
    /// route prefixes and gateway paths then match in any ASCII case.
    pub case_sensitive: bool,
}

impl Default for PathRules {
    fn default() -> Self {
        Self {
            allow_semicolons: false,
            case_sensitive: true,
        }
    }
}

/// Connection limits of the gateway's own HTTP listener (`[server]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLimits {
    /// How long a client may take to send a request's headers (slow-loris guard).
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    pub idle_timeout: Duration,
    /// Open client connections at most; further ones wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// Forward-auth mode (`[forward_auth]`): a proxy in front of the gateway (nginx
/// `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`, Envoy `ext_authz`) asks
/// `/_portcullis/authz` whether to forward a request, describing it in its own headers;
/// the gateway decides it as if it had received it, and answers 200 with the identity
/// headers to set or its usual refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardAuth {
    /// Answer `X-Portcullis-Backend` and `X-Portcullis-Region`: the backend the residency
    /// rules chose, for the proxy to forward to.
    pub routing_headers: bool,
}

/// TLS on the gateway's own listener (`[server.tls]`): `portcullis serve` terminates TLS
/// itself, offering HTTP/2 and HTTP/1.1 by ALPN. The files are read (and re-read when they
/// change) by the host; edge platforms terminate TLS before the gateway and ignore this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTls {
    /// The certificates, in order: a client's SNI name picks the first one valid for it;
    /// a client without SNI, or naming a host none covers, gets the first.
    pub certificates: Vec<TlsCertificate>,
    /// How often the files are checked for change (a changed file is loaded for new
    /// connections; a file that does not load keeps the previous certificates).
    pub watch: Duration,
    /// Offer HTTP/2 by ALPN (`h2`) besides HTTP/1.1.
    pub http2: bool,
}

/// One certificate of `[server.tls]`: PEM files, relative to the configuration's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsCertificate {
    /// The certificate chain, leaf first.
    pub cert: String,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// How long a backend may take (`[timeouts]`); past them the client gets 504
/// `backend_timeout` (503 `backend_unavailable` when the connection fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTimeouts {
    /// Establishing the connection.
    pub connect: Duration,
    /// From sending the request to the response's headers.
    pub response: Duration,
    /// The whole exchange, body included.
    pub total: Duration,
}

impl Default for BackendTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(30),
            total: Duration::from_secs(60),
        }
    }
}

/// One trusted token issuer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuerConfig {
    /// Short name used in logs, metrics and route `issuers` lists.
    pub name: String,
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (a token must carry one).
    pub audiences: Vec<String>,
    /// Accepted algorithms (never empty).
    pub algorithms: Vec<Algorithm>,
    /// Tolerance for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// Where verification keys come from.
    pub keys: KeySource,
    /// Accepted `typ` header values, normalised (lowercase, no `application/`);
    /// `None` accepts any type except those of other JWT kinds (see [`FOREIGN_TOKEN_TYPES`]).
    pub token_types: Option<Vec<String>>,
    /// Key-set refresh policy.
    pub jwks_policy: JwksPolicy,
    /// Allows `http://` key-set and discovery URLs (local testing only).
    pub insecure_http_jwks: bool,
    /// The gateway's login client at this provider (`[issuer.login]`), if browsers sign in
    /// through it.
    pub login: Option<LoginClient>,
    /// Where this issuer's tokens carry their scopes, when not in `scope` / `scp` (Keycloak:
    /// `realm_access.roles`): an array of strings or a space-separated string.
    pub scopes_claim: Option<crate::model::ClaimPath>,
    /// A multi-tenant issuer (`issuer` holds [`TENANT_PLACEHOLDER`]): the tenants whose
    /// tokens are accepted. Empty for a plain issuer.
    pub tenants: Vec<String>,
    /// Opaque access tokens of this issuer are checked at its RFC 7662 introspection
    /// endpoint (`[issuer.introspection]`).
    pub introspection: Option<Introspection>,
    /// Where this issuer's tokens carry the purposes the user consented to
    /// (`[issuer.consent]`), for routes with `consent`.
    pub consent: Option<ConsentConfig>,
    /// Access tokens carrying a `sid` end with that provider session: once a back-channel
    /// logout names it, or the gateway revoked a browser session signed in through it
    /// (`revoke`), they are refused (`session_bound_tokens`, needs `[issuer.login]`).
    #[serde(default)]
    pub session_bound_tokens: bool,
}

/// Where an issuer's tokens (and ID tokens) list the purposes a user granted, and the scope
/// that asks the provider for each (`[issuer.consent]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentConfig {
    /// The claim holding the granted purposes: an array of strings or a space-separated
    /// string.
    pub claim: crate::model::ClaimPath,
    /// Purpose → the scope a browser asks the provider for to grant it (default: the
    /// purpose itself).
    pub scopes: Vec<(String, String)>,
}

impl ConsentConfig {
    /// The scope that asks for `purpose`.
    pub fn scope_for<'a>(&'a self, purpose: &'a str) -> &'a str {
        self.scopes
            .iter()
            .find(|(p, _)| p == purpose)
            .map_or(purpose, |(_, s)| s.as_str())
    }

    /// The purposes `claims` say were granted (none when the claim is absent or of
    /// another shape).
    pub fn granted<'a>(
        &self,
        claims: &'a serde_json::Map<String, serde_json::Value>,
    ) -> Vec<&'a str> {
        match self.claim.get(claims) {
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(serde_json::Value::as_str).collect()
            }
            Some(serde_json::Value::String(s)) => s.split(' ').filter(|p| !p.is_empty()).collect(),
            _ => Vec::new(),
        }
    }
}

/// The gateway as an RFC 7662 introspection client of one issuer (`[issuer.introspection]`):
/// opaque (non-JWT) access tokens are sent to the `introspection_endpoint` its discovery
/// document names, and the answers are cached in the shared state by token hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Introspection {
    /// The client id the gateway authenticates as (often the API's resource-server client).
    pub client_id: String,
    /// How it authenticates (with its secret or key).
    pub client_auth: crate::client_auth::ClientAuth,
    /// The longest an active answer is reused (never past the token's `exp`).
    pub cache_ttl: Duration,
    /// How long an inactive answer is reused (a refused token is not asked about again
    /// within it).
    pub negative_ttl: Duration,
}

impl Config {
    /// The private key of a configured client (`[issuer.login]` or
    /// `[issuer.introspection]` with `client_auth = "private_key_jwt"`) whose public key has
    /// the RFC 7638 thumbprint `thumbprint`: what a host signs a wasm gateway's client
    /// assertions with.
    pub fn client_key(&self, thumbprint: &str) -> Option<&crate::client_auth::ClientKey> {
        self.issuers
            .iter()
            .flat_map(|i| {
                let login = i.login.as_ref().map(|l| &l.client_auth);
                let introspection = i.introspection.as_ref().map(|c| &c.client_auth);
                login.into_iter().chain(introspection)
            })
            .find_map(|auth| match auth {
                crate::client_auth::ClientAuth::PrivateKeyJwt(key)
                    if key.thumbprint() == thumbprint =>
                {
                    Some(key)
                }
                _ => None,
            })
    }

    /// The `[gateway_token]` key whose key id (its RFC 7638 thumbprint) is `kid`.
    pub fn gateway_key(&self, kid: &str) -> Option<&GatewayKey> {
        self.gateway_token
            .as_ref()?
            .keys
            .iter()
            .find(|k| k.kid == kid)
    }
}

/// The placeholder of a multi-tenant issuer (Microsoft Entra's
/// `https://login.microsoftonline.com/{tenantid}/v2.0`).
pub const TENANT_PLACEHOLDER: &str = "{tenantid}";

impl IssuerConfig {
    /// The tenant an `iss` value names, when this is a multi-tenant issuer and `iss` is the
    /// template with one allowed tenant (a single path segment) in the placeholder's place.
    pub fn tenant_of<'a>(&self, iss: &'a str) -> Option<&'a str> {
        let (before, after) = self.issuer.split_once(TENANT_PLACEHOLDER)?;
        let tenant = iss.strip_prefix(before)?.strip_suffix(after)?;
        (!tenant.is_empty()
            && !tenant.contains(['/', '?', '#'])
            && self.tenants.iter().any(|t| t == tenant))
        .then_some(tenant)
    }

    /// True when tokens whose `iss` is `iss` are this issuer's: the exact value, or for a
    /// multi-tenant issuer the template with an allowed tenant.
    pub fn matches_iss(&self, iss: &str) -> bool {
        if self.tenants.is_empty() {
            self.issuer == iss
        } else {
            self.tenant_of(iss).is_some()
        }
    }
}

/// The gateway as an OpenID Connect relying party of one provider (`[issuer.login]`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginClient {
    /// The client id registered at the provider (the ID token's `aud`).
    pub client_id: String,
    /// How the gateway authenticates at the token endpoint (with its secret or key).
    pub client_auth: crate::client_auth::ClientAuth,
    /// Extra parameters of every authorization request (Auth0's `audience`, Google's
    /// `access_type`), in configuration order.
    pub authorize_params: Vec<(String, String)>,
    /// How the provider sends the answer back: in the callback's query, or as a form POST
    /// (`response_mode=form_post`, which Apple requires for scopes beyond `openid`).
    pub form_post: bool,
    /// Push authorization requests (RFC 9126) when the provider offers it.
    pub par: bool,
    /// The gateway's callback URL as registered (ends in `/_portcullis/callback`).
    pub redirect_uri: String,
    /// Where the provider sends the browser after RP-initiated logout.
    pub post_logout_redirect_uri: Option<String>,
    /// Scopes requested (always with `openid`).
    pub scopes: Vec<String>,
    /// The name shown on the provider-choice page.
    pub label: String,
}

impl std::fmt::Debug for LoginClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginClient")
            .field("client_id", &self.client_id)
            .field("client_auth", &self.client_auth)
            .field("authorize_params", &self.authorize_params)
            .field("form_post", &self.form_post)
            .field("par", &self.par)
            .field("redirect_uri", &self.redirect_uri)
            .field("post_logout_redirect_uri", &self.post_logout_redirect_uri)
            .field("scopes", &self.scopes)
            .field("label", &self.label)
            .finish()
    }
}

/// Browser sessions (`[session]`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionConfig {
    /// Cookie keys `(id, key)`: the first seals, all open (rotation).
    pub keys: Vec<(String, [u8; 32])>,
    /// The session cookie's base name (`__Host-…`); chunks are `<name>-0`, `<name>-1`, ….
    pub cookie: String,
    /// A session unused this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after login, used or not.
    pub absolute_lifetime: Duration,
    /// The cookie is re-issued (rolling idle timeout) when older than this.
    pub renew_after: Duration,
    /// The access token is refreshed this long before it expires (at most half its
    /// lifetime before, see [`crate::session::Session::needs_refresh`]).
    pub refresh_before: Duration,
    /// How long a login attempt (its state cookie) may take.
    pub login_timeout: Duration,
    /// Send the session's access token to the backend as `Authorization: Bearer`.
    pub forward_access_token: bool,
    /// What each difference from the sign-in's client scores (`[session.anomaly]`).
    pub anomaly: AnomalyWeights,
}

/// The score of each way a session's request differs from its sign-in or its recent uses
/// (`[session.anomaly]`, the `session_anomaly` check), and the limits of the use rules; the
/// check scores the sum, at most 100.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnomalyWeights {
    /// Another /24 or /64.
    pub network: u8,
    /// Another autonomous system.
    pub asn: u8,
    /// Another country.
    pub country: u8,
    /// Another browser family or major version.
    pub agent: u8,
    /// Another platform.
    pub platform: u8,
    /// Added per other anomaly of the same user (any channel) within the hour.
    pub repeated: u8,
    /// Impossible travel since the last use on another network (both located).
    pub travel: u8,
    /// Concurrent use: a distant network used between two uses from this one, within
    /// `concurrent_window`.
    pub concurrent: u8,
    /// Faster than this between two uses is impossible travel, km/h.
    pub max_speed_kmh: u32,
    /// How recent the other network's use must be to count as concurrent.
    pub concurrent_window: Duration,
    /// Two located networks at least this far apart are distant, km (unlocated ones are
    /// distant when their autonomous systems differ).
    pub distant_km: u32,
}

impl Default for AnomalyWeights {
    fn default() -> Self {
        Self {
            network: 20,
            asn: 30,
            country: 50,
            agent: 60,
            platform: 60,
            repeated: 20,
            travel: 70,
            concurrent: 50,
            max_speed_kmh: 1000,
            concurrent_window: Duration::from_secs(300),
            distant_km: 300,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            cookie: "__Host-portcullis-session".to_owned(),
            idle_timeout: Duration::from_secs(3600),
            absolute_lifetime: Duration::from_secs(12 * 3600),
            renew_after: Duration::from_secs(300),
            refresh_before: Duration::from_secs(60),
            login_timeout: Duration::from_secs(600),
            forward_access_token: false,
            anomaly: AnomalyWeights::default(),
        }
    }
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("SessionConfig")
            .field("keys", &kids)
            .field("cookie", &self.cookie)
            .field("idle_timeout", &self.idle_timeout)
            .field("absolute_lifetime", &self.absolute_lifetime)
            .field("renew_after", &self.renew_after)
            .field("refresh_before", &self.refresh_before)
            .field("login_timeout", &self.login_timeout)
            .field("forward_access_token", &self.forward_access_token)
            .finish()
    }
}

/// `typ` values of JWTs that are never access tokens; refused unless listed explicitly.
pub const FOREIGN_TOKEN_TYPES: [&str; 5] = [
    "dpop+jwt",
    "logout+jwt",
    "secevent+jwt",
    "token-introspection+jwt",
    "jwk-set+jwt",
];

/// Where an issuer's keys come from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum KeySource {
    /// A JWK Set URL.
    JwksUri(String),
    /// The discovery document at this URL names the JWK Set.
    Discovery(String),
    /// A key set fixed at load time (`jwks_file`, or an HMAC secret as an `oct` key).
    Static(ParsedJwks),
}

/// When key sets are refreshed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwksPolicy {
    /// Lower bound on freshness, whatever `Cache-Control` says.
    pub refresh_min: Duration,
    /// Upper bound on freshness.
    pub refresh_max: Duration,
    /// How long past freshness the last good set keeps serving while fetches fail.
    pub max_stale: Duration,
    /// Minimum time between unknown-`kid` refetches.
    pub unknown_kid_interval: Duration,
}

impl Default for JwksPolicy {
    fn default() -> Self {
        Self {
            refresh_min: Duration::from_secs(300),
            refresh_max: Duration::from_secs(86_400),
            max_stale: Duration::from_secs(86_400),
            unknown_kid_interval: Duration::from_secs(30),
        }
    }
}

/// A data-residency region.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Region {
    /// The region's name (the value of the residency claim).
    pub name: String,
    /// The legal jurisdiction; failover never leaves it.
    pub jurisdiction: String,
    /// Backends serving this region.
    pub backends: Vec<Backend>,
    /// Regions (same jurisdiction, checked at load) to use when none of ours is healthy.
    pub failover: Vec<RegionId>,
    /// How this region's backends must prove who they are (`[region.NAME.tls]`), if set.
    pub tls: Option<BackendTls>,
}

/// What a region's TLS backends must prove before a request is sent to them
/// (`[region.NAME.tls]`), and the certificate the gateway presents. The host reads the
/// files; runtimes whose platform makes the connection (the bundle, the Worker) cannot
/// check this and refuse such a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTls {
    /// PEM trust anchors (a private CA); `None`: the public web roots.
    pub ca: Option<String>,
    /// The identity the backend's certificate must carry.
    pub identity: BackendIdentity,
    /// SHA-256 digests of accepted SubjectPublicKeyInfos (the leaf's key must be one);
    /// empty: any key.
    pub pins: Vec<[u8; 32]>,
    /// The gateway's client certificate chain and key (mTLS), PEM files.
    pub client: Option<(String, String)>,
}

/// The identity a backend's certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendIdentity {
    /// The host of the backend's URL (a DNS name or IP address SAN), as any https client.
    UrlHost,
    /// This DNS name instead (a backend reached by address, or behind a shared front).
    DnsName(String),
    /// This SPIFFE ID as the URI SAN of an X.509-SVID (its DNS names are not checked).
    Spiffe(String),
}

/// A backend origin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// The URL as configured, without a trailing slash.
    pub url: String,
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
}

/// A region choice that may be "refuse".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionChoice {
    /// Use this region.
    Region(RegionId),
    /// Refuse the request.
    Deny,
}

/// How a user's home region is found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Residency {
    /// The claim naming the home region.
    pub claim: String,
    /// For authenticated users without the claim.
    pub missing: RegionChoice,
    /// For requests without identity (public routes, optional routes without a token).
    pub anonymous: RegionChoice,
}

/// Whether a route needs a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMode {
    /// A valid token is required.
    Required,
    /// A token is verified when present; requests without one pass anonymously.
    Optional,
    /// No token is looked at.
    Public,
}

/// A test on one claim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClaimTest {
    /// The claim equals this JSON value.
    Equals(#[serde(with = "super::serde_forms::json_text")] Value),
    /// The claim (an array, or a space-separated string) contains this string.
    Contains(String),
}

/// A route rule on a claim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimRule {
    /// The claim: a top-level name (`name = …`) or a path into nested claims (`path = …`).
    pub path: crate::model::ClaimPath,
    /// The test.
    pub test: ClaimTest,
}

/// A route and its authorization rules.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Route {
    /// Path prefix (segment-wise); the longest match wins.
    pub path: String,
    /// Host to match (lowercase, no port); host-specific routes win over host-less ones.
    pub host: Option<String>,
    /// Token requirement.
    pub auth: AuthMode,
    /// Issuers accepted on this route (empty: all).
    pub issuers: Vec<IssuerId>,
    /// At least one of these scopes.
    pub scopes_any: Vec<String>,
    /// All of these scopes.
    pub scopes_all: Vec<String>,
    /// Claim rules, all must hold.
    pub claims: Vec<ClaimRule>,
    /// `acr` must be one of these (step-up otherwise).
    pub acr_values: Vec<String>,
    /// `amr` must contain all of these (step-up otherwise).
    pub amr: Vec<String>,
    /// `auth_time` must be at most this old (step-up otherwise).
    pub max_auth_age: Option<Duration>,
    /// Home regions allowed on this route (empty: all).
    pub regions: Vec<RegionId>,
    /// Risk plugins and thresholds (none: no risk phase).
    pub risk: Option<RouteRisk>,
    /// Whether delegated (agent) tokens may call this route, and with what (none: refused).
    pub agents: Option<RouteAgents>,
    /// Only DPoP-bound tokens with a valid proof are accepted.
    pub require_dpop: bool,
    /// GCRA rate limits (`[[route.rate_limit]]`), all checked.
    pub rate_limits: Vec<RateLimit>,
    /// Providers browsers may sign in with (`login = [...]`): requests without a token use
    /// the session cookie; navigations without a session are sent to log in.
    pub login: Vec<IssuerId>,
    /// Purposes the user must have consented to (`consent = [...]`): 403
    /// `consent_required` otherwise; browsers go back to the provider to grant them.
    pub consent: Vec<String>,
}

impl Route {
    /// True when the route accepts tokens of `issuer` (every issuer when it lists none).
    pub fn accepts(&self, issuer: IssuerId) -> bool {
        self.issuers.is_empty() || self.issuers.contains(&issuer)
    }

    /// True when the route has any authorization rule beyond a valid token.
    pub fn has_rules(&self) -> bool {
        !(self.scopes_any.is_empty()
            && self.scopes_all.is_empty()
            && self.claims.is_empty()
            && self.acr_values.is_empty()
            && self.amr.is_empty()
            && self.max_auth_age.is_none()
            && self.consent.is_empty())
    }
}

/// A pattern over header names: exact, or a prefix ending in `*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderPattern {
    /// Lowercase, `_` written as `-`.
    pub text: String,
    /// True for a `prefix*` pattern.
    pub prefix: bool,
}

impl HeaderPattern {
    /// True when `name` matches, ignoring case and treating `_` as `-` (proxies and CGI
    /// stacks conflate them, so `X_User_Id` must not slip past a strip of `x-user-id`).
    pub fn matches(&self, name: &str) -> bool {
        if name.len() < self.text.len() || (!self.prefix && name.len() != self.text.len()) {
            return false;
        }
        name.bytes()
            .zip(self.text.bytes())
            .all(|(a, b)| normalize_header_byte(a) == b)
    }
}

/// Lowercases and maps `_` to `-`.
pub fn normalize_header_byte(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        other => other.to_ascii_lowercase(),
    }
}

/// What an injected identity header carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentitySource {
    /// The routed region's name (`region`).
    Region,
    /// The routed region's jurisdiction (`jurisdiction`).
    Jurisdiction,
    /// Verified scopes, space-separated (`scope`, from `scope` or `scp`).
    Scope,
    /// The issuer's configured name (`issuer`).
    IssuerName,
    /// The acting agent of a delegated token, `act.sub` (`actor`).
    Actor,
    /// A claim (`sub`, `email`, … or `claims.<name>` for a claim named like a keyword above).
    Claim(String),
    /// A value inside nested claims (`{ path = "realm_access.roles" }`).
    ClaimPath(crate::model::ClaimPath),
}

/// Identity headers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    /// Client-supplied headers removed from every request.
    pub strip: Vec<HeaderPattern>,
    /// Headers injected on forwarded, authenticated requests.
    #[serde(with = "super::serde_forms::named_headers")]
    pub headers: Vec<(HeaderName, IdentitySource)>,
    /// Keep the client's `Authorization` header on forwarded requests.
    pub forward_authorization: bool,
}

/// Audit settings.
#[derive(Clone, Serialize, Deserialize)]
pub struct AuditConfig {
    /// HMAC key that pseudonymises subjects in audit records.
    pub subject_key: Vec<u8>,
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AuditConfig {{ subject_key: <{} bytes> }}",
            self.subject_key.len()
        )
    }
}

/// Request limits.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Limits {
    /// Longest bearer token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Largest request body forwarded, in bytes.
    pub max_body_bytes: u64,
}

/// Default largest request body: 8 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;

/// What a plugin failure (trap, timeout, memory cap, malformed answer) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailPolicy {
    /// Ignore the plugin for this request (logged and counted).
    Allow,
    /// Refuse the request with `risk_check_failed`.
    Deny,
}

/// A risk plugin: a WebAssembly component of the `portcullis:plugin/risk-plugin` world.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginConfig {
    /// The name routes refer to (also the plugin's state namespace).
    pub name: String,
    /// The component file, relative to the configuration file.
    pub path: String,
    /// What a failure does.
    pub on_error: FailPolicy,
    /// Wall-clock budget per call.
    pub deadline: Duration,
    /// Linear memory cap, in bytes.
    pub memory_bytes: u64,
    /// Optional instruction budget per call (wasmtime fuel).
    pub fuel: Option<u64>,
    /// Weight in a `weighted` combination.
    pub weight: f64,
    /// Request headers the plugin sees (lowercase; never `authorization` or `cookie`).
    pub headers: Vec<String>,
    /// The plugin's own `config` table, as a JSON object.
    pub config_json: String,
    /// The SHA-256 (lowercase hex) of the component file, when the configuration was
    /// packed for a runtime that loads plugins deployed beside it (the Worker's snapshot):
    /// that runtime refuses a plugin whose deployed copy has another hash.
    pub component_sha256: Option<String>,
}

/// Default plugin deadline.
pub const DEFAULT_PLUGIN_DEADLINE: Duration = Duration::from_millis(5);
/// Default plugin memory cap: 16 MiB.
pub const DEFAULT_PLUGIN_MEMORY: u64 = 16 << 20;
/// The deadlines a plugin may be given (`[plugin.*] deadline`, a scenario's `[plugin]`).
pub const PLUGIN_DEADLINE_BOUNDS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(1);
/// The memory caps a plugin may be given, MiB (`memory_mb`).
pub const PLUGIN_MEMORY_MB_BOUNDS: std::ops::RangeInclusive<u64> = 1..=64;

/// How plugin scores combine into one route score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Combine {
    /// The highest score.
    Max,
    /// The sum of score × weight, capped at 100.
    WeightedSum,
}

/// A route's risk phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteRisk {
    /// Plugins run on this route, in order.
    pub plugins: Vec<PluginId>,
    /// How scores combine.
    pub combine: Combine,
    /// Score at or above which the caller must step up.
    pub step_up: Option<u8>,
    /// Score at or above which the caller is challenged.
    pub challenge: Option<u8>,
    /// Score at or above which the request is refused.
    pub deny: Option<u8>,
    /// Score at or above which a browser session is ended: revoked in the shared state,
    /// its cookies cleared, 401 `session_revoked` (callers with a token get the other
    /// thresholds' answers).
    pub revoke: Option<u8>,
    /// `acr` values that satisfy a step-up (a caller already at one of them passes).
    pub step_up_acr: Vec<String>,
    /// Whether plugins' suggested actions count (otherwise only the thresholds decide).
    pub plugin_actions: bool,
    /// Built-in bot checks run on this route, in order (see [`crate::bot`]).
    pub checks: Vec<BotCheck>,
    /// `[route.risk.anomaly]`: this route's `session_anomaly` weights (`[session.anomaly]`
    /// with the route's overrides); `None`: the session's.
    #[serde(default)]
    pub anomaly: Option<AnomalyWeights>,
}

/// A built-in bot check a route switches on with `[route.risk] checks = [...]`; what each
/// one looks at and how it scores is documented in [`crate::bot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BotCheck {
    /// `browser_headers`: the headers a browser always sends, consistent with its User-Agent.
    BrowserHeaders,
    /// `automation`: automation tools, HTTP libraries and headless browsers by User-Agent.
    Automation,
    /// `ip_lists`: the client address or ASN on a `[[bot.list]]`.
    IpLists,
    /// `verified_bots`: a `[[bot.verified]]` crawler, verified or impersonated.
    VerifiedBots,
    /// `session_anomaly`: a browser session used from a client unlike the one that signed
    /// in (weights in `[session.anomaly]`, [`crate::client_signals`]).
    SessionAnomaly,
}

impl BotCheck {
    /// Every check, in documentation order.
    pub const ALL: [BotCheck; 5] = [
        BotCheck::BrowserHeaders,
        BotCheck::Automation,
        BotCheck::IpLists,
        BotCheck::VerifiedBots,
        BotCheck::SessionAnomaly,
    ];

    /// The name used in configuration, contributions (`bot.<name>`) and audit records.
    pub fn name(self) -> &'static str {
        match self {
            BotCheck::BrowserHeaders => "browser_headers",
            BotCheck::Automation => "automation",
            BotCheck::IpLists => "ip_lists",
            BotCheck::VerifiedBots => "verified_bots",
            BotCheck::SessionAnomaly => "session_anomaly",
        }
    }

    /// The check called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Data for the built-in bot checks (`[bot]`); empty when the section is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotConfig {
    /// Extra User-Agent substrings (matched ignoring ASCII case) the `automation` check flags,
    /// on top of its built-in list.
    pub automation_agents: Vec<String>,
    /// Address and ASN lists for `ip_lists` (`[[bot.list]]`), in file order.
    pub lists: Vec<BotList>,
    /// Verified bots for `verified_bots` (`[[bot.verified]]`), in file order.
    pub verified: Vec<VerifiedBot>,
}

/// A scored list of networks and autonomous systems (`[[bot.list]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotList {
    /// Name, unique among lists; labels read `list:NAME`.
    pub name: String,
    /// Networks on the list.
    pub cidrs: Vec<IpNet>,
    /// Autonomous system numbers on the list.
    pub asns: Vec<u32>,
    /// The `ip_lists` score of a client on this list, 0..=100.
    pub score: u8,
}

/// A crawler that is welcome when it really is who it says (`[[bot.verified]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedBot {
    /// Name, unique among verified bots; labels read `verified:NAME` / `impersonation:NAME`.
    pub name: String,
    /// The User-Agent substring that claims to be this bot (matched ignoring ASCII case).
    pub user_agent: String,
    /// The networks the bot crawls from (never empty).
    pub cidrs: Vec<IpNet>,
}

/// An IP network (address and prefix length, host bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNet {
    /// The network address.
    pub addr: std::net::IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

/// Trusted proxies and the client headers they set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConfig {
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Header carrying the client address (`x-forwarded-for` style lists allowed).
    pub ip_header: Option<String>,
    /// Header carrying the client's country (ISO 3166-1 alpha-2).
    pub country_header: Option<String>,
    /// Header carrying the client's autonomous system number.
    pub asn_header: Option<String>,
    /// Headers carrying where the CDN geolocates the client, in decimal degrees (both or
    /// neither).
    #[serde(default)]
    pub latitude_header: Option<String>,
    /// See `latitude_header`.
    #[serde(default)]
    pub longitude_header: Option<String>,
    /// Edge bundles: the header the runtime itself sets to the connecting address (Spin's
    /// `spin-client-addr`), read as the peer where wasi:http gives none.
    pub peer_header: Option<String>,
}

/// What agents acting for a user (tokens with an RFC 8693 `act` claim) may do on a route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteAgents {
    /// Accepted actors (`act.sub` or `act.client_id`); empty: any actor.
    pub actors: Vec<String>,
    /// The scopes an agent may exercise here: effective scopes are the token's ∩ these.
    pub scopes: Vec<String>,
    /// Longest accepted `act` chain (1: a single agent, no sub-delegation).
    pub max_depth: usize,
    /// Header carrying the agent's own workload token, verified and matched to the actor.
    #[serde(with = "super::serde_forms::opt_header")]
    pub workload_header: Option<HeaderName>,
    /// Refuse agents that do not present a workload token.
    pub require_workload: bool,
}

/// An Ed25519 key the gateway signs identity tokens with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayKey {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// The 32-byte seed.
    pub seed: Vec<u8>,
    /// The 32-byte public key.
    pub public: Vec<u8>,
}

impl std::fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GatewayKey {{ kid: {:?}, seed: <redacted> }}", self.kid)
    }
}

/// Short-lived tokens the gateway mints per forwarded request (secretless backends).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayToken {
    /// The header the token travels in.
    #[serde(with = "super::serde_forms::header")]
    pub header: HeaderName,
    /// `iss` of minted tokens.
    pub issuer: String,
    /// Lifetime (at most 60 s).
    pub ttl: Duration,
    /// Signing keys: the first signs, all are published (rotation with overlap).
    pub keys: Vec<GatewayKey>,
}

/// DPoP (RFC 9449) proof checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DpopConfig {
    /// The scheme clients use to reach the gateway (for `htu`): `https` behind TLS.
    pub scheme: String,
    /// How far `iat` may be from now.
    pub max_age: Duration,
    /// Proofs must carry a server nonce (`DPoP-Nonce`, RFC 9449 §8).
    pub require_nonce: bool,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self {
            scheme: "https".into(),
            max_age: Duration::from_secs(60),
            require_nonce: false,
        }
    }
}

/// What a rate limit counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitKey {
    /// The client's address (IPv4 /32, IPv6 /64), as resolved through `[client]`.
    Ip,
    /// The verified subject (issuer + `sub`, pseudonymised); anonymous requests skip it.
    Subject,
    /// The route as a whole (all clients together).
    Route,
    /// The OAuth client (`client_id`, else `azp`); requests without one skip it.
    ClientId,
}

impl LimitKey {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            LimitKey::Ip => "ip",
            LimitKey::Subject => "subject",
            LimitKey::Route => "route",
            LimitKey::ClientId => "client_id",
        }
    }

    /// True when the key is known before authentication (checked first, so refused
    /// credentials still count).
    pub fn before_authentication(self) -> bool {
        matches!(self, LimitKey::Ip | LimitKey::Route)
    }
}

/// One GCRA rate limit of a route: `rate` requests per `period`, up to `burst` at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Policy name (unique in the route; shown in `RateLimit-Policy`).
    pub name: String,
    /// What is counted.
    pub key: LimitKey,
    /// Requests per period (sustained).
    pub rate: u32,
    /// The period.
    pub period: Duration,
    /// How many requests may arrive at once (the bucket's depth).
    pub burst: u32,
}

impl RateLimit {
    /// The GCRA emission interval in microseconds (period / rate, at least 1).
    pub fn interval_us(&self) -> u64 {
        let period = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        (period / u64::from(self.rate.max(1))).max(1)
    }
}

/// Where the shared state lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateBackend {
    /// In this process (the embedded default): sharded, bounded, with TTLs.
    Memory {
        /// Most entries kept.
        capacity: usize,
    },
    /// Redis shared by every gateway instance: one server, a cluster, or a primary
    /// watched by Sentinel.
    Redis {
        /// Where the servers are.
        servers: RedisServers,
        /// With `rediss://`: the CA certificates (PEM) the servers' certificates must
        /// chain to (`ca`); `None`: the system's trust store.
        ca: Option<Vec<u8>>,
        /// The password (from `password_file`), if any.
        password: Option<String>,
        /// Connections kept open (each multiplexed).
        pool: usize,
        /// How long one operation may take before it counts as unavailable.
        timeout: Duration,
        /// Prefix of every key this gateway writes.
        prefix: String,
    },
}

/// The Redis servers holding the shared state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedisServers {
    /// One server (`url`): `redis://host:port/db`, or `rediss://…` for TLS.
    Single {
        /// Its URL.
        url: String,
    },
    /// A Redis Cluster (`cluster`), found from these seed nodes (`redis://host:port`, or
    /// `rediss://…`); the rest of its nodes and its slot map are learned from them.
    Cluster {
        /// The seed nodes.
        nodes: Vec<String>,
    },
    /// A primary with replicas watched by Redis Sentinel (`sentinels`, `service`): the
    /// sentinels name the current primary, and name another after a failover.
    Sentinel {
        /// The sentinels (`redis://host:port`).
        sentinels: Vec<String>,
        /// The name of the primary the sentinels watch (`sentinel monitor NAME …`).
        service: String,
    },
}

impl RedisServers {
    /// How logs and errors name them: the URL, or the kind and the first address.
    pub fn describe(&self) -> String {
        match self {
            RedisServers::Single { url } => url.clone(),
            RedisServers::Cluster { nodes } => {
                format!("cluster {}", nodes.first().map_or("", String::as_str))
            }
            RedisServers::Sentinel { sentinels, service } => format!(
                "sentinel service {service:?} via {}",
                sentinels.first().map_or("", String::as_str)
            ),
        }
    }
}

/// Shared state: rate limits, replay caches, plugin state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateConfig {
    /// The store.
    pub backend: StateBackend,
    /// What requests that need the state get while it is unreachable.
    pub on_unavailable: FailPolicy,
    /// Runtimes whose instances keep nothing between requests (the edge bundle) share
    /// verified tokens through the store, sealed ([`crate::verified`]).
    pub verified_token_cache: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: StateBackend::Memory {
                capacity: DEFAULT_STATE_CAPACITY,
            },
            on_unavailable: FailPolicy::Deny,
            verified_token_cache: true,
        }
    }
}

/// Default most entries of the in-memory state.
pub const DEFAULT_STATE_CAPACITY: usize = 1_000_000;

/// The proof-of-work challenge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeConfig {
    /// Leading zero bits asked for at the challenge threshold.
    pub min_bits: u8,
    /// Leading zero bits asked for at score 100.
    pub max_bits: u8,
    /// How long a challenge may take to solve.
    pub ttl: Duration,
    /// How long a solved challenge's clearance cookie lasts.
    pub clearance_ttl: Duration,
    /// A Turnstile-compatible site-verification service answering challenges instead of
    /// proof of work (`[challenge.turnstile]`).
    pub site_verify: Option<SiteVerify>,
}

/// A Turnstile-compatible site-verification service (Cloudflare Turnstile, or any service
/// with the same `siteverify` API).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteVerify {
    /// The public site key the widget is rendered with.
    pub site_key: String,
    /// The secret sent to `verify_url` with each site token.
    pub secret: String,
    /// The `siteverify` endpoint (form POST of `secret`, `response`, `remoteip`).
    pub verify_url: String,
    /// The widget script the page loads.
    pub script_url: String,
}

impl std::fmt::Debug for SiteVerify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteVerify")
            .field("site_key", &self.site_key)
            .field("secret", &"<redacted>")
            .field("verify_url", &self.verify_url)
            .field("script_url", &self.script_url)
            .finish()
    }
}

/// Cloudflare Turnstile's verification endpoint.
pub const TURNSTILE_VERIFY_URL: &str = "https://challenges.cloudflare.com/turnstile/v0/siteverify";
/// Cloudflare Turnstile's widget script.
pub const TURNSTILE_SCRIPT_URL: &str = "https://challenges.cloudflare.com/turnstile/v0/api.js";

impl Default for ChallengeConfig {
    fn default() -> Self {
        Self {
            min_bits: 14,
            max_bits: 20,
            ttl: Duration::from_secs(300),
            clearance_ttl: Duration::from_secs(1800),
            site_verify: None,
        }
    }
}
