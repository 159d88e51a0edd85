export { CreditBalance } from './element.js';
export { CreditPurchase } from './purchase.js';
export { CreditLedger } from './ledger.js';
export { CreditUsage } from './usage.js';
export { CreditGate } from './gate.js';
export { CreditSession, setDefaultSession, sharedSession, tokenFromUrl } from './session.js';
