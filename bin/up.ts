// `berth up`: everything berth runs on one host, in the foreground — the overlay agent on the
// embedded store (single-host defaults) and the CSI driver on its default endpoint. Ctrl-C
// stops both cleanly. Own flags: `--no-csi` leaves the driver out, `--csi-endpoint URL`
// (default $CSI_ENDPOINT, else unix:///run/berth/csi.sock) and `--csi-dir DIR` (volumes under
// DIR/volumes, state in DIR; default /var/lib/berth/csi); `--docker` also serves the Docker
// plugin (bin/docker-plugin.ts) over the same volume state, on `--docker-socket PATH`
// (default /run/docker/plugins/berth.sock); every other flag goes to the agent.
import { ListenFdsError, takeListener } from "../native/listen-fds.ts";
import { createLogger, type LogFormat, LogFormatError, resolveLogFormat } from "../native/log.ts";
import { runUp } from "../overlay/agent.ts";

export const DEFAULT_CSI_ENDPOINT = "unix:///run/berth/csi.sock";

const UP_USAGE = `usage: berth up [--no-csi] [--csi-endpoint URL] [--csi-dir DIR] [--docker [--docker-socket PATH]] [agent flags]

Runs the overlay agent on the embedded store plus the CSI driver (and the Docker plugin) in the
foreground; Ctrl-C stops them. Every flag not listed here goes to the agent (below).
  --no-csi              leave the CSI driver out
  --csi-endpoint URL    the CSI driver's socket (default $CSI_ENDPOINT, else ${DEFAULT_CSI_ENDPOINT})
  --csi-dir DIR         volumes under DIR/volumes, their state in DIR (default /var/lib/berth/csi)
  --docker              also serve the Docker plugin API over the same volume state
  --docker-socket PATH  the Docker plugin's socket (default /run/docker/plugins/berth.sock)
  --log-format FORMAT   json or text log lines for all of them (default: text on a terminal,
                        else JSON)

`;

interface UpArgs {
  csi: boolean;
  csiEndpoint: string;
  csiDir?: string;
  docker: boolean;
  dockerSocket?: string;
  logFormat?: string;
  agentArgs: string[];
}

function splitArgs(argv: string[]): UpArgs | string {
  const up: UpArgs = { csi: true, docker: false, csiEndpoint: process.env.CSI_ENDPOINT ?? DEFAULT_CSI_ENDPOINT, agentArgs: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] =
      a.startsWith("--") && a.includes("=") ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a];
    if (flag === "--no-csi") up.csi = false;
    else if (flag === "--docker") up.docker = true;
    else if (flag === "--csi-endpoint" || flag === "--csi-dir" || flag === "--docker-socket" || flag === "--log-format") {
      const value = inline ?? argv[++i];
      if (!value || (inline === undefined && value.startsWith("--"))) return `${flag} needs a value`;
      if (flag === "--csi-endpoint") up.csiEndpoint = value;
      else if (flag === "--log-format") {
        // The agent logs in the same format.
        up.logFormat = value;
        up.agentArgs.push(`--log-format=${value}`);
      } else if (flag === "--docker-socket") up.dockerSocket = value;
      else if (!value.startsWith("/")) return `--csi-dir must be an absolute path, got ${JSON.stringify(value)}`;
      else up.csiDir = value;
    } else up.agentArgs.push(a);
  }
  return up;
}

/** The value of an agent flag (`--flag V` or `--flag=V`), for the parts of up that share it. */
function agentFlag(args: string[], flag: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === flag) return args[i + 1];
    if (args[i]!.startsWith(`${flag}=`)) return args[i]!.slice(flag.length + 1);
  }
  return undefined;
}

export async function runUpWithStorage(argv: string[]): Promise<number> {
  const up = splitArgs(argv);
  if (typeof up === "string") {
    process.stderr.write(`berth up: ${up}\n`);
    return 2;
  }
  if (up.agentArgs.includes("--help") || up.agentArgs.includes("-h")) {
    process.stdout.write(UP_USAGE);
    return runUp(up.agentArgs);
  }
  let format: LogFormat;
  try {
    format = resolveLogFormat(up.logFormat);
  } catch (e) {
    if (!(e instanceof LogFormatError)) throw e;
    process.stderr.write(`berth up: ${e.message}\n`);
    return 2;
  }
  const log = createLogger({ component: "berth-up", format });
  let csi: { close(): Promise<void> } | undefined;
  if (up.csi) {
    const { startCsiDriver } = await import("../csi/server.ts");
    try {
      // Socket activation: a socket passed as "csi" is served instead of the endpoint's path.
      const passed = takeListener("csi");
      const driver = await startCsiDriver({
        passed,
        endpoint: passed?.path ? `unix://${passed.path}` : up.csiEndpoint,
        stateDir: up.csiDir,
        dataDir: up.csiDir ? `${up.csiDir}/volumes` : undefined,
        logger: createLogger({ component: "berth-csi", format }),
      });
      csi = driver;
      log.info({ endpoint: driver.endpoint }, "CSI driver serving");
    } catch (e) {
      process.stderr.write(`berth up: CSI driver not started: ${(e as Error).message}\n`);
      return e instanceof ListenFdsError ? 2 : 1;
    }
  }
  let docker: { close(): Promise<void> } | undefined;
  if (up.docker) {
    const { startDockerPlugin } = await import("./docker-plugin.ts");
    try {
      // With --csi-dir, Docker's mount points and use counts live beside the volume state.
      const dockerDir = up.csiDir ? `${up.csiDir}/docker` : undefined;
      const plugin = await startDockerPlugin({
        socket: up.dockerSocket,
        csiDir: up.csiDir,
        dockerDir,
        overlayRunDir: agentFlag(up.agentArgs, "--run-dir"),
        log: createLogger({ component: "berth-docker", format }),
      });
      docker = plugin; // it logs "Docker plugin serving" itself
    } catch (e) {
      process.stderr.write(`berth up: Docker plugin not started: ${(e as Error).message}\n`);
      await csi?.close();
      return 1;
    }
  }
  try {
    return await runUp(up.agentArgs);
  } finally {
    await docker?.close();
    await csi?.close();
  }
}
