import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { testPrefix } from "../../testing/kernel.ts";
import { CniError } from "../protocol/types.ts";
import { delegateAdd, delegateCheck, delegateDel, delegateGc, delegateStatus, findPlugin } from "./delegate.ts";

let dir: string;
let bin: string;

/** A fake plugin: records env and stdin, then prints $FAKE_OUT and exits with $FAKE_EXIT. */
const FAKE = `#!/bin/sh
env | grep -E '^(CNI_|PATH=)' | sort > "$(dirname "$0")/../env.$CNI_COMMAND"
cat > "$(dirname "$0")/../stdin.$CNI_COMMAND"
echo "fake plugin says hi on stderr" >&2
case "$CNI_COMMAND" in
  ADD) cat "$(dirname "$0")/../out.ADD" 2>/dev/null ;;
  *) cat "$(dirname "$0")/../out.$CNI_COMMAND" 2>/dev/null ;;
esac
exit "$(cat "$(dirname "$0")/../exit.$CNI_COMMAND" 2>/dev/null || echo 0)"
`;

function writeFake(name: string, body = FAKE): void {
  writeFileSync(join(bin, name), body);
  chmodSync(join(bin, name), 0o755);
}

function respond(command: string, stdout: string, exit = 0): void {
  writeFileSync(join(dir, `out.${command}`), stdout);
  writeFileSync(join(dir, `exit.${command}`), String(exit));
}

const env = {
  CNI_COMMAND: "ADD",
  CNI_CONTAINERID: "ctr1",
  CNI_NETNS: "/var/run/netns/none",
  CNI_IFNAME: "eth0",
  CNI_ARGS: "IgnoreUnknown=1;K8S_POD_NAME=web",
};
const config = { cniVersion: "1.1.0", name: "n1", type: "bridge", ipam: { type: "fake-ipam", subnet: "10.5.0.0/24" } };
const quiet = { onStderr: () => {} };

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "berth-delegate-"));
  bin = join(dir, "bin");
  mkdirSync(bin);
  writeFake("fake-ipam");
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function req() {
  return { env: { ...env, CNI_PATH: `/nonexistent:${bin}` }, path: ["/nonexistent", bin] };
}

function caught(p: Promise<unknown>): Promise<CniError> {
  return p.then(
    () => {
      throw new Error("expected the delegate to fail");
    },
    (e) => {
      expect(e).toBeInstanceOf(CniError);
      return e as CniError;
    },
  );
}

describe("findPlugin", () => {
  it("finds the first executable of that name in CNI_PATH", () => {
    const other = join(dir, "other");
    mkdirSync(other);
    writeFileSync(join(other, "fake-ipam"), "not executable");
    mkdirSync(join(other, "dir-plugin"));
    expect(findPlugin("fake-ipam", [other, bin])).toBe(join(bin, "fake-ipam"));
  });

  it.each(["../bin/fake-ipam", "a/b", "..", ".", "", "/usr/bin/true"])("refuses type %j with code 7", (type) => {
    const err = (() => {
      try {
        findPlugin(type, [bin]);
      } catch (e) {
        return e as CniError;
      }
    })();
    expect(err?.code).toBe(7);
    expect(err?.message).toMatch(/must be a plain file name/);
  });

  it("reports a missing plugin with code 7 naming the type and the searched path", () => {
    try {
      findPlugin("nope", [bin, "/x"]);
      expect.unreachable();
    } catch (e) {
      expect(e).toMatchObject({ code: 7, message: expect.stringContaining('"nope" not found in CNI_PATH') });
      expect((e as CniError).details).toBe(`searched: ${bin}:/x`);
    }
  });

  it("a directory named like the plugin is skipped", () => {
    mkdirSync(join(dir, "only-dir"));
    mkdirSync(join(dir, "only-dir", "fake-ipam"));
    expect(() => findPlugin("fake-ipam", [join(dir, "only-dir")])).toThrow(/not found/);
  });
});

describe("delegation to a fake plugin", () => {
  it("ADD passes env (CNI_COMMAND overridden) and the config on stdin, and upconverts the result", async () => {
    respond(
      "ADD",
      JSON.stringify({ cniVersion: "0.3.1", ips: [{ version: "4", address: "10.5.0.9/24", gateway: "10.5.0.1" }], dns: {} }),
    );
    const stderr: Buffer[] = [];
    const result = await delegateAdd(
      "fake-ipam",
      config,
      { ...req(), env: { ...req().env, CNI_COMMAND: "CHECK" } },
      {
        onStderr: (c) => stderr.push(c),
      },
    );
    expect(result).toEqual({ cniVersion: "1.1.0", ips: [{ address: "10.5.0.9/24", gateway: "10.5.0.1" }] });
    const seenEnv = readFileSync(join(dir, "env.ADD"), "utf8");
    expect(seenEnv).toContain("CNI_COMMAND=ADD\n");
    expect(seenEnv).toContain("CNI_CONTAINERID=ctr1\n");
    expect(seenEnv).toContain("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=web\n");
    expect(seenEnv).toContain(`CNI_PATH=/nonexistent:${bin}\n`);
    expect(JSON.parse(readFileSync(join(dir, "stdin.ADD"), "utf8"))).toEqual(config);
    expect(Buffer.concat(stderr).toString()).toContain("fake plugin says hi");
  });

  it("passes raw bytes through unchanged", async () => {
    const raw = Buffer.from(`{"cniVersion":"1.0.0", "name":"n1","type":"x",  "ipam":{"type":"fake-ipam"}}`);
    respond("DEL", "");
    await delegateDel("fake-ipam", raw, req(), quiet);
    expect(readFileSync(join(dir, "stdin.DEL"))).toEqual(raw);
    expect(readFileSync(join(dir, "env.DEL"), "utf8")).toContain("CNI_COMMAND=DEL\n");
  });

  it.each([
    ["DEL", delegateDel],
    ["CHECK", delegateCheck],
    ["GC", delegateGc],
    ["STATUS", delegateStatus],
  ] as const)("%s runs the delegate with that command and succeeds on exit 0", async (cmd, fn) => {
    await fn("fake-ipam", config, req(), quiet);
    expect(readFileSync(join(dir, `env.${cmd}`), "utf8")).toContain(`CNI_COMMAND=${cmd}\n`);
  });

  it("a spec error object becomes a CniError with the delegate's code, message and details", async () => {
    respond("ADD", JSON.stringify({ cniVersion: "1.0.0", code: 11, msg: "pool locked", details: "try later" }), 1);
    const err = await caught(delegateAdd("fake-ipam", config, req(), quiet));
    expect(err.code).toBe(11);
    expect(err.message).toBe("fake-ipam: pool locked");
    expect(err.details).toBe("try later");
  });

  it("is lenient about error objects without cniVersion or code", async () => {
    respond("DEL", JSON.stringify({ code: 7, msg: "bad range" }), 1);
    expect(await caught(delegateDel("fake-ipam", config, req(), quiet))).toMatchObject({
      code: 7,
      message: "fake-ipam: bad range",
    });
    respond("DEL", JSON.stringify({ msg: "no code here" }), 1);
    expect(await caught(delegateDel("fake-ipam", config, req(), quiet))).toMatchObject({ code: 999 });
  });

  it("a non-JSON failure names the exit status and the first line printed", async () => {
    respond("DEL", "panic: runtime error\ngoroutine 1", 2);
    const err = await caught(delegateDel("fake-ipam", config, req(), quiet));
    expect(err).toMatchObject({ code: 999, message: 'delegate "fake-ipam" DEL exited with status 2: panic: runtime error' });
    respond("CHECK", "", 3);
    expect((await caught(delegateCheck("fake-ipam", config, req(), quiet))).message).toMatch(
      /exited with status 3 and printed no error/,
    );
  });

  it("ADD with empty or invalid output is a decode failure (code 6)", async () => {
    respond("ADD", "");
    expect(await caught(delegateAdd("fake-ipam", config, req(), quiet))).toMatchObject({ code: 6 });
    respond("ADD", "{not json");
    expect(await caught(delegateAdd("fake-ipam", config, req(), quiet))).toMatchObject({ code: 6 });
    respond("ADD", JSON.stringify({ cniVersion: "1.0.0", ips: [{ address: "bogus" }] }));
    const err = await caught(delegateAdd("fake-ipam", config, req(), quiet));
    expect(err.code).toBe(6);
    expect(err.message).toMatch(/delegate "fake-ipam".*ips\[0\]\.address/);
  });

  it("a legacy result without cniVersion is read in the config's version", async () => {
    respond("ADD", JSON.stringify({ ip4: { ip: "10.5.0.3/24" } }));
    const result = await delegateAdd("fake-ipam", { ...config, cniVersion: "0.2.0" }, req(), quiet);
    expect(result.ips).toEqual([{ address: "10.5.0.3/24" }]);
  });

  it("kills a hanging delegate after the timeout (code 11)", async () => {
    writeFake("slow", "#!/bin/sh\nexec sleep 30\n");
    const started = Date.now();
    const err = await caught(delegateDel("slow", config, req(), { ...quiet, timeoutMs: 300 }));
    expect(err.code).toBe(11);
    expect(err.message).toMatch(/timed out after 300 ms/);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it("stops a delegate that floods stdout (code 5)", async () => {
    writeFake("flood", "#!/bin/sh\nexec yes\n");
    const err = await caught(delegateAdd("flood", config, req(), { ...quiet, timeoutMs: 10_000 }));
    expect(err.code).toBe(5);
  });

  it("survives a delegate that exits without reading stdin", async () => {
    writeFake("noread", "#!/bin/sh\nexit 0\n");
    await delegateDel("noread", Buffer.alloc(4 * 1024 * 1024, 0x20), req(), quiet);
  });

  it("an unrunnable file (bad interpreter) becomes a CniError, not a crash", async () => {
    writeFake("broken", "#!/nonexistent/interpreter\n");
    const err = await caught(delegateDel("broken", config, req(), quiet));
    expect(err.code).toBe(999);
    expect(err.message).toMatch(/cannot run delegate "broken"/);
  });
});

const HOST_LOCAL = "/usr/lib/cni/host-local";

describe.skipIf(!existsSync(HOST_LOCAL))("delegation to Debian's real host-local", () => {
  function hostLocalConfig(cniVersion: string, dataDir: string, name: string) {
    return {
      cniVersion,
      name,
      type: "bridge",
      ipam: {
        type: "host-local",
        dataDir,
        ranges: [[{ subnet: "10.77.0.0/24", gateway: "10.77.0.1" }], [{ subnet: "fd77::/64" }]],
        routes: [{ dst: "0.0.0.0/0" }],
      },
    };
  }
  const hostReq = (prefix: string) => ({
    env: {
      CNI_CONTAINERID: `${prefix}-ctr`,
      // host-local never enters the netns; the path only has to look like one.
      CNI_NETNS: `/var/run/netns/${prefix}`,
      CNI_IFNAME: "eth0",
      CNI_PATH: "/usr/lib/cni",
    },
    path: ["/usr/lib/cni"],
  });

  it.each(["1.0.0", "0.4.0", "0.2.0"])("ADD then DEL at %s: lease file created and removed", async (v) => {
    const prefix = testPrefix();
    const dataDir = join(dir, "ipam");
    const name = `${prefix}-net`;
    const conf = hostLocalConfig(v, dataDir, name);
    const result = await delegateAdd("host-local", conf, hostReq(prefix), quiet);

    if (v === "0.2.0") {
      // 0.2.0 holds one address per family: both survive the upconversion.
      expect(result.ips?.map((ip) => ip.address)).toEqual(["10.77.0.2/24", "fd77::2/64"]);
    } else {
      expect(result.ips).toEqual([
        { address: "10.77.0.2/24", gateway: "10.77.0.1" },
        { address: "fd77::2/64", gateway: "fd77::1" },
      ]);
    }
    expect(result.routes).toEqual([{ dst: "0.0.0.0/0" }]);
    // What host-local holds on disk: one lease file per address, naming our container.
    const leases = readdirSync(join(dataDir, name)).filter((f) => f.includes(".") || f.includes(":"));
    expect(leases.sort()).toEqual(expect.arrayContaining(["10.77.0.2", "fd77::2"]));
    expect(readFileSync(join(dataDir, name, "10.77.0.2"), "utf8")).toContain(`${prefix}-ctr`);

    await delegateDel("host-local", conf, hostReq(prefix), quiet);
    expect(existsSync(join(dataDir, name, "10.77.0.2"))).toBe(false);
    expect(existsSync(join(dataDir, name, "fd77::2"))).toBe(false);
    // DEL is idempotent.
    await delegateDel("host-local", conf, hostReq(prefix), quiet);
  });

  it("host-local's own errors come back with its code (1.1.0 is beyond Debian's 1.1.1 build)", async () => {
    const prefix = testPrefix();
    const err = await caught(
      delegateAdd("host-local", hostLocalConfig("1.1.0", join(dir, "ipam"), `${prefix}-net`), hostReq(prefix), quiet),
    );
    expect(err.code).toBe(1);
    expect(err.message).toMatch(/^host-local: /);
  });

  it("a second ADD for the same container and ifname is refused by host-local", async () => {
    const prefix = testPrefix();
    const conf = hostLocalConfig("1.0.0", join(dir, "ipam"), `${prefix}-net`);
    await delegateAdd("host-local", conf, hostReq(prefix), quiet);
    try {
      const err = await caught(delegateAdd("host-local", conf, hostReq(prefix), quiet));
      expect(err.message).toMatch(/duplicate allocation|already/i);
    } finally {
      await delegateDel("host-local", conf, hostReq(prefix), quiet);
    }
  });
});
