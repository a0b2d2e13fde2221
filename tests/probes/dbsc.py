#!/usr/bin/env python3
"""Does this machine's headless Chromium speak Device Bound Session Credentials (DBSC)?

Issue 22 asks to bind the gateway's cookie session to the browser's key where headless
Chromium supports DBSC. This probe answers that question for the Chromium installed here:
an HTTPS origin on 127.0.0.1 (a throwaway self-signed certificate) answers the first page
with a `Secure-Session-Registration` header (the WICG draft Chromium implements) and the
probe watches for the browser's registration request (a POST to the path the header
names, carrying `Secure-Session-Response`). It tries the feature switches Chromium has for
DBSC and software keys (Linux has no hardware-backed key provider).

Prints one line per attempt and exits 0 when any attempt registered, 1 otherwise.
Usage: python3 tests/probes/dbsc.py  (needs chromium and openssl)
"""
import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading

ATTEMPTS = [
    ["--enable-features=DeviceBoundSessions"],
    ["--enable-features=DeviceBoundSessions",
     "--enable-bound-session-credentials-software-keys-for-manual-testing"],
    ["--enable-features=DeviceBoundSessions,UseUnexportableKeyServiceInBrowserProcess",
     "--enable-bound-session-credentials-software-keys-for-manual-testing"],
]

seen = []


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        seen.append(("GET", self.path, dict(self.headers)))
        self.send_response(200)
        self.send_header("content-type", "text/html")
        if self.path == "/":
            self.send_header("secure-session-registration",
                             '(ES256 RS256);path="/dbsc/start";challenge="probe"')
            self.send_header("set-cookie", "auth=1; Path=/; Secure; Max-Age=600")
        self.end_headers()
        self.wfile.write(b"<html><body>probe</body></html>")

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        seen.append(("POST", self.path, dict(self.headers)))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({
            "session_identifier": "probe", "refresh_url": "/dbsc/refresh",
            "scope": {"include_site": False, "scope_specification": []},
            "credentials": [{"type": "cookie", "name": "bound", "attributes": "Path=/"}],
        }).encode())


def main():
    work = tempfile.mkdtemp(prefix="dbsc-probe-")
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://localhost:{server.server_address[1]}/"
    version = subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout
    print(version.strip())
    registered = False
    for flags in ATTEMPTS:
        seen.clear()
        profile = os.path.join(work, "profile")
        shutil.rmtree(profile, ignore_errors=True)
        try:
            subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                            "--ignore-certificate-errors", f"--user-data-dir={profile}",
                            *flags, url],
                           capture_output=True, timeout=12)
        except subprocess.TimeoutExpired:
            pass  # headless keeps the page open: the time given is the wait
        posts = [s for s in seen if s[0] == "POST"]
        ok = any("secure-session-response" in {k.lower() for k in h} for _, _, h in posts)
        registered |= ok
        print(f"{'registered' if ok else 'no registration'} "
              f"({len(seen)} requests, {len(posts)} POST): {' '.join(flags)}")
    server.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    return 0 if registered else 1


if __name__ == "__main__":
    sys.exit(main())
