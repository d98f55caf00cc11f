// NetlinkError: what a failed kernel request looks like to callers — the errno name,
// the operation in words, and the kernel's own extended-ack text when it gave one.

// Linux errno numbers → [name, strerror text]. Node's os.constants.errno lacks several
// that rtnetlink returns (EXFULL from a full bridge, for one).
const ERRNO: Record<number, [string, string]> = {
  1: ["EPERM", "Operation not permitted"],
  2: ["ENOENT", "No such file or directory"],
  3: ["ESRCH", "No such process"],
  4: ["EINTR", "Interrupted system call"],
  5: ["EIO", "Input/output error"],
  6: ["ENXIO", "No such device or address"],
  7: ["E2BIG", "Argument list too long"],
  9: ["EBADF", "Bad file descriptor"],
  11: ["EAGAIN", "Resource temporarily unavailable"],
  12: ["ENOMEM", "Cannot allocate memory"],
  13: ["EACCES", "Permission denied"],
  16: ["EBUSY", "Device or resource busy"],
  17: ["EEXIST", "File exists"],
  18: ["EXDEV", "Invalid cross-device link"],
  19: ["ENODEV", "No such device"],
  20: ["ENOTDIR", "Not a directory"],
  22: ["EINVAL", "Invalid argument"],
  23: ["ENFILE", "Too many open files in system"],
  24: ["EMFILE", "Too many open files"],
  28: ["ENOSPC", "No space left on device"],
  34: ["ERANGE", "Numerical result out of range"],
  40: ["ELOOP", "Too many levels of symbolic links"],
  54: ["EXFULL", "Exchange full"],
  61: ["ENODATA", "No data available"],
  71: ["EPROTO", "Protocol error"],
  90: ["EMSGSIZE", "Message too long"],
  93: ["EPROTONOSUPPORT", "Protocol not supported"],
  95: ["EOPNOTSUPP", "Operation not supported"],
  97: ["EAFNOSUPPORT", "Address family not supported by protocol"],
  98: ["EADDRINUSE", "Address already in use"],
  99: ["EADDRNOTAVAIL", "Cannot assign requested address"],
  100: ["ENETDOWN", "Network is down"],
  101: ["ENETUNREACH", "Network is unreachable"],
  105: ["ENOBUFS", "No buffer space available"],
  110: ["ETIMEDOUT", "Connection timed out"],
  113: ["EHOSTUNREACH", "No route to host"],
  114: ["EALREADY", "Operation already in progress"],
  122: ["EDQUOT", "Disk quota exceeded"],
};

export function errnoName(errno: number): string {
  return ERRNO[errno]?.[0] ?? `E${errno}`;
}

export function errnoMessage(errno: number): string {
  return ERRNO[errno]?.[1] ?? `error ${errno}`;
}

const NAME_TO_ERRNO = new Map(Object.entries(ERRNO).map(([n, [name]]) => [name, Number(n)]));

export function errnoNumber(name: string): number {
  return NAME_TO_ERRNO.get(name) ?? 0;
}

/**
 * A kernel request that failed, or input that could not be turned into one.
 * `message` reads like "link add vx1: VXLAN ID must be lower than 16777216 (ERANGE)".
 */
export class NetlinkError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly op: string;
  readonly kernelMessage?: string;

  constructor(op: string, errno: number, kernelMessage?: string, detail?: string) {
    const code = errnoName(errno);
    super(`${op}: ${kernelMessage ?? detail ?? errnoMessage(errno)} (${code})`);
    this.name = "NetlinkError";
    this.code = code;
    this.errno = errno;
    this.op = op;
    if (kernelMessage !== undefined) this.kernelMessage = kernelMessage;
  }
}

export function isNetlinkError(e: unknown, code?: string): e is NetlinkError {
  return e instanceof NetlinkError && (code === undefined || e.code === code);
}
