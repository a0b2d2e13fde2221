// What a Workers user would write instead of Portcullis for the harness's route: verify the
// bearer token with `jose` (WebCrypto underneath) against the same key set, issuer and
// audience, then forward to the backend with the user id in a header and without the token.
// The key set is given inline, as the Portcullis worker's snapshot carries it.
import { createLocalJWKSet, jwtVerify } from "./jose/index.js";

let keys;

function refuse(error) {
  return new Response(JSON.stringify({ error }), {
    status: 401,
    headers: { "content-type": "application/json", "www-authenticate": "Bearer" },
  });
}

export default {
  async fetch(request, env) {
    keys ??= createLocalJWKSet(JSON.parse(env.JWKS));
    const auth = request.headers.get("authorization") ?? "";
    if (!auth.startsWith("Bearer ")) {
      return refuse("missing_token");
    }
    let payload;
    try {
      ({ payload } = await jwtVerify(auth.slice(7), keys, {
        issuer: env.ISSUER,
        audience: env.AUDIENCE,
        algorithms: ["ES256", "RS256"],
      }));
    } catch {
      return refuse("invalid_token");
    }
    const url = new URL(request.url);
    const headers = new Headers(request.headers);
    headers.delete("authorization");
    headers.set("x-user-id", String(payload.sub ?? ""));
    return fetch(env.BACKEND + url.pathname + url.search, {
      method: request.method,
      headers,
      body: request.body,
    });
  },
};
