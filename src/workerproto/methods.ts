/**
 * The worker RPC method table and the wire (snake_case) shape of every method's params and
 * result. The schemas are the single definition: types derive from them and the envelope
 * parser validates against them, so a field cannot be typed one way and checked another.
 *
 * Binary payloads (file content, streamed exec output) are base64, because a stream chunk may
 * end in the middle of a UTF-8 sequence and JSON strings cannot carry raw bytes.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { SANDBOX_ID_PATTERN } from '../core/ids.js';
import { WORKER_STATUSES } from '../core/types.js';
import type { WorkerScope } from './claims.js';

const ISO_UTC = '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d{1,9})?Z$';
const GO_DURATION = '^(0|((\\d+(\\.\\d*)?|\\.\\d+)(ns|us|µs|ms|s|m|h))+)$';
const BASE64 = '^[A-Za-z0-9+/]*={0,2}$';

const strict = { additionalProperties: false } as const;
// NUL cannot reach execve or a file name; refusing it here gives a clear 400 instead of an internal error.
const NO_NUL = '^[^\\u0000]*$';
const Text = Type.String({ pattern: NO_NUL });
const NonEmpty = Type.String({ minLength: 1, pattern: NO_NUL });
const StringMap = Type.Record(Type.String(), Text);
const EnvMap = Type.Record(Type.String({ pattern: '^[^=\\u0000]+$' }), Text, strict);
const FileMode = Type.Integer({ minimum: 0, maximum: 0o7777 });

/** Fencing token carried in the envelope of lease-required methods. */
export const WireLeaseSchema = Type.Object(
  {
    resource_id: NonEmpty,
    holder_id: NonEmpty,
    generation: Type.Integer({ minimum: 1 }),
    /** ISO-8601 UTC. */
    expires_at: Type.String({ pattern: ISO_UTC }),
  },
  strict,
);
export type WireLease = Static<typeof WireLeaseSchema>;

/** Identifies a runtime on the worker: the tuple the control plane persisted at spawn. */
const sandboxRef = {
  sandbox_id: Type.String({ pattern: SANDBOX_ID_PATTERN.source }),
  provider: NonEmpty,
  runtime_id: NonEmpty,
};

const Empty = Type.Object({}, strict);

const ExecParams = Type.Object(
  {
    ...sandboxRef,
    command: NonEmpty,
    args: Type.Array(Text),
    mode: Type.Union([Type.Literal('shell'), Type.Literal('argv')]),
    env: EnvMap,
    workdir: Type.Optional(NonEmpty),
    /** Go duration; the control plane has already applied the default and the cap. */
    timeout: Type.String({ pattern: GO_DURATION }),
  },
  strict,
);

const FileEntry = Type.Object(
  {
    name: Type.String(),
    path: Type.String(),
    size: Type.Integer({ minimum: 0 }),
    is_dir: Type.Boolean(),
    mod_time: Type.String({ pattern: ISO_UTC }),
    mode: FileMode,
  },
  strict,
);

const statusResult = <S extends string>(status: S) => Type.Object({ status: Type.Literal(status) }, strict);

export const METHODS = {
  'worker.heartbeat': {
    lease: false,
    scope: 'worker:heartbeat',
    params: Empty,
    result: Type.Object(
      {
        worker_id: NonEmpty,
        hostname: Type.String(),
        status: Type.Union(WORKER_STATUSES.map((s) => Type.Literal(s))),
        providers: Type.Array(Type.String()),
        capabilities: Type.Array(Type.String()),
        capacity: Type.Object(
          {
            max_sandboxes: Type.Optional(Type.Integer({ minimum: 0 })),
            max_sandboxes_per_owner: Type.Optional(Type.Integer({ minimum: 0 })),
            rpc_url: Type.Optional(Type.String()),
            preview_domain: Type.Optional(Type.String()),
          },
          strict,
        ),
      },
      strict,
    ),
  },
  'worker.spawn': {
    lease: true,
    scope: 'worker:spawn',
    params: Type.Object(
      {
        sandbox_id: sandboxRef.sandbox_id,
        provider: NonEmpty,
        image: NonEmpty,
        memory_mb: Type.Integer({ minimum: 1 }),
        vcpus: Type.Number({ exclusiveMinimum: 0 }),
        owner_id: Type.Union([Type.String(), Type.Null()]),
        env: EnvMap,
        network_mode: Type.Optional(NonEmpty),
        labels: StringMap,
      },
      strict,
    ),
    result: Type.Object({ sandbox_id: sandboxRef.sandbox_id, runtime_id: NonEmpty }, strict),
  },
  'worker.destroy': { lease: true, scope: 'worker:destroy', params: Type.Object(sandboxRef, strict), result: statusResult('destroyed') },
  'worker.status': {
    lease: false,
    scope: 'worker:status',
    params: Type.Object(sandboxRef, strict),
    result: Type.Object({ status: Type.Union([Type.Literal('running'), Type.Literal('stopped'), Type.Literal('missing')]) }, strict),
  },
  'worker.exec': {
    lease: false,
    scope: 'worker:exec',
    params: ExecParams,
    result: Type.Object(
      { exit_code: Type.Integer(), stdout: Type.String(), stderr: Type.String(), duration: Type.String({ pattern: GO_DURATION }) },
      strict,
    ),
  },
  'worker.exec_stream': {
    lease: false,
    scope: 'worker:exec',
    params: ExecParams,
    /** One response per chunk, all with the request's id; the `exit` chunk is last. */
    result: Type.Union([
      Type.Object({ stream: Type.Union([Type.Literal('stdout'), Type.Literal('stderr')]), data: Type.String({ pattern: BASE64 }) }, strict),
      Type.Object(
        { stream: Type.Literal('exit'), data: Type.Literal(''), exit_code: Type.Integer(), duration: Type.String({ pattern: GO_DURATION }) },
        strict,
      ),
    ]),
  },
  'worker.file_write': {
    lease: false,
    scope: 'worker:files',
    params: Type.Object({ ...sandboxRef, path: NonEmpty, content: Type.String({ pattern: BASE64 }), mode: Type.Optional(FileMode) }, strict),
    result: statusResult('written'),
  },
  'worker.file_read': {
    lease: false,
    scope: 'worker:files',
    params: Type.Object({ ...sandboxRef, path: NonEmpty }, strict),
    /**
     * Streamed like exec output, so a file of any size crosses in bounded memory: one response
     * per chunk, all with the request's id, then `{content: "", eof: true}`. A reply that ends
     * without the eof line is a truncated file, never a short one.
     */
    result: Type.Object({ content: Type.String({ pattern: BASE64 }), eof: Type.Optional(Type.Literal(true)) }, strict),
  },
  'worker.file_list': {
    lease: false,
    scope: 'worker:files',
    params: Type.Object({ ...sandboxRef, path: NonEmpty }, strict),
    result: Type.Object({ entries: Type.Array(FileEntry) }, strict),
  },
  'worker.file_delete': {
    lease: false,
    scope: 'worker:files',
    params: Type.Object({ ...sandboxRef, path: NonEmpty, recursive: Type.Boolean() }, strict),
    result: statusResult('deleted'),
  },
  'worker.file_move': {
    lease: false,
    scope: 'worker:files',
    params: Type.Object({ ...sandboxRef, old_path: NonEmpty, new_path: NonEmpty }, strict),
    result: statusResult('moved'),
  },
  'worker.file_chmod': {
    lease: false,
    scope: 'worker:files',
    params: Type.Object({ ...sandboxRef, path: NonEmpty, mode: FileMode }, strict),
    result: statusResult('changed'),
  },
  'worker.file_stat': {
    lease: false,
    scope: 'worker:files',
    params: Type.Object({ ...sandboxRef, path: NonEmpty }, strict),
    result: Type.Object({ entry: FileEntry }, strict),
  },
  'worker.file_glob': {
    lease: false,
    scope: 'worker:files',
    params: Type.Object({ ...sandboxRef, pattern: NonEmpty }, strict),
    result: Type.Object({ paths: Type.Array(Type.String()) }, strict),
  },
  'worker.logs': {
    lease: false,
    scope: 'worker:logs',
    params: Type.Object({ ...sandboxRef, lines: Type.Integer({ minimum: 1, maximum: 10_000 }) }, strict),
    result: Type.Object({ lines: Type.Array(Type.String()) }, strict),
  },
  'worker.inventory': {
    lease: false,
    scope: 'worker:status',
    params: Type.Object({ provider: NonEmpty }, strict),
    /** The provider's runtimes on this worker, for the control plane's reconciliation. */
    result: Type.Object(
      {
        runtimes: Type.Array(
          Type.Object(
            {
              runtime_id: NonEmpty,
              status: Type.Union([Type.Literal('running'), Type.Literal('stopped'), Type.Literal('missing')]),
              sandbox_id: Type.Optional(Type.String()),
              worker_id: Type.Optional(Type.String()),
              owner_id: Type.Optional(Type.String()),
              created_at: Type.Optional(Type.String({ pattern: ISO_UTC })),
            },
            strict,
          ),
        ),
      },
      strict,
    ),
  },
  'worker.renew_lease': {
    lease: true,
    scope: 'worker:lease',
    params: Type.Object({ resource_id: NonEmpty }, strict),
    /** The lease as the worker now fences with it. */
    result: WireLeaseSchema,
  },
  'worker.shutdown': {
    lease: false,
    // Draining decides whether new spawns are accepted, so it takes the right to control spawns.
    scope: 'worker:spawn',
    params: Empty,
    result: statusResult('draining'),
  },
} as const satisfies Record<string, MethodSpec>;

interface MethodSpec {
  /** Lease-required methods mutate ownership-sensitive state and are fenced by LeaseFence. */
  lease: boolean;
  scope: WorkerScope;
  params: TSchema;
  result: TSchema;
}

export type WorkerMethod = keyof typeof METHODS;
export type ParamsOf<M extends WorkerMethod> = Static<(typeof METHODS)[M]['params']>;
export type ResultOf<M extends WorkerMethod> = Static<(typeof METHODS)[M]['result']>;

export const WORKER_METHODS = Object.keys(METHODS) as WorkerMethod[];

/** True when `name` is a method of the table. */
export function isWorkerMethod(name: unknown): name is WorkerMethod {
  return typeof name === 'string' && Object.hasOwn(METHODS, name);
}

/** Whether the method must carry a lease (and is checked by LeaseFence on the worker). */
export function methodNeedsLease(method: WorkerMethod): boolean {
  return METHODS[method].lease;
}

/** The scope a credential needs to call the method. */
export function scopeOf(method: WorkerMethod): WorkerScope {
  return METHODS[method].scope;
}

/** The resource a lease-required call acts on, which must be the one its lease names. */
export function leasedResourceOf(method: WorkerMethod, params: Record<string, unknown>): string | undefined {
  if (!METHODS[method].lease) return undefined;
  const id = method === 'worker.renew_lease' ? params.resource_id : params.sandbox_id;
  return typeof id === 'string' ? id : undefined;
}
