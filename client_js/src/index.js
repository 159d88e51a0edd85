// The core: no DOM and no React. The elements and the React hooks live at their own export
// paths ('balance-client/elements', 'balance-client/react', ...) so importing this neither
// defines elements nor pulls in React.

export { BalanceClient } from './client.js';
export { CreditSession, RequestError, defaultSocketUrl, setDefaultSession, sharedSession, tokenFromUrl } from './session.js';
export { LedgerFeed, PlanFeed, planFeed, rowFromFrame } from './feeds.js';
export { CLOSE_CODES, closeCode, shouldReconnect } from './codes.js';
export { Backoff, backoffDelay } from './backoff.js';
export { tokenExpiry } from './jwt.js';
