// The stop-signal wait every long-running berth command ends its start-up with.

export type StopSignal = "SIGINT" | "SIGTERM";

/**
 * Resolves with the first SIGINT or SIGTERM the process receives. Both handlers are removed
 * then, so a second signal during shutdown gets Node's default (the process ends).
 */
export function waitForStopSignal(): Promise<StopSignal> {
  return new Promise((resolve) => {
    const on = (signal: StopSignal) => () => {
      process.off("SIGINT", onInt);
      process.off("SIGTERM", onTerm);
      resolve(signal);
    };
    const onInt = on("SIGINT");
    const onTerm = on("SIGTERM");
    process.once("SIGINT", onInt);
    process.once("SIGTERM", onTerm);
  });
}
