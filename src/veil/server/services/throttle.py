"""Backoff after failed logins and password changes, that no one can turn against others.

Two kinds of record, each keyed by the *account* (the e-mail as typed, known or not):

- account and address: after `allowed` failures from one address, each further attempt
  on that account from that address waits `backoff * 2**(failures - allowed)` seconds
  after the last failure, up to `max_backoff`. This is what slows down a guesser.
- account alone, over every address: the same after `4 * allowed` failures, against a
  guesser spread over many addresses. Addresses that logged into the account before
  (remembered by this process) skip it, so that such a guesser cannot lock the owner out.

There is no record by address alone: failures on one account never slow down another
account, the admin's included, whoever shares the address (a NAT, a proxy). An account
unknown to the node is throttled like a known one, so the answers reveal nothing.
Records are kept in this process's memory and forgotten after `max_backoff` of quiet.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from veil._exceptions import RateLimited

__all__ = ["LoginThrottle"]

_SPREAD = 4  # failures over all addresses, as a multiple of those from one address
_TRUSTED_PER_ACCOUNT = 16
_MAX_RECORDS = 100_000


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0


class LoginThrottle:
    def __init__(self, *, allowed: int, backoff_seconds: float, max_backoff_seconds: float) -> None:
        self.allowed = allowed
        self.backoff = backoff_seconds
        self.max_backoff = max_backoff_seconds
        self._records: OrderedDict[tuple[str, str | None], _Record] = OrderedDict()
        self._trusted: dict[str, OrderedDict[str, None]] = {}
        self._lock = threading.Lock()

    def _wait(self, key: tuple[str, str | None], allowed: int, now: float) -> float:
        record = self._records.get(key)
        if record is None or record.failures < allowed:
            return 0.0
        delay = min(self.max_backoff, self.backoff * 2 ** (record.failures - allowed))
        return max(0.0, record.last + delay - now)

    def check(self, account: str, address: str | None) -> None:
        """Raise `RateLimited` if this account may not be tried from this address yet."""
        account = account.strip().lower()
        now = time.monotonic()
        with self._lock:
            wait = self._wait((account, address), self.allowed, now)
            if address not in self._trusted.get(account, {}):
                wait = max(wait, self._wait((account, None), self.allowed * _SPREAD, now))
        if wait > 0:
            raise RateLimited(
                f"Too many failed attempts for this account; try again in {wait:.0f} s.",
                retry_after=max(0.1, round(wait, 1)),
            )

    def fail(self, account: str, address: str | None) -> None:
        account = account.strip().lower()
        now = time.monotonic()
        with self._lock:
            for key in ((account, address), (account, None)):
                record = self._records.get(key)
                if record is None or now - record.last > self.max_backoff:
                    record = _Record()  # quiet long enough: start over
                record.failures += 1
                record.last = now
                self._records[key] = record
                self._records.move_to_end(key)
            while len(self._records) > _MAX_RECORDS:
                self._records.popitem(last=False)

    def succeed(self, account: str, address: str | None) -> None:
        """The right password from this address: forget its failures, trust it."""
        account = account.strip().lower()
        with self._lock:
            self._records.pop((account, address), None)
            if address is not None:
                trusted = self._trusted.setdefault(account, OrderedDict())
                trusted[address] = None
                trusted.move_to_end(address)
                while len(trusted) > _TRUSTED_PER_ACCOUNT:
                    trusted.popitem(last=False)
