/** One WebSocket close code; `reconnect: false` means retrying with the same credentials cannot help. */
export interface CloseCode {
  readonly code: number;
  readonly name: string;
  readonly reconnect: boolean;
  readonly meaning: string;
}

/** The close-code table, twin of server/errors.py (plus 1006, which only browsers report). */
export const CLOSE_CODES: ReadonlyArray<CloseCode>;

/** The table entry for a close code; unknown codes come back with `name: 'unknown', reconnect: true`. */
export function closeCode(code: number): CloseCode;

/** Whether a socket closed with `code` should be retried. */
export function shouldReconnect(code: number): boolean;
