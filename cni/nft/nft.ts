// Thin runner for the nft command: one atomic transaction per call (`nft -f -`), JSON listing.
// berth keeps every rule in its own `inet` table, so it never mixes with iptables rules.
import { execFile } from "node:child_process";

export const DEFAULT_TABLE = "berth";

export class NftError extends Error {
  constructor(
    message: string,
    readonly stderr: string,
  ) {
    super(message);
    this.name = "NftError";
  }
}

function nft(args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile("nft", args, { encoding: "utf8", timeout: 15_000 }, (err, stdout, stderr) => {
      if (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === "ENOENT") reject(new NftError("nft is not installed (apt-get install nftables)", ""));
        else reject(new NftError(`nft ${args.join(" ")}: ${stderr.trim() || err.message}`, stderr));
        return;
      }
      resolve(stdout);
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** Applies a script as one atomic nftables transaction. */
export function nftApply(script: string): Promise<string> {
  return nft(["-f", "-"], script);
}

/** `nft -j <args>` parsed; null when the object does not exist. */
export async function nftList(args: string[]): Promise<Record<string, unknown>[] | null> {
  try {
    const out = await nft(["-j", ...args]);
    return (JSON.parse(out) as { nftables: Record<string, unknown>[] }).nftables;
  } catch (e) {
    if (e instanceof NftError && /No such file or directory|does not exist/.test(e.stderr)) return null;
    throw e;
  }
}

/** Table names must be plain identifiers: they are interpolated into nft scripts. */
export function checkTableName(table: string): string {
  if (!/^[A-Za-z][A-Za-z0-9_]{0,31}$/.test(table)) throw new Error(`invalid nftables table name "${table}"`);
  return table;
}
