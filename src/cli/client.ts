/**
 * A small HTTP client for the CLI: JSON calls and the NDJSON exec stream against a running
 * server. Failures become ClientError with the server's catalog code, so the CLI can print
 * one clear line.
 */
import { ndjsonLines } from '../core/ndjson.js';

export class ClientError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ClientError';
  }
}

export interface ClientOptions {
  server: string;
  apiKey?: string;
}

export interface StreamLine {
  stream: 'stdout' | 'stderr' | 'exit' | 'error';
  data: string;
  exit_code?: number;
  duration?: string;
  code?: string;
}

export class ApiClient {
  private readonly base: string;

  constructor(private readonly options: ClientOptions) {
    this.base = `${options.server.replace(/\/+$/, '')}/api/v1`;
  }

  private headers(json: boolean): Record<string, string> {
    const h: Record<string, string> = { accept: 'application/json' };
    if (json) h['content-type'] = 'application/json';
    if (this.options.apiKey) h['x-api-key'] = this.options.apiKey;
    return h;
  }

  private async send(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(`${this.base}${path}`, {
        method,
        headers: this.headers(body !== undefined),
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        ...(signal === undefined ? {} : { signal }),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      throw new ClientError('unavailable', `cannot reach ${this.options.server}: ${cause?.code ?? cause?.message ?? (err as Error).message}`);
    }
    if (!res.ok) {
      const text = await res.text();
      let code = `http_${res.status}`;
      let message = text.trim() || res.statusText;
      try {
        const parsed = JSON.parse(text) as { code?: unknown; message?: unknown };
        if (typeof parsed.code === 'string') code = parsed.code;
        if (typeof parsed.message === 'string') message = parsed.message;
      } catch {
        // not JSON: keep the raw text
      }
      throw new ClientError(code, message);
    }
    return res;
  }

  /** A JSON request; resolves with the decoded body. */
  async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.send(method, path, body);
    return (await res.json()) as T;
  }

  /** Runs an NDJSON exec and yields each line as it arrives. */
  async *execStream(id: string, body: Record<string, unknown>, signal?: AbortSignal): AsyncGenerator<StreamLine> {
    const res = await this.send('POST', `/sandboxes/${encodeURIComponent(id)}/exec`, { ...body, stream: true }, signal);
    if (res.body === null) return;
    for await (const line of ndjsonLines(res.body as unknown as AsyncIterable<Uint8Array>)) yield JSON.parse(line) as StreamLine;
  }
}
