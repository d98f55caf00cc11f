// The log format: readable lines on a terminal (a pseudo-terminal from util-linux script),
// JSON lines into a pipe, and --log-format overriding either. Run through the berth CLI.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { formatLogRecord, resolveLogFormat } from "./log.ts";

const REPO = join(import.meta.dirname, "..");
const BERTH = join(REPO, "bin", "berth");

describe("formatLogRecord", () => {
  it("prints time, level, component, message and the other fields as key=value", () => {
    const time = new Date(2026, 0, 2, 3, 4, 5, 67).getTime();
    const line = formatLogRecord({
      level: 40,
      time,
      pid: 1,
      hostname: "h",
      component: "berth-agent",
      msg: "peer gone",
      subnet: "10.244.3.0/24",
      reason: "lease expired",
      count: 2,
      ok: false,
      err: { type: "Error", message: "no route", stack: "Error: no route\n    at x" },
      peer: { ip: "10.0.0.2" },
    });
    expect(line).toBe(
      '03:04:05.067 WARN  berth-agent peer gone subnet=10.244.3.0/24 reason="lease expired" count=2 ok=false err="no route" peer={"ip":"10.0.0.2"}',
    );
  });

  it("quotes control characters and equals signs, and falls back to name", () => {
    expect(formatLogRecord({ level: 30, time: 0, name: "berth-csi", msg: "x", a: "b=c", n: "l1\nl2" })).toMatch(
      / INFO {2}berth-csi x a="b=c" n="l1\\nl2"$/,
    );
  });

  it("refuses an unknown format", () => {
    expect(() => resolveLogFormat("yaml")).toThrow(/--log-format: expected json or text, got "yaml"/);
    expect(resolveLogFormat("json")).toBe("json");
    expect(resolveLogFormat("text")).toBe("text");
  });
});

describe("berth cni-server's log", () => {
  let dir: string | undefined;
  let child: ChildProcess | undefined;

  afterEach(() => {
    if (child?.pid && child.exitCode === null) process.kill(child.pid, "SIGKILL");
    child = undefined;
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  /**
   * Runs berth cni-server until its start-up log line is out, then stops it; returns what it
   * wrote to stderr (through a pipe, or as script's output when on a pseudo-terminal).
   */
  async function startUpLog(flags: string[], tty: boolean): Promise<string> {
    dir = mkdtempSync(join(tmpdir(), "berth-log-"));
    const args = [BERTH, "cni-server", "--socket", join(dir, "cni.sock"), ...flags];
    // script gives the command a pseudo-terminal as stdin, stdout and stderr; its own stdout
    // carries what the command wrote there. The command is stopped by SIGTERM to script's
    // child (the pty's hangup when script goes would end it too).
    child = tty
      ? spawn("script", ["-qfec", args.map((a) => `'${a}'`).join(" "), "/dev/null"], { stdio: ["pipe", "pipe", "pipe"] })
      : spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"] });
    const stream = tty ? child.stdout! : child.stderr!;
    let out = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no start-up line within 20 s:\n${out}`)), 20_000);
      stream.on("data", (b: Buffer) => {
        out += b.toString();
        if (/cni server: listening on/.test(out)) {
          clearTimeout(timer);
          resolve();
        }
      });
      child!.once("exit", () => {
        clearTimeout(timer);
        reject(new Error(`exited early:\n${out}`));
      });
    });
    return out;
  }

  it("is readable lines on a terminal", async () => {
    const out = await startUpLog([], true);
    const line = out.split(/\r?\n/).find((l) => l.includes("cni server: listening on"))!;
    expect(line).toMatch(/^\d\d:\d\d:\d\d\.\d{3} INFO {2}berth-cni-server cni server: listening on /);
    expect(out).not.toContain('{"level"');
  });

  it("is JSON lines into a pipe", async () => {
    const out = await startUpLog([], false);
    const lines = out.trim().split("\n");
    for (const l of lines) expect(() => JSON.parse(l), l).not.toThrow();
    expect(JSON.parse(lines.find((l) => l.includes("listening on"))!)).toMatchObject({
      level: 30,
      component: "berth-cni-server",
      msg: expect.stringMatching(/^cni server: listening on /),
    });
  });

  it("follows --log-format over the terminal check, both ways", async () => {
    const json = await startUpLog(["--log-format", "json"], true);
    expect(json).toMatch(/\{"level":30,"time":\d+,"component":"berth-cni-server","msg":"cni server: listening on /);
    afterEachNow();
    const text = await startUpLog(["--log-format=text"], false);
    expect(text).toMatch(/^\d\d:\d\d:\d\d\.\d{3} INFO {2}berth-cni-server cni server: listening on /m);
  });

  it("refuses an unknown --log-format with exit 2", async () => {
    const r = spawn(process.execPath, [BERTH, "cni-server", "--log-format", "yaml"], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    r.stderr!.on("data", (b: Buffer) => {
      err += b.toString();
    });
    const code = await new Promise((resolve) => r.once("exit", resolve));
    expect(code).toBe(2);
    expect(err).toBe('berth cni-server: --log-format: expected json or text, got "yaml"\n');
  });

  /** The teardown between two runs in one test. */
  function afterEachNow(): void {
    if (child?.pid && child.exitCode === null) process.kill(child.pid, "SIGKILL");
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
});
