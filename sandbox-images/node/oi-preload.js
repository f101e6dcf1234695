// oi's Node preload: the container starts `node -r <this file> /tmp/main.js` before its block is
// known (see orchestrator/sandbox/bootstrap.py), so that Node's start-up is paid in advance.
// Here Node is loaded: tell the wrapper on fd 4, then wait for the one byte it writes to the
// FIFO .oi-start (next to the program) once the program is in place. Node then enters the
// directory the wrapper named in $PWD (the workdir) and runs the program as its main module,
// exactly as `node /tmp/main.js` started there would. If the wrapper ends first, no byte comes,
// and nothing runs.
// Until released, Node waits outside the workdir (in /) and this file loads only built-in
// modules, by their `node:` names, which no node_modules folder can shadow: nothing of the
// workdir is read before the program runs.
// Worker threads load preloads again and skip this; a cleared execArgv keeps
// child_process.fork() from passing `-r` on.
"use strict";
if (require("node:worker_threads").isMainThread) {
  const fs = require("node:fs");
  const path = require("node:path");
  const start = fs.openSync(path.join(path.dirname(process.argv[1]), ".oi-start"), "r");
  fs.writeSync(4, "1");
  fs.closeSync(4);
  const got = fs.readSync(start, Buffer.alloc(1), 0, 1, null);
  fs.closeSync(start);
  const workdir = process.env.PWD;
  if (got !== 1 || !workdir) {
    process.exit(125);
  }
  process.chdir(workdir);
  process.execArgv.length = 0;
  // The session's environment (bootstrap.py's ENV_VARIABLES): what the wrapper exported for
  // itself after the program arrived, which this Node (started before) has not seen. Then
  // `require` also looks in the session's npm prefix (`npm install -g` there).
  const env = process.env.OI_ENV;
  if (env && fs.existsSync(env)) {
    process.env.VIRTUAL_ENV = `${env}/venv`;
    process.env.PATH = `${env}/venv/bin:${env}/npm/bin:${process.env.PATH || ""}`;
    process.env.NPM_CONFIG_PREFIX = `${env}/npm`;
    process.env.NODE_PATH = `${env}/npm/lib/node_modules`;
    require("node:module")._initPaths();
  }
}
