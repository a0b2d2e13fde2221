// A real OpenID Provider for the end-to-end tests: panva/oidc-provider (certified), on
// 127.0.0.1:$PORT with issuer http://127.0.0.1:$PORT, configured from the JSON env var
// OP_CONFIG. Started (and killed) by tests/src/oidc.rs.
//
// OP_CONFIG = {
//   "clients": [{ "client_id", "client_secret", "redirect_uris", "post_logout_redirect_uris",
//                 "backchannel_logout_uri", "token_endpoint_auth_method", ...any other
//                 client metadata, e.g. "id_token_signed_response_alg": "ES256" }],
//   "access_token_ttl": 60,              // seconds, optional (default 600)
//   "accounts": { "alice": { "residency": "eu" } },  // optional extra claims per login name
//   "resource": { "audience": "https://api.test", "scope": "orders:read orders:write" }
//                                        // optional: an API (RFC 8707 resource indicator,
//                                        // the default one) whose access tokens are opaque
//                                        // and carry `aud`; introspect them (RFC 7662)
//   "purposes": ["order-history", ...]   // optional: consent purposes; asking for the scope
//                                        // "purpose:NAME" grants NAME, released as the
//                                        // `purposes` claim (an array) in the ID token
// }
//
// The client_credentials grant is enabled (for clients that list it in grant_types).
//
// Login: any login name and password. `sub` = the login name, `email` = <login>@example.test,
// `name` = the login name; a login ending in `-mfa`, or with the optional one-time code field
// filled in (a step-up: same account, stronger method), gets acr "mfa" and amr
// ["pwd","otp"], any other acr "pwd" and amr ["pwd"]. The login form is ours, not the built-in
// devInteractions (same fields, login and password): the built-in submit sets only the
// accountId, and acr/amr can only come from the interaction result's `login`. Consent is
// granted automatically (loadExistingGrant), so a login is form -> redirect back.
// Refresh tokens are issued for the authorization_code grant to clients allowed the
// refresh_token grant (no offline_access needed) and rotate on every use.
//
// Test endpoint: POST /test/logout?sub=NAME ends every session of that account the way the
// provider's own end_session does: back-channel logout tokens (signed by the provider's
// own logout-token code) to each client's backchannel_logout_uri, grants revoked, sessions
// destroyed. Answers {"sessions": n, "notified": [client_id...], "errors": [...]}.
//
// Test endpoint: GET /test/token-requests lists how each token request authenticated the
// client: [{"status", "basic", "client_secret_in_body", "client_assertion_type"}].
//
// Test endpoint: GET /test/pushed-requests lists the pushed authorization requests (RFC
// 9126, POST /request): [{"status", "basic", "has_state", "has_code_challenge",
// "response_mode", "prompt", "scope"}].
//
// Test endpoint: GET /test/introspections lists the introspection requests: [{"status",
// "basic", "client_assertion_type", "active"}]. POST /test/introspection-fault?mode=M makes
// the endpoint answer garbage ("garbage": 200 with text), "inactive-shape" (200 with JSON
// lacking `active`), "other-iss" (an active answer naming another issuer) or 500
// ("error"), and "none" restores it.
//
// Test endpoint: GET /test/sessions?sub=NAME lists that account's live sessions as the
// clients know them: [{"client_id", "sid"}] (the `sid` each client's ID tokens and logout
// tokens carry), so a test can give an app the access token this session would hold.
//
// Test endpoint: POST /test/sign?claims=B64URL_JSON&typ=TYP answers a compact JWS of those
// claims signed with the provider's own ES256 key (kid op-es256), so tests can send the
// gateway logout tokens the provider would never issue (no events, a nonce, a replayed jti).
//
// Prints {"listening": "http://127.0.0.1:PORT"} on stdout when ready; errors go to stderr.

import { createPrivateKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.PORT);
if (!Number.isInteger(port) || port <= 0) {
  console.error('op.mjs: PORT must be set to a TCP port');
  process.exit(2);
}
let config;
try {
  config = JSON.parse(process.env.OP_CONFIG ?? '{}');
} catch (e) {
  console.error(`op.mjs: OP_CONFIG is not JSON: ${e.message}`);
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const accounts = config.accounts ?? {};
const extraClaimNames = [...new Set(Object.values(accounts).flatMap((c) => Object.keys(c)))];

// --- storage: a small in-memory adapter we can enumerate (sessions of an account) --------
const store = new Map(); // `${model}:${id}` -> { payload, exp (ms) }
const grantMembers = new Map(); // grantId -> Set of keys
const sessionUids = new Map(); // uid -> id

function live(key) {
  const e = store.get(key);
  if (!e) return undefined;
  if (e.exp !== undefined && e.exp <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return e.payload;
}

class Adapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    store.set(key, { payload, exp: expiresIn ? Date.now() + expiresIn * 1000 : undefined });
    if (this.model === 'Session') sessionUids.set(payload.uid, id);
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
  }

  async find(id) { return live(this.key(id)); }

  async findByUid(uid) {
    const id = sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode() { return undefined; }

  async consume(id) {
    const p = live(this.key(id));
    if (p) p.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { store.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) store.delete(key);
    grantMembers.delete(grantId);
  }
}

// --- keys: fresh per run, RS256 and ES256 (clients pick with id_token_signed_response_alg) --
function jwk(type, options, kid, alg) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}
const jwks = {
  keys: [
    jwk('rsa', { modulusLength: 2048 }, 'op-rs256', 'RS256'),
    jwk('ec', { namedCurve: 'P-256' }, 'op-es256', 'ES256'),
  ],
};

// --- clients --------------------------------------------------------------------------------
const clients = (config.clients ?? []).map((c) => {
  const out = { ...c };
  if (c.backchannel_logout_uri && out.backchannel_logout_session_required === undefined) {
    out.backchannel_logout_session_required = true;
  }
  if (!out.grant_types) out.grant_types = ['authorization_code', 'refresh_token'];
  if (!out.response_types) out.response_types = ['code'];
  return out;
});

const provider = new Provider(issuer, {
  adapter: Adapter,
  clients,
  jwks,
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  // The default fetch refuses loopback and private addresses (SSRF protection); the test
  // clients' back-channel logout URIs live on 127.0.0.1.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  acrValues: ['pwd', 'mfa'],
  claims: {
    // Standalone claims (null), released on request (acr_values, claims parameter), as in
    // the defaults...
    acr: null,
    amr: null,
    auth_time: null,
    iss: null,
    sid: null,
    // ...but acr, amr and auth_time are always in the ID token (under the openid scope).
    openid: ['sub', 'acr', 'amr', 'auth_time', ...extraClaimNames],
    ...Object.fromEntries((config.purposes ?? []).map((p) => [`purpose:${p}`, ['purposes']])),
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  // Scope claims in the ID token too (the gateway's browser login reads the ID token).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  ttl: {
    AccessToken: config.access_token_ttl ?? 600,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 24 * 3600,
    Grant: 24 * 3600,
    Interaction: 600,
    Session: 24 * 3600,
  },
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims(_use, scope) {
        // The purposes the user granted: those whose scope this grant holds.
        const granted = String(scope ?? '').split(' ')
          .filter((s) => s.startsWith('purpose:')).map((s) => s.slice('purpose:'.length));
        return {
          sub,
          email: `${sub}@example.test`,
          email_verified: true,
          name: sub,
          ...(config.purposes ? { purposes: granted } : {}),
          ...(accounts[sub] ?? {}),
        };
      },
    };
  },
  // Auto-consent: every test client gets what it asks for, so a login is form -> redirect.
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
    if (!oidc.session.accountId) return grant;
    if (!grant) {
      grant = new oidc.provider.Grant({
        clientId: oidc.client.clientId,
        accountId: oidc.session.accountId,
      });
    }
    grant.addOIDCScope([...oidc.requestParamScopes].join(' '));
    grant.addOIDCClaims([...oidc.requestParamClaims]);
    await grant.save();
    return grant;
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  features: {
    devInteractions: { enabled: false }, // ours below: same form, but sets acr and amr
    // The default pages import web fonts (no network here): plain pages, same form.
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.body = page('Logout Request', `${form}`
          + '<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout" id="logout-yes">Yes, sign me out</button>'
          + '<button type="submit" form="op.logoutForm" id="logout-no">No, stay signed in</button>');
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Sign-out Success', '<p id="signed-out">Your sign-out was successful.</p>');
      },
    },
    backchannelLogout: { enabled: true },
    revocation: { enabled: true },
    introspection: {
      enabled: true,
      // Any authenticated client (a resource server, the gateway) may introspect; public
      // clients only their own tokens.
      allowedPolicy: async (_ctx, client, token) => client.clientAuthMethod !== 'none'
        || token.clientId === client.clientId,
    },
    claimsParameter: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: Boolean(config.resource),
      defaultResource: () => config.resource?.audience,
      useGrantedResource: () => true,
      getResourceServerInfo(_ctx, indicator) {
        if (indicator !== config.resource?.audience) throw new errors.InvalidTarget();
        return {
          scope: config.resource.scope,
          audience: config.resource.audience,
          accessTokenFormat: 'opaque',
        };
      },
    },
  },
  renderError(ctx, out, error) {
    console.error(`op.mjs: error page: ${JSON.stringify(out)} ${error?.stack ?? ''}`);
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><title>oops</title><h1>oops! something went wrong</h1><pre id="error">${esc(JSON.stringify(out))}</pre>`;
  },
});
provider.proxy = false;

// Unexpected failures with a stack; refusals a test may provoke (a reused refresh token)
// in one line.
for (const ev of ['server_error', 'backchannel.error']) {
  provider.on(ev, (...args) => {
    const err = args.find((a) => a instanceof Error);
    console.error(`op.mjs: ${ev}: ${err?.stack ?? err ?? ''}`);
  });
}
for (const ev of ['grant.error', 'authorization.error', 'end_session.error']) {
  provider.on(ev, (...args) => {
    const err = args.find((a) => a instanceof Error);
    console.error(`op.mjs: ${ev}: ${err?.error ?? err?.name}: ${err?.error_description ?? err?.message}`);
  });
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head>`
    + `<body><h1>${esc(title)}</h1>${body}</body></html>`;
}

// The login (and, should one ever be needed, consent) interaction, on the provider's own
// Koa app. Form fields are those of the built-in dev interactions: login, password.
provider.use(async (ctx, next) => {
  const m = /^\/interaction\/([\w-]+)$/.exec(ctx.path);
  if (!m) return next();
  ctx.set('cache-control', 'no-store');
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session, grantId } = details;
  if (ctx.method === 'GET') {
    ctx.type = 'html';
    if (prompt.name === 'login') {
      ctx.body = page('Sign-in', `<form id="login" method="post" action="/interaction/${esc(m[1])}">`
        + '<input type="hidden" name="prompt" value="login"/>'
        + `<input required type="text" name="login" placeholder="Enter any login" autofocus value="${esc(params.login_hint ?? '')}"/>`
        + '<input required type="password" name="password" placeholder="and password"/>'
        + '<input type="text" name="otp" placeholder="one-time code (optional: signs in with acr mfa)"/>'
        + '<button type="submit" id="submit">Sign-in</button></form>');
    } else {
      ctx.body = page('Authorize', `<form id="consent" method="post" action="/interaction/${esc(m[1])}">`
        + '<input type="hidden" name="prompt" value="consent"/>'
        + `<p>${esc(params.client_id)} asks for ${esc(params.scope)}</p>`
        + '<button type="submit" id="submit" autofocus>Continue</button></form>');
    }
    return undefined;
  }
  if (ctx.method !== 'POST') return next();
  const form = await readForm(ctx.req);
  let result;
  if (prompt.name === 'login') {
    const login = form.get('login');
    if (!login) throw new errors.InvalidRequest('login is required');
    const mfa = login.endsWith('-mfa') || Boolean(form.get('otp'));
    result = {
      login: { accountId: login, acr: mfa ? 'mfa' : 'pwd', amr: mfa ? ['pwd', 'otp'] : ['pwd'] },
    };
  } else if (prompt.name === 'consent') {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [ind, scope] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
      grant.addResourceScope(ind, scope.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    ctx.throw(501, `prompt ${prompt.name} not implemented`);
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: prompt.name !== 'login',
  });
  ctx.status = 303;
  ctx.redirect(returnTo);
  return undefined;
});

// GET /test/token-requests: how each token request so far authenticated the client (the
// provider itself takes a secret by HTTP Basic or in the body alike).
const tokenRequests = [];
const pushedRequests = [];
const introspections = [];
let introspectionFault = 'none';
provider.use(async (ctx, next) => {
  if (ctx.path === '/test/introspections') {
    ctx.type = 'json';
    ctx.body = introspections;
    return undefined;
  }
  if (ctx.path === '/test/introspection-fault' && ctx.method === 'POST') {
    introspectionFault = String(ctx.query.mode ?? 'none');
    ctx.body = introspectionFault;
    return undefined;
  }
  if (ctx.method === 'POST' && ctx.path === '/token/introspection' && introspectionFault !== 'none') {
    introspections.push({ status: 0, fault: introspectionFault });
    if (introspectionFault === 'garbage') {
      ctx.type = 'text';
      ctx.body = '<html>maintenance</html>';
    } else if (introspectionFault === 'inactive-shape') {
      ctx.type = 'json';
      ctx.body = { valid: true, sub: 'mallory' };
    } else if (introspectionFault === 'other-iss') {
      const now = Math.floor(Date.now() / 1000);
      ctx.type = 'json';
      ctx.body = {
        active: true, iss: 'https://evil.test', aud: config.resource?.audience,
        scope: 'orders:read', exp: now + 300, iat: now, token_type: 'Bearer',
      };
    } else {
      ctx.status = 500;
      ctx.body = 'error';
    }
    return undefined;
  }
  if (ctx.path === '/test/token-requests') {
    ctx.type = 'json';
    ctx.body = tokenRequests;
    return undefined;
  }
  if (ctx.path === '/test/pushed-requests') {
    ctx.type = 'json';
    ctx.body = pushedRequests;
    return undefined;
  }
  await next();
  if (ctx.method === 'POST' && ctx.path === '/request') {
    const params = ctx.oidc?.params ?? {};
    pushedRequests.push({
      status: ctx.status,
      basic: /^basic /i.test(ctx.headers.authorization ?? ''),
      has_state: Boolean(params.state),
      has_code_challenge: Boolean(params.code_challenge),
      response_mode: params.response_mode ?? null,
      prompt: params.prompt ?? null,
      scope: params.scope ?? null,
    });
  }
  if (ctx.method === 'POST' && ctx.path === '/token/introspection') {
    const params = ctx.oidc?.params ?? {};
    introspections.push({
      status: ctx.status,
      basic: /^basic /i.test(ctx.headers.authorization ?? ''),
      client_assertion_type: params.client_assertion_type ?? null,
      active: ctx.body?.active ?? null,
    });
  }
  if (ctx.method === 'POST' && ctx.path === '/token') {
    const params = ctx.oidc?.params ?? {};
    tokenRequests.push({
      status: ctx.status,
      basic: /^basic /i.test(ctx.headers.authorization ?? ''),
      client_secret_in_body: Boolean(params.client_secret),
      client_assertion_type: params.client_assertion_type ?? null,
    });
  }
  return undefined;
});

// POST /test/sign?claims=B64URL_JSON&typ=TYP: any claims, signed with the provider's key.
provider.use(async (ctx, next) => {
  if (ctx.path !== '/test/sign') return next();
  if (ctx.method !== 'POST') ctx.throw(405);
  let claims;
  try {
    claims = JSON.parse(Buffer.from(String(ctx.query.claims ?? ''), 'base64url').toString());
  } catch {
    ctx.throw(400, 'claims must be base64url JSON');
  }
  const { kid, alg, use, ...key } = jwks.keys.find((k) => k.kid === 'op-es256');
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const input = `${part({ alg, kid, typ: String(ctx.query.typ ?? 'JWT') })}.${part(claims)}`;
  const signature = sign('sha256', Buffer.from(input), {
    key: createPrivateKey({ key, format: 'jwk' }),
    dsaEncoding: 'ieee-p1363',
  });
  ctx.type = 'text';
  ctx.body = `${input}.${signature.toString('base64url')}`;
  return undefined;
});

// GET /test/sessions?sub=NAME: the live sessions of an account, per client.
provider.use(async (ctx, next) => {
  if (ctx.path !== '/test/sessions') return next();
  const sub = ctx.query.sub;
  if (!sub) ctx.throw(400, 'sub is required');
  const out = [];
  for (const [key, entry] of store) {
    if (key.startsWith('Session:') && entry.payload.accountId === sub && live(key)) {
      for (const [clientId, { sid }] of Object.entries(entry.payload.authorizations ?? {})) {
        out.push({ client_id: clientId, sid });
      }
    }
  }
  ctx.type = 'json';
  ctx.body = out;
  return undefined;
});

// POST /test/logout?sub=NAME: provider-initiated logout of every session of an account.
provider.use(async (ctx, next) => {
  if (ctx.path !== '/test/logout') return next();
  if (ctx.method !== 'POST') ctx.throw(405);
  const sub = ctx.query.sub;
  if (!sub) ctx.throw(400, 'sub is required');
  const sessions = [];
  for (const [key, entry] of store) {
    if (key.startsWith('Session:') && entry.payload.accountId === sub && live(key)) {
      sessions.push([key.slice('Session:'.length), entry.payload]);
    }
  }
  const notified = [];
  const failures = [];
  for (const [id, payload] of sessions) {
    for (const [clientId, { sid, grantId }] of Object.entries(payload.authorizations ?? {})) {
      const client = await provider.Client.find(clientId);
      if (client?.backchannelLogoutUri) {
        try {
          await client.backchannelLogout(sub, sid);
          provider.emit('backchannel.success', ctx, client, sub, sid);
          notified.push(clientId);
        } catch (err) {
          console.error(`op.mjs: back-channel logout of ${clientId} failed: ${err.stack ?? err}`);
          failures.push({ client_id: clientId, error: String(err.message ?? err) });
        }
      }
      if (grantId) {
        await Promise.all([
          provider.AccessToken.revokeByGrantId(grantId),
          provider.RefreshToken.revokeByGrantId(grantId),
          provider.AuthorizationCode.revokeByGrantId(grantId),
          provider.Grant.adapter.destroy(grantId),
        ]);
      }
    }
    await provider.Session.adapter.destroy(id);
  }
  ctx.type = 'json';
  ctx.body = { sessions: sessions.length, notified, errors: failures };
  return undefined;
});

// The harness keeps our stdin open: end with it (the test process died without killing us).
if (process.env.OP_EXIT_ON_STDIN_EOF) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ listening: issuer })}\n`);
});
server.on('error', (e) => {
  console.error(`op.mjs: listen on 127.0.0.1:${port}: ${e.message}`);
  process.exit(1);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
