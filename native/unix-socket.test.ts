import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { backloggedServer } from "../testing/sockets.ts";
import { claimSocketPath, SocketClaimError, socketIsLive } from "./unix-socket.ts";

let dir: string;
let path: string;
const cleanups: (() => void)[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "berth-claim-"));
  path = join(dir, "s.sock");
});

afterEach(() => {
  for (const c of cleanups.splice(0)) c();
  rmSync(dir, { recursive: true, force: true });
});

describe("claimSocketPath", () => {
  it("returns when nothing is at the path", async () => {
    await claimSocketPath(path);
  });

  it("removes a socket nobody listens on (ECONNREFUSED)", async () => {
    execFileSync("python3", ["-c", "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", path]);
    expect(await socketIsLive(path)).toBe(false);
    await claimSocketPath(path);
    expect(() => statSync(path)).toThrow(/ENOENT/);
  });

  it("refuses a socket a server accepts on, and leaves it", async () => {
    const server: Server = createServer((c) => c.destroy());
    await new Promise<void>((r) => server.listen(path, r));
    cleanups.push(() => server.close());
    await expect(claimSocketPath(path, "test server")).rejects.toThrow(
      new SocketClaimError(`another test server is already listening on ${path}`),
    );
    expect(statSync(path).isSocket()).toBe(true);
  });

  it("refuses a live server whose backlog is full (EAGAIN), and leaves its socket", async () => {
    const child = await backloggedServer(path);
    cleanups.push(() => child.kill("SIGKILL"));
    expect(await socketIsLive(path)).toBe(true);
    await expect(claimSocketPath(path, "test server")).rejects.toThrow(/already listening/);
    expect(statSync(path).isSocket()).toBe(true);
  });

  it("refuses a file that is not a socket", async () => {
    writeFileSync(path, "x");
    await expect(claimSocketPath(path)).rejects.toThrow(/not a socket/);
    expect(statSync(path).isFile()).toBe(true);
  });
});
