// Controller service: CreateVolume, DeleteVolume, ValidateVolumeCapabilities, ControllerGetVolume,
// ListVolumes, GetCapacity, ControllerExpandVolume (spec S11–S18, S20).

import { expectCode, expectOk, fail, skip } from "./checklist.ts";
import type { Volume, VolumeCapability } from "./client.ts";
import { MiB, rule, type SuiteContext } from "./context.ts";

export async function createDeleteRules(ctx: SuiteContext): Promise<void> {
  const { t, client, ledger, settings } = ctx;
  if (!ctx.caps.controller.has("CREATE_DELETE_VOLUME")) {
    t.skipRule(rule("create.ok", "MUST", "CreateVolume provisions a volume"), "CREATE_DELETE_VOLUME not advertised");
    return;
  }
  const size = settings.volumeBytes;
  const base = () => ({
    name: ctx.name("arg"),
    capacity_range: { required_bytes: size },
    volume_capabilities: [ctx.capability()],
    parameters: settings.params,
  });
  const track = (res: { volume?: Volume }) => res.volume?.volume_id && ledger.addVolume(res.volume.volume_id);
  const create = (req: object) => client.call<{ volume: Volume }>("Controller", "CreateVolume", req);

  await t.soft(rule("create.missing-name", "MUST", "CreateVolume without name → INVALID_ARGUMENT"), () =>
    expectCode(create({ ...base(), name: "" }), "INVALID_ARGUMENT", track),
  );
  await t.soft(rule("create.missing-capabilities", "MUST", "CreateVolume without capabilities → INVALID_ARGUMENT"), () =>
    expectCode(create({ ...base(), volume_capabilities: [] }), "INVALID_ARGUMENT", track),
  );
  await t.soft(rule("create.missing-access-type", "MUST", "capability without block/mount → INVALID_ARGUMENT"), () =>
    expectCode(
      create({ ...base(), volume_capabilities: [{ access_mode: { mode: "SINGLE_NODE_WRITER" } }] }),
      "INVALID_ARGUMENT",
      track,
    ),
  );
  await t.soft(rule("create.missing-access-mode", "MUST", "capability without access_mode → INVALID_ARGUMENT"), () => {
    const cap = { ...ctx.capability(), access_mode: null };
    return expectCode(create({ ...base(), volume_capabilities: [cap] }), "INVALID_ARGUMENT", track);
  });
  await t.soft(rule("create.negative-capacity", "MUST", "negative required_bytes → INVALID_ARGUMENT"), () =>
    expectCode(create({ ...base(), capacity_range: { required_bytes: -MiB } }), ["INVALID_ARGUMENT", "OUT_OF_RANGE"], track),
  );
  await t.soft(rule("create.range-inverted", "MUST", "required_bytes > limit_bytes → OUT_OF_RANGE"), () =>
    expectCode(create({ ...base(), capacity_range: { required_bytes: 2 * size, limit_bytes: size } }), "OUT_OF_RANGE", track),
  );
  await t.soft(rule("create.too-large", "SHOULD", "1 EiB volume → OUT_OF_RANGE or RESOURCE_EXHAUSTED"), () =>
    expectCode(create({ ...base(), capacity_range: { required_bytes: 2 ** 60 } }), ["OUT_OF_RANGE", "RESOURCE_EXHAUSTED"], track),
  );

  const name = ctx.name("vol");
  const vol = await t.check(
    rule("create.ok", "MUST", "CreateVolume returns an id and at least the required capacity"),
    async () => {
      const v = await expectOk(ctx.createVolume(name), "CreateVolume");
      if (!v?.volume_id) fail("no volume_id in the reply");
      if (v.capacity_bytes !== 0 && v.capacity_bytes < size) fail(`capacity_bytes ${v.capacity_bytes} < required ${size}`);
      return v;
    },
  );
  await t.soft(rule("create.idempotent", "MUST", "same name and arguments → same volume"), async () => {
    const again = await expectOk(ctx.createVolume(name), "second CreateVolume");
    if (again.volume_id !== vol.volume_id) fail(`second call gave ${again.volume_id}, first ${vol.volume_id}`);
    if (again.capacity_bytes !== vol.capacity_bytes) fail(`capacity ${again.capacity_bytes} vs ${vol.capacity_bytes}`);
    if (JSON.stringify(again.volume_context) !== JSON.stringify(vol.volume_context))
      fail(`volume_context changed: ${JSON.stringify(vol.volume_context)} → ${JSON.stringify(again.volume_context)}`);
  });
  await t.soft(rule("create.name-conflict", "MUST", "same name, other capacity → ALREADY_EXISTS"), () =>
    expectCode(ctx.createVolume(name, { capacity_range: { required_bytes: size * 2, limit_bytes: size * 2 } }), "ALREADY_EXISTS"),
  );
  await t.soft(rule("create.exact-capacity", "MUST", "required = limit → exactly that capacity"), async () => {
    const exact = size + MiB;
    const v = await expectOk(
      ctx.createVolume(ctx.name("exact"), { capacity_range: { required_bytes: exact, limit_bytes: exact } }),
      "CreateVolume",
    );
    if (v.capacity_bytes !== exact) fail(`capacity_bytes ${v.capacity_bytes}, want ${exact}`);
    await ctx.deleteVolume(v.volume_id);
  });
  await t.soft(rule("create.unknown-snapshot-source", "MUST", "restore from a missing snapshot → NOT_FOUND"), async () => {
    if (!ctx.caps.controller.has("CREATE_DELETE_SNAPSHOT")) skip("CREATE_DELETE_SNAPSHOT not advertised");
    await expectCode(
      ctx.createVolume(ctx.name("nosnap"), { volume_content_source: { snapshot: { snapshot_id: `${ctx.tag}-missing` } } }),
      "NOT_FOUND",
    );
  });
  await t.soft(rule("create.unknown-volume-source", "MUST", "clone of a missing volume → NOT_FOUND"), async () => {
    if (!ctx.caps.controller.has("CLONE_VOLUME")) skip("CLONE_VOLUME not advertised");
    await expectCode(
      ctx.createVolume(ctx.name("noclone"), { volume_content_source: { volume: { volume_id: `${ctx.tag}-missing` } } }),
      "NOT_FOUND",
    );
  });
  await t.soft(rule("create.clone", "MUST", "clone of an existing volume (CLONE_VOLUME)"), async () => {
    if (!ctx.caps.controller.has("CLONE_VOLUME")) skip("CLONE_VOLUME not advertised");
    const c = await expectOk(
      ctx.createVolume(ctx.name("clone"), { volume_content_source: { volume: { volume_id: vol.volume_id } } }),
      "CreateVolume from a volume",
    );
    if (c.volume_id === vol.volume_id) fail("the clone has the source's id");
    await ctx.deleteVolume(c.volume_id);
  });

  // ValidateVolumeCapabilities is required of every controller (S15).
  const validate = (req: object) =>
    client.call<{ confirmed: { volume_capabilities: unknown[] } | null; message: string }>(
      "Controller",
      "ValidateVolumeCapabilities",
      req,
    );
  await t.soft(rule("validate.missing-id", "MUST", "ValidateVolumeCapabilities without volume_id → INVALID_ARGUMENT"), () =>
    expectCode(validate({ volume_id: "", volume_capabilities: [ctx.capability()] }), "INVALID_ARGUMENT"),
  );
  await t.soft(
    rule("validate.missing-capabilities", "MUST", "ValidateVolumeCapabilities without capabilities → INVALID_ARGUMENT"),
    () => expectCode(validate({ volume_id: vol.volume_id, volume_capabilities: [] }), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("validate.unknown-id", "MUST", "ValidateVolumeCapabilities on an unknown id → NOT_FOUND"), () =>
    expectCode(validate({ volume_id: `${ctx.tag}-missing`, volume_capabilities: [ctx.capability()] }), "NOT_FOUND"),
  );
  await t.soft(
    rule("validate.confirms", "MUST", "the capabilities a volume was created with are confirmed and echoed"),
    async () => {
      const res = await expectOk(
        validate({
          volume_id: vol.volume_id,
          volume_context: vol.volume_context,
          volume_capabilities: [ctx.capability()],
          parameters: settings.params,
        }),
        "ValidateVolumeCapabilities",
      );
      if (!res.confirmed) fail(`not confirmed: ${res.message || "no message"}`);
      const echoed = res.confirmed.volume_capabilities as VolumeCapability[];
      if (echoed.length !== 1 || !sameCapability(echoed[0]!, ctx.capability()))
        fail(`confirmed ${JSON.stringify(echoed)}, asked ${JSON.stringify([ctx.capability()])}`);
    },
  );

  if (ctx.caps.controller.has("GET_VOLUME")) {
    const get = (id: string) => client.call<{ volume: Volume }>("Controller", "ControllerGetVolume", { volume_id: id });
    await t.soft(rule("getvolume.missing-id", "MUST", "ControllerGetVolume without volume_id → INVALID_ARGUMENT"), () =>
      expectCode(get(""), "INVALID_ARGUMENT"),
    );
    await t.soft(rule("getvolume.unknown-id", "MUST", "ControllerGetVolume on an unknown id → NOT_FOUND"), () =>
      expectCode(get(`${ctx.tag}-missing`), "NOT_FOUND"),
    );
    await t.soft(rule("getvolume.ok", "MUST", "ControllerGetVolume returns the volume as created"), async () => {
      const res = await expectOk(get(vol.volume_id), "ControllerGetVolume");
      if (res.volume?.volume_id !== vol.volume_id) fail(`returned ${res.volume?.volume_id}`);
      if (res.volume.capacity_bytes !== vol.capacity_bytes)
        fail(`capacity ${res.volume.capacity_bytes} vs ${vol.capacity_bytes}`);
    });
  } else {
    t.skipRule(rule("getvolume.ok", "MUST", "ControllerGetVolume returns the volume"), "GET_VOLUME not advertised");
  }

  const del = (id: string) => client.call("Controller", "DeleteVolume", { volume_id: id });
  await t.soft(rule("delete.missing-id", "MUST", "DeleteVolume without volume_id → INVALID_ARGUMENT"), () =>
    expectCode(del(""), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("delete.unknown-id", "MUST", "DeleteVolume on an unknown id → OK"), () =>
    expectOk(del(`${ctx.tag}-missing`), "DeleteVolume"),
  );
  await t.check(rule("delete.ok", "MUST", "DeleteVolume removes the volume"), async () => {
    await expectOk(ctx.deleteVolume(vol.volume_id), "DeleteVolume");
    await expectCode(validate({ volume_id: vol.volume_id, volume_capabilities: [ctx.capability()] }), "NOT_FOUND");
  });
  await t.soft(rule("delete.twice", "MUST", "DeleteVolume on a deleted volume → OK"), () =>
    expectOk(del(vol.volume_id), "second DeleteVolume"),
  );
  await t.soft(rule("create.after-delete", "SHOULD", "the name can be reused once the volume is deleted"), async () => {
    const v = await expectOk(ctx.createVolume(name), "CreateVolume with a reused name");
    await ctx.deleteVolume(v.volume_id);
  });
}

/** Same access type, mode, fs_type and mount flags (a round trip fills in defaults). */
export function sameCapability(a: VolumeCapability, b: VolumeCapability): boolean {
  if (Boolean(a.block) !== Boolean(b.block) || Boolean(a.mount) !== Boolean(b.mount)) return false;
  if (a.access_mode?.mode !== b.access_mode?.mode) return false;
  if (a.mount && b.mount) {
    if ((a.mount.fs_type ?? "") !== (b.mount.fs_type ?? "")) return false;
    if (JSON.stringify(a.mount.mount_flags ?? []) !== JSON.stringify(b.mount.mount_flags ?? [])) return false;
  }
  return true;
}

export async function listVolumesRules(ctx: SuiteContext): Promise<void> {
  const { t, client } = ctx;
  if (!ctx.caps.controller.has("LIST_VOLUMES") || !ctx.caps.controller.has("CREATE_DELETE_VOLUME")) {
    t.skipRule(
      rule("list.pagination", "MUST", "ListVolumes pages see every volume once"),
      "LIST_VOLUMES or CREATE_DELETE_VOLUME not advertised",
    );
    return;
  }
  type Page = { entries: { volume: Volume }[]; next_token: string };
  const list = (req: object) => client.call<Page>("Controller", "ListVolumes", req);
  const ours = new Set<string>();
  await t.check(rule("list.setup", "MUST", "five volumes to list can be created"), async () => {
    for (let i = 0; i < 5; i++)
      ours.add(
        (await expectOk(ctx.createVolume(ctx.name("list"), { capacity_range: { required_bytes: MiB } }), "CreateVolume"))
          .volume_id,
      );
  });
  await t.soft(rule("list.bad-token", "MUST", "ListVolumes with a bogus starting_token → ABORTED"), () =>
    expectCode(list({ starting_token: "not-a-token-/%$" }), "ABORTED"),
  );
  await t.soft(rule("list.negative-max", "MUST", "ListVolumes with negative max_entries → INVALID_ARGUMENT"), () =>
    expectCode(list({ max_entries: -1 }), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("list.all", "MUST", "ListVolumes without max_entries includes every volume"), async () => {
    const seen = await walk(list, 0);
    for (const id of ours) if (!seen.includes(id)) fail(`volume ${id} missing`);
  });
  await t.soft(
    rule("list.pagination", "MUST", "max_entries=2 pages, next_token walk sees every volume exactly once"),
    async () => {
      const seen = await walk(list, 2);
      const counts = new Map<string, number>();
      for (const id of seen) counts.set(id, (counts.get(id) ?? 0) + 1);
      for (const [id, n] of counts) if (n > 1) fail(`volume ${id} listed ${n} times`);
      for (const id of ours) if (!counts.has(id)) fail(`volume ${id} never listed`);
    },
  );
  await t.soft(rule("list.after-delete", "MUST", "deleted volumes are no longer listed"), async () => {
    for (const id of ours) await ctx.deleteVolume(id);
    const seen = await walk(list, 0);
    const left = [...ours].filter((id) => seen.includes(id));
    if (left.length) fail(`still listed: ${left.join(", ")}`);
  });
}

/** Follows next_token from the first page, enforcing max_entries per page. */
export async function walk(
  list: (
    req: object,
  ) => Promise<{ entries: ({ volume: { volume_id: string } } | { snapshot: { snapshot_id: string } })[]; next_token: string }>,
  maxEntries: number,
  extra: object = {},
): Promise<string[]> {
  const seen: string[] = [];
  let token = "";
  for (let page = 0; page < 10_000; page++) {
    const res = await expectOk(list({ ...extra, max_entries: maxEntries, starting_token: token }), `page ${page + 1}`);
    if (maxEntries > 0 && res.entries.length > maxEntries)
      fail(`page ${page + 1} has ${res.entries.length} entries > max ${maxEntries}`);
    for (const e of res.entries)
      seen.push(
        "volume" in e && e.volume ? e.volume.volume_id : (e as { snapshot: { snapshot_id: string } }).snapshot.snapshot_id,
      );
    if (!res.next_token) return seen;
    if (res.next_token === token) fail(`next_token "${token}" repeats`);
    token = res.next_token;
  }
  fail("more than 10000 pages");
}

export async function capacityRules(ctx: SuiteContext): Promise<void> {
  const { t, client } = ctx;
  if (!ctx.caps.controller.has("GET_CAPACITY")) {
    t.skipRule(rule("capacity.ok", "MUST", "GetCapacity answers"), "GET_CAPACITY not advertised");
    return;
  }
  type Cap = { available_capacity: number; maximum_volume_size: { value: number } | null };
  await t.soft(rule("capacity.ok", "MUST", "GetCapacity without arguments answers a non-negative capacity"), async () => {
    const res = await expectOk(client.call<Cap>("Controller", "GetCapacity", {}), "GetCapacity");
    if (!(res.available_capacity >= 0)) fail(`available_capacity ${res.available_capacity}`);
  });
  await t.soft(rule("capacity.for-kind", "MUST", "GetCapacity for the suite's capability and parameters answers"), async () => {
    const res = await expectOk(
      client.call<Cap>("Controller", "GetCapacity", { volume_capabilities: [ctx.capability()], parameters: ctx.settings.params }),
      "GetCapacity",
    );
    if (!(res.available_capacity >= 0)) fail(`available_capacity ${res.available_capacity}`);
    if (res.maximum_volume_size && res.maximum_volume_size.value < 0)
      fail(`maximum_volume_size ${res.maximum_volume_size.value}`);
  });
}

export async function expandRules(ctx: SuiteContext): Promise<void> {
  const { t, client } = ctx;
  if (!ctx.caps.controller.has("EXPAND_VOLUME") || !ctx.caps.controller.has("CREATE_DELETE_VOLUME")) {
    t.skipRule(
      rule("expand.ok", "MUST", "ControllerExpandVolume grows a volume"),
      "EXPAND_VOLUME or CREATE_DELETE_VOLUME not advertised",
    );
    return;
  }
  type Res = { capacity_bytes: number; node_expansion_required: boolean };
  const expand = (req: object) => client.call<Res>("Controller", "ControllerExpandVolume", req);
  const size = ctx.settings.volumeBytes;
  await t.soft(rule("expand.missing-id", "MUST", "ControllerExpandVolume without volume_id → INVALID_ARGUMENT"), () =>
    expectCode(expand({ volume_id: "", capacity_range: { required_bytes: 2 * size } }), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("expand.unknown-id", "MUST", "ControllerExpandVolume on an unknown id → NOT_FOUND"), () =>
    expectCode(expand({ volume_id: `${ctx.tag}-missing`, capacity_range: { required_bytes: 2 * size } }), "NOT_FOUND"),
  );
  const vol = await t.check(rule("expand.setup", "MUST", "a volume to expand can be created"), () =>
    expectOk(ctx.createVolume(ctx.name("expand")), "CreateVolume"),
  );
  await t.soft(rule("expand.missing-range", "MUST", "ControllerExpandVolume without capacity_range → INVALID_ARGUMENT"), () =>
    expectCode(expand({ volume_id: vol.volume_id }), "INVALID_ARGUMENT"),
  );
  const want = 2 * size;
  await t.check(rule("expand.ok", "MUST", "ControllerExpandVolume to twice the size → capacity ≥ requested"), async () => {
    const res = await expectOk(
      expand({ volume_id: vol.volume_id, capacity_range: { required_bytes: want }, volume_capability: ctx.capability() }),
      "ControllerExpandVolume",
    );
    if (res.capacity_bytes < want) fail(`capacity_bytes ${res.capacity_bytes} < ${want}`);
  });
  await t.soft(rule("expand.idempotent", "MUST", "the same expansion again → OK"), async () => {
    const res = await expectOk(
      expand({ volume_id: vol.volume_id, capacity_range: { required_bytes: want }, volume_capability: ctx.capability() }),
      "second ControllerExpandVolume",
    );
    if (res.capacity_bytes < want) fail(`capacity_bytes ${res.capacity_bytes} < ${want}`);
  });
  await t.soft(
    rule("expand.smaller-ok", "MUST", "expanding to less than the current size → OK (already satisfied)"),
    async () => {
      const res = await expectOk(
        expand({ volume_id: vol.volume_id, capacity_range: { required_bytes: size }, volume_capability: ctx.capability() }),
        "ControllerExpandVolume",
      );
      if (res.capacity_bytes < want) fail(`the volume shrank to ${res.capacity_bytes}`);
    },
  );
  await t.soft(
    rule("expand.visible", "SHOULD", "the new capacity is reported by ControllerGetVolume / ListVolumes"),
    async () => {
      let reported: number | undefined;
      if (ctx.caps.controller.has("GET_VOLUME")) {
        reported = (await client.call<{ volume: Volume }>("Controller", "ControllerGetVolume", { volume_id: vol.volume_id }))
          .volume.capacity_bytes;
      } else if (ctx.caps.controller.has("LIST_VOLUMES")) {
        let token = "";
        do {
          const page = await client.call<{ entries: { volume: Volume }[]; next_token: string }>("Controller", "ListVolumes", {
            starting_token: token,
          });
          reported ??= page.entries.find((e) => e.volume.volume_id === vol.volume_id)?.volume.capacity_bytes;
          token = page.next_token;
        } while (token && reported === undefined);
      } else skip("neither GET_VOLUME nor LIST_VOLUMES advertised");
      if (reported === undefined) fail("the volume is not listed");
      if (reported < want) fail(`reported capacity ${reported} < ${want}`);
    },
  );
  await ctx.deleteVolume(vol.volume_id);
}
