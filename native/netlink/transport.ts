// The NETLINK_ROUTE socket under Rtnl, bound to one network namespace. It sends an Exchange
// (one request and the reading of its reply) on this thread, or on the thread pool over a
// second socket in the same namespace, one exchange at a time.
import { addon, isSysError } from "../addon.ts";
import { Netns } from "../netns.ts";
import {
  Attrs,
  forEachMessage,
  InvalidValueError,
  type MessageView,
  MessageWriter,
  NLM_F_ACK,
  NLM_F_ACK_TLVS,
  NLM_F_APPEND,
  NLM_F_CREATE,
  NLM_F_DUMP,
  NLM_F_DUMP_INTR,
  NLM_F_EXCL,
  NLM_F_REPLACE,
  NLM_F_REQUEST,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSGERR_ATTR_MSG,
  parseError,
} from "./codec.ts";
import { NETLINK_ROUTE } from "./constants.ts";
import { errnoNumber, NetlinkError } from "./error.ts";

export const ACK = NLM_F_REQUEST | NLM_F_ACK;
export const CREATE = ACK | NLM_F_CREATE | NLM_F_EXCL;
export const REPLACE = ACK | NLM_F_CREATE | NLM_F_REPLACE;
export const APPEND = ACK | NLM_F_CREATE | NLM_F_APPEND;
const DUMP = NLM_F_REQUEST | NLM_F_DUMP;
/** Dumps interrupted by concurrent changes (NLM_F_DUMP_INTR) are retried this often. */
const DUMP_ATTEMPTS = 5;

export type Encode = (w: MessageWriter) => void;
export type Decode<T> = (m: MessageView) => T | undefined;
/** Builds one request message with the socket's writer and its next sequence number. */
export type Build = (type: number, flags: number, encode: Encode) => Buffer;

/** What an Exchange's reply() returns to have its request sent again (an interrupted dump). */
const AGAIN: unique symbol = Symbol("again");

/** One request and what its reply means, whichever way it is sent (RtnlSocket.send, RtnlSocket.sendOnPool). */
export interface Exchange<T> {
  /** Names the request in errors. */
  readonly op: string;
  /** The request's bytes, built right before each send (the writer is shared). */
  message(build: Build): Buffer;
  /** The result, or AGAIN to send the request again; throws the kernel's error. */
  reply(reply: Buffer): T | typeof AGAIN;
}

/** A request whose reply is checked for a kernel error, then read by `parse`. */
export function requestOf<T>(type: number, flags: number, encode: Encode, op: string, parse: (reply: Buffer) => T): Exchange<T> {
  return {
    op,
    message: (build) => build(type, flags, encode),
    reply: (reply) => {
      checkReply(reply, op);
      return parse(reply);
    },
  };
}

/** A reply read as the raw reply messages. */
export const raw = (reply: Buffer): Buffer => reply;

/** A dump (NLM_F_DUMP) whose reply messages are decoded; an interrupted one is sent again. */
export function dumpOf<T>(type: number, encode: Encode, decode: Decode<T>, op: string): Exchange<T[]> {
  let attempt = 0;
  return {
    op,
    message: (build) => build(type, DUMP, encode),
    reply: (reply) => (checkReply(reply, op) && ++attempt < DUMP_ATTEMPTS ? AGAIN : decodeAll(reply, type, decode)),
  };
}

function decodeAll<T>(reply: Buffer, type: number, decode: Decode<T>): T[] {
  const out: T[] = [];
  // Replies to RTM_GETx are RTM_NEWx (= GETx - 2).
  const want = type - 2;
  forEachMessage(reply, (m) => {
    if (m.type !== want) return;
    const v = decode(m);
    if (v !== undefined) out.push(v);
  });
  return out;
}

export function toNetlinkError(e: unknown, op: string): unknown {
  if (e instanceof NetlinkError) return e;
  if (e instanceof InvalidValueError) return new NetlinkError(op, errnoNumber("EINVAL"), undefined, e.message);
  if (isSysError(e)) return new NetlinkError(op, e.errno);
  return e;
}

/** Throws the first NLMSG_ERROR (or failed NLMSG_DONE) in `reply`; returns whether a dump was interrupted. */
export function checkReply(reply: Buffer, op: string): boolean {
  let interrupted = false;
  forEachMessage(reply, (m) => {
    if (m.flags & NLM_F_DUMP_INTR) interrupted = true;
    if (m.type === NLMSG_ERROR) {
      const ack = parseError(m);
      if (ack.errno !== 0) throw new NetlinkError(op, ack.errno, ack.kernelMessage);
    } else if (m.type === NLMSG_DONE && m.end - m.payload >= 4) {
      const err = -m.buf.readInt32LE(m.payload);
      if (err > 0) {
        // A failed dump reports its error (and extack TLVs) in NLMSG_DONE.
        const tlvStart = m.payload + 4;
        const msg = m.flags & NLM_F_ACK_TLVS ? new Attrs(m.buf, tlvStart, m.end).string(NLMSGERR_ATTR_MSG) : undefined;
        throw new NetlinkError(op, err, msg);
      }
    }
  });
  return interrupted;
}

/** A NETLINK_ROUTE socket in one network namespace, and a second one for the thread pool, opened on first use. */
export class RtnlSocket {
  private seq = (Math.random() * 0x7fffffff) >>> 0;
  private readonly w = new MessageWriter(1024);
  private asyncFd = -1;
  private asyncQueue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    /** The synchronous socket. */
    readonly fd: number,
    /** Our own fd on the target netns (-1: the namespace current at open time). */
    private readonly nsFd: number,
    /** Where this socket lives, for messages. */
    readonly netnsPath: string | undefined,
  ) {}

  /**
   * Opens a NETLINK_ROUTE socket in `netns` (an open Netns, a path like /proc/PID/ns/net
   * or /run/netns/x, or a bare name under /run/netns), or in the current namespace.
   * The socket stays bound to that namespace whatever the thread does later.
   */
  static open(netns?: Netns | string): RtnlSocket {
    const a = addon();
    if (netns === undefined) {
      try {
        return new RtnlSocket(a.nlOpen(NETLINK_ROUTE, 0), -1, undefined);
      } catch (e) {
        throw toNetlinkError(e, "open netlink socket");
      }
    }
    // Keep our own handle on the namespace: async verbs open a second socket there later,
    // and the caller may close its Netns as soon as this returns.
    let nsFd: number;
    let path: string;
    if (typeof netns === "string") {
      const ns = Netns.open(netns); // NetnsError: "network namespace /run/netns/x does not exist"
      nsFd = ns.fd;
      path = ns.path;
    } else {
      path = netns.path;
      try {
        nsFd = a.netnsOpen(`/proc/self/fd/${netns.fd}`);
      } catch (e) {
        throw toNetlinkError(e, `open netlink socket in ${path}`);
      }
    }
    try {
      return new RtnlSocket(a.nlOpen(NETLINK_ROUTE, 0, nsFd), nsFd, path);
    } catch (e) {
      a.close(nsFd);
      throw toNetlinkError(e, `open netlink socket in ${path}`);
    }
  }

  /** Closes the socket(s). An async request in flight finishes; queued ones are refused (EBADF). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const a = addon();
    a.close(this.fd);
    void this.asyncQueue.finally(() => {
      if (this.asyncFd >= 0) a.close(this.asyncFd);
      if (this.nsFd >= 0) a.close(this.nsFd);
    });
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0 || 1;
    return this.seq;
  }

  /** Builds a request with the shared writer: the view is valid until the next build. */
  readonly build: Build = (type, flags, encode) => {
    const w = this.w.begin(type, flags);
    encode(w);
    return w.finish(this.nextSeq());
  };

  private ensureOpen(op: string): void {
    if (this.closed) throw new NetlinkError(op, errnoNumber("EBADF"), undefined, "netlink socket is closed");
  }

  // ---------------------------------------------------------------- sending

  /** Sends an exchange on this thread's socket. Whatever fails becomes a NetlinkError named after its op. */
  send<T>(x: Exchange<T>): T {
    try {
      this.ensureOpen(x.op);
      for (;;) {
        const result = x.reply(addon().nlTransact(this.fd, x.message(this.build)));
        if (result !== AGAIN) return result;
      }
    } catch (e) {
      throw toNetlinkError(e, x.op);
    }
  }

  /** `send` on the thread pool, over the second socket, one exchange at a time. */
  sendOnPool<T>(x: Exchange<T>): Promise<T> {
    return this.enqueue(async () => {
      try {
        this.ensureOpen(x.op);
        for (;;) {
          // The addon copies the request before this returns, so the shared writer is free again.
          const result = x.reply(await addon().nlTransactAsync(this.asyncSocket(), x.message(this.build)));
          if (result !== AGAIN) return result;
        }
      } catch (e) {
        throw toNetlinkError(e, x.op);
      }
    });
  }

  private asyncSocket(): number {
    if (this.asyncFd < 0) {
      this.asyncFd = this.nsFd >= 0 ? addon().nlOpen(NETLINK_ROUTE, 0, this.nsFd) : addon().nlOpen(NETLINK_ROUTE, 0);
    }
    return this.asyncFd;
  }

  /** One exchange at a time on the async socket: replies are matched by reading in order. */
  private enqueue<T>(run: () => Promise<T>): Promise<T> {
    const p = this.asyncQueue.then(run, run);
    this.asyncQueue = p.catch(() => undefined);
    return p;
  }
}
