// The IPAM lease database read back as any program would: the SQLite file, opened read-only,
// never through the plugin's own store.
import { existsSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";

/** Leases of `network`, read straight from the SQLite file in `dataDir`. */
export function leaseRows(dataDir: string, network: string): { ip: string; container_id: string }[] {
  const file = join(dataDir, "ipam.db");
  if (!existsSync(file)) return [];
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare("SELECT ip, container_id FROM leases WHERE network = ? ORDER BY ip").all(network) as {
      ip: string;
      container_id: string;
    }[];
  } finally {
    db.close();
  }
}
