/** The ip-address package, loaded on the first call. */
export declare function ipAddress(): typeof import("ip-address");
