import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { randomBytes, sha256Hex, shortHash, useNativeSha256 } from "./digest.ts";

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

  it("gives fresh random bytes of the asked length, across refills of its read-ahead pool and beyond its size", () => {
    const a = randomBytes(16);
    const b = randomBytes(16);
    expect(a.length).toBe(16);
    expect(a.equals(b)).toBe(false);
    // 300 draws of 6 bytes (a MAC) cross the 512-byte pool several times: no draw repeats.
    const seen = new Set(Array.from({ length: 300 }, () => randomBytes(6).toString("hex")));
    expect(seen.size).toBe(300);
    const big = randomBytes(4096);
    expect(big.length).toBe(4096);
    expect(new Set(big).size).toBeGreaterThan(200); // not a zero-filled or repeated buffer
  });

  it("hashes through node:crypto once a long-lived process opts in, with the same digests", () => {
    const js = ["", "abc", "netz-ü-容器-🙂", "x".repeat(1000)].map((s) => sha256Hex(s));
    let calls = 0;
    useNativeSha256((algorithm) => {
      calls++;
      return createHash(algorithm);
    });
    try {
      expect(["", "abc", "netz-ü-容器-🙂", "x".repeat(1000)].map((s) => sha256Hex(s))).toEqual(js);
      expect(calls).toBe(4);
    } finally {
      useNativeSha256(undefined);
    }
  });
});
