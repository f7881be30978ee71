import { describe, expect, it } from 'vitest';
import { checkLeaseHistory, type LeaseEvent } from '../fixtures/lease-race.js';

const grant = (holderId: string, generation: number, at: number, expiresAt: number, extra: Partial<LeaseEvent> = {}): LeaseEvent => ({
  resourceId: 'r',
  holderId,
  generation,
  op: 'acquire',
  at,
  expiresAt,
  ...extra,
});

describe('checkLeaseHistory', () => {
  it('accepts a clean history: handover at expiry, after release, renewals, other resources', () => {
    expect(
      checkLeaseHistory([
        grant('a', 1, 0, 100),
        grant('a', 2, 50, 150, { op: 'renew' }),
        grant('b', 3, 150, 300, { releasedAt: 200 }),
        grant('c', 4, 200, 400),
        grant('a', 1, 0, 1000, { resourceId: 'other' }),
        grant('b', 2, 1000, 2000, { resourceId: 'other' }),
      ]),
    ).toEqual([]);
  });

  it('flags two holders whose grants overlap', () => {
    const violations = checkLeaseHistory([grant('a', 1, 0, 100), grant('b', 2, 99, 200)]);
    expect(violations).toHaveLength(1);
    expect(violations[0]).toMatchObject({ kind: 'overlap', resourceId: 'r' });
  });

  it('flags an overlap hidden behind a same-holder grant that reaches less far', () => {
    const violations = checkLeaseHistory([grant('a', 1, 0, 500), grant('b', 2, 10, 20), grant('b', 3, 30, 40)]);
    expect(violations.filter((v) => v.kind === 'overlap')).toHaveLength(2);
  });

  it('ends a grant at its holder’s release and at its holder’s next grant, not later', () => {
    expect(checkLeaseHistory([grant('a', 1, 0, 100, { releasedAt: 40 }), grant('b', 2, 40, 200)])).toEqual([]);
    // a re-acquired with a shorter TTL: its first grant no longer reaches 100.
    expect(checkLeaseHistory([grant('a', 1, 0, 100), grant('a', 2, 10, 50), grant('b', 3, 50, 200)])).toEqual([]);
    expect(checkLeaseHistory([grant('a', 1, 0, 100, { releasedAt: 41 }), grant('b', 2, 40, 200)])).toHaveLength(1);
  });

  it('flags a generation that goes backwards in time or repeats', () => {
    const backwards = checkLeaseHistory([grant('a', 2, 0, 100), grant('b', 1, 100, 200)]);
    expect(backwards.map((v) => v.kind)).toEqual(['generation_order']);
    const repeated = checkLeaseHistory([grant('a', 1, 0, 100), grant('b', 1, 100, 200)]);
    expect(repeated.map((v) => v.kind)).toEqual(['generation_order']);
  });

  it('orders same-instant grants by generation instead of flagging them', () => {
    expect(checkLeaseHistory([grant('a', 2, 100, 200), grant('b', 1, 0, 100, { releasedAt: 100 })])).toEqual([]);
  });
});
