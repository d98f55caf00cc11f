// Typed handle on the compiled addon (native/build/Release/berth_native.node).
// Everything here is a thin syscall wrapper; failures throw a SysError-shaped Error.

import { existsSync } from "node:fs";
import { dirname, join } from "node:path";

export interface LoopStatus {
  number: number;
  backingDevice: number;
  backingInode: number;
  offset: number;
  sizeLimit: number;
  flags: number;
  directIo: boolean;
  readOnly: boolean;
  autoClear: boolean;
  fileName: string;
  sizeBytes: number;
}

export interface StatFs {
  type: number;
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namelen: number;
  flags: number;
}

/** A connection as unixAccept took it: peer credentials and what it had sent so far. */
export interface AcceptedConnection {
  fd: number;
  pid: number;
  uid: number;
  data: Buffer;
  /** The peer shut its side (or reset): no more bytes will come. */
  eof: boolean;
}

export interface SocketDescription {
  /** "unix", "inet", "inet6", else the address family's number. */
  domain: string;
  /** "stream", "dgram", "seqpacket", else the type's number. */
  type: string;
  /** SO_ACCEPTCONN: listen() was called on it. */
  listening: boolean;
  /** The unix socket's path; "" when unnamed, abstract or not a unix socket. */
  path: string;
}

export interface FdWatcher {
  stop(): void;
}

export interface Addon {
  netnsOpen(path: string): number;
  netnsCurrent(): number;
  setns(fd: number): void;
  netnsCreate(dir: string, name: string): string;
  netnsDelete(path: string): void;
  close(fd: number): void;
  /** _exit(2): no VM teardown, no 'exit' handlers, no flushing (write output synchronously first). */
  exitNow(code: number): never;
  nlOpen(protocol: number, groups?: number, nsFd?: number): number;
  nlTransact(fd: number, request: Buffer): Buffer;
  nlTransactAsync(fd: number, request: Buffer): Promise<Buffer>;
  nlRecv(fd: number): Buffer | null;
  FdWatcher: new (fd: number, onReadable: (status: number) => void) => FdWatcher;
  unixListen(path: string, backlog: number): number;
  unixAccept(listenFd: number, maxBytes: number): AcceptedConnection[];
  unixSend(fd: number, data: Buffer): number;
  /** What a descriptor is (socket activation): throws ENOTSOCK/EBADF for a non-socket or closed one. */
  socketDescribe(fd: number): SocketDescription;
  /** Sets FD_CLOEXEC and/or O_NONBLOCK on a descriptor. */
  fdSetFlags(fd: number, cloexec: boolean, nonblock: boolean): void;
  mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): void;
  umount2(target: string, flags: number): void;
  /** New mount API (fsopen/fsconfig/fsmount/move_mount); errors carry `detail`, the kernel's own message. */
  mountFs(source: string, target: string, fstype: string, attrs: number, params: string[]): void;
  statfs(path: string): StatFs;
  loopAttach(file: string, options: { directIo?: boolean; readOnly?: boolean }): number;
  loopDetach(n: number): void;
  loopSetCapacity(n: number): void;
  loopStatus(n: number): LoopStatus | null;
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  ficlone(destFd: number, srcFd: number): void;
  /** FIFREEZE (freeze = true) or FITHAW on the filesystem holding fd, on the thread pool. */
  fsFreeze(fd: number, freeze: boolean): Promise<void>;
  /** Copies only the data extents of srcFd into dstFd (holes stay holes), on the thread pool. */
  copyDataExtents(srcFd: number, dstFd: number): Promise<{ size: number; copiedBytes: number }>;
  /** Q_GETINFO via quotactl_fd for the filesystem holding path; type 0 user, 1 group, 2 project; null when not enabled. */
  quotaGetInfo(path: string, type: number): { blockGrace: number; inodeGrace: number; flags: number } | null;
  /** SHA-256 of a string (as UTF-8) or bytes, as 64 lowercase hex characters. */
  sha256Hex(input: string | Uint8Array): string;
}

/** Error thrown by the addon: `code` is the errno name (EEXIST, ENODEV, ...). */
export interface SysError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

export function isSysError(e: unknown, code?: string): e is SysError {
  return e instanceof Error && typeof (e as SysError).errno === "number" && (code === undefined || (e as SysError).code === code);
}

function locate(): string {
  // BERTH_NATIVE, else the path bundle.mjs put into a bundle, else (source tree) walking up.
  const fromEnv = process.env.BERTH_NATIVE;
  if (fromEnv) return fromEnv;
  const bundled = bundledFile(typeof __BERTH_NATIVE_ADDON__ === "string" ? __BERTH_NATIVE_ADDON__ : undefined);
  if (bundled) return bundled;
  let dir = typeof __dirname === "string" ? __dirname : dirname(new URL(import.meta.url).pathname);
  for (let i = 0; i < 6; i++) {
    for (const candidate of [join(dir, "native/build/Release/berth_native.node"), join(dir, "build/Release/berth_native.node")]) {
      if (existsSync(candidate)) return candidate;
    }
    dir = dirname(dir);
  }
  throw new Error("berth native addon not found: run `npm run build` (native/build/Release/berth_native.node)");
}

/** Set in bundles by scripts/bundle.mjs: the addon's path relative to the bundle (no walk up). */
declare const __BERTH_NATIVE_ADDON__: string | undefined;

/**
 * In a bundle, the file at `relative` (a path scripts/bundle.mjs defined) from the bundle's
 * directory when it exists; undefined in the source tree or when it is missing.
 */
export function bundledFile(relative: string | undefined): string | undefined {
  if (relative === undefined || typeof __dirname !== "string") return undefined;
  const file = join(__dirname, relative);
  return existsSync(file) ? file : undefined;
}

/**
 * Loads a compiled addon by absolute path with process.dlopen: what require() does for a .node
 * file once it has found it, without the module resolution around it (realpath of every path
 * component, package.json lookups), ~1-2 ms of a cold plugin start.
 */
export function loadNativeAddon<T>(file: string): T {
  const module = { exports: {} as T };
  process.dlopen(module, file);
  return module.exports;
}

let loaded: Addon | undefined;

/** The addon if something has loaded it already, without loading it. */
export function addonIfLoaded(): Addon | undefined {
  return loaded;
}

export function addon(): Addon {
  loaded ??= loadNativeAddon<Addon>(locate());
  return loaded;
}
