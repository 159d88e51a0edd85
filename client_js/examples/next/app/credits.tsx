'use client';
// The credit UI of this app: one CreditProvider (one WebSocket) feeds the hooks and the
// drop-in components. Everything updates from pushed frames; nothing here polls.
import { useRef, useState } from 'react';
import { CreditBalance, CreditGate, CreditLedger, CreditProvider, CreditPurchase, CreditUsage, useBalance, useLedger, usePlan } from 'balance-client/react';
import type { CreditGate as CreditGateElement, PaymentRequired } from 'balance-client/gate';

/** A user token from this app's own route, which mints it with the service key. */
async function fetchToken(): Promise<string> {
  const res = await fetch('/api/balance-token', { method: 'POST' });
  if (!res.ok) throw new Error(`/api/balance-token answered ${res.status}`);
  const { token } = (await res.json()) as { token: string };
  return token;
}

export function Credits({ apiUrl }: { apiUrl: string }) {
  return (
    <CreditProvider apiUrl={apiUrl} token={fetchToken}>
      <Header />
      <main style={{ display: 'grid', gridTemplateColumns: '1fr 360px', gap: 24, marginTop: 24 }}>
        <Studio />
        <aside style={{ display: 'grid', gap: 16, alignContent: 'start' }}>
          <CreditUsage />
          <CreditLedger pageSize={20} style={{ maxHeight: 420 }} />
        </aside>
      </main>
    </CreditProvider>
  );
}

function Header() {
  const { available, state, low } = useBalance();
  return (
    <header style={{ display: 'flex', alignItems: 'center', gap: 12 }}>
      <strong>Acme AI</strong>
      <span style={{ marginLeft: 'auto' }}>{state === 'open' ? 'Live' : state}</span>
      <CreditBalance low={20} />
      {low && available !== null ? <span role="status">Running low: {available} left</span> : null}
    </header>
  );
}

function Studio() {
  const gate = useRef<CreditGateElement>(null);
  const { plan } = usePlan();
  const { items } = useLedger({ pageSize: 5 });
  const [message, setMessage] = useState('');

  // One job id per click, sent again on a retry of the same job: the app's backend reserves
  // the credits under it (the catalog's price, with the service key) and takes them only if
  // the work succeeds; the browser never names an amount.
  async function generate(jobId = crypto.randomUUID()): Promise<void> {
    let res = await fetch('/api/generate', { method: 'POST', body: JSON.stringify({ jobId }) });
    for (let retry = 1; res.status === 503 && retry <= 2; retry++) {
      await new Promise((resolve) => setTimeout(resolve, 1000 * retry));
      res = await fetch('/api/generate', { method: 'POST', body: JSON.stringify({ jobId }) });
    }
    if (res.status === 402) {
      const outcome = await gate.current?.show((await res.json()) as PaymentRequired, { action: 'Generate image' });
      if (outcome === 'continue') return generate(); // topped up: a new attempt, a new job
      return;
    }
    setMessage(res.ok ? 'Generated.' : `Failed (${res.status}).`);
  }

  return (
    <section>
      <h1>Create</h1>
      <p>Plan: {plan?.plan ?? 'none'} · last change: {items[0] ? `${items[0].amount} (${items[0].reason ?? items[0].kind})` : '—'}</p>
      <button type="button" onClick={() => generate()}>Generate image</button>
      <p role="status">{message}</p>
      <h2>Buy credits</h2>
      <CreditPurchase featured="popular" onCheckout={(e) => console.info('checkout', e.detail.session_id)} />
      <CreditGate ref={gate} featured="popular" />
    </section>
  );
}
