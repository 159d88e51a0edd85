"""Payments: signed provider webhooks become credits, from the money received, exactly once.

signatures (raw-byte checks) → stripe / dodo (event shapes → actions, events.py) →
fulfilment (actions → ledger movements, credits from catalog.credits_for); checkout opens
the provider's payment page. The HTTP routes are in server/api/.
"""
