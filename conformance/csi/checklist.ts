// The suite's bookkeeping: each spec rule is checked once and reported as one line
// (PASS / FAIL … : why / SKIP … : why) with its [MUST] or [SHOULD] mark.
import { CsiCallError, type StatusName } from "./client.ts";

export type Level = "MUST" | "SHOULD";
export type Verdict = "PASS" | "FAIL" | "SKIP";

export interface Rule {
  /** stable id, `area.rule`, matched by --only */
  id: string;
  level: Level;
  /** what the rule says, in a few words */
  title: string;
}

export interface Outcome extends Rule {
  verdict: Verdict;
  reason?: string;
}

/** Thrown by a check to fail with a reason. */
export class RuleFailure extends Error {}
/** Thrown by a check to skip itself (a capability it needs is not advertised). */
export class RuleSkipped extends Error {}
/**
 * Thrown out of `Checklist.check` when a check failed: the scenario that needed its result
 * stops there (the failure has already been reported).
 */
export class ScenarioBlocked extends Error {}

export function fail(reason: string): never {
  throw new RuleFailure(reason);
}

export function skip(reason: string): never {
  throw new RuleSkipped(reason);
}

export function describeError(e: unknown): string {
  if (e instanceof CsiCallError) return `${e.code}${e.statusMessage ? ` "${e.statusMessage}"` : ""}`;
  return e instanceof Error ? e.message : String(e);
}

/**
 * Runs `call` and requires it to fail with one of `codes`. `onUnexpectedSuccess` lets the caller
 * record anything the call created by mistake, so cleanup still removes it.
 */
export async function expectCode<T>(
  call: Promise<T>,
  codes: StatusName | StatusName[],
  onUnexpectedSuccess?: (res: T) => void,
): Promise<void> {
  const want = Array.isArray(codes) ? codes : [codes];
  let res: T;
  try {
    res = await call;
  } catch (e) {
    if (e instanceof CsiCallError) {
      if (want.includes(e.code)) return;
      fail(`got ${describeError(e)}, want ${want.join(" or ")}`);
    }
    throw e;
  }
  onUnexpectedSuccess?.(res);
  fail(`succeeded, want ${want.join(" or ")}`);
}

/** Runs `call` and requires it to succeed; a gRPC error becomes a failure naming the code. */
export async function expectOk<T>(call: Promise<T>, what: string): Promise<T> {
  try {
    return await call;
  } catch (e) {
    fail(`${what} failed: ${describeError(e)}`);
  }
}

export class Checklist {
  readonly outcomes: Outcome[] = [];

  constructor(
    private readonly only: RegExp | undefined,
    private readonly print: (line: string) => void,
  ) {}

  selected(id: string): boolean {
    return !this.only || this.only.test(id);
  }

  /**
   * Checks one rule. Returns what `fn` returned; when the rule failed, throws ScenarioBlocked so
   * the scenario stops (later steps usually depend on this one). A rule outside --only still
   * runs when its scenario needs it, but is reported only if it fails.
   */
  async check<T>(rule: Rule, fn: () => Promise<T>): Promise<T> {
    try {
      const value = await fn();
      if (this.selected(rule.id)) this.record(rule, "PASS");
      return value;
    } catch (e) {
      if (e instanceof RuleSkipped) {
        if (this.selected(rule.id)) this.record(rule, "SKIP", e.message);
        throw new ScenarioBlocked(rule.id);
      }
      if (e instanceof ScenarioBlocked) throw e;
      const reason = e instanceof RuleFailure ? e.message : `unexpected error: ${describeError(e)}`;
      this.record(rule, "FAIL", this.selected(rule.id) ? reason : `${reason} (prerequisite of a selected rule)`);
      throw new ScenarioBlocked(rule.id);
    }
  }

  /** Like `check`, but a failure does not stop the scenario. */
  async soft(rule: Rule, fn: () => Promise<unknown>): Promise<boolean> {
    try {
      await this.check(rule, fn);
      return true;
    } catch (e) {
      if (e instanceof ScenarioBlocked) return false;
      throw e;
    }
  }

  /** Reports a rule as skipped without running anything. */
  skipRule(rule: Rule, reason: string): void {
    if (this.selected(rule.id)) this.record(rule, "SKIP", reason);
  }

  private record(rule: Rule, verdict: Verdict, reason?: string): void {
    const outcome: Outcome = { ...rule, verdict, reason };
    this.outcomes.push(outcome);
    this.print(formatOutcome(outcome));
  }

  count(verdict: Verdict): number {
    return this.outcomes.filter((o) => o.verdict === verdict).length;
  }

  /** The last line of the report: `N passed, N failed, N skipped`. */
  summary(): string {
    return `${this.count("PASS")} passed, ${this.count("FAIL")} failed, ${this.count("SKIP")} skipped`;
  }
}

export function formatOutcome(o: Outcome): string {
  const head = `${o.verdict} [${o.level}] ${o.id} — ${o.title}`;
  return o.reason ? `${head} : ${o.reason}` : head;
}
