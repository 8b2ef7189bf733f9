"""The reliability suite: faults injected after every store write of the turn contract, in
both runtimes, concurrent senders under each double-texting policy, and the invariants the
turn contract promises, checked after each run.

``make test`` runs it at reduced size (``tests/e2e/test_reliability.py``); ``make reliability``
(``python -m reliability``) runs it at full size and writes ``docs/RELIABILITY.md``.
"""
