// Thin runner for the nft command: one atomic transaction per call (`nft -f -`), JSON listing.
// berth keeps every rule in its own `inet` table, so it never mixes with iptables rules.

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

async function nft(args: string[], input?: string): Promise<string> {
  // Loaded on first use: node:child_process (and the node:net it pulls in) costs a cold plugin
  // process milliseconds that a call without nftables work should not pay.
  const { execFile } = await import("node:child_process");
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

/** One element of a set or map as `nft` prints it: key and value in nft syntax ("tcp . 8080"). */
export interface NftElement {
  /** The set or map holding it. */
  set: string;
  key: string;
  /** A map's value ("10.1.0.2 . 80", "jump c"); undefined in a set. */
  value?: string;
  comment: string;
}

function renderExpr(v: unknown): string {
  if (typeof v === "string" || typeof v === "number") return String(v);
  if (typeof v === "object" && v !== null) {
    const o = v as Record<string, unknown>;
    if (Array.isArray(o.concat)) return o.concat.map(renderExpr).join(" . ");
    if (o.prefix && typeof o.prefix === "object") {
      const p = o.prefix as { addr: unknown; len: number };
      return `${renderExpr(p.addr)}/${p.len}`;
    }
    for (const verdict of ["jump", "goto"]) {
      const t = o[verdict] as { target?: string } | undefined;
      if (t?.target) return `${verdict} ${t.target}`;
    }
    if ("accept" in o || "drop" in o || "return" in o || "continue" in o) return Object.keys(o)[0]!;
  }
  return JSON.stringify(v);
}

/** Every element of every set and map in a table, from one listing; null when the table does not exist. */
export async function nftElements(family: "inet" | "bridge" | "ip" | "ip6", table: string): Promise<NftElement[] | null> {
  checkTableName(table);
  const objs = await nftList(["list", "table", family, table]);
  if (objs === null) return null;
  const out: NftElement[] = [];
  for (const o of objs) {
    const s = (o.set ?? o.map) as { name: string; elem?: unknown[] } | undefined;
    if (!s) continue;
    const isMap = "map" in o;
    for (const raw of s.elem ?? []) {
      const [k, v] = isMap ? (raw as [unknown, unknown]) : [raw, undefined];
      // A key with a comment is wrapped as {elem: {val, comment}}.
      const wrapped =
        typeof k === "object" && k !== null && "elem" in k ? (k as { elem: { val: unknown; comment?: string } }).elem : null;
      out.push({
        set: s.name,
        key: renderExpr(wrapped ? wrapped.val : k),
        value: isMap ? renderExpr(v) : undefined,
        comment: wrapped?.comment ?? "",
      });
    }
  }
  return out;
}
