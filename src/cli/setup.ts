/**
 * `npm run setup`: builds the default image once (Debian bookworm + python3, answering to
 * `python`, `python:3`), printing mmdebstrap's progress, so the quick start works offline after.
 */
import { buildDefaultImage, imageStoreFor } from './image.js';

try {
  await buildDefaultImage(imageStoreFor(process.env.STACYVM_CONFIG), (line) => void process.stderr.write(`${line}\n`));
} catch (err) {
  process.stderr.write(`setup failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
