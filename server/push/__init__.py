"""Push: every committed change reaches each open socket of its account, on any instance.

ledger's door → publisher (encode once; this process's hub, and the broker) → broker
(memory or Redis) → hub (sockets by account, one upstream subscription per account) →
ws (one socket's protocol) → transport (the pre-framed bytes onto the wire).
"""
