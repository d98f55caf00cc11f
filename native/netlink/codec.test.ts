import { describe, expect, it } from "vitest";
import {
  Attrs,
  bytesToIp,
  bytesToMac,
  forEachMessage,
  InvalidValueError,
  ipToBytes,
  MessageWriter,
  macToBytes,
  NLA_F_NESTED,
  NLM_F_ACK_TLVS,
  NLM_F_CAPPED,
  NLMSG_ERROR,
  NLMSGERR_ATTR_MSG,
  NLMSGERR_ATTR_OFFS,
  parseCidr,
  parseError,
} from "./codec.ts";

describe("IP addresses", () => {
  it.each([
    ["0.0.0.0", "00000000"],
    ["10.1.2.3", "0a010203"],
    ["255.255.255.255", "ffffffff"],
    ["::", "00000000000000000000000000000000"],
    ["::1", "00000000000000000000000000000001"],
    ["fd00::1", "fd000000000000000000000000000001"],
    ["2001:db8::", "20010db8000000000000000000000000"],
    ["2001:DB8:0:0:1:0:0:1", "20010db8000000000001000000000001"],
    ["1:2:3:4:5:6:7:8", "00010002000300040005000600070008"],
    ["::ffff:10.0.0.1", "00000000000000000000ffff0a000001"],
    ["fe80::1:2", "fe800000000000000000000000010002"],
  ])("parses %s", (ip, hex) => {
    expect(ipToBytes(ip).toString("hex")).toBe(hex);
  });

  it.each([
    "",
    "1.2.3",
    "1.2.3.4.5",
    "256.1.1.1",
    "01.2.3.4",
    "1..2.3",
    "a.b.c.d",
    ":::",
    "1:2:3:4:5:6:7:8:9",
    "1::2::3",
    "12345::",
    "1:2:3:4:5:6:7",
    ":1::",
    "1:",
    "g::1",
    "::1.2.3",
  ])("rejects %j with InvalidValueError", (ip) => {
    expect(() => ipToBytes(ip)).toThrow(InvalidValueError);
  });

  it.each([
    ["20010db8000000000001000000000001", "2001:db8::1:0:0:1"], // first longest run wins
    ["20010db8000000010001000100010001", "2001:db8:0:1:1:1:1:1"], // a single zero word is not compressed
    ["00000000000000000000000000000000", "::"],
    ["fe800000000000000000000000000000", "fe80::"],
    ["00000000000000000000ffff0a000001", "::ffff:10.0.0.1"],
  ])("formats %s canonically as %s (RFC 5952)", (hex, ip) => {
    expect(bytesToIp(Buffer.from(hex, "hex"))).toBe(ip);
  });

  it("round-trips random IPv6 addresses through format and parse", () => {
    for (let i = 0; i < 500; i++) {
      const b = Buffer.alloc(16);
      for (let j = 0; j < 16; j++) b[j] = Math.random() < 0.4 ? 0 : (Math.random() * 256) | 0;
      expect(ipToBytes(bytesToIp(b)).equals(b)).toBe(true);
    }
  });

  it("parses CIDRs and bounds the prefix length", () => {
    expect(parseCidr("10.1.2.3/24")).toMatchObject({ family: 4, address: "10.1.2.3", prefixLength: 24 });
    expect(parseCidr("fd00::1")).toMatchObject({ family: 6, prefixLength: 128 });
    expect(() => parseCidr("10.0.0.0/33")).toThrow(/prefix length must be 0..32/);
    expect(() => parseCidr("fd00::/129")).toThrow(InvalidValueError);
    expect(() => parseCidr("10.0.0.0/x")).toThrow(InvalidValueError);
  });
});

describe("MAC addresses", () => {
  it("round-trips and rejects garbage", () => {
    expect(bytesToMac(macToBytes("02:AB:cd:0:1:ff"))).toBe("02:ab:cd:00:01:ff");
    for (const bad of ["", "02:ab:cd", "02:ab:cd:00:01:fg", "02-ab-cd-00-01-ff", "02:ab:cd:00:01:123"]) {
      expect(() => macToBytes(bad)).toThrow(InvalidValueError);
    }
  });
});

describe("MessageWriter and Attrs", () => {
  it("writes a header, an aligned struct and attributes the decoder reads back", () => {
    const w = new MessageWriter(16); // tiny: forces the buffer to grow mid-attribute
    w.begin(16, 0x405);
    const h = w.struct(6); // padded to 8
    w.putU8(h, 7).putU16(h + 2, 0xbeef);
    w.string(3, "abc");
    w.u8(10, 200)
      .u16(11, 65535)
      .be16(12, 4789)
      .u32(13, 0xfffffffe)
      .i32(14, -5)
      .u64(15, 2 ** 40 + 3);
    w.ip(16, "fd00::1").mac(17, "02:00:00:00:00:01").flag(18);
    const outer = w.nest(19);
    w.u32(1, 42);
    const inner = w.nest(2);
    w.string(1, "deep");
    w.end(inner);
    w.end(outer);
    const msg = w.finish(77);
    expect(msg.length % 4).toBe(0);
    expect(msg.readUInt32LE(0)).toBe(msg.length);
    const seen: number[] = [];
    forEachMessage(msg, (m) => {
      expect(m).toMatchObject({ type: 16, flags: 0x405, seq: 77, payload: 16, end: msg.length });
      expect(m.buf[m.payload]).toBe(7);
      expect(m.buf.readUInt16LE(m.payload + 2)).toBe(0xbeef);
      const a = new Attrs(m.buf, m.payload + 8, m.end);
      expect(a.string(3)).toBe("abc");
      expect([a.u8(10), a.u16(11), a.be16(12), a.u32(13), a.i32(14), a.u64(15)]).toEqual([
        200,
        65535,
        4789,
        0xfffffffe,
        -5,
        2 ** 40 + 3,
      ]);
      expect(a.ip(16)).toBe("fd00::1");
      expect(a.mac(17)).toBe("02:00:00:00:00:01");
      expect(a.has(18)).toBe(true);
      expect(a.has(99)).toBe(false);
      // The nested flag is set on the wire and masked off for lookups.
      const nestAt = a.offset(19) as number;
      expect(m.buf.readUInt16LE(nestAt - 2) & NLA_F_NESTED).toBe(NLA_F_NESTED);
      const n = a.nested(19);
      expect(n?.u32(1)).toBe(42);
      expect(n?.nested(2)?.string(1)).toBe("deep");
      seen.push(m.type);
    });
    expect(seen).toEqual([16]);
  });

  it("reuses its buffer across messages without leaking old bytes into padding", () => {
    const w = new MessageWriter(64);
    w.begin(1, 0).string(1, "xxxxxxx");
    w.finish(1);
    const msg = w.begin(1, 0).string(1, "a").finish(2);
    expect(msg.length).toBe(16 + 8);
    expect(msg.subarray(16 + 5, 16 + 8).equals(Buffer.alloc(3))).toBe(true);
  });

  it("refuses a truncated message", () => {
    const w = new MessageWriter();
    const msg = Buffer.from(w.begin(1, 0).u32(1, 1).finish(1));
    expect(() => forEachMessage(msg.subarray(0, msg.length - 4), () => {})).toThrow(/truncated/);
  });

  it("Attrs.each visits repeated attributes in order", () => {
    const w = new MessageWriter();
    w.begin(1, 0).u16(2, 10).u16(2, 20).u16(3, 30);
    const msg = w.finish(1);
    const got: [number, number][] = [];
    Attrs.each(msg, 16, msg.length, (t, off) => got.push([t, msg.readUInt16LE(off)]));
    expect(got).toEqual([
      [2, 10],
      [2, 20],
      [3, 30],
    ]);
    expect(new Attrs(msg, 16, msg.length).u16(2)).toBe(20); // last wins, as nla_parse
  });
});

describe("NLMSG_ERROR", () => {
  function errorMessage(errno: number, flags: number, tlvs?: (w: MessageWriter) => void): Buffer {
    // Built the way the kernel does: error code, echoed request header, then ack TLVs.
    const w = new MessageWriter();
    w.begin(NLMSG_ERROR, flags);
    const at = w.struct(4 + 16);
    w.putI32(at, -errno);
    w.putU32(at + 4, 16); // echoed nlmsg_len (capped: header only)
    w.putU16(at + 8, 16);
    tlvs?.(w);
    return Buffer.from(w.finish(9));
  }

  it("decodes the errno and extended-ack text and offset", () => {
    const buf = errorMessage(34, NLM_F_CAPPED | NLM_F_ACK_TLVS, (w) =>
      w.string(NLMSGERR_ATTR_MSG, "VXLAN ID must be lower than 16777216").u32(NLMSGERR_ATTR_OFFS, 52),
    );
    forEachMessage(buf, (m) => {
      expect(parseError(m)).toEqual({ errno: 34, kernelMessage: "VXLAN ID must be lower than 16777216", badAttrOffset: 52 });
    });
  });

  it("decodes a plain ACK and an error without TLVs", () => {
    forEachMessage(errorMessage(0, NLM_F_CAPPED), (m) => expect(parseError(m)).toEqual({ errno: 0 }));
    forEachMessage(errorMessage(17, NLM_F_CAPPED), (m) => expect(parseError(m)).toEqual({ errno: 17 }));
  });

  it("skips an uncapped echoed request to find the TLVs", () => {
    const w = new MessageWriter();
    w.begin(NLMSG_ERROR, NLM_F_ACK_TLVS);
    const at = w.struct(4 + 24);
    w.putI32(at, -22);
    w.putU32(at + 4, 24); // the whole 24-byte request is echoed
    w.string(NLMSGERR_ATTR_MSG, "bad");
    forEachMessage(Buffer.from(w.finish(1)), (m) => expect(parseError(m).kernelMessage).toBe("bad"));
  });
});
