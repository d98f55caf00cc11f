// The agent's Prometheus metrics, on a registry of its own (several agents may share a process in tests).
import { Counter, Gauge, Histogram, Registry } from "prom-client";

export class AgentMetrics {
  readonly registry = new Registry();
  readonly leaseHeld = new Gauge({
    name: "berth_overlay_lease_held",
    help: "1 while this host holds its subnet lease",
    registers: [this.registry],
  });
  readonly storeUp = new Gauge({
    name: "berth_overlay_store_up",
    help: "1 while the cluster store answers",
    registers: [this.registry],
  });
  readonly peers = new Gauge({
    name: "berth_overlay_peers",
    help: "Remote hosts known from the store",
    registers: [this.registry],
  });
  /** What /readyz answers now; berth_overlay_ready is read from it at every scrape. */
  readyNow: () => boolean = () => false;
  readonly ready: Gauge = new Gauge({
    name: "berth_overlay_ready",
    help: "1 while /readyz answers 200",
    registers: [this.registry],
    collect: (): void => this.ready.set(this.readyNow() ? 1 : 0),
  });
  readonly storeResets = new Counter({
    name: "berth_overlay_store_resets_total",
    help: "Times the cluster store came back without its history (wiped or replaced)",
    registers: [this.registry],
  });
  readonly reconcileRuns = new Counter({
    name: "berth_overlay_reconcile_runs_total",
    help: "Reconcile runs, by outcome",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });
  readonly reconcileOps = new Counter({
    name: "berth_overlay_reconcile_operations_total",
    help: "Kernel operations applied by the reconciler; reason=drift counts repairs of state someone else changed",
    labelNames: ["op", "reason"] as const,
    registers: [this.registry],
  });
  readonly deviceRecreations = new Counter({
    name: "berth_overlay_device_recreations_total",
    help: "Times the VXLAN device had to be created again",
    registers: [this.registry],
  });
  readonly storeErrors = new Counter({
    name: "berth_overlay_store_errors_total",
    help: "Failed cluster store operations",
    labelNames: ["op"] as const,
    registers: [this.registry],
  });
  readonly watchResets = new Counter({
    name: "berth_overlay_watch_resets_total",
    help: "Watches ended by compaction or a lost connection (followed by a re-list)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly operationSeconds = new Histogram({
    name: "berth_overlay_operation_duration_seconds",
    help: "Latency of store operations and reconcile runs",
    labelNames: ["op"] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });

  /** Times `fn` under `op`, counting a store error when it throws. */
  async time<T>(op: string, fn: () => Promise<T>, countErrors = true): Promise<T> {
    const end = this.operationSeconds.startTimer({ op });
    try {
      return await fn();
    } catch (e) {
      if (countErrors) this.storeErrors.inc({ op });
      throw e;
    } finally {
      end();
    }
  }
}
