/*
 * berth fast-path wire protocol, version 1 (mirrored in cni/fastpath/wire.ts, and written
 * from this layout by the black-box suites in conformance/fastpath/wire.ts).
 *
 * One request and one response per connection on a unix stream socket. Every frame:
 *
 *   offset 0  magic    4 bytes  "BCNI"
 *          4  version  u16 LE   1
 *          6  kind     u16 LE   1 = invocation request, 2 = invocation response
 *          8  length   u32 LE   body bytes that follow
 *
 * Request body:   u32 type length, type bytes (e.g. "berth-bridge")
 *                 u32 env count, then per entry: u32 length, "KEY=VALUE" bytes
 *                 u32 stdin length, stdin bytes
 * Response body:  i32 exit code
 *                 u32 stdout length, stdout bytes
 *                 u32 stderr length, stderr bytes
 *
 * All integers little-endian. The server may answer before it has read the whole request
 * (refused peer, oversized frame) and then closes the connection.
 */
#ifndef BERTH_FASTPATH_WIRE_H
#define BERTH_FASTPATH_WIRE_H

#define BCNI_MAGIC "BCNI"
#define BCNI_VERSION 1
#define BCNI_KIND_REQUEST 1
#define BCNI_KIND_RESPONSE 2
#define BCNI_HEADER_BYTES 12
/* Upper bound for a response body: results are small; this only stops a runaway peer. */
#define BCNI_MAX_RESPONSE_BYTES (16u * 1024u * 1024u)

#endif
