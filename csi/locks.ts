// Per-volume (and per-name) in-flight guard: the spec lets a plugin answer ABORTED when an
// operation on the same volume is already running, and the CO backs off and retries.
import { aborted } from "./errors.ts";

export class InFlight {
  private readonly held = new Set<string>();

  /** Takes every key or none; throws ABORTED naming the busy key. */
  acquire(keys: string[]): () => void {
    const unique = [...new Set(keys.filter((k) => k))];
    for (const k of unique) if (this.held.has(k)) throw aborted(`an operation on ${k} is already in progress`);
    for (const k of unique) this.held.add(k);
    return () => {
      for (const k of unique) this.held.delete(k);
    };
  }

  async with<T>(keys: string[], fn: () => Promise<T>): Promise<T> {
    const release = this.acquire(keys);
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
