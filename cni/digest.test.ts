import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { addon, addonIfLoaded } from "../native/addon.ts";
import { randomBytes, sha256Hex, sha256HexJs, shortHash } from "./digest.ts";

/** Strings across SHA-256's block boundaries (one and two padding blocks), and multi-byte UTF-8. */
const INPUTS = [
  ...Array.from({ length: 200 }, (_, len) =>
    Array.from({ length: len }, (_, i) => String.fromCharCode(32 + ((i * 7 + len) % 90))).join(""),
  ),
  "netz-ü-容器-🙂",
  "x".repeat(1000),
];

describe("digest", () => {
  it("the JavaScript SHA-256 matches node:crypto's on the FIPS vectors and on every length across block boundaries", () => {
    expect(sha256HexJs("")).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect(sha256HexJs("abc")).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    for (const s of INPUTS) expect(sha256HexJs(s)).toBe(createHash("sha256").update(s).digest("hex"));
    expect(sha256HexJs(Buffer.from("abc"))).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  });

  it("the native addon's SHA-256 matches node:crypto's, for strings and bytes, and refuses anything else", () => {
    const native = addon();
    for (const s of INPUTS) {
      const want = createHash("sha256").update(s).digest("hex");
      expect(native.sha256Hex(s)).toBe(want);
      expect(native.sha256Hex(Buffer.from(s, "utf8"))).toBe(want);
    }
    expect(() => native.sha256Hex(42 as unknown as string)).toThrow(TypeError);
    expect(() => native.sha256Hex(new Uint16Array(4) as unknown as Uint8Array)).toThrow(TypeError);
  });

  it("hashes names through the addon once it is loaded, with the same digests", () => {
    const native = addon();
    expect(addonIfLoaded()).toBe(native);
    const real = native.sha256Hex;
    let calls = 0;
    native.sha256Hex = (input) => {
      calls++;
      return real(input);
    };
    try {
      for (const s of INPUTS) expect(sha256Hex(s)).toBe(sha256HexJs(s));
      expect(shortHash("abc", 12)).toBe("ba7816bf8f01");
      expect(calls).toBe(INPUTS.length + 1);
    } finally {
      native.sha256Hex = real;
    }
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
});
