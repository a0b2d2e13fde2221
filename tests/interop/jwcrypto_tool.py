#!/usr/bin/env python3
"""Tokens minted and checked by an independent library (jwcrypto), for interop tests.

  keys                         -> {"private": JWK, "jwks": JWKS}  (a new ES256 key)
  sign PRIVATE_JWK CLAIMS      -> a compact JWS (ES256, kid from the key)
  verify JWKS TOKEN            -> the claims as JSON, or exit 1 with the error
  thumbprint PRIVATE_JWK       -> the RFC 7638 SHA-256 thumbprint of its public key
  dpop PRIVATE_JWK METHOD URL TOKEN [IAT_OFFSET [NONCE]]
                               -> a DPoP proof (RFC 9449) for that request and token
"""
import base64
import hashlib
import json
import sys
import time
import uuid

from jwcrypto import jwk, jwt


def main():
    cmd = sys.argv[1]
    if cmd == "keys":
        key = jwk.JWK.generate(kty="EC", crv="P-256", kid=sys.argv[2] if len(sys.argv) > 2 else None)
        if key.get("kid") is None:
            key = jwk.JWK(**json.loads(key.export()), kid=key.thumbprint())
        public = json.loads(key.export_public())
        public["alg"] = "ES256"
        public["use"] = "sig"
        print(json.dumps({"private": json.loads(key.export()), "jwks": {"keys": [public]}}))
    elif cmd == "sign":
        key = jwk.JWK(**json.loads(sys.argv[2]))
        claims = json.loads(sys.argv[3])
        token = jwt.JWT(header={"alg": "ES256", "kid": key["kid"], "typ": "at+jwt"}, claims=claims)
        token.make_signed_token(key)
        print(token.serialize())
    elif cmd == "verify":
        keys = jwk.JWKSet.from_json(sys.argv[2])
        try:
            token = jwt.JWT(jwt=sys.argv[3], key=keys, algs=["EdDSA", "ES256"])
        except Exception as e:  # noqa: BLE001 - report any verification failure
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(1)
        print(json.dumps({"header": json.loads(token.header), "claims": json.loads(token.claims)}))
    elif cmd == "thumbprint":
        print(jwk.JWK(**json.loads(sys.argv[2])).thumbprint())
    elif cmd == "dpop":
        key = jwk.JWK(**json.loads(sys.argv[2]))
        method, url, access_token = sys.argv[3], sys.argv[4], sys.argv[5]
        offset = int(sys.argv[6]) if len(sys.argv) > 6 else 0
        public = json.loads(key.export_public())
        public.pop("kid", None)
        ath = base64.urlsafe_b64encode(hashlib.sha256(access_token.encode()).digest()).rstrip(b"=").decode()
        claims = {"jti": str(uuid.uuid4()), "htm": method, "htu": url, "iat": int(time.time()) + offset, "ath": ath}
        if len(sys.argv) > 7:
            claims["nonce"] = sys.argv[7]
        proof = jwt.JWT(header={"typ": "dpop+jwt", "alg": "ES256", "jwk": public}, claims=claims)
        proof.make_signed_token(key)
        print(proof.serialize())
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
