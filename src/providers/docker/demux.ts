/**
 * Splits Docker's multiplexed attach stream (used when a process has no TTY): every frame is
 * an 8-byte header — stream type (1 stdout, 2 stderr), three zero bytes, big-endian uint32
 * payload length — followed by the payload. Reading is pull-based, so a slow consumer stops
 * the socket from being read (backpressure all the way to the daemon).
 */
export interface DemuxedChunk {
  stream: 'stdout' | 'stderr';
  data: Buffer;
}

const HEADER = 8;

/** Yields frames from `source` in order; a truncated trailing frame is an error. */
export async function* demuxDockerStream(source: AsyncIterable<Buffer | string> | Iterable<Buffer | string>): AsyncGenerator<DemuxedChunk> {
  let pending: Buffer = Buffer.alloc(0);
  for await (const raw of source) {
    const chunk = typeof raw === 'string' ? Buffer.from(raw) : raw;
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    let offset = 0;
    while (pending.length - offset >= HEADER) {
      const type = pending[offset];
      const size = pending.readUInt32BE(offset + 4);
      if (pending.length - offset - HEADER < size) break;
      const data = pending.subarray(offset + HEADER, offset + HEADER + size);
      offset += HEADER + size;
      if (size === 0) continue;
      // Type 0 (stdin) is never sent for exec output; anything else is a protocol error.
      if (type === 1) yield { stream: 'stdout', data };
      else if (type === 2) yield { stream: 'stderr', data };
      else if (type !== 0) throw new Error(`docker stream: invalid frame type ${String(type)}`);
    }
    pending = offset === 0 ? pending : pending.subarray(offset);
  }
  if (pending.length > 0) throw new Error(`docker stream: truncated frame (${pending.length} bytes left)`);
}
