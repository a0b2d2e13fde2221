// Profiles a worker row of the load harness through workerd's DevTools inspector: the
// share of CPU samples per function (self, then inclusive), wasm functions by their Rust
// names. Start it, then the harness with the inspector on, in a second shell:
//
//   node --experimental-websocket benches/load/profile_worker.mjs 16 6 /tmp/worker.cpuprofile
//   PORTCULLIS_WORKERD_INSPECTOR=127.0.0.1:9229 \
//     python3 benches/load/run.py --only portcullis-worker --out /tmp/profiled
//
// It waits for the inspector and for the first `wrk`, waits DELAY seconds more (16: into
// the row's second workload, `unique-es256`; 4: the first, `repeated-es256`), samples every
// 100 µs for DURATION seconds and writes the raw profile (loadable in Chrome DevTools).
// The sampling costs the row some CPU: compare shares within a profile, not its req/s.
// (`--experimental-websocket` is for Node 20; Node 22 has WebSocket without it.)
import { execSync } from "node:child_process";
import { writeFileSync } from "node:fs";

const [delay, duration, out] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
if (!(delay >= 0 && duration > 0 && out)) {
  console.error("usage: profile_worker.mjs DELAY_S DURATION_S OUT.cpuprofile");
  process.exit(2);
}
const inspector = process.env.PORTCULLIS_WORKERD_INSPECTOR ?? "127.0.0.1:9229";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const wrkRunning = () => {
  try {
    execSync("pgrep -x wrk", { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
};

let targets = [];
while (!targets.length) {
  try {
    targets = await (await fetch(`http://${inspector}/json/list`)).json();
  } catch {
    await sleep(200);
  }
}
while (!wrkRunning()) await sleep(100);
await sleep(delay * 1000);

const ws = new WebSocket(targets[0].webSocketDebuggerUrl);
const pending = new Map();
let next = 0;
ws.onmessage = (m) => {
  const d = JSON.parse(m.data);
  pending.get(d.id)?.(d);
  pending.delete(d.id);
};
await new Promise((r) => (ws.onopen = r));
const send = (method, params = {}) =>
  new Promise((r) => {
    const id = ++next;
    pending.set(id, r);
    ws.send(JSON.stringify({ id, method, params }));
  });
await send("Profiler.enable");
await send("Profiler.setSamplingInterval", { interval: 100 });
await send("Profiler.start");
await sleep(duration * 1000);
const { profile } = (await send("Profiler.stop")).result;
writeFileSync(out, JSON.stringify(profile));

const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const name = (n) => n.callFrame.functionName || "(anonymous)";
const self = new Map();
const inclusive = new Map();
let total = 0;
profile.samples.forEach((id, i) => {
  const t = profile.timeDeltas[i] ?? 0;
  total += t;
  self.set(name(nodes.get(id)), (self.get(name(nodes.get(id))) ?? 0) + t);
  const seen = new Set();
  for (let cur = id; cur; cur = parent.get(cur)) {
    const k = name(nodes.get(cur));
    if (!seen.has(k)) {
      seen.add(k);
      inclusive.set(k, (inclusive.get(k) ?? 0) + t);
    }
  }
});
const print = (title, map, n) => {
  console.log(title);
  for (const [k, t] of [...map.entries()].sort((a, b) => b[1] - a[1]).slice(0, n)) {
    console.log(`${((100 * t) / total).toFixed(2).padStart(6)}%  ${k.slice(0, 160)}`);
  }
};
print("self", self, 40);
print("inclusive", inclusive, 60);
process.exit(0);
