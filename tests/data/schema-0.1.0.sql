-- balance-server schema. Idempotent: `balance-server migrate` may run any number of times.
-- Money is bigint everywhere. The ledger (transactions) is append-only; accounts carry the
-- running totals so a debit is one conditional UPDATE, and reconcile proves them equal.

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
DROP TRIGGER IF EXISTS transactions_append_only ON transactions;
CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION balance__forbid_change();

-- ---------------------------------------------------------------- JSON shapes of API.md

CREATE OR REPLACE FUNCTION balance__ts(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE OR REPLACE FUNCTION balance__account_json(a accounts) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'account_id', a.account_id, 'balance', a.balance, 'held', a.held,
        'available', a.balance - a.held, 'version', a.version,
        'purchased', a.purchased, 'used', a.used, 'updated_at', balance__ts(a.updated_at))
$$;

CREATE OR REPLACE FUNCTION balance__tx_json(t transactions) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'id', t.id, 'account_id', t.account_id, 'kind', t.kind, 'amount', t.amount,
        'balance_after', t.balance_after, 'version', t.version, 'reason', t.reason,
        'metadata', t.metadata, 'hold_id', t.hold_id, 'created_at', balance__ts(t.created_at))
$$;

CREATE OR REPLACE FUNCTION balance__hold_json(h holds) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'id', h.id, 'account_id', h.account_id, 'amount', h.amount, 'status', h.status,
        'captured', h.captured, 'reason', h.reason, 'metadata', h.metadata,
        'expires_at', balance__ts(h.expires_at), 'created_at', balance__ts(h.created_at))
$$;

-- ---------------------------------------------------------------- building blocks

-- Creates the account on first mention, granting the welcome credits exactly once
-- (the INSERT's conflict check is what makes "once" hold under concurrency).
CREATE OR REPLACE FUNCTION balance__ensure(p_account text, p_welcome bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO accounts (account_id) VALUES (p_account) ON CONFLICT DO NOTHING;
    IF FOUND AND p_welcome > 0 THEN
        UPDATE accounts SET balance = p_welcome, version = 1 WHERE account_id = p_account;
        INSERT INTO transactions (account_id, kind, amount, balance_after, version, reason)
        VALUES (p_account, 'grant', p_welcome, p_welcome, 1, 'welcome credits');
    END IF;
END $$;

-- Takes p_amount out of the account's expiring lots, soonest-expiring first.
-- Called for every negative movement while accounts.expiring > 0, so that
-- sum(lots.remaining) never exceeds what the account really owns.
CREATE OR REPLACE FUNCTION balance__consume_lots(p_account text, p_amount bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_left bigint := p_amount;
    v_lot record;
    v_take bigint;
BEGIN
    FOR v_lot IN
        SELECT id, remaining FROM credit_lots
        WHERE account_id = p_account AND remaining > 0
        ORDER BY expires_at, id FOR UPDATE
    LOOP
        EXIT WHEN v_left <= 0;
        v_take := LEAST(v_lot.remaining, v_left);
        UPDATE credit_lots SET remaining = remaining - v_take WHERE id = v_lot.id;
        v_left := v_left - v_take;
    END LOOP;
    UPDATE accounts SET expiring = expiring - (p_amount - v_left) WHERE account_id = p_account;
    RETURN p_amount - v_left;
END $$;

-- Claims an idempotency key inside the caller's transaction. NULL when the key is new
-- (the caller proceeds); otherwise the stored outcome to replay, or 409 on another body.
-- A concurrent duplicate blocks on the unique index until the first commits, then replays.
CREATE OR REPLACE FUNCTION balance__claim_key(p_account text, p_key text, p_hash bytea)
RETURNS TABLE (status int, body jsonb) LANGUAGE plpgsql AS $$
DECLARE
    v_row idempotency_keys;
BEGIN
    INSERT INTO idempotency_keys (account_id, key, request_hash)
    VALUES (p_account, p_key, p_hash) ON CONFLICT DO NOTHING;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO v_row FROM idempotency_keys k WHERE k.account_id = p_account AND k.key = p_key;
    IF v_row.request_hash <> p_hash THEN
        status := 409;
        body := NULL;
    ELSE
        status := v_row.status;
        body := v_row.response;
    END IF;
    RETURN NEXT;
END $$;

-- ---------------------------------------------------------------- money movements
--
-- Each returns one row: status (200/201/402/404/409/422), replayed, body (the response
-- JSON, or the error details), and the new absolute state for the push frame.

-- Created once; a later change to this type needs an explicit migration step.
DO $$ BEGIN
    CREATE TYPE balance_result AS (
        status      int,
        replayed    boolean,
        body        jsonb,
        account_id  text,
        balance     bigint,
        held        bigint,
        version     bigint,
        kind        text,
        amount      bigint,
        tx_id       bigint,
        hold_id     uuid
    );
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

-- One ledger row: debit ('usage', p_amount < 0), credits, adjustments, reversals.
-- p_mode 'available': a negative amount needs balance - held >= |amount| (else 402);
-- 'debt': applied in full even below zero (reversals only);
-- 'clamp': takes at most what the balance holds; the shortfall is reported in the body.
CREATE OR REPLACE FUNCTION balance_post(
    p_account text, p_welcome bigint, p_key text, p_hash bytea, p_kind text,
    p_amount bigint, p_reason text, p_metadata jsonb, p_expires_at timestamptz,
    p_mode text, p_hold uuid DEFAULT NULL
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_claim record;
    v_acc accounts;
    v_tx transactions;
    v_amount bigint := p_amount;
    v_short bigint := 0;
    v_res balance_result;
BEGIN
    SELECT * INTO v_claim FROM balance__claim_key(p_account, p_key, p_hash);
    IF FOUND THEN
        v_res.status := v_claim.status;
        v_res.replayed := true;
        v_res.body := v_claim.body;
        RETURN v_res;
    END IF;

    IF p_amount < 0 AND p_mode = 'available' THEN
        UPDATE accounts SET
            balance = balance + p_amount, version = version + 1, updated_at = now(),
            used = used + CASE WHEN p_kind = 'usage' THEN -p_amount ELSE 0 END
        WHERE account_id = p_account AND balance - held >= -p_amount
        RETURNING * INTO v_acc;
        IF NOT FOUND THEN
            PERFORM balance__ensure(p_account, p_welcome);
            UPDATE accounts SET
                balance = balance + p_amount, version = version + 1, updated_at = now(),
                used = used + CASE WHEN p_kind = 'usage' THEN -p_amount ELSE 0 END
            WHERE account_id = p_account AND balance - held >= -p_amount
            RETURNING * INTO v_acc;
        END IF;
        IF NOT FOUND THEN
            -- 402 writes nothing: give the key back so a retry after a top-up can succeed.
            DELETE FROM idempotency_keys k WHERE k.account_id = p_account AND k.key = p_key;
            SELECT * INTO v_acc FROM accounts WHERE account_id = p_account;
            v_res.status := 402;
            v_res.replayed := false;
            v_res.body := jsonb_build_object(
                'required', -p_amount, 'available', v_acc.balance - v_acc.held);
            RETURN v_res;
        END IF;
    ELSE
        PERFORM balance__ensure(p_account, p_welcome);
        IF p_mode = 'clamp' AND p_amount < 0 THEN
            SELECT * INTO v_acc FROM accounts WHERE account_id = p_account FOR UPDATE;
            v_amount := -LEAST(-p_amount, GREATEST(v_acc.balance, 0));
            v_short := -p_amount + v_amount;
        END IF;
        IF v_amount <> 0 THEN
            UPDATE accounts SET
                balance = balance + v_amount, version = version + 1, updated_at = now(),
                purchased = purchased + CASE WHEN p_kind = 'purchase' THEN v_amount ELSE 0 END,
                used = GREATEST(used - CASE WHEN p_kind = 'refund' THEN v_amount ELSE 0 END, 0)
            WHERE account_id = p_account
            RETURNING * INTO v_acc;
        END IF;
    END IF;

    IF v_amount <> 0 THEN
        IF v_amount < 0 AND v_acc.expiring > 0 THEN
            PERFORM balance__consume_lots(p_account, -v_amount);
        END IF;
        INSERT INTO transactions
            (account_id, kind, amount, balance_after, version, reason, metadata, hold_id)
        VALUES (p_account, p_kind, v_amount, v_acc.balance, v_acc.version, p_reason, p_metadata, p_hold)
        RETURNING * INTO v_tx;
        IF v_amount > 0 AND p_expires_at IS NOT NULL THEN
            INSERT INTO credit_lots (account_id, transaction_id, amount, remaining, expires_at)
            VALUES (p_account, v_tx.id, v_amount, v_amount, p_expires_at);
            UPDATE accounts SET expiring = expiring + v_amount WHERE account_id = p_account;
        END IF;
    END IF;

    v_res.status := 200;
    v_res.replayed := false;
    v_res.body := jsonb_build_object(
        'transaction', CASE WHEN v_amount <> 0 THEN balance__tx_json(v_tx) END,
        'account', balance__account_json(v_acc));
    IF v_short <> 0 THEN
        v_res.body := v_res.body || jsonb_build_object('unrecovered', v_short);
    END IF;
    UPDATE idempotency_keys k SET status = 200, response = v_res.body
    WHERE k.account_id = p_account AND k.key = p_key;
    IF v_amount <> 0 THEN
        v_res.account_id := p_account;
        v_res.balance := v_acc.balance;
        v_res.held := v_acc.held;
        v_res.version := v_acc.version;
        v_res.kind := p_kind;
        v_res.amount := v_amount;
        v_res.tx_id := v_tx.id;
        v_res.hold_id := p_hold;
    END IF;
    RETURN v_res;
END $$;

-- Reserves credits: 201 with the hold, or 402.
CREATE OR REPLACE FUNCTION balance_hold(
    p_account text, p_welcome bigint, p_key text, p_hash bytea, p_amount bigint,
    p_ttl_seconds int, p_reason text, p_metadata jsonb
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_claim record;
    v_acc accounts;
    v_hold holds;
    v_res balance_result;
BEGIN
    SELECT * INTO v_claim FROM balance__claim_key(p_account, p_key, p_hash);
    IF FOUND THEN
        v_res.status := v_claim.status;
        v_res.replayed := true;
        v_res.body := v_claim.body;
        RETURN v_res;
    END IF;
    PERFORM balance__ensure(p_account, p_welcome);
    UPDATE accounts SET held = held + p_amount, version = version + 1, updated_at = now()
    WHERE account_id = p_account AND balance - held >= p_amount
    RETURNING * INTO v_acc;
    IF NOT FOUND THEN
        DELETE FROM idempotency_keys k WHERE k.account_id = p_account AND k.key = p_key;
        SELECT * INTO v_acc FROM accounts WHERE account_id = p_account;
        v_res.status := 402;
        v_res.replayed := false;
        v_res.body := jsonb_build_object(
            'required', p_amount, 'available', v_acc.balance - v_acc.held);
        RETURN v_res;
    END IF;
    INSERT INTO holds (account_id, amount, reason, metadata, expires_at)
    VALUES (p_account, p_amount, p_reason, p_metadata, now() + make_interval(secs => p_ttl_seconds))
    RETURNING * INTO v_hold;
    v_res := (201, false,
              jsonb_build_object('hold', balance__hold_json(v_hold),
                                 'account', balance__account_json(v_acc)),
              p_account, v_acc.balance, v_acc.held, v_acc.version, 'hold_placed', 0, NULL, v_hold.id);
    UPDATE idempotency_keys k SET status = 201, response = v_res.body
    WHERE k.account_id = p_account AND k.key = p_key;
    RETURN v_res;
END $$;

-- Resolves an active hold once. p_action: 'capture' spends p_capture (NULL: all of it)
-- as a usage transaction and releases the rest; 'release' gives it all back;
-- 'expire' is the sweeper's release of a hold past its deadline.
CREATE OR REPLACE FUNCTION balance_resolve_hold(
    p_hold uuid, p_action text, p_capture bigint, p_metadata jsonb
) RETURNS balance_result LANGUAGE plpgsql AS $$
DECLARE
    v_hold holds;
    v_acc accounts;
    v_tx transactions;
    v_spend bigint := 0;
    v_res balance_result;
BEGIN
    SELECT * INTO v_hold FROM holds WHERE id = p_hold FOR UPDATE;
    IF NOT FOUND THEN
        v_res.status := 404;
        RETURN v_res;
    END IF;
    IF v_hold.status <> 'active' OR (v_hold.expires_at <= now() AND p_action <> 'expire') THEN
        v_res.status := 409;
        v_res.body := jsonb_build_object(
            'status', CASE WHEN v_hold.status = 'active' THEN 'expired' ELSE v_hold.status END);
        RETURN v_res;
    END IF;
    IF p_action = 'capture' THEN
        v_spend := COALESCE(p_capture, v_hold.amount);
        IF v_spend > v_hold.amount THEN
            v_res.status := 422;
            v_res.body := jsonb_build_object('held', v_hold.amount);
            RETURN v_res;
        END IF;
    END IF;

    -- A capture spends credits reserved earlier, so it is not refused now even if a
    -- reversal has since pushed the balance down.
    UPDATE accounts SET
        held = held - v_hold.amount,
        balance = balance - v_spend,
        used = used + v_spend,
        version = version + 1, updated_at = now()
    WHERE account_id = v_hold.account_id
    RETURNING * INTO v_acc;

    UPDATE holds SET
        status = CASE p_action WHEN 'capture' THEN 'captured'
                               WHEN 'expire' THEN 'expired' ELSE 'released' END,
        captured = CASE WHEN p_action = 'capture' THEN v_spend END,
        resolved_at = now(),
        metadata = CASE WHEN p_metadata IS NULL THEN metadata
                        ELSE COALESCE(metadata, '{}'::jsonb) || p_metadata END
    WHERE id = p_hold RETURNING * INTO v_hold;

    IF v_spend > 0 THEN
        IF v_acc.expiring > 0 THEN
            PERFORM balance__consume_lots(v_acc.account_id, v_spend);
        END IF;
        INSERT INTO transactions
            (account_id, kind, amount, balance_after, version, reason, metadata, hold_id)
        VALUES (v_acc.account_id, 'usage', -v_spend, v_acc.balance, v_acc.version,
                v_hold.reason, v_hold.metadata, v_hold.id)
        RETURNING * INTO v_tx;
        v_res := (200, false,
                  jsonb_build_object('transaction', balance__tx_json(v_tx),
                                     'hold', balance__hold_json(v_hold),
                                     'account', balance__account_json(v_acc)),
                  v_acc.account_id, v_acc.balance, v_acc.held, v_acc.version,
                  'usage', -v_spend, v_tx.id, v_hold.id);
    ELSE
        v_res := (200, false,
                  jsonb_build_object('hold', balance__hold_json(v_hold),
                                     'account', balance__account_json(v_acc)),
                  v_acc.account_id, v_acc.balance, v_acc.held, v_acc.version,
                  'hold_' || v_hold.status, 0, NULL, v_hold.id);
    END IF;
    RETURN v_res;
END $$;

-- Expires what is due: active holds past expires_at, and lots past expires_at (what is
-- left of them leaves as an `expiry` transaction). SKIP LOCKED lets several server
-- instances sweep at once without waiting on each other or on hot accounts.
CREATE OR REPLACE FUNCTION balance_sweep(p_limit int) RETURNS SETOF balance_result
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    v_lot credit_lots;
    v_acc accounts;
    v_take bigint;
    v_tx transactions;
    v_res balance_result;
BEGIN
    FOR v_id IN
        SELECT id FROM holds WHERE status = 'active' AND expires_at <= now()
        ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        v_res := balance_resolve_hold(v_id, 'expire', NULL, NULL);
        RETURN NEXT v_res;
    END LOOP;

    FOR v_lot IN
        SELECT * FROM credit_lots WHERE remaining > 0 AND expires_at <= now()
        ORDER BY expires_at, id LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        SELECT * INTO v_acc FROM accounts WHERE account_id = v_lot.account_id FOR UPDATE;
        -- Credits reserved by an open hold stay spendable by that hold.
        v_take := LEAST(v_lot.remaining, GREATEST(v_acc.balance - v_acc.held, 0));
        UPDATE credit_lots SET remaining = 0 WHERE id = v_lot.id;
        UPDATE accounts SET
            expiring = expiring - v_lot.remaining,
            balance = balance - v_take,
            version = version + CASE WHEN v_take > 0 THEN 1 ELSE 0 END,
            updated_at = CASE WHEN v_take > 0 THEN now() ELSE updated_at END
        WHERE account_id = v_lot.account_id RETURNING * INTO v_acc;
        IF v_take > 0 THEN
            INSERT INTO transactions
                (account_id, kind, amount, balance_after, version, reason, metadata)
            VALUES (v_acc.account_id, 'expiry', -v_take, v_acc.balance, v_acc.version,
                    'credits expired', jsonb_build_object('lot_id', v_lot.id))
            RETURNING * INTO v_tx;
            v_res := (200, false, NULL, v_acc.account_id, v_acc.balance, v_acc.held,
                      v_acc.version, 'expiry', -v_take, v_tx.id, NULL);
            RETURN NEXT v_res;
        END IF;
    END LOOP;
END $$;

-- The account object, creating the account on first mention.
CREATE OR REPLACE FUNCTION balance_account(p_account text, p_welcome bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_acc accounts;
BEGIN
    SELECT * INTO v_acc FROM accounts WHERE account_id = p_account;
    IF NOT FOUND THEN
        PERFORM balance__ensure(p_account, p_welcome);
        SELECT * INTO v_acc FROM accounts WHERE account_id = p_account;
    END IF;
    RETURN balance__account_json(v_acc);
END $$;

-- Accounts whose stored totals disagree with the ledger or with their active holds.
CREATE OR REPLACE FUNCTION balance_reconcile() RETURNS TABLE (
    account_id text, balance bigint, ledger_sum bigint, held bigint, holds_sum bigint,
    expiring bigint, lots_sum bigint
) LANGUAGE sql STABLE AS $$
    SELECT a.account_id, a.balance, COALESCE(t.s, 0), a.held, COALESCE(h.s, 0),
           a.expiring, COALESCE(l.s, 0)
    FROM accounts a
    LEFT JOIN (SELECT t.account_id, sum(t.amount)::bigint s FROM transactions t
               GROUP BY t.account_id) t USING (account_id)
    LEFT JOIN (SELECT h.account_id, sum(h.amount)::bigint s FROM holds h
               WHERE h.status = 'active' GROUP BY h.account_id) h USING (account_id)
    LEFT JOIN (SELECT l.account_id, sum(l.remaining)::bigint s FROM credit_lots l
               WHERE l.remaining > 0 GROUP BY l.account_id) l USING (account_id)
    WHERE a.balance <> COALESCE(t.s, 0) OR a.held <> COALESCE(h.s, 0)
       OR a.expiring <> COALESCE(l.s, 0)
$$;

-- ==== payments (server/webhooks.py) ====
-- Purchases and refunds reported by payment providers (Stripe, Dodo). A payment is
-- credited once, keyed by the provider's payment id (Stripe PaymentIntent, Dodo payment),
-- whichever event and delivery carries it. Refunds are stored first and then applied
-- against their payment, so a refund that arrives before its payment waits for it.
-- Every function takes a per-payment advisory lock first: a payment and its refunds are
-- processed one at a time, whatever order and instance they arrive on.

CREATE TABLE IF NOT EXISTS payments (
    provider        text NOT NULL,
    payment_id      text NOT NULL,
    account_id      text NOT NULL REFERENCES accounts (account_id),
    credits         bigint NOT NULL CHECK (credits > 0),
    amount_paid     bigint,            -- minor currency units, as the provider reported them
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

-- Refunds still waiting for their payment (or for a payment that was never credits).
CREATE OR REPLACE VIEW pending_refunds AS
    SELECT * FROM payment_refunds WHERE applied_at IS NULL;

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

CREATE OR REPLACE FUNCTION balance__payment_lock(p_provider text, p_payment text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- 0x7061796D ('paym') namespaces these locks away from migrate's advisory lock.
    PERFORM pg_advisory_xact_lock(1885436269, hashtext(p_provider || ':' || p_payment));
END $$;

-- Brings the payment's reversal up to what its stored refunds call for. The target is
-- floor(credits * refunded / paid) over the cumulative refunded money, so several partial
-- refunds never round to more than one full refund would, and a full refund is exact.
-- Returns status NULL when the payment is unknown (its refunds stay pending).
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
        v_res.status := 200;
        v_res.replayed := false;
        v_res.body := jsonb_build_object('result', 'nothing_to_reverse',
                                         'account_id', v_pay.account_id,
                                         'credits_reversed_total', v_pay.reversed);
        RETURN v_res;
    END IF;

    v_key := 'webhook:' || p_provider || ':' || p_payment || ':reversed:' || v_target;
    v_res := balance_post(
        v_pay.account_id, p_welcome, v_key, sha256(convert_to(v_key, 'UTF8')), 'reversal',
        -v_delta, 'refund via ' || p_provider,
        jsonb_build_object('provider', p_provider, 'payment_id', p_payment,
                           'credits_reversed_total', v_target),
        NULL, p_mode);
    v_short := COALESCE((v_res.body ->> 'unrecovered')::bigint, 0);
    UPDATE payments SET reversed = v_target, unrecovered = unrecovered + v_short,
                        updated_at = now()
    WHERE provider = p_provider AND payment_id = p_payment;
    v_res.body := v_res.body || jsonb_build_object(
        'result', 'reversed', 'account_id', v_pay.account_id, 'credits_reversed', v_delta,
        'credits_reversed_total', v_target);
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
    v_res balance_result;
    v_rev balance_result;
BEGIN
    PERFORM balance__payment_lock(p_provider, p_payment);
    SELECT * INTO v_pay FROM payments WHERE provider = p_provider AND payment_id = p_payment;
    IF FOUND THEN
        SELECT * INTO v_acc FROM accounts WHERE account_id = v_pay.account_id;
        v_res.status := 200;
        v_res.replayed := true;
        v_res.body := jsonb_build_object(
            'result', 'duplicate', 'account_id', v_pay.account_id,
            'account', balance__account_json(v_acc));
        RETURN v_res;
    END IF;

    v_res := balance_post(
        p_account, p_welcome, v_key, sha256(convert_to('purchase:' || v_key, 'UTF8')),
        'purchase', p_credits, 'purchase via ' || p_provider, p_metadata, NULL, 'available');
    IF v_res.status <> 200 OR v_res.replayed THEN
        -- Only possible if the app itself used our key shape on /credit; refuse loudly.
        RAISE EXCEPTION 'idempotency key % already used on account %', v_key, p_account
            USING ERRCODE = 'unique_violation';
    END IF;
    INSERT INTO payments (provider, payment_id, account_id, credits, amount_paid, currency,
                          transaction_id, event_id)
    VALUES (p_provider, p_payment, p_account, p_credits, p_amount_paid, p_currency,
            v_res.tx_id, p_event_id);
    UPDATE webhook_events_unfulfilled SET resolved_at = now()
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
            v_res := (v_res.status, false, v_res.body, v_rev.account_id, v_rev.balance,
                      v_rev.held, v_rev.version, v_rev.kind, v_rev.amount, v_rev.tx_id, NULL);
        END IF;
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
    v_res balance_result;
BEGIN
    PERFORM balance__payment_lock(p_provider, p_payment);
    INSERT INTO payment_refunds (provider, refund_key, payment_id, refunded, paid, cumulative,
                                 full_refund, event_id)
    VALUES (p_provider, p_refund_key, p_payment, p_refunded, p_paid, p_cumulative, p_full,
            p_event_id)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        v_res.status := 200;
        v_res.replayed := true;
        v_res.body := jsonb_build_object('result', 'duplicate');
        RETURN v_res;
    END IF;
    v_res := balance__apply_refunds(p_provider, p_payment, p_welcome, p_mode);
    IF v_res.status IS NULL THEN
        v_res.status := 200;
        v_res.replayed := false;
        v_res.body := jsonb_build_object('result', 'pending');
    END IF;
    RETURN v_res;
END $$;

-- Records an event that cannot be fulfilled. For a purchase (p_payment set), not when its
-- payment was already credited by another event (a payment_intent.succeeded without
-- metadata after the Checkout session that had it). Returns 'recorded', 'duplicate' (the
-- same event again) or 'fulfilled'. Refund problems pass p_payment NULL.
CREATE OR REPLACE FUNCTION balance_record_unfulfilled(
    p_provider text, p_event_id text, p_event_type text, p_payment text, p_problem text,
    p_payload jsonb
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
        (provider, event_id, event_type, payment_id, problem, payload)
    VALUES (p_provider, p_event_id, p_event_type, p_payment, p_problem, p_payload)
    ON CONFLICT DO NOTHING;
    RETURN CASE WHEN FOUND THEN 'recorded' ELSE 'duplicate' END;
END $$;
-- ==== end payments ====

-- Group commit: many independent balance_post calls in one round trip and one commit.
-- Rows are taken in (account, key) order so two concurrent batches lock accounts in the
-- same order and cannot deadlock each other; results come back tagged with their index.
CREATE OR REPLACE FUNCTION balance_post_many(
    p_accounts text[], p_welcome bigint, p_keys text[], p_hashes bytea[], p_kinds text[],
    p_amounts bigint[], p_reasons text[], p_metadata jsonb[], p_expires timestamptz[],
    p_modes text[]
) RETURNS TABLE (idx int, result balance_result) LANGUAGE plpgsql AS $$
DECLARE
    i int;
BEGIN
    FOR i IN
        SELECT s.i FROM generate_subscripts(p_accounts, 1) AS s(i)
        ORDER BY p_accounts[s.i], p_keys[s.i], s.i
    LOOP
        idx := i;
        result := balance_post(p_accounts[i], p_welcome, p_keys[i], p_hashes[i], p_kinds[i],
                               p_amounts[i], p_reasons[i], p_metadata[i], p_expires[i],
                               p_modes[i]);
        RETURN NEXT;
    END LOOP;
END $$;
