// The logger every berth command uses: pino, writing either its JSON lines (for journald, log
// collectors and scripts) or one readable line per record for a person at a terminal:
//
//   14:03:07.412 INFO  berth-agent  lease held subnet=10.244.3.0/24 ttl=86400
//
// The format is `--log-format json|text` when given, else text when the log's descriptor is a
// terminal and JSON when it is not.

import { isatty } from "node:tty";
import pino, { type DestinationStream, type Logger } from "pino";

export type LogFormat = "json" | "text";
export const LOG_FORMATS: readonly LogFormat[] = ["json", "text"];
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

export class LogFormatError extends Error {
  override name = "LogFormatError";
}

/** The format a flag value names; without one, text on a terminal and JSON otherwise. */
export function resolveLogFormat(flag: string | undefined, fd = 2): LogFormat {
  if (flag === undefined) return isatty(fd) ? "text" : "json";
  if (!(LOG_FORMATS as readonly string[]).includes(flag)) {
    throw new LogFormatError(`--log-format: expected json or text, got ${JSON.stringify(flag)}`);
  }
  return flag as LogFormat;
}

export interface LoggerOptions {
  /** What the records say they come from: berth-agent, berth-csi, ... */
  component: string;
  /** pino level; default $BERTH_LOG_LEVEL, else info. */
  level?: string;
  /** Default: resolveLogFormat(undefined, fd). */
  format?: LogFormat;
  /** Where the lines go (default 2, stderr). */
  fd?: number;
}

/** A pino logger for a berth command, writing synchronously to `fd` in the chosen format. */
export function createLogger(options: LoggerOptions): Logger {
  const fd = options.fd ?? 2;
  const format = options.format ?? resolveLogFormat(undefined, fd);
  const level = options.level ?? process.env.BERTH_LOG_LEVEL ?? "info";
  const destination = format === "text" ? textDestination(fd) : pino.destination({ fd, sync: true });
  return pino({ level, base: { component: options.component } }, destination);
}

const LEVEL_NAMES: Record<number, string> = { 10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL" };
const LEVEL_COLOURS: Record<number, string> = { 40: "\x1b[33m", 50: "\x1b[31m", 60: "\x1b[31m" };
/** Fields every record has, shown in the line's fixed columns or not at all. */
const FIXED = new Set(["level", "time", "msg", "component", "name", "pid", "hostname", "v"]);

/** A pino destination that writes each record as one readable line (formatLogRecord). */
export function textDestination(fd = 2): DestinationStream {
  const colour = isatty(fd) && !process.env.NO_COLOR;
  // pino's own synchronous writer: it retries partial writes and EAGAIN on a non-blocking fd.
  const sink = pino.destination({ fd, sync: true });
  return {
    write(chunk: string): void {
      let out = "";
      for (const line of chunk.split("\n")) {
        if (!line) continue;
        let record: unknown;
        try {
          record = JSON.parse(line);
        } catch {
          out += `${line}\n`;
          continue;
        }
        out += `${formatLogRecord(record as Record<string, unknown>, colour)}\n`;
      }
      if (out) sink.write(out);
    },
  };
}

/** One pino record as `HH:MM:SS.mmm LEVEL component message key=value ...` (local time). */
export function formatLogRecord(record: Record<string, unknown>, colour = false): string {
  const time = typeof record.time === "number" ? clock(new Date(record.time)) : "--:--:--.---";
  const levelNumber = typeof record.level === "number" ? record.level : 30;
  let level = (LEVEL_NAMES[levelNumber] ?? String(record.level)).padEnd(5);
  if (colour && LEVEL_COLOURS[levelNumber]) level = `${LEVEL_COLOURS[levelNumber]}${level}\x1b[0m`;
  const component = String(record.component ?? record.name ?? "berth");
  const parts = [time, level, component];
  if (record.msg !== undefined && record.msg !== "") parts.push(String(record.msg));
  for (const [key, value] of Object.entries(record)) {
    if (FIXED.has(key) || value === undefined) continue;
    parts.push(`${key}=${formatValue(key, value)}`);
  }
  return parts.join(" ");
}

function clock(d: Date): string {
  const two = (n: number) => String(n).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

function formatValue(key: string, value: unknown): string {
  // pino's err serializer gives {type, message, stack}: the message is what a person needs.
  if ((key === "err" || key === "error") && value && typeof value === "object" && "message" in value) {
    return quote(String((value as { message: unknown }).message));
  }
  if (typeof value === "string") return quote(value);
  if (typeof value === "number" || typeof value === "boolean" || value === null) return String(value);
  return JSON.stringify(value);
}

/** A string bare when it has no space, quote, equals sign or control character; else JSON-quoted. */
function quote(s: string): string {
  return s !== "" && !/[\s"=\\\x00-\x1f\x7f]/.test(s) ? s : JSON.stringify(s);
}
