import { describe, expect, it } from 'vitest';
import { ndjsonLines } from '../../src/core/ndjson.js';

async function lines(chunks: Array<Uint8Array | string>): Promise<string[]> {
  const out: string[] = [];
  for await (const line of ndjsonLines((async function* () {
    yield* chunks;
  })())) out.push(line);
  return out;
}

describe('ndjsonLines', () => {
  it('splits lines across chunks and skips blank ones', async () => {
    expect(await lines(['{"a":1}\n{"b"', ':2}\n\n', '  \n{"c":3}\n'])).toEqual(['{"a":1}', '{"b":2}', '{"c":3}']);
  });

  it('decodes a UTF-8 character split between two chunks', async () => {
    const bytes = Buffer.from('{"s":"é€😀"}\n');
    const out = await lines([bytes.subarray(0, 8), bytes.subarray(8, 9), bytes.subarray(9)]);
    expect(out).toEqual(['{"s":"é€😀"}']);
  });

  it('drops a last line cut off before its newline', async () => {
    expect(await lines(['{"a":1}\n{"exit"'])).toEqual(['{"a":1}']);
  });
});
