"use strict";
// The cold path's first JavaScript: the launcher execs `node boot.cjs <plugin bundle>` when no
// agent answers. It runs the bundle as the main module, compiled with a V8 code cache kept
// beside it (<bundle>.<CNI_COMMAND>.v8cache): compiling a 200 KiB bundle, and the functions an ADD touches,
// costs a fresh Node ~15 ms that the cache turns into a few. The first run (or one whose cache
// V8 rejects: another Node, other flags, a rebuilt bundle) writes the cache at exit, through a
// temporary file and a rename; a read-only install simply runs without one. Bundles must not
// use import(): a vm.Script has no module loader (scripts/bundle.mjs turns it into require()).
const { readFileSync, renameSync, rmSync, writeFileSync } = require("node:fs");
const { dirname, resolve } = require("node:path");
const Module = require("node:module");
const vm = require("node:vm");

const file = resolve(process.argv[2] ?? "");
process.argv.splice(1, 1); // the bundle sees itself as argv[1], as when run directly
// One cache per command: a cache holds the functions its run compiled, and a VERSION run's
// would leave an ADD compiling nearly everything again.
const command = /^[A-Z]{1,8}$/.test(process.env.CNI_COMMAND ?? "") ? process.env.CNI_COMMAND : "OTHER";
const cacheFile = `${file}.${command}.v8cache`;

let source;
try {
  source = readFileSync(file, "utf8");
} catch (e) {
  process.stderr.write(`berth: cannot read plugin bundle ${file}: ${e.message}\n`);
  process.exit(1);
}
let cachedData;
try {
  cachedData = readFileSync(cacheFile);
} catch {
  // no cache yet
}
// The shebang goes, its newline stays: stack traces keep the bundle's line numbers.
const script = new vm.Script(Module.wrap(source.replace(/^#!.*/, "")), {
  filename: file,
  cachedData,
});
if (cachedData === undefined || script.cachedDataRejected) {
  process.once("exit", () => {
    const tmp = `${cacheFile}.${process.pid}`;
    try {
      writeFileSync(tmp, script.createCachedData(), { mode: 0o644 });
      renameSync(tmp, cacheFile);
    } catch {
      rmSync(tmp, { force: true });
    }
  });
}

const main = new Module(file, null);
main.filename = file;
main.paths = Module._nodeModulePaths(dirname(file));
main.loaded = true;
process.mainModule = main;
script.runInThisContext()(main.exports, Module.createRequire(file), main, file, dirname(file));
