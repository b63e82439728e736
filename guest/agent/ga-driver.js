// SPDX-License-Identifier: MIT
// JavaScript (node) REPL driver of the schedulerd guest agent (embedded into
// sbx-agent and run as `node -e <this>`). Same fd 3 / fd 4 protocol as
// ga-driver.py. Code runs with vm.runInThisContext, so top-level var/let/const
// and functions persist between execs; a returned promise is awaited and the
// exec ends when the event loop has no more timers or I/O of the user's.
// A header with code_len 0xffffffff is not an exec but a reseed: its env_len
// bytes are fresh entropy from the agent, sent after a snapshot restore.
'use strict';
(function () {
  const fs = require('fs');
  const vm = require('vm');
  // Reopen the control pipes close-on-exec so the user's child processes do
  // not inherit them (node has no fcntl); keep the inherited fds if we cannot.
  let RFD = 3, WFD = 4;
  try {
    const r = fs.openSync('/proc/self/fd/3', fs.constants.O_RDONLY);
    const w = fs.openSync('/proc/self/fd/4', fs.constants.O_WRONLY);
    fs.closeSync(3);
    fs.closeSync(4);
    RFD = r;
    WFD = w;
  } catch (_) { /* inherited fds stay usable */ }
  globalThis.require = require;
  class SbxExit { constructor(code) { this.code = code; } }
  process.exit = function (code) {
    throw new SbxExit(code === undefined ? (process.exitCode || 0) : code);
  };
  // ---- randomness of a restored clone (docs/snapshots.md) ----
  // V8 seeds Math.random once per context (the main one at start-up, others
  // from a per-isolate generator), so every VM restored from a template holding
  // this process would repeat the template's sequence; V8 cannot be reseeded.
  // A reseed therefore replaces Math.random (xoshiro128**, 53-bit doubles) in
  // the main context now and in every vm context the user runs code in from
  // then on, seeded from the agent's entropy. (OpenSSL's DRBGs reseed on their
  // own: the template's clock stood a day back, so the restore's clock jump is
  // past their reseed interval.)
  const RESEED = 0xffffffff;
  // (a, b, c, d, install) -> next(): a uint32 generator; install: it also
  // becomes Math.random of the realm the source is evaluated in.
  const XOSHIRO = `(function (a, b, c, d, install) {
    'use strict';
    const imul = Math.imul;
    if ((a | b | c | d) === 0) a = 1;
    const next = () => {
      const m = imul(b, 5);
      const r = imul(m << 7 | m >>> 25, 9) >>> 0;
      const t = b << 9;
      c ^= a; d ^= b; b ^= c; a ^= d; c ^= t;
      d = d << 11 | d >>> 21;
      return r;
    };
    if (install) {
      const random = {
        random() { return ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992; },
      }.random;
      Object.defineProperty(Math, 'random',
        { value: random, writable: true, enumerable: false, configurable: true });
    }
    return next;
  })`;
  let seedContext = null; // after a reseed: gives a vm context its own generator, once
  const hookContexts = () => {
    const runInContext = vm.Script.prototype.runInContext;
    const compileFunction = vm.compileFunction;
    Object.defineProperty(vm.Script.prototype, 'runInContext', {
      value: { runInContext(ctx, options) {
        if (vm.isContext(ctx)) seedContext(ctx, runInContext);
        return runInContext.call(this, ctx, options);
      } }.runInContext,
      writable: true, enumerable: false, configurable: true,
    });
    vm.compileFunction = { compileFunction(code, params, options) {
      const ctx = options && options.parsingContext;
      if (ctx && vm.isContext(ctx)) seedContext(ctx, runInContext);
      return compileFunction.call(this, code, params, options);
    } }.compileFunction;
  };
  const reseed = (ent) => {
    const word = (i) => ent.readInt32LE(4 * i);
    const make = vm.runInThisContext(XOSHIRO);
    make(word(0), word(1), word(2), word(3), true);
    const seeder = make(word(4), word(5), word(6), word(7), false);
    const script = new vm.Script(XOSHIRO);
    const seeded = new WeakSet();
    if (!seedContext) hookContexts();
    seedContext = (ctx, runInContext) => {
      if (seeded.has(ctx)) return;
      seeded.add(ctx);
      try {
        runInContext.call(script, ctx)(seeder(), seeder(), seeder(), seeder(), true);
      } catch (_) { /* a context whose Math or Object the user replaced */ }
    };
  };
  let rc = 0;
  const fmt = (e) => (e && e.stack ? String(e.stack) : 'Uncaught ' + String(e)) + '\n';
  const onError = (e) => {
    if (e instanceof SbxExit) { rc = Number(e.code) & 0xff; return; }
    try { fs.writeSync(2, fmt(e)); } catch (_) { /* ignore */ }
    rc = 1;
  };
  process.on('uncaughtException', onError);
  process.on('unhandledRejection', onError);
  const readn = (n) => {
    const b = Buffer.alloc(n);
    let off = 0;
    while (off < n) {
      let r;
      try { r = fs.readSync(RFD, b, off, n - off, null); } catch (e) {
        if (e.code === 'EAGAIN' || e.code === 'EINTR') continue;
        throw e;
      }
      if (r === 0) process.reallyExit(0);
      off += r;
    }
    return b;
  };
  // The exec is over when the user's code holds no more event-loop resources
  // than the driver itself (counted per type, stdio handles created first).
  const count = () => {
    const m = new Map();
    for (const r of process.getActiveResourcesInfo()) m.set(r, (m.get(r) || 0) + 1);
    return m;
  };
  void process.stdout; void process.stderr;
  const baseline = count();
  const busy = () => {
    for (const [r, n] of count()) if (n > (baseline.get(r) || 0)) return true;
    return false;
  };
  const tick = () => new Promise((res) => setImmediate(res));
  const settle = async () => {
    await tick();
    while (busy()) await new Promise((res) => setTimeout(res, 1));
  };
  async function loop() {
    fs.writeSync(WFD, 'ready\n');
    for (;;) {
      const h = readn(8);
      const clen = h.readUInt32BE(0), elen = h.readUInt32BE(4);
      if (clen === RESEED) {
        const ent = readn(elen);
        if (elen >= 32) reseed(ent);
        continue;
      }
      const envb = elen ? readn(elen).toString('utf8') : '';
      const code = readn(clen).toString('utf8');
      const saved = Object.assign({}, process.env);
      for (const kv of envb.split('\0')) {
        if (!kv) continue;
        const i = kv.indexOf('=');
        process.env[kv.slice(0, i)] = kv.slice(i + 1);
      }
      rc = 0;
      try {
        const r = vm.runInThisContext(code, { filename: '<exec>' });
        if (r && typeof r.then === 'function') await r;
      } catch (e) { onError(e); }
      try { await settle(); } catch (e) { onError(e); }
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
      const cu = process.cpuUsage();
      const ru = process.resourceUsage();
      fs.writeSync(WFD, `done ${rc} ${cu.user} ${cu.system} ${ru.maxRSS}\n`);
    }
  }
  loop();
})();
