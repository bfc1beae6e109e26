"""Password hashing with argon2id; verification takes alike long for unknown users."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from veil._exceptions import ValidationError

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "check_new_password",
    "hash_password",
    "needs_rehash",
    "verify_dummy",
    "verify_password",
]

# argon2id at OWASP's recommended parameters (19 MiB, 2 passes, one lane): about 40 ms
# per verification on a 2-core machine, so a login stays fast while trainings share the
# cores. Hashes made with other parameters still verify, and are redone at the next
# successful login (`needs_rehash`).
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
_DUMMY_HASH = _hasher.hash("veil-dummy-password-for-unknown-users")

MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether a hash was made with other parameters than the current ones."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def verify_dummy(password: str) -> None:
    """Spend the time a real verification would, so unknown e-mails answer alike."""
    verify_password(_DUMMY_HASH, password)


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(
            f"Password must have at least {MIN_PASSWORD_LENGTH} characters. "
            f"Received: {len(password)} characters.",
            field="password",
        )
