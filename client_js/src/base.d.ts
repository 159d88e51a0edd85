import type { CreditSession } from './session.js';

/** What every credit element shares: the `session` property and the token-url, api-url, ws-url attributes. */
export class CreditElement extends HTMLElement {
  static sessionAttributes: string[];
  /** The session in use; set it to share one connection with the rest of the page. */
  session: CreditSession | null;
  /** The `locale` attribute, else the page's `<html lang>`. */
  readonly locale: string | undefined;
}
