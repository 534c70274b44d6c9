// DICOMweb when a stored file is lost or damaged, read with curl: an error the client can
// see before the first byte whenever it can be known then, a broken transfer (never a clean
// short body) when it cannot; the collection report counts the lost files; the same bytes sent
// again restore them. And each error answer is labelled for its status.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { testBackend } from '../db/test-db.ts';
import { makeInstances } from '../imaging/testing.ts';
import { startTestServer, type TestServer } from '../site/testing.ts';

const STUDY = '1.2.826.0.1.3680043.10.1519.44';
const sop = (n: number) => `${STUDY}.1.${n}`;

/** curl's exit code, HTTP status and body (curl exits 18 when a transfer is cut off). */
async function curl(url: string, headers: Record<string, string>): Promise<{ exit: number; status: number; body: string }> {
  const args = ['-sS', '-w', '\n%{http_code}', ...Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]), url];
  const parse = (out: string, exit: number) => {
    const at = out.lastIndexOf('\n');
    return { exit, status: Number(out.slice(at + 1)), body: out.slice(0, at) };
  };
  try {
    const { stdout } = await promisify(execFile)('curl', args, { encoding: 'latin1', maxBuffer: 64 * 2 ** 20 });
    return parse(stdout, 0);
  } catch (e) {
    const x = e as { code: number; stdout: string };
    return parse(x.stdout, x.code);
  }
}

describe(`DICOMweb with lost and damaged files (${testBackend()})`, () => {
  let s: TestServer;
  let files: Buffer[];
  const blobOf = async (n: number) =>
    join(
      s.blobRoot,
      (
        await s.db.query<{ blob_key: string }>('SELECT blob_key FROM imaging_instance WHERE sop_instance_uid = $1 AND current', [
          sop(n),
        ])
      ).rows[0]!.blob_key,
    );
  const wado = () => curl(`${s.base}/dicomweb/studies/${STUDY}`, s.as(['integration']));
  before(async () => {
    s = await startTestServer();
    files = await makeInstances({ studyUid: STUDY, date: '20261101', patientId: 'P44', count: 3 });
    for (const f of files) assert.ok((await s.site.imaging!.ingest(f, { source: 'test' })).ok);
    await s.db.query(
      "INSERT INTO imaging_collection_day (source, study_date, queried_at, studies) VALUES ('pacs-1', '20261101', now(), 1)",
    );
    await s.db.query(
      `INSERT INTO imaging_collection_study (source, study_uid, study_date, source_instances, state, attempts)
       VALUES ('pacs-1', $1, '20261101', 3, 'retrieved', 1)`,
      [STUDY],
    );
  });
  after(async () => s.close());

  it('answers a study with a lost file with an error before the first byte, and the report counts the file', async () => {
    const whole = await wado();
    assert.equal(whole.status, 200);
    await rm(await blobOf(3));
    const r = await wado();
    assert.equal(r.exit, 0);
    assert.equal(r.status, 500);
    const error = JSON.parse(r.body) as { code: string; message: string };
    assert.equal(error.code, 'stored-file-missing');
    assert.match(error.message, new RegExp(`1 of the 3 instance file\\(s\\) .* missing .*${sop(3).replaceAll('.', '\\.')}`));
    assert.doesNotMatch(error.message, /\.mmf/, 'no blob key leaves the site');
    const report = await curl(`${s.base}/imaging/collection/pacs-1/20261101`, s.as(['administrator']));
    const parsed = JSON.parse(report.body) as {
      complete: boolean;
      held_instances: number;
      missing_files: number;
      differences: Array<{ study: string; kind: string; held_instances: number; missing_files: number }>;
    };
    assert.deepEqual(
      [parsed.complete, parsed.held_instances, parsed.missing_files],
      [false, 2, 1],
      'a lost file is not held, though its row is',
    );
    assert.deepEqual(
      parsed.differences.map((d) => [d.study, d.kind, d.held_instances, d.missing_files]),
      [[STUDY, 'incomplete', 2, 1]],
    );
  });

  it('takes the same file again to restore it, after which the study is whole again', async () => {
    const boundary = 'medmesh-restore';
    const stow = await fetch(`${s.base}/dicomweb/studies`, {
      method: 'POST',
      headers: { ...s.as(['integration']), 'content-type': `multipart/related; type="application/dicom"; boundary=${boundary}` },
      body: Buffer.concat([
        Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
        files[2]!,
        Buffer.from(`\r\n--${boundary}--\r\n`),
      ]),
    });
    assert.equal(stow.status, 200, await stow.text());
    const r = await wado();
    assert.deepEqual([r.exit, r.status], [0, 200]);
    assert.ok(Buffer.from(r.body, 'latin1').includes(files[2]!));
    const report = JSON.parse((await curl(`${s.base}/imaging/collection/pacs-1/20261101`, s.as(['administrator']))).body) as {
      complete: boolean;
      missing_files: number;
    };
    assert.deepEqual([report.complete, report.missing_files], [true, 0]);
  });

  it('answers a damaged first file with an error, and breaks the transfer when a later one fails mid-stream', async () => {
    const damage = async (n: number) => {
      const path = await blobOf(n);
      const original = await readFile(path);
      const altered = Buffer.from(original);
      altered[altered.length - 100]! ^= 0x01;
      await writeFile(path, altered);
      return () => writeFile(path, original);
    };
    const repairFirst = await damage(1);
    const first = await wado();
    assert.equal(first.status, 500);
    const error = JSON.parse(first.body) as { code: string; message: string };
    assert.deepEqual([error.code, /MAC does not match/.test(error.message)], ['stored-file-unreadable', true]);
    await repairFirst();
    // The second file fails only once the first is on its way: curl must see a cut transfer
    // (exit 18), not a clean end of a shorter body.
    const repairSecond = await damage(2);
    const cut = await wado();
    assert.equal(cut.status, 200);
    assert.equal(cut.exit, 18, 'curl: transfer closed with outstanding read data remaining');
    await repairSecond();
    assert.equal((await wado()).exit, 0);
  });

  it('answers STOW-RS into a failing blob store with the part failed (out of resources), not an error page', async () => {
    // The blob folder replaced by a file: every write fails (ENOTDIR or EEXIST) as a broken disk would.
    const aside = `${s.blobRoot}.aside`;
    await rename(s.blobRoot, aside);
    await writeFile(s.blobRoot, 'not a folder');
    try {
      const [file] = await makeInstances({ studyUid: `${STUDY}9`, date: '20261101', patientId: 'P44', count: 1 });
      const boundary = 'medmesh-broken-disk';
      const r = await fetch(`${s.base}/dicomweb/studies`, {
        method: 'POST',
        headers: {
          ...s.as(['integration']),
          'content-type': `multipart/related; type="application/dicom"; boundary=${boundary}`,
        },
        body: Buffer.concat([
          Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
          file!,
          Buffer.from(`\r\n--${boundary}--\r\n`),
        ]),
      });
      assert.equal(r.status, 409);
      const body = (await r.json()) as Record<string, { Value: Array<Record<string, { Value: number[] }>> }>;
      assert.equal(body['00081198']!.Value[0]!['00081197']!.Value[0], 0xa700);
      assert.match(r.headers.get('warning') ?? '', /the blob store could not keep the file \((ENOTDIR|EEXIST)\)/);
    } finally {
      await rm(s.blobRoot, { force: true });
      await rename(aside, s.blobRoot);
    }
  });

  it('refuses a query key with a NUL character as malformed (400), not a database error', async () => {
    // The door refuses it (door.ts, an onRequest hook) and the app's error handler answers for DICOMweb too.
    const r = await fetch(`${s.base}/dicomweb/studies?PatientID=a%00b`, { headers: s.as(['integration']) });
    assert.equal(r.status, 400);
    assert.deepEqual(await r.json(), {
      code: 'bad-request',
      message: 'the query string holds U+0000 (NUL), which is not allowed',
    });
  });

  it('refuses a malformed path or query naming the part (400), once the caller may use images at all', async () => {
    const get = (path: string, headers = s.as(['integration'])) => fetch(`${s.base}/dicomweb${path}`, { headers });
    const refusal = async (r: Response) => [r.status, (await r.json()) as { code: string; message: string }] as const;
    const [status, body] = await refusal(await get('/studies/1.2.x'));
    assert.equal(status, 400);
    assert.deepEqual([body.code, body.message], ['bad-request', 'params.study: must be a DICOM UID (digits and dots)']);
    assert.deepEqual(
      (await refusal(await get('/studies?limit=0')))[1].message,
      'querystring.limit: must be an integer from 1 to 1000',
    );
    assert.deepEqual(
      (await refusal(await get(`/studies/${STUDY}/series/1.2/instances/${sop(1)}/frames/0`)))[1].message,
      'params.frames: must be frame numbers (from 1) separated by commas',
    );
    assert.deepEqual(
      (await refusal(await get(`/studies/${STUDY}`, { ...s.as(['integration']), accept: 'x'.repeat(5000) })))[1].message,
      'headers.accept: Too big: expected string to have <=4096 characters',
    );
    // A caller whose role grants nothing of images hears that first, whatever the request looks like.
    assert.deepEqual(await refusal(await get('/studies/1.2.x', s.as(['lab']))).then(([st, b]) => [st, b.code]), [
      403,
      'forbidden',
    ]);
    assert.equal((await get('/studies/1.2.x', {})).status, 401);
  });

  it('labels each error answer for its status', async () => {
    const get = (path: string, headers: Record<string, string>) => fetch(`${s.base}/dicomweb${path}`, { headers });
    const label = async (r: Response) => [r.status, ((await r.json()) as { code: string }).code];
    assert.deepEqual(await label(await get('/studies', s.as(['lab']))), [403, 'forbidden']);
    assert.deepEqual(await label(await get('/studies?Bogus=1', s.as(['integration']))), [400, 'bad-request']);
    assert.deepEqual(await label(await get('/studies/1.2.3.999', s.as(['integration']))), [404, 'not-found']);
    assert.deepEqual(await label(await get(`/studies/${STUDY}`, { ...s.as(['integration']), accept: 'application/json' })), [
      406,
      'not-acceptable',
    ]);
    const stow = await fetch(`${s.base}/dicomweb/studies`, {
      method: 'POST',
      headers: { ...s.as(['integration']), 'content-type': 'application/json' },
      body: '{}',
    });
    assert.deepEqual(await label(stow), [415, 'unsupported-media-type']);
  });
});
