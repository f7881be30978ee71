import { describe, expect, it } from 'vitest';
import { normalizeSandboxPath } from '../../src/core/paths.js';
import { isStacyError } from '../../src/core/errors.js';

describe('normalizeSandboxPath', () => {
  it.each([
    ['/workspace/a.txt', '/workspace/a.txt'],
    ['/workspace//b/./c', '/workspace/b/c'],
    ['/', '/'],
  ])('%s → %s', (input, out) => expect(normalizeSandboxPath(input)).toBe(out));

  it.each(['../../etc/passwd', '/workspace/../../etc/passwd', '/a/..', 'relative.txt', '/a\0b', '', 42])(
    'rejects %j with bad_request',
    (input) => {
      expect(() => normalizeSandboxPath(input)).toThrow();
      try {
        normalizeSandboxPath(input);
      } catch (err) {
        expect(isStacyError(err, 'bad_request')).toBe(true);
      }
    },
  );
});
