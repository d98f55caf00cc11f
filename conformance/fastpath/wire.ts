// The fast-path frame format, written here from its documented layout (cni/fastpath/launcher/wire.h)
// so that the suites speak it as any client or server would: one request frame and one response
// frame per unix-socket connection, little-endian.
//
//   header   offset 0 "BCNI" | 4 u16 version (1) | 6 u16 kind (1 request, 2 response) | 8 u32 body length
//   request  u32 type length, type | u32 env count, per entry u32 length, "KEY=VALUE" | u32 stdin length, stdin
//   response i32 exit code | u32 stdout length, stdout | u32 stderr length, stderr

export const HEADER_BYTES = 12;
const MAGIC = "BCNI";
const VERSION = 1;
const KIND_REQUEST = 1;
const KIND_RESPONSE = 2;

export interface Request {
  type: string;
  env: Record<string, string>;
  stdin: Buffer;
}

export interface Response {
  exitCode: number;
  stdout: Buffer;
  stderr: Buffer;
}

export function parseHeader(buf: Buffer): { version: number; kind: number; length: number } {
  if (buf.length < HEADER_BYTES) throw new Error("short frame header");
  if (buf.toString("latin1", 0, 4) !== MAGIC) throw new Error("bad magic");
  return { version: buf.readUInt16LE(4), kind: buf.readUInt16LE(6), length: buf.readUInt32LE(8) };
}

function header(kind: number, length: number): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  h.write(MAGIC, 0, "latin1");
  h.writeUInt16LE(VERSION, 4);
  h.writeUInt16LE(kind, 6);
  h.writeUInt32LE(length, 8);
  return h;
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
}

function field(b: Buffer): Buffer {
  return Buffer.concat([u32(b.length), b]);
}

class Reader {
  private off = 0;
  constructor(private readonly buf: Buffer) {}
  u32(what: string): number {
    if (this.off + 4 > this.buf.length) throw new Error(`truncated frame: no ${what}`);
    const v = this.buf.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }
  bytes(what: string): Buffer {
    const len = this.u32(`${what} length`);
    if (this.off + len > this.buf.length) throw new Error(`truncated frame: ${what} claims ${len} bytes`);
    const b = this.buf.subarray(this.off, this.off + len);
    this.off += len;
    return b;
  }
  end(): void {
    if (this.off !== this.buf.length) throw new Error(`${this.buf.length - this.off} stray bytes after the frame`);
  }
}

export function encodeRequest(req: Request): Buffer {
  const env = Object.entries(req.env).map(([k, v]) => field(Buffer.from(`${k}=${v}`)));
  const body = Buffer.concat([field(Buffer.from(req.type)), u32(env.length), ...env, field(req.stdin)]);
  return Buffer.concat([header(KIND_REQUEST, body.length), body]);
}

/** The body of a request frame (after its header). */
export function decodeRequest(body: Buffer): Request {
  const r = new Reader(body);
  const type = r.bytes("type").toString("utf8");
  const count = r.u32("environment count");
  const env: Record<string, string> = {};
  for (let i = 0; i < count; i++) {
    const kv = r.bytes("environment entry").toString("utf8");
    const eq = kv.indexOf("=");
    if (eq <= 0) throw new Error(`environment entry ${JSON.stringify(kv.slice(0, 40))} has no KEY=`);
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const stdin = Buffer.from(r.bytes("stdin"));
  r.end();
  return { type, env, stdin };
}

export function encodeResponse(res: { exitCode: number; stdout: string | Buffer; stderr: string | Buffer }): Buffer {
  const code = Buffer.alloc(4);
  code.writeInt32LE(res.exitCode);
  const body = Buffer.concat([code, field(Buffer.from(res.stdout)), field(Buffer.from(res.stderr))]);
  return Buffer.concat([header(KIND_RESPONSE, body.length), body]);
}

/** A whole response frame, header included. */
export function decodeResponse(frame: Buffer): Response {
  const h = parseHeader(frame);
  if (h.kind !== KIND_RESPONSE) throw new Error(`expected a response frame, got kind ${h.kind}`);
  const body = frame.subarray(HEADER_BYTES, HEADER_BYTES + h.length);
  if (body.length !== h.length || body.length < 4) throw new Error("truncated response frame");
  const r = new Reader(body.subarray(4));
  const stdout = Buffer.from(r.bytes("stdout"));
  const stderr = Buffer.from(r.bytes("stderr"));
  r.end();
  return { exitCode: body.readInt32LE(0), stdout, stderr };
}
