#!/usr/bin/env node
/**
 * `stacyvm`: runs the server (`serve`), drives a running one (spawn, exec, list, kill) and
 * manages the local image store (`image …`).
 * Errors print as one line, `error: <code>: <message>`, and exit non-zero; `exec` exits with
 * the command's own exit code.
 */
import { Command, Option } from 'commander';
import { VERSION } from '../core/version.js';
import { ApiClient, ClientError } from './client.js';
import { registerImageCommands } from './image.js';
import { registerWorkerCommands } from './worker-command.js';

interface GlobalOptions {
  server: string;
  apiKey?: string;
}

interface SandboxWire {
  id: string;
  state: string;
  provider: string;
  image: string;
  memory_mb: number;
  vcpus: number;
  owner_id?: string;
  worker_id?: string;
  expires_at: string;
}

/** Exit status when the command ran past its deadline (as timeout(1) does). */
const EXIT_TIMEOUT = 124;

function fail(err: unknown): never {
  if (err instanceof ClientError) {
    process.stderr.write(`error: ${err.code}: ${err.message}\n`);
  } else {
    process.stderr.write(`error: ${err instanceof Error ? err.message : String(err)}\n`);
  }
  process.exit(1);
}

function client(cmd: Command): ApiClient {
  const g = cmd.optsWithGlobals<GlobalOptions>();
  return new ApiClient({ server: g.server, ...(g.apiKey ? { apiKey: g.apiKey } : {}) });
}

function positiveInt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer`);
    return n;
  };
}

const program = new Command();
program
  .name('stacyvm')
  .description('Self-hosted sandbox infrastructure')
  .addOption(new Option('--server <url>', 'server URL').env('STACYVM_SERVER').default('http://127.0.0.1:7423'))
  .addOption(new Option('--api-key <key>', 'API key').env('STACYVM_API_KEY'))
  .showHelpAfterError();

program
  .command('version')
  .description('print the version')
  .action(() => {
    console.log(`stacyvm ${VERSION}`);
  });

program
  .command('serve')
  .description('run the StacyVM server')
  .option('-c, --config <file>', 'stacyvm.yaml (default: $STACYVM_CONFIG)')
  .action(async (opts: { config?: string }) => {
    const { runServe } = await import('../main/serve.js');
    await runServe(opts.config);
  });

program
  .command('spawn')
  .description('create a sandbox and print its id')
  .option('--image <image>', 'image')
  .option('--provider <name>', 'provider')
  .option('--template <name>', 'template to spawn from')
  .option('--ttl <duration>', 'time to live, e.g. 30m')
  .option('--memory <mb>', 'memory in MiB', positiveInt('--memory'))
  .option('--vcpus <n>', 'virtual CPUs', positiveInt('--vcpus'))
  .option('--owner <id>', 'owner id')
  .option('--json', 'print the whole sandbox object')
  .action(async (opts: { image?: string; provider?: string; template?: string; ttl?: string; memory?: number; vcpus?: number; owner?: string; json?: boolean }, cmd: Command) => {
    const body: Record<string, unknown> = {};
    if (opts.image) body.image = opts.image;
    if (opts.provider) body.provider = opts.provider;
    if (opts.ttl) body.ttl = opts.ttl;
    if (opts.memory !== undefined) body.memory_mb = opts.memory;
    if (opts.vcpus !== undefined) body.vcpus = opts.vcpus;
    if (opts.owner) body.owner_id = opts.owner;
    const api = client(cmd);
    const sb = opts.template
      ? await api.json<SandboxWire>('POST', `/templates/${encodeURIComponent(opts.template)}/spawn`, body)
      : await api.json<SandboxWire>('POST', '/sandboxes', body);
    console.log(opts.json ? JSON.stringify(sb, null, 2) : sb.id);
  });

program
  .command('exec')
  .description('run a command in a sandbox, streaming its output; exits with its exit code')
  .argument('<id>', 'sandbox id')
  .argument('<command...>', 'command and arguments (put them after --)')
  .option('--shell', 'run through /bin/sh -c instead of executing argv directly')
  .option('--timeout <duration>', 'deadline, e.g. 30s')
  .option('-w, --workdir <dir>', 'working directory inside the sandbox')
  .option('-e, --env <KEY=VALUE...>', 'environment variables')
  .action(async (id: string, argv: string[], opts: { shell?: boolean; timeout?: string; workdir?: string; env?: string[] }, cmd: Command) => {
    const [command, ...args] = argv;
    if (command === undefined) throw new Error('missing command');
    const env: Record<string, string> = {};
    for (const kv of opts.env ?? []) {
      const eq = kv.indexOf('=');
      if (eq <= 0) throw new Error(`--env expects KEY=VALUE, got ${JSON.stringify(kv)}`);
      env[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
    const body: Record<string, unknown> = { command, args, mode: opts.shell ? 'shell' : 'argv', env };
    if (opts.timeout) body.timeout = opts.timeout;
    if (opts.workdir) body.workdir = opts.workdir;
    const abort = new AbortController();
    // Ctrl-C closes the stream, which makes the server kill the command.
    process.once('SIGINT', () => abort.abort());
    for await (const line of client(cmd).execStream(id, body, abort.signal)) {
      if (line.stream === 'stdout') process.stdout.write(line.data);
      else if (line.stream === 'stderr') process.stderr.write(line.data);
      else if (line.stream === 'exit') {
        await flush();
        process.exit(line.exit_code ?? 0);
      } else {
        await flush();
        process.stderr.write(`error: ${line.code ?? 'error'}: ${line.data}\n`);
        process.exit(line.code === 'timeout' ? EXIT_TIMEOUT : 1);
      }
    }
    throw new ClientError('unavailable', 'the exec stream ended without an exit status');
  });

program
  .command('list')
  .alias('ls')
  .description('list active sandboxes')
  .option('--json', 'print JSON')
  .action(async (opts: { json?: boolean }, cmd: Command) => {
    const list = await client(cmd).json<SandboxWire[]>('GET', '/sandboxes');
    if (opts.json) {
      console.log(JSON.stringify(list, null, 2));
      return;
    }
    const rows = [['ID', 'STATE', 'PROVIDER', 'IMAGE', 'WORKER', 'EXPIRES'], ...list.map((s) => [s.id, s.state, s.provider, s.image, s.worker_id ?? '-', s.expires_at])];
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
    for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd());
  });

program
  .command('kill')
  .alias('destroy')
  .description('destroy a sandbox')
  .argument('<id>', 'sandbox id')
  .action(async (id: string, _opts: unknown, cmd: Command) => {
    await client(cmd).json('DELETE', `/sandboxes/${encodeURIComponent(id)}`);
    console.log(`destroyed ${id}`);
  });

registerImageCommands(program);
registerWorkerCommands(program);

function flush(): Promise<void> {
  return new Promise((resolve) => process.stdout.write('', () => resolve()));
}

program.parseAsync(process.argv).catch(fail);
