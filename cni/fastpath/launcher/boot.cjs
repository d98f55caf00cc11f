"use strict";
// The cold path's first JavaScript: the launcher runs `node boot.cjs <plugin bundle>` when no
// agent answers. It loads the bundle, compiled with a V8 code cache kept beside it (compiling a
// 200 KiB bundle, and the functions a call touches, costs a fresh Node ~15 ms that the cache
// turns into a few), and calls the bundle's exported main with what this process offers it
// (cni/protocol/entry.ts, pluginEntry). The bundle is not require.main: that is how it knows
// not to run itself. A bundle without a main (a test's own script) just runs as it loads.
//
// One cache per bundle version and CNI command, `<bundle>.<COMMAND>.<ino>-<size>-<mtime>.v8cache`:
// a cache holds the functions its run compiled (a VERSION run's would leave an ADD compiling
// nearly everything again), and V8 itself only checks a cache against the source's length, so
// the bundle's identity is in the name. A run without a usable cache writes one at exit if it
// succeeded (exit 0) and the directory is writable, through a temporary file and a rename; a
// read-only install runs without. scripts/bundle.mjs deletes every cache when it rebuilds.
// Bundles must not use import(): a vm.Script has no module loader (bundle.mjs turns it into require()).
const {
  accessSync,
  closeSync,
  constants,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} = require("node:fs");
const { dirname, resolve } = require("node:path");
// The CommonJS loader's Module class, as this module's own constructor: require("node:module")
// costs a cold start ~0.4 ms (its first load from user code builds an ES module facade).
const Module = module.constructor;
const vm = require("node:vm");

const COMMANDS = new Set(["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"]);

const file = resolve(process.argv[2] ?? "");
process.argv.splice(1, 1); // the bundle sees itself as argv[1], as when run directly

// scripts/bundle.mjs also writes each bundle already wrapped as the CommonJS loader wraps a
// module, named by the bundle's identity (<bundle>.<ino>-<size>-<mtime>.wrapped.js, so a
// replaced bundle never meets a stale one): V8 compiles that file's text as it is read, where
// wrapping here (taking off the shebang, adding the wrapper, V8 flattening the ~230 KB result
// into one more copy) costs a cold start ~0.4 ms. A bundle without one (a test's own) is wrapped here.
let source;
let identity;
try {
  const st = statSync(file);
  identity = `${st.ino}-${st.size}-${Math.floor(st.mtimeMs)}`;
  try {
    source = readFileSync(`${file}.${identity}.wrapped.js`, "utf8");
  } catch {
    // The shebang goes, its newline stays: stack traces keep the bundle's line numbers.
    source = Module.wrap(readFileSync(file, "utf8").replace(/^#!.*/, ""));
  }
} catch (e) {
  process.stderr.write(`berth: cannot read plugin bundle ${file}: ${e.message}\n`);
  process.exit(1);
}
const command = COMMANDS.has(process.env.CNI_COMMAND) ? process.env.CNI_COMMAND : "OTHER";
const cacheFile = `${file}.${command}.${identity}.v8cache`;

let cachedData;
try {
  cachedData = readFileSync(cacheFile);
} catch {
  // no cache yet
}
const script = new vm.Script(source, { filename: file, cachedData });
if (cachedData === undefined || script.cachedDataRejected) {
  process.once("exit", (code) => {
    if (code !== 0) return;
    const tmp = `${cacheFile}.${process.pid}`;
    try {
      accessSync(dirname(file), constants.W_OK);
      writeFileSync(tmp, script.createCachedData(), { mode: 0o644 });
      renameSync(tmp, cacheFile);
    } catch {
      rmSync(tmp, { force: true });
    }
  });
}

// The launcher ends when it reads the exit status from BERTH_STATUS_FD, not when this process
// is gone (launcher.c, run_node_child): once the output is written and stdout and stderr are
// closed, the exit code is all a runtime still waits for, and tearing down Node's memory takes
// the kernel ~3 ms more. The status goes out as the very last thing before the process ends,
// after every 'exit' listener: from process.reallyExit (where process.exit ends), or from the
// plugin's own last listener just before its _exit (cni/protocol/entry.ts: the bundle's main
// gets sendStatus as host.sendExitStatus). An uncaught error is printed by Node after the 'exit'
// listeners and ends the process without reallyExit: then nothing is sent and the launcher
// waits for the process's end, as for one killed by a signal. So does a plugin that ends by
// running out of work.
const statusVar = process.env.BERTH_STATUS_FD ?? "";
delete process.env.BERTH_STATUS_FD;
const statusFd = /^\d+$/.test(statusVar) ? Number(statusVar) : -1;
const host = {};
if (statusFd > 2) {
  let fatal = false;
  process.on("uncaughtExceptionMonitor", () => {
    fatal = true;
  });
  let sent = false;
  const sendStatus = (code) => {
    if (sent || fatal) return;
    sent = true;
    for (const fd of [1, 2]) {
      try {
        closeSync(fd);
        const devNull = openSync("/dev/null", "r+"); // takes the lowest free number: fd
        if (devNull !== fd) closeSync(devNull);
      } catch {
        // already closed
      }
    }
    try {
      writeSync(statusFd, Buffer.of((code ?? 0) & 0xff));
    } catch {
      // the launcher is gone
    }
  };
  host.sendExitStatus = sendStatus;
  const reallyExit = process.reallyExit;
  process.reallyExit = (code) => {
    sendStatus(code);
    reallyExit.call(process, code);
  };
}

const bundle = new Module(file, null);
bundle.filename = file;
bundle.paths = Module._nodeModulePaths(dirname(file));
bundle.loaded = true;
script.runInThisContext()(bundle.exports, Module.createRequire(file), bundle, file, dirname(file));
if (typeof bundle.exports.main === "function") bundle.exports.main(host);
