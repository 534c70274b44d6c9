// Lint: no source line over the formatter's width. Prettier wraps code but leaves long strings,
// template literals and comments alone; this names each line that is still too long.
//   node scripts/check-lines.ts
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

const LIMIT = (JSON.parse(readFileSync(new URL('../.prettierrc.json', import.meta.url), 'utf8')) as { printWidth: number })
  .printWidth;
const listed = execFileSync('git', ['ls-files', '*.ts', '*.js', '*.cjs', '*.mjs'], { encoding: 'utf8' });
const files = listed.split('\n').filter(Boolean);
const long: string[] = [];
for (const file of files)
  readFileSync(file, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      if ([...line].length > LIMIT) long.push(`${file}:${i + 1}: ${[...line].length} characters`);
    });
if (long.length) {
  console.error(`${long.length} line(s) longer than ${LIMIT} characters (split the string or the comment):\n${long.join('\n')}`);
  process.exit(1);
}
