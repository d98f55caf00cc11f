// The Docker plugin's HTTP layer on its own (fastify inject, services stubbed): bodies in
// Docker's media type, answers checked against their schemas, every failure one {"Err"}.
// The real services with the real Docker Engine: conformance/engines/docker-*.test.ts.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import type { DockerNetworking } from "../cni/docker/network.ts";
import type { DockerVolume, DockerVolumeService } from "../csi/docker/volumes.ts";
import { testPrefix } from "../testing/kernel.ts";
import { buildDockerPluginApp } from "./docker-plugin.ts";

function appWith(get: (name: string) => unknown) {
  const volumes = { get } as unknown as DockerVolumeService;
  return buildDockerPluginApp(volumes, {} as DockerNetworking, pino({ level: "silent" }));
}

const post = (
  app: ReturnType<typeof appWith>,
  url: string,
  payload: string,
  contentType = "application/vnd.docker.plugins.v1.2+json",
) => app.inject({ method: "POST", url, payload, headers: { "content-type": contentType } });

describe("docker-plugin HTTP layer", () => {
  it("answers a well-formed Get in Docker's media type", async () => {
    const app = appWith((name): DockerVolume => ({ Name: name, Mountpoint: "", Status: { size: 1, kind: "dir" } }));
    const r = await post(app, "/VolumeDriver.Get", JSON.stringify({ Name: "v1" }));
    expect(r.statusCode).toBe(200);
    expect(r.json()).toEqual({ Volume: { Name: "v1", Mountpoint: "", Status: { size: 1, kind: "dir" } } });
  });

  it("turns an answer that does not match its schema into an Err, not a half answer", async () => {
    const missingName = appWith(() => ({ Mountpoint: "/x" }));
    const r = await post(missingName, "/VolumeDriver.Get", JSON.stringify({ Name: "v1" }));
    expect(r.statusCode).toBe(500);
    expect(r.json()).toEqual({
      Err: "VolumeDriver.Get: internal error: the answer does not match its schema (/Volume must have required property 'Name')",
    });
    const badStatus = appWith((name) => ({ Name: name, Status: { nested: { a: 1 } } }));
    const b = await post(badStatus, "/VolumeDriver.Get", JSON.stringify({ Name: "v1" }));
    expect(b.statusCode).toBe(500);
    expect(b.json().Err).toMatch(
      /^VolumeDriver.Get: internal error: the answer does not match its schema \(\/Volume\/Status\/nested must be string,number\)$/,
    );
  });

  it("reports a failure inside a service as one line, never a stack", async () => {
    const app = appWith(() => {
      throw new Error("disk on fire");
    });
    const r = await post(app, "/VolumeDriver.Get", JSON.stringify({ Name: "v1" }));
    expect(r.statusCode).toBe(500);
    expect(r.json()).toEqual({ Err: "VolumeDriver.Get: disk on fire" });
  });

  it("takes an empty or null body as an empty request, and any content type as JSON", async () => {
    const app = appWith(() => ({}));
    for (const [body, type] of [
      ["", "application/json"],
      ["null", "application/vnd.docker.plugins.v1.x+json"],
      ["{}", "text/plain"],
    ] as const) {
      const r = await post(app, "/VolumeDriver.Capabilities", body, type);
      expect(r.json(), `${type} ${JSON.stringify(body)}`).toEqual({ Capabilities: { Scope: "local" } });
    }
    const notJson = await post(app, "/VolumeDriver.Capabilities", "[1,");
    expect(notJson.statusCode).toBe(400);
    expect(notJson.json()).toEqual({ Err: "VolumeDriver.Capabilities: request body is not JSON" });
  });
});

describe("berth docker-plugin command line", () => {
  const REPO = resolve(import.meta.dirname, "..");
  const cli = (args: string[]) =>
    spawnSync(process.execPath, ["--import", "tsx", join(REPO, "bin", "cli.ts"), "docker-plugin", ...args], {
      encoding: "utf8",
      cwd: REPO,
      timeout: 30_000,
    });

  it("refuses bad flags with one line and exit code 2, before touching anything", () => {
    const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-dpcli-`));
    try {
      const cases: [string[], string][] = [
        [["--socket", "plugin.sock"], 'berth docker-plugin: --socket must be an absolute path, got "plugin.sock"\n'],
        [
          ["--socket", join(dir, "plugin")],
          `berth docker-plugin: --socket must end in .sock (Docker names the plugin after the file), got "${join(dir, "plugin")}"\n`,
        ],
        [["--csi-dir", "state"], 'berth docker-plugin: --csi-dir must be an absolute path, got "state"\n'],
        [["--bogus"], "berth docker-plugin: Unknown option '--bogus'\n"],
      ];
      for (const [args, stderr] of cases) {
        const r = cli([...args, "--docker-dir", join(dir, "dock")]);
        expect(r.status, args.join(" ")).toBe(2);
        expect(r.stderr, args.join(" ")).toBe(stderr);
      }
      expect(readdirSync(dir)).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
