// Test harness: a real driver on a unix socket in a temp dir named with the test prefix, a
// real gRPC client, and cleanup that unmounts and detaches everything under that dir.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import pino from "pino";
import type { ControllerClient } from "../csi/proto/generated/csi/v1/Controller.ts";
import type { GroupControllerClient } from "../csi/proto/generated/csi/v1/GroupController.ts";
import type { IdentityClient } from "../csi/proto/generated/csi/v1/Identity.ts";
import type { NodeClient } from "../csi/proto/generated/csi/v1/Node.ts";
import type { VolumeCapability } from "../csi/proto/generated/csi/v1/VolumeCapability.ts";
import { loadCsiPackage } from "../csi/proto/load.ts";
import { type CsiDriverOptions, type RunningCsiDriver, startCsiDriver } from "../csi/server.ts";
import { makeSharedDir, teardownKernelObjects } from "./storage.ts";

type Unary = (req: object, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;

/** Promise-returning view of a generated grpc-js client: await c.CreateVolume({...}). */
export type AsyncClient<C> = {
  [K in keyof C as K extends `${Uppercase<string>}${string}` ? K : never]: C[K] extends (
    argument: infer Req,
    callback: grpc.requestCallback<infer Res>,
  ) => grpc.ClientUnaryCall
    ? (req?: Req) => Promise<Present<Res>>
    : never;
};

/** Response messages with every nested message taken as present (tests assert on them anyway). */
export type Present<T> = T extends (infer U)[]
  ? Present<U>[]
  : T extends object
    ? { [P in keyof T]-?: Present<NonNullable<T[P]>> }
    : T;

function promisify<C extends grpc.Client>(client: C): AsyncClient<C> {
  return new Proxy({} as AsyncClient<C>, {
    get(_, method: string) {
      return (req: object = {}) =>
        new Promise((resolve, reject) => {
          const fn = (client as unknown as Record<string, Unary>)[method];
          if (!fn) throw new Error(`no method ${method}`);
          fn.call(client, req, (err, res) => (err ? reject(err) : resolve(res)));
        });
    },
  });
}

export interface CsiClients {
  identity: AsyncClient<IdentityClient>;
  controller: AsyncClient<ControllerClient>;
  group: AsyncClient<GroupControllerClient>;
  node: AsyncClient<NodeClient>;
  /** Closes the clients' channels. */
  close(): void;
}

/** gRPC clients of every CSI service of the driver at `endpoint` (unix:///path). */
export function csiClients(endpoint: string): CsiClients {
  const pkg = loadCsiPackage();
  const creds = grpc.credentials.createInsecure();
  const raw = {
    identity: new pkg.csi.v1.Identity(endpoint, creds),
    controller: new pkg.csi.v1.Controller(endpoint, creds),
    group: new pkg.csi.v1.GroupController(endpoint, creds),
    node: new pkg.csi.v1.Node(endpoint, creds),
  };
  return {
    identity: promisify(raw.identity),
    controller: promisify(raw.controller),
    group: promisify(raw.group),
    node: promisify(raw.node),
    close: () => {
      for (const c of Object.values(raw)) c.close();
    },
  };
}

export interface TestDriver extends CsiClients {
  root: string;
  dataDir: string;
  stateDir: string;
  socket: string;
  running: RunningCsiDriver | undefined;
  start(extra?: Partial<CsiDriverOptions>): Promise<void>;
  stop(): Promise<void>;
  /** A fresh directory under root for staging or target paths. */
  path(name: string): string;
  cleanup(): Promise<void>;
}

export async function createTestDriver(prefix: string, nodeId = "test-node"): Promise<TestDriver> {
  const root = mkdtempSync(join(tmpdir(), `${prefix}-`));
  // Staging and target paths live in an rshared bind, as under kubelet's root dir.
  const kubelet = join(root, "kubelet");
  makeSharedDir(kubelet);
  const socket = join(root, "plugin", "csi.sock");
  const endpoint = `unix://${socket}`;
  const t: TestDriver = {
    root,
    dataDir: join(root, "data"),
    stateDir: join(root, "state"),
    socket,
    ...csiClients(endpoint),
    running: undefined,
    async start(extra = {}) {
      t.running = await startCsiDriver({
        endpoint,
        nodeId,
        dataDir: t.dataDir,
        stateDir: t.stateDir,
        logger: pino({ level: process.env.BERTH_TEST_LOG ?? "silent" }),
        ...extra,
      });
    },
    async stop() {
      await t.running?.close();
      t.running = undefined;
    },
    path(name: string) {
      return join(kubelet, name);
    },
    async cleanup() {
      await t.stop();
      teardownKernelObjects(root);
      rmSync(root, { recursive: true, force: true });
    },
  };
  return t;
}

export const GiB = 1024 * 1024 * 1024;
export const MiB = 1024 * 1024;

type Mode = NonNullable<NonNullable<VolumeCapability["access_mode"]>["mode"]>;

export function mountCap(fsType = "", mode: Mode = "SINGLE_NODE_WRITER", mountFlags: string[] = []): VolumeCapability {
  return { mount: { fs_type: fsType, mount_flags: mountFlags }, access_mode: { mode } };
}

export function blockCap(mode: Mode = "SINGLE_NODE_WRITER"): VolumeCapability {
  return { block: {}, access_mode: { mode } };
}
