// How the main plugins' failures become CNI errors: kernel failures with their spec (or berth)
// code, and the failure of a step that must not stop the steps after it.
import { isNetlinkError } from "../../native/netlink/error.ts";
import { CniError, ErrorCode } from "../protocol/types.ts";

/** berth-specific code (the spec leaves ≥100 to plugins): a bridge cannot take another port. */
export const BRIDGE_FULL = 110;

/** Kernel failures during ADD/DEL: the kernel's words plus what we were doing. */
export function kernelError(what: string, e: unknown): CniError {
  if (e instanceof CniError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  if (isNetlinkError(e, "EXFULL")) {
    return new CniError(BRIDGE_FULL, `${what}: the bridge has reached the kernel's limit of 1023 ports (${msg})`);
  }
  return new CniError(ErrorCode.Internal, `${what}: ${msg}`);
}

export interface Settled {
  /** The step's failure as a spec error, when it failed. */
  error?: CniError;
  /** Its spec code, when it failed with one (a kernel or store failure keeps its own code). */
  code?: number;
  /** Throws the failure, if any. */
  rethrow(): void;
}

/**
 * Runs a step whose failure must not stop the steps after it (DEL's IPAM release before the
 * link teardown, GC's IPAM collection before the links'): the failure is kept, as a CniError,
 * for the caller to report once the rest is done.
 */
export async function settle(step: () => Promise<unknown>): Promise<Settled> {
  try {
    await step();
    return { rethrow() {} };
  } catch (e) {
    const error = e instanceof CniError ? e : new CniError(ErrorCode.Internal, e instanceof Error ? e.message : String(e));
    return {
      error,
      code: error.code,
      rethrow() {
        throw error;
      },
    };
  }
}
