// The fast-path wire protocol between the berth CNI launcher (launcher/launcher.c,
// layout documented in launcher/wire.h) and the agent: one request frame and one
// response frame per unix-socket connection, little-endian, versioned.
//
//   header   "BCNI" | u16 version (1) | u16 kind (1 request, 2 response) | u32 body length
//   request  u32+type | u32 env count, (u32+"KEY=VALUE")* | u32+stdin
//   response i32 exit code | u32+stdout | u32+stderr

export const MAGIC = "BCNI";
export const PROTOCOL_VERSION = 1;
export const KIND_REQUEST = 1;
export const KIND_RESPONSE = 2;
export const HEADER_BYTES = 12;
/** 1 MiB + 1 of stdin (the launcher's limit), plus environment and slack. */
export const MAX_REQUEST_BODY_BYTES = 2 * 1024 * 1024;

export interface InvocationRequest {
  /** Plugin type, the launcher's basename, e.g. "berth-bridge". */
  type: string;
  env: Record<string, string>;
  stdin: Buffer;
}

export interface InvocationResponse {
  exitCode: number;
  stdout: string | Buffer;
  stderr: string | Buffer;
}

/** A frame that does not follow the protocol: the connection is answered with an error and closed. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

export interface FrameHeader {
  kind: number;
  length: number;
}

export function parseHeader(buf: Buffer): FrameHeader {
  if (buf.length < HEADER_BYTES) throw new ProtocolError("short frame header");
  if (buf.toString("latin1", 0, 4) !== MAGIC) throw new ProtocolError("not a berth fast-path frame (bad magic)");
  const version = buf.readUInt16LE(4);
  if (version !== PROTOCOL_VERSION) {
    throw new ProtocolError(`fast-path protocol version ${version} is not supported (this agent speaks ${PROTOCOL_VERSION})`);
  }
  return { kind: buf.readUInt16LE(6), length: buf.readUInt32LE(8) };
}

function header(kind: number, length: number): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  h.write(MAGIC, 0, "latin1");
  h.writeUInt16LE(PROTOCOL_VERSION, 4);
  h.writeUInt16LE(kind, 6);
  h.writeUInt32LE(length, 8);
  return h;
}

/** Reads length-prefixed fields off a body, failing with a ProtocolError instead of a RangeError. */
class BodyReader {
  private off = 0;
  constructor(private readonly buf: Buffer) {}

  u32(what: string): number {
    if (this.off + 4 > this.buf.length) throw new ProtocolError(`truncated frame: no ${what}`);
    const v = this.buf.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }

  bytes(what: string): Buffer {
    const len = this.u32(`${what} length`);
    if (this.off + len > this.buf.length) throw new ProtocolError(`truncated frame: ${what} claims ${len} bytes`);
    const b = this.buf.subarray(this.off, this.off + len);
    this.off += len;
    return b;
  }

  end(): void {
    if (this.off !== this.buf.length) throw new ProtocolError(`${this.buf.length - this.off} stray bytes after the frame`);
  }
}

export function decodeRequest(body: Buffer): InvocationRequest {
  const r = new BodyReader(body);
  const type = r.bytes("plugin type").toString("utf8");
  const count = r.u32("environment count");
  const env: Record<string, string> = {};
  for (let i = 0; i < count; i++) {
    const kv = r.bytes("environment entry").toString("utf8");
    const eq = kv.indexOf("=");
    if (eq <= 0) throw new ProtocolError(`environment entry ${JSON.stringify(kv.slice(0, 40))} has no KEY=`);
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  // Copy: the body buffer is the connection's receive buffer.
  const stdin = Buffer.from(r.bytes("stdin"));
  r.end();
  return { type, env, stdin };
}

function lengthPrefixed(b: Buffer): Buffer[] {
  const len = Buffer.alloc(4);
  len.writeUInt32LE(b.length);
  return [len, b];
}

export function encodeRequest(req: InvocationRequest): Buffer {
  const envEntries = Object.entries(req.env).flatMap(([k, v]) => lengthPrefixed(Buffer.from(`${k}=${v}`)));
  const count = Buffer.alloc(4);
  count.writeUInt32LE(Object.keys(req.env).length);
  const parts = [...lengthPrefixed(Buffer.from(req.type)), count, ...envEntries, ...lengthPrefixed(req.stdin)];
  const body = Buffer.concat(parts);
  return Buffer.concat([header(KIND_REQUEST, body.length), body]);
}

export function encodeResponse(res: InvocationResponse): Buffer {
  const code = Buffer.alloc(4);
  code.writeInt32LE(res.exitCode);
  const body = Buffer.concat([code, ...lengthPrefixed(Buffer.from(res.stdout)), ...lengthPrefixed(Buffer.from(res.stderr))]);
  return Buffer.concat([header(KIND_RESPONSE, body.length), body]);
}

export function decodeResponse(frame: Buffer): { exitCode: number; stdout: Buffer; stderr: Buffer } {
  const h = parseHeader(frame);
  if (h.kind !== KIND_RESPONSE) throw new ProtocolError(`expected a response frame, got kind ${h.kind}`);
  const body = frame.subarray(HEADER_BYTES, HEADER_BYTES + h.length);
  if (body.length !== h.length) throw new ProtocolError("truncated response frame");
  if (body.length < 4) throw new ProtocolError("truncated frame: no exit code");
  const exitCode = body.readInt32LE(0);
  const r = new BodyReader(body.subarray(4));
  const stdout = r.bytes("stdout");
  const stderr = r.bytes("stderr");
  r.end();
  return { exitCode, stdout, stderr };
}
