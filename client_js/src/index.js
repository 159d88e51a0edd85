// The core: no DOM and no React. The <credit-balance> element and the useBalance hook
// live at their own export paths ('balance-client/element', 'balance-client/react') so
// importing this neither defines elements nor pulls in React.

export { BalanceClient } from './client.js';
export { CLOSE_CODES, closeCode, shouldReconnect } from './codes.js';
export { Backoff, backoffDelay } from './backoff.js';
export { tokenExpiry } from './jwt.js';
