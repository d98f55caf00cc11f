// The fast path opens the pod netns path a launcher sends through the launcher's root
// (callerEnv): an agent in a container (Kubernetes DaemonSet, hostPID) does not see the
// runtime's netns directory at the same path. A caller with the agent's own root, or one the
// agent cannot see (pid 0), keeps the path as given.
import { type ChildProcess, spawn } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { callerEnv } from "./server.ts";

const env = { CNI_COMMAND: "ADD", CNI_NETNS: "/var/run/netns/cni-1234", CNI_IFNAME: "eth0" };

describe("callerEnv: the pod netns as the launcher sees it", () => {
  let dir = "";
  let chrooted: ChildProcess | undefined;
  let plain: ChildProcess | undefined;

  beforeAll(() => {
    // A caller whose root is another directory, as a host process is to an agent in a container.
    dir = mkdtempSync(join(tmpdir(), "berth-caller-root-"));
    mkdirSync(join(dir, "bin"));
    copyFileSync("/bin/busybox", join(dir, "bin", "busybox"));
    chrooted = spawn("chroot", [dir, "/bin/busybox", "sleep", "60"], { stdio: "ignore" });
    plain = spawn("sleep", ["60"], { stdio: "ignore" });
  });

  afterAll(() => {
    chrooted?.kill("SIGKILL");
    plain?.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });

  it("a caller with another root: the path through /proc/<pid>/root, every other variable as given", async () => {
    const pid = chrooted!.pid!;
    // chroot execs busybox in its own process once it has changed root
    for (let i = 0; i < 100 && callerEnv(env, pid) === env; i++) await new Promise((r) => setTimeout(r, 20));
    const got = callerEnv(env, pid);
    expect(got).toEqual({ ...env, CNI_NETNS: `/proc/${pid}/root/var/run/netns/cni-1234` });
    expect(env.CNI_NETNS).toBe("/var/run/netns/cni-1234");
  });

  it("a caller with our root, pid 0 (another pid namespace), a gone pid, or no netns: unchanged", () => {
    expect(callerEnv(env, plain!.pid!)).toBe(env);
    expect(callerEnv(env, process.pid)).toBe(env);
    expect(callerEnv(env, 0)).toBe(env);
    expect(callerEnv(env, 2 ** 22 + 1)).toBe(env);
    const del = { CNI_COMMAND: "DEL", CNI_IFNAME: "eth0" };
    expect(callerEnv(del, chrooted!.pid!)).toBe(del);
    const relative = { ...env, CNI_NETNS: "netns/x" };
    expect(callerEnv(relative, chrooted!.pid!)).toBe(relative);
  });
});
