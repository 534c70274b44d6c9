import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { parse, stringify } from 'yaml';
import { formatIssues, parseRegion, validateRegion } from './load-region.ts';

const exampleText = await readFile(new URL('../../region.example.yaml', import.meta.url), 'utf8');
const example = (): Record<string, unknown> & { sites: Array<Record<string, unknown>>; shards: Array<Record<string, unknown>> } =>
  parse(exampleText) as never;

function issuesOf(doc: unknown): string {
  const r = validateRegion(doc);
  assert.ok(!r.ok, 'expected the region to be rejected');
  return formatIssues(r.issues);
}

describe('region file', () => {
  it('ships a valid example shaped like the regional standard', () => {
    const r = parseRegion(exampleText);
    assert.ok(r.ok, r.ok ? '' : formatIssues(r.issues));
    const { region } = r;
    assert.deepEqual(
      region.sites.map((s) => [s.id, s.kind]),
      [
        ['B', 'private'],
        ['C', 'private'],
        ['A', 'public'],
      ],
    );
    for (const code of ['440100', '440300', '440600', '441200', '442000']) assert.ok(region.shardForDivision(code), code);
    assert.equal(region.classOf('Patient'), 'core');
    assert.equal(region.classOf('Organization'), 'public');
    assert.equal(region.classOf('SomethingUnlisted'), 'core');
  });

  it("keeps the witness's coordination store embedded by default, takes etcd endpoints, and names a bad one", () => {
    const embedded = validateRegion(example());
    assert.ok(embedded.ok);
    assert.equal(embedded.region.config.witness.store, 'embedded');
    const doc = example();
    doc.witness = {
      url: 'http://127.0.0.1:7300',
      store: { etcd: { endpoints: ['http://10.0.0.1:2379'], namespace: 'medmesh/gd/' } },
    };
    const etcd = validateRegion(doc);
    assert.ok(etcd.ok, etcd.ok ? '' : formatIssues(etcd.issues));
    assert.deepEqual(etcd.region.config.witness.store, {
      etcd: { endpoints: ['http://10.0.0.1:2379'], namespace: 'medmesh/gd/' },
    });
    doc.witness = { url: 'http://127.0.0.1:7300', store: { etcd: { endpoints: ['https://10.0.0.1:2379'] } } };
    assert.match(issuesOf(doc), /^witness\.store\.etcd\.endpoints\[0\]: must be an etcd client URL http:\/\/host:port$/m);
    doc.witness = { url: 'http://127.0.0.1:7300', store: 'zookeeper' };
    assert.match(issuesOf(doc), /^witness\.store: must be embedded, or etcd: /m);
  });

  it('takes synchronous classes, matches resources to them, and names a class that matches nothing', () => {
    const doc = example();
    const emergency = { system: 'http://medmesh.example/priority', code: 'emergency' };
    doc.policies = {
      ...(doc.policies as object),
      synchronous: [{ name: 'emergency-orders', resourceTypes: ['ServiceRequest'], tags: [emergency], timeoutMs: 1500 }],
    };
    const v = validateRegion(doc);
    assert.ok(v.ok, v.ok ? '' : formatIssues(v.issues));
    assert.equal(v.region.config.policies.synchronous[0]!.onTimeout, 'refuse');
    const sr = { resourceType: 'ServiceRequest', meta: { tag: [emergency] } };
    assert.equal(v.region.synchronousClassOf(sr)?.name, 'emergency-orders');
    assert.equal(v.region.synchronousClassOf({ resourceType: 'ServiceRequest' }), undefined);
    assert.equal(v.region.synchronousClassOf({ ...sr, resourceType: 'Observation' }), undefined);
    assert.equal(v.region.twinOf('guangzhou', 'B'), 'C');
    doc.policies = { ...(doc.policies as object), synchronous: [{ name: 'everything' }] };
    assert.match(issuesOf(doc), /^policies\.synchronous\[0\]: a synchronous class names resourceTypes, tags or both$/m);
    doc.policies = {
      ...(doc.policies as object),
      synchronous: [{ name: 'x', resourceTypes: ['Observation'], onTimeout: 'ignore' }],
    };
    assert.match(issuesOf(doc), /^policies\.synchronous\[0\]\.onTimeout: must be one of refuse, degrade$/m);
  });

  it('names the path and the rule of a wrong enum value', () => {
    const doc = example();
    doc.sites[2]!.kind = 'cloud';
    assert.match(issuesOf(doc), /^sites\[2\]\.kind: must be one of private, public, edge$/m);
  });

  it('reports missing, unknown and malformed fields together', () => {
    const doc = example();
    delete doc.sites[0]!.url;
    doc.sites[1]!.colour = 'red';
    doc.shards[0]!.divisions = ['4401'];
    const text = issuesOf(doc);
    assert.match(text, /^sites\[0\]\.url: is required$/m);
    assert.match(text, /^sites\[1\]\.colour: unknown field$/m);
    assert.match(text, /^shards\[0\]\.divisions\[0\]: must be a 6-digit administrative division code$/m);
  });

  it("requires a shard's home and DR twin to be at least 50 km apart", () => {
    const doc = example();
    doc.sites[1]!.location = { lat: 23.2, lon: 113.3 }; // C moved next to B in Guangzhou
    assert.match(issuesOf(doc), /shards\[0\]\.residency: home site B and DR twin C are \d+\.\d km apart; must be at least 50 km/);
  });

  it('refuses core residency on a public site and references to unknown sites or shards', () => {
    const doc = example();
    doc.shards[0]!.residency = ['A', 'X'];
    doc.sites[0]!.defaultShard = 'nowhere';
    const text = issuesOf(doc);
    assert.match(text, /^shards\[0\]\.residency\[0\]: site A is public; core data may reside only on private sites$/m);
    assert.match(text, /^shards\[0\]\.residency\[1\]: unknown site X$/m);
    assert.match(text, /^sites\[0\]\.defaultShard: unknown shard nowhere/m);
  });

  it('refuses a division or GeoHash claimed by two shards', () => {
    const doc = example();
    (doc.shards[1]!.divisions as string[]).push('440100');
    (doc.shards[1]!.geohashes as string[]).push('ws0e');
    const text = issuesOf(doc);
    assert.match(text, /division 440100 already belongs to shard guangzhou/);
    assert.match(text, /GeoHash prefix ws0e already belongs to shard guangzhou/);
  });

  it('reports YAML syntax errors with a line number', () => {
    const r = parseRegion('region: x\n  sites: [\n', 'bad.yaml');
    assert.ok(!r.ok);
    assert.match(formatIssues(r.issues), /^bad\.yaml:\d+:\d+: not valid YAML/);
  });

  it('resolves divisions county -> prefecture -> province and GeoHash by longest prefix', () => {
    const doc = example();
    (doc.shards[0]!.geohashes as string[]).push('ws0ex');
    doc.shards[1]!.geohashes = ['ws0exy', ...(doc.shards[1]!.geohashes as string[])];
    const r = parseRegion(stringify(doc));
    assert.ok(r.ok);
    assert.deepEqual(r.region.shardForDivision('440305'), { shard: 'shenzhen', matched: '440300' });
    assert.deepEqual(r.region.shardForDivision('440203'), { shard: 'guangdong-other', matched: '440000' });
    assert.equal(r.region.shardForDivision('110105'), undefined);
    assert.deepEqual(r.region.shardForGeohash('ws0exyz'), { shard: 'shenzhen', matched: 'ws0exy' });
    assert.deepEqual(r.region.shardForGeohash('ws0exa'), { shard: 'guangzhou', matched: 'ws0ex' });
    assert.equal(r.region.shardForGeohash('u4pru'), undefined);
  });
});
