// CSI errors are gRPC statuses: the code the spec mandates and a message that names the
// offending field or value. Anything else thrown inside a handler becomes INTERNAL.
import { status } from "@grpc/grpc-js";

export class CsiError extends Error {
  constructor(
    readonly code: status,
    message: string,
  ) {
    super(message);
    this.name = "CsiError";
  }
}

export const invalidArgument = (msg: string) => new CsiError(status.INVALID_ARGUMENT, msg);
export const notFound = (msg: string) => new CsiError(status.NOT_FOUND, msg);
export const alreadyExists = (msg: string) => new CsiError(status.ALREADY_EXISTS, msg);
export const failedPrecondition = (msg: string) => new CsiError(status.FAILED_PRECONDITION, msg);
export const aborted = (msg: string) => new CsiError(status.ABORTED, msg);
export const outOfRange = (msg: string) => new CsiError(status.OUT_OF_RANGE, msg);
export const resourceExhausted = (msg: string) => new CsiError(status.RESOURCE_EXHAUSTED, msg);
export const unimplemented = (msg: string) => new CsiError(status.UNIMPLEMENTED, msg);
export const internal = (msg: string) => new CsiError(status.INTERNAL, msg);

/** A bad option or a host that cannot serve as configured: the command exits 2 with its message. */
export class ConfigError extends Error {
  override name = "ConfigError";
}
