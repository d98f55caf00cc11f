// Waiting in tests without fixed sleeps: poll until a condition holds, and ask an agent's
// HTTP API over its unix socket.
import { request } from "node:http";

/**
 * Calls `probe` every `intervalMs` until `ok` accepts its value, which it returns. A probe that
 * throws counts as not yet; after `timeoutMs` it fails naming `what` and the last value seen.
 */
export async function until<T>(
  probe: () => T | Promise<T>,
  ok: (v: T) => boolean,
  what: string,
  timeoutMs = 15_000,
  intervalMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (ok(v)) return v;
      last = v;
    } catch (e) {
      last = e instanceof Error ? e.message : String(e);
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** One HTTP request over a unix socket. */
export function httpOverUnix(
  socketPath: string,
  path: string,
  options: { method?: string; body?: string; timeoutMs?: number } = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { socketPath, path, method: options.method ?? "GET", headers: { "content-type": "application/json" } },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d) => {
          body += d;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.setTimeout(options.timeoutMs ?? 5000, () => req.destroy(new Error(`${path}: timed out`)));
    req.on("error", reject);
    req.end(options.body);
  });
}
