// Standalone CNI fast-path server, for hosts that run no overlay agent (and for tests and the
// benchmark):
//
//   berth cni-server [--socket /run/berth/cni.sock] [--quiet]
//   node --import tsx bin/cni-server.ts [...]   (from the source tree)
//
// Prints "listening <path>" on stdout once the socket accepts; SIGTERM/SIGINT close it. Under
// socket activation (a service manager passes the socket named "cni", or a single unnamed one)
// that socket is served and --socket is not bound.
import { parseArgs } from "node:util";
import { CniServerStartError, DEFAULT_CNI_SOCKET, startCniServer } from "../cni/fastpath/server.ts";
import { ListenFdsError, type PassedListener, takeListener } from "../native/listen-fds.ts";
import { createLogger, LogFormatError, resolveLogFormat } from "../native/log.ts";
import { waitForStopSignal } from "../native/signals.ts";
import { BERTH_PLUGINS } from "../overlay/cni/registry.ts";

const USAGE = `usage: berth cni-server [--socket PATH] [--quiet] [--log-format json|text]

Serves the berth-* plugin launchers' fast path without the overlay agent.
  --socket PATH   the socket the launchers connect to (default ${DEFAULT_CNI_SOCKET}); a listening
                  socket passed by a service manager as "cni" is served instead
  --quiet         no log lines on stderr (start-up, refused callers, failed connections)
  --log-format F  json or text log lines (default: text on a terminal, else JSON)
`;

/** Runs the server until SIGTERM/SIGINT; resolves with the exit code once it has closed. */
export async function runCniServerCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      socket: { type: "string", default: DEFAULT_CNI_SOCKET },
      quiet: { type: "boolean", default: false },
      "log-format": { type: "string" },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  let log: ((line: string) => void) | undefined;
  try {
    const logger = createLogger({ component: "berth-cni-server", format: resolveLogFormat(values["log-format"]) });
    if (!values.quiet) log = (line) => logger.info(line);
  } catch (e) {
    if (!(e instanceof LogFormatError)) throw e;
    process.stderr.write(`berth cni-server: ${e.message}\n`);
    return 2;
  }
  let server: Awaited<ReturnType<typeof startCniServer>>;
  try {
    const passed: PassedListener | undefined = takeListener("cni", { soleUnnamed: true });
    server = await startCniServer({ socketPath: values.socket, plugins: BERTH_PLUGINS, log, passed });
  } catch (e) {
    if (!(e instanceof CniServerStartError || e instanceof ListenFdsError)) throw e;
    process.stderr.write(`berth cni-server: ${e.message}\n`);
    return 2;
  }
  process.stdout.write(`listening ${server.socketPath}\n`);
  await waitForStopSignal();
  return server.close().then(
    () => 0,
    () => 1,
  );
}

// Run directly (tsx): behave as `berth cni-server`.
if (process.argv[1] && import.meta.filename === process.argv[1]) {
  runCniServerCommand(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`berth cni server: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(1);
    },
  );
}
