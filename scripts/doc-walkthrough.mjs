#!/usr/bin/env node
// Turns the walk-through in a Markdown file into one bash script that runs it as written, so a
// test can prove the documented commands work. Usage:
//
//   node scripts/doc-walkthrough.mjs FILE.md [PORT=NEWPORT ...] > walk.sh
//
// A walk-through block is a ```sh fence preceded by an HTML comment:
//   <!-- walkthrough: step -->                                  run in the script's own shell
//                                                               (variables carry to later steps)
//   <!-- walkthrough: background, ready when URL answers -->   start in its own session (a
//                                                               terminal of its own), then wait
//                                                               until URL answers 2xx
// Inside a step, a line `#> TEXT` says the commands before it print the line TEXT; the script
// fails when a step's output lacks any such line. PORT=NEWPORT pairs move fixed ports (in code,
// URLs and expected lines) so a run does not collide with a server already on them.
// The generated script writes the pids of background blocks to ./background.pids; whoever runs
// it stops them.
import { readFileSync } from 'node:fs';
import process from 'node:process';

const [file, ...portArgs] = process.argv.slice(2);
if (file === undefined) {
  process.stderr.write('usage: doc-walkthrough.mjs FILE.md [PORT=NEWPORT ...]\n');
  process.exit(2);
}
const ports = portArgs.map((arg) => {
  const m = /^(\d+)=(\d+)$/.exec(arg);
  if (m === null) throw new Error(`not a PORT=NEWPORT pair: ${arg}`);
  return { from: new RegExp(`\\b${m[1]}\\b`, 'g'), to: m[2] };
});
const movePorts = (text) => ports.reduce((t, p) => t.replace(p.from, p.to), text);

const MARKER = /^<!-- walkthrough: (step|background, ready when (\S+) answers) -->$/;
const lines = readFileSync(file, 'utf8').split('\n');
const blocks = [];
for (let i = 0; i < lines.length; i++) {
  const m = MARKER.exec(lines[i].trim());
  if (m === null) continue;
  if (lines[i + 1]?.trim() !== '```sh') throw new Error(`${file}:${i + 1}: a walkthrough marker must be followed by a \`\`\`sh block`);
  const end = lines.findIndex((l, j) => j > i + 1 && l.trim() === '```');
  if (end < 0) throw new Error(`${file}:${i + 2}: unterminated block`);
  const code = movePorts(lines.slice(i + 2, end).join('\n'));
  blocks.push({ line: i + 1, kind: m[1] === 'step' ? 'step' : 'background', ready: m[2] === undefined ? undefined : movePorts(m[2]), code });
  i = end;
}
if (blocks.length === 0) throw new Error(`${file}: no walkthrough blocks`);

const delimiter = 'WALKTHROUGH_BLOCK_END';
for (const b of blocks) if (b.code.includes(delimiter)) throw new Error(`${file}:${b.line}: block contains ${delimiter}`);
const quote = (s) => `'${s.replace(/'/g, `'\\''`)}'`;

const out = [
  '#!/usr/bin/env bash',
  `# Generated from ${file} by scripts/doc-walkthrough.mjs.`,
  'set -euo pipefail',
  ': > background.pids',
  'expect_lines() { # OUTPUT EXPECTED BLOCK',
  '  while IFS= read -r want; do',
  '    grep -qxF -- "$want" "$1" || { echo "walkthrough: the block at line $3 did not print: $want" >&2; echo "--- its output:" >&2; cat "$1" >&2; exit 1; }',
  '  done < "$2"',
  '}',
  'wait_ready() { # URL PID LOG BLOCK',
  '  local deadline=$((SECONDS + 60))',
  '  until curl -sf -o /dev/null --max-time 5 "$1"; do',
  '    kill -0 "$2" 2>/dev/null || { echo "walkthrough: the block at line $4 exited before $1 answered" >&2; tail -n 40 "$3" >&2; exit 1; }',
  '    [ $SECONDS -lt $deadline ] || { echo "walkthrough: $1 did not answer within 60 s (block at line $4)" >&2; tail -n 40 "$3" >&2; exit 1; }',
  '    sleep 0.2',
  '  done',
  '}',
];
blocks.forEach((b, n) => {
  const name = `block${n + 1}`;
  out.push('', `echo ${quote(`walkthrough: ${file}:${b.line} (${b.kind})`)}`);
  if (b.kind === 'background') {
    out.push(`cat > ${name}.sh <<'${delimiter}'`, b.code, delimiter);
    out.push(`setsid bash ${name}.sh > ${name}.log 2>&1 &`, 'echo $! >> background.pids', `wait_ready ${quote(b.ready)} $! ${name}.log ${b.line}`);
    return;
  }
  const expected = b.code
    .split('\n')
    .filter((l) => l.startsWith('#> '))
    .map((l) => l.slice(3));
  out.push(`trap 'echo "walkthrough: a command in the block at line ${b.line} failed" >&2; cat ${name}.out >&2' ERR`);
  out.push('{', b.code, `} > ${name}.out 2>&1`, 'trap - ERR', `cat ${name}.out`);
  out.push(`cat > ${name}.expected <<'${delimiter}'`, ...expected, delimiter, `expect_lines ${name}.out ${name}.expected ${b.line}`);
});
out.push('', 'echo "walkthrough: OK"');
process.stdout.write(`${out.join('\n')}\n`);
