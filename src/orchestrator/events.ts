import { newId } from '../core/ids.js';
import type { StacyEvent } from './service.js';

type Listener = (event: StacyEvent) => void;

/**
 * In-process fan-out of lifecycle events. Delivery is synchronous and best effort: a listener
 * that throws is isolated so it can never fail the operation that emitted the event.
 */
export class EventBus {
  private readonly listeners = new Set<Listener>();

  constructor(private readonly onListenerError: (err: unknown) => void = () => undefined) {}

  /** Registers a listener; returns the function that removes it. */
  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Builds an event with a fresh id and delivers it to every listener. */
  emit(type: StacyEvent['type'], time: number, fields: Omit<StacyEvent, 'id' | 'type' | 'time' | 'data'> & { data?: Record<string, unknown> } = {}): StacyEvent {
    const event: StacyEvent = { id: newId('ev'), type, time, ...fields, data: fields.data ?? {} };
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch (err) {
        this.onListenerError(err);
      }
    }
    return event;
  }

  get size(): number {
    return this.listeners.size;
  }
}
