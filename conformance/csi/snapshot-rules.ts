// Snapshots: CreateSnapshot, DeleteSnapshot, ListSnapshots, GetSnapshot, restore (spec S11, S19).

import { expectCode, expectOk, fail, skip } from "./checklist.ts";
import type { Snapshot, Volume } from "./client.ts";
import { MiB, rule, type SuiteContext } from "./context.ts";
import { walk } from "./controller-rules.ts";

export async function snapshotRules(ctx: SuiteContext): Promise<void> {
  const { t, client, ledger } = ctx;
  const caps = ctx.caps.controller;
  if (!caps.has("CREATE_DELETE_SNAPSHOT") || !caps.has("CREATE_DELETE_VOLUME")) {
    t.skipRule(
      rule("snapshot.ok", "MUST", "CreateSnapshot cuts a snapshot"),
      "CREATE_DELETE_SNAPSHOT or CREATE_DELETE_VOLUME not advertised",
    );
    return;
  }
  const track = (res: { snapshot?: Snapshot }) => res.snapshot?.snapshot_id && ledger.addSnapshot(res.snapshot.snapshot_id);
  const createSnap = async (name: string, source: string) => {
    const res = await client.call<{ snapshot: Snapshot }>("Controller", "CreateSnapshot", {
      name,
      source_volume_id: source,
      parameters: {},
    });
    track(res);
    return res;
  };
  const deleteSnap = (id: string) => client.call("Controller", "DeleteSnapshot", { snapshot_id: id });

  await t.soft(rule("snapshot.missing-name", "MUST", "CreateSnapshot without name → INVALID_ARGUMENT"), () =>
    expectCode(createSnap("", `${ctx.tag}-missing`), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("snapshot.missing-source", "MUST", "CreateSnapshot without source_volume_id → INVALID_ARGUMENT"), () =>
    expectCode(createSnap(ctx.name("snap"), ""), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("snapshot.unknown-source", "SHOULD", "CreateSnapshot of a missing volume → NOT_FOUND"), () =>
    expectCode(createSnap(ctx.name("snap"), `${ctx.tag}-missing`), "NOT_FOUND"),
  );

  const [a, b] = (await t.check(rule("snapshot.setup", "MUST", "two source volumes can be created"), async () => [
    await expectOk(ctx.createVolume(ctx.name("snapsrc")), "CreateVolume"),
    await expectOk(ctx.createVolume(ctx.name("snapsrc")), "CreateVolume"),
  ])) as [Volume, Volume];
  const snapName = ctx.name("snap");
  const snap = await t.check(
    rule("snapshot.ok", "MUST", "CreateSnapshot returns id, source, creation_time, size ≥ 0"),
    async () => {
      const res = await expectOk(createSnap(snapName, a.volume_id), "CreateSnapshot");
      const s = res.snapshot;
      if (!s?.snapshot_id) fail("no snapshot_id");
      if (s.source_volume_id !== a.volume_id) fail(`source_volume_id ${s.source_volume_id}, want ${a.volume_id}`);
      if (!s.creation_time || (s.creation_time.seconds === 0 && s.creation_time.nanos === 0)) fail("creation_time not set");
      if (s.size_bytes < 0) fail(`size_bytes ${s.size_bytes}`);
      return s;
    },
  );
  await t.soft(rule("snapshot.idempotent", "MUST", "same name and source → same snapshot"), async () => {
    const res = await expectOk(createSnap(snapName, a.volume_id), "second CreateSnapshot");
    if (res.snapshot.snapshot_id !== snap.snapshot_id)
      fail(`second call gave ${res.snapshot.snapshot_id}, first ${snap.snapshot_id}`);
  });
  await t.soft(rule("snapshot.name-conflict", "MUST", "same name, other source → ALREADY_EXISTS"), () =>
    expectCode(createSnap(snapName, b.volume_id), "ALREADY_EXISTS"),
  );
  await t.soft(
    rule("snapshot.restore", "MUST", "CreateVolume from the snapshot → OK, at least the snapshot's size"),
    async () => {
      const v = await expectOk(
        ctx.createVolume(ctx.name("restore"), { volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } } }),
        "CreateVolume from snapshot",
      );
      if (v.capacity_bytes !== 0 && v.capacity_bytes < snap.size_bytes)
        fail(`capacity ${v.capacity_bytes} < snapshot ${snap.size_bytes}`);
      if (v.content_source && v.content_source.snapshot?.snapshot_id !== snap.snapshot_id)
        fail(`content_source ${JSON.stringify(v.content_source)}`);
      await ctx.deleteVolume(v.volume_id);
    },
  );
  await t.soft(
    rule("snapshot.restore-too-small", "MUST", "restore into less than the snapshot's size → OUT_OF_RANGE"),
    async () => {
      if (snap.size_bytes <= MiB) skip(`snapshot size ${snap.size_bytes} leaves no smaller size to ask for`);
      await expectCode(
        ctx.createVolume(ctx.name("restore"), {
          capacity_range: { required_bytes: MiB, limit_bytes: MiB },
          volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } },
        }),
        "OUT_OF_RANGE",
      );
    },
  );

  if (caps.has("LIST_SNAPSHOTS")) {
    type Page = { entries: { snapshot: Snapshot }[]; next_token: string };
    const list = (req: object) => client.call<Page>("Controller", "ListSnapshots", req);
    await t.soft(rule("snapshot.list-by-id", "MUST", "ListSnapshots by snapshot_id → exactly that snapshot"), async () => {
      const res = await expectOk(list({ snapshot_id: snap.snapshot_id }), "ListSnapshots");
      const ids = res.entries.map((e) => e.snapshot.snapshot_id);
      if (ids.length !== 1 || ids[0] !== snap.snapshot_id) fail(`listed ${JSON.stringify(ids)}`);
    });
    await t.soft(rule("snapshot.list-unknown-id", "MUST", "ListSnapshots by an unknown snapshot_id → OK, empty"), async () => {
      const res = await expectOk(list({ snapshot_id: `${ctx.tag}-missing` }), "ListSnapshots");
      if (res.entries.length) fail(`listed ${res.entries.length} entries`);
    });
    await t.soft(rule("snapshot.list-by-source", "MUST", "ListSnapshots by source_volume_id → only that volume's"), async () => {
      const res = await expectOk(list({ source_volume_id: a.volume_id }), "ListSnapshots");
      const ids = res.entries.map((e) => e.snapshot.snapshot_id);
      if (!ids.includes(snap.snapshot_id)) fail("our snapshot is missing");
      const other = res.entries.find((e) => e.snapshot.source_volume_id !== a.volume_id);
      if (other) fail(`lists ${other.snapshot.snapshot_id} of volume ${other.snapshot.source_volume_id}`);
    });
    await t.soft(rule("snapshot.list-bad-token", "MUST", "ListSnapshots with a bogus starting_token → ABORTED"), () =>
      expectCode(list({ starting_token: "not-a-token-/%$" }), "ABORTED"),
    );
    await t.soft(rule("snapshot.list-pagination", "MUST", "max_entries=2 pages see every snapshot exactly once"), async () => {
      const more = [snap.snapshot_id];
      for (let i = 0; i < 2; i++)
        more.push((await expectOk(createSnap(ctx.name("snap"), b.volume_id), "CreateSnapshot")).snapshot.snapshot_id);
      const seen = await walk(list, 2);
      for (const id of more) {
        const n = seen.filter((s) => s === id).length;
        if (n !== 1) fail(`snapshot ${id} listed ${n} times`);
      }
    });
  } else {
    t.skipRule(rule("snapshot.list-by-id", "MUST", "ListSnapshots by snapshot_id"), "LIST_SNAPSHOTS not advertised");
  }

  if (caps.has("GET_SNAPSHOT")) {
    const get = (id: string) => client.call<{ snapshot: Snapshot }>("Controller", "GetSnapshot", { snapshot_id: id });
    await t.soft(rule("snapshot.get-unknown", "MUST", "GetSnapshot on an unknown id → NOT_FOUND"), () =>
      expectCode(get(`${ctx.tag}-missing`), "NOT_FOUND"),
    );
    await t.soft(rule("snapshot.get", "MUST", "GetSnapshot returns the snapshot"), async () => {
      const res = await expectOk(get(snap.snapshot_id), "GetSnapshot");
      if (res.snapshot.snapshot_id !== snap.snapshot_id || res.snapshot.source_volume_id !== a.volume_id)
        fail(`returned ${JSON.stringify(res.snapshot)}`);
    });
  }

  await t.soft(rule("snapshot.delete-missing-id", "MUST", "DeleteSnapshot without snapshot_id → INVALID_ARGUMENT"), () =>
    expectCode(deleteSnap(""), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("snapshot.delete-unknown", "MUST", "DeleteSnapshot on an unknown id → OK"), () =>
    expectOk(deleteSnap(`${ctx.tag}-missing`), "DeleteSnapshot"),
  );
  await t.soft(rule("snapshot.delete", "MUST", "DeleteSnapshot removes it; a second delete → OK"), async () => {
    await expectOk(deleteSnap(snap.snapshot_id), "DeleteSnapshot");
    ledger.dropSnapshot(snap.snapshot_id);
    await expectOk(deleteSnap(snap.snapshot_id), "second DeleteSnapshot");
    if (caps.has("LIST_SNAPSHOTS")) {
      const res = await client.call<{ entries: unknown[] }>("Controller", "ListSnapshots", { snapshot_id: snap.snapshot_id });
      if (res.entries.length) fail("still listed after delete");
    }
    await expectCode(
      ctx.createVolume(ctx.name("restore"), { volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } } }),
      "NOT_FOUND",
    );
  });
}
