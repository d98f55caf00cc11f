// `berth docker-plugin`: berth served to the Docker Engine through its legacy plugin API —
// HTTP+JSON on a unix socket in /run/docker/plugins/, where dockerd discovers it by the
// socket's file name. The routes are thin: each validates its body against a JSON schema and
// calls the adapter (csi/docker/volumes.ts), whose volumes are the CSI driver's. Every
// failure is {"Err": "..."} with a message for Docker's user, never a stack trace.
import { chmodSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import { parseArgs } from "node:util";
import Fastify, { type FastifyError, type FastifyInstance } from "fastify";
import pino, { type Logger } from "pino";
import { DockerPluginError, DockerVolumeService } from "../csi/docker/volumes.ts";
import { makeDirectories } from "../csi/paths.ts";
import { claimSocketPath } from "../overlay/cniserver/server.ts";

export const DEFAULT_DOCKER_SOCKET = "/run/docker/plugins/berth.sock";
/** Docker's plugin media type, for every API version it speaks (v1.0, v1.1, v1.2, v1.x). */
const DOCKER_MEDIA_TYPE = /^application\/vnd\.docker\.plugins\.v1(\.[0-9x]+)?\+json/;

export interface DockerPluginOptions {
  socket?: string;
  /** The CSI driver's state dir (csi.db); its volumes live in <csiDir>/volumes unless dataDir says otherwise. */
  csiDir?: string;
  dataDir?: string;
  /** Docker's mount points and the per-container use database. */
  dockerDir?: string;
  log?: Logger;
}

export interface RunningDockerPlugin {
  socket: string;
  app: FastifyInstance;
  close(): Promise<void>;
}

const ERR = { type: "object", properties: { Err: { type: "string" } }, required: ["Err"] } as const;
const NAME = { type: "string", minLength: 1, maxLength: 4096 } as const;
const ID = { type: "string", minLength: 1, maxLength: 4096 } as const;
const nameBody = (extra: Record<string, unknown> = {}, required: string[] = ["Name"]) => ({
  type: "object",
  properties: { Name: NAME, ...extra },
  required,
});
const VOLUME = {
  type: "object",
  properties: {
    Name: { type: "string" },
    Mountpoint: { type: "string" },
    CreatedAt: { type: "string" },
    Status: { type: "object", additionalProperties: { type: ["string", "number"] } },
  },
  required: ["Name"],
} as const;
const replies = (ok: Record<string, unknown>) => ({
  200: { type: "object", properties: ok },
  "4xx": ERR,
  "5xx": ERR,
});

function errorMessage(route: string, e: FastifyError | Error): { status: number; message: string } {
  const fe = e as FastifyError;
  if (fe.validation) return { status: 400, message: `${route}: invalid request: ${fe.message}` };
  if (e instanceof DockerPluginError) return { status: e.statusCode, message: e.message };
  if (fe.code === "FST_ERR_CTP_BODY_TOO_LARGE") return { status: 413, message: `${route}: request body is too large` };
  if (fe.statusCode && fe.statusCode < 500) return { status: fe.statusCode, message: `${route}: ${e.message}` };
  return { status: 500, message: `${route}: ${e.message}` };
}

export function buildDockerPluginApp(volumes: DockerVolumeService, log: Logger): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: 64 * 1024,
    // Unknown and mistyped fields are reported, not dropped or coerced.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false } },
  });
  // Docker posts its own media type; some clients post application/json; both are JSON. An
  // empty body or `null` (Docker's encoding of a nil request) is an empty object.
  const parseJson = (_req: unknown, body: string, done: (err: Error | null, value?: unknown) => void) => {
    if (body.trim() === "" || body.trim() === "null") return done(null, {});
    try {
      done(null, JSON.parse(body));
    } catch {
      const err = new Error("request body is not JSON") as FastifyError;
      err.statusCode = 400;
      done(err);
    }
  };
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "string" }, parseJson);
  app.addContentTypeParser(DOCKER_MEDIA_TYPE, { parseAs: "string" }, parseJson);
  app.addContentTypeParser("*", { parseAs: "string" }, parseJson);
  app.addHook("preValidation", async (req) => {
    if (req.body === undefined || req.body === null) req.body = {};
  });
  app.setErrorHandler((e: FastifyError, req, reply) => {
    const route = req.url.replace(/^\//, "").slice(0, 64);
    const { status, message } = errorMessage(route, e);
    (status >= 500 ? log.error.bind(log) : log.info.bind(log))({ route, status, err: message }, "request failed");
    reply.code(status).send({ Err: message });
  });
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send({ Err: `${req.method} ${req.url.slice(0, 128)}: no such plugin endpoint` });
  });

  app.post(
    "/Plugin.Activate",
    { schema: { response: replies({ Implements: { type: "array", items: { type: "string" } } }) } },
    async () => ({
      Implements: ["VolumeDriver"],
    }),
  );

  // ---- VolumeDriver ----
  app.post<{ Body: { Name: string; Opts?: Record<string, string> | null } }>(
    "/VolumeDriver.Create",
    {
      schema: {
        body: nameBody({ Opts: { type: ["object", "null"], additionalProperties: { type: "string" }, maxProperties: 64 } }),
        response: replies({}),
      },
    },
    async (req) => {
      await volumes.create(req.body.Name, req.body.Opts ?? {});
      return {};
    },
  );
  app.post<{ Body: { Name: string } }>(
    "/VolumeDriver.Remove",
    { schema: { body: nameBody(), response: replies({}) } },
    async (req) => {
      await volumes.remove(req.body.Name);
      return {};
    },
  );
  app.post<{ Body: { Name: string; ID: string } }>(
    "/VolumeDriver.Mount",
    { schema: { body: nameBody({ ID }, ["Name", "ID"]), response: replies({ Mountpoint: { type: "string" } }) } },
    async (req) => ({ Mountpoint: await volumes.mount(req.body.Name, req.body.ID) }),
  );
  app.post<{ Body: { Name: string; ID: string } }>(
    "/VolumeDriver.Unmount",
    { schema: { body: nameBody({ ID }, ["Name", "ID"]), response: replies({}) } },
    async (req) => {
      await volumes.unmount(req.body.Name, req.body.ID);
      return {};
    },
  );
  app.post<{ Body: { Name: string } }>(
    "/VolumeDriver.Path",
    { schema: { body: nameBody(), response: replies({ Mountpoint: { type: "string" } }) } },
    async (req) => ({ Mountpoint: volumes.path(req.body.Name) }),
  );
  app.post<{ Body: { Name: string } }>(
    "/VolumeDriver.Get",
    { schema: { body: nameBody(), response: replies({ Volume: VOLUME }) } },
    async (req) => ({ Volume: volumes.get(req.body.Name) }),
  );
  app.post(
    "/VolumeDriver.List",
    { schema: { body: { type: "object" }, response: replies({ Volumes: { type: "array", items: VOLUME } }) } },
    async () => ({ Volumes: volumes.list() }),
  );
  app.post(
    "/VolumeDriver.Capabilities",
    {
      schema: {
        body: { type: "object" },
        response: replies({ Capabilities: { type: "object", properties: { Scope: { type: "string" } }, required: ["Scope"] } }),
      },
    },
    async () => ({ Capabilities: { Scope: "local" } }),
  );
  return app;
}

/** Opens the volume service, claims the socket (a stale file is replaced, a live server refused) and serves. */
export async function startDockerPlugin(options: DockerPluginOptions = {}): Promise<RunningDockerPlugin> {
  const log = options.log ?? pino({ name: "berth-docker", level: process.env.BERTH_LOG_LEVEL ?? "info" }, pino.destination(2));
  const socket = options.socket ?? DEFAULT_DOCKER_SOCKET;
  if (!socket.startsWith("/")) throw new DockerPluginError(`--socket must be an absolute path, got ${JSON.stringify(socket)}`);
  if (!socket.endsWith(".sock"))
    throw new DockerPluginError(
      `--socket must end in .sock (Docker names the plugin after the file), got ${JSON.stringify(socket)}`,
    );
  makeDirectories(dirname(socket), 0o755);
  await claimSocketPath(socket, "Docker plugin");
  const volumes = await DockerVolumeService.open({
    stateDir: options.csiDir,
    dataDir: options.dataDir,
    dockerDir: options.dockerDir,
    log,
  });
  const app = buildDockerPluginApp(volumes, log);
  try {
    await app.listen({ path: socket });
    chmodSync(socket, 0o660);
  } catch (e) {
    volumes.close();
    throw e;
  }
  log.info({ socket }, "Docker plugin serving");
  return {
    socket,
    app,
    async close() {
      await app.close();
      volumes.close();
      try {
        unlinkSync(socket);
      } catch {}
    },
  };
}

const HELP = `usage: berth docker-plugin [--socket PATH] [--csi-dir DIR] [--docker-dir DIR]

Serves berth's volumes to the Docker Engine (VolumeDriver plugin API) on a unix socket that
dockerd discovers in /run/docker/plugins/; the plugin's name is the socket file's name.
  --socket PATH      the socket (default ${DEFAULT_DOCKER_SOCKET}, mode 0660)
  --csi-dir DIR      the CSI driver's state dir; volumes under DIR/volumes (default /var/lib/berth/csi)
  --docker-dir DIR   Docker's mount points and use counts (default /var/lib/berth/docker)
`;

export async function runDockerPluginCommand(argv: string[]): Promise<number> {
  let values: { socket?: string; "csi-dir"?: string; "docker-dir"?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        socket: { type: "string" },
        "csi-dir": { type: "string" },
        "docker-dir": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    process.stderr.write(`berth docker-plugin: ${(e as Error).message}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  for (const flag of ["csi-dir", "docker-dir"] as const) {
    const v = values[flag];
    if (v !== undefined && !v.startsWith("/")) {
      process.stderr.write(`berth docker-plugin: --${flag} must be an absolute path, got ${JSON.stringify(v)}\n`);
      return 2;
    }
  }
  let plugin: RunningDockerPlugin;
  try {
    plugin = await startDockerPlugin({ socket: values.socket, csiDir: values["csi-dir"], dockerDir: values["docker-dir"] });
  } catch (e) {
    process.stderr.write(`berth docker-plugin: ${(e as Error).message}\n`);
    return e instanceof DockerPluginError ? 2 : 1;
  }
  process.stderr.write(`berth docker-plugin: serving ${plugin.socket}\n`);
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
  await plugin.close();
  return 0;
}
