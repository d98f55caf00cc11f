// The driver's gRPC socket: the endpoint's path, claiming it from a stale socket, and serving
// either a socket bound at that path (mode 0660) or one a service manager passed.
import { chmodSync, unlinkSync } from "node:fs";
import { createServer, type Server as NetServer } from "node:net";
import * as grpc from "@grpc/grpc-js";
import type { PassedListener } from "../native/listen-fds.ts";
import { claimSocketPath, SocketClaimError } from "../native/unix-socket.ts";
import { ConfigError } from "./errors.ts";

/** unix:///abs/path.sock → /abs/path.sock */
export function socketPathOf(endpoint: string): string {
  const m = /^unix:\/\/(\/.+)$/.exec(endpoint) ?? /^unix:(\/.+)$/.exec(endpoint);
  if (!m?.[1]) throw new ConfigError(`endpoint must look like unix:///path/csi.sock, got ${JSON.stringify(endpoint)}`);
  return m[1];
}

/** Claims the socket path (claimSocketPath); a path taken is a ConfigError. */
export async function claimSocket(path: string): Promise<void> {
  try {
    await claimSocketPath(path, "CSI driver");
  } catch (e) {
    if (e instanceof SocketClaimError) throw new ConfigError(e.message);
    throw e;
  }
}

export interface Listening {
  /** Stops accepting on a passed socket (grpc-js closes a socket it bound itself). */
  stopAccepting(): void;
  /** Removes the socket file the driver bound; a passed socket's file is the service manager's. */
  removeSocket(): void;
}

/** Serves `server` on the passed socket, or binds it at `socketPath` (claimed before). */
export async function listen(server: grpc.Server, socketPath: string, passed: PassedListener | undefined): Promise<Listening> {
  if (passed) {
    // A passed socket cannot be bound by grpc-js: a net.Server accepts on it and hands each
    // connection to the gRPC server through a connection injector.
    const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    const accepting: NetServer = createServer((conn) => injector.injectConnection(conn));
    await new Promise<void>((resolve, reject) => {
      accepting.once("error", reject);
      accepting.listen({ fd: passed.fd }, () => {
        accepting.off("error", reject);
        resolve();
      });
    });
    return { stopAccepting: () => accepting.close(), removeSocket: () => {} };
  }
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  chmodSync(socketPath, 0o660);
  return {
    stopAccepting: () => {},
    removeSocket: () => {
      try {
        unlinkSync(socketPath);
      } catch {
        // already gone
      }
    },
  };
}
