import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sh } from "../testing/kernel.ts";
import { makeScratch, type Scratch } from "../testing/storage.ts";
import { CsiError } from "./errors.ts";
import { DirectoryError, MAX_NEW_DIRECTORIES, makeDirectories, pseudoFilesystemOf, vetNodePath } from "./paths.ts";

let s: Scratch;

beforeAll(() => {
  s = makeScratch();
  mkdirSync(s.path("kubelet"));
  mkdirSync(s.path("procfs"));
  sh("mount", ["-t", "proc", "proc", s.path("procfs")]);
  mkdirSync(s.path("devfs"));
  sh("mount", ["-t", "devtmpfs", "devtmpfs", s.path("devfs")]);
  mkdirSync(s.path("tmpfs"));
  sh("mount", ["-t", "tmpfs", "tmpfs", s.path("tmpfs")]);
});

afterAll(() => s.cleanup());

/** The INVALID_ARGUMENT message vetNodePath gives, or "ok". */
function vet(path: string, parentMustExist = false): string {
  try {
    vetNodePath("target_path", path, { parentMustExist });
    return "ok";
  } catch (e) {
    expect(e).toBeInstanceOf(CsiError);
    expect((e as CsiError).code).toBe(status.INVALID_ARGUMENT);
    return (e as CsiError).message;
  }
}

describe("pseudoFilesystemOf", () => {
  it("names the kernel filesystems by mount table and statfs, and passes ordinary storage", () => {
    expect(pseudoFilesystemOf("/proc/self")).toBe("proc");
    expect(pseudoFilesystemOf("/sys/fs/cgroup")).toBe("sys");
    expect(pseudoFilesystemOf(s.path("procfs"))).toBe("proc");
    expect(pseudoFilesystemOf(s.path("devfs"))).toBe("devtmpfs");
    expect(pseudoFilesystemOf(s.path("tmpfs"))).toBeUndefined();
    expect(pseudoFilesystemOf(s.path("kubelet"))).toBeUndefined();
  });
});

describe("vetNodePath", () => {
  it("accepts an ordinary path, existing or not, and says how much of it is missing", () => {
    expect(vetNodePath("f", `${s.path("kubelet")}/a/b/`)).toEqual({
      path: `${s.path("kubelet")}/a/b`,
      existing: s.path("kubelet"),
      missing: 2,
    });
    expect(vetNodePath("f", s.path("kubelet"))).toMatchObject({ existing: s.path("kubelet"), missing: 0 });
    // a path that is itself a mount point (a repeated publish) is judged by where it lives
    expect(vet(s.path("tmpfs"))).toBe("ok");
    expect(vet(s.path("devfs"))).toBe("ok");
  });

  it("refuses kernel trees and pseudo filesystems, by name and by what is mounted", () => {
    expect(vet("/proc/x")).toMatch(/\/proc, the kernel's own tree/);
    expect(vet("/sys/fs/cgroup/x")).toMatch(/\/sys/);
    expect(vet("/dev/x")).toMatch(/\/dev/);
    expect(vet("/proc")).toMatch(/\/proc/);
    expect(vet(join(s.path("procfs"), "x"))).toMatch(/kernel's proc filesystem/);
    expect(vet(join(s.path("procfs"), "1", "x", "y"))).toMatch(/proc filesystem/);
    expect(vet(join(s.path("procfs"), "self", "x"))).toMatch(/is a symlink/);
    expect(vet(join(s.path("devfs"), "x"))).toMatch(/kernel's devtmpfs filesystem/);
  });

  it("refuses symlinks: the path itself, a parent, a link into /proc", () => {
    const real = s.path("kubelet/real");
    mkdirSync(real);
    symlinkSync(real, s.path("kubelet/link"));
    symlinkSync("/proc", s.path("kubelet/to-proc"));
    symlinkSync("/proc/nonexistent", s.path("kubelet/dangling"));
    expect(vet(s.path("kubelet/link"))).toMatch(/is a symlink/);
    expect(vet(s.path("kubelet/link/x"))).toMatch(/is a symlink/);
    expect(vet(s.path("kubelet/to-proc/x"))).toMatch(/is a symlink/);
    expect(vet(s.path("kubelet/dangling"))).toMatch(/is a symlink/);
  });

  it("refuses malformed paths: relative, NUL, over PATH_MAX, a component over NAME_MAX, through a file", () => {
    expect(vet("kubelet/x")).toMatch(/absolute/);
    expect(vet(`${s.path("kubelet")}/a\u0000b`)).toMatch(/control characters/);
    const long = `${s.path("kubelet")}/${"a/".repeat(2100)}`;
    expect(vet(long)).toMatch(/longer than 409[56] bytes/);
    expect(vet(`${s.path("kubelet")}/${"n".repeat(256)}`)).toMatch(/longer than 255 bytes/);
    writeFileSync(s.path("kubelet/file"), "");
    expect(vet(s.path("kubelet/file/x"))).toMatch(/not a directory/);
    expect(vet("/")).toMatch(/root/);
  });

  it("limits what must be created: the parent for targets, a bounded depth otherwise", () => {
    expect(vet(s.path("kubelet/none/x"), true)).toMatch(/parent directory .* does not exist/);
    expect(vet(s.path("kubelet/x"), true)).toBe("ok");
    const deep = `${s.path("kubelet")}/${"d/".repeat(MAX_NEW_DIRECTORIES + 1)}`;
    expect(vet(deep)).toMatch(/missing directories/);
  });
});

describe("makeDirectories", () => {
  it("creates the missing directories one by one with the mode, and accepts existing ones", () => {
    const p = s.path("made/a/b/c");
    makeDirectories(p, 0o750);
    expect(statSync(p).isDirectory()).toBe(true);
    makeDirectories(p, 0o750);
    expect(statSync(s.path("made/a")).mode & 0o777).toBe(0o750 & ~process.umask());
  });

  it("fails cleanly: through a file, too deep, relative", () => {
    writeFileSync(s.path("made/file"), "");
    expect(() => makeDirectories(s.path("made/file/x"))).toThrow(DirectoryError);
    expect(() => makeDirectories(s.path("made/file/x"))).toThrow(/not a directory|ENOTDIR/);
    expect(() => makeDirectories(s.path("made/deep/1/2/3"), 0o750, 2)).toThrow(/more than 2 directories/);
    expect(existsSync(s.path("made/deep"))).toBe(false);
    expect(() => makeDirectories("rel/x")).toThrow(/absolute/);
  });

  it("returns an error under /proc instead of spinning (run in a child process with a timeout)", () => {
    const script = `import("./csi/paths.ts").then((m) => {
      try { m.makeDirectories("/proc/berth-paths-test/x"); console.log("created"); }
      catch (e) { console.log(e.name + " " + e.code + " " + e.message); }
    })`;
    const r = spawnSync(process.execPath, ["--import", "tsx", "-e", script], {
      cwd: resolve(import.meta.dirname, ".."),
      encoding: "utf8",
      timeout: 20_000,
    });
    expect(r.signal, "makeDirectories under /proc did not return").toBeNull();
    expect(r.stdout.trim()).toBe("DirectoryError ENOENT cannot create directory /proc/berth-paths-test: ENOENT");
  });
});
