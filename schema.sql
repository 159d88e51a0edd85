-- balance-server schema: the one place the database is described, read top to bottom.
--
-- `balance-server migrate` applies it section by section (server/schema.py), recording each
-- in `schema_migrations`:
--   -- step: NAME         a change applied once, ever, in file order: tables, columns,
--                         indexes, types. Never edit one that has shipped; add a new step.
--   -- definitions: NAME  functions and views, CREATE OR REPLACE: re-applied when their
--                         text changes (or a step just ran), never touching table data.
--   -- index: NAME        one CREATE INDEX CONCURRENTLY, built once after the rest commits.
-- A re-run with nothing new takes no lock on any table.
--
-- Money is bigint everywhere. The ledger (transactions) is append-only; accounts carry the
-- running totals so a debit is one conditional UPDATE, and reconcile proves them equal.

-- ================================================================ tables

-- step: 001_tables
-- The tables of release 0.1.0. IF NOT EXISTS, so a database made by that release (which
-- had no schema_migrations) is adopted as it is.
CREATE TABLE IF NOT EXISTS accounts (
    account_id  text PRIMARY KEY,
    balance     bigint NOT NULL DEFAULT 0,
    held        bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    -- credits still left in unexpired lots; lets the hot path skip the lots table when 0
    expiring    bigint NOT NULL DEFAULT 0 CHECK (expiring >= 0),
    version     bigint NOT NULL DEFAULT 0,
    purchased   bigint NOT NULL DEFAULT 0,
    used        bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS transactions (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id     text NOT NULL REFERENCES accounts (account_id),
    kind           text NOT NULL CHECK (kind IN
                   ('grant', 'purchase', 'usage', 'refund', 'reversal', 'adjustment', 'expiry')),
    amount         bigint NOT NULL CHECK (amount <> 0),
    balance_after  bigint NOT NULL,
    version        bigint NOT NULL,
    reason         text,
    metadata       jsonb,
    hold_id        uuid,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS transactions_account_idx ON transactions (account_id, id);

CREATE TABLE IF NOT EXISTS idempotency_keys (
    account_id    text NOT NULL,
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    status        int,
    response      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_idx ON idempotency_keys (created_at);

CREATE TABLE IF NOT EXISTS holds (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id   text NOT NULL REFERENCES accounts (account_id),
    amount       bigint NOT NULL CHECK (amount > 0),
    status       text NOT NULL DEFAULT 'active'
                 CHECK (status IN ('active', 'captured', 'released', 'expired')),
    captured     bigint,
    reason       text,
    metadata     jsonb,
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz
);
CREATE INDEX IF NOT EXISTS holds_active_expiry_idx ON holds (expires_at) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS holds_account_idx ON holds (account_id);

CREATE TABLE IF NOT EXISTS credit_lots (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts (account_id),
    transaction_id  bigint NOT NULL REFERENCES transactions (id),
    amount          bigint NOT NULL CHECK (amount > 0),
    remaining       bigint NOT NULL CHECK (remaining >= 0),
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS credit_lots_open_idx
    ON credit_lots (account_id, expires_at, id) WHERE remaining > 0;
CREATE INDEX IF NOT EXISTS credit_lots_expiry_idx ON credit_lots (expires_at) WHERE remaining > 0;

-- The ledger is append-only: history is never rewritten, only compensated.
CREATE OR REPLACE FUNCTION balance__forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'transactions are append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'transactions_append_only'
                   AND tgrelid = 'transactions'::regclass) THEN
        CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
            FOR EACH ROW EXECUTE FUNCTION balance__forbid_change();
    END IF;
END $$;

-- Payments reported by providers (Stripe, Dodo). A payment is credited once, keyed by the
-- provider's payment id (Stripe PaymentIntent, Dodo payment), whichever event and delivery
-- carries it. Refunds are stored first and then applied against their payment, so a refund
-- that arrives before its payment waits for it.
CREATE TABLE IF NOT EXISTS payments (
    provider        text NOT NULL,
    payment_id      text NOT NULL,
    account_id      text NOT NULL REFERENCES accounts (account_id),
    credits         bigint NOT NULL CHECK (credits > 0),
    amount_paid     bigint,            -- ISO 4217 minor units (server/currencies.py)
    currency        text,
    -- credits accounted for by refunds so far: taken back, or (clamp policy) unrecovered
    reversed        bigint NOT NULL DEFAULT 0 CHECK (reversed >= 0 AND reversed <= credits),
    unrecovered     bigint NOT NULL DEFAULT 0 CHECK (unrecovered >= 0),
    transaction_id  bigint REFERENCES transactions (id),
    event_id        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, payment_id)
);
CREATE INDEX IF NOT EXISTS payments_account_idx ON payments (account_id);

-- One row per refund seen. Dodo: one per refund_id, `refunded` is that refund's amount.
-- Stripe: one per (charge, amount_refunded) snapshot, `refunded` is the running total.
CREATE TABLE IF NOT EXISTS payment_refunds (
    provider     text NOT NULL,
    refund_key   text NOT NULL,
    payment_id   text NOT NULL,
    refunded     bigint CHECK (refunded >= 0),   -- money, minor units
    paid         bigint CHECK (paid >= 0),       -- what it is a share of, when the event says
    cumulative   boolean NOT NULL,
    full_refund  boolean NOT NULL,
    event_id     text,
    applied_at   timestamptz,                    -- NULL while its payment has not arrived
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, refund_key)
);
CREATE INDEX IF NOT EXISTS payment_refunds_payment_idx ON payment_refunds (provider, payment_id);

-- Paid events that could not be fulfilled (missing or bad account / credits metadata):
-- answered 200 so the provider stops retrying, and kept here for an operator.
-- resolved_at is set when another event later fulfils the same payment.
CREATE TABLE IF NOT EXISTS webhook_events_unfulfilled (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider     text NOT NULL,
    event_id     text NOT NULL,
    event_type   text NOT NULL,
    payment_id   text,
    problem      text NOT NULL,
    payload      jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz,
    UNIQUE (provider, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_events_unfulfilled_open_idx
    ON webhook_events_unfulfilled (received_at) WHERE resolved_at IS NULL;

-- step: 002_result_codes
-- Movements answer with result codes, not HTTP statuses: the HTTP layer alone maps them.
-- Dropping the old type drops the 0.1.0 functions that return it; the definitions below
-- recreate them. The stored status of an idempotency key was an HTTP status too; the
-- route that replays a response knows its own status.
DROP TYPE IF EXISTS balance_result CASCADE;
DROP FUNCTION IF EXISTS balance__claim_key(text, text, bytea);
CREATE TYPE balance_result AS (
    result      text,     -- ok, insufficient, conflict, not_found, not_active, over_held
    replayed    boolean,
    body        jsonb,    -- the response, or the refusal's details
    account_id  text,     -- set when a change committed: the new absolute state to push
    balance     bigint,
    held        bigint,
    version     bigint,
    kind        text,
    amount      bigint,
    tx_id       bigint,
    hold_id     uuid
);
ALTER TABLE idempotency_keys DROP COLUMN IF EXISTS status;

-- step: 003_expired_held
-- Credits that expired while a hold reserved them. A hold does not shield credits from
-- expiry: they leave when the hold is released (or are spent if it is captured). Always
-- at most `held`. A constant default adds the column without rewriting the table.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS expired_held bigint NOT NULL DEFAULT 0
    CHECK (expired_held >= 0);

-- step: 004_payment_disputes
-- Disputes (chargebacks) of a payment. While one is open or lost, its share of the
-- payment's credits is taken back; when it is won they are given back. `taken` is what it
-- has taken so far; each change is one ledger row, keyed, so it happens exactly once.
CREATE TABLE IF NOT EXISTS payment_disputes (
    provider    text NOT NULL,
    dispute_id  text NOT NULL,
    payment_id  text NOT NULL,
    amount      bigint CHECK (amount >= 0),    -- money disputed, minor units, when known
    status      text NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    taken       bigint NOT NULL DEFAULT 0 CHECK (taken >= 0),
    event_id    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, dispute_id)
);
CREATE INDEX IF NOT EXISTS payment_disputes_payment_idx
    ON payment_disputes (provider, payment_id);

-- step: 005_grants
-- Every credit lives in a grant (a credit_lots row) with a priority: spending takes the
-- lowest priority number first, then the soonest expiry (none last), then the oldest.
-- Release 0.1.0 kept lots only for expiring credits; what else an account owns becomes
-- one grant at the purchase priority (never expiring, spent last: the customer's side of
-- any doubt). After this step, sum(open grants) = max(balance - expired_held, 0).
ALTER TABLE credit_lots ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'grant';
ALTER TABLE credit_lots ADD COLUMN IF NOT EXISTS priority int NOT NULL DEFAULT 50
    CHECK (priority BETWEEN 0 AND 100);
ALTER TABLE credit_lots ALTER COLUMN expires_at DROP NOT NULL;
ALTER TABLE credit_lots ALTER COLUMN transaction_id DROP NOT NULL;
UPDATE credit_lots l SET kind = t.kind, priority = CASE t.kind
        WHEN 'allowance' THEN 10 WHEN 'grant' THEN 20 WHEN 'refund' THEN 30
        WHEN 'adjustment' THEN 40 ELSE 50 END
    FROM transactions t WHERE t.id = l.transaction_id;
INSERT INTO credit_lots (account_id, kind, amount, remaining, priority)
    SELECT account_id, 'purchase', balance - expired_held - expiring,
           balance - expired_held - expiring, 50
    FROM accounts WHERE balance - expired_held - expiring > 0;
DROP INDEX IF EXISTS credit_lots_open_idx;
CREATE INDEX IF NOT EXISTS credit_lots_spend_idx
    ON credit_lots (account_id, priority, expires_at, id) WHERE remaining > 0;
-- These functions change their parameters or results: the definitions recreate them.
DROP FUNCTION IF EXISTS balance__consume_lots(text, bigint);
DROP FUNCTION IF EXISTS balance_post(text, bigint, text, bytea, text, bigint, text, jsonb,
                                     timestamptz, text, uuid);
DROP FUNCTION IF EXISTS balance_post_many(text[], bigint, text[], bytea[], text[], bigint[],
                                          text[], jsonb[], timestamptz[], text[]);
DROP FUNCTION IF EXISTS balance_reconcile();
ALTER TABLE accounts DROP COLUMN IF EXISTS expiring;
-- Spending not yet taken out of the grants. A debit only adds to it, on the account row it
-- updates anyway, so grants cost the hot path nothing; it is settled (in spending order)
-- before the grants change any other way: a new grant, an expiry. Between two settlements
-- the grants do not change, so spending later takes exactly what spending at once would.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS unsettled bigint NOT NULL DEFAULT 0
    CHECK (unsettled >= 0);
-- 0.1.0 opened a lot for the whole of a credit even when a debt absorbed part of it: what
-- lots hold beyond what the account owns is spending they have not settled yet.
UPDATE accounts a SET unsettled = l.open - GREATEST(a.balance - a.expired_held, 0)
FROM (SELECT account_id, sum(remaining) AS open FROM credit_lots WHERE remaining > 0
      GROUP BY account_id) l
WHERE l.account_id = a.account_id AND l.open > GREATEST(a.balance - a.expired_held, 0);

-- step: 006_checkouts
-- Checkout sessions created with the providers, one per (account, idempotency key), so a
-- retried request returns the same session instead of opening another.
CREATE TABLE IF NOT EXISTS checkouts (
    account_id    text NOT NULL,
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, key)
);

-- step: 007_plans
-- Plans (API.md "Plans and allowances"). The catalog's plans are copied here at start, so
-- a charge is priced and limited inside its own transaction. An account on a plan has its
-- anchor and the bounds of its current period: period k runs from anchor + k periods to
-- anchor + (k+1) periods, computed from the anchor each time so months stay calendar-true
-- (Jan 31 -> Feb 28 -> Mar 31). One plan_periods row per account and period granted: the
-- unique constraint that makes each renewal happen once, however many instances race.
CREATE TABLE IF NOT EXISTS plans (
    id          text PRIMARY KEY,
    allowance   bigint NOT NULL CHECK (allowance >= 0),
    period      text NOT NULL CHECK (period IN ('month', 'week', 'day')),
    rollover    bigint NOT NULL DEFAULT 0 CHECK (rollover >= 0),
    prices      jsonb NOT NULL DEFAULT '{}',
    limits      jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS plan text;  -- a plans id (rows never deleted)
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS plan_anchor timestamptz;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS period_index int;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS period_start timestamptz;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS period_end timestamptz;
-- The renewal job reads only the accounts that are due.
CREATE INDEX IF NOT EXISTS accounts_period_end_idx ON accounts (period_end)
    WHERE plan IS NOT NULL;
-- No foreign keys to accounts on these tables: each would add a trigger check to every
-- account update, the debit path's, and accounts are never deleted.
CREATE TABLE IF NOT EXISTS plan_periods (
    account_id      text NOT NULL,
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    plan            text NOT NULL,
    transaction_id  bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, period_start)
);
-- Units of each limited operation charged in a period.
CREATE TABLE IF NOT EXISTS plan_usage (
    account_id    text NOT NULL,
    operation     text NOT NULL,
    period_start  timestamptz NOT NULL,
    used          bigint NOT NULL CHECK (used >= 0),
    PRIMARY KEY (account_id, operation, period_start)
);
-- `allowance` joins the transaction kinds. NOT VALID: the rows already there satisfy the
-- old, narrower rule, and checking them would scan the ledger under a lock.
ALTER TABLE transactions DROP CONSTRAINT IF EXISTS transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN
    ('grant', 'purchase', 'usage', 'refund', 'reversal', 'adjustment', 'expiry', 'allowance'))
    NOT VALID;
-- Charges are priced and limited in SQL now: the functions take the operation.
DROP FUNCTION IF EXISTS balance_post(text, bigint, text, bytea, text, bigint, text, jsonb,
                                     timestamptz, text, uuid, int);
DROP FUNCTION IF EXISTS balance_post_many(text[], bigint, text[], bytea[], text[], bigint[],
                                          text[], jsonb[], timestamptz[], text[], int[]);

-- step: 008_alerts
-- Alerts and the outbox (API.md "Alerts, app webhooks, auto top-up"). An account's own
-- low_balance threshold (NULL: its plan's, else the catalog's), and where its `available`
-- stands against it: 'ok', 'low' (below the threshold) or 'depleted' (0 or less). The
-- trigger that moves alert_state is the one place crossings are decided.
-- No CHECKs here: every debit updates this row, and only the functions below write these
-- (the API bounds low_balance).
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS low_balance bigint;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS alert_state text NOT NULL DEFAULT 'ok';
ALTER TABLE plans ADD COLUMN IF NOT EXISTS low_balance bigint;
-- Push frames carry `low`: each movement's result says it.
ALTER TYPE balance_result ADD ATTRIBUTE low boolean;
-- App webhooks, written in the transaction of the change they tell of (the outbox). Any
-- instance claims due rows with SKIP LOCKED for a lease; one that dies mid-delivery loses
-- the lease and another delivers. webhook_id is the Standard Webhooks id, the same on
-- every attempt.
CREATE TABLE IF NOT EXISTS events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id       text NOT NULL UNIQUE
                     DEFAULT 'evt_' || replace(gen_random_uuid()::text, '-', ''),
    type             text NOT NULL,
    account_id       text,
    data             jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
CREATE INDEX IF NOT EXISTS events_due_idx ON events (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS events_status_idx ON events (status, id);
CREATE TABLE IF NOT EXISTS event_attempts (
    event_id    bigint NOT NULL REFERENCES events (id),
    attempt     int NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    status      int,            -- the receiver's HTTP status; NULL when none came
    latency_ms  int,
    error       text,
    PRIMARY KEY (event_id, attempt)
);

-- step: 009_auto_top_up
-- Auto top-up (Stripe): when `available` falls below an account's top_up_below, the alert
-- trigger writes one top_ups request and clears top_up_below (disarmed: no second request
-- while one is in flight); a worker in any instance turns the request into an off-session
-- PaymentIntent. Success (the ordinary payment webhook) or a decline arms it again; three
-- declines in a row turn it off.
CREATE TABLE IF NOT EXISTS auto_top_ups (
    account_id             text PRIMARY KEY,  -- no foreign key: see plan_periods
    package                text NOT NULL,
    threshold              bigint NOT NULL CHECK (threshold >= 0),
    stripe_customer        text NOT NULL,
    stripe_payment_method  text NOT NULL,
    enabled                boolean NOT NULL DEFAULT true,
    declines               int NOT NULL DEFAULT 0,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS top_up_below bigint;
CREATE TABLE IF NOT EXISTS top_ups (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id       text NOT NULL,
    package          text NOT NULL,
    -- As configured when requested: a retry sends exactly what the first try sent.
    stripe_customer        text NOT NULL,
    stripe_payment_method  text NOT NULL,
    status           text NOT NULL DEFAULT 'requested'
                     CHECK (status IN ('requested', 'created', 'succeeded', 'failed')),
    payment_intent   text,
    error            text,
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz
);
CREATE INDEX IF NOT EXISTS top_ups_due_idx ON top_ups (next_attempt_at)
    WHERE status = 'requested';
CREATE INDEX IF NOT EXISTS top_ups_intent_idx ON top_ups (payment_intent);

-- step: 010_alert_movements
-- Only a movement of `available` crosses a threshold (API.md "Alerts", v1.2).
-- alert_told: the last alert decided for the account was balance.low or balance.depleted,
-- so a movement back up across the threshold is a balance.recovered. A standing below it
-- reached silently (a new account, a threshold set, a plan assigned) was told nothing, and
-- its end is no recovery. Until now every standing below a threshold was announced.
-- alert_from: while one change of several movements is under way in its transaction (a
-- plan's renewal, a hold releasing credits that then expire, a payment and its refund),
-- the `available` it began at: its steps keep `low` right and tell nothing, and its end
-- decides its one crossing (balance__alerts_begin/_end). NULL otherwise.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS alert_told boolean NOT NULL DEFAULT false;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS alert_from bigint;
UPDATE accounts SET alert_told = true WHERE alert_state <> 'ok';
-- Accounts created at 0 and never moved still read 'ok'; new ones are born 'depleted'
-- (0 or less is depleted whatever the threshold). Told nothing: no recovery will follow.
UPDATE accounts SET alert_state = 'depleted' WHERE balance - held <= 0 AND alert_state = 'ok';

-- step: 011_period_grants
-- Allowance is granted once per account and period, whatever the changes of plan (issue
-- 24): a change keeps the period's plan_periods row (it used to delete it and grant anew),
-- and the row remembers what the period has granted. `granted`: the allowance the period
-- has put into the account, less what changes of plan took back (a removal takes rolled-
-- over allowance too, so it may be negative). What the period has had spent of its
-- allowance is then what it put in (granted, and what rolled into it) less what is still
-- open (balance_set_plan). A row written before holds its grant's amount: what a change
-- took back before is not known, so it counts as spent and nothing is granted twice.
ALTER TABLE plan_periods ADD COLUMN IF NOT EXISTS granted bigint NOT NULL DEFAULT 0;
UPDATE plan_periods p SET granted = t.amount FROM transactions t WHERE t.id = p.transaction_id;

-- step: 012_iso_minor_units
-- Amounts read from providers are kept in ISO 4217 minor units (issue 24; the catalog's,
-- server/currencies.py). Stripe's rows were kept in Stripe's units, which differ for ISK and
-- UGX (Stripe: hundredths, ISO: whole units) and MGA (Stripe: whole ariary, ISO: 2 decimals).
-- Money paid drops a fraction (an old fractional charge); refunded and disputed money counts
-- a fraction whole, as the server now reads them. Refunds whose payment never arrived have no
-- currency here and are left as they are.
UPDATE payments SET amount_paid = CASE WHEN lower(currency) = 'mga' THEN amount_paid * 100
                                       ELSE amount_paid / 100 END
WHERE provider = 'stripe' AND lower(currency) IN ('isk', 'ugx', 'mga') AND amount_paid IS NOT NULL;
UPDATE payment_refunds r SET
    refunded = CASE WHEN lower(p.currency) = 'mga' THEN r.refunded * 100
                    ELSE (r.refunded + 99) / 100 END,
    paid = CASE WHEN lower(p.currency) = 'mga' THEN r.paid * 100 ELSE r.paid / 100 END
FROM payments p
WHERE r.provider = 'stripe' AND p.provider = 'stripe' AND p.payment_id = r.payment_id
  AND lower(p.currency) IN ('isk', 'ugx', 'mga');
UPDATE payment_disputes d SET
    amount = CASE WHEN lower(p.currency) = 'mga' THEN d.amount * 100
                  ELSE (d.amount + 99) / 100 END
FROM payments p
WHERE d.provider = 'stripe' AND p.provider = 'stripe' AND p.payment_id = d.payment_id
  AND lower(p.currency) IN ('isk', 'ugx', 'mga');

-- step: 013_settings
-- What the triggers need of the server's configuration, as one row the server writes at
-- start (balance_configure): the app webhook types subscribed, and the catalog's default
-- low-balance threshold. They came as session settings on each connection, which a
-- transaction-mode pooler (PgBouncer, Supavisor) refuses or drops: then no alert and no
-- app webhook was ever written. Every instance of a deployment shares it.
CREATE TABLE IF NOT EXISTS settings (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    events       text[] NOT NULL DEFAULT '{}',
    low_balance  bigint
);
INSERT INTO settings DEFAULT VALUES ON CONFLICT DO NOTHING;

-- step: 014_one_write_per_key
-- An idempotency key is written once, with its response, when its movement is done
-- (balance__keep), instead of claimed first and filled in after: one row version per key
-- instead of two, and none for a refusal. These helpers went with the old way; the
-- definitions recreate the others with their new parameters.
DROP FUNCTION IF EXISTS balance__claim(text, text, bytea);
DROP FUNCTION IF EXISTS balance__remember(text, text, jsonb);
DROP FUNCTION IF EXISTS balance__refuse(text, text, bigint);
DROP FUNCTION IF EXISTS balance__over_limit(accounts, text, text, bigint, bigint);
-- Nothing ever filters or sorts by a stored response: ANALYZE sorting a sample of them (a
-- twentieth of PostgreSQL's time under a steady debit load) buys no plan.
ALTER TABLE idempotency_keys ALTER COLUMN response SET STATISTICS 0;

-- step: 015_hold_operations
-- A hold may name a priced operation (POST /v1/accounts/{id}/holds {"operation",
-- "quantity"}), priced and limited as a charge. `counted_in` is the plan period whose
-- plan_usage counted its quantity at placement (NULL: the plan does not limit it): what
-- its resolution does not use goes back there (balance_resolve_hold). balance_hold gains the
-- operation's parameters: a new signature, so the old one goes.
ALTER TABLE holds ADD COLUMN IF NOT EXISTS operation text;
ALTER TABLE holds ADD COLUMN IF NOT EXISTS quantity bigint;
ALTER TABLE holds ADD COLUMN IF NOT EXISTS counted_in timestamptz;
DROP FUNCTION IF EXISTS balance_hold(text, bigint, text, bytea, bigint, int, text, jsonb);

-- step: 016_operator
-- The operator API (issue 28). audit_log: one row per operator action (adjust, credit, plan,
-- alerts, auto top-up, event retry, review resolution, and what the console does), written
-- in the transaction of the change it records, naming the service key that acted. Nothing
-- updates or deletes it. No foreign keys, as on the plan tables: accounts are never deleted,
-- and a check on accounts would fire on the debit path's row.
CREATE TABLE IF NOT EXISTS audit_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL,      -- the key's name; console:<name> from the console
    action          text NOT NULL,
    account_id      text,
    subject         text,               -- what was acted on: account, event, hold or review
    transaction_id  bigint,
    detail          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_log_account_idx ON audit_log (account_id, id)
    WHERE account_id IS NOT NULL;
-- A payment under review keeps what its event said (so the catalog's amount can be offered
-- and credited later) and, once resolved, how: 'credit' or 'dismiss' by an operator,
-- 'fulfilled' when a later event credited the payment. resolution_hash is the operator's
-- request, so the same resolution sent again replays and another one conflicts.
ALTER TABLE webhook_events_unfulfilled
    ADD COLUMN IF NOT EXISTS account_id text,
    ADD COLUMN IF NOT EXISTS amount_paid bigint,
    ADD COLUMN IF NOT EXISTS currency text,
    ADD COLUMN IF NOT EXISTS package text,
    ADD COLUMN IF NOT EXISTS credits bigint,
    ADD COLUMN IF NOT EXISTS resolution text,
    ADD COLUMN IF NOT EXISTS resolution_hash bytea,
    ADD COLUMN IF NOT EXISTS resolved_account text,
    ADD COLUMN IF NOT EXISTS resolved_credits bigint,
    ADD COLUMN IF NOT EXISTS note text,
    ADD COLUMN IF NOT EXISTS resolved_by text,
    ADD COLUMN IF NOT EXISTS transaction_id bigint;
UPDATE webhook_events_unfulfilled SET resolution = 'fulfilled'
WHERE resolved_at IS NOT NULL AND resolution IS NULL;
DROP FUNCTION IF EXISTS balance_record_unfulfilled(text, text, text, text, text, jsonb);
-- The event list can be asked for one account's events; a retry names the event's account
-- (for the audit log).
DROP FUNCTION IF EXISTS balance_events_json(text, int, bigint);
DROP FUNCTION IF EXISTS balance_retry_event(bigint);

-- step: 017_spend_limits
-- Spend caps (issue 29, docs/api.md "Spend caps"): an account may spend (usage: debits, charges,
-- hold captures) and hold together at most spend_cap credits per UTC calendar hour, day or
-- month (spend_period). spend_used is what usage took in the window that starts at
-- spend_window; the spending that finds the window passed starts it again at 0. Kept on the
-- account's row, which every debit locks anyway, so the check and the count are one UPDATE
-- under that lock and concurrent debits on any number of instances cannot pass the cap
-- together. NULL spend_cap: no cap (the debit's fast path asks only that). Constant
-- defaults, so no table rewrite; no CHECKs, as in 008_alerts: every debit updates this row,
-- and only balance_set_limits writes the cap (the API bounds it).
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS spend_cap bigint;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS spend_period text;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS spend_window timestamptz;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS spend_used bigint NOT NULL DEFAULT 0;

-- step: 018_top_up_limits
-- Auto top-up buys up to a target balance and stays within a monthly spend (issue 29).
-- auto_top_ups: `target` (credits `available` is brought up to), `monthly_limit` (minor
-- units of `currency`, the package's currency when configured: a limit means one money),
-- `paused_until` (the limit stopped a top-up: nothing is requested until then, when the
-- jobs loop arms it again). top_ups: `available` and `target` as they stood when the
-- trigger requested it, so every try prices the same packages; `quantity`, `amount`,
-- `currency` and `priced_at` as the worker priced it the first time (the idempotency key's
-- request must not change on a retry), and what the month's spend adds up.
ALTER TABLE auto_top_ups
    ADD COLUMN IF NOT EXISTS target bigint,
    ADD COLUMN IF NOT EXISTS monthly_limit bigint,
    ADD COLUMN IF NOT EXISTS currency text,
    ADD COLUMN IF NOT EXISTS paused_until timestamptz;
ALTER TABLE top_ups
    ADD COLUMN IF NOT EXISTS available bigint,
    ADD COLUMN IF NOT EXISTS target bigint,
    ADD COLUMN IF NOT EXISTS quantity int,
    ADD COLUMN IF NOT EXISTS amount bigint,
    ADD COLUMN IF NOT EXISTS currency text,
    ADD COLUMN IF NOT EXISTS priced_at timestamptz;
-- The accounts whose pause ends (the jobs loop, each round): only the paused ones.
CREATE INDEX IF NOT EXISTS auto_top_ups_paused_idx ON auto_top_ups (paused_until)
    WHERE paused_until IS NOT NULL;
-- New parameters (target, limit, currency) and a claim that returns what was priced.
DROP FUNCTION IF EXISTS balance_set_auto_top_up(text, bigint, text, bigint, text, text);
DROP FUNCTION IF EXISTS balance_claim_top_ups(int, float8);

-- step: 019_subscriptions
-- Plans that follow a provider's subscription (issue 29). accounts.subscription names the
-- subscription ('stripe:sub_…', 'dodo:sub_…') whose paid periods drive the account's plan;
-- NULL for a plan the backend assigns, which renews by the calendar. Such a plan's periods
-- are the provider's and its allowance comes from a paid invoice only. Its allowance grants
-- do not expire at the period's end: the next paid period expires what is beyond the
-- rollover, the subscription's end all of it, and a renewal that failed (past_due) leaves
-- what is left spendable until the provider decides.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS subscription text;
-- One row per subscription seen. state_at is the provider's time of the newest event whose
-- state was applied: an older event delivered late changes no status (events arrive in any
-- order). cancel_at: when a cancellation at the period's end takes effect (the jobs end it).
CREATE TABLE IF NOT EXISTS subscriptions (
    provider         text NOT NULL,
    subscription_id  text NOT NULL,
    account_id       text NOT NULL,
    plan             text,
    status           text NOT NULL DEFAULT 'incomplete'
                     CHECK (status IN ('incomplete', 'active', 'past_due', 'canceled')),
    cancel_at        timestamptz,
    state_at         timestamptz NOT NULL DEFAULT '-infinity',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, subscription_id)
);
CREATE INDEX IF NOT EXISTS subscriptions_cancel_idx ON subscriptions (cancel_at)
    WHERE cancel_at IS NOT NULL AND status <> 'canceled';
-- One row per paid period: the unique key that grants a period's allowance once, whichever
-- event carries the payment (Stripe invoice.paid and invoice.payment_succeeded, Dodo
-- subscription.active and subscription.renewed, a redelivery, a retried invoice that was
-- paid at last). payment_id: the invoice or payment that paid it.
CREATE TABLE IF NOT EXISTS subscription_periods (
    provider         text NOT NULL,
    subscription_id  text NOT NULL,
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    account_id       text NOT NULL,
    plan             text NOT NULL,
    payment_id       text NOT NULL,
    transaction_id   bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, subscription_id, period_start)
);
-- The card a checkout saved for off-session payments (auto top-up uses it when its request
-- names none): the newest one the provider reported for the account.
CREATE TABLE IF NOT EXISTS saved_cards (
    account_id             text PRIMARY KEY,
    stripe_customer        text NOT NULL,
    stripe_payment_method  text NOT NULL,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
-- An allowance grant may carry what paid for it (the subscription's invoice or payment).
DROP FUNCTION IF EXISTS balance__grant_allowance(accounts, text, bigint);

-- step: 020_alert_floor
-- While an account stands 'ok', the least `available` at which a movement can neither cross
-- its low-balance threshold nor start its auto top-up: GREATEST(1, threshold, top_up_below),
-- kept by the alert trigger each time it runs. Its WHEN skips a movement that stays at or
-- above it, most debits, without calling the trigger. NULL: not known (every account until
-- its next movement, or a threshold changed outside its row: balance__forget_floors), so
-- the trigger runs.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS alert_floor bigint;

-- ================================================================ JSON shapes of API.md

-- definitions: json_shapes
-- PL/pgSQL, not SQL, though each is one expression: called from PL/pgSQL (every movement),
-- a SQL function is parsed and planned again in each transaction (its cached plan lives
-- in the caller's per-transaction expression state), which was a third of a debit's cost
-- in PostgreSQL. A PL/pgSQL function is compiled once per session and keeps its plans.

CREATE OR REPLACE FUNCTION balance__ts(t timestamptz) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    RETURN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
END $$;

CREATE OR REPLACE FUNCTION balance__account_json(a accounts) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN jsonb_build_object(
        'account_id', a.account_id, 'balance', a.balance, 'held', a.held,
        'available', a.balance - a.held, 'version', a.version,
        'purchased', a.purchased, 'used', a.used, 'updated_at', balance__ts(a.updated_at),
        'plan', a.plan, 'period_end', balance__ts(a.period_end),
        'low', a.alert_state <> 'ok');
END $$;

CREATE OR REPLACE FUNCTION balance__tx_json(t transactions) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN jsonb_build_object(
        'id', t.id, 'account_id', t.account_id, 'kind', t.kind, 'amount', t.amount,
        'balance_after', t.balance_after, 'version', t.version, 'reason', t.reason,
        'metadata', t.metadata, 'hold_id', t.hold_id, 'created_at', balance__ts(t.created_at));
END $$;

CREATE OR REPLACE FUNCTION balance__hold_json(h holds) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN jsonb_build_object(
        'id', h.id, 'account_id', h.account_id, 'amount', h.amount, 'status', h.status,
        'captured', h.captured, 'reason', h.reason, 'metadata', h.metadata,
        'operation', h.operation, 'quantity', h.quantity,
        'expires_at', balance__ts(h.expires_at), 'created_at', balance__ts(h.created_at));
END $$;

-- ================================================================ money movements
--
-- Each movement returns one balance_result: a result code ('ok', or why nothing was
-- written), replayed, body (the response JSON, or the refusal's details), and, when a
-- change committed, the account's new absolute state for the push frame.

-- definitions: movements

-- A refusal (or a change that moved nothing) after the movement renewed its account's
-- plan (p_renewed, balance__renew_due): the renewal commits, so the result carries the
-- account's state and the renewal's last change, for the push.
CREATE OR REPLACE FUNCTION balance__after_renewal(p_res balance_result,
                                                  p_renewed balance_result)
RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
BEGIN
    IF p_renewed.account_id IS NULL THEN
        RETURN p_res;
    END IF;
    SELECT * INTO v_acc FROM accounts WHERE account_id = p_renewed.account_id;
    p_res.account_id := v_acc.account_id;
    p_res.balance := v_acc.balance;
    p_res.held := v_acc.held;
    p_res.version := v_acc.version;
    p_res.low := v_acc.alert_state <> 'ok';
    p_res.kind := p_renewed.kind;
    p_res.amount := p_renewed.amount;
    p_res.tx_id := p_renewed.tx_id;
    RETURN p_res;
END $$;

-- The row a new account is born with (what balance__ensure inserts; the other columns
-- take their defaults), and what a read of an account never moved shows.
CREATE OR REPLACE FUNCTION balance__born(p_account text, p_welcome bigint) RETURNS accounts
LANGUAGE plpgsql AS $$
DECLARE
    v accounts;
BEGIN
    v.account_id := p_account;
    v.balance := p_welcome;
    v.version := CASE WHEN p_welcome > 0 THEN 1 ELSE 0 END;
    v.alert_state := balance__standing(p_welcome, balance__default_threshold());
    v.held := 0;
    v.expired_held := 0;
    v.unsettled := 0;
    v.purchased := 0;
    v.used := 0;
    v.spend_used := 0;
    v.alert_told := false;
    v.created_at := now();
    v.updated_at := now();
    RETURN v;
END $$;

-- Creates the account on first mention, granting the welcome credits exactly once
-- (the INSERT's conflict check is what makes "once" hold under concurrency). It is born
-- with them and where they stand against the catalog's threshold: being created is no
-- movement, so it crosses nothing (API.md "Alerts").
CREATE OR REPLACE FUNCTION balance__ensure(p_account text, p_welcome bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO accounts (account_id, balance, version, alert_state)
    SELECT b.account_id, b.balance, b.version, b.alert_state
    FROM balance__born(p_account, p_welcome) b
    ON CONFLICT DO NOTHING;
    IF FOUND AND p_welcome > 0 THEN
        INSERT INTO transactions (account_id, kind, amount, balance_after, version, reason)
        VALUES (p_account, 'grant', p_welcome, p_welcome, 1, 'welcome credits');
        INSERT INTO credit_lots (account_id, kind, amount, remaining, priority)
        VALUES (p_account, 'grant', p_welcome, p_welcome, 20);
    END IF;
END $$;

-- Takes up to p_amount out of the account's grants in spending order: lowest priority
-- number, then soonest expiry (none last), then oldest (balance__settle calls it).
CREATE OR REPLACE FUNCTION balance__spend_grants(p_account text, p_amount bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_left bigint := p_amount;
    v_lot record;
    v_take bigint;
BEGIN
    FOR v_lot IN
        SELECT id, remaining FROM credit_lots
        WHERE account_id = p_account AND remaining > 0
        ORDER BY priority, expires_at, id FOR UPDATE
    LOOP
        v_take := LEAST(v_lot.remaining, v_left);
        UPDATE credit_lots SET remaining = remaining - v_take WHERE id = v_lot.id;
        v_left := v_left - v_take;
        EXIT WHEN v_left <= 0;
    END LOOP;
END $$;

-- Takes the account's unsettled spending out of its grants (the caller holds the account).
CREATE OR REPLACE FUNCTION balance__settle(p_account text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_unsettled bigint;
BEGIN
    SELECT unsettled INTO v_unsettled FROM accounts WHERE account_id = p_account;
    IF v_unsettled > 0 THEN
        PERFORM balance__spend_grants(p_account, v_unsettled);
        UPDATE accounts SET unsettled = 0 WHERE account_id = p_account;
    END IF;
END $$;

-- The default priority of a grant opened by a movement of this kind (API.md "Grants").
-- PL/pgSQL, as the JSON shapes are: called from PL/pgSQL, a SQL function is planned anew in
-- every transaction.
CREATE OR REPLACE FUNCTION balance__priority(p_kind text) RETURNS int
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN CASE p_kind WHEN 'allowance' THEN 10 WHEN 'grant' THEN 20 WHEN 'refund' THEN 30
                       WHEN 'adjustment' THEN 40 ELSE 50 END;
END $$;

-- Idempotency, in two halves around a movement, so that a key costs one write.
-- balance__replay reads the key and writes nothing: NULL result for a new key (the caller
-- proceeds), else the stored response to replay, or 'conflict' for another body.
-- balance__keep stores the key, its fingerprint and the response in one INSERT once the
-- movement is done; a refusal stores nothing, so a retry after a top-up can succeed (but
-- reads the key again first: balance__refusal).
-- The unique key is what makes a movement happen once. A concurrent request with the same
-- key that committed after our read (it held the account's row, which we then waited for)
-- or is still inserting it makes our INSERT conflict: the statement then fails whole with
-- serialization_failure, writing nothing, and the server runs it again (server/db.py),
-- when the read replays it. A key repeated within one transaction (a batch) is seen by the
-- read, as the batch's rows run in (account, key) order.
CREATE OR REPLACE FUNCTION balance__replay(p_account text, p_key text, p_hash bytea)
RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_hash bytea;
    v_body jsonb;
    v_res balance_result;
BEGIN
    SELECT k.request_hash, k.response INTO v_hash, v_body
    FROM idempotency_keys k WHERE k.account_id = p_account AND k.key = p_key;
    IF FOUND THEN
        v_res.replayed := true;
        IF v_hash <> p_hash THEN
            v_res.result := 'conflict';
        ELSE
            v_res.result := 'ok';
            v_res.body := v_body;
        END IF;
    END IF;
    RETURN v_res;
END $$;

CREATE OR REPLACE FUNCTION balance__keep(p_account text, p_key text, p_hash bytea,
                                         p_body jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO idempotency_keys (account_id, key, request_hash, response)
    VALUES (p_account, p_key, p_hash, p_body) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'BL003: account %: a request with the same idempotency key committed '
            'meanwhile; run it again to replay that one', p_account
            USING ERRCODE = 'serialization_failure';
    END IF;
END $$;

-- A refusal (p_res), unless a request with the same key committed while this one waited for
-- the account's row: then that request's answer, replayed (or 'conflict' for another body).
-- The key is read again in a snapshot taken after the wait. Without it, the retry of a
-- debit that took the last credits, sent while the first was still committing, would
-- answer 402 though the first was charged: one key, two answers.
CREATE OR REPLACE FUNCTION balance__refusal(p_account text, p_key text, p_hash bytea,
                                            p_res balance_result)
RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_res balance_result := balance__replay(p_account, p_key, p_hash);
BEGIN
    IF v_res.result IS NOT NULL THEN
        RETURN v_res;
    END IF;
    RETURN p_res;
END $$;

-- 'insufficient': writes nothing.
CREATE OR REPLACE FUNCTION balance__refuse(p_account text, p_required bigint)
RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
    v_res balance_result;
BEGIN
    SELECT * INTO v_acc FROM accounts WHERE account_id = p_account;
    v_res.result := 'insufficient';
    v_res.replayed := false;
    v_res.body := jsonb_build_object(
        'required', p_required, 'available', v_acc.balance - v_acc.held);
    RETURN v_res;
END $$;

-- 'limit_reached' when charging p_quantity more of p_operation would pass its plan's limit
-- in the account's current period (one that has not ended: balance_post renews first):
-- writes nothing, as a refusal for insufficient credits. NULL result when the charge fits.
CREATE OR REPLACE FUNCTION balance__over_limit(
    p_acc accounts, p_operation text, p_quantity bigint, p_limit bigint
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_used bigint;
    v_res balance_result;
BEGIN
    SELECT u.used INTO v_used FROM plan_usage u WHERE u.account_id = p_acc.account_id
        AND u.operation = p_operation AND u.period_start = p_acc.period_start;
    v_used := COALESCE(v_used, 0);
    IF v_used + p_quantity > p_limit THEN
        v_res.result := 'limit_reached';
        v_res.replayed := false;
        v_res.body := jsonb_build_object('operation', p_operation, 'limit', p_limit,
            'used', v_used, 'resets_at', balance__ts(p_acc.period_end));
    END IF;
    RETURN v_res;
END $$;

-- Spend caps (step 017_spend_limits). The window of a period is the UTC calendar hour, day
-- or month holding now; its end is computed in UTC too, whatever the session's time zone
-- (a month added in another zone would end it at that zone's midnight).
CREATE OR REPLACE FUNCTION balance__spend_window(p_period text) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN date_trunc(p_period, now(), 'UTC');
END $$;

CREATE OR REPLACE FUNCTION balance__spend_end(p_window timestamptz, p_period text)
RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN ((p_window AT TIME ZONE 'UTC') + ('1 ' || p_period)::interval) AT TIME ZONE 'UTC';
END $$;

-- When the window a spending of the stored window counts in ends (a cap's `resets_at`).
CREATE OR REPLACE FUNCTION balance__spend_resets(p_window timestamptz, p_period text)
RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN balance__spend_end(balance__spend_roll(p_window, p_period), p_period);
END $$;

-- What usage took in the current window: the stored count while its window runs, 0 once it
-- has passed (nothing rolls it but the next spending, so a quiet account costs nothing).
-- A transaction that began before a window's end, and got the row after one that began in
-- the next window rolled it, finds the stored window later than its own: it counts there
-- (and balance__spend_roll keeps that window), never starting the new window again at 0.
CREATE OR REPLACE FUNCTION balance__window_used(p_window timestamptz, p_period text,
                                                p_used bigint)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN CASE WHEN p_window >= balance__spend_window(p_period) THEN p_used ELSE 0 END;
END $$;

-- The window a spending counts in: the current one, or a later one already stored.
CREATE OR REPLACE FUNCTION balance__spend_roll(p_window timestamptz, p_period text)
RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN GREATEST(p_window, balance__spend_window(p_period));
END $$;

-- 'limit_reached' when p_amount more spent or held would take what the account's usage took
-- in this window plus what it holds past its spend cap; NULL result when it fits or there is
-- no cap. No `operation` in the body: that is how a client tells it from a plan's limit.
CREATE OR REPLACE FUNCTION balance__over_cap(p_acc accounts, p_amount bigint)
RETURNS balance_result LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_taken bigint;
    v_res balance_result;
BEGIN
    IF p_acc.spend_cap IS NULL THEN
        RETURN v_res;
    END IF;
    v_taken := balance__window_used(p_acc.spend_window, p_acc.spend_period, p_acc.spend_used)
               + p_acc.held;
    IF v_taken + p_amount > p_acc.spend_cap THEN
        v_res.result := 'limit_reached';
        v_res.replayed := false;
        v_res.body := jsonb_build_object('limit', p_acc.spend_cap, 'used', v_taken,
            'period', p_acc.spend_period, 'resets_at', balance__ts(balance__spend_resets(
                p_acc.spend_window, p_acc.spend_period)));
    END IF;
    RETURN v_res;
END $$;

-- The refusal of a debit, charge or hold of p_amount whose UPDATE found no room: the spend
-- cap's 'limit_reached' when the cap refuses it (whatever the balance would say: raising
-- the cap alone would not let it through, topping up alone neither), else 'insufficient'.
CREATE OR REPLACE FUNCTION balance__refuse_spending(p_account text, p_amount bigint)
RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
    v_res balance_result;
BEGIN
    SELECT * INTO v_acc FROM accounts WHERE account_id = p_account;
    v_res := balance__over_cap(v_acc, p_amount);
    IF v_res.result IS NULL THEN
        v_res := balance__refuse(p_account, p_amount);
    END IF;
    RETURN v_res;
END $$;

-- The account's plan's terms for p_quantity of p_operation, for a charge or an operation's
-- hold: takes the account's row lock (renewing first a plan whose period has ended, what
-- `renewed` reports), then reads the plan's price (NULL: the catalog's) and per-period limit
-- (NULL: none); `refusal` is 'limit_reached' when p_quantity more would pass that limit.
CREATE OR REPLACE FUNCTION balance__operation_terms(
    p_account text, p_operation text, p_quantity bigint, OUT price bigint,
    OUT op_limit bigint, OUT refusal balance_result, OUT renewed balance_result
) LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
BEGIN
    SELECT * INTO v_acc FROM accounts WHERE account_id = p_account FOR UPDATE;
    IF v_acc.period_end <= now() AND v_acc.subscription IS NULL THEN
        renewed := balance__renew_due(p_account);
        SELECT * INTO v_acc FROM accounts WHERE account_id = p_account;
    END IF;
    IF v_acc.plan IS NOT NULL THEN
        SELECT (p.prices ->> p_operation)::bigint, (p.limits ->> p_operation)::bigint
        INTO price, op_limit FROM plans p WHERE p.id = v_acc.plan;
        IF op_limit IS NOT NULL THEN
            refusal := balance__over_limit(v_acc, p_operation, p_quantity, op_limit);
        END IF;
    END IF;
END $$;

-- Counts p_quantity of p_operation against its plan's limit, in the period from p_start.
CREATE OR REPLACE FUNCTION balance__count_use(
    p_account text, p_operation text, p_start timestamptz, p_quantity bigint
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO plan_usage AS u (account_id, operation, period_start, used)
    VALUES (p_account, p_operation, p_start, p_quantity)
    ON CONFLICT (account_id, operation, period_start)
    DO UPDATE SET used = u.used + EXCLUDED.used;
END $$;

-- One ledger row: debit ('usage', p_amount < 0), credits, adjustments, reversals.
-- p_mode 'available': a negative amount needs balance - held >= |amount| (else
-- 'insufficient'); 'debt': applied in full even below zero (reversals only);
-- 'clamp': takes at most what the balance holds; the shortfall is reported in the body.
-- A charge (p_operation set, p_amount = -(catalog price x p_quantity)) is priced at the
-- account's plan's override when it has one, and refused with 'limit_reached' when it would
-- take the plan's per-period limit of that operation over: both decided here, under the
-- account's row lock, so concurrent charges cannot pass a limit together.
-- A movement that takes credits at or after its account's period end renews the plan
-- first (balance__renew_due), so it never counts in a period that has ended nor spends
-- allowance that should have expired. While the period runs that costs the debit one
-- comparison on the row it updates anyway.
-- balance__post is the movement; balance_post, below, is how the server calls one alone.
-- Our other functions call balance__post: an entry function is pinned to its search_path
-- (server/schema.py), which costs each call a save and restore of the setting, and a
-- batch (balance_post_many) would pay it per movement.
CREATE OR REPLACE FUNCTION balance__post(
    p_account text, p_welcome bigint, p_key text, p_hash bytea, p_kind text,
    p_amount bigint, p_reason text, p_metadata jsonb, p_expires_at timestamptz,
    p_mode text, p_hold uuid DEFAULT NULL, p_priority int DEFAULT NULL,
    p_operation text DEFAULT NULL, p_quantity bigint DEFAULT NULL
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
    v_tx transactions;
    v_amount bigint := p_amount;
    v_short bigint := 0;
    v_granted bigint;
    v_res balance_result;
    v_price bigint;
    v_limit bigint;
    v_terms record;  -- balance__operation_terms
    v_renewed balance_result;
BEGIN
    v_res := balance__replay(p_account, p_key, p_hash);
    IF v_res.result IS NOT NULL THEN
        RETURN v_res;
    END IF;

    IF p_operation IS NOT NULL THEN
        PERFORM balance__ensure(p_account, p_welcome);
        SELECT * INTO v_terms FROM balance__operation_terms(p_account, p_operation, p_quantity);
        v_price := v_terms.price;
        v_limit := v_terms.op_limit;
        v_renewed := v_terms.renewed;
        IF (v_terms.refusal).result IS NOT NULL THEN
            RETURN balance__after_renewal(
                balance__refusal(p_account, p_key, p_hash, v_terms.refusal), v_renewed);
        END IF;
        IF v_price IS NOT NULL THEN
            p_metadata := p_metadata || jsonb_build_object('unit_cost', v_price);
            p_amount := -(v_price * p_quantity);
            v_amount := p_amount;
        END IF;
    END IF;

    IF p_amount < 0 AND p_mode = 'available' THEN
        UPDATE accounts SET
            balance = balance + p_amount, version = version + 1, updated_at = now(),
            used = used + CASE WHEN p_kind = 'usage' THEN -p_amount ELSE 0 END,
            unsettled = unsettled - p_amount
        WHERE account_id = p_account AND balance - held >= -p_amount
          AND (period_end > now() OR period_end IS NULL OR subscription IS NOT NULL)
          AND spend_cap IS NULL
        RETURNING * INTO v_acc;
        IF NOT FOUND THEN
            PERFORM balance__ensure(p_account, p_welcome);
            IF v_renewed.account_id IS NULL THEN
                v_renewed := balance__renew_due(p_account);
            END IF;
            -- A capped account's usage rolls its window, is checked against its cap and
            -- counted in this one UPDATE: its row lock (and, waiting on it, the re-check of
            -- the WHERE on the row's newest version) is what keeps spent + held within the
            -- cap under any concurrency. An adjustment is not spending: no cap applies.
            UPDATE accounts SET
                balance = balance + p_amount, version = version + 1, updated_at = now(),
                used = used + CASE WHEN p_kind = 'usage' THEN -p_amount ELSE 0 END,
                unsettled = unsettled - p_amount,
                spend_window = CASE WHEN p_kind = 'usage' AND spend_cap IS NOT NULL
                    THEN balance__spend_roll(spend_window, spend_period) ELSE spend_window END,
                spend_used = CASE WHEN p_kind = 'usage' AND spend_cap IS NOT NULL
                    THEN balance__window_used(spend_window, spend_period, spend_used) - p_amount
                    ELSE spend_used END
            WHERE account_id = p_account AND balance - held >= -p_amount
              AND (spend_cap IS NULL OR p_kind <> 'usage'
                   OR balance__window_used(spend_window, spend_period, spend_used) + held
                      - p_amount <= spend_cap)
            RETURNING * INTO v_acc;
        END IF;
        IF NOT FOUND THEN
            RETURN balance__after_renewal(
                balance__refusal(p_account, p_key, p_hash, CASE WHEN p_kind = 'usage'
                    THEN balance__refuse_spending(p_account, -p_amount)
                    ELSE balance__refuse(p_account, -p_amount) END),
                v_renewed);
        END IF;
    ELSE
        PERFORM balance__ensure(p_account, p_welcome);
        IF p_amount < 0 THEN  -- a reversal takes credits too
            v_renewed := balance__renew_due(p_account);
        END IF;
        IF p_mode = 'clamp' AND p_amount < 0 THEN
            SELECT * INTO v_acc FROM accounts WHERE account_id = p_account FOR UPDATE;
            v_amount := -LEAST(-p_amount, GREATEST(v_acc.balance, 0));
            v_short := -p_amount + v_amount;
        END IF;
        IF v_amount <> 0 THEN
            UPDATE accounts SET
                balance = balance + v_amount, version = version + 1, updated_at = now(),
                purchased = purchased + CASE WHEN p_kind = 'purchase' THEN v_amount ELSE 0 END,
                used = GREATEST(used - CASE WHEN p_kind = 'refund' THEN v_amount ELSE 0 END, 0),
                unsettled = unsettled + GREATEST(-v_amount, 0)
            WHERE account_id = p_account
            RETURNING * INTO v_acc;
        END IF;
    END IF;

    IF v_limit IS NOT NULL THEN
        PERFORM balance__count_use(p_account, p_operation, v_acc.period_start, p_quantity);
    END IF;

    IF v_amount <> 0 THEN
        IF v_amount > 0 AND v_acc.unsettled > 0 THEN
            PERFORM balance__settle(p_account);  -- before the grants change
        END IF;
        INSERT INTO transactions
            (account_id, kind, amount, balance_after, version, reason, metadata, hold_id)
        VALUES (p_account, p_kind, v_amount, v_acc.balance, v_acc.version, p_reason, p_metadata, p_hold)
        RETURNING * INTO v_tx;
        -- A credit opens a grant for what it adds above a debt (a debt absorbs the rest).
        v_granted := LEAST(v_amount, GREATEST(v_acc.balance - v_acc.expired_held, 0));
        IF v_granted > 0 THEN
            INSERT INTO credit_lots
                (account_id, transaction_id, kind, amount, remaining, priority, expires_at)
            VALUES (p_account, v_tx.id, p_kind, v_granted, v_granted,
                    COALESCE(p_priority, balance__priority(p_kind)), p_expires_at);
        END IF;
    END IF;

    v_res.result := 'ok';
    v_res.replayed := false;
    v_res.body := jsonb_build_object(
        'transaction', CASE WHEN v_amount <> 0 THEN balance__tx_json(v_tx) END,
        'account', balance__account_json(v_acc));
    IF v_short <> 0 THEN
        v_res.body := v_res.body || jsonb_build_object('unrecovered', v_short);
    END IF;
    PERFORM balance__keep(p_account, p_key, p_hash, v_res.body);
    IF v_amount <> 0 THEN
        v_res.account_id := p_account;
        v_res.balance := v_acc.balance;
        v_res.low := v_acc.alert_state <> 'ok';
        v_res.held := v_acc.held;
        v_res.version := v_acc.version;
        v_res.kind := p_kind;
        v_res.amount := v_amount;
        v_res.tx_id := v_tx.id;
        v_res.hold_id := p_hold;
    ELSE
        v_res := balance__after_renewal(v_res, v_renewed);
    END IF;
    RETURN v_res;
END $$;

CREATE OR REPLACE FUNCTION balance_post(
    p_account text, p_welcome bigint, p_key text, p_hash bytea, p_kind text,
    p_amount bigint, p_reason text, p_metadata jsonb, p_expires_at timestamptz,
    p_mode text, p_hold uuid DEFAULT NULL, p_priority int DEFAULT NULL,
    p_operation text DEFAULT NULL, p_quantity bigint DEFAULT NULL
) RETURNS balance_result LANGUAGE plpgsql AS $$
BEGIN
    RETURN balance__post(p_account, p_welcome, p_key, p_hash, p_kind, p_amount, p_reason,
                         p_metadata, p_expires_at, p_mode, p_hold, p_priority, p_operation,
                         p_quantity);
END $$;

-- Group commit: many independent balance_post calls in one round trip and one commit.
-- Rows are taken in (account, key) order so two concurrent batches lock accounts in the
-- same order and cannot deadlock each other; results come back tagged with their index.
CREATE OR REPLACE FUNCTION balance_post_many(
    p_accounts text[], p_welcome bigint, p_keys text[], p_hashes bytea[], p_kinds text[],
    p_amounts bigint[], p_reasons text[], p_metadata jsonb[], p_expires timestamptz[],
    p_modes text[], p_priorities int[], p_operations text[], p_quantities bigint[]
) RETURNS TABLE (idx int, result balance_result) LANGUAGE plpgsql AS $$
DECLARE
    i int;
BEGIN
    FOR i IN
        SELECT s.i FROM generate_subscripts(p_accounts, 1) AS s(i)
        ORDER BY p_accounts[s.i], p_keys[s.i], s.i
    LOOP
        idx := i;
        result := balance__post(p_accounts[i], p_welcome, p_keys[i], p_hashes[i], p_kinds[i],
                                p_amounts[i], p_reasons[i], p_metadata[i], p_expires[i],
                                p_modes[i], NULL, p_priorities[i], p_operations[i],
                                p_quantities[i]);
        RETURN NEXT;
    END LOOP;
END $$;

-- Reserves credits: 'ok' with the hold, 'insufficient', or (an operation's hold)
-- 'limit_reached'. A hold for p_operation is priced and limited as a charge is
-- (balance__post): p_amount is the catalog's price times p_quantity unless the plan prices
-- it, and its quantity counts against the plan's limit now, under the account's row lock,
-- so holds and charges together never pass it.
CREATE OR REPLACE FUNCTION balance_hold(
    p_account text, p_welcome bigint, p_key text, p_hash bytea, p_amount bigint,
    p_ttl_seconds int, p_reason text, p_metadata jsonb,
    p_operation text DEFAULT NULL, p_quantity bigint DEFAULT NULL
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
    v_hold holds;
    v_res balance_result;
    v_renewed balance_result;
    v_price bigint;
    v_limit bigint;
    v_terms record;  -- balance__operation_terms
BEGIN
    v_res := balance__replay(p_account, p_key, p_hash);
    IF v_res.result IS NOT NULL THEN
        -- A placement sent again answers its hold as it is now: the retry of work already
        -- captured (or released) learns so before doing the work again.
        IF v_res.result = 'ok' THEN
            SELECT * INTO v_hold FROM holds WHERE id = (v_res.body -> 'hold' ->> 'id')::uuid;
            v_res.body := jsonb_set(v_res.body, '{hold}', balance__hold_json(v_hold));
        END IF;
        RETURN v_res;
    END IF;
    PERFORM balance__ensure(p_account, p_welcome);
    IF p_operation IS NOT NULL THEN
        SELECT * INTO v_terms FROM balance__operation_terms(p_account, p_operation, p_quantity);
        v_price := v_terms.price;
        v_limit := v_terms.op_limit;
        v_renewed := v_terms.renewed;
        IF (v_terms.refusal).result IS NOT NULL THEN
            RETURN balance__after_renewal(
                balance__refusal(p_account, p_key, p_hash, v_terms.refusal), v_renewed);
        END IF;
        IF v_price IS NOT NULL THEN
            p_metadata := p_metadata || jsonb_build_object('unit_cost', v_price);
            p_amount := v_price * p_quantity;
        END IF;
    END IF;
    -- As a debit: at or after the period's end, the plan is renewed first.
    UPDATE accounts SET held = held + p_amount, version = version + 1, updated_at = now()
    WHERE account_id = p_account AND balance - held >= p_amount
      AND (period_end > now() OR period_end IS NULL OR subscription IS NOT NULL)
      AND spend_cap IS NULL
    RETURNING * INTO v_acc;
    IF NOT FOUND THEN
        IF v_renewed.account_id IS NULL THEN
            v_renewed := balance__renew_due(p_account);
        END IF;
        -- What is held counts against a spend cap as spent: checked under the row lock,
        -- as a debit is (balance__post).
        UPDATE accounts SET held = held + p_amount, version = version + 1, updated_at = now()
        WHERE account_id = p_account AND balance - held >= p_amount
          AND (spend_cap IS NULL
               OR balance__window_used(spend_window, spend_period, spend_used) + held
                  + p_amount <= spend_cap)
        RETURNING * INTO v_acc;
    END IF;
    IF NOT FOUND THEN
        RETURN balance__after_renewal(
            balance__refusal(p_account, p_key, p_hash,
                             balance__refuse_spending(p_account, p_amount)),
            v_renewed);
    END IF;
    IF v_limit IS NOT NULL THEN
        PERFORM balance__count_use(p_account, p_operation, v_acc.period_start, p_quantity);
    END IF;
    INSERT INTO holds (account_id, amount, reason, metadata, expires_at, operation, quantity,
                       counted_in)
    VALUES (p_account, p_amount, p_reason, p_metadata,
            now() + make_interval(secs => p_ttl_seconds), p_operation, p_quantity,
            CASE WHEN v_limit IS NOT NULL THEN v_acc.period_start END)
    RETURNING * INTO v_hold;
    v_res := ('ok', false,
              jsonb_build_object('hold', balance__hold_json(v_hold),
                                 'account', balance__account_json(v_acc)),
              p_account, v_acc.balance, v_acc.held, v_acc.version, 'hold_placed', 0, NULL, v_hold.id,
              v_acc.alert_state <> 'ok');
    PERFORM balance__keep(p_account, p_key, p_hash, v_res.body);
    RETURN v_res;
END $$;

-- Resolves an active hold once. p_action: 'capture' spends p_capture (NULL: all of it)
-- as a usage transaction and releases the rest; 'release' gives it all back;
-- 'expire' is the sweeper's release of a hold past its deadline. Credits that expired
-- while held (accounts.expired_held) are spent by a capture; what a hold releases of them
-- leaves as an `expiry` transaction.
-- The hold's id is the capture's and release's idempotency key: the same resolution again
-- (a capture of the amount captured, NULL meaning all of the hold; a release of a released
-- hold) replays the first answer with the account as it is now, and writes nothing.
CREATE OR REPLACE FUNCTION balance_resolve_hold(
    p_hold uuid, p_action text, p_capture bigint, p_metadata jsonb
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_hold holds;
    v_acc accounts;
    v_tx transactions;
    v_spend bigint := 0;
    v_spent_expired bigint;
    v_expire bigint;
    v_take bigint;
    v_units bigint;
    v_began boolean := false;
    v_res balance_result;
BEGIN
    v_res.replayed := false;
    SELECT * INTO v_hold FROM holds WHERE id = p_hold FOR UPDATE;
    IF NOT FOUND THEN
        v_res.result := 'not_found';
        RETURN v_res;
    END IF;
    IF p_action = 'capture' AND v_hold.status = 'captured'
       AND COALESCE(p_capture, v_hold.amount) = v_hold.captured THEN
        SELECT * INTO v_tx FROM transactions t WHERE t.hold_id = p_hold AND t.kind = 'usage';
        SELECT * INTO v_acc FROM accounts WHERE account_id = v_hold.account_id;
        v_res.result := 'ok';
        v_res.replayed := true;
        v_res.body := jsonb_build_object('transaction', balance__tx_json(v_tx),
                                         'hold', balance__hold_json(v_hold),
                                         'account', balance__account_json(v_acc));
        RETURN v_res;
    END IF;
    IF p_action = 'release' AND v_hold.status = 'released' THEN
        SELECT * INTO v_acc FROM accounts WHERE account_id = v_hold.account_id;
        v_res.result := 'ok';
        v_res.replayed := true;
        v_res.body := jsonb_build_object('hold', balance__hold_json(v_hold),
                                         'account', balance__account_json(v_acc));
        RETURN v_res;
    END IF;
    IF v_hold.status <> 'active' OR (v_hold.expires_at <= now() AND p_action <> 'expire') THEN
        v_res.result := 'not_active';
        v_res.body := jsonb_build_object(
            'status', CASE WHEN v_hold.status = 'active' THEN 'expired' ELSE v_hold.status END);
        RETURN v_res;
    END IF;
    IF p_action = 'capture' THEN
        v_spend := COALESCE(p_capture, v_hold.amount);
        IF v_spend > v_hold.amount THEN
            v_res.result := 'over_held';
            v_res.body := jsonb_build_object('held', v_hold.amount);
            RETURN v_res;
        END IF;
    END IF;

    -- Lock order, here as everywhere: the hold, then its account, then the account's lots.
    SELECT * INTO v_acc FROM accounts WHERE account_id = v_hold.account_id FOR UPDATE;
    -- Holds do not say which credits they reserve: the one resolving is taken to hold the
    -- expired ones first. Its capture spends them; what it releases of them expires. Either
    -- way expired_held stays at most held, and expired credits never become spendable.
    v_spent_expired := LEAST(v_acc.expired_held, v_spend);
    v_expire := LEAST(v_acc.expired_held - v_spent_expired, v_hold.amount - v_spend);
    IF v_expire > 0 THEN
        -- Credits given back and expired at once: one movement, not up and down again.
        v_began := balance__alerts_begin(v_acc.account_id);
    END IF;
    -- A capture spends credits reserved earlier, so it is not refused now even if a
    -- reversal has since pushed the balance down, nor by a spend cap: what it held already
    -- counted against the cap, and now counts as spent in the window of the capture.
    UPDATE accounts SET
        held = held - v_hold.amount,
        balance = balance - v_spend,
        expired_held = expired_held - v_spent_expired,
        unsettled = unsettled + (v_spend - v_spent_expired),
        used = used + v_spend,
        spend_window = CASE WHEN spend_cap IS NOT NULL AND v_spend > 0
            THEN balance__spend_roll(spend_window, spend_period) ELSE spend_window END,
        spend_used = CASE WHEN spend_cap IS NOT NULL AND v_spend > 0
            THEN balance__window_used(spend_window, spend_period, spend_used) + v_spend
            ELSE spend_used END,
        version = version + 1, updated_at = now()
    WHERE account_id = v_hold.account_id
    RETURNING * INTO v_acc;
    -- The units an operation's hold counted against its plan's limit at placement: a
    -- capture keeps those its amount pays for (rounded up: a capture of 3 units' credits
    -- out of 10 counts 3), a release or an expiry none. The rest go back to the period that
    -- counted them, whichever period the account is in now.
    IF v_hold.counted_in IS NOT NULL THEN
        v_units := v_hold.quantity - CASE WHEN p_action = 'capture'
            THEN ceil(v_spend::numeric * v_hold.quantity / v_hold.amount)::bigint ELSE 0 END;
        IF v_units > 0 THEN
            UPDATE plan_usage SET used = used - v_units
            WHERE account_id = v_hold.account_id AND operation = v_hold.operation
              AND period_start = v_hold.counted_in;
        END IF;
    END IF;

    UPDATE holds SET
        status = CASE p_action WHEN 'capture' THEN 'captured'
                               WHEN 'expire' THEN 'expired' ELSE 'released' END,
        captured = CASE WHEN p_action = 'capture' THEN v_spend END,
        resolved_at = now(),
        metadata = CASE WHEN p_metadata IS NULL THEN metadata
                        ELSE COALESCE(metadata, '{}'::jsonb) || p_metadata END
    WHERE id = p_hold RETURNING * INTO v_hold;

    IF v_spend > 0 THEN
        INSERT INTO transactions
            (account_id, kind, amount, balance_after, version, reason, metadata, hold_id)
        VALUES (v_acc.account_id, 'usage', -v_spend, v_acc.balance, v_acc.version,
                v_hold.reason, v_hold.metadata, v_hold.id)
        RETURNING * INTO v_tx;
    END IF;

    -- The expired credits this hold released leave now (what a debt left of them).
    IF v_expire > 0 THEN
        v_take := LEAST(v_expire, GREATEST(v_acc.balance, 0));
        UPDATE accounts SET
            balance = balance - v_take,
            expired_held = expired_held - v_expire,
            version = version + CASE WHEN v_take > 0 THEN 1 ELSE 0 END
        WHERE account_id = v_acc.account_id RETURNING * INTO v_acc;
        IF v_take > 0 THEN
            INSERT INTO transactions
                (account_id, kind, amount, balance_after, version, reason, hold_id)
            VALUES (v_acc.account_id, 'expiry', -v_take, v_acc.balance, v_acc.version,
                    'credits expired while held', v_hold.id);
        END IF;
    END IF;
    IF v_began THEN
        PERFORM balance__alerts_end(v_acc.account_id, false);
    END IF;

    IF p_action = 'expire' THEN
        PERFORM balance__emit('hold.expired', v_acc.account_id,
                              jsonb_build_object('hold', balance__hold_json(v_hold)));
    END IF;
    IF v_spend > 0 THEN
        v_res := ('ok', false,
                  jsonb_build_object('transaction', balance__tx_json(v_tx),
                                     'hold', balance__hold_json(v_hold),
                                     'account', balance__account_json(v_acc)),
                  v_acc.account_id, v_acc.balance, v_acc.held, v_acc.version,
                  'usage', -v_spend, v_tx.id, v_hold.id, v_acc.alert_state <> 'ok');
    ELSE
        v_res := ('ok', false,
                  jsonb_build_object('hold', balance__hold_json(v_hold),
                                     'account', balance__account_json(v_acc)),
                  v_acc.account_id, v_acc.balance, v_acc.held, v_acc.version,
                  'hold_' || v_hold.status, 0, NULL, v_hold.id, v_acc.alert_state <> 'ok');
    END IF;
    RETURN v_res;
END $$;

-- Expires p_amount of a grant's remaining credits (the caller holds its account and has
-- settled it). Holds reserve credits in spending order, after those that already expired
-- while held; the part of this grant they reserve cannot leave yet (it leaves when they
-- resolve, or is spent by a capture), and the part kept (remaining - p_amount) is taken
-- to be reserved first. The rest leaves now as an `expiry` transaction, whose change the
-- result carries (account_id NULL when nothing left the balance).
CREATE OR REPLACE FUNCTION balance__expire_lot(p_lot credit_lots, p_amount bigint, p_reason text)
RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
    v_ahead bigint;
    v_reserved bigint;
    v_take bigint;
    v_tx transactions;
    v_res balance_result;
BEGIN
    SELECT * INTO v_acc FROM accounts WHERE account_id = p_lot.account_id;
    v_reserved := 0;
    IF v_acc.held > v_acc.expired_held THEN  -- only then can holds reserve any of it
        SELECT COALESCE(sum(o.remaining), 0) INTO v_ahead FROM credit_lots o
        WHERE o.account_id = p_lot.account_id AND o.remaining > 0
          AND (o.priority, COALESCE(o.expires_at, 'infinity'), o.id)
              < (p_lot.priority, COALESCE(p_lot.expires_at, 'infinity'), p_lot.id);
        v_reserved := LEAST(p_lot.remaining,
                            GREATEST(v_acc.held - v_acc.expired_held - v_ahead, 0));
    END IF;
    v_take := p_amount - GREATEST(v_reserved - (p_lot.remaining - p_amount), 0);
    UPDATE credit_lots SET remaining = remaining - p_amount WHERE id = p_lot.id;
    UPDATE accounts SET
        expired_held = expired_held + (p_amount - v_take),
        balance = balance - v_take,
        version = version + CASE WHEN v_take > 0 THEN 1 ELSE 0 END,
        updated_at = CASE WHEN v_take > 0 THEN now() ELSE updated_at END
    WHERE account_id = p_lot.account_id RETURNING * INTO v_acc;
    v_res.result := 'ok';
    v_res.replayed := false;
    IF v_take > 0 THEN
        INSERT INTO transactions
            (account_id, kind, amount, balance_after, version, reason, metadata)
        VALUES (v_acc.account_id, 'expiry', -v_take, v_acc.balance, v_acc.version,
                p_reason, jsonb_build_object('lot_id', p_lot.id))
        RETURNING * INTO v_tx;
        v_res := ('ok', false, NULL, v_acc.account_id, v_acc.balance, v_acc.held,
                  v_acc.version, 'expiry', -v_take, v_tx.id, NULL, v_acc.alert_state <> 'ok');
    END IF;
    RETURN v_res;
END $$;

-- The account's row; for an account never mentioned in a movement, the row it would be
-- born with (balance__born). A read writes nothing (API.md v1.2: GET routes never write).
CREATE OR REPLACE FUNCTION balance__account_row(p_account text, p_welcome bigint)
RETURNS accounts LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
BEGIN
    SELECT * INTO v_acc FROM accounts WHERE account_id = p_account;
    IF NOT FOUND THEN
        v_acc := balance__born(p_account, p_welcome);
    END IF;
    RETURN v_acc;
END $$;

-- POST /v1/accounts/{id}: the account created now, if new, with its welcome credits.
CREATE OR REPLACE FUNCTION balance_open_account(p_account text, p_welcome bigint)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM balance__ensure(p_account, p_welcome);
    RETURN balance_account(p_account, p_welcome);
END $$;

-- The account object; an unknown account reads as a new one would. PL/pgSQL: a SQL function
-- pinned to its search_path is never inlined, so each call would parse and plan it again.
CREATE OR REPLACE FUNCTION balance_account(p_account text, p_welcome bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN balance__account_json(balance__account_row(p_account, p_welcome));
END $$;
-- ================================================================ jobs

-- definitions: jobs

-- Expires what is due: active holds past expires_at, and lots past expires_at (what is
-- left of them leaves as an `expiry` transaction, or, as far as open holds reserve it,
-- when those holds resolve). Lock order as everywhere: holds, then accounts (several in
-- account_id order, as group commit takes them), then their lots. Holds another
-- transaction has locked are left for the next sweep (SKIP LOCKED), so several instances
-- sweep at once without waiting on each other.
CREATE OR REPLACE FUNCTION balance_sweep(p_limit int) RETURNS SETOF balance_result
LANGUAGE plpgsql AS $$
DECLARE
    v_holds uuid[];
    v_lots bigint[];
    v_both text[];
    v_id uuid;
    v_lot credit_lots;
    v_res balance_result;
BEGIN
    SELECT COALESCE(array_agg(h.id), '{}') INTO v_holds FROM (
        SELECT id FROM holds WHERE status = 'active' AND expires_at <= now()
        ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED) h;
    SELECT COALESCE(array_agg(l.id), '{}') INTO v_lots FROM (
        SELECT id FROM credit_lots WHERE remaining > 0 AND expires_at <= now()
            AND kind <> 'allowance'  -- a plan's renewal expires those (rollover)
        ORDER BY expires_at, id LIMIT p_limit) l;
    PERFORM 1 FROM accounts WHERE account_id IN (
        SELECT account_id FROM holds WHERE id = ANY(v_holds)
        UNION SELECT account_id FROM credit_lots WHERE id = ANY(v_lots))
    ORDER BY account_id FOR UPDATE;
    -- Grants are about to change: take out what was spent from them first.
    PERFORM balance__settle(a.account_id)
    FROM (SELECT DISTINCT account_id FROM credit_lots WHERE id = ANY(v_lots)) a;
    -- An account whose holds give credits back and whose grants take credits away in this
    -- sweep moves once, not up across its threshold and down again.
    SELECT COALESCE(array_agg(b.account_id ORDER BY b.account_id), '{}') INTO v_both FROM (
        SELECT account_id FROM holds WHERE id = ANY(v_holds)
        INTERSECT SELECT account_id FROM credit_lots WHERE id = ANY(v_lots)) b;
    PERFORM balance__alerts_begin(a) FROM unnest(v_both) a;

    FOREACH v_id IN ARRAY v_holds LOOP
        v_res := balance_resolve_hold(v_id, 'expire', NULL, NULL);
        RETURN NEXT v_res;
    END LOOP;

    FOR v_lot IN
        SELECT * FROM credit_lots WHERE id = ANY(v_lots) AND remaining > 0
        ORDER BY expires_at, id FOR UPDATE
    LOOP
        v_res := balance__expire_lot(v_lot, v_lot.remaining, 'credits expired');
        IF v_res.account_id IS NOT NULL THEN
            RETURN NEXT v_res;
        END IF;
    END LOOP;
    PERFORM balance__alerts_end(a, false) FROM unnest(v_both) a;
END $$;

-- Accounts whose stored totals disagree with the ledger, their active holds or their
-- open grants (which, less unsettled spending, add up to what the account owns beyond its
-- debts and its credits that expired while held).
CREATE OR REPLACE FUNCTION balance_reconcile() RETURNS TABLE (
    account_id text, balance bigint, ledger_sum bigint, held bigint, holds_sum bigint,
    expired_held bigint, grants_sum bigint
) LANGUAGE sql STABLE AS $$
    SELECT a.account_id, a.balance, COALESCE(t.s, 0), a.held, COALESCE(h.s, 0),
           a.expired_held, COALESCE(l.s, 0)
    FROM accounts a
    LEFT JOIN (SELECT t.account_id, sum(t.amount)::bigint s FROM transactions t
               GROUP BY t.account_id) t USING (account_id)
    LEFT JOIN (SELECT h.account_id, sum(h.amount)::bigint s FROM holds h
               WHERE h.status = 'active' GROUP BY h.account_id) h USING (account_id)
    LEFT JOIN (SELECT l.account_id, sum(l.remaining)::bigint s FROM credit_lots l
               WHERE l.remaining > 0 GROUP BY l.account_id) l USING (account_id)
    WHERE a.balance <> COALESCE(t.s, 0) OR a.held <> COALESCE(h.s, 0)
       OR GREATEST(COALESCE(l.s, 0) - a.unsettled, 0) <> GREATEST(a.balance - a.expired_held, 0)
       OR a.expired_held > a.held
$$;

-- ================================================================ plans

-- definitions: plans

-- The start of period k of a plan anchored at p_anchor (k may be negative), in UTC, so a
-- month is a calendar month: Jan 31 + 1 month = Feb 28 (29), + 2 months = Mar 31.
-- PL/pgSQL for the reason the JSON shapes are.
CREATE OR REPLACE FUNCTION balance__period_edge(p_anchor timestamptz, p_period text, p_k int)
RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN ((p_anchor AT TIME ZONE 'UTC') + p_k * CASE p_period
        WHEN 'month' THEN interval '1 month' WHEN 'week' THEN interval '7 days'
        ELSE interval '1 day' END) AT TIME ZONE 'UTC';
END $$;

-- The k whose period [edge(k), edge(k+1)) holds p_at.
CREATE OR REPLACE FUNCTION balance__period_index(p_anchor timestamptz, p_period text,
                                                 p_at timestamptz)
RETURNS int LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_a timestamp := p_anchor AT TIME ZONE 'UTC';
    v_t timestamp := p_at AT TIME ZONE 'UTC';
    v_k int;
BEGIN
    IF p_period = 'month' THEN
        v_k := (extract(year FROM v_t) - extract(year FROM v_a)) * 12
             + extract(month FROM v_t) - extract(month FROM v_a);
    ELSE
        v_k := floor(extract(epoch FROM v_t - v_a)
                     / CASE p_period WHEN 'week' THEN 604800 ELSE 86400 END);
    END IF;
    WHILE balance__period_edge(p_anchor, p_period, v_k) > p_at LOOP
        v_k := v_k - 1;
    END LOOP;
    WHILE balance__period_edge(p_anchor, p_period, v_k + 1) <= p_at LOOP
        v_k := v_k + 1;
    END LOOP;
    RETURN v_k;
END $$;

-- The catalog's plans, written at start by each instance (never deleted: an account may
-- still be on a plan a newer catalog dropped). A plan whose threshold changed makes the
-- alert floors of its accounts that follow it unknown, in the same transaction. Its row is
-- locked before it is read, so what it was is what this replaces, whatever another
-- instance syncs at once.
CREATE OR REPLACE FUNCTION balance_sync_plans(p_plans jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_moved text[];
BEGIN
    PERFORM FROM plans WHERE p_plans ? id ORDER BY id FOR UPDATE;
    WITH was AS (SELECT id, low_balance FROM plans WHERE p_plans ? id),
    synced AS (
        INSERT INTO plans (id, allowance, period, rollover, prices, limits, low_balance)
        SELECT key, (value ->> 'allowance')::bigint, value ->> 'period',
               (value ->> 'rollover')::bigint, value -> 'prices', value -> 'limits',
               (value ->> 'low_balance')::bigint
        FROM jsonb_each(p_plans)
        ON CONFLICT (id) DO UPDATE SET allowance = EXCLUDED.allowance,
            period = EXCLUDED.period, rollover = EXCLUDED.rollover, prices = EXCLUDED.prices,
            limits = EXCLUDED.limits, low_balance = EXCLUDED.low_balance, updated_at = now()
        WHERE (plans.allowance, plans.period, plans.rollover, plans.prices, plans.limits,
               plans.low_balance)
              IS DISTINCT FROM (EXCLUDED.allowance, EXCLUDED.period, EXCLUDED.rollover,
                                EXCLUDED.prices, EXCLUDED.limits, EXCLUDED.low_balance)
        -- xmax is 0 on a row this INSERT made (no account follows a plan just made), set
        -- on one it updated: a plan another instance made meanwhile, unseen by `was`, is
        -- taken as changed.
        RETURNING id, low_balance, xmax <> 0 AS existed)
    SELECT array_agg(s.id) INTO v_moved
    FROM synced s LEFT JOIN was w ON w.id = s.id
    WHERE s.existed AND (w.id IS NULL OR s.low_balance IS DISTINCT FROM w.low_balance);
    IF v_moved IS NOT NULL THEN
        PERFORM balance__forget_floors(v_moved);
    END IF;
END $$;

-- Expires the account's unused allowance beyond p_keep (the caller holds the account and
-- has settled it); what is kept expires at p_until. Soonest-expiring allowance goes first.
CREATE OR REPLACE FUNCTION balance__expire_allowance(
    p_account text, p_keep bigint, p_until timestamptz, p_reason text
) RETURNS SETOF balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_lot credit_lots;
    v_excess bigint;
    v_cut bigint;
    v_res balance_result;
BEGIN
    SELECT GREATEST(COALESCE(sum(remaining), 0) - p_keep, 0) INTO v_excess
    FROM credit_lots WHERE account_id = p_account AND kind = 'allowance' AND remaining > 0;
    FOR v_lot IN
        SELECT * FROM credit_lots WHERE account_id = p_account AND kind = 'allowance'
          AND remaining > 0 ORDER BY priority, expires_at, id FOR UPDATE
    LOOP
        v_cut := LEAST(v_lot.remaining, v_excess);
        IF v_cut > 0 THEN
            v_excess := v_excess - v_cut;
            v_res := balance__expire_lot(v_lot, v_cut, p_reason);
            IF v_res.account_id IS NOT NULL THEN
                RETURN NEXT v_res;
            END IF;
        END IF;
        IF v_lot.remaining > v_cut THEN
            UPDATE credit_lots SET expires_at = p_until WHERE id = v_lot.id;
        END IF;
    END LOOP;
END $$;

-- The allowance a plan gives the period [p_start, p_end): all of it for a whole period of
-- the plan (or a longer one), else in proportion to the part of a period it is, to the
-- nearest credit. Only the first period after a new anchor or a gap, or a period of
-- another length than the plan's, is a part (balance_set_plan).
CREATE OR REPLACE FUNCTION balance__period_allowance(p_plan plans, p_start timestamptz,
                                                     p_end timestamptz)
RETURNS bigint LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_whole timestamptz := balance__period_edge(p_start, p_plan.period, 1);
BEGIN
    IF p_end >= v_whole THEN
        RETURN p_plan.allowance;
    END IF;
    RETURN round(p_plan.allowance * extract(epoch FROM p_end - p_start)
                 / extract(epoch FROM v_whole - p_start));
END $$;

-- The index of the period that follows one ending at p_end: the next (p_index + 1) when
-- the periods run on the anchor's edges, else the anchor's period that holds p_end (a new
-- anchor, or a plan of another length, took effect at p_end: that period runs from p_end
-- to the anchor's next edge).
CREATE OR REPLACE FUNCTION balance__next_period(p_anchor timestamptz, p_period text,
                                                p_index int, p_end timestamptz)
RETURNS int LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF p_index IS NOT NULL
       AND balance__period_edge(p_anchor, p_period, p_index + 1) = p_end THEN
        RETURN p_index + 1;
    END IF;
    RETURN balance__period_index(p_anchor, p_period, p_end);
END $$;

-- Grants p_amount of allowance in the account's current period (p_acc, held by the
-- caller), as an `allowance` transaction on a grant expiring at the period's end (a
-- subscription's: not before its next paid period or its end, 019_subscriptions);
-- p_extra joins the transaction's metadata. The caller records it in the period's
-- plan_periods row.
DROP FUNCTION IF EXISTS balance__grant_allowance(accounts, plans, boolean);
CREATE OR REPLACE FUNCTION balance__grant_allowance(p_acc accounts, p_plan text,
                                                    p_amount bigint, p_extra jsonb DEFAULT NULL)
RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
    v_tx transactions;
    v_granted bigint;
BEGIN
    IF p_acc.unsettled > 0 THEN
        PERFORM balance__settle(p_acc.account_id);
    END IF;
    UPDATE accounts SET balance = balance + p_amount, version = version + 1,
        updated_at = now()
    WHERE account_id = p_acc.account_id RETURNING * INTO v_acc;
    INSERT INTO transactions (account_id, kind, amount, balance_after, version, reason, metadata)
    VALUES (v_acc.account_id, 'allowance', p_amount, v_acc.balance, v_acc.version,
            'plan ' || p_plan, jsonb_build_object('plan', p_plan,
            'period_start', balance__ts(v_acc.period_start),
            'period_end', balance__ts(v_acc.period_end)) || COALESCE(p_extra, '{}'))
    RETURNING * INTO v_tx;
    -- As any credit: a grant for what it adds above a debt.
    v_granted := LEAST(p_amount, GREATEST(v_acc.balance - v_acc.expired_held, 0));
    IF v_granted > 0 THEN
        INSERT INTO credit_lots
            (account_id, transaction_id, kind, amount, remaining, priority, expires_at)
        VALUES (v_acc.account_id, v_tx.id, 'allowance', v_granted, v_granted,
                balance__priority('allowance'),
                CASE WHEN v_acc.subscription IS NULL THEN v_acc.period_end END);
    END IF;
    RETURN ('ok', false, NULL, v_acc.account_id, v_acc.balance, v_acc.held, v_acc.version,
            'allowance', p_amount, v_tx.id, NULL, v_acc.alert_state <> 'ok')::balance_result;
END $$;

-- Assigns, changes or (p_plan NULL) removes the account's plan. Allowance is granted at
-- most once per account and period, whatever the sequence of changes (README "Plans"):
-- - A change within the period that holds now keeps that period: its bounds, its limits'
--   usage and its plan_periods row. The account's open allowance becomes what the new plan
--   gives the period less what the period has had spent of allowance, GREATEST(open +
--   budget - granted, 0): the excess expires now, a shortfall is granted now. So an
--   upgrade grants the difference, a downgrade and back grants nothing new, and a sequence
--   of changes ends where its last plan alone would have.
-- - A new anchor, or a plan of another period length, takes effect at the period's end:
--   an anchor moved, even by a microsecond, opens no period early.
-- - Removing the plan expires all its allowance; a plan assigned again while that period
--   runs continues it. Only an account in no running period gets a new one: the anchor's
--   period that holds now, started no earlier than the last one ended.
-- The same plan again without a new anchor changes nothing. A period that ended and was
-- not renewed yet is renewed first, as the jobs would have. A plan's change crosses no
-- threshold (API.md "Alerts"): `low` follows it silently.
-- A plan that follows a subscription (accounts.subscription) changes only with it: the
-- subscription's own changes (keys starting `system:subscription:`; the API refuses
-- `system:` keys) may change or remove it, anyone else's answer 'invalid'. Its kept
-- allowance keeps no end (see 019_subscriptions), and removing the plan ends the
-- subscription's hold on the account.
-- Rows: each committed change, then one whose body is the response.
CREATE OR REPLACE FUNCTION balance_set_plan(
    p_account text, p_welcome bigint, p_key text, p_hash bytea, p_plan text,
    p_anchor timestamptz
) RETURNS SETOF balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
    v_plan plans;
    v_period plan_periods;
    v_running boolean;
    v_open bigint;
    v_target bigint;
    v_start timestamptz;
    v_end timestamptz;
    v_k int;
    v_began boolean;
    v_reserved bigint;
    v_res balance_result;
    v_follows subscriptions;  -- the subscription the plan follows
BEGIN
    v_res := balance__replay(p_account, p_key, p_hash);
    IF v_res.result IS NOT NULL THEN
        RETURN NEXT v_res;
        RETURN;
    END IF;
    PERFORM balance__ensure(p_account, p_welcome);
    SELECT * INTO v_acc FROM accounts WHERE account_id = p_account FOR UPDATE;
    IF v_acc.subscription IS NOT NULL AND p_key NOT LIKE 'system:subscription:%' THEN
        v_follows := balance__subscription_of(v_acc.subscription);
        RETURN NEXT ROW('invalid', false, jsonb_build_object('detail', format(
            'plan: the account''s plan follows its %s subscription %s; change or cancel it '
            'there', v_follows.provider, v_follows.subscription_id)),
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::balance_result;
        RETURN;
    END IF;
    IF v_acc.period_end <= now() AND v_acc.subscription IS NULL THEN
        RETURN QUERY SELECT * FROM balance__renew_account(v_acc);
        SELECT * INTO v_acc FROM accounts WHERE account_id = p_account;
    END IF;
    -- The same plan again (without an anchor, or with the one it has) changes nothing.
    IF v_acc.plan IS NOT DISTINCT FROM p_plan
       AND (p_anchor IS NULL OR p_anchor = v_acc.plan_anchor) THEN
        v_res := ('ok', false, jsonb_build_object('account', balance__account_json(v_acc)),
                  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
        PERFORM balance__keep(p_account, p_key, p_hash, v_res.body);
        RETURN NEXT v_res;
        RETURN;
    END IF;
    IF p_plan IS NOT NULL THEN
        SELECT * INTO v_plan FROM plans WHERE id = p_plan;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'BL001: plan % is not in the plans table', p_plan;
        END IF;
    END IF;
    -- The period the account is in: its plan's, or (no plan now) its last, while it runs.
    IF v_acc.plan IS NOT NULL THEN
        SELECT * INTO v_period FROM plan_periods
        WHERE account_id = p_account AND period_start = v_acc.period_start;
        IF NOT FOUND THEN  -- only by a hand-made row: the period as if granted in full
            INSERT INTO plan_periods (account_id, period_start, period_end, plan, granted)
            SELECT p_account, v_acc.period_start, v_acc.period_end, p.id,
                   balance__period_allowance(p, v_acc.period_start, v_acc.period_end)
            FROM plans p WHERE p.id = v_acc.plan
            RETURNING * INTO v_period;
        END IF;
        v_running := true;
    ELSE
        SELECT * INTO v_period FROM plan_periods WHERE account_id = p_account
        ORDER BY period_start DESC LIMIT 1;
        v_running := FOUND AND v_period.period_end > now();
    END IF;

    v_began := balance__alerts_begin(p_account);
    IF v_acc.unsettled > 0 THEN
        PERFORM balance__settle(p_account);
    END IF;
    SELECT COALESCE(sum(remaining), 0) INTO v_open FROM credit_lots
    WHERE account_id = p_account AND kind = 'allowance' AND remaining > 0;
    -- Allowance an active hold reserves does not leave when it expires: it moves into
    -- expired_held, which the hold's capture spends first. So it is not taken back; it
    -- counts as spent (else a downgrade and back would grant it again, and the capture
    -- spend it twice). v_reserved: what of an expiry below went there.
    SELECT expired_held INTO v_reserved FROM accounts WHERE account_id = p_account;
    IF p_plan IS NULL THEN
        RETURN QUERY SELECT * FROM balance__expire_allowance(p_account, 0, NULL,
                                                             'plan removed');
        SELECT expired_held - v_reserved INTO v_reserved FROM accounts
        WHERE account_id = p_account;
        UPDATE plan_periods SET granted = granted - v_open + v_reserved
        WHERE v_running AND account_id = p_account AND period_start = v_period.period_start;
        -- The anchor stays: a plan assigned again in this period keeps its cycle.
        UPDATE accounts SET plan = NULL, period_index = NULL, period_start = NULL,
            period_end = NULL, subscription = NULL, version = version + 1, updated_at = now()
        WHERE account_id = p_account RETURNING * INTO v_acc;
        v_res := ('ok', false, NULL, p_account, v_acc.balance, v_acc.held, v_acc.version,
                  'plan', 0, NULL, NULL, v_acc.alert_state <> 'ok');
    ELSIF v_running THEN
        -- A subscription's period is the provider's whole period, whatever its length.
        v_target := GREATEST(v_open - v_period.granted + CASE
            WHEN v_acc.subscription IS NOT NULL THEN v_plan.allowance
            ELSE balance__period_allowance(v_plan, v_period.period_start, v_period.period_end)
            END, 0);
        IF v_open > v_target THEN
            RETURN QUERY SELECT * FROM balance__expire_allowance(p_account, v_target,
                CASE WHEN v_acc.subscription IS NULL THEN v_period.period_end END,
                'plan changed');
        END IF;
        SELECT expired_held - v_reserved INTO v_reserved FROM accounts
        WHERE account_id = p_account;
        UPDATE plan_periods SET plan = p_plan,
            granted = granted + (v_target - v_open) + v_reserved
        WHERE account_id = p_account AND period_start = v_period.period_start;
        p_anchor := COALESCE(p_anchor, v_acc.plan_anchor, now());
        UPDATE accounts SET plan = p_plan, plan_anchor = p_anchor,
            period_index = balance__period_index(p_anchor, v_plan.period,
                                                 v_period.period_start),
            period_start = v_period.period_start, period_end = v_period.period_end,
            version = version + 1, updated_at = now()
        WHERE account_id = p_account RETURNING * INTO v_acc;
        v_res := ('ok', false, NULL, p_account, v_acc.balance, v_acc.held, v_acc.version,
                  'plan', 0, NULL, NULL, v_acc.alert_state <> 'ok');
        IF v_target > v_open THEN
            RETURN NEXT v_res;
            v_res := balance__grant_allowance(v_acc, p_plan, v_target - v_open);
        END IF;
    ELSE
        p_anchor := COALESCE(p_anchor, now());
        v_k := balance__period_index(p_anchor, v_plan.period, now());
        v_start := balance__period_edge(p_anchor, v_plan.period, v_k);
        v_end := balance__period_edge(p_anchor, v_plan.period, v_k + 1);
        -- Never again over time a period already had.
        IF v_period.period_end > v_start THEN
            v_start := v_period.period_end;
        END IF;
        IF v_open > 0 THEN  -- none but what a plan removed before 011_period_grants left
            RETURN QUERY SELECT * FROM balance__expire_allowance(p_account, 0, NULL,
                                                                 'plan changed');
        END IF;
        v_target := balance__period_allowance(v_plan, v_start, v_end);
        UPDATE accounts SET plan = p_plan, plan_anchor = p_anchor, period_index = v_k,
            period_start = v_start, period_end = v_end, version = version + 1,
            updated_at = now()
        WHERE account_id = p_account RETURNING * INTO v_acc;
        v_res := ('ok', false, NULL, p_account, v_acc.balance, v_acc.held, v_acc.version,
                  'plan', 0, NULL, NULL, v_acc.alert_state <> 'ok');
        IF v_target > 0 THEN
            RETURN NEXT v_res;
            v_res := balance__grant_allowance(v_acc, p_plan, v_target);
        END IF;
        INSERT INTO plan_periods (account_id, period_start, period_end, plan, transaction_id,
                                  granted)
        VALUES (p_account, v_start, v_end, p_plan, v_res.tx_id, v_target);
    END IF;
    IF v_began THEN
        PERFORM balance__alerts_end(p_account, true);
    END IF;
    SELECT * INTO v_acc FROM accounts WHERE account_id = p_account;
    v_res.body := jsonb_build_object('account', balance__account_json(v_acc));
    PERFORM balance__keep(p_account, p_key, p_hash, v_res.body);
    RETURN NEXT v_res;
END $$;

-- Renews one account whose period has ended (p_acc, its row held by the caller): per
-- period missed, in order, the unused allowance beyond the plan's rollover expires (what
-- rolls over now expires with the next period) and the next period's allowance is granted,
-- recorded in plan_periods (whose key makes each period's grant happen once). One movement
-- for alerts and auto top-up: from before its first expiry to after its last grant.
CREATE OR REPLACE FUNCTION balance__renew_account(p_acc accounts)
RETURNS SETOF balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts := p_acc;
    v_plan plans;
    v_k int;
    v_end timestamptz;
    v_budget bigint;
    v_began boolean;
    v_res balance_result;
BEGIN
    SELECT * INTO v_plan FROM plans WHERE id = v_acc.plan;
    v_began := balance__alerts_begin(v_acc.account_id);
    IF v_acc.unsettled > 0 THEN
        PERFORM balance__settle(v_acc.account_id);
    END IF;
    WHILE v_acc.period_end <= now() LOOP
        v_k := balance__next_period(v_acc.plan_anchor, v_plan.period, v_acc.period_index,
                                    v_acc.period_end);
        v_end := balance__period_edge(v_acc.plan_anchor, v_plan.period, v_k + 1);
        RETURN QUERY SELECT * FROM balance__expire_allowance(v_acc.account_id,
            v_plan.rollover, v_end, 'allowance expired at period end');
        UPDATE accounts SET period_index = v_k, period_start = period_end, period_end = v_end
        WHERE account_id = v_acc.account_id RETURNING * INTO v_acc;
        v_budget := balance__period_allowance(v_plan, v_acc.period_start, v_acc.period_end);
        v_res := NULL;
        IF v_budget > 0 THEN
            v_res := balance__grant_allowance(v_acc, v_plan.id, v_budget);
        END IF;
        -- The period's one row: a second renewal of it would fail here and roll back whole.
        INSERT INTO plan_periods (account_id, period_start, period_end, plan, transaction_id,
                                  granted)
        VALUES (v_acc.account_id, v_acc.period_start, v_acc.period_end, v_plan.id,
                v_res.tx_id, v_budget);
        PERFORM balance__emit('plan.renewed', v_acc.account_id, jsonb_build_object(
            'account_id', v_acc.account_id, 'plan', v_plan.id,
            'period_start', balance__ts(v_acc.period_start),
            'period_end', balance__ts(v_acc.period_end), 'allowance', v_budget));
        IF v_res.account_id IS NOT NULL THEN
            v_res.body := jsonb_build_object('plan', v_plan.id);
            RETURN NEXT v_res;
        END IF;
    END LOOP;
    IF v_began THEN
        PERFORM balance__alerts_end(v_acc.account_id, false);
    END IF;
END $$;

-- Renews the plans whose period has ended, up to p_limit accounts. Rows another
-- transaction holds are skipped: another instance renewing them, or a movement, which
-- renews its account itself when its period has ended (balance__renew_due).
CREATE OR REPLACE FUNCTION balance_renew(p_limit int) RETURNS SETOF balance_result
LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
BEGIN
    FOR v_acc IN
        -- In period_end order, so each batch reads only the index entries it renews. It
        -- waits for no lock (SKIP LOCKED), so this order cannot deadlock with the
        -- account_id order of group commit.
        -- A subscription's plan renews when its provider is paid (balance_subscription_paid).
        SELECT * FROM accounts WHERE plan IS NOT NULL AND subscription IS NULL
          AND period_end <= now()
        ORDER BY period_end LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        RETURN QUERY SELECT * FROM balance__renew_account(v_acc);
    END LOOP;
END $$;

-- A movement at or after its account's period end renews the account first, in its own
-- transaction and under the account's row lock: it is judged against the period that
-- holds now (that period's limits; the old allowance beyond the rollover gone), never
-- against one that has ended, whether or not a job renewed it (the jobs skip a busy
-- account). The last change the renewal made; a result of NULLs when none was due.
CREATE OR REPLACE FUNCTION balance__renew_due(p_account text) RETURNS balance_result
LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
    v_row balance_result;
    v_res balance_result;
BEGIN
    SELECT * INTO v_acc FROM accounts
    WHERE account_id = p_account AND plan IS NOT NULL AND subscription IS NULL
      AND period_end <= now() FOR UPDATE;
    IF FOUND THEN
        FOR v_row IN SELECT * FROM balance__renew_account(v_acc) LOOP
            v_res := v_row;
        END LOOP;
    END IF;
    RETURN v_res;
END $$;

-- What a usage dashboard needs: the plan, its period, the allowance left (after the
-- spending not yet settled into grants, taken in spending order) and each limit's use.
CREATE OR REPLACE FUNCTION balance_plan_json(p_account text, p_welcome bigint)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
    v_plan plans;
    v_sub subscriptions;
    v_left bigint;
BEGIN
    v_acc := balance__account_row(p_account, p_welcome);
    IF v_acc.plan IS NULL THEN
        RETURN jsonb_build_object('plan', NULL, 'period', NULL, 'period_start', NULL,
            'period_end', NULL, 'allowance', 0, 'allowance_remaining', 0, 'rollover', 0,
            'status', NULL, 'subscription', NULL, 'limits', '{}'::jsonb);
    END IF;
    SELECT * INTO v_plan FROM plans WHERE id = v_acc.plan;
    v_sub := balance__subscription_of(v_acc.subscription);
    SELECT COALESCE(sum(CASE WHEN kind = 'allowance' THEN
               remaining - LEAST(GREATEST(v_acc.unsettled - (cum - remaining), 0), remaining)
           END), 0)
    INTO v_left FROM (
        SELECT kind, remaining,
               sum(remaining) OVER (ORDER BY priority, expires_at, id) AS cum
        FROM credit_lots WHERE account_id = p_account AND remaining > 0) l;
    RETURN jsonb_build_object(
        'plan', v_plan.id, 'period', v_plan.period,
        'period_start', balance__ts(v_acc.period_start),
        'period_end', balance__ts(v_acc.period_end),
        'allowance', v_plan.allowance, 'allowance_remaining', v_left,
        'rollover', v_plan.rollover,
        'status', CASE WHEN v_sub.status = 'past_due' THEN 'past_due' ELSE 'active' END,
        'subscription', CASE WHEN v_sub.subscription_id IS NOT NULL THEN jsonb_build_object(
            'provider', v_sub.provider, 'id', v_sub.subscription_id,
            'status', v_sub.status, 'cancel_at', balance__ts(v_sub.cancel_at)) END,
        'limits', COALESCE((
            SELECT jsonb_object_agg(l.key, jsonb_build_object(
                'limit', l.value::bigint, 'used', COALESCE(u.used, 0)))
            FROM jsonb_each_text(v_plan.limits) l
            LEFT JOIN plan_usage u ON u.account_id = p_account AND u.operation = l.key
                AND u.period_start = v_acc.period_start), '{}'::jsonb));
END $$;

-- What a charge (p_operation, p_quantity, p_base_price) or a debit (p_amount) would
-- answer now, writing nothing; an account not yet created is checked as a new one.
CREATE OR REPLACE FUNCTION balance_check(
    p_account text, p_welcome bigint, p_operation text, p_quantity bigint,
    p_base_price bigint, p_amount bigint
) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_acc accounts;
    v_available bigint;
    v_cost bigint := p_amount;
    v_price bigint;
    v_limit bigint;
    v_period text;
    v_used bigint;
    v_k int;
    v_resets timestamptz;
    v_cap balance_result;
BEGIN
    SELECT * INTO v_acc FROM accounts WHERE account_id = p_account;
    v_available := CASE WHEN FOUND THEN v_acc.balance - v_acc.held ELSE p_welcome END;
    IF p_operation IS NOT NULL THEN
        v_cost := p_base_price * p_quantity;
        IF v_acc.plan IS NOT NULL THEN
            SELECT (p.prices ->> p_operation)::bigint, (p.limits ->> p_operation)::bigint,
                   p.period
            INTO v_price, v_limit, v_period FROM plans p WHERE p.id = v_acc.plan;
            v_cost := COALESCE(v_price, p_base_price) * p_quantity;
            IF v_limit IS NOT NULL THEN
                SELECT u.used INTO v_used FROM plan_usage u WHERE u.account_id = p_account
                    AND u.operation = p_operation AND u.period_start = v_acc.period_start;
                v_used := COALESCE(v_used, 0);
                v_resets := v_acc.period_end;
                v_k := v_acc.period_index;
                -- Ended and not renewed yet: a charge would renew first (balance__renew_due)
                -- and count in a period with no usage yet.
                WHILE v_resets <= now() AND v_acc.subscription IS NULL LOOP
                    v_used := 0;
                    v_k := balance__next_period(v_acc.plan_anchor, v_period, v_k, v_resets);
                    v_resets := balance__period_edge(v_acc.plan_anchor, v_period, v_k + 1);
                END LOOP;
                IF v_used + p_quantity > v_limit THEN
                    RETURN jsonb_build_object('allowed', false, 'cost', v_cost,
                        'available', v_available, 'error', 'limit_reached',
                        'operation', p_operation, 'limit', v_limit, 'used', v_used,
                        'resets_at', balance__ts(v_resets));
                END IF;
            END IF;
        END IF;
    END IF;
    -- The spend cap refuses before the balance does, as a debit's refusal says
    -- (balance__refuse_spending). v_acc is NULL for an account not yet created: no cap.
    v_cap := balance__over_cap(v_acc, v_cost);
    IF v_cap.result IS NOT NULL THEN
        RETURN jsonb_build_object('allowed', false, 'cost', v_cost, 'available', v_available,
            'error', 'limit_reached') || v_cap.body;
    END IF;
    IF v_available < v_cost THEN
        RETURN jsonb_build_object('allowed', false, 'cost', v_cost, 'available', v_available,
            'error', 'insufficient_credits', 'required', v_cost);
    END IF;
    RETURN jsonb_build_object('allowed', true, 'cost', v_cost, 'available', v_available);
END $$;

-- ================================================================ subscriptions

-- definitions: subscriptions
-- Plans that follow a provider's subscription (README "Plans", 019_subscriptions). Each
-- function takes the account's row first, then the subscription's, as every movement takes
-- the account first. Rows: each committed change (for the push), then one whose body is the
-- webhook's answer ({"result": ...}).

-- The subscription an account's plan follows, by accounts.subscription ('provider:id');
-- a row of NULLs for NULL.
CREATE OR REPLACE FUNCTION balance__subscription_of(p_key text) RETURNS subscriptions
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_sub subscriptions;
BEGIN
    SELECT * INTO v_sub FROM subscriptions
    WHERE provider = split_part(p_key, ':', 1)
      AND subscription_id = substr(p_key, strpos(p_key, ':') + 1);
    RETURN v_sub;
END $$;

-- The subscription's row, with its account's row locked before it. Only a paid period
-- (p_create) makes it, for p_account (a later event naming another account does not move
-- it): news of a subscription never paid for changes nothing, and makes no account. A row of
-- NULLs when there is none to use.
CREATE OR REPLACE FUNCTION balance__subscription(p_provider text, p_sub text,
                                                 p_account text, p_welcome bigint,
                                                 p_create boolean)
RETURNS subscriptions LANGUAGE plpgsql AS $$
DECLARE
    v_account text;
    v_sub subscriptions;
BEGIN
    SELECT account_id INTO v_account FROM subscriptions
    WHERE provider = p_provider AND subscription_id = p_sub;
    IF v_account IS NULL AND p_create THEN
        v_account := p_account;
    END IF;
    IF v_account IS NULL THEN
        RETURN v_sub;
    END IF;
    PERFORM balance__ensure(v_account, p_welcome);
    PERFORM 1 FROM accounts WHERE account_id = v_account FOR UPDATE;
    INSERT INTO subscriptions (provider, subscription_id, account_id)
    VALUES (p_provider, p_sub, v_account) ON CONFLICT DO NOTHING;
    SELECT * INTO v_sub FROM subscriptions
    WHERE provider = p_provider AND subscription_id = p_sub FOR UPDATE;
    RETURN v_sub;
END $$;

-- The answer row: the webhook's body, no change.
CREATE OR REPLACE FUNCTION balance__subscription_answer(p_result text, p_sub subscriptions,
                                                        p_more jsonb DEFAULT '{}')
RETURNS balance_result LANGUAGE plpgsql AS $$
BEGIN
    RETURN ROW('ok', false, jsonb_build_object('result', p_result, 'account_id',
        p_sub.account_id, 'subscription_id', p_sub.subscription_id, 'status', p_sub.status)
        || p_more, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::balance_result;
END $$;

-- The account's state after a change that moved no credits (a plan's status), for its push:
-- its version moves so every tab takes the frame.
CREATE OR REPLACE FUNCTION balance__plan_touched(p_account text) RETURNS balance_result
LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
BEGIN
    UPDATE accounts SET version = version + 1, updated_at = now()
    WHERE account_id = p_account RETURNING * INTO v_acc;
    RETURN ROW('ok', false, NULL, v_acc.account_id, v_acc.balance, v_acc.held, v_acc.version,
               'plan', 0, NULL, NULL, v_acc.alert_state <> 'ok')::balance_result;
END $$;

-- A server's change of a plan through balance_set_plan (a change or, p_plan NULL, the
-- subscription's end), keyed by what caused it: its rows but the answer.
CREATE OR REPLACE FUNCTION balance__subscription_plan(p_sub subscriptions, p_plan text,
                                                      p_cause text)
RETURNS SETOF balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_key text := format('system:subscription:%s:%s:%s', p_sub.provider,
                         p_sub.subscription_id, p_cause);
    v_row balance_result;
BEGIN
    FOR v_row IN SELECT * FROM balance_set_plan(p_sub.account_id, 0, v_key,
                                                convert_to(v_key, 'UTF8'), p_plan, NULL)
    LOOP
        IF v_row.account_id IS NOT NULL THEN
            RETURN NEXT v_row;
        END IF;
    END LOOP;
END $$;

-- Ends the subscription (canceled now, or its cancellation at the period's end came): its
-- plan leaves the account with all its allowance (a plan change never touches bought
-- credits), `plan.canceled`. Nothing when the account's plan is no longer its.
CREATE OR REPLACE FUNCTION balance__subscription_end(p_sub subscriptions, p_cause text)
RETURNS SETOF balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_plan text;
BEGIN
    UPDATE subscriptions SET status = 'canceled', cancel_at = NULL, updated_at = now()
    WHERE provider = p_sub.provider AND subscription_id = p_sub.subscription_id;
    SELECT plan INTO v_plan FROM accounts WHERE account_id = p_sub.account_id
      AND subscription = p_sub.provider || ':' || p_sub.subscription_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM balance__subscription_plan(p_sub, NULL, 'end');
    PERFORM balance__emit('plan.canceled', p_sub.account_id, jsonb_build_object(
        'account_id', p_sub.account_id, 'plan', v_plan, 'provider', p_sub.provider,
        'subscription_id', p_sub.subscription_id, 'cause', p_cause));
END $$;

-- A paid period [p_start, p_end) of the subscription, on plan p_plan (a catalog plan): its
-- allowance once (subscription_periods' key), from the provider's period, not our calendar.
-- - The account's plan already follows this subscription: a renewal. The ending period's
--   allowance beyond its plan's rollover expires, then the new period's is granted.
-- - Otherwise the subscription takes the plan over: whatever plan the account had (the
--   backend's, another subscription's) ends with its allowance, then this one starts.
-- - A period that has ended, or that is older than the account's current one (delivered
--   late), is recorded and grants nothing; nor does a payment of a subscription that ended.
-- Status follows the newest event (state_at): a paid period makes it 'active' again after a
-- failed renewal (the recovery payment grants once, as any).
CREATE OR REPLACE FUNCTION balance_subscription_paid(
    p_provider text, p_sub text, p_account text, p_welcome bigint, p_plan text,
    p_start timestamptz, p_end timestamptz, p_payment text, p_event_at timestamptz
) RETURNS SETOF balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_sub subscriptions;
    v_acc accounts;
    v_plan plans;
    v_rollover bigint;
    v_key text := p_provider || ':' || p_sub;
    v_renewal boolean;
    v_began boolean;
    v_res balance_result;
BEGIN
    v_sub := balance__subscription(p_provider, p_sub, p_account, p_welcome, true);
    IF v_sub.subscription_id IS NULL THEN  -- for review: neither it nor its event names one
        RETURN NEXT balance__subscription_answer('no_account', v_sub);
        RETURN;
    END IF;
    IF v_sub.status = 'canceled' THEN
        RETURN NEXT balance__subscription_answer('subscription_ended', v_sub);
        RETURN;
    END IF;
    INSERT INTO subscription_periods (provider, subscription_id, period_start, period_end,
                                      account_id, plan, payment_id)
    VALUES (p_provider, p_sub, p_start, p_end, v_sub.account_id, p_plan, p_payment)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN NEXT balance__subscription_answer('duplicate', v_sub);
        RETURN;
    END IF;
    SELECT * INTO v_acc FROM accounts WHERE account_id = v_sub.account_id;
    v_renewal := v_acc.subscription IS NOT DISTINCT FROM v_key;
    IF p_end <= now() OR (v_renewal AND p_start < v_acc.period_start) THEN
        RETURN NEXT balance__subscription_answer('stale', v_sub, jsonb_build_object(
            'detail', 'a period that has ended or was followed by a newer one grants nothing'));
        RETURN;
    END IF;
    -- Paid: active, unless newer news (a failure since) says otherwise; a subscription that
    -- was incomplete has started, whatever order its news came in.
    UPDATE subscriptions SET plan = p_plan,
        status = CASE WHEN status = 'incomplete' OR p_event_at >= state_at THEN 'active'
                      ELSE status END,
        state_at = GREATEST(state_at, p_event_at), updated_at = now()
    WHERE provider = p_provider AND subscription_id = p_sub RETURNING * INTO v_sub;
    SELECT * INTO v_plan FROM plans WHERE id = p_plan;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'BL001: plan % is not in the plans table', p_plan;
    END IF;
    IF NOT v_renewal AND v_acc.plan IS NOT NULL THEN
        -- Before a new subscription takes the account: the plan it had ends, as removed, and
        -- a subscription that had it is superseded (its later payments go to review, not
        -- back and forth between the two).
        RETURN QUERY SELECT * FROM balance__subscription_plan(v_sub, NULL,
            'takeover:' || p_payment);
        UPDATE subscriptions s SET status = 'canceled', cancel_at = NULL, updated_at = now()
        FROM balance__subscription_of(v_acc.subscription) o
        WHERE s.provider = o.provider AND s.subscription_id = o.subscription_id;
    END IF;
    v_began := balance__alerts_begin(v_sub.account_id);
    IF v_renewal THEN
        SELECT rollover INTO v_rollover FROM plans WHERE id = v_acc.plan;
        IF v_acc.unsettled > 0 THEN
            PERFORM balance__settle(v_sub.account_id);
        END IF;
        RETURN QUERY SELECT * FROM balance__expire_allowance(v_sub.account_id,
            COALESCE(v_rollover, 0), NULL, 'allowance expired at period end');
    END IF;
    UPDATE accounts SET plan = p_plan, subscription = v_key,
        plan_anchor = CASE WHEN v_renewal THEN plan_anchor ELSE p_start END,
        period_index = NULL, period_start = p_start, period_end = p_end,
        version = version + 1, updated_at = now()
    WHERE account_id = v_sub.account_id RETURNING * INTO v_acc;
    v_res := ('ok', false, NULL, v_acc.account_id, v_acc.balance, v_acc.held, v_acc.version,
              'plan', 0, NULL, NULL, v_acc.alert_state <> 'ok');
    IF v_plan.allowance > 0 THEN
        RETURN NEXT v_res;
        v_res := balance__grant_allowance(v_acc, p_plan, v_plan.allowance, jsonb_build_object(
            'provider', p_provider, 'subscription_id', p_sub, 'payment_id', p_payment));
    END IF;
    INSERT INTO plan_periods (account_id, period_start, period_end, plan, transaction_id,
                              granted)
    VALUES (v_acc.account_id, p_start, p_end, p_plan, v_res.tx_id, v_plan.allowance)
    ON CONFLICT (account_id, period_start) DO UPDATE SET plan = EXCLUDED.plan,
        period_end = EXCLUDED.period_end, transaction_id = EXCLUDED.transaction_id,
        granted = plan_periods.granted + EXCLUDED.granted;
    UPDATE subscription_periods SET transaction_id = v_res.tx_id
    WHERE provider = p_provider AND subscription_id = p_sub AND period_start = p_start;
    PERFORM balance__emit('plan.renewed', v_acc.account_id, jsonb_build_object(
        'account_id', v_acc.account_id, 'plan', p_plan,
        'period_start', balance__ts(p_start), 'period_end', balance__ts(p_end),
        'allowance', v_plan.allowance, 'provider', p_provider, 'subscription_id', p_sub,
        'payment_id', p_payment, 'first', NOT v_renewal));
    IF v_began THEN
        -- A renewal is a movement as the calendar's is; a plan's start follows silently.
        PERFORM balance__alerts_end(v_acc.account_id, NOT v_renewal);
    END IF;
    SELECT * INTO v_acc FROM accounts WHERE account_id = v_acc.account_id;
    v_res.balance := v_acc.balance;
    v_res.low := v_acc.alert_state <> 'ok';
    RETURN NEXT v_res;
    RETURN NEXT balance__subscription_answer(CASE WHEN v_renewal THEN 'renewed' ELSE 'started'
        END, v_sub, jsonb_build_object('plan', p_plan, 'period_start', balance__ts(p_start),
        'period_end', balance__ts(p_end), 'allowance', v_plan.allowance,
        'transaction_id', v_res.tx_id));
END $$;

-- A renewal's payment failed (p_payment: the invoice or payment, when the provider names
-- one): the plan is past_due. No allowance comes until a payment succeeds; what is left stays
-- spendable; bought credits are untouched. `plan.past_due` and a push, once per lapse. An
-- event older than the newest applied (the failure of an invoice paid since, delivered late)
-- changes nothing, nor does the failure of a payment whose period was paid.
CREATE OR REPLACE FUNCTION balance_subscription_failed(
    p_provider text, p_sub text, p_account text, p_welcome bigint, p_payment text,
    p_error text, p_event_at timestamptz
) RETURNS SETOF balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_sub subscriptions;
    v_acc accounts;
BEGIN
    v_sub := balance__subscription(p_provider, p_sub, p_account, p_welcome, false);
    IF v_sub.subscription_id IS NULL THEN
        RETURN NEXT balance__subscription_answer('ignored', v_sub);
        RETURN;
    END IF;
    IF v_sub.status IN ('canceled', 'past_due') OR p_event_at < v_sub.state_at
       OR EXISTS (SELECT FROM subscription_periods WHERE provider = p_provider
                  AND subscription_id = p_sub AND payment_id = p_payment) THEN
        -- Still the newest news: an `active` older than this failure must not undo it.
        UPDATE subscriptions SET state_at = GREATEST(state_at, p_event_at)
        WHERE provider = p_provider AND subscription_id = p_sub AND status = 'past_due';
        RETURN NEXT balance__subscription_answer('nothing_to_change', v_sub);
        RETURN;
    END IF;
    SELECT * INTO v_acc FROM accounts WHERE account_id = v_sub.account_id;
    IF v_acc.subscription IS DISTINCT FROM p_provider || ':' || p_sub THEN
        -- Its first payment failed: it never gave the account a plan.
        UPDATE subscriptions SET state_at = p_event_at, updated_at = now()
        WHERE provider = p_provider AND subscription_id = p_sub RETURNING * INTO v_sub;
        RETURN NEXT balance__subscription_answer('nothing_to_change', v_sub);
        RETURN;
    END IF;
    UPDATE subscriptions SET status = 'past_due', state_at = p_event_at, updated_at = now()
    WHERE provider = p_provider AND subscription_id = p_sub RETURNING * INTO v_sub;
    PERFORM balance__emit('plan.past_due', v_acc.account_id, jsonb_build_object(
        'account_id', v_acc.account_id, 'plan', v_acc.plan, 'provider', p_provider,
        'subscription_id', p_sub, 'payment_id', p_payment, 'error', p_error,
        'period_end', balance__ts(v_acc.period_end)));
    RETURN NEXT balance__plan_touched(v_acc.account_id);
    RETURN NEXT balance__subscription_answer('past_due', v_sub, jsonb_build_object(
        'plan', v_acc.plan));
END $$;

-- What the provider says the subscription is now (Stripe customer.subscription.*, Dodo
-- subscription.updated / plan_changed / cancelled / expired), applied when it is the newest
-- news: p_status 'active' | 'past_due' | 'canceled'; p_plan the catalog plan its price is
-- (NULL: none of ours); p_cancel_at when a cancellation at the period's end takes effect.
-- - canceled: the plan ends now (an immediate cancel, or the end of one at period end).
-- - past_due: as a failed payment.
-- - another plan while the subscription holds the account: the contract's plan change
--   (balance_set_plan within the running period: an upgrade grants the difference, a
--   downgrade expires the excess allowance); bought credits are never touched.
-- Paid periods come only from balance_subscription_paid: a state says nothing of money.
CREATE OR REPLACE FUNCTION balance_subscription_state(
    p_provider text, p_sub text, p_account text, p_welcome bigint, p_status text,
    p_plan text, p_cancel_at timestamptz, p_event_at timestamptz, p_cause text
) RETURNS SETOF balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_sub subscriptions;
    v_acc accounts;
    v_key text := p_provider || ':' || p_sub;
    v_result text := 'updated';
BEGIN
    v_sub := balance__subscription(p_provider, p_sub, p_account, p_welcome, false);
    IF v_sub.subscription_id IS NULL THEN
        RETURN NEXT balance__subscription_answer('ignored', v_sub);
        RETURN;
    END IF;
    -- An ending is final, whenever its news was made; anything else only when newest.
    IF v_sub.status = 'canceled'
       OR (p_event_at < v_sub.state_at AND p_status <> 'canceled') THEN
        RETURN NEXT balance__subscription_answer('nothing_to_change', v_sub);
        RETURN;
    END IF;
    IF p_status = 'canceled' THEN
        RETURN QUERY SELECT * FROM balance__subscription_end(v_sub, p_cause);
        UPDATE subscriptions SET state_at = GREATEST(state_at, p_event_at)
        WHERE provider = p_provider AND subscription_id = p_sub RETURNING * INTO v_sub;
        RETURN NEXT balance__subscription_answer('canceled', v_sub);
        RETURN;
    END IF;
    IF p_status = 'past_due' THEN
        RETURN QUERY SELECT * FROM balance_subscription_failed(p_provider, p_sub, p_account,
            p_welcome, NULL, p_cause, p_event_at);
        RETURN;
    END IF;
    SELECT * INTO v_acc FROM accounts WHERE account_id = v_sub.account_id;
    IF v_acc.subscription = v_key AND p_plan IS NOT NULL AND p_plan <> v_acc.plan THEN
        RETURN QUERY SELECT * FROM balance__subscription_plan(v_sub, p_plan,
            'change:' || p_plan || '@' || extract(epoch FROM p_event_at)::text);
        v_result := 'plan_changed';
    END IF;
    UPDATE subscriptions SET plan = COALESCE(p_plan, plan), cancel_at = p_cancel_at,
        status = CASE WHEN status = 'incomplete' THEN status ELSE p_status END,
        state_at = p_event_at, updated_at = now()
    WHERE provider = p_provider AND subscription_id = p_sub RETURNING * INTO v_sub;
    RETURN NEXT balance__subscription_answer(v_result, v_sub, jsonb_build_object(
        'plan', v_sub.plan, 'cancel_at', balance__ts(v_sub.cancel_at)));
END $$;

-- Ends the subscriptions whose cancellation at the period's end has come (the jobs, in any
-- instance: SKIP LOCKED, and an ended one is 'canceled', so each ends once).
CREATE OR REPLACE FUNCTION balance_end_subscriptions(p_limit int)
RETURNS SETOF balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_due subscriptions;
    v_sub subscriptions;
BEGIN
    FOR v_due IN
        SELECT * FROM subscriptions WHERE cancel_at <= now() AND status <> 'canceled'
        ORDER BY cancel_at LIMIT p_limit
    LOOP
        PERFORM 1 FROM accounts WHERE account_id = v_due.account_id FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        SELECT * INTO v_sub FROM subscriptions WHERE provider = v_due.provider
          AND subscription_id = v_due.subscription_id AND cancel_at <= now()
          AND status <> 'canceled' FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        RETURN QUERY SELECT * FROM balance__subscription_end(v_sub, 'canceled at period end');
    END LOOP;
END $$;

-- The card a subscription is charged to (Stripe: its customer and default payment method),
-- for auto top-up; an auto top-up that charges that customer follows the card they changed.
CREATE OR REPLACE FUNCTION balance_save_card(p_account text, p_customer text, p_method text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM accounts WHERE account_id = p_account FOR UPDATE;
    INSERT INTO saved_cards (account_id, stripe_customer, stripe_payment_method)
    VALUES (p_account, p_customer, p_method)
    ON CONFLICT (account_id) DO UPDATE SET stripe_customer = EXCLUDED.stripe_customer,
        stripe_payment_method = EXCLUDED.stripe_payment_method, updated_at = now();
    UPDATE auto_top_ups SET stripe_payment_method = p_method, updated_at = now()
    WHERE account_id = p_account AND stripe_customer = p_customer
      AND stripe_payment_method <> p_method;
END $$;

-- ================================================================ alerts and app webhooks

-- definitions: alerts
-- Which event types the app subscribed to, and the catalog's default threshold, are the
-- `settings` row. The types are read once per transaction (a ledger row may emit several
-- events) and kept in a transaction-local setting (set_config(..., true)), which ends with
-- the transaction, so a pooler that hands the next one to another session loses nothing.
-- The value is kept with a leading marker ('v'): an unset setting reads '' once any earlier
-- transaction of the session has set it, and '' must mean "not read yet".

-- The server's configuration, written by each instance as it starts (server/ledger.py):
-- the catalog's threshold by every instance, the webhook types (p_events) only by one that
-- delivers app webhooks (NULL: one without BALANCE_APP_WEBHOOK_URL has no say, so a push-only
-- instance cannot turn delivery off for the others). The types now subscribed.
-- A higher default threshold makes the alert floors built on the old one unknown, and the
-- transaction.created trigger follows the types, both committed with the change.
CREATE OR REPLACE FUNCTION balance_configure(p_events text[], p_low_balance bigint)
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    v_was settings;
BEGIN
    SELECT * INTO v_was FROM settings FOR UPDATE;
    UPDATE settings SET events = COALESCE(p_events, events), low_balance = p_low_balance
    WHERE (events, low_balance) IS DISTINCT FROM (COALESCE(p_events, events), p_low_balance);
    -- Only a higher threshold can leave a floor too low (a skip that should have run the
    -- trigger); under a lower one a floor is only higher than it need be: the trigger runs
    -- at the next movement below it and makes it again. (No threshold stands as 0.)
    IF COALESCE(p_low_balance, 0) > COALESCE(v_was.low_balance, 0) THEN
        PERFORM balance__forget_floors(NULL);
    END IF;
    -- After the floors: its ALTER TABLE locks the ledger, which a movement writes while it
    -- holds its account, so the accounts are taken first here too.
    PERFORM balance_follow_events();
    RETURN COALESCE(p_events, v_was.events);
END $$;

-- Reads the subscribed event types into the transaction's settings, as 'v,type,type,'
-- ('v,' for none).
CREATE OR REPLACE FUNCTION balance__read_settings() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_events text;
BEGIN
    SELECT 'v,' || array_to_string(events, ',') || ',' INTO v_events FROM settings;
    PERFORM set_config('balance.settings_events', COALESCE(v_events, 'v,'), true);
END $$;

-- The event types subscribed, as ',type,type,' (',' for none), read once per transaction.
CREATE OR REPLACE FUNCTION balance__events() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v text := current_setting('balance.settings_events', true);
BEGIN
    IF v IS NULL OR v = '' THEN
        PERFORM balance__read_settings();
        v := current_setting('balance.settings_events');
    END IF;
    RETURN substr(v, 2);
END $$;

-- Writes an app webhook into the outbox, in the caller's transaction, if subscribed.
CREATE OR REPLACE FUNCTION balance__emit(p_type text, p_account text, p_data jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF strpos(balance__events(), ',' || p_type || ',') > 0 THEN
        INSERT INTO events (type, account_id, data) VALUES (p_type, p_account, p_data);
    END IF;
END $$;

-- Where `available` stands against a threshold: 'ok', 'low' (below it) or 'depleted' (0
-- or less, whatever the threshold). What accounts.alert_state holds and `low` shows.
-- PL/pgSQL: the alert trigger calls it on every debit (see the JSON shapes).
CREATE OR REPLACE FUNCTION balance__standing(p_available bigint, p_threshold bigint)
RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN CASE WHEN p_available <= 0 THEN 'depleted'
                WHEN p_available < COALESCE(p_threshold, 0) THEN 'low' ELSE 'ok' END;
END $$;

-- The catalog's default threshold (NULL: none), for an account without its own or a plan's.
-- Read afresh each time, not kept for the transaction: an alert floor made from it must not
-- come from a value that balance_configure replaced (see balance__forget_floors).
CREATE OR REPLACE FUNCTION balance__default_threshold() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    SELECT low_balance INTO v FROM settings;
    RETURN v;
END $$;

-- How long a table lock taken for the configuration (balance__forget_floors,
-- balance_follow_events) may wait, for the rest of the transaction: the movements queue
-- behind a waiting lock, so an instance gives the change up instead (55P03; its start fails
-- or its jobs loop tries again) rather than stall every debit behind a vacuum.
CREATE OR REPLACE FUNCTION balance__lock_wait() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
END $$;

-- The alert floors of accounts that take their threshold from outside their row (no
-- low_balance of their own; p_plans NULL: on any plan or none, else on one of these),
-- forgotten when that threshold changed (the catalog's default, a plan's), so the next
-- movement of each runs the alert trigger against the threshold now. Setting a NULL moves
-- no `available`, so this UPDATE does not run the trigger. The table lock first waits for
-- every movement under way, so a floor one of them made from the old threshold is
-- committed and forgotten here; a movement after it waits for the commit and reads the new
-- threshold (the trigger reads it afresh). Rare: a deploy that changed a threshold.
-- A lock that waits holds every movement back behind it (a vacuum against wraparound, a
-- long transaction): after LOCK_WAIT it gives up, and the caller's whole change with it.
CREATE OR REPLACE FUNCTION balance__forget_floors(p_plans text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM balance__lock_wait();
    LOCK TABLE accounts IN EXCLUSIVE MODE;
    UPDATE accounts SET alert_floor = NULL
    WHERE low_balance IS NULL AND alert_floor IS NOT NULL
      AND (p_plans IS NULL OR plan = ANY (p_plans));
END $$;

-- Before an account row changes: where does `available` now stand against the account's
-- threshold, and did a movement cross it? A crossing is decided here, in the transaction
-- that moved the balance, under its row lock: so each fires once whatever the concurrency.
-- Only a movement crosses (API.md): it is measured from `available` before it against the
-- threshold now, so a threshold or plan set, or a catalog whose default changed since,
-- moves the standing silently. From at or above the threshold to below it: balance.low;
-- from above 0 to 0 or less: balance.depleted; from below back to at or above it:
-- balance.recovered, only when the app was told of the low or depleted it ends.
CREATE OR REPLACE FUNCTION balance__alert_state() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_available bigint := NEW.balance - NEW.held;
    v_from bigint;
    v_threshold bigint := NEW.low_balance;
    v_was text;
    v_state text;
    v_data jsonb;
BEGIN
    -- What `available` moved from: the row before this update, or, for the update that
    -- ends a change of several steps, where that change began. NULL for no movement: a
    -- step of such a change, a setting, or nothing moved.
    IF NEW.alert_from IS NULL THEN
        v_from := COALESCE(OLD.alert_from, OLD.balance - OLD.held);
        IF v_from = v_available THEN
            v_from := NULL;
        END IF;
    END IF;
    -- A top-up starts on a movement below the threshold, not on being armed again.
    IF v_available < NEW.top_up_below AND v_from IS NOT NULL THEN
        -- One request, and disarmed until it succeeds or fails.
        -- With `available` now, which sets how many packages reach the target.
        INSERT INTO top_ups (account_id, package, stripe_customer, stripe_payment_method,
                             available, target)
        SELECT NEW.account_id, t.package, t.stripe_customer, t.stripe_payment_method,
               v_available, t.target
        FROM auto_top_ups t WHERE t.account_id = NEW.account_id AND t.enabled;
        NEW.top_up_below := NULL;
    END IF;
    IF v_threshold IS NULL AND NEW.plan IS NOT NULL THEN
        SELECT p.low_balance INTO v_threshold FROM plans p WHERE p.id = NEW.plan;
    END IF;
    IF v_threshold IS NULL THEN
        v_threshold := balance__default_threshold();
    END IF;
    v_state := balance__standing(v_available, v_threshold);
    NEW.alert_state := v_state;
    -- While 'ok', a movement to at or above this crosses nothing and starts no top-up: the
    -- WHEN skips it. GREATEST ignores NULLs: no threshold, or disarmed (just above too).
    NEW.alert_floor := GREATEST(1, v_threshold, NEW.top_up_below);
    IF v_from IS NULL OR current_setting('balance.alerts_silent', true) = 'on' THEN
        RETURN NEW;
    END IF;
    v_was := balance__standing(v_from, v_threshold);
    IF v_state = v_was THEN
        RETURN NEW;
    END IF;
    v_data := jsonb_build_object('account_id', NEW.account_id, 'balance', NEW.balance,
        'held', NEW.held, 'available', v_available, 'version', NEW.version,
        'threshold', v_threshold);
    IF v_state = 'ok' THEN
        IF NEW.alert_told THEN
            PERFORM balance__emit('balance.recovered', NEW.account_id, v_data);
            NEW.alert_told := false;
        END IF;
    ELSIF v_was = 'ok' OR v_state = 'depleted' THEN  -- depleted -> low crosses nothing
        IF v_was = 'ok' AND v_threshold IS NOT NULL THEN
            PERFORM balance__emit('balance.low', NEW.account_id, v_data);
        END IF;
        IF v_state = 'depleted' THEN
            PERFORM balance__emit('balance.depleted', NEW.account_id, v_data);
        END IF;
        NEW.alert_told := true;
    END IF;
    RETURN NEW;
END $$;

-- One change made of several movements in one transaction (a plan's renewal, a hold
-- releasing credits that then expire, a payment with its refund) crosses once, from where
-- it began to where it ended, not at each step (down to 0 and back up is no crossing):
-- balance__alerts_begin before its first movement, balance__alerts_end after its last.
-- p_silent: it crosses nothing at all (a plan's change: API.md). Between the two, each
-- step keeps alert_state right for its frame and tells the app nothing. A change already
-- begun is not begun again: begin answers whether this caller must end it.
CREATE OR REPLACE FUNCTION balance__alerts_begin(p_account text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts SET alert_from = balance - held
    WHERE account_id = p_account AND alert_from IS NULL;
    RETURN FOUND;
END $$;

CREATE OR REPLACE FUNCTION balance__alerts_end(p_account text, p_silent boolean)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- Silent: the app is told nothing, but it still moved `available`, so an auto top-up
    -- armed above where it ended starts (a plan removed takes its allowance away).
    IF p_silent THEN
        PERFORM set_config('balance.alerts_silent', 'on', true);
    END IF;
    UPDATE accounts SET alert_from = NULL WHERE account_id = p_account;
    IF p_silent THEN
        PERFORM set_config('balance.alerts_silent', '', true);
    END IF;
END $$;

-- At commit: a change begun and never ended would leave alert_from set, and the account's
-- every later movement would look like a step of it and cross nothing, silently. Such a
-- commit fails instead. Queued only by the updates that set alert_from (its WHEN), so a
-- debit never pays for it.
CREATE OR REPLACE FUNCTION balance__alerts_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM accounts WHERE account_id = NEW.account_id
               AND alert_from IS NOT NULL) THEN
        RAISE EXCEPTION 'BL002: account %: a change was begun for alerts and not ended',
            NEW.account_id;
    END IF;
    RETURN NULL;
END $$;

-- After a purchase or a reversal: purchase.completed or purchase.reversed.
CREATE OR REPLACE FUNCTION balance__transaction_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM balance__emit(CASE NEW.kind WHEN 'purchase' THEN 'purchase.completed'
                                        ELSE 'purchase.reversed' END,
                          NEW.account_id, balance__tx_json(NEW));
    RETURN NULL;
END $$;

-- After any ledger row, while the app subscribes to it: transaction.created.
CREATE OR REPLACE FUNCTION balance__transaction_created() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM balance__emit('transaction.created', NEW.account_id, balance__tx_json(NEW));
    RETURN NULL;
END $$;

-- The transaction.created trigger is enabled exactly while `settings` subscribes to the
-- event: a ledger row of a deployment that did not ask for it queues no trigger and calls
-- no function (a WHEN cannot read the settings row without calling one). Altered only when
-- its state differs (ALTER TABLE locks the ledger against every write until commit): by
-- balance_configure, in the transaction that changes the types, so both commit together,
-- and by the definitions, which recreate it; a hand-edited `settings` is followed at the
-- next start. SECURITY DEFINER: altering a table is its owner's right (the role that
-- migrates), which the server's role, writing only rows, need not have.
CREATE OR REPLACE FUNCTION balance_follow_events() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_on boolean := COALESCE((SELECT 'transaction.created' = ANY (events) FROM settings),
                             false);
BEGIN
    IF v_on IS DISTINCT FROM (SELECT tgenabled <> 'D' FROM pg_trigger
                              WHERE tgname = 'transactions_created'
                                AND tgrelid = 'transactions'::regclass) THEN
        PERFORM balance__lock_wait();
        EXECUTE format('ALTER TABLE transactions %s TRIGGER transactions_created',
                       CASE WHEN v_on THEN 'ENABLE' ELSE 'DISABLE' END);
    END IF;
END $$;

-- Recreated each time: a WHEN clause cannot be replaced in place.
DO $$ BEGIN
    -- Only this trigger keeps the floors. If the one it replaces did not (a release from
    -- before them ran in between: a rollback), a floor may be stale: every one is forgotten.
    IF EXISTS (SELECT FROM pg_trigger WHERE tgname = 'accounts_alert_state'
               AND tgrelid = 'accounts'::regclass
               AND pg_get_triggerdef(oid) NOT LIKE '%alert_floor%') THEN
        UPDATE accounts SET alert_floor = NULL WHERE alert_floor IS NOT NULL;
    END IF;
    DROP TRIGGER IF EXISTS accounts_alert_state ON accounts;
    -- Only when what it looks at changed (a settlement or a period move does not), or a
    -- change of several steps is under way; a movement of an account standing 'ok' only to
    -- below its alert_floor. Such a skip is what the function would do: the row stood 'ok'
    -- against the very threshold and top_up_below the floor was made from (a change of
    -- either in the row runs the trigger, which remakes it; one outside the row, the
    -- catalog's default or a plan's, forgets it: balance__forget_floors), and `available`
    -- ends at or above both and above 0, so it stands 'ok' after as before: no crossing,
    -- no top-up (one starts only below top_up_below), and the same floor. alert_state and
    -- balance - held are never NULL and a NULL floor is tested with IS NULL, so the clause
    -- is never NULL (a NULL WHEN would skip).
    CREATE TRIGGER accounts_alert_state BEFORE UPDATE ON accounts FOR EACH ROW
        WHEN ((NEW.balance - NEW.held <> OLD.balance - OLD.held
               AND (OLD.alert_state <> 'ok' OR OLD.alert_floor IS NULL
                    OR NEW.balance - NEW.held < OLD.alert_floor))
              OR NEW.low_balance IS DISTINCT FROM OLD.low_balance
              OR NEW.plan IS DISTINCT FROM OLD.plan
              OR NEW.top_up_below IS DISTINCT FROM OLD.top_up_below
              OR OLD.alert_from IS NOT NULL)
        EXECUTE FUNCTION balance__alert_state();
    DROP TRIGGER IF EXISTS accounts_alerts_ended ON accounts;
    CREATE CONSTRAINT TRIGGER accounts_alerts_ended AFTER UPDATE ON accounts
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.alert_from IS NOT NULL)
        EXECUTE FUNCTION balance__alerts_ended();
    -- A ledger row's app webhooks, each event from one trigger, so none is written twice.
    -- AFTER triggers fire in name order: a purchase's transaction.created comes first.
    DROP TRIGGER IF EXISTS transactions_events ON transactions;
    CREATE TRIGGER transactions_events AFTER INSERT ON transactions FOR EACH ROW
        WHEN (NEW.kind IN ('purchase', 'reversal'))
        EXECUTE FUNCTION balance__transaction_events();
    DROP TRIGGER IF EXISTS transactions_created ON transactions;
    CREATE TRIGGER transactions_created AFTER INSERT ON transactions FOR EACH ROW
        EXECUTE FUNCTION balance__transaction_created();
    PERFORM balance_follow_events();
END $$;

-- PUT /v1/accounts/{id}/alerts: the account's own threshold (NULL: its plan's or the
-- catalog's). No movement, so no crossing (the trigger moves `low` silently); it bumps the
-- version so the push carries the new `low`.
CREATE OR REPLACE FUNCTION balance_set_alerts(p_account text, p_welcome bigint,
                                              p_low_balance bigint)
RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
BEGIN
    PERFORM balance__ensure(p_account, p_welcome);
    UPDATE accounts SET low_balance = p_low_balance, version = version + 1, updated_at = now()
    WHERE account_id = p_account RETURNING * INTO v_acc;
    RETURN ('ok', false, jsonb_build_object('account', balance__account_json(v_acc),
                                            'low_balance', v_acc.low_balance),
            p_account, v_acc.balance, v_acc.held, v_acc.version, 'alerts', 0, NULL, NULL,
            v_acc.alert_state <> 'ok')::balance_result;
END $$;

-- Claims up to p_limit due events for p_lease seconds (this instance delivers them; if it
-- dies, the lease runs out and another does), counting the attempt.
CREATE OR REPLACE FUNCTION balance_claim_events(p_limit int, p_lease float8)
RETURNS SETOF events LANGUAGE sql AS $$
    UPDATE events e SET attempts = e.attempts + 1,
        next_attempt_at = now() + make_interval(secs => p_lease)
    WHERE e.id IN (SELECT id FROM events WHERE status = 'pending' AND next_attempt_at <= now()
                   ORDER BY next_attempt_at, id LIMIT p_limit FOR UPDATE SKIP LOCKED)
    RETURNING e.*
$$;

-- Records one attempt: delivered (2xx), or due again after p_retry_in seconds, or failed
-- (p_retry_in NULL: that was the last).
CREATE OR REPLACE FUNCTION balance_record_attempt(
    p_event bigint, p_attempt int, p_status int, p_latency_ms int, p_error text,
    p_retry_in float8
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_attempts (event_id, attempt, status, latency_ms, error)
    VALUES (p_event, p_attempt, p_status, p_latency_ms, p_error)
    ON CONFLICT DO NOTHING;
    IF p_status BETWEEN 200 AND 299 THEN
        UPDATE events SET status = 'delivered', delivered_at = now()
        WHERE id = p_event AND status <> 'delivered';
    ELSIF p_retry_in IS NULL THEN
        UPDATE events SET status = 'failed'
        WHERE id = p_event AND status = 'pending' AND attempts = p_attempt;
    ELSE
        UPDATE events SET next_attempt_at = now() + make_interval(secs => p_retry_in)
        WHERE id = p_event AND status = 'pending' AND attempts = p_attempt;
    END IF;
END $$;

-- The app's event list (GET /v1/events), newest first, with each event's attempts.
CREATE OR REPLACE FUNCTION balance_events_json(p_status text, p_limit int, p_before bigint,
                                               p_account text)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('events', COALESCE(jsonb_agg(j ORDER BY id DESC), '[]'::jsonb),
                              'next', CASE WHEN count(*) = p_limit THEN min(id) END)
    FROM (SELECT e.id, jsonb_build_object(
            'id', e.id, 'webhook_id', e.webhook_id, 'type', e.type, 'account_id', e.account_id,
            'data', e.data, 'status', e.status, 'attempts', e.attempts,
            'next_attempt_at', CASE WHEN e.status = 'pending'
                                    THEN balance__ts(e.next_attempt_at) END,
            'created_at', balance__ts(e.created_at),
            'delivered_at', balance__ts(e.delivered_at),
            'attempt_log', COALESCE((SELECT jsonb_agg(jsonb_build_object(
                'attempt', a.attempt, 'at', balance__ts(a.at), 'status', a.status,
                'latency_ms', a.latency_ms, 'error', a.error) ORDER BY a.attempt)
                FROM event_attempts a WHERE a.event_id = e.id), '[]'::jsonb)) AS j
          FROM events e
          WHERE (p_status IS NULL OR e.status = p_status)
            AND (p_before IS NULL OR e.id < p_before)
            AND (p_account IS NULL OR e.account_id = p_account)
          ORDER BY e.id DESC LIMIT p_limit) page
$$;

-- POST /v1/events/{id}/retry: due now again, whatever its status; no row when unknown.
CREATE OR REPLACE FUNCTION balance_retry_event(p_event bigint)
RETURNS TABLE (webhook_id text, account_id text) LANGUAGE sql AS $$
    UPDATE events SET status = 'pending', next_attempt_at = now(), delivered_at = NULL
    WHERE id = p_event RETURNING webhook_id, account_id
$$;

-- ================================================================ auto top-up

-- definitions: top_ups

-- A monthly_limit counts in the UTC calendar month, the spend caps' 'month' window
-- (balance__spend_window, balance__spend_end).

-- What this month's top-ups of an account cost in p_currency: those whose PaymentIntent
-- was created or paid (a failed one charged nothing).
CREATE OR REPLACE FUNCTION balance__top_up_spent(p_account text, p_currency text)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT COALESCE(sum(amount), 0)::bigint FROM top_ups
    WHERE account_id = p_account AND priced_at >= balance__spend_window('month')
      AND currency = p_currency AND status IN ('created', 'succeeded')
$$;

-- An auto top-up setting as PUT …/auto-top-up and GET …/settings answer it.
CREATE OR REPLACE FUNCTION balance__auto_top_up_json(t auto_top_ups) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'package', t.package, 'threshold', t.threshold, 'target', t.target,
        'monthly_limit', t.monthly_limit, 'currency', t.currency,
        'spent_this_month', balance__top_up_spent(t.account_id, t.currency),
        'paused_until', CASE WHEN t.paused_until > now() THEN balance__ts(t.paused_until) END,
        'stripe_customer', t.stripe_customer,
        'stripe_payment_method', t.stripe_payment_method, 'enabled', t.enabled)
$$;

-- PUT /v1/accounts/{id}/auto-top-up: configure (armed at once) or, p_package NULL, turn off.
-- A new setting ends a pause for the monthly limit (it may be the limit raised); if the
-- limit still stops the next top-up, the app hears of it once more.
CREATE OR REPLACE FUNCTION balance_set_auto_top_up(
    p_account text, p_welcome bigint, p_package text, p_threshold bigint, p_customer text,
    p_method text, p_target bigint DEFAULT NULL, p_monthly_limit bigint DEFAULT NULL,
    p_currency text DEFAULT NULL
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_row auto_top_ups;
BEGIN
    PERFORM balance__ensure(p_account, p_welcome);
    PERFORM 1 FROM accounts WHERE account_id = p_account FOR UPDATE;
    IF p_package IS NULL THEN
        DELETE FROM auto_top_ups WHERE account_id = p_account;
        UPDATE accounts SET top_up_below = NULL WHERE account_id = p_account;
        -- A request not sent yet is dropped with the setting.
        UPDATE top_ups SET status = 'failed', error = 'turned_off', resolved_at = now()
        WHERE account_id = p_account AND status = 'requested';
        RETURN jsonb_build_object('auto_top_up', NULL);
    END IF;
    IF p_customer IS NULL THEN  -- the card a checkout saved (019_subscriptions)
        SELECT stripe_customer, stripe_payment_method INTO p_customer, p_method
        FROM saved_cards WHERE account_id = p_account;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'account % has no saved card', p_account USING ERRCODE = 'BL004';
        END IF;
    END IF;
    INSERT INTO auto_top_ups (account_id, package, threshold, stripe_customer,
                              stripe_payment_method, target, monthly_limit, currency)
    VALUES (p_account, p_package, p_threshold, p_customer, p_method, p_target,
            p_monthly_limit, p_currency)
    ON CONFLICT (account_id) DO UPDATE SET package = EXCLUDED.package,
        threshold = EXCLUDED.threshold, stripe_customer = EXCLUDED.stripe_customer,
        stripe_payment_method = EXCLUDED.stripe_payment_method, target = EXCLUDED.target,
        monthly_limit = EXCLUDED.monthly_limit, currency = EXCLUDED.currency,
        enabled = true, declines = 0, paused_until = NULL, updated_at = now()
    RETURNING * INTO v_row;
    -- Armed unless a request is in flight.
    UPDATE accounts SET top_up_below = p_threshold WHERE account_id = p_account
        AND NOT EXISTS (SELECT FROM top_ups t WHERE t.account_id = p_account
                        AND t.status IN ('requested', 'created'));
    RETURN jsonb_build_object('auto_top_up', balance__auto_top_up_json(v_row));
END $$;

-- Claims due requests for p_lease seconds (a worker that dies loses them to another; the
-- PaymentIntent's idempotency key is the request's id, so a second try creates nothing new).
-- quantity, amount and currency are set once a try has priced the request.
CREATE OR REPLACE FUNCTION balance_claim_top_ups(p_limit int, p_lease float8)
RETURNS TABLE (id uuid, account_id text, package text, stripe_customer text,
               stripe_payment_method text, attempts int, created_at timestamptz,
               available bigint, target bigint, quantity int, amount bigint, currency text)
LANGUAGE sql AS $$
    UPDATE top_ups u SET attempts = u.attempts + 1,
        next_attempt_at = now() + make_interval(secs => p_lease)
    WHERE u.id IN (SELECT t.id FROM top_ups t WHERE t.status = 'requested'
                   AND t.next_attempt_at <= now() ORDER BY t.next_attempt_at
                   LIMIT p_limit FOR UPDATE SKIP LOCKED)
    RETURNING u.id, u.account_id, u.package, u.stripe_customer, u.stripe_payment_method,
              u.attempts, u.created_at, u.available, u.target, u.quantity, u.amount,
              u.currency
$$;

-- The worker priced a request (p_quantity packages for p_amount minor units of p_currency):
-- may it be charged? Decided under the account's lock (PUT takes it too) with the setting
-- and the request locked, so the month's spend cannot move meanwhile; a request is priced
-- once, and a retry charges what this recorded. Answers 'priced', 'gone' (no longer
-- requested: turned off meanwhile), 'currency_changed' (the catalog now charges the package
-- in another money than the limit's) or 'limit_reached': then the request fails without
-- counting as a decline, auto top-up is paused until the month turns, and the app hears
-- top_up.limit_reached, once, since nothing is requested while paused.
CREATE OR REPLACE FUNCTION balance_top_up_priced(p_id uuid, p_quantity int, p_amount bigint,
                                                 p_currency text, OUT verdict text,
                                                 OUT quantity int, OUT amount bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_top top_ups;
    v_auto auto_top_ups;
    v_spent bigint;
    v_unit bigint := p_amount / p_quantity;  -- one package's price
    v_fit bigint;
    v_next_month timestamptz := balance__spend_end(balance__spend_window('month'), 'month');
BEGIN
    quantity := p_quantity;
    amount := p_amount;
    PERFORM 1 FROM accounts a JOIN top_ups t ON t.account_id = a.account_id
    WHERE t.id = p_id FOR UPDATE OF a;
    SELECT * INTO v_top FROM top_ups WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR v_top.status <> 'requested' THEN
        verdict := 'gone';
        RETURN;
    END IF;
    SELECT * INTO v_auto FROM auto_top_ups WHERE account_id = v_top.account_id FOR UPDATE;
    IF FOUND AND v_auto.monthly_limit IS NOT NULL THEN
        IF v_auto.currency IS DISTINCT FROM p_currency THEN
            verdict := 'currency_changed';
            RETURN;
        END IF;
        v_spent := balance__top_up_spent(v_top.account_id, p_currency);
        -- A target that asks for more than the month has left buys what still fits: fewer
        -- packages now rather than none until the month turns.
        v_fit := (v_auto.monthly_limit - v_spent) / v_unit;
        IF v_spent + p_amount > v_auto.monthly_limit AND v_fit >= 1 THEN
            quantity := v_fit;
            amount := v_fit * v_unit;
        END IF;
        IF v_spent + amount > v_auto.monthly_limit THEN
            UPDATE top_ups SET status = 'failed', error = 'monthly_limit_reached',
                resolved_at = now(), quantity = p_quantity, amount = p_amount,
                currency = p_currency
            WHERE id = p_id;
            UPDATE auto_top_ups SET paused_until = v_next_month, updated_at = now()
            WHERE account_id = v_top.account_id;
            PERFORM balance__emit('top_up.limit_reached', v_top.account_id, jsonb_build_object(
                'top_up_id', p_id, 'account_id', v_top.account_id,
                'package', v_top.package, 'quantity', p_quantity, 'amount', p_amount,
                'currency', p_currency, 'monthly_limit', v_auto.monthly_limit,
                'spent_this_month', v_spent, 'resets_at', balance__ts(v_next_month)));
            verdict := 'limit_reached';
            RETURN;
        END IF;
    END IF;
    UPDATE top_ups SET quantity = balance_top_up_priced.quantity,
        amount = balance_top_up_priced.amount, currency = p_currency, priced_at = now()
    WHERE id = p_id;
    verdict := 'priced';
END $$;

-- The jobs loop: auto top-ups paused by their monthly limit are armed again once the month
-- they were paused in is over (how many). The account is locked first, as everywhere, and
-- a busy one skipped (the next round takes it): a job that waited for locks taken in its own
-- order could deadlock with group commit's account_id order.
CREATE OR REPLACE FUNCTION balance_resume_top_ups(p_limit int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_account text;
    v_resumed int := 0;
BEGIN
    FOR v_account IN SELECT t.account_id FROM auto_top_ups t WHERE t.paused_until <= now()
                     ORDER BY t.paused_until LIMIT p_limit LOOP
        PERFORM 1 FROM accounts WHERE account_id = v_account FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        UPDATE auto_top_ups SET paused_until = NULL, updated_at = now()
        WHERE account_id = v_account AND paused_until <= now();
        IF FOUND THEN
            PERFORM balance__rearm_top_up(v_account);
            v_resumed := v_resumed + 1;
        END IF;
    END LOOP;
    RETURN v_resumed;
END $$;

-- Arms the account's auto top-up again (after a success or a decline) if it is on and not
-- paused by its monthly limit.
CREATE OR REPLACE FUNCTION balance__rearm_top_up(p_account text) RETURNS void
LANGUAGE sql AS $$
    UPDATE accounts a SET top_up_below = t.threshold FROM auto_top_ups t
    WHERE a.account_id = p_account AND t.account_id = p_account AND t.enabled
      AND t.paused_until IS NULL
$$;

-- The PaymentIntent exists: top_up.requested. If its payment webhook came first, it is
-- already paid.
CREATE OR REPLACE FUNCTION balance_top_up_created(p_id uuid, p_intent text, p_data jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_account text;
BEGIN
    -- The payment's lock, as balance_purchase takes it: its webhook cannot slip between
    -- this and the check below. Then the account, first, as everywhere.
    PERFORM balance__payment_lock('stripe', p_intent);
    PERFORM 1 FROM accounts a JOIN top_ups t ON t.account_id = a.account_id
    WHERE t.id = p_id FOR UPDATE OF a;
    UPDATE top_ups SET status = 'created', payment_intent = p_intent
    WHERE id = p_id AND status = 'requested' RETURNING account_id INTO v_account;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM balance__emit('top_up.requested', v_account, p_data);
    PERFORM 1 FROM payments WHERE provider = 'stripe' AND payment_id = p_intent;
    IF FOUND THEN
        PERFORM balance__top_up_paid(p_intent);
    END IF;
END $$;

-- The payment of a top-up's PaymentIntent was credited (balance_purchase calls this).
CREATE OR REPLACE FUNCTION balance__top_up_paid(p_intent text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_account text;
BEGIN
    UPDATE top_ups SET status = 'succeeded', resolved_at = now()
    WHERE payment_intent = p_intent AND status = 'created' RETURNING account_id INTO v_account;
    IF FOUND THEN
        UPDATE auto_top_ups SET declines = 0 WHERE account_id = v_account;
        PERFORM balance__rearm_top_up(v_account);
    END IF;
END $$;

-- A decline (at creation, p_id; or later by webhook, p_intent): top_up.failed, armed again,
-- or off after the third decline in a row.
CREATE OR REPLACE FUNCTION balance_top_up_failed(p_id uuid, p_intent text, p_error text,
                                                 p_data jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_top top_ups;
    v_declines int;
BEGIN
    -- The account first, as everywhere (balance_set_auto_top_up locks it too).
    PERFORM 1 FROM accounts a JOIN top_ups t ON t.account_id = a.account_id
    WHERE (t.id = p_id OR t.payment_intent = p_intent) FOR UPDATE OF a;
    UPDATE top_ups SET status = 'failed', error = p_error, resolved_at = now()
    WHERE ((p_id IS NOT NULL AND id = p_id) OR (p_intent IS NOT NULL AND payment_intent = p_intent))
      AND status IN ('requested', 'created')
    RETURNING * INTO v_top;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE auto_top_ups SET declines = declines + 1,
        enabled = declines + 1 < 3, updated_at = now()
    WHERE account_id = v_top.account_id RETURNING declines INTO v_declines;
    PERFORM balance__rearm_top_up(v_top.account_id);
    PERFORM balance__emit('top_up.failed', v_top.account_id, p_data || jsonb_build_object(
        'account_id', v_top.account_id, 'package', v_top.package, 'error', p_error,
        'declines', v_declines, 'disabled', v_declines >= 3));
END $$;

-- A request that could not reach Stripe: due again after p_retry_in seconds.
CREATE OR REPLACE FUNCTION balance_top_up_later(p_id uuid, p_retry_in float8, p_error text)
RETURNS void LANGUAGE sql AS $$
    UPDATE top_ups SET next_attempt_at = now() + make_interval(secs => p_retry_in),
        error = p_error
    WHERE id = p_id AND status = 'requested'
$$;

-- ================================================================ spend caps

-- definitions: spend_caps
-- An account's spend cap (docs/api.md "Spend caps"; step 017_spend_limits). The movements check
-- and count it (balance__post, balance_hold, balance_resolve_hold, balance__over_cap);
-- these set and read it.

-- The `limits` object: the cap, what usage took in the current window, what the account
-- holds (counted against the cap as spent) and when the window ends; `spend` is null
-- without a cap (and for an account not created yet, whose row here is NULL).
CREATE OR REPLACE FUNCTION balance__limits_json(a accounts) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF a.spend_cap IS NULL THEN
        RETURN jsonb_build_object('spend', NULL);
    END IF;
    RETURN jsonb_build_object('spend', jsonb_build_object(
        'amount', a.spend_cap, 'period', a.spend_period,
        'used', balance__window_used(a.spend_window, a.spend_period, a.spend_used),
        'held', a.held,
        'resets_at', balance__ts(balance__spend_resets(a.spend_window, a.spend_period))));
END $$;

-- PUT /v1/accounts/{id}/limits: the account's spend cap (p_cap NULL: none, and its count
-- goes). A cap set anew, or given another period, starts from what usage already took in
-- the current window, summed from the ledger (the account's usage rows, through
-- transactions_account_kind_idx): a daily cap set at noon counts the morning. Changing only
-- the amount keeps the running count. Under the account's row lock, so no debit slips
-- between the sum and the count. Not a movement: balance and version stay, nothing is
-- pushed.
CREATE OR REPLACE FUNCTION balance_set_limits(p_account text, p_welcome bigint, p_cap bigint,
                                              p_period text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
    v_window timestamptz;
    v_used bigint;
BEGIN
    PERFORM balance__ensure(p_account, p_welcome);
    SELECT * INTO v_acc FROM accounts WHERE account_id = p_account FOR UPDATE;
    IF p_cap IS NULL THEN
        UPDATE accounts SET spend_cap = NULL, spend_period = NULL, spend_window = NULL,
                            spend_used = 0
        WHERE account_id = p_account RETURNING * INTO v_acc;
    ELSE
        v_window := balance__spend_window(p_period);
        IF v_acc.spend_cap IS NOT NULL AND v_acc.spend_period = p_period THEN
            v_used := balance__window_used(v_acc.spend_window, p_period, v_acc.spend_used);
            v_window := balance__spend_roll(v_acc.spend_window, p_period);
        ELSE
            SELECT COALESCE(-sum(t.amount), 0) INTO v_used FROM transactions t
            WHERE t.account_id = p_account AND t.kind = 'usage' AND t.created_at >= v_window;
        END IF;
        UPDATE accounts SET spend_cap = p_cap, spend_period = p_period, spend_window = v_window,
                            spend_used = v_used
        WHERE account_id = p_account RETURNING * INTO v_acc;
    END IF;
    RETURN jsonb_build_object('limits', balance__limits_json(v_acc));
END $$;

-- GET /v1/accounts/{id}/limits; an unknown account has no cap (and is not created).
CREATE OR REPLACE FUNCTION balance_limits(p_account text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_acc accounts;
BEGIN
    SELECT * INTO v_acc FROM accounts WHERE account_id = p_account;
    RETURN jsonb_build_object('limits', balance__limits_json(v_acc));
END $$;

-- ================================================================ payments

-- definitions: payments
-- Every function takes a per-payment advisory lock first: a payment and its refunds are
-- processed one at a time, whatever order and instance they arrive on.

-- Refunds still waiting for their payment (or for a payment that was never credits).
CREATE OR REPLACE VIEW pending_refunds AS
    SELECT * FROM payment_refunds WHERE applied_at IS NULL;

CREATE OR REPLACE FUNCTION balance__payment_lock(p_provider text, p_payment text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- 0x7061796D ('paym') namespaces these locks away from migrate's advisory lock.
    PERFORM pg_advisory_xact_lock(1885436269, hashtext(p_provider || ':' || p_payment));
END $$;

-- Brings the payment's reversal up to what its stored refunds call for. The target is
-- floor(credits * refunded / paid) over the cumulative refunded money, so several partial
-- refunds never round to more than one full refund would, and a full refund is exact.
-- Returns a NULL result when the payment is unknown (its refunds stay pending).
CREATE OR REPLACE FUNCTION balance__apply_refunds(
    p_provider text, p_payment text, p_welcome bigint, p_mode text
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_pay payments;
    v_refunded bigint;
    v_paid bigint;
    v_full boolean;
    v_target bigint;
    v_delta bigint;
    v_key text;
    v_short bigint;
    v_res balance_result;
BEGIN
    SELECT * INTO v_pay FROM payments
    WHERE provider = p_provider AND payment_id = p_payment FOR UPDATE;
    IF NOT FOUND THEN
        RETURN v_res;
    END IF;
    SELECT GREATEST(COALESCE(max(r.refunded) FILTER (WHERE r.cumulative), 0),
                    COALESCE(sum(r.refunded) FILTER (WHERE NOT r.cumulative), 0))::bigint,
           max(r.paid), COALESCE(bool_or(r.full_refund), false)
    INTO v_refunded, v_paid, v_full
    FROM payment_refunds r WHERE r.provider = p_provider AND r.payment_id = p_payment;
    UPDATE payment_refunds SET applied_at = now()
    WHERE provider = p_provider AND payment_id = p_payment AND applied_at IS NULL;

    v_paid := COALESCE(NULLIF(v_paid, 0), NULLIF(v_pay.amount_paid, 0));
    IF v_full THEN
        v_target := v_pay.credits;
    ELSIF v_paid IS NULL THEN
        v_target := v_pay.reversed;  -- a partial refund of an unknown total: cannot size it
    ELSE
        v_target := LEAST(v_pay.credits,
            floor(v_pay.credits::numeric * LEAST(v_refunded, v_paid) / v_paid)::bigint);
    END IF;
    v_delta := v_target - v_pay.reversed;

    IF v_delta <= 0 THEN
        v_res.result := 'ok';
        v_res.replayed := false;
        v_res.body := jsonb_build_object('result', 'nothing_to_reverse',
                                         'account_id', v_pay.account_id,
                                         'credits_reversed_total', v_pay.reversed);
        RETURN v_res;
    END IF;

    -- Refunds come first: open or lost disputes keep only the room the refunds leave, so
    -- a payment is never taken back more than once (a refund during an inquiry, say).
    UPDATE payments SET reversed = v_target, updated_at = now()
    WHERE provider = p_provider AND payment_id = p_payment;
    PERFORM balance__apply_disputes(p_provider, p_payment, p_welcome);

    v_key := 'webhook:' || p_provider || ':' || p_payment || ':reversed:' || v_target;
    v_res := balance__post(
        v_pay.account_id, p_welcome, v_key, sha256(convert_to(v_key, 'UTF8')), 'reversal',
        -v_delta, 'refund via ' || p_provider,
        jsonb_build_object('provider', p_provider, 'payment_id', p_payment,
                           'credits_reversed_total', v_target),
        NULL, p_mode);
    IF v_res.result IS DISTINCT FROM 'ok' OR v_res.replayed THEN
        -- Never mark the payment reversed without its ledger row. Only a key taken before
        -- the API reserved `webhook:` keys can get here; the provider retries the 5xx.
        RAISE EXCEPTION 'the reversal of % payment % cannot be posted: key % is taken',
            p_provider, p_payment, v_key USING ERRCODE = 'BL001';
    END IF;
    v_short := COALESCE((v_res.body ->> 'unrecovered')::bigint, 0);
    UPDATE payments SET unrecovered = unrecovered + v_short
    WHERE provider = p_provider AND payment_id = p_payment;
    v_res.body := v_res.body || jsonb_build_object(
        'result', 'reversed', 'account_id', v_pay.account_id, 'credits_reversed', v_delta,
        'credits_reversed_total', v_target);
    RETURN v_res;
END $$;

-- Brings every dispute of a payment to what its status calls for: its share of the credits
-- taken back while open or lost, nothing once won. Each change is a `reversal` row (taken:
-- negative, may go into debt; given back: positive) under a key naming the dispute and
-- the credits it then holds, so it is posted exactly once. Returns a NULL result when the
-- payment is unknown (the disputes wait for it), else the last change made (if any).
CREATE OR REPLACE FUNCTION balance__apply_disputes(
    p_provider text, p_payment text, p_welcome bigint
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_pay payments;
    v_dispute payment_disputes;
    v_share bigint;
    v_room bigint;
    v_target bigint;
    v_key text;
    v_step balance_result;
    v_res balance_result;
BEGIN
    SELECT * INTO v_pay FROM payments
    WHERE provider = p_provider AND payment_id = p_payment FOR UPDATE;
    IF NOT FOUND THEN
        RETURN v_res;
    END IF;
    v_res.result := 'ok';
    v_res.replayed := false;
    FOR v_dispute IN
        SELECT * FROM payment_disputes WHERE provider = p_provider AND payment_id = p_payment
        ORDER BY created_at, dispute_id FOR UPDATE
    LOOP
        IF v_dispute.status = 'won' THEN
            v_target := 0;
        ELSE
            v_share := CASE
                WHEN v_dispute.amount IS NULL OR COALESCE(v_pay.amount_paid, 0) = 0
                     OR v_dispute.amount >= v_pay.amount_paid THEN v_pay.credits
                ELSE floor(v_pay.credits::numeric * v_dispute.amount / v_pay.amount_paid)::bigint
            END;
            -- Never more than refunds and the other disputes have left of the purchase.
            SELECT v_pay.credits - v_pay.reversed - COALESCE(sum(d.taken), 0) INTO v_room
            FROM payment_disputes d WHERE d.provider = p_provider AND d.payment_id = p_payment
              AND d.dispute_id <> v_dispute.dispute_id;
            v_target := GREATEST(LEAST(v_share, v_room), 0);
        END IF;
        CONTINUE WHEN v_target = v_dispute.taken;
        v_key := 'webhook:' || p_provider || ':' || p_payment || ':dispute:'
                 || v_dispute.dispute_id || ':' || v_target;
        v_step := balance__post(
            v_pay.account_id, p_welcome, v_key, sha256(convert_to(v_key, 'UTF8')), 'reversal',
            v_dispute.taken - v_target,
            CASE WHEN v_target < v_dispute.taken THEN 'dispute won via '
                 ELSE 'dispute via ' END || p_provider,
            jsonb_build_object('provider', p_provider, 'payment_id', p_payment,
                               'dispute_id', v_dispute.dispute_id, 'status', v_dispute.status,
                               'credits_disputed', v_target),
            NULL, 'debt');
        IF v_step.result IS DISTINCT FROM 'ok' OR v_step.replayed THEN
            RAISE EXCEPTION 'the dispute change of % payment % cannot be posted: key % is taken',
                p_provider, p_payment, v_key USING ERRCODE = 'BL001';
        END IF;
        UPDATE payment_disputes SET taken = v_target, updated_at = now()
        WHERE provider = p_provider AND dispute_id = v_dispute.dispute_id;
        v_res := v_step;
        v_res.body := v_step.body || jsonb_build_object(
            'result', CASE WHEN v_target < v_dispute.taken THEN 'dispute_returned'
                           ELSE 'dispute_taken' END,
            'dispute_id', v_dispute.dispute_id, 'credits_disputed', v_target);
    END LOOP;
    RETURN v_res;
END $$;

-- Stores a dispute's news (opened, won, lost) once per status, and applies it if its
-- payment is known; otherwise it waits, pending, for balance_purchase. A dispute that is
-- won or lost stays so, whatever arrives after.
CREATE OR REPLACE FUNCTION balance_dispute(
    p_provider text, p_payment text, p_dispute text, p_amount bigint, p_status text,
    p_event_id text, p_welcome bigint
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_account text;
    v_began boolean;
    v_res balance_result;
BEGIN
    PERFORM balance__payment_lock(p_provider, p_payment);
    -- Its changes (one per dispute of the payment) are one movement.
    SELECT account_id INTO v_account FROM payments
    WHERE provider = p_provider AND payment_id = p_payment;
    v_began := balance__alerts_begin(v_account);
    INSERT INTO payment_disputes (provider, dispute_id, payment_id, amount, status, event_id)
    VALUES (p_provider, p_dispute, p_payment, p_amount, p_status, p_event_id)
    ON CONFLICT (provider, dispute_id) DO UPDATE SET
        status = CASE WHEN payment_disputes.status IN ('won', 'lost')
                      THEN payment_disputes.status ELSE EXCLUDED.status END,
        amount = COALESCE(EXCLUDED.amount, payment_disputes.amount),
        event_id = EXCLUDED.event_id, updated_at = now();
    v_res := balance__apply_disputes(p_provider, p_payment, p_welcome);
    IF v_began THEN
        PERFORM balance__alerts_end(v_account, false);
    END IF;
    IF v_res.result IS NULL THEN
        v_res.result := 'ok';
        v_res.replayed := false;
        v_res.body := jsonb_build_object('result', 'pending');
    ELSIF v_res.account_id IS NULL THEN
        v_res.body := jsonb_build_object('result', 'nothing_to_change');
    END IF;
    RETURN v_res;
END $$;

-- Credits a paid purchase once per (provider, payment id), then applies any refunds that
-- arrived before it. The payment row, the idempotency record and the ledger row commit
-- together. A payment already credited answers result 'duplicate' and changes nothing.
CREATE OR REPLACE FUNCTION balance_purchase(
    p_provider text, p_payment text, p_account text, p_credits bigint, p_amount_paid bigint,
    p_currency text, p_event_id text, p_metadata jsonb, p_welcome bigint, p_mode text
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_pay payments;
    v_acc accounts;
    v_key text := 'webhook:' || p_provider || ':' || p_payment;
    v_began boolean;
    v_res balance_result;
    v_rev balance_result;
BEGIN
    PERFORM balance__payment_lock(p_provider, p_payment);
    SELECT * INTO v_pay FROM payments WHERE provider = p_provider AND payment_id = p_payment;
    IF FOUND THEN
        SELECT * INTO v_acc FROM accounts WHERE account_id = v_pay.account_id;
        v_res.result := 'ok';
        v_res.replayed := true;
        v_res.body := jsonb_build_object(
            'result', 'duplicate', 'account_id', v_pay.account_id,
            'account', balance__account_json(v_acc));
        RETURN v_res;
    END IF;

    -- The credits and what refunds and disputes that came first take back are one movement.
    PERFORM balance__ensure(p_account, p_welcome);
    v_began := balance__alerts_begin(p_account);
    v_res := balance__post(
        p_account, p_welcome, v_key, sha256(convert_to('purchase:' || v_key, 'UTF8')),
        'purchase', p_credits, 'purchase via ' || p_provider, p_metadata, NULL, 'available');
    IF v_res.result <> 'ok' OR v_res.replayed THEN
        -- Only possible if the app itself used our key shape on /credit; refuse loudly.
        RAISE EXCEPTION 'idempotency key % already used on account %', v_key, p_account
            USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO payments (provider, payment_id, account_id, credits, amount_paid, currency,
                          transaction_id, event_id)
    VALUES (p_provider, p_payment, p_account, p_credits, p_amount_paid, p_currency,
            v_res.tx_id, p_event_id);
    UPDATE webhook_events_unfulfilled SET resolved_at = now(), resolution = 'fulfilled'
    WHERE provider = p_provider AND payment_id = p_payment AND resolved_at IS NULL;
    v_res.body := v_res.body || jsonb_build_object('result', 'fulfilled', 'account_id', p_account);

    v_rev := balance__apply_refunds(p_provider, p_payment, p_welcome, p_mode);
    IF v_rev.body ->> 'result' = 'reversed' THEN
        v_res.body := v_res.body || jsonb_build_object(
            'account', v_rev.body -> 'account',
            'reversal', v_rev.body -> 'transaction',
            'credits_reversed', v_rev.body -> 'credits_reversed');
        IF v_rev.body ? 'unrecovered' THEN
            v_res.body := v_res.body || jsonb_build_object('unrecovered', v_rev.body -> 'unrecovered');
        END IF;
        IF v_rev.account_id IS NOT NULL THEN
            -- The frame carries the newest state; the purchase before it is in the ledger.
            v_res := (v_res.result, false, v_res.body, v_rev.account_id, v_rev.balance,
                      v_rev.held, v_rev.version, v_rev.kind, v_rev.amount, v_rev.tx_id, NULL,
                      v_rev.low);
        END IF;
    END IF;
    -- Then disputes that arrived first, in the room the refunds left.
    v_rev := balance__apply_disputes(p_provider, p_payment, p_welcome);
    IF v_rev.account_id IS NOT NULL THEN
        v_res.body := v_res.body || jsonb_build_object(
            'account', v_rev.body -> 'account', 'dispute', v_rev.body -> 'transaction');
        v_res := (v_res.result, false, v_res.body, v_rev.account_id, v_rev.balance,
                  v_rev.held, v_rev.version, v_rev.kind, v_rev.amount, v_rev.tx_id, NULL,
                      v_rev.low);
    END IF;
    IF v_began THEN
        PERFORM balance__alerts_end(p_account, false);
    END IF;
    -- After the movement: an auto top-up's payment arms it again, which starts nothing.
    IF p_provider = 'stripe' THEN
        PERFORM balance__top_up_paid(p_payment);
    END IF;
    RETURN v_res;
END $$;

-- Stores one refund (once per refund key) and applies it if its payment is known;
-- otherwise it waits, pending, for balance_purchase to apply it.
CREATE OR REPLACE FUNCTION balance_refund(
    p_provider text, p_payment text, p_refund_key text, p_refunded bigint, p_paid bigint,
    p_cumulative boolean, p_full boolean, p_event_id text, p_welcome bigint, p_mode text
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_account text;
    v_began boolean;
    v_res balance_result;
BEGIN
    PERFORM balance__payment_lock(p_provider, p_payment);
    INSERT INTO payment_refunds (provider, refund_key, payment_id, refunded, paid, cumulative,
                                 full_refund, event_id)
    VALUES (p_provider, p_refund_key, p_payment, p_refunded, p_paid, p_cumulative, p_full,
            p_event_id)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        v_res.result := 'ok';
        v_res.replayed := true;
        v_res.body := jsonb_build_object('result', 'duplicate');
        RETURN v_res;
    END IF;
    -- What it gives back of open disputes and what it takes are one movement.
    SELECT account_id INTO v_account FROM payments
    WHERE provider = p_provider AND payment_id = p_payment;
    v_began := balance__alerts_begin(v_account);
    v_res := balance__apply_refunds(p_provider, p_payment, p_welcome, p_mode);
    IF v_began THEN
        PERFORM balance__alerts_end(v_account, false);
    END IF;
    IF v_res.result IS NULL THEN
        v_res.result := 'ok';
        v_res.replayed := false;
        v_res.body := jsonb_build_object('result', 'pending');
    END IF;
    RETURN v_res;
END $$;

-- Records an event that cannot be fulfilled, with what it said of the purchase (the
-- account, money and package it named, and p_credits: what the catalog would credit for it,
-- NULL when it cannot price it) for the operator who resolves it. For a purchase (p_payment
-- set), not when its payment was already credited by another event (a
-- payment_intent.succeeded without metadata after the Checkout session that had it).
-- Returns 'recorded', 'duplicate' (the same event again) or 'fulfilled'. Refund problems
-- pass p_payment NULL.
CREATE OR REPLACE FUNCTION balance_record_unfulfilled(
    p_provider text, p_event_id text, p_event_type text, p_payment text, p_problem text,
    p_payload jsonb, p_account text, p_amount_paid bigint, p_currency text, p_package text,
    p_credits bigint
) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF p_payment IS NOT NULL THEN
        PERFORM balance__payment_lock(p_provider, p_payment);
        PERFORM 1 FROM payments WHERE provider = p_provider AND payment_id = p_payment;
        IF FOUND THEN
            RETURN 'fulfilled';
        END IF;
    END IF;
    INSERT INTO webhook_events_unfulfilled
        (provider, event_id, event_type, payment_id, problem, payload, account_id, amount_paid,
         currency, package, credits)
    VALUES (p_provider, p_event_id, p_event_type, p_payment, p_problem, p_payload, p_account,
            p_amount_paid, p_currency, p_package, p_credits)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;
    PERFORM balance__emit('payment.needs_review', NULL, jsonb_build_object(
        'provider', p_provider, 'event_id', p_event_id, 'event_type', p_event_type,
        'payment_id', p_payment, 'problem', p_problem));
    RETURN 'recorded';
END $$;

-- ================================================================ import

-- definitions: import
-- What `balance-server import` would do with each row, read without writing anything
-- (server/importer.py): whether the account exists (the import adds to its balance), and
-- whether its import keys are taken: 'same' by this very row (a re-run: replayed),
-- 'other' by another balance, expiry or plan (a conflict), NULL while free.
CREATE OR REPLACE FUNCTION balance_import_preview(
    p_accounts text[], p_key text, p_hashes bytea[], p_plan_key text, p_plan_hashes bytea[]
) RETURNS TABLE (idx int, existed boolean, credit_key text, plan_key text)
LANGUAGE sql STABLE AS $$
    SELECT t.i::int, a.account_id IS NOT NULL,
           CASE WHEN k.request_hash IS NULL THEN NULL
                WHEN k.request_hash = t.h THEN 'same' ELSE 'other' END,
           CASE WHEN pk.request_hash IS NULL THEN NULL
                WHEN pk.request_hash = t.ph THEN 'same' ELSE 'other' END
    FROM unnest(p_accounts, p_hashes, p_plan_hashes) WITH ORDINALITY AS t(acc, h, ph, i)
    LEFT JOIN accounts a ON a.account_id = t.acc
    LEFT JOIN idempotency_keys k ON k.account_id = t.acc AND k.key = p_key
    LEFT JOIN idempotency_keys pk ON pk.account_id = t.acc AND pk.key = p_plan_key
    ORDER BY t.i
$$;

-- ================================================================ retention

-- definitions: retention
-- One batch of retention (server/retention.py loops until a batch comes back short):
-- idempotency keys older than p_key_days, and app webhook events delivered more than
-- p_event_days ago with their attempts, at most p_batch of each. Pending events are still
-- owed to the app and failed ones are an operator's to look at (and retry): both stay.
-- Kept too, whatever their age: the keys of `balance-server import` (system:import...),
-- the only record that an account's old balance came in, so a re-run years later cannot
-- credit it twice. Payments need no key kept: their rows (payments, payment_refunds,
-- payment_disputes) are what makes each happen once; a key only caches a response.
-- One instance at a time: a transaction-scoped advisory lock (a session lock would outlive
-- the transaction on a PgBouncer connection in transaction mode, held by a stranger); a
-- caller that does not get it skips (ran false) and leaves the work to the holder.
CREATE OR REPLACE FUNCTION balance_prune(p_key_days int, p_event_days int, p_batch int)
RETURNS TABLE (ran boolean, keys_deleted int, events_deleted int, attempts_deleted int)
LANGUAGE plpgsql AS $$
DECLARE
    v_events bigint[];
BEGIN
    ran := false;
    keys_deleted := 0;
    events_deleted := 0;
    attempts_deleted := 0;
    -- 0x7072756E ('prun') namespaces it away from migrate's and the payments' locks.
    IF NOT pg_try_advisory_xact_lock(1886549358, 0) THEN
        RETURN NEXT;
        RETURN;
    END IF;
    ran := true;
    DELETE FROM idempotency_keys k USING (
        SELECT o.account_id, o.key FROM idempotency_keys o
        WHERE o.created_at < now() - make_interval(days => p_key_days)
          AND o.key NOT LIKE 'system:import%'
        ORDER BY o.created_at LIMIT p_batch FOR UPDATE SKIP LOCKED) d
    WHERE k.account_id = d.account_id AND k.key = d.key;
    GET DIAGNOSTICS keys_deleted = ROW_COUNT;
    SELECT COALESCE(array_agg(e.id), '{}') INTO v_events FROM (
        SELECT o.id FROM events o
        WHERE o.status = 'delivered'
          AND o.delivered_at < now() - make_interval(days => p_event_days)
        ORDER BY o.delivered_at LIMIT p_batch FOR UPDATE SKIP LOCKED) e;
    DELETE FROM event_attempts WHERE event_id = ANY(v_events);
    GET DIAGNOSTICS attempts_deleted = ROW_COUNT;
    DELETE FROM events WHERE id = ANY(v_events);
    GET DIAGNOSTICS events_deleted = ROW_COUNT;
    RETURN NEXT;
END $$;

-- definitions: history
-- The reads of an account's history, as the API answers them (server/history.py).

-- A page of transactions, newest first: the JSON array of up to p_limit, and the cursor of
-- the next page (NULL when this is the last).
CREATE OR REPLACE FUNCTION balance_history(p_account text, p_before bigint, p_kind text,
                                           p_limit int, OUT page text, OUT cursor bigint)
LANGUAGE sql STABLE AS $$
    WITH page AS (
        SELECT t FROM transactions t
        WHERE t.account_id = p_account AND (p_before IS NULL OR t.id < p_before)
          AND (p_kind IS NULL OR t.kind = p_kind)
        ORDER BY t.id DESC LIMIT p_limit + 1
    ), shown AS (SELECT t FROM page LIMIT p_limit)
    SELECT COALESCE((SELECT jsonb_agg(balance__tx_json(s.t) ORDER BY (s.t).id DESC)
                     FROM shown s), '[]'::jsonb)::text,
           CASE WHEN (SELECT count(*) FROM page) > p_limit
                THEN (SELECT min((s.t).id) FROM shown s) END
$$;

-- `{"holds": [...]}`: the account's active holds, soonest to expire first (one past its
-- expiry but not yet swept is expired, so not shown). Few: each reserves available credits.
CREATE OR REPLACE FUNCTION balance_holds(p_account text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('holds', COALESCE(jsonb_agg(balance__hold_json(h)
        ORDER BY h.expires_at, h.id), '[]'::jsonb))
    FROM holds h
    WHERE h.account_id = p_account AND h.status = 'active' AND h.expires_at > now()
$$;

-- `{"grants": [...]}`: the account's open grants in the order they are spent. Spending not
-- yet settled into the grants comes off them here, in spending order.
CREATE OR REPLACE FUNCTION balance_grants(p_account text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    WITH open AS (
        SELECT l.*, COALESCE(sum(l.remaining) OVER (
            ORDER BY l.priority, l.expires_at, l.id
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS ahead
        FROM credit_lots l WHERE l.account_id = p_account AND l.remaining > 0
    ), shown AS (
        SELECT o.*, o.remaining - LEAST(o.remaining,
            GREATEST(a.unsettled - o.ahead, 0)) AS left_over
        FROM open o, accounts a WHERE a.account_id = p_account
    )
    SELECT jsonb_build_object('grants', COALESCE(jsonb_agg(jsonb_build_object(
        'id', g.id, 'kind', g.kind, 'amount', g.amount, 'remaining', g.left_over,
        'priority', g.priority, 'expires_at', balance__ts(g.expires_at),
        'created_at', balance__ts(g.created_at))
        ORDER BY g.priority, g.expires_at, g.id), '[]'::jsonb))
    FROM shown g WHERE g.left_over > 0
$$;

-- ================================================================ operator

-- definitions: operator
-- The operator API (server/operator.py): the audit log, payments and their reviews, the
-- resolution of a review, and the search of accounts.

-- One audit row (audit_log), in the caller's transaction; its id.
CREATE OR REPLACE FUNCTION balance_audit_record(
    p_actor text, p_action text, p_account text, p_subject text, p_tx bigint, p_detail jsonb
) RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO audit_log (actor, action, account_id, subject, transaction_id, detail)
    VALUES (p_actor, p_action, p_account, p_subject, p_tx, COALESCE(p_detail, '{}'))
    RETURNING id
$$;

CREATE OR REPLACE FUNCTION balance__review_json(r webhook_events_unfulfilled) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN jsonb_build_object(
        'id', r.id, 'event_id', r.event_id, 'event_type', r.event_type, 'problem', r.problem,
        'received_at', balance__ts(r.received_at),
        'resolution', CASE WHEN r.resolved_at IS NOT NULL THEN jsonb_build_object(
            'action', COALESCE(r.resolution, 'fulfilled'), 'account_id', r.resolved_account,
            'credits', r.resolved_credits, 'note', r.note, 'actor', r.resolved_by,
            'at', balance__ts(r.resolved_at), 'transaction_id', r.transaction_id) END);
END $$;

-- A payment event under review, as GET /v1/payments lists it: `credits` is what the catalog
-- would credit for the money it names (NULL: it cannot price it).
CREATE OR REPLACE FUNCTION balance__review_payment_json(r webhook_events_unfulfilled)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN jsonb_build_object(
        'status', CASE WHEN r.resolved_at IS NULL THEN 'needs_review' ELSE 'resolved' END,
        'provider', r.provider, 'payment_id', r.payment_id, 'account_id', r.account_id,
        'credits', r.credits, 'amount_paid', r.amount_paid, 'currency', r.currency,
        'credits_reversed', 0, 'credits_disputed', 0,
        'created_at', balance__ts(r.received_at), 'review', balance__review_json(r));
END $$;

-- A credited payment's status: 'disputed' while a dispute of it is not won, else
-- 'reversed' once refunds took any of it back, else 'credited'.
CREATE OR REPLACE FUNCTION balance__payment_status(p payments) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM payment_disputes d WHERE d.provider = p.provider
                     AND d.payment_id = p.payment_id AND d.status <> 'won') THEN 'disputed'
        WHEN p.reversed > 0 THEN 'reversed'
        ELSE 'credited' END
$$;

-- A page of payments in one status, newest first: credited, reversed and disputed ones from
-- `payments` (cursor: created_at, provider, payment_id of the last shown), needs_review and
-- resolved ones from the reviews (cursor: the review id). Returns the JSON array and the
-- next page's cursor (NULL: the last page).
CREATE OR REPLACE FUNCTION balance_payments(
    p_status text, p_account text, p_limit int, p_after_at timestamptz, p_after_provider text,
    p_after_payment text, p_after_review bigint,
    OUT page text, OUT next_at timestamptz, OUT next_provider text, OUT next_payment text,
    OUT next_review bigint
) LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_items jsonb[];
    v_pay payments;
    v_rev webhook_events_unfulfilled;
    v_more boolean := false;
BEGIN
    v_items := '{}';
    IF p_status IN ('needs_review', 'resolved') THEN
        FOR v_rev IN
            SELECT * FROM webhook_events_unfulfilled r
            WHERE (r.resolved_at IS NULL) = (p_status = 'needs_review')
              AND (p_account IS NULL OR r.account_id = p_account
                   OR r.resolved_account = p_account)
              AND (p_after_review IS NULL OR r.id < p_after_review)
            ORDER BY r.id DESC LIMIT p_limit + 1
        LOOP
            IF cardinality(v_items) = p_limit THEN
                v_more := true;
                EXIT;
            END IF;
            v_items := v_items || balance__review_payment_json(v_rev);
            next_review := v_rev.id;
        END LOOP;
        IF NOT v_more THEN
            next_review := NULL;
        END IF;
    ELSE
        FOR v_pay IN
            SELECT * FROM payments p
            WHERE (p_account IS NULL OR p.account_id = p_account)
              AND (p_after_at IS NULL
                   OR (p.created_at, p.provider, p.payment_id)
                      < (p_after_at, p_after_provider, p_after_payment))
              AND balance__payment_status(p) = p_status
            ORDER BY p.created_at DESC, p.provider DESC, p.payment_id DESC
        LOOP
            IF cardinality(v_items) = p_limit THEN
                v_more := true;
                EXIT;
            END IF;
            v_items := v_items || jsonb_build_object(
                'status', p_status, 'provider', v_pay.provider, 'payment_id', v_pay.payment_id,
                'account_id', v_pay.account_id, 'credits', v_pay.credits,
                'amount_paid', v_pay.amount_paid, 'currency', v_pay.currency,
                'credits_reversed', v_pay.reversed,
                'credits_disputed', (SELECT COALESCE(sum(d.taken), 0) FROM payment_disputes d
                                     WHERE d.provider = v_pay.provider
                                       AND d.payment_id = v_pay.payment_id),
                'created_at', balance__ts(v_pay.created_at), 'review', NULL);
            next_at := v_pay.created_at;
            next_provider := v_pay.provider;
            next_payment := v_pay.payment_id;
        END LOOP;
        IF NOT v_more THEN
            next_at := NULL;
            next_provider := NULL;
            next_payment := NULL;
        END IF;
    END IF;
    page := to_jsonb(v_items)::text;
END $$;

-- Resolves a payment under review once: 'credit' buys the payment's credits as its own
-- event would have (balance_purchase: the payment is then credited, and a redelivery of any
-- of its events is a duplicate), for p_account (default: the one its event named) and
-- p_credits (default: the catalog's amount); 'dismiss' credits nothing. Either way with the
-- operator's note, audited (with p_reason, the request's X-Audit-Reason, when given). The
-- same request again (p_hash) replays the first answer; another on a resolved review is a
-- conflict; an unknown review is not_found.
CREATE OR REPLACE FUNCTION balance_resolve_review(
    p_id bigint, p_action text, p_account text, p_credits bigint, p_note text, p_actor text,
    p_hash bytea, p_welcome bigint, p_mode text, p_reason text
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_rev webhook_events_unfulfilled;
    v_provider text;
    v_payment text;
    v_account text;
    v_credits bigint;
    v_tx bigint;
    v_acc jsonb;
    v_purchase jsonb;
    v_problem text;
    v_res balance_result;
BEGIN
    v_res.replayed := false;
    SELECT provider, payment_id INTO v_provider, v_payment
    FROM webhook_events_unfulfilled WHERE id = p_id;
    IF NOT FOUND THEN
        v_res.result := 'not_found';
        v_res.body := jsonb_build_object('message', 'no such review');
        RETURN v_res;
    END IF;
    -- The payment's lock before the row, in the order a purchase takes them (it marks the
    -- payment's reviews resolved): a resolution and the payment's own late event queue.
    IF v_payment IS NOT NULL THEN
        PERFORM balance__payment_lock(v_provider, v_payment);
    END IF;
    SELECT * INTO v_rev FROM webhook_events_unfulfilled WHERE id = p_id FOR UPDATE;
    IF v_rev.resolved_at IS NOT NULL THEN
        IF v_rev.resolution_hash IS DISTINCT FROM p_hash THEN
            v_res.result := 'conflict';
            v_res.body := jsonb_build_object('review', balance__review_json(v_rev));
            RETURN v_res;
        END IF;
        v_res.result := 'ok';
        v_res.replayed := true;
        SELECT balance__account_json(a) INTO v_acc FROM accounts a
        WHERE a.account_id = v_rev.resolved_account;
        SELECT balance__tx_json(t) INTO v_purchase FROM transactions t
        WHERE t.id = v_rev.transaction_id;
        v_res.body := jsonb_build_object('payment', balance__review_payment_json(v_rev),
                                         'account', v_acc, 'transaction', v_purchase);
        RETURN v_res;
    END IF;
    IF p_action = 'credit' THEN
        v_account := COALESCE(p_account, v_rev.account_id);
        v_credits := COALESCE(p_credits, v_rev.credits);
        v_problem := CASE
            WHEN v_payment IS NULL THEN 'review_id: this event names no payment to credit; '
                                        'dismiss it (and adjust the account if credits are owed)'
            WHEN v_account IS NULL THEN 'account_id: the payment names no account; say whose it is'
            WHEN v_credits IS NULL THEN 'credits: the catalog cannot price this payment; '
                                        'state the credits' END;
        IF v_problem IS NOT NULL THEN  -- what its event did not say: nothing is written
            v_res.result := 'invalid';
            v_res.body := jsonb_build_object('detail', v_problem);
            RETURN v_res;
        END IF;
        v_res := balance_purchase(
            v_rev.provider, v_payment, v_account, v_credits, v_rev.amount_paid,
            v_rev.currency, v_rev.event_id,
            jsonb_build_object('provider', v_rev.provider, 'payment_id', v_payment,
                               'event_id', v_rev.event_id, 'amount_paid', v_rev.amount_paid,
                               'currency', v_rev.currency, 'package', v_rev.package,
                               'review_id', v_rev.id, 'resolved_by', p_actor, 'note', p_note),
            p_welcome, p_mode);
        v_purchase := v_res.body -> 'transaction';
        v_tx := (v_purchase ->> 'id')::bigint;
        v_acc := v_res.body -> 'account';
    ELSE
        v_res.result := 'ok';
    END IF;
    UPDATE webhook_events_unfulfilled SET
        resolved_at = now(), resolution = p_action, resolution_hash = p_hash,
        resolved_account = v_account, resolved_credits = v_credits, note = p_note,
        resolved_by = p_actor, transaction_id = v_tx
    WHERE id = p_id RETURNING * INTO v_rev;
    PERFORM balance_audit_record(p_actor, 'review_resolve', COALESCE(v_account, v_rev.account_id),
        p_id::text, v_tx,
        jsonb_build_object('action', p_action, 'credits', v_credits, 'note', p_note,
                           'provider', v_rev.provider, 'payment_id', v_payment,
                           'problem', v_rev.problem)
        || CASE WHEN p_reason IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('reason', p_reason) END);
    v_res.body := jsonb_build_object('payment', balance__review_payment_json(v_rev),
                                     'account', v_acc, 'transaction', v_purchase);
    RETURN v_res;
END $$;

-- GET /v1/accounts/{id}/settings: the account's own low_balance threshold, the one in force
-- (its own, else its plan's, else the catalog's) and where that comes from, its auto
-- top-up and its spend cap. An unknown account reads as a new one would.
CREATE OR REPLACE FUNCTION balance_account_settings(p_account text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'low_balance', a.low_balance,
        'threshold', COALESCE(a.low_balance, p.low_balance, s.low_balance),
        'threshold_from', CASE WHEN a.low_balance IS NOT NULL THEN 'account'
                               WHEN p.low_balance IS NOT NULL THEN 'plan'
                               WHEN s.low_balance IS NOT NULL THEN 'catalog' END,
        'auto_top_up', (SELECT balance__auto_top_up_json(t)
                        FROM auto_top_ups t WHERE t.account_id = p_account),
        'limits', balance__limits_json(a))
    FROM settings s
    LEFT JOIN accounts a ON a.account_id = p_account
    LEFT JOIN plans p ON p.id = a.plan
$$;

-- A page of accounts whose id starts with p_prefix, the last changed first (cursor: the
-- updated_at and account_id of the last shown). It reads every account matching the
-- prefix: an index on updated_at would be written by every debit (no HOT updates on the
-- hot path), and an operator's search can afford a scan a debit cannot.
CREATE OR REPLACE FUNCTION balance_search_accounts(
    p_prefix text, p_limit int, p_after_at timestamptz, p_after_account text,
    OUT page text, OUT next_at timestamptz, OUT next_account text
) LANGUAGE sql STABLE AS $$
    WITH page AS (
        SELECT a FROM accounts a
        WHERE starts_with(a.account_id, p_prefix)
          AND (p_after_at IS NULL OR (a.updated_at, a.account_id) < (p_after_at, p_after_account))
        ORDER BY a.updated_at DESC, a.account_id DESC LIMIT p_limit + 1
    ), shown AS (SELECT a FROM page ORDER BY (a).updated_at DESC, (a).account_id DESC
                 LIMIT p_limit),
    last AS (SELECT a FROM shown ORDER BY (a).updated_at, (a).account_id LIMIT 1)
    SELECT COALESCE((SELECT jsonb_agg(balance__account_json(s.a)
                     ORDER BY (s.a).updated_at DESC, (s.a).account_id DESC) FROM shown s),
                    '[]'::jsonb)::text,
           CASE WHEN (SELECT count(*) FROM page) > p_limit
                THEN (SELECT (l.a).updated_at FROM last l) END,
           CASE WHEN (SELECT count(*) FROM page) > p_limit
                THEN (SELECT (l.a).account_id FROM last l) END
$$;

-- A page of the audit log, newest first, for one account or all (cursor: the last id shown).
CREATE OR REPLACE FUNCTION balance_audit_page(p_account text, p_before bigint, p_limit int,
                                              OUT page text, OUT cursor bigint)
LANGUAGE sql STABLE AS $$
    WITH page AS (
        SELECT l FROM audit_log l
        WHERE (p_account IS NULL OR l.account_id = p_account)
          AND (p_before IS NULL OR l.id < p_before)
        ORDER BY l.id DESC LIMIT p_limit + 1
    ), shown AS (SELECT l FROM page ORDER BY (l).id DESC LIMIT p_limit)
    SELECT COALESCE((SELECT jsonb_agg(jsonb_build_object(
               'id', (s.l).id, 'at', balance__ts((s.l).at), 'actor', (s.l).actor,
               'action', (s.l).action, 'account_id', (s.l).account_id,
               'subject', (s.l).subject, 'transaction_id', (s.l).transaction_id,
               'detail', (s.l).detail) ORDER BY (s.l).id DESC) FROM shown s), '[]'::jsonb)::text,
           CASE WHEN (SELECT count(*) FROM page) > p_limit
                THEN (SELECT min((s.l).id) FROM shown s) END
$$;

-- ================================================================ indexes
-- Built with CREATE INDEX CONCURRENTLY, after everything above commits: the ledger keeps
-- taking writes while they build. Each section is named after its index.

-- index: transactions_account_kind_idx
-- History filtered by kind (GET /v1/me/transactions?kind=expiry, a browser can ask) and
-- usage (kind = 'usage'), without walking the account's whole ledger.
CREATE INDEX CONCURRENTLY IF NOT EXISTS transactions_account_kind_idx
    ON transactions (account_id, kind, id);

-- index: events_delivered_idx
-- Retention finds the events delivered before its cutoff without walking every delivered
-- event each hour (balance_prune).
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_delivered_idx
    ON events (delivered_at) WHERE status = 'delivered';

-- index: transactions_hold_idx
-- A capture sent again finds the first one's transaction (balance_resolve_hold). Partial:
-- only the rows of holds (captures, and credits that expired while held) pay for it, not
-- every debit.
CREATE INDEX CONCURRENTLY IF NOT EXISTS transactions_hold_idx
    ON transactions (hold_id) WHERE hold_id IS NOT NULL;

-- index: payments_created_idx
-- The payments list, newest first (GET /v1/payments), without sorting every payment.
CREATE INDEX CONCURRENTLY IF NOT EXISTS payments_created_idx
    ON payments (created_at DESC, provider DESC, payment_id DESC);

-- index: events_account_idx
-- One account's app webhooks, newest first (GET /v1/events?account_id=, the console).
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_account_idx ON events (account_id, id)
    WHERE account_id IS NOT NULL;

-- index: top_ups_account_priced_idx
-- A monthly limit sums the account's top-ups of the month (balance__top_up_spent) without
-- reading every top-up. Concurrently: a debit that crosses a threshold writes top_ups.
CREATE INDEX CONCURRENTLY IF NOT EXISTS top_ups_account_priced_idx
    ON top_ups (account_id, priced_at);

-- index: accounts_renewal_idx
-- The calendar renewal job reads only the plans it renews: a subscription's plan renews when
-- its provider is paid, and one awaiting that payment (or past due) must not sit at the front
-- of every scan of accounts_period_end_idx.
CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_renewal_idx ON accounts (period_end)
    WHERE plan IS NOT NULL AND subscription IS NULL;
