// Names derived from hashes, and a little randomness, without node:crypto: loading that module
// costs a cold plugin process several milliseconds, more than all the hashing a CNI call does.
// SHA-256 (FIPS 180-4) over UTF-8, for the short inputs berth hashes (network, container id,
// interface name): berth's native addon's when something has loaded it (every main plugin
// and the agent have, by the time they name a link: in a cold process the JavaScript below,
// run for the first time by V8's interpreter, costs ~0.2 ms a name), else the JavaScript.
// Randomness comes from /dev/urandom.
import { closeSync, openSync, readSync } from "node:fs";
import { addonIfLoaded } from "../native/addon.ts";

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
  0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
  0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
  0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
  0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
  0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

const rotr = (x: number, n: number) => (x >>> n) | (x << (32 - n));

/** SHA-256 of `input` (strings as UTF-8), as 64 lowercase hex characters. */
export function sha256Hex(input: string | Uint8Array): string {
  const native = addonIfLoaded();
  return native ? native.sha256Hex(input) : sha256HexJs(input);
}

/** The same in JavaScript, for a process without the addon loaded. */
export function sha256HexJs(input: string | Uint8Array): string {
  const data = typeof input === "string" ? Buffer.from(input, "utf8") : input;
  const bitLen = data.length * 8;
  const padded = new Uint8Array((((data.length + 9 + 63) >> 6) << 6) >>> 0);
  padded.set(data);
  padded[data.length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(bitLen / 2 ** 32));
  view.setUint32(padded.length - 4, bitLen >>> 0);
  const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const w = new Uint32Array(64);
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(off + i * 4);
    for (let i = 16; i < 64; i++) {
      const a = w[i - 15]!;
      const b = w[i - 2]!;
      const s0 = rotr(a, 7) ^ rotr(a, 18) ^ (a >>> 3);
      const s1 = rotr(b, 17) ^ rotr(b, 19) ^ (b >>> 10);
      w[i] = (w[i - 16]! + s0 + w[i - 7]! + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, hh] = h as unknown as number[];
    for (let i = 0; i < 64; i++) {
      const t1 = (hh! + (rotr(e!, 6) ^ rotr(e!, 11) ^ rotr(e!, 25)) + ((e! & f!) ^ (~e! & g!)) + K[i]! + w[i]!) >>> 0;
      const t2 = ((rotr(a!, 2) ^ rotr(a!, 13) ^ rotr(a!, 22)) + ((a! & b!) ^ (a! & c!) ^ (b! & c!))) >>> 0;
      hh = g;
      g = f;
      f = e;
      e = (d! + t1) >>> 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) >>> 0;
    }
    const next = [a, b, c, d, e, f, g, hh];
    for (let i = 0; i < 8; i++) h[i] = (h[i]! + next[i]!) >>> 0;
  }
  return Array.from(h, (x) => x.toString(16).padStart(8, "0")).join("");
}

/** The first `n` hex characters of SHA-256(`s`): berth's deterministic short names. */
export function shortHash(s: string, n: number): string {
  return sha256Hex(s).slice(0, n);
}

/** `n` bytes read from /dev/urandom. */
function readUrandom(n: number): Buffer {
  const buf = Buffer.alloc(n);
  const fd = openSync("/dev/urandom", "r");
  try {
    let got = 0;
    while (got < n) got += readSync(fd, buf, got, n - got, null);
  } finally {
    closeSync(fd);
  }
  return buf;
}

/**
 * Random bytes are read ahead, POOL_BYTES at a time: an ADD takes two MACs, and the agent serves
 * hundreds of ADDs a second; one open/read/close per 40 ADDs instead of per MAC. Bytes handed
 * out are wiped from the pool.
 */
const POOL_BYTES = 512;
let pool: Buffer = Buffer.alloc(0);
let poolOffset = 0;

/** `n` random bytes from the kernel (/dev/urandom). */
export function randomBytes(n: number): Buffer {
  if (n > POOL_BYTES) return readUrandom(n);
  if (poolOffset + n > pool.length) {
    pool = readUrandom(POOL_BYTES);
    poolOffset = 0;
  }
  const out = Buffer.from(pool.subarray(poolOffset, poolOffset + n));
  pool.fill(0, poolOffset, poolOffset + n);
  poolOffset += n;
  return out;
}
