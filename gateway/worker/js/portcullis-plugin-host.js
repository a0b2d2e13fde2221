// The host side of Portcullis risk plugins in the Cloudflare Worker, written beside the
// worker by `portcullis worker-plugins` (the source is gateway/worker/js/ in the
// Portcullis repository).
//
// Each plugin is a WebAssembly component transpiled ahead of time by jco's generator into
// JavaScript glue plus core modules (synchronous instantiation). Here every plugin gets its
// own instance, created on first use; its `init` runs on each fresh instance; a trap or an
// error drops the instance (the next call starts a fresh one, as the native host gives each
// call a fresh store); a call after which the instance holds more linear memory than the
// plugin's cap fails and drops the instance. The worker (Rust, gateway/worker/src/
// components.rs) answers the plugin's imports: its state, log, configuration and clock.
// WASI is reduced to what the native host grants plugins: no environment, arguments,
// files or input; output goes to the plugin's log.
//
// What a JavaScript host cannot do: stop a plugin mid-call. A plugin that loops runs until
// the Workers runtime ends the whole request at its CPU limit (the request fails: nothing
// is forwarded).

const REGISTRY = "__portcullis_plugins";

/** Makes `entries` (plugin name → transpiled plugin) the worker's plugin registry. */
export function registerPlugins(entries) {
  for (const [name, entry] of Object.entries(entries)) {
    entry.start = (host, memoryCap) => new PluginInstance(name, entry, host, memoryCap);
  }
  globalThis[REGISTRY] = entries;
}

/** Why a call failed, as one line. */
function describe(e) {
  if (e instanceof PluginFailure) return e.message;
  if (e && typeof e === "object" && "payload" in e) return String(e.payload);
  if (e instanceof WebAssembly.RuntimeError) return `trap: ${e.message}`;
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

class PluginFailure extends Error {}

class PluginInstance {
  constructor(name, entry, host, memoryCap) {
    this.name = name;
    this.entry = entry;
    this.host = host;
    this.memoryCap = memoryCap;
    this.live = null;
  }

  /** Linear memory the live instance holds, in bytes (0 without one). */
  memoryBytes() {
    if (!this.live) return 0;
    return this.live.memories.reduce((sum, m) => sum + m.buffer.byteLength, 0);
  }

  /** Runs `f` on the live instance (made first when there is none); throws a one-line
   * reason when the call fails, after dropping the instance. */
  run(f) {
    try {
      if (!this.live) this.live = this.instantiate();
      const result = f(this.live.risk);
      if (this.memoryBytes() > this.memoryCap) {
        throw new PluginFailure(
          `memory cap exceeded: the instance holds ${this.memoryBytes()} bytes (cap ${this.memoryCap})`,
        );
      }
      return result;
    } catch (e) {
      this.live = null;
      throw describe(e);
    }
  }

  instantiate() {
    const memories = [];
    const instantiateCore = (module, imports) => {
      const instance = new WebAssembly.Instance(module, imports);
      for (const value of Object.values(instance.exports)) {
        if (value instanceof WebAssembly.Memory) memories.push(value);
      }
      return instance;
    };
    const exports = this.entry.instantiate(
      (file) => this.entry.modules[file],
      pluginImports(this.host),
      instantiateCore,
    );
    const risk = exports.risk ?? exports[`portcullis:plugin/risk@${this.entry.builtFor}`];
    if (!risk) throw new PluginFailure("the component exports no portcullis:plugin/risk");
    const live = { risk, memories };
    risk.init();
    return live;
  }

  /** Instantiates the plugin and runs its `init` (the worker's start-up check). */
  init() {
    this.run(() => undefined);
  }

  /** The plugin's assessment of a request (`ctx`: JSON), as JSON. */
  assess(ctx) {
    return JSON.stringify(this.run((risk) => risk.assess(JSON.parse(ctx))));
  }

  /** Tells the plugin how a request it assessed ended. */
  observe(ctx, status) {
    this.run((risk) => risk.observe(JSON.parse(ctx), { status }));
  }
}

/** The imports of one plugin instance: the plugin world's, answered by the worker's `host`,
 * and WASI as the native host serves it to plugins (locked down). */
function pluginImports(host) {
  const plugin = {
    "portcullis:plugin/state": {
      get: (key) => host.get(key),
      set: (key, value, ttlMs) => host.set(key, value, ttlMs),
      increment: (key, delta, ttlMs) => host.increment(key, delta, ttlMs),
      delete: (key) => host.delete(key),
    },
    "portcullis:plugin/log": { log: (level, message) => host.log(level, message) },
    "portcullis:plugin/config": { get: () => host.config() },
    "portcullis:plugin/clock": { nowMs: () => host.nowMs() },
  };
  const wasi = wasiImports(host);
  const all = {};
  for (const [name, value] of Object.entries({ ...plugin, ...wasi })) {
    all[name] = value;
    // Generators name imports with or without their version; answer both.
    for (const version of ["0.1.0", "0.2.0", "0.2.3", "0.2.6"]) all[`${name}@${version}`] = value;
  }
  return all;
}

function wasiImports(host) {
  class Pollable {
    ready() {
      return true;
    }
    block() {}
  }
  class IoError {
    toDebugString() {
      return "no such stream";
    }
  }
  class InputStream {
    read() {
      throw { tag: "closed" };
    }
    blockingRead() {
      throw { tag: "closed" };
    }
    skip() {
      throw { tag: "closed" };
    }
    blockingSkip() {
      throw { tag: "closed" };
    }
    subscribe() {
      return new Pollable();
    }
  }
  // Output (a panic message, a `println!`) goes to the plugin's log, a line at a time.
  class OutputStream {
    constructor(level) {
      this.level = level;
      this.pending = "";
      this.decoder = new TextDecoder();
    }
    checkWrite() {
      return 65536n;
    }
    write(bytes) {
      this.pending += this.decoder.decode(bytes, { stream: true });
      let newline;
      while ((newline = this.pending.indexOf("\n")) >= 0) {
        host.log(this.level, this.pending.slice(0, newline));
        this.pending = this.pending.slice(newline + 1);
      }
    }
    blockingWriteAndFlush(bytes) {
      this.write(bytes);
      this.flush();
    }
    flush() {
      if (this.pending) host.log(this.level, this.pending);
      this.pending = "";
    }
    blockingFlush() {
      this.flush();
    }
    writeZeroes(n) {
      this.write(new Uint8Array(Number(n)));
    }
    blockingWriteZeroesAndFlush(n) {
      this.blockingWriteAndFlush(new Uint8Array(Number(n)));
    }
    splice() {
      throw { tag: "closed" };
    }
    blockingSplice() {
      throw { tag: "closed" };
    }
    subscribe() {
      return new Pollable();
    }
  }
  class Unsupported {}
  const stdout = new OutputStream("info");
  const stderr = new OutputStream("error");
  const nowNs = () => BigInt(host.nowMs()) * 1000000n;
  return {
    "wasi:cli/environment": {
      getEnvironment: () => [],
      getArguments: () => [],
      initialCwd: () => undefined,
    },
    "wasi:cli/exit": {
      exit: (status) => {
        throw new PluginFailure(`the plugin exited (${JSON.stringify(status)})`);
      },
    },
    "wasi:cli/stdin": { getStdin: () => new InputStream() },
    "wasi:cli/stdout": { getStdout: () => stdout },
    "wasi:cli/stderr": { getStderr: () => stderr },
    "wasi:cli/terminal-input": { TerminalInput: Unsupported },
    "wasi:cli/terminal-output": { TerminalOutput: Unsupported },
    "wasi:cli/terminal-stdin": { getTerminalStdin: () => undefined },
    "wasi:cli/terminal-stdout": { getTerminalStdout: () => undefined },
    "wasi:cli/terminal-stderr": { getTerminalStderr: () => undefined },
    "wasi:io/error": { Error: IoError },
    "wasi:io/poll": {
      Pollable,
      poll: (list) => new Uint32Array(list.map((_, i) => i)),
    },
    "wasi:io/streams": { InputStream, OutputStream },
    "wasi:clocks/wall-clock": {
      now: () => {
        const ns = nowNs();
        return { seconds: ns / 1000000000n, nanoseconds: Number(ns % 1000000000n) };
      },
      resolution: () => ({ seconds: 0n, nanoseconds: 1000000 }),
    },
    "wasi:clocks/monotonic-clock": {
      now: nowNs,
      resolution: () => 1000000n,
      subscribeInstant: () => new Pollable(),
      subscribeDuration: () => new Pollable(),
    },
    "wasi:random/random": {
      getRandomBytes: (len) => crypto.getRandomValues(new Uint8Array(Number(len))),
      getRandomU64: () => crypto.getRandomValues(new BigUint64Array(1))[0],
    },
    "wasi:random/insecure": {
      getInsecureRandomBytes: (len) => crypto.getRandomValues(new Uint8Array(Number(len))),
      getInsecureRandomU64: () => crypto.getRandomValues(new BigUint64Array(1))[0],
    },
    "wasi:random/insecure-seed": {
      insecureSeed: () => {
        const seed = crypto.getRandomValues(new BigUint64Array(2));
        return [seed[0], seed[1]];
      },
    },
    // No preopened directories: a plugin sees no files, as under the native host.
    "wasi:filesystem/preopens": { getDirectories: () => [] },
    "wasi:filesystem/types": {
      Descriptor: Unsupported,
      DirectoryEntryStream: Unsupported,
      filesystemErrorCode: () => undefined,
    },
  };
}
