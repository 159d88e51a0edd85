"""Payments: signed provider webhooks become credits, from the money received, exactly once.

signatures (raw-byte checks) → stripe / dodo (event shapes → actions, events.py) →
fulfilment (actions → ledger movements). The HTTP routes are in server/api/webhooks.py.
"""
