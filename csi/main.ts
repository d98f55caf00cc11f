// `berth csi`: the command line of the CSI driver (flags, CSI_ENDPOINT, a socket passed by a
// service manager); it runs the driver until SIGINT or SIGTERM.
import { parseArgs } from "node:util";
import type { Logger } from "pino";
import { ListenFdsError, type PassedListener, takeListener } from "../native/listen-fds.ts";
import { createLogger, LogFormatError, resolveLogFormat } from "../native/log.ts";
import { waitForStopSignal } from "../native/signals.ts";
import { ConfigError } from "./errors.ts";
import type { DriverMode } from "./identity.ts";
import { type RunningCsiDriver, startCsiDriver } from "./server.ts";

const USAGE = `usage: berth csi [--endpoint unix:///path/csi.sock] [--node-id ID] [--driver-name NAME]
                 [--data-dir DIR] [--state-dir DIR] [--mode controller|node|both]
                 [--metrics-listen HOST:PORT] [--enable-alpha-capabilities] [--log-format json|text]

  --endpoint URL          the gRPC socket (default $CSI_ENDPOINT; a socket passed by a service
                          manager as "csi" is served instead)
  --node-id ID            this node's id in NodeGetInfo and topology (default: the host name)
  --driver-name NAME      the driver's name in GetPluginInfo (default berth.csi.local)
  --data-dir DIR          volume files and directories (default /var/lib/berth/csi/volumes)
  --state-dir DIR         the volume database csi.db (default /var/lib/berth/csi)
  --mode MODE             controller, node or both services (default both)
  --metrics-listen HOST:PORT  serve Prometheus metrics over HTTP at /metrics
  --enable-alpha-capabilities  also advertise alpha controller capabilities (GET_SNAPSHOT)
  --log-format FORMAT     json or text log lines (default: text on a terminal, else JSON)`;

/** `berth csi ...`: runs until SIGINT/SIGTERM; returns the exit code. */
export async function runCsiCommand(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        endpoint: { type: "string" },
        "node-id": { type: "string" },
        "driver-name": { type: "string" },
        "data-dir": { type: "string" },
        "state-dir": { type: "string" },
        mode: { type: "string" },
        "metrics-listen": { type: "string" },
        "enable-alpha-capabilities": { type: "boolean" },
        "log-format": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }));
  } catch (e) {
    process.stderr.write(`berth csi: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  let logger: Logger;
  try {
    logger = createLogger({ component: "berth-csi", format: resolveLogFormat(values["log-format"] as string | undefined) });
  } catch (e) {
    if (!(e instanceof LogFormatError)) throw e;
    process.stderr.write(`berth csi: ${e.message}\n${USAGE}\n`);
    return 2;
  }
  // Socket activation: a socket passed as "csi" (or a single unnamed one) is served instead.
  let passed: PassedListener | undefined;
  try {
    passed = takeListener("csi", { soleUnnamed: true });
  } catch (e) {
    if (!(e instanceof ListenFdsError)) throw e;
    process.stderr.write(`berth csi: ${e.message}\n`);
    return 2;
  }
  const endpoint =
    (values.endpoint as string | undefined) ??
    process.env.CSI_ENDPOINT ??
    (passed ? `unix://${passed.path || `(descriptor ${passed.fd})`}` : undefined);
  if (!endpoint) {
    process.stderr.write(`berth csi: --endpoint or CSI_ENDPOINT is required\n${USAGE}\n`);
    return 2;
  }
  let driver: RunningCsiDriver;
  try {
    driver = await startCsiDriver({
      passed,
      endpoint,
      logger,
      nodeId: values["node-id"] as string | undefined,
      driverName: values["driver-name"] as string | undefined,
      dataDir: values["data-dir"] as string | undefined,
      stateDir: values["state-dir"] as string | undefined,
      mode: values.mode as DriverMode | undefined,
      metricsListen: values["metrics-listen"] as string | undefined,
      alphaCapabilities: values["enable-alpha-capabilities"] === true,
    });
  } catch (e) {
    process.stderr.write(`berth csi: ${(e as Error).message}\n`);
    return e instanceof ConfigError ? 2 : 1;
  }
  const signal = await waitForStopSignal();
  logger.info({ signal }, "shutting down");
  await driver.close();
  return 0;
}
