import type { ForwardRefExoticComponent, ReactNode, RefAttributes, CSSProperties } from 'react';
import type { BalanceChange, BalanceError, BalanceUpdate, ConnectionState, TokenSource, WebSocketLike } from './client.js';
import type { CreditSession, PlanState, Transaction, CheckoutSession } from './session.js';
import type { LedgerFeedState, PlanFeedState } from './feeds.js';
import type { CreditBalance as CreditBalanceElement } from './element.js';
import type { CreditPurchase as CreditPurchaseElement } from './purchase.js';
import type { CreditLedger as CreditLedgerElement } from './ledger.js';
import type { CreditUsage as CreditUsageElement } from './usage.js';
import type { CreditGate as CreditGateElement, GateOutcome, PaymentRequired } from './gate.js';

export interface CreditProviderProps {
  /** A session made elsewhere; or token (+ apiUrl, wsUrl) for the provider to make one. */
  session?: CreditSession | null;
  apiUrl?: string;
  wsUrl?: string;
  token?: TokenSource | null;
  WebSocket?: new (url: string) => WebSocketLike;
  children?: ReactNode;
}

/** One session (one socket) for everything under it. It connects in the browser, after hydration. */
export function CreditProvider(props: CreditProviderProps): ReactNode;
/** The provider's session; null during server rendering and before it has been made. */
export function useCreditSession(): CreditSession | null;

export interface SessionOptions {
  /** Use this session instead of the provider's. */
  session?: CreditSession | null;
  /** Without a provider: the balance-server WebSocket URL (nothing connects while it and apiUrl are empty). */
  url?: string | null;
  apiUrl?: string;
  /** Without a provider: a token or a function returning one. */
  token?: TokenSource | null;
  WebSocket?: new (url: string) => WebSocketLike;
}

export interface UseBalanceOptions extends SessionOptions {
  /** Which account to report; default the first the server sends. */
  account?: string;
}

/** Numbers are null until the server has sent the account. */
export interface BalanceSnapshot {
  balance: number | null;
  held: number | null;
  available: number | null;
  version: number | null;
  low: boolean;
  state: ConnectionState;
  /** The change behind the latest pushed update, for toasts. */
  lastChange: BalanceChange | null;
  error: BalanceError | null;
}

export function useBalance(options?: UseBalanceOptions): BalanceSnapshot;

/** The PlanFeed's state: `plan` is GET /v1/me/plan, null until read. */
export interface PlanSnapshot extends PlanFeedState {
  /** Read it again now. */
  refresh(): void;
}

export function usePlan(options?: SessionOptions): PlanSnapshot;

/** The LedgerFeed's state: `items` newest first, pushed changes prepended as they come. */
export interface LedgerSnapshot extends LedgerFeedState {
  loadMore(): Promise<void>;
}

export function useLedger(options?: SessionOptions & { pageSize?: number }): LedgerSnapshot;

interface ElementProps {
  session?: CreditSession | null;
  className?: string;
  style?: CSSProperties;
  children?: ReactNode;
  locale?: string;
  tokenUrl?: string;
  apiUrl?: string;
  wsUrl?: string;
}

export const CreditBalance: ForwardRefExoticComponent<ElementProps & RefAttributes<CreditBalanceElement> & {
  account?: string;
  low?: number;
  label?: string;
  onUpdate?: (event: CustomEvent<BalanceUpdate>) => void;
  onChange?: (event: CustomEvent<BalanceUpdate>) => void;
  onStateChange?: (event: CustomEvent<ConnectionState>) => void;
  onError?: (event: CustomEvent<BalanceError>) => void;
}>;

interface PurchaseProps {
  provider?: 'stripe' | 'dodo';
  currency?: string;
  /** Comma list of package ids. */
  packages?: string;
  featured?: string;
  need?: number;
  payAsYouGo?: 'off';
  successUrl?: string;
  cancelUrl?: string;
  onCheckout?: (event: CustomEvent<CheckoutSession & { package: string | null }>) => void;
}

export const CreditPurchase: ForwardRefExoticComponent<ElementProps & RefAttributes<CreditPurchaseElement> & PurchaseProps & {
  onCheckoutError?: (event: CustomEvent<{ code: string; status: number; message: string }>) => void;
}>;

export const CreditLedger: ForwardRefExoticComponent<ElementProps & RefAttributes<CreditLedgerElement> & {
  pageSize?: number;
  onRow?: (event: CustomEvent<Transaction>) => void;
}>;

export const CreditUsage: ForwardRefExoticComponent<ElementProps & RefAttributes<CreditUsageElement> & {
  onUpdate?: (event: CustomEvent<PlanState>) => void;
}>;

export const CreditGate: ForwardRefExoticComponent<ElementProps & RefAttributes<CreditGateElement> & Omit<PurchaseProps, 'need' | 'packages' | 'payAsYouGo'> & {
  onOpen?: (event: CustomEvent<{ body: PaymentRequired; action: string }>) => void;
  onClose?: (event: CustomEvent<{ outcome: GateOutcome }>) => void;
}>;
