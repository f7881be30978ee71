/**
 * Splits an NDJSON byte stream into its complete lines as they arrive. Bytes are decoded as
 * UTF-8 across chunk boundaries (a character may straddle two chunks) and blank lines are
 * skipped. A last line without its newline is a cut-off reply, not a line: it is dropped, and
 * callers notice the truncation by the closing line (exit, eof) that never came.
 */
export async function* ndjsonLines(source: AsyncIterable<Uint8Array | string>): AsyncGenerator<string> {
  const decoder = new TextDecoder('utf-8');
  let buffered = '';
  for await (const chunk of source) {
    buffered += typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line.trim() !== '') yield line;
    }
  }
}
