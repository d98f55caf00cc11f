// berth-specific IPAM error codes (the spec leaves codes ≥100 to plugins). Kept apart from
// the store so berth-static does not load SQLite just to name a code.
export const IpamErrorCode = {
  /** No free address left in a range set. STATUS reports such a network as 50. */
  PoolExhausted: 100,
  /** A requested address is leased to someone else, or the attachment already holds another. */
  AddressInUse: 101,
  /** CHECK found the attachment's addresses missing or different from prevResult. */
  CheckFailed: 102,
} as const;
