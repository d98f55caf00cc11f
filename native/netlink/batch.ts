// RtnlBatch: requests built up front and sent to the kernel as one message (Rtnl.batch()).
import { type AddrSpec, encodeAddr } from "./address.ts";
import { forEachMessage, NLMSG_ERROR, parseError } from "./codec.ts";
import { RTM_NEWADDR, RTM_NEWROUTE, RTM_SETLINK } from "./constants.ts";
import { NetlinkError } from "./error.ts";
import { encodeLinkSet, type LinkChanges, type LinkRef } from "./link.ts";
import { encodeRoute, type RouteSpec, routeTitle } from "./route.ts";
import { ACK, type Build, CREATE, type Encode, type Exchange, toNetlinkError } from "./transport.ts";

/**
 * Requests that go to the kernel as one message: each is answered (ACK or error) in order,
 * and the kernel goes on past a failed one, so run() reports the first failure that is not
 * in that request's `ignore` list. Links are given by index (no lookups inside a batch).
 */
export class RtnlBatch {
  private readonly parts: Buffer[] = [];
  private readonly steps: { op: string; ignore: readonly string[] }[] = [];

  constructor(
    /** Builds a message into a buffer of its own (the parts outlive the socket's writer). */
    private readonly build: Build,
    /** The socket's two ways of sending: on this thread, and the async verbs' way. */
    private readonly via: { send(x: Exchange<void>): void; sendAsync(x: Exchange<void>): Promise<void> },
  ) {}

  private push(type: number, flags: number, encode: Encode, op: string, ignore: readonly string[] = []): this {
    try {
      this.parts.push(this.build(type, flags, encode));
    } catch (e) {
      throw toNetlinkError(e, op);
    }
    this.steps.push({ op, ignore });
    return this;
  }

  get size(): number {
    return this.steps.length;
  }

  addrAdd(index: number, addr: AddrSpec): this {
    return this.push(RTM_NEWADDR, CREATE, (w) => encodeAddr(w, index, addr, false), `addr add ${addr.cidr} dev ${index}`);
  }

  /** Flags, MTU, MAC and the like; a master given by name is not resolved here (use its index). */
  linkSet(index: number, changes: LinkChanges): this {
    const op = `link set ${index}`;
    const byIndex = (ref: LinkRef) => (typeof ref === "number" ? ref : 0);
    return this.push(RTM_SETLINK, ACK, (w) => encodeLinkSet(w, index, undefined, changes, byIndex), op);
  }

  routeAdd(spec: RouteSpec & { dev: number }, opts: { ignore?: readonly string[] } = {}): this {
    return this.push(
      RTM_NEWROUTE,
      CREATE,
      (w) => encodeRoute(w, spec, spec.dev, false),
      `route add ${routeTitle(spec)}`,
      opts.ignore,
    );
  }

  run(): void {
    if (this.parts.length === 0) return;
    this.via.send(this.exchange());
  }

  /** run() on the thread pool, or on this thread when the socket's scheduling says so. */
  async runAsync(): Promise<void> {
    if (this.parts.length === 0) return;
    return this.via.sendAsync(this.exchange());
  }

  /** The whole batch as one exchange: its messages as they are now, and every step's answer. */
  private exchange(): Exchange<void> {
    const message = Buffer.concat(this.parts);
    return { op: this.steps[0]!.op, message: () => message, reply: (reply) => this.check(reply) };
  }

  private check(reply: Buffer): void {
    const first = this.parts[0]!.readUInt32LE(8);
    let failure: NetlinkError | undefined;
    let failedAt = Number.POSITIVE_INFINITY;
    forEachMessage(reply, (m) => {
      if (m.type !== NLMSG_ERROR) return;
      const at = (m.seq - first) >>> 0;
      const step = this.steps[at];
      const ack = parseError(m);
      if (!step || ack.errno === 0 || at > failedAt) return;
      const err = new NetlinkError(step.op, ack.errno, ack.kernelMessage);
      if (step.ignore.includes(err.code)) return;
      failure = err;
      failedAt = at;
    });
    if (failure) throw failure;
  }
}
