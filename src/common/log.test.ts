// Warn and error lines are counted per component (the child logger's binding), whatever
// the level the logger writes at, so a swallowed-looking failure still shows in /metrics.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { createLogger, LogCounts, silentLogger } from './log.ts';

describe('logger', () => {
  it('writes JSON lines and counts warnings and errors per component', () => {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(...chunk.toString().trim().split('\n'));
        done();
      },
    });
    const { log, counts } = createLogger({ level: 'info', destination, base: { site: 'B' } });
    const witness = log.child({ component: 'audit-witness' });
    witness.warn({ peer: 'C' }, 'peer C did not answer');
    witness.error({ err: new Error('boom') }, 'check failed');
    witness.info('all well');
    log.error('no component');
    const parsed = lines.map((l) => JSON.parse(l) as { msg: string; component?: string; site: string; level: number });
    assert.deepEqual(
      parsed.map((p) => [p.msg, p.component, p.site]),
      [
        ['peer C did not answer', 'audit-witness', 'B'],
        ['check failed', 'audit-witness', 'B'],
        ['all well', 'audit-witness', 'B'],
        ['no component', undefined, 'B'],
      ],
    );
    assert.deepEqual(counts.entries(), [
      { component: 'audit-witness', level: 'error', count: 1 },
      { component: 'audit-witness', level: 'warn', count: 1 },
      { component: 'site', level: 'error', count: 1 },
    ]);
    assert.match(
      counts.prometheus({ site: 'B' }),
      /medmesh_log_problems_total\{site="B",component="audit-witness",level="warn"\} 1/,
    );
  });

  it('a silent logger writes nothing and still counts', () => {
    const counts = new LogCounts();
    silentLogger(counts).child({ component: 'puller' }).error('lost');
    assert.deepEqual(counts.entries(), [{ component: 'puller', level: 'error', count: 1 }]);
  });

  it('at level error, a warning is not written but is counted', () => {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    const { log, counts } = createLogger({ level: 'error', destination });
    log.child({ component: 'link' }).warn('slow');
    log.child({ component: 'link' }).error('down');
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /"msg":"down"/);
    assert.deepEqual(
      counts.entries().map((e) => `${e.component}/${e.level}=${e.count}`),
      ['link/error=1', 'link/warn=1'],
    );
  });
});
