// Two agent processes, each in its own "host" netns joined by a veth underlay, sharing one
// embedded store file: each must learn the other and carry real traffic over VXLAN, at the
// overlay MTU and not one byte more.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { addNetns, delNetns, sh, testPrefix } from "../testing/kernel.ts";
import { httpOverUnix, until } from "../testing/poll.ts";

// No ping on these machines: a UDP echo in Python, which can also set DF on the datagram
// (IP_MTU_DISCOVER = IP_PMTUDISC_DO) so an oversized one fails instead of being fragmented.
const ECHO_SERVER = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7777))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
`;
const ECHO_CLIENT = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
s.bind((sys.argv[1], 0))
s.settimeout(2)
payload = b"x" * int(sys.argv[3])
for attempt in range(3):
    try:
        s.sendto(payload, (sys.argv[2], 7777))
        data, _ = s.recvfrom(65535)
        print("ok" if data == payload else "garbled")
        break
    except socket.timeout:
        continue
    except OSError as e:
        print("error " + str(e.errno))
        break
else:
    print("timeout")
`;

/** Sends one UDP datagram of `size` payload bytes (DF set) and waits for its echo. */
function echo(ns: string, from: string, to: string, size: number): string {
  return sh("ip", ["netns", "exec", ns, "python3", "-c", ECHO_CLIENT, from, to, String(size)]).trim();
}

describe("two hosts on one shared local store", () => {
  let p: string;
  let dir: string;
  const hosts: { ns: string; child?: ChildProcess; stderr: string }[] = [];

  beforeEach(() => {
    p = testPrefix();
    dir = mkdtempSync(join(tmpdir(), `berth-${p}-`));
    hosts.push({ ns: `${p}1`, stderr: "" }, { ns: `${p}2`, stderr: "" });
    for (const h of hosts) addNetns(h.ns);
    sh("ip", ["link", "add", `${p}u1`, "netns", hosts[0]!.ns, "type", "veth", "peer", "name", `${p}u2`, "netns", hosts[1]!.ns]);
    hosts.forEach((h, i) => {
      sh("ip", ["-n", h.ns, "addr", "add", `192.0.2.${i + 1}/24`, "dev", `${p}u${i + 1}`]);
      sh("ip", ["-n", h.ns, "link", "set", `${p}u${i + 1}`, "up"]);
      sh("ip", ["-n", h.ns, "link", "set", "lo", "up"]);
    });
  });

  afterEach(async () => {
    for (const h of hosts.splice(0)) {
      if (h.child && h.child.exitCode === null) {
        const gone = new Promise((r) => h.child!.once("exit", r));
        h.child.kill("SIGKILL");
        await gone;
      }
      delNetns(h.ns);
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it("learn each other and carry traffic at the overlay MTU", async () => {
    const script = `import { runAgentCommand } from ${JSON.stringify(join(import.meta.dirname, "agent.ts"))}; process.exitCode = await runAgentCommand(process.argv.slice(1));`;
    hosts.forEach((h, i) => {
      const d = join(dir, `h${i + 1}`);
      h.child = spawn(
        "ip",
        [
          "netns",
          "exec",
          h.ns,
          process.execPath,
          "--import",
          "tsx",
          "--input-type=module",
          "-e",
          script,
          "--",
          "--cluster-cidr",
          "10.244.0.0/16",
          "--local-store",
          join(dir, "cluster.db"),
          "--underlay-iface",
          `${p}u${i + 1}`,
          "--state-dir",
          join(d, "state"),
          "--run-dir",
          join(d, "run"),
          "--api-socket",
          join(d, "agent.sock"),
        ],
        { stdio: ["ignore", "ignore", "pipe"], cwd: join(import.meta.dirname, "..") },
      );
      h.child.stderr?.on("data", (x) => {
        h.stderr += x;
      });
    });
    const sockets = hosts.map((_, i) => join(dir, `h${i + 1}`, "agent.sock"));
    try {
      for (const s of sockets) {
        await until(
          async () => JSON.parse((await httpOverUnix(s, "/v1/peers")).body).length,
          (n) => n === 1,
          "one peer each",
          30_000,
        );
      }
    } catch (e) {
      throw new Error(`${(e as Error).message}\n${hosts.map((h) => h.stderr).join("\n")}`);
    }
    const runtimes = hosts.map((_, i) => JSON.parse(readFileSync(join(dir, `h${i + 1}`, "run", "overlay.json"), "utf8")));
    expect(runtimes[0].subnet).not.toBe(runtimes[1].subnet);
    // A "pod gateway" on each host, like the bridge the CNI plugin creates.
    hosts.forEach((h, i) => {
      sh("ip", ["-n", h.ns, "link", "add", `${p}g`, "type", "veth", "peer", "name", `${p}h`]);
      sh("ip", ["-n", h.ns, "addr", "add", `${runtimes[i].gateway}/24`, "dev", `${p}g`]);
      sh("ip", ["-n", h.ns, "link", "set", `${p}g`, "up"]);
      sh("ip", ["-n", h.ns, "link", "set", `${p}h`, "up"]);
    });
    const [g1, g2] = runtimes.map((r) => r.gateway as string);
    const server = spawn("ip", ["netns", "exec", hosts[1]!.ns, "python3", "-c", ECHO_SERVER, g2!], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    try {
      await new Promise<void>((resolve, reject) => {
        server.stdout.once("data", () => resolve());
        server.once("exit", (code) => reject(new Error(`echo server exited (${code})`)));
      });
      expect(echo(hosts[0]!.ns, g1!, g2!, 64)).toBe("ok");
      // Exactly the overlay MTU passes unfragmented (20 IP + 8 UDP header bytes); one byte more
      // is refused with EMSGSIZE (90) because the route's MTU is the device's, 1450.
      expect(runtimes[0].mtu).toBe(1450);
      expect(echo(hosts[0]!.ns, g1!, g2!, 1450 - 28)).toBe("ok");
      expect(echo(hosts[0]!.ns, g1!, g2!, 1450 - 28 + 1)).toBe("error 90");
    } finally {
      const gone = new Promise((r) => server.once("exit", r));
      server.kill("SIGKILL");
      await gone;
    }

    // Host 2 stops for good (lease revoked by hand, as an operator would): host 1 forgets it.
    hosts[1]!.child!.kill("SIGTERM");
    await new Promise((r) => hosts[1]!.child!.once("exit", r));
    const { LocalStore } = await import("./store/local.ts");
    const store = new LocalStore({ path: join(dir, "cluster.db") });
    try {
      const entry = (await store.list("/berth/network/subnets/")).entries.find((e) =>
        e.key.includes(runtimes[1].subnet.split("/")[0]),
      );
      await store.revoke(entry!.leaseId!);
    } finally {
      await store.close();
    }
    await until(
      async () => sh("ip", ["-n", hosts[0]!.ns, "-j", "route", "show", "dev", "berth.1"]),
      (out) => JSON.parse(out).filter((r: { protocol?: string }) => r.protocol !== "kernel").length === 0,
      "route to the departed host removed",
      30_000,
    );
  });
});
