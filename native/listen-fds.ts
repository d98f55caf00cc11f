// Sockets passed by a service manager (socket activation, as sd_listen_fds(3) describes it):
// systemd or systemd-socket-activate creates the listening sockets, starts us on the first
// connection and hands them over as descriptors 3, 4, ... with LISTEN_PID (our pid),
// LISTEN_FDS (how many) and LISTEN_FDNAMES (their names, colon-separated; berth's units name
// them "cni" and "csi"). The variables are read once and removed from the environment, so no
// child inherits them; every passed descriptor is made close-on-exec for the same reason.
import { addon } from "./addon.ts";

export const LISTEN_FDS_START = 3;
/** The name sd_listen_fds_with_names(3) gives a descriptor when LISTEN_FDNAMES is absent. */
export const UNNAMED = "unknown";

export class ListenFdsError extends Error {
  override name = "ListenFdsError";
}

export interface PassedFd {
  fd: number;
  name: string;
}

export interface PassedListener extends PassedFd {
  /** The path the socket is bound to ("" when unnamed or abstract). */
  path: string;
}

/**
 * The descriptors `env` passes to process `pid`: none when LISTEN_PID is absent or names
 * another process (the variables were inherited, not meant for us). Malformed variables are
 * a ListenFdsError, since a service manager never writes them so.
 */
export function parseListenFds(env: NodeJS.ProcessEnv, pid: number): PassedFd[] {
  const listenPid = env.LISTEN_PID;
  if (listenPid === undefined) return [];
  if (!/^[1-9][0-9]*$/.test(listenPid))
    throw new ListenFdsError(`LISTEN_PID must be a process id, got ${JSON.stringify(listenPid)}`);
  if (Number(listenPid) !== pid) return [];
  const count = env.LISTEN_FDS ?? "";
  if (!/^(0|[1-9][0-9]{0,5})$/.test(count)) throw new ListenFdsError(`LISTEN_FDS must be a count, got ${JSON.stringify(count)}`);
  const n = Number(count);
  let names: string[];
  if (env.LISTEN_FDNAMES === undefined) names = Array.from({ length: n }, () => UNNAMED);
  else {
    names = n === 0 && env.LISTEN_FDNAMES === "" ? [] : env.LISTEN_FDNAMES.split(":");
    if (names.length !== n)
      throw new ListenFdsError(`LISTEN_FDNAMES names ${names.length} descriptor(s), LISTEN_FDS passes ${n}`);
  }
  return names.map((name, i) => ({ fd: LISTEN_FDS_START + i, name }));
}

/** What this process was passed and has not taken yet; undefined until first read. */
let remaining: PassedFd[] | undefined;

/** Reads (once) and removes the LISTEN_* variables; marks every passed descriptor close-on-exec. */
function passed(): PassedFd[] {
  if (remaining) return remaining;
  const env = process.env;
  try {
    remaining = parseListenFds(env, process.pid);
  } finally {
    delete env.LISTEN_PID;
    delete env.LISTEN_FDS;
    delete env.LISTEN_FDNAMES;
  }
  for (const p of remaining) addon().fdSetFlags(p.fd, true, false);
  return remaining;
}

/**
 * Takes the listening socket passed under `name`, checked to be a listening unix stream
 * socket and made non-blocking; undefined when none was passed under that name. With
 * `soleUnnamed`, a single descriptor passed without a name (LISTEN_FDNAMES absent) is taken
 * too: a command that serves one socket needs no name for it. Each socket is taken once.
 */
export function takeListener(name: string, opts: { soleUnnamed?: boolean } = {}): PassedListener | undefined {
  const all = passed();
  let i = all.findIndex((p) => p.name === name);
  if (i < 0 && opts.soleUnnamed && all.length === 1 && all[0]!.name === UNNAMED) i = 0;
  if (i < 0) return undefined;
  const [p] = all.splice(i, 1) as [PassedFd];
  let d: ReturnType<ReturnType<typeof addon>["socketDescribe"]>;
  try {
    d = addon().socketDescribe(p.fd);
  } catch (e) {
    throw new ListenFdsError(`passed socket "${p.name}" (descriptor ${p.fd}): ${(e as Error).message}`);
  }
  if (d.domain !== "unix" || d.type !== "stream" || !d.listening)
    throw new ListenFdsError(
      `passed socket "${p.name}" (descriptor ${p.fd}) is a ${d.listening ? "listening" : "non-listening"} ${d.domain} ${d.type} socket; berth needs a listening unix stream socket (ListenStream=/path)`,
    );
  addon().fdSetFlags(p.fd, true, true);
  return { ...p, path: d.path };
}

/** Passed descriptors nobody has taken (for a warning: a unit passes a socket berth does not serve). */
export function untakenListeners(): readonly PassedFd[] {
  return passed();
}
