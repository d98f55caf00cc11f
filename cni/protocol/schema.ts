// A small declarative validator for a plugin's own config keys. A plugin declares each key
// with its type once and gets back a typed object, or a CniError naming the key and what is
// wrong with it:
//
//   const bridgeSchema = configSchema(
//     { bridge: field.string().default("cni0"), mtu: field.int(68, 65535), hairpinMode: field.boolean(), ... },
//     { exclusive: [["hairpinMode", "promiscMode"]] },
//   );
//   const conf = validateConfig(req.config, bridgeSchema); // conf.mtu: number | undefined
//
// Type and range errors are code 7 (InvalidConfig). Valid values the plugin does not support
// (a value listed in .unsupported(), two keys declared exclusive) are code 2 (UnsupportedField),
// whose message must carry key and value. Keys not declared are allowed (SPEC: plugins MAY reject).
//
// Declared keys are matched as the reference plugins' decoder (Go's encoding/json) matches them,
// see goFields: runtimes depend on it (containerd sends capability arguments with Go field names).
import { cidrFamily, type Family, ipFamily, isMac } from "../address/address.ts";
import { CniError, ErrorCode } from "./types.ts";

/** Thrown for a value with the wrong type or range. */
function invalid(path: string, what: string, got: unknown): never {
  throw new CniError(ErrorCode.InvalidConfig, `invalid config: "${path}" ${what}, got ${show(got)}`);
}

function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

type Check<T> = (v: unknown, path: string) => T;

/** What the configuration reference (docs/configuration.md, scripts/config-reference.ts) says of a key. */
export interface FieldDoc {
  /** The value in words: "boolean", "integer 68-65535", "string: an interface name". */
  type: string;
  /** One line: what the key does. */
  description?: string;
  /** A key berth adds: the reference plugin of the same kind has no such option. */
  extension?: boolean;
  /** A nested object's declared keys. */
  fields?: Shape;
}

/** One declared key: how to check it, whether it must be present, its default. */
export class Field<T, Present extends boolean = false> {
  /** Type-level only: whether the validated object always has this key. */
  declare readonly present: Present;

  constructor(
    readonly check: Check<T>,
    readonly required: boolean = false,
    readonly fallback: T | undefined = undefined,
    readonly unsupportedValues: readonly { value: unknown; reason: string }[] = [],
    readonly doc: FieldDoc = { type: "any JSON value" },
  ) {}

  /** The key must be present (code 7 when missing). */
  require(): Field<T, true> {
    return new Field<T, true>(this.check, true, undefined, this.unsupportedValues, this.doc);
  }

  /** Used when the key is absent; the result type then always has the key. */
  default(value: T): Field<T, true> {
    return new Field<T, true>(this.check, false, value, this.unsupportedValues, this.doc);
  }

  /** A well-formed value the plugin refuses (code 2), e.g. a backend it does not implement. */
  unsupported(value: T, reason: string): Field<T, Present> {
    const unsupported = [...this.unsupportedValues, { value, reason }];
    return new Field<T, Present>(this.check, this.required, this.fallback, unsupported, this.doc);
  }

  /** The key's line in the configuration reference; `extension` marks a key only berth has. */
  describe(description: string, opts: { extension?: boolean } = {}): Field<T, Present> {
    const doc = { ...this.doc, description, ...(opts.extension ? { extension: true } : {}) };
    return new Field<T, Present>(this.check, this.required, this.fallback, this.unsupportedValues, doc);
  }
}

/** An optional key checked by `check`, described as `type` in the configuration reference. */
function typed<T>(type: string, check: Check<T>, fields?: Shape): Field<T> {
  return new Field(check, false, undefined, [], fields ? { type, fields } : { type });
}

export type Shape = Record<string, Field<unknown, boolean>>;
type ValueOf<F> = F extends Field<infer T, boolean> ? T : never;
type PresentKeys<S extends Shape> = { [K in keyof S]: S[K] extends Field<unknown, true> ? K : never }[keyof S];
type OptionalKeys<S extends Shape> = Exclude<keyof S, PresentKeys<S>>;
/** The typed object a schema produces. */
export type Infer<S extends Shape> = Flatten<
  { [K in PresentKeys<S>]: ValueOf<S[K]> } & { [K in OptionalKeys<S>]?: ValueOf<S[K]> }
>;
/** Merges an intersection into one object type, so editors show plain shapes. */
type Flatten<T> = { [K in keyof T]: T[K] } & {};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

// Key matching. The reference plugins decode their config with Go's encoding/json, which puts
// an object key into the struct field of exactly that name, else into the field whose name it
// equals under Unicode simple case folding ("HostPort", "HOSTPORT" and "hoſtPort" all fill
// hostPort). Runtimes rely on that: containerd's CNI library marshals capability arguments
// (portMappings, bandwidth, ipRanges, dns) from structs without JSON tags, so they arrive as
// {"HostPort": 18080, "ContainerPort": 8080, ...}. Every key berth reads from a config object
// is looked up through goFields, so berth accepts exactly what the reference plugins accept.

/**
 * A key folded as Go folds names, for comparison with an ASCII name: ASCII letters upper-cased,
 * and the two non-ASCII letters whose simple case-fold orbit holds an ASCII letter mapped onto
 * it (U+017F LATIN SMALL LETTER LONG S with s, U+212A KELVIN SIGN with k). Any other non-ASCII
 * character folds to something outside ASCII, so it stays and never matches an ASCII name.
 */
export function foldKey(key: string): string {
  let out = "";
  for (const ch of key) {
    const c = ch.charCodeAt(0);
    if (c >= 0x61 && c <= 0x7a) out += String.fromCharCode(c - 0x20);
    else if (c === 0x17f) out += "S";
    else if (c === 0x212a) out += "K";
    else out += ch;
  }
  return out;
}

interface NameIndex {
  exact: Set<string>;
  folded: Map<string, string>;
}

const nameIndexes = new WeakMap<readonly string[], NameIndex>();

function indexOf(names: readonly string[]): NameIndex {
  let index = nameIndexes.get(names);
  if (!index) {
    index = { exact: new Set(names), folded: new Map() };
    for (const name of names) {
      // foldKey is exact only against ASCII names; every config key berth declares is one.
      if (!/^[\x20-\x7e]+$/.test(name)) throw new Error(`config key ${JSON.stringify(name)} is not printable ASCII`);
      const f = foldKey(name);
      // Two declared names that fold alike: Go gives a folded key to the first field declared.
      if (!index.folded.has(f)) index.folded.set(f, name);
    }
    nameIndexes.set(names, index);
  }
  return index;
}

/** Go's decoding of one value into a destination that already holds `prev`: objects merge. */
function decodeOver(prev: unknown, next: unknown): unknown {
  if (!isObject(prev) || !isObject(next)) return next;
  const out: Record<string, unknown> = { ...prev };
  for (const [k, v] of Object.entries(next)) {
    const merged = decodeOver(out[k], v);
    delete out[k]; // re-inserted last: a later key decodes later
    out[k] = merged;
  }
  return out;
}

/**
 * `obj` with its keys matched to `names` as Go's decoder matches object keys to struct fields:
 * a key equal to a name goes to it, else a key equal to a name under simple case folding.
 * Several keys landing on one name are decoded in order into the same field, as Go does: the
 * last wins, a null does not undo an earlier value, and objects merge key by key. Keys matching
 * no name are kept as they are (whatever checks unknown keys sees them unchanged). Returns
 * `obj` itself when every key already has a name's spelling (the usual case).
 *
 * Where this differs from Go, only for keys repeated within one object: a key repeated with
 * the exact same spelling keeps the position of its first occurrence (JSON.parse has already
 * collapsed it; Go sees both in document order); two arrays for one name are not merged
 * element by element (the later one wins); and a later null keeps the earlier value whatever
 * its type (Go keeps scalars and structs but clears a slice, map or pointer, a type this layer
 * does not know).
 */
export function goFields(obj: Readonly<Record<string, unknown>>, names: readonly string[]): Record<string, unknown> {
  const index = indexOf(names);
  let targets: (string | undefined)[] | undefined;
  const keys = Object.keys(obj);
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i]!;
    if (index.exact.has(key)) continue;
    const name = index.folded.get(foldKey(key));
    if (name === undefined) continue;
    targets ??= keys.map((k) => (index.exact.has(k) ? k : undefined));
    targets[i] = name;
  }
  if (!targets) return obj as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  const decoded = new Map<string, unknown>();
  keys.forEach((key, i) => {
    const name = targets[i];
    if (name === undefined) {
      out[key] = obj[key];
      return;
    }
    const v = obj[key];
    if (!decoded.has(name)) decoded.set(name, v);
    else if (v !== null) decoded.set(name, decodeOver(decoded.get(name), v));
  });
  for (const [name, v] of decoded) out[name] = v;
  return out;
}

function familyWord(f?: Family): string {
  return f === undefined ? "" : f === 4 ? "IPv4 " : "IPv6 ";
}

/** Field constructors. */
export const field = {
  string(opts: { oneOf?: readonly string[]; pattern?: RegExp; patternName?: string; nonEmpty?: boolean } = {}): Field<string> {
    return typed(stringType(opts), (v, path) => {
      if (typeof v !== "string") invalid(path, "must be a string", v);
      if (opts.nonEmpty && v === "") invalid(path, "must not be empty", v);
      if (opts.oneOf && !opts.oneOf.includes(v)) invalid(path, `must be one of ${opts.oneOf.map((o) => `"${o}"`).join(", ")}`, v);
      if (opts.pattern && !opts.pattern.test(v))
        invalid(path, `must be ${opts.patternName ?? `a string matching ${opts.pattern}`}`, v);
      return v;
    });
  },

  boolean(): Field<boolean> {
    return typed("boolean", (v, path) => {
      if (typeof v !== "boolean") invalid(path, "must be true or false", v);
      return v;
    });
  },

  int(min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER): Field<number> {
    return typed(rangeType("integer", min, max), (v, path) => {
      if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max)
        invalid(path, rangeText("an integer", min, max), v);
      return v;
    });
  },

  number(min = -Infinity, max = Infinity): Field<number> {
    return typed(rangeType("number", min, max), (v, path) => {
      if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) invalid(path, rangeText("a number", min, max), v);
      return v;
    });
  },

  /** "address/prefix"; the host bits may be set (as in an interface address). */
  cidr(family?: Family): Field<string> {
    return typed(`${familyWord(family)}CIDR`, (v, path) => {
      const f = typeof v === "string" ? cidrFamily(v) : null;
      if (f === null || (family !== undefined && f !== family))
        invalid(path, `must be an ${familyWord(family)}address in CIDR notation`, v);
      return v as string;
    });
  },

  ip(family?: Family): Field<string> {
    return typed(`${familyWord(family)}IP address`, (v, path) => {
      const f = typeof v === "string" ? ipFamily(v) : null;
      if (f === null || (family !== undefined && f !== family)) invalid(path, `must be an ${familyWord(family)}IP address`, v);
      return v as string;
    });
  },

  mac(): Field<string> {
    return typed("MAC address", (v, path) => {
      if (typeof v !== "string" || !isMac(v)) invalid(path, `must be a MAC address like "02:42:ac:11:00:02"`, v);
      return v;
    });
  },

  array<T>(items: Field<T, boolean>, opts: { minItems?: number; maxItems?: number } = {}): Field<T[]> {
    return typed(
      `array of ${items.doc.type}`,
      (v, path) => {
        if (!Array.isArray(v)) invalid(path, "must be an array", v);
        if (opts.minItems !== undefined && v.length < opts.minItems)
          invalid(path, `must have at least ${opts.minItems} item(s)`, v);
        if (opts.maxItems !== undefined && v.length > opts.maxItems)
          invalid(path, `must have at most ${opts.maxItems} item(s)`, v);
        return v.map((item, i) => checkValue(items, item, `${path}[${i}]`));
      },
      items.doc.fields,
    );
  },

  /** A nested object with its own declared keys (undeclared ones are dropped from the result). */
  object<S extends Shape>(shape: S): Field<Infer<S>> {
    return typed(
      "object",
      (v, path) => {
        if (!isObject(v)) invalid(path, "must be an object", v);
        return checkShape(shape, v, `${path}.`);
      },
      shape,
    );
  },

  /** Any JSON object, unchecked inside (for pass-through sections such as a delegate's config). */
  anyObject(): Field<Record<string, unknown>> {
    return typed("object", (v, path) => {
      if (!isObject(v)) invalid(path, "must be an object", v);
      return v;
    });
  },
};

function stringType(opts: { oneOf?: readonly string[]; pattern?: RegExp; patternName?: string; nonEmpty?: boolean }): string {
  if (opts.oneOf) return `one of ${opts.oneOf.map((o) => `"${o}"`).join(", ")}`;
  if (opts.pattern) return `string: ${opts.patternName ?? `matching ${opts.pattern}`}`;
  return opts.nonEmpty ? "non-empty string" : "string";
}

/** "integer 68-65535", "integer ≥ 0", or the bare noun. */
function rangeType(noun: string, min: number, max: number): string {
  const lo = Number.isFinite(min) && min > Number.MIN_SAFE_INTEGER;
  const hi = Number.isFinite(max) && max < Number.MAX_SAFE_INTEGER;
  if (lo && hi) return `${noun} ${min}-${max}`;
  if (lo) return `${noun} ≥ ${min}`;
  if (hi) return `${noun} ≤ ${max}`;
  return noun;
}

function rangeText(noun: string, min: number, max: number): string {
  const lo = Number.isFinite(min) && min > Number.MIN_SAFE_INTEGER;
  const hi = Number.isFinite(max) && max < Number.MAX_SAFE_INTEGER;
  if (lo && hi) return `must be ${noun} between ${min} and ${max}`;
  if (lo) return `must be ${noun} ≥ ${min}`;
  if (hi) return `must be ${noun} ≤ ${max}`;
  return `must be ${noun}`;
}

function checkValue<T>(f: Field<T, boolean>, v: unknown, path: string): T {
  const value = f.check(v, path);
  for (const u of f.unsupportedValues) {
    if (u.value === value) {
      throw new CniError(
        ErrorCode.UnsupportedField,
        `unsupported field: "${path}": ${show(value)} is not supported (${u.reason})`,
      );
    }
  }
  return value;
}

const shapeNames = new WeakMap<Shape, readonly string[]>();

/** The object's keys matched to the shape's declared names (see goFields). */
function shapeFields(shape: Shape, obj: Readonly<Record<string, unknown>>): Record<string, unknown> {
  let names = shapeNames.get(shape);
  if (!names) {
    names = Object.keys(shape);
    shapeNames.set(shape, names);
  }
  return goFields(obj, names);
}

function checkShape<S extends Shape>(shape: S, raw: Record<string, unknown>, prefix: string): Infer<S> {
  const obj = shapeFields(shape, raw);
  const out: Record<string, unknown> = {};
  for (const [key, f] of Object.entries(shape)) {
    const path = `${prefix}${key}`;
    const v = obj[key];
    // JSON null reads as absent, as Go's decoder (and so every other plugin) treats it.
    if (v === undefined || v === null) {
      if (f.required) throw new CniError(ErrorCode.InvalidConfig, `invalid config: "${path}" is required`);
      if (f.fallback !== undefined) out[key] = f.fallback;
      continue;
    }
    out[key] = checkValue(f, v, path);
  }
  return out as Infer<S>;
}

export interface SchemaRules<S extends Shape> {
  /** Pairs of keys that must not both be set (present and not false). */
  exclusive?: readonly (readonly [keyof S & string, keyof S & string])[];
}

export interface ConfigSchema<S extends Shape> {
  fields: S;
  rules: SchemaRules<S>;
}

export function configSchema<S extends Shape>(fields: S, rules: SchemaRules<S> = {}): ConfigSchema<S> {
  return { fields, rules };
}

/** Checks a plugin's declared keys in `config` and returns them typed (defaults applied). */
export function validateConfig<S extends Shape>(config: Readonly<Record<string, unknown>>, schema: ConfigSchema<S>): Infer<S> {
  const out = checkShape(schema.fields, config, "");
  const values = out as Record<string, unknown>;
  const given = shapeFields(schema.fields, config);
  const isSet = (k: string) => given[k] !== undefined && given[k] !== null && given[k] !== false;
  for (const [a, b] of schema.rules.exclusive ?? []) {
    if (isSet(a) && isSet(b)) {
      throw new CniError(
        ErrorCode.UnsupportedField,
        `unsupported field: "${b}": ${show(values[b])} cannot be combined with "${a}": ${show(values[a])}`,
      );
    }
  }
  return out;
}
