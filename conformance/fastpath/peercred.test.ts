// Only root may run CNI plugins through the agent. The socket is 0600 root-owned, so a
// non-root launcher cannot even connect (it falls back to Node, with its own privileges);
// and if the socket's mode is ever loosened, the agent's SO_PEERCRED check still refuses.
import { execFile } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testPrefix } from "../../testing/kernel.ts";
import { ServerProcess } from "./server-process.ts";

const CNI = resolve(import.meta.dirname, "../../build/cni");
const built = existsSync(join(CNI, "berth-bridge"));
const NOBODY = 65534;

function runAs(uid: number, socketPath: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const child = execFile(
      "setpriv",
      [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--", join(CNI, "berth-bridge")],
      { env: { PATH: "/usr/bin:/bin", CNI_COMMAND: "VERSION", BERTH_CNI_SOCKET: socketPath } },
      (err, stdout, stderr) => done({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr }),
    );
    child.stdin!.end('{"cniVersion":"0.4.0"}');
  });
}

describe.skipIf(!built || process.getuid?.() !== 0)("peer credentials", () => {
  const dir = mkdtempSync(`/tmp/${testPrefix()}-`);
  const socketPath = join(dir, "cni.sock");
  let server: ServerProcess;

  beforeAll(async () => {
    chmodSync(dir, 0o755); // let the unprivileged child reach the socket file itself
    server = await ServerProcess.start(socketPath);
  });

  afterAll(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("the socket is 0600 and owned by root", () => {
    const st = statSync(socketPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect([st.uid, st.gid]).toEqual([0, 0]);
  });

  it("a non-root launcher cannot connect and runs the cold path instead", async () => {
    const before = server.served();
    const r = await runAs(NOBODY, socketPath);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ cniVersion: "0.4.0" });
    expect(server.served()).toBe(before);
  });

  it("with the socket mode loosened, the agent still refuses a non-root peer", async () => {
    chmodSync(socketPath, 0o666);
    try {
      const before = server.served();
      const r = await runAs(NOBODY, socketPath);
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout)).toEqual({
        cniVersion: "1.1.0",
        code: 999,
        msg: `berth agent refuses uid ${NOBODY}: CNI plugins must run as root`,
      });
      expect(server.served()).toBe(before);
      expect(server.log.join("")).toContain(`uid ${NOBODY}: only root may run CNI plugins`);
      // Root is still served.
      const root = await runAs(0, socketPath);
      expect(root.code).toBe(0);
      expect(server.served()).toBe(before + 1);
    } finally {
      chmodSync(socketPath, 0o600);
    }
  });
});
