// The agent side of the CNI fast path: a unix socket on which the berth launcher
// (build/cni/berth-<type>) forwards a CNI invocation, so the plugin function runs inside this
// long-lived process instead of a fresh Node (~30 ms saved per call). What a caller sees —
// stdout, exit code, log lines — is what the cold-path executable (runPluginMain) would give.
//
// Security: the socket is root-only (0600, owned by root) and every connection's peer
// credentials are checked (SO_PEERCRED), since a CNI call configures the host's network.

import { chmodSync, chownSync, lstatSync, statSync, unlinkSync } from "node:fs";
import { Socket } from "node:net";
import { dirname } from "node:path";
import { type AcceptedConnection, addon } from "../../native/addon.ts";
import type { PassedListener } from "../../native/listen-fds.ts";
import { claimSocketPath as claimUnixSocketPath, SocketClaimError } from "../../native/unix-socket.ts";
import { MAX_CONFIG_BYTES, tooLargeError } from "../protocol/config.ts";
import { makeDirectory } from "../protocol/files.ts";
import { json, runInvocation, versionForError } from "../protocol/invocation.ts";
import { ErrorCode, type InvocationHost, type LinkRetirer } from "../protocol/types.ts";
import { NEWEST_VERSION } from "../protocol/version.ts";
import { createLinkRetirer } from "./link-retirer.ts";
import { type PluginEntry, PluginRegistry } from "./plugins.ts";
import {
  decodeRequest,
  encodeResponse,
  HEADER_BYTES,
  type InvocationRequest,
  type InvocationResponse,
  KIND_REQUEST,
  MAX_REQUEST_BODY_BYTES,
  ProtocolError,
  parseHeader,
} from "./wire.ts";

export const DEFAULT_CNI_SOCKET = "/run/berth/cni.sock";

export interface CniServerOptions {
  socketPath?: string;
  /** Plugins by executable name (every berth plugin: overlay/cni/registry.ts BERTH_PLUGINS). */
  plugins: Readonly<Record<string, PluginEntry>>;
  /** Server diagnostics and every invocation's log lines, one line each. */
  log?: (line: string) => void;
  /** A connection that has not sent its whole request after this long is dropped (default 30 s). */
  requestTimeoutMs?: number;
  /**
   * A listening socket a service manager passed (native/listen-fds.ts): served instead of
   * binding socketPath. Its file belongs to the service manager: never replaced or removed.
   */
  passed?: PassedListener;
}

export interface CniServer {
  readonly socketPath: string;
  /** Stops accepting, waits for in-flight invocations to answer, removes the socket file. */
  close(): Promise<void>;
}

/** Why the server would not start: a live server owns the path, or the path is not ours to replace. */
export class CniServerStartError extends Error {
  override name = "CniServerStartError";
}

export async function startCniServer(opts: CniServerOptions): Promise<CniServer> {
  const passed = opts.passed;
  const socketPath = passed ? passed.path || `(descriptor ${passed.fd})` : (opts.socketPath ?? DEFAULT_CNI_SOCKET);
  const log = opts.log ?? (() => {});
  const registry = new PluginRegistry(opts.plugins);
  const serialiser = new KeyedSerialiser();
  const requestTimeoutMs = opts.requestTimeoutMs ?? 30_000;
  const ownUid = process.geteuid?.() ?? 0;
  const open = new Set<Socket>();

  if (!passed) await claimSocketPath(socketPath);
  if (!passed) makeDirectory(dirname(socketPath), 0o755);

  const retirement = createLinkRetirer(log);
  const ctx: ConnectionContext = {
    registry,
    serialiser,
    log,
    ownUid,
    requestTimeoutMs,
    open,
    pending: new Set(),
    host: fastPathHost(retirement.retire),
  };
  let listenFd: number;
  let ino: number | undefined;
  if (passed) listenFd = passed.fd;
  else {
    try {
      listenFd = addon().unixListen(socketPath, 511);
    } catch (e) {
      await retirement.close();
      throw e;
    }
    // Connections that slip in before the chmod are still subject to the peer check.
    chmodSync(socketPath, 0o600);
    if (ownUid === 0) chownSync(socketPath, 0, 0);
    ino = lstatSync(socketPath).ino;
  }
  let retry: NodeJS.Timeout | undefined;
  const onReadable = () => {
    let accepted: AcceptedConnection[];
    try {
      accepted = addon().unixAccept(listenFd, HEADER_BYTES + MAX_REQUEST_BODY_BYTES);
    } catch (e) {
      // Out of descriptors or memory: the listening socket stays readable, so stop watching it
      // for a moment instead of failing in a loop; waiting connections are taken after.
      const code = (e as { code?: unknown }).code;
      log(
        `cni server: ${code ? `${String(code)}: ` : ""}${e instanceof Error ? e.message : String(e)}; accepting again in ${ACCEPT_RETRY_MS} ms`,
      );
      watcher.stop();
      retry = setTimeout(() => {
        watcher = new (addon().FdWatcher)(listenFd, onReadable);
      }, ACCEPT_RETRY_MS);
      return;
    }
    for (const c of accepted) {
      const served = serveConnection(c, ctx).catch((e) => {
        log(`cni server: connection failed: ${e instanceof Error ? e.message : String(e)}`);
      });
      ctx.pending.add(served);
      void served.finally(() => ctx.pending.delete(served));
    }
  };
  let watcher = new (addon().FdWatcher)(listenFd, onReadable);
  log(
    `cni server: listening on ${socketPath}${passed ? ` (passed by the service manager as "${passed.name}")` : ""} for ${registry.types().join(", ")}`,
  );

  return {
    socketPath,
    close: async () => {
      clearTimeout(retry);
      watcher.stop();
      addon().close(listenFd);
      await closeConnections(socketPath, ino, ctx);
      await retirement.close();
    },
  };
}

async function closeConnections(socketPath: string, ino: number | undefined, ctx: ConnectionContext) {
  // Idle connections (no complete request yet) would wait for their timeout; busy ones finish.
  for (const s of ctx.open) if (!busy.has(s)) s.destroy();
  await Promise.allSettled([...ctx.pending]);
  await ctx.serialiser.drain();
  // Remove the socket file only if it is still ours (a successor may have replaced it); a
  // passed socket's file stays for the service manager, which starts the next server on it.
  if (ino === undefined) return;
  try {
    if (lstatSync(socketPath).ino === ino) unlinkSync(socketPath);
  } catch {
    // already gone
  }
}

/** How long accepting pauses after accept4 failed (EMFILE, ENOMEM). */
const ACCEPT_RETRY_MS = 100;

/** Sockets with an invocation in flight: close() lets them finish. */
const busy = new WeakSet<Socket>();
/** Invocations in flight in this process (all servers): short netlink requests go to the pool when > 1. */
let inFlight = 0;

/**
 * What this process offers one invocation (Request.host): lease commits fsync on the thread
 * pool while the ADD's kernel work goes on, awaited before the answer (Request.pendingSync); a
 * lone invocation makes its short netlink requests on this thread, concurrent ones on the pool;
 * DEL retires host links through the server's retirer.
 */
function fastPathHost(linkRetirer: LinkRetirer): InvocationHost {
  return { deferSyncs: true, shortRequestsInline: () => inFlight <= 1, linkRetirer };
}

/**
 * Makes the path free for our listen (native/unix-socket.ts): a stale socket file is removed;
 * a live server or a file that is not a socket is a CniServerStartError. `what` names the
 * server in that message.
 */
async function claimSocketPath(path: string, what = "CNI server"): Promise<void> {
  try {
    await claimUnixSocketPath(path, what);
  } catch (e) {
    if (e instanceof SocketClaimError) throw new CniServerStartError(e.message);
    throw e;
  }
}

interface ConnectionContext {
  registry: PluginRegistry;
  serialiser: KeyedSerialiser;
  log: (line: string) => void;
  ownUid: number;
  requestTimeoutMs: number;
  /** net.Sockets made for connections off the common path (see Connection). */
  open: Set<Socket>;
  /** Every accepted connection until it is answered or dropped: close() waits for them. */
  pending: Set<Promise<void>>;
  /** What this server offers every invocation (Request.host), with its own link retirer. */
  host: InvocationHost;
}

/**
 * One launcher's connection, as unixAccept took it. The common case never makes a net.Socket:
 * the request came whole with the accept and the reply fits the socket buffer (unixSend). A
 * request still arriving, or the rest of a reply too large to write at once, is handed to a
 * net.Socket made from the descriptor, which then owns it.
 */
class Connection {
  private socket: Socket | undefined;
  private closed = false;

  constructor(
    private readonly fd: number,
    private readonly open: Set<Socket>,
  ) {}

  /** The rest of a request that had not all arrived at the accept (a net.Socket reads it). */
  readRest(first: Buffer, timeoutMs: number): Promise<InvocationRequest> {
    return readRequest(this.asSocket(true), timeoutMs, first);
  }

  /** Marks the connection busy (close() lets it finish) while an invocation runs. */
  setBusy(on: boolean): void {
    if (!this.socket) return;
    if (on) busy.add(this.socket);
    else busy.delete(this.socket);
  }

  /** Writes `data` and closes; a launcher that is gone is not an error. */
  reply(data: Buffer): void {
    if (this.closed) return;
    if (this.socket) {
      if (!this.socket.destroyed) this.socket.end(data);
      this.closed = true;
      return;
    }
    const written = addon().unixSend(this.fd, data);
    if (written < 0 || written === data.length) {
      this.destroy();
      return;
    }
    this.asSocket(false).end(data.subarray(written));
    this.closed = true;
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.socket) this.socket.destroy();
    else addon().close(this.fd);
  }

  private asSocket(readable: boolean): Socket {
    if (!this.socket) {
      const s = new Socket({ fd: this.fd, readable, writable: true });
      this.open.add(s);
      s.on("close", () => this.open.delete(s));
      s.on("error", () => {}); // a launcher that died mid-request: nothing to tell it
      this.socket = s;
    }
    return this.socket;
  }
}

/** The request in `data` when it is all there; undefined when more is to come. */
function completeRequest(data: Buffer): InvocationRequest | undefined {
  if (data.length < HEADER_BYTES) return undefined;
  const need = requestFrameBytes(data);
  if (data.length < need) return undefined;
  if (data.length > need) throw new ProtocolError("data after the request frame");
  return decodeRequest(data.subarray(HEADER_BYTES));
}

/** The whole frame's size from its header; a wrong kind or an oversized body is a ProtocolError. */
function requestFrameBytes(data: Buffer): number {
  const h = parseHeader(data);
  if (h.kind !== KIND_REQUEST) throw new ProtocolError(`expected a request frame, got kind ${h.kind}`);
  if (h.length > MAX_REQUEST_BODY_BYTES)
    throw new ProtocolError(`request of ${h.length} bytes exceeds ${MAX_REQUEST_BODY_BYTES}`);
  return HEADER_BYTES + h.length;
}

async function serveConnection(c: AcceptedConnection, ctx: ConnectionContext): Promise<void> {
  const conn = new Connection(c.fd, ctx.open);
  if (c.uid !== 0 && c.uid !== ctx.ownUid) {
    ctx.log(`cni server: refused pid ${c.pid} uid ${c.uid}: only root may run CNI plugins through the agent`);
    conn.reply(
      encodeResponse(
        errorResponse(NEWEST_VERSION, ErrorCode.Internal, `berth agent refuses uid ${c.uid}: CNI plugins must run as root`),
      ),
    );
    return;
  }

  let req: InvocationRequest;
  try {
    const whole = completeRequest(c.data);
    if (whole) req = whole;
    else if (c.eof) throw new Error("launcher closed the connection before sending its whole request");
    else req = await conn.readRest(c.data, ctx.requestTimeoutMs);
  } catch (e) {
    if (!(e instanceof ProtocolError)) {
      conn.destroy();
      throw e;
    }
    ctx.log(`cni server: pid ${c.pid}: ${e.message}`);
    conn.reply(encodeResponse(errorResponse(NEWEST_VERSION, ErrorCode.DecodeFailure, `berth agent: ${e.message}`)));
    return;
  }
  conn.setBusy(true);
  inFlight++;
  const key = serialisationKey(req);
  const run = () => invoke(ctx.registry, req, c.pid, ctx.log, ctx.host);
  const started = performance.now();
  // The work finishes even if the launcher went away meanwhile: the kernel state must stay consistent.
  const res = await (key ? ctx.serialiser.run(key, run) : run()).finally(() => inFlight--);
  conn.setBusy(false);
  const env = req.env;
  ctx.log(
    `cni server: served pid ${c.pid} ${req.type} ${env.CNI_COMMAND ?? "?"} ${env.CNI_CONTAINERID ?? ""} ${env.CNI_IFNAME ?? ""}: ` +
      `exit ${res.exitCode} in ${(performance.now() - started).toFixed(1)} ms`,
  );
  conn.reply(encodeResponse(res));
}

function readRequest(socket: Socket, timeoutMs: number, first: Buffer): Promise<InvocationRequest> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [first];
    let have = first.length;
    let need = -1;
    const done = (err: Error | undefined, req?: InvocationRequest) => {
      socket.off("data", onData);
      socket.off("end", onEnd);
      socket.setTimeout(0);
      socket.off("timeout", onTimeout);
      if (err) reject(err);
      else resolve(req!);
    };
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      have += chunk.length;
      try {
        if (need < 0 && have >= HEADER_BYTES) need = requestFrameBytes(Buffer.concat(chunks, have));
        if (need >= 0 && have >= need) {
          if (have > need) throw new ProtocolError("data after the request frame");
          socket.pause();
          done(undefined, decodeRequest(Buffer.concat(chunks, have).subarray(HEADER_BYTES)));
        }
      } catch (e) {
        done(e as Error);
      }
    };
    const onEnd = () => done(new Error("launcher closed the connection before sending its whole request"));
    const onTimeout = () => done(new Error(`no complete request within ${timeoutMs} ms`));
    socket.on("data", onData);
    socket.on("end", onEnd);
    socket.setTimeout(timeoutMs);
    socket.on("timeout", onTimeout);
  });
}

/**
 * Operations for one attachment run in order; different attachments run concurrently. The
 * plugin type is part of the key: a plugin that delegates to another berth plugin through
 * the launcher (same container, same ifname) must not wait on itself.
 */
function serialisationKey(req: InvocationRequest): string | undefined {
  const cid = req.env.CNI_CONTAINERID;
  if (!cid) return undefined;
  let name = "";
  try {
    const n = (JSON.parse(req.stdin.toString("utf8")) as { name?: unknown } | null)?.name;
    if (typeof n === "string") name = n;
  } catch {
    // a bad config fails fast in the plugin; any key will do
  }
  return JSON.stringify([req.type, name, cid, req.env.CNI_IFNAME ?? ""]);
}

/** Per-key promise chains. */
export class KeyedSerialiser {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, job: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const next = prev.then(job, job);
    const tail = next.catch(() => {});
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return next;
  }

  get pending(): number {
    return this.tails.size;
  }

  async drain(): Promise<void> {
    while (this.tails.size > 0) await Promise.all([...this.tails.values()]);
  }
}

/**
 * One invocation, as runPluginMain would run it in its own process (runInvocation): its log
 * lines carry the launcher's pid and go to the caller's stderr when no log file takes them,
 * and to the server's log as well.
 */
async function invoke(
  registry: PluginRegistry,
  req: InvocationRequest,
  callerPid: number,
  serverLog: (line: string) => void,
  host: InvocationHost,
): Promise<InvocationResponse> {
  const loading = registry.get(req.type);
  if (!loading) {
    const msg = `unknown plugin type "${req.type}": this agent serves ${registry.types().join(", ")}`;
    serverLog(`cni server: pid ${callerPid}: ${msg}`);
    return errorResponse(versionForError(req.stdin), ErrorCode.InvalidConfig, msg);
  }
  let plugin: Awaited<typeof loading>;
  try {
    plugin = await loading;
  } catch (e) {
    const msg = `plugin ${req.type} cannot be loaded in the agent: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`;
    serverLog(`cni server: ${msg}`);
    return errorResponse(versionForError(req.stdin), ErrorCode.Internal, msg);
  }
  const stderr: string[] = [];
  const env = callerEnv(req.env, callerPid);
  let outcome = await runInvocation(plugin, req.env, {
    pid: callerPid,
    readStdin: () => {
      if (req.stdin.length > MAX_CONFIG_BYTES) throw tooLargeError();
      return req.stdin;
    },
    fallback: (text) => stderr.push(text),
    tee: serverLog,
    pluginEnv: env,
    host,
  });
  // A result names the sandbox as the runtime gave it, not as this process opened it.
  if (env !== req.env) outcome = { ...outcome, stdout: sameSandbox(outcome.stdout, env.CNI_NETNS!, req.env.CNI_NETNS!) };
  return { exitCode: outcome.exitCode, stdout: outcome.stdout, stderr: stderr.join("") };
}

/** This process's root directory, stat'ed once: a process's root does not change under it. */
let ownRoot: { dev: number; ino: number } | undefined;

/**
 * The invocation's environment as this process must read it. CNI_NETNS is a path in the
 * caller's filesystem; an agent in a container (a Kubernetes DaemonSet with hostPID) does not
 * see the runtime's netns directory (/var/run/netns, containerd's state dir, CRI-O's...) under
 * the same path, so it opens the path through the caller's root, /proc/<pid>/root/<path>, which
 * is the runtime's view whatever the directory. The launcher waits on the socket for the answer,
 * so its pid stays its own for the whole call. Same root (the agent on the host) or a caller
 * this process cannot see (pid 0 from another pid namespace): the path as given.
 */
export function callerEnv(env: Record<string, string>, callerPid: number): Record<string, string> {
  const netns = env.CNI_NETNS;
  if (!netns?.startsWith("/") || callerPid <= 0 || callerPid === process.pid) return env;
  try {
    const theirs = statSync(`/proc/${callerPid}/root/`);
    ownRoot ??= statSync("/");
    if (theirs.dev === ownRoot.dev && theirs.ino === ownRoot.ino) return env;
  } catch {
    return env;
  }
  return { ...env, CNI_NETNS: `/proc/${callerPid}/root${netns}` };
}

function sameSandbox(stdout: string, opened: string, given: string): string {
  const quoted = (p: string) => JSON.stringify(p);
  return stdout.split(quoted(opened)).join(quoted(given));
}

function errorResponse(cniVersion: string, code: number, msg: string): InvocationResponse {
  return { exitCode: 1, stdout: json({ cniVersion, code, msg }), stderr: "" };
}
