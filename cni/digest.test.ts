import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { randomBytes, sha256Hex, shortHash } from "./digest.ts";

describe("digest", () => {
  it("matches node:crypto's SHA-256 on the FIPS vectors and on every length across block boundaries", () => {
    expect(sha256Hex("")).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect(sha256Hex("abc")).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    for (let len = 0; len < 200; len++) {
      const s = Array.from({ length: len }, (_, i) => String.fromCharCode(32 + ((i * 7 + len) % 90))).join("");
      expect(sha256Hex(s)).toBe(createHash("sha256").update(s).digest("hex"));
    }
    const utf8 = "netz-ü-容器-🙂";
    expect(sha256Hex(utf8)).toBe(createHash("sha256").update(utf8).digest("hex"));
    expect(shortHash("abc", 12)).toBe("ba7816bf8f01");
  });

  it("gives fresh random bytes of the asked length", () => {
    const a = randomBytes(16);
    const b = randomBytes(16);
    expect(a.length).toBe(16);
    expect(a.equals(b)).toBe(false);
  });
});
