// parseListenFds reads the variables as sd_listen_fds_with_names(3) does; taking the sockets
// themselves is tested end to end with systemd-socket-activate
// (conformance/fastpath/socket-activation.test.ts).
import { describe, expect, it } from "vitest";
import { ListenFdsError, parseListenFds } from "./listen-fds.ts";

describe("parseListenFds", () => {
  it("passes nothing without LISTEN_PID, or when it names another process", () => {
    expect(parseListenFds({ LISTEN_FDS: "2" }, 100)).toEqual([]);
    expect(parseListenFds({ LISTEN_PID: "101", LISTEN_FDS: "2", LISTEN_FDNAMES: "cni:csi" }, 100)).toEqual([]);
  });

  it("numbers the descriptors from 3 and names them from LISTEN_FDNAMES", () => {
    expect(parseListenFds({ LISTEN_PID: "100", LISTEN_FDS: "2", LISTEN_FDNAMES: "cni:csi" }, 100)).toEqual([
      { fd: 3, name: "cni" },
      { fd: 4, name: "csi" },
    ]);
  });

  it('names every descriptor "unknown" when LISTEN_FDNAMES is absent', () => {
    expect(parseListenFds({ LISTEN_PID: "100", LISTEN_FDS: "1" }, 100)).toEqual([{ fd: 3, name: "unknown" }]);
    expect(parseListenFds({ LISTEN_PID: "100", LISTEN_FDS: "0" }, 100)).toEqual([]);
  });

  it("refuses malformed variables with a message naming them", () => {
    const bad: [NodeJS.ProcessEnv, RegExp][] = [
      [{ LISTEN_PID: "abc", LISTEN_FDS: "1" }, /LISTEN_PID must be a process id, got "abc"/],
      [{ LISTEN_PID: "100" }, /LISTEN_FDS must be a count, got ""/],
      [{ LISTEN_PID: "100", LISTEN_FDS: "-1" }, /LISTEN_FDS must be a count, got "-1"/],
      [
        { LISTEN_PID: "100", LISTEN_FDS: "2", LISTEN_FDNAMES: "cni" },
        /LISTEN_FDNAMES names 1 descriptor\(s\), LISTEN_FDS passes 2/,
      ],
    ];
    for (const [env, msg] of bad) expect(() => parseListenFds(env, 100)).toThrow(msg);
    expect(() => parseListenFds({ LISTEN_PID: "100", LISTEN_FDS: "x" }, 100)).toThrow(ListenFdsError);
  });
});
