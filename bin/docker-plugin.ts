// `berth docker-plugin`: berth served to the Docker Engine through its legacy plugin API —
// HTTP+JSON on a unix socket in /run/docker/plugins/, where dockerd discovers it by the
// socket's file name. The routes are thin: each validates its body against a JSON schema and
// calls the adapter (csi/docker/volumes.ts), whose volumes are the CSI driver's. Every
// failure is {"Err": "..."} with a message for Docker's user, never a stack trace.
import { chmodSync, unlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import Fastify, { type FastifyError, type FastifyInstance } from "fastify";
import type { Logger } from "pino";
import { DockerNetworkError, type DockerNetworking, openDockerNetworking } from "../cni/docker/network.ts";
import { DEFAULT_DATA_DIR as DEFAULT_IPAM_DIR } from "../cni/ipam/ranges.ts";
import { DEFAULT_TABLE } from "../cni/nft/nft.ts";
import { DockerPluginError, DockerVolumeService } from "../csi/docker/volumes.ts";
import { makeDirectories } from "../csi/paths.ts";
import { createLogger } from "../native/log.ts";
import { waitForStopSignal } from "../native/signals.ts";
import { claimSocketPath } from "../native/unix-socket.ts";
import { DEFAULT_DATA_DIR as DEFAULT_OVERLAY_DATA_DIR, DEFAULT_RUN_DIR } from "../overlay/cni/plugin.ts";
import { readOverlayRuntime } from "../overlay/runtime-file.ts";

export const DEFAULT_DOCKER_SOCKET = "/run/docker/plugins/berth.sock";
/** Docker's plugin media type, for every API version it speaks (v1.0, v1.1, v1.2, v1.x). */
const DOCKER_MEDIA_TYPE = /^application\/vnd\.docker\.plugins\.v1(\.[0-9x]+)?\+json/;

export interface DockerPluginOptions {
  socket?: string;
  /** The CSI driver's state dir (csi.db); its volumes live in <csiDir>/volumes unless dataDir says otherwise. */
  csiDir?: string;
  dataDir?: string;
  /** Docker's mount points, the per-container use database and the network state. */
  dockerDir?: string;
  /** berth's IPAM lease store (default /var/lib/berth/ipam, the CNI plugins' own). */
  ipamDir?: string;
  /** berth's nftables table for published ports. */
  nftTable?: string;
  /** The overlay agent's run dir (its overlay.json), for -o berth.overlay=true networks. */
  overlayRunDir?: string;
  /** berth-overlay's data dir: overlay pools lease from its store (<dir>/ipam), as the host's CNI pods do. */
  overlayDataDir?: string;
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
  if (e instanceof DockerPluginError || e instanceof DockerNetworkError) return { status: e.statusCode, message: e.message };
  if (fe.code === "FST_ERR_CTP_BODY_TOO_LARGE") return { status: 413, message: `${route}: request body is too large` };
  if (fe.statusCode && fe.statusCode < 500) return { status: fe.statusCode, message: `${route}: ${e.message}` };
  return { status: 500, message: `${route}: ${e.message}` };
}

export function buildDockerPluginApp(volumes: DockerVolumeService, net: DockerNetworking, log: Logger): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: 64 * 1024,
    // Unknown and mistyped fields are reported, not dropped or coerced.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false } },
  });
  // Docker posts its own media type, other clients application/json or nothing: every body is
  // read as JSON. An empty body or `null` (Docker's encoding of a nil request) is an empty object.
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
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(DOCKER_MEDIA_TYPE, { parseAs: "string" }, parseJson);
  app.addContentTypeParser("*", { parseAs: "string" }, parseJson);
  app.addHook("preValidation", async (req) => {
    if (req.body === undefined || req.body === null) req.body = {};
  });
  // Answers are checked too, not only serialised: a reply that does not match its route's
  // schema (a missing or mistyped field Docker would misread) becomes an Err instead.
  app.addHook("preSerialization", async (req, reply, payload) => {
    const responses = req.routeOptions.schema?.response as Record<string, object> | undefined;
    const code = String(reply.statusCode);
    const schema = responses?.[code] ?? responses?.[`${code[0]}xx`];
    if (!schema) return payload;
    const validate = req.compileValidationSchema(schema);
    if (validate(payload)) return payload;
    const why = (validate.errors ?? []).map((e) => `${e.instancePath || "answer"} ${e.message}`).join("; ");
    throw new Error(`internal error: the answer does not match its schema (${why})`);
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
      Implements: ["VolumeDriver", "NetworkDriver", "IpamDriver"],
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

  // ---- IpamDriver ----
  const EMPTY = { type: "object" } as const;
  const STRINGS = { type: ["object", "null"], additionalProperties: { type: "string" }, maxProperties: 64 } as const;
  app.post(
    "/IpamDriver.GetCapabilities",
    {
      schema: {
        body: EMPTY,
        response: replies({ RequiresMACAddress: { type: "boolean" }, RequiresRequestReplay: { type: "boolean" } }),
      },
    },
    async () => ({
      RequiresMACAddress: false,
      RequiresRequestReplay: false,
    }),
  );
  app.post(
    "/IpamDriver.GetDefaultAddressSpaces",
    {
      schema: {
        body: EMPTY,
        response: replies({ LocalDefaultAddressSpace: { type: "string" }, GlobalDefaultAddressSpace: { type: "string" } }),
      },
    },
    async () => ({ LocalDefaultAddressSpace: "berth-local", GlobalDefaultAddressSpace: "berth-global" }),
  );
  app.post<{
    Body: { AddressSpace?: string; Pool?: string; SubPool?: string; Options?: Record<string, string> | null; V6?: boolean };
  }>(
    "/IpamDriver.RequestPool",
    {
      schema: {
        body: {
          type: "object",
          properties: {
            AddressSpace: { type: "string", maxLength: 256 },
            Pool: { type: "string", maxLength: 64 },
            SubPool: { type: "string", maxLength: 64 },
            Options: STRINGS,
            V6: { type: "boolean" },
          },
        },
        response: replies({
          PoolID: { type: "string" },
          Pool: { type: "string" },
          Data: { type: "object", additionalProperties: { type: "string" } },
        }),
      },
    },
    async (req) => net.ipam.requestPool(req.body),
  );
  app.post<{ Body: { PoolID: string } }>(
    "/IpamDriver.ReleasePool",
    {
      schema: {
        body: { type: "object", properties: { PoolID: { type: "string", maxLength: 256 } }, required: ["PoolID"] },
        response: replies({}),
      },
    },
    async (req) => {
      net.ipam.releasePool(req.body.PoolID);
      return {};
    },
  );
  app.post<{ Body: { PoolID: string; Address?: string; Options?: Record<string, string> | null } }>(
    "/IpamDriver.RequestAddress",
    {
      schema: {
        body: {
          type: "object",
          properties: {
            PoolID: { type: "string", maxLength: 256 },
            Address: { type: "string", maxLength: 64 },
            Options: STRINGS,
          },
          required: ["PoolID"],
        },
        response: replies({ Address: { type: "string" }, Data: { type: "object", additionalProperties: { type: "string" } } }),
      },
    },
    async (req) => net.ipam.requestAddress(req.body),
  );
  app.post<{ Body: { PoolID: string; Address: string } }>(
    "/IpamDriver.ReleaseAddress",
    {
      schema: {
        body: {
          type: "object",
          properties: { PoolID: { type: "string", maxLength: 256 }, Address: { type: "string", maxLength: 64 } },
          required: ["PoolID", "Address"],
        },
        response: replies({}),
      },
    },
    async (req) => {
      net.ipam.releaseAddress(req.body);
      return {};
    },
  );

  // ---- NetworkDriver ----
  const NID = { type: "string", maxLength: 128 } as const;
  const OPTIONS = { type: ["object", "null"], maxProperties: 64 } as const;
  const endpointBody = (extra: Record<string, unknown> = {}, required: string[] = []) => ({
    type: "object",
    properties: { NetworkID: NID, EndpointID: NID, ...extra },
    required: ["NetworkID", "EndpointID", ...required],
  });
  app.post(
    "/NetworkDriver.GetCapabilities",
    { schema: { body: EMPTY, response: replies({ Scope: { type: "string" }, ConnectivityScope: { type: "string" } }) } },
    async () => ({
      Scope: "local",
      ConnectivityScope: "local",
    }),
  );
  app.post<{ Body: Parameters<DockerNetworking["networks"]["createNetwork"]>[0] }>(
    "/NetworkDriver.CreateNetwork",
    {
      schema: {
        body: {
          type: "object",
          properties: {
            NetworkID: NID,
            Options: OPTIONS,
            IPv4Data: {
              type: ["array", "null"],
              maxItems: 16,
              items: {
                type: "object",
                properties: {
                  AddressSpace: { type: "string" },
                  Pool: { type: "string" },
                  Gateway: { type: "string" },
                  AuxAddresses: STRINGS,
                },
                required: ["Pool"],
              },
            },
            IPv6Data: { type: ["array", "null"], maxItems: 16 },
          },
          required: ["NetworkID"],
        },
        response: replies({}),
      },
    },
    async (req) => {
      await net.networks.createNetwork(req.body);
      return {};
    },
  );
  app.post<{ Body: { NetworkID: string } }>(
    "/NetworkDriver.DeleteNetwork",
    { schema: { body: { type: "object", properties: { NetworkID: NID }, required: ["NetworkID"] }, response: replies({}) } },
    async (req) => {
      await net.networks.deleteNetwork(req.body.NetworkID);
      return {};
    },
  );
  app.post<{ Body: Parameters<DockerNetworking["networks"]["createEndpoint"]>[0] }>(
    "/NetworkDriver.CreateEndpoint",
    {
      schema: {
        body: endpointBody({
          Options: OPTIONS,
          Interface: {
            type: ["object", "null"],
            properties: {
              Address: { type: "string", maxLength: 64 },
              AddressIPv6: { type: "string", maxLength: 64 },
              MacAddress: { type: "string", maxLength: 64 },
            },
          },
        }),
        response: replies({ Interface: { type: ["object", "null"], properties: { MacAddress: { type: "string" } } } }),
      },
    },
    async (req) => net.networks.createEndpoint(req.body),
  );
  app.post<{ Body: { NetworkID: string; EndpointID: string } }>(
    "/NetworkDriver.DeleteEndpoint",
    { schema: { body: endpointBody(), response: replies({}) } },
    async (req) => {
      await net.networks.deleteEndpoint(req.body.NetworkID, req.body.EndpointID);
      return {};
    },
  );
  app.post<{ Body: { NetworkID: string; EndpointID: string } }>(
    "/NetworkDriver.EndpointOperInfo",
    {
      schema: {
        body: endpointBody(),
        response: replies({ Value: { type: "object", additionalProperties: { type: "string" } } }),
      },
    },
    async (req) => net.networks.endpointInfo(req.body.NetworkID, req.body.EndpointID),
  );
  app.post<{ Body: { NetworkID: string; EndpointID: string; SandboxKey: string } }>(
    "/NetworkDriver.Join",
    {
      schema: {
        body: endpointBody({ SandboxKey: { type: "string", maxLength: 4096 }, Options: OPTIONS }, ["SandboxKey"]),
        response: replies({
          InterfaceName: {
            type: "object",
            properties: { SrcName: { type: "string" }, DstPrefix: { type: "string" } },
            required: ["SrcName", "DstPrefix"],
          },
          Gateway: { type: "string" },
          StaticRoutes: {
            type: "array",
            items: {
              type: "object",
              properties: { Destination: { type: "string" }, RouteType: { type: "integer" }, NextHop: { type: "string" } },
            },
          },
          DisableGatewayService: { type: "boolean" },
        }),
      },
    },
    async (req) => net.networks.join(req.body.NetworkID, req.body.EndpointID, req.body.SandboxKey),
  );
  app.post<{ Body: { NetworkID: string; EndpointID: string } }>(
    "/NetworkDriver.Leave",
    { schema: { body: endpointBody(), response: replies({}) } },
    async (req) => {
      net.networks.leave(req.body.NetworkID, req.body.EndpointID);
      return {};
    },
  );
  for (const route of ["/NetworkDriver.DiscoverNew", "/NetworkDriver.DiscoverDelete"]) {
    app.post(
      route,
      { schema: { body: { type: "object", properties: { DiscoveryType: { type: "integer" } } }, response: replies({}) } },
      async () => ({}),
    );
  }
  app.post<{ Body: { NetworkID: string; EndpointID: string; Options?: Record<string, unknown> | null } }>(
    "/NetworkDriver.ProgramExternalConnectivity",
    { schema: { body: endpointBody({ Options: OPTIONS }), response: replies({}) } },
    async (req) => {
      await net.networks.programExternalConnectivity(req.body.NetworkID, req.body.EndpointID, req.body.Options ?? {});
      return {};
    },
  );
  app.post<{ Body: { NetworkID: string; EndpointID: string } }>(
    "/NetworkDriver.RevokeExternalConnectivity",
    { schema: { body: endpointBody(), response: replies({}) } },
    async (req) => {
      await net.networks.revokeExternalConnectivity(req.body.NetworkID, req.body.EndpointID);
      return {};
    },
  );
  for (const route of ["/NetworkDriver.AllocateNetwork", "/NetworkDriver.FreeNetwork"]) {
    app.post(route, { schema: { response: replies({}) } }, async () => {
      throw new DockerNetworkError("berth's Docker networks are local scope: there is nothing to allocate across a swarm");
    });
  }
  return app;
}

/** Opens the volume service, claims the socket (a stale file is replaced, a live server refused) and serves. */
export async function startDockerPlugin(options: DockerPluginOptions = {}): Promise<RunningDockerPlugin> {
  const log = options.log ?? createLogger({ component: "berth-docker" });
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
  let net: DockerNetworking;
  try {
    makeDirectories(options.dockerDir ?? "/var/lib/berth/docker", 0o700);
    net = await openDockerNetworking({
      ipamDir: options.ipamDir ?? DEFAULT_IPAM_DIR,
      dockerDir: options.dockerDir ?? "/var/lib/berth/docker",
      nftTable: options.nftTable ?? DEFAULT_TABLE,
      overlay: () => {
        const rt = readOverlayRuntime(options.overlayRunDir ?? DEFAULT_RUN_DIR);
        if (!rt.subnet || !rt.gateway) throw new Error("the agent holds no IPv4 subnet");
        return { subnet: rt.subnet, gateway: rt.gateway, mtu: rt.mtu ?? 1450 };
      },
      overlayIpamDir: join(options.overlayDataDir ?? DEFAULT_OVERLAY_DATA_DIR, "ipam"),
      log,
    });
  } catch (e) {
    volumes.close();
    throw e;
  }
  const app = buildDockerPluginApp(volumes, net, log);
  try {
    await app.listen({ path: socket });
    chmodSync(socket, 0o660);
  } catch (e) {
    volumes.close();
    net.close();
    throw e;
  }
  log.info({ socket }, "Docker plugin serving");
  return {
    socket,
    app,
    async close() {
      await app.close();
      // Volumes kept staged for quick starts are released; those containers use stay.
      await volumes.unstageIdle();
      volumes.close();
      net.close();
      try {
        unlinkSync(socket);
      } catch {}
    },
  };
}

const HELP = `usage: berth docker-plugin [--socket PATH] [--csi-dir DIR] [--docker-dir DIR] [--ipam-dir DIR] [--nft-table NAME] [--overlay-run-dir DIR] [--overlay-data-dir DIR]

Serves berth's volumes and bridge networks to the Docker Engine (VolumeDriver, NetworkDriver and
IpamDriver plugin APIs) on a unix socket that dockerd discovers in /run/docker/plugins/; the
plugin's name is the socket file's name. Networks: docker network create -d NAME
--ipam-driver NAME --subnet CIDR [-o berth.bridge=IFNAME] [-o berth.mtu=N]; on the VXLAN
overlay (a berth agent on this host): docker network create -d NAME --ipam-driver NAME
-o berth.overlay=true (this host's leased subnet, the overlay MTU, berth-overlay's bridge).
  --socket PATH      the socket (default ${DEFAULT_DOCKER_SOCKET}, mode 0660)
  --csi-dir DIR      the CSI driver's state dir; volumes under DIR/volumes (default /var/lib/berth/csi)
  --docker-dir DIR   Docker's mount points, use counts and network state (default /var/lib/berth/docker)
  --ipam-dir DIR     berth's IPAM lease store (default ${DEFAULT_IPAM_DIR})
  --nft-table NAME   berth's nftables table for published ports (default ${DEFAULT_TABLE})
  --overlay-run-dir DIR  the berth agent's run dir with overlay.json (default ${DEFAULT_RUN_DIR})
  --overlay-data-dir DIR berth-overlay's data dir; overlay addresses lease from DIR/ipam, shared
                         with the host's CNI pods (default ${DEFAULT_OVERLAY_DATA_DIR})
`;

export async function runDockerPluginCommand(argv: string[]): Promise<number> {
  let values: {
    socket?: string;
    "csi-dir"?: string;
    "docker-dir"?: string;
    "ipam-dir"?: string;
    "nft-table"?: string;
    "overlay-run-dir"?: string;
    "overlay-data-dir"?: string;
    help?: boolean;
  };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        socket: { type: "string" },
        "csi-dir": { type: "string" },
        "docker-dir": { type: "string" },
        "ipam-dir": { type: "string" },
        "nft-table": { type: "string" },
        "overlay-run-dir": { type: "string" },
        "overlay-data-dir": { type: "string" },
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
  for (const flag of ["csi-dir", "docker-dir", "ipam-dir", "overlay-run-dir", "overlay-data-dir"] as const) {
    const v = values[flag];
    if (v !== undefined && !v.startsWith("/")) {
      process.stderr.write(`berth docker-plugin: --${flag} must be an absolute path, got ${JSON.stringify(v)}\n`);
      return 2;
    }
  }
  let plugin: RunningDockerPlugin;
  try {
    plugin = await startDockerPlugin({
      socket: values.socket,
      csiDir: values["csi-dir"],
      dockerDir: values["docker-dir"],
      ipamDir: values["ipam-dir"],
      nftTable: values["nft-table"],
      overlayRunDir: values["overlay-run-dir"],
      overlayDataDir: values["overlay-data-dir"],
    });
  } catch (e) {
    process.stderr.write(`berth docker-plugin: ${(e as Error).message}\n`);
    return e instanceof DockerPluginError ? 2 : 1;
  }
  await waitForStopSignal();
  await plugin.close();
  return 0;
}
