"""Passwords, access tokens, refresh tokens and one-time codes: the API's cryptography.

- Passwords: argon2id (argon2-cffi) with its default parameters, re-hashed on
  login when those parameters change; :func:`check_password_policy` says in
  plain words what a password lacks.
- Access tokens: JWTs (PyJWT) carrying the seed's claims (``userId``,
  ``username``, ``email``, ``role``, ``region``, ``meterId``) plus ``exp``,
  ``iat``, ``jti``, ``iss`` and ``typ = "access"``; HS256 with a shared secret
  or RS256 with a key pair. Decoding pins the algorithm, so ``alg: none`` and
  algorithm confusion are refused, and checks expiry against the hub's clock.
- Refresh tokens and one-time codes are random, shown once and stored as
  hashes only.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from segs.hub.exceptions import ConfigError
from segs.hub.settings import DEMO_JWT_SECRET, HubSettings

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "AccessClaims",
    "InvalidTokenError",
    "TokenService",
    "check_password_policy",
    "hash_one_time_code",
    "hash_password",
    "hash_secret",
    "needs_rehash",
    "new_one_time_code",
    "new_refresh_token",
    "verify_password",
]

ACCESS_TOKEN_TYPE: Final = "access"  # noqa: S105 - a claim value
"""The ``typ`` claim of access tokens; anything else presented as one is refused."""
OTP_DIGITS: Final = 6
_VERIFIED_CACHE_SIZE: Final = 4096
"""Verified access tokens remembered (oldest forgotten first)."""

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    # Verified against when the account does not exist, so a wrong email costs as
    # long as a wrong password and timing does not tell which one it was.
    return _hasher.hash(secrets.token_urlsafe(16))


_COMMON_PASSWORDS: Final = frozenset(
    {
        "password",
        "password1",
        "password123",
        "passw0rd",
        "123456789",
        "1234567890",
        "12345678910",
        "qwertyuiop",
        "qwerty123",
        "iloveyou",
        "letmein123",
        "welcome123",
        "admin12345",
        "changeme123",
        "abc1234567",
        "1q2w3e4r5t",
        "0123456789",
        "11111111111",
        "sunshine123",
        "football123",
    }
)


class InvalidTokenError(Exception):
    """An access token that must not be accepted; the message says why (not shown to clients)."""


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; ``None`` (no account) costs the same."""
    try:
        return (
            _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
        )
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether a stored hash predates the current argon2 parameters."""
    return _hasher.check_needs_rehash(password_hash)


def check_password_policy(
    password: str, *, min_length: int, username: str = "", email: str = ""
) -> list[str]:
    """What ``password`` lacks, as sentences for the client; empty when it is acceptable.

    Length over composition rules (NIST SP 800-63B): at least ``min_length``
    characters, at most 128, not a well-known password, not one repeated
    character, and not containing the username or the email's local part.
    """
    problems = []
    if len(password) < min_length:
        problems.append(f"Use at least {min_length} characters.")
    if len(password) > 128:
        problems.append("Use at most 128 characters.")
    lowered = password.lower()
    if lowered in _COMMON_PASSWORDS:
        problems.append("This password is too common; choose another.")
    if password and len(set(password)) == 1:
        problems.append("Do not repeat a single character.")
    for name, value in (("username", username), ("email address", email.split("@", 1)[0])):
        if len(value) >= 3 and value.lower() in lowered:
            problems.append(f"Do not include your {name} in the password.")
    return problems


def hash_secret(value: str) -> str:
    """SHA-256 hex of a random secret (refresh tokens): enough for values with 256 bits."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_refresh_token() -> tuple[str, str]:
    """A new opaque refresh token and the hash to store."""
    token = secrets.token_urlsafe(32)
    return token, hash_secret(token)


def new_one_time_code() -> str:
    """A random six-digit code."""
    return f"{secrets.randbelow(10**OTP_DIGITS):0{OTP_DIGITS}d}"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says."""

    user_id: str
    username: str
    email: str
    role: str
    region: str | None
    meter_id: str | None
    issued_at: int
    expires_at: int
    token_id: str


class TokenService:
    """Issues and verifies access tokens with the settings' algorithm and keys."""

    def __init__(self, settings: HubSettings, *, clock: Callable[[], datetime]) -> None:
        """Load the keys; raise :class:`ConfigError` for missing keys or a refused secret."""
        self._clock = clock
        self._algorithm = settings.jwt_algorithm
        self._issuer = settings.jwt_issuer
        self._ttl_s = settings.access_token_ttl_s
        self._cache: dict[str, AccessClaims] = {}
        self._cache_lock = threading.Lock()
        self._signing_key: Any
        self._verifying_key: Any
        if self._algorithm == "HS256":
            secret = settings.jwt_secret.get_secret_value()
            if settings.mode != "demo" and secret == DEMO_JWT_SECRET:
                raise ConfigError(
                    f"jwt_secret: {settings.mode} mode refuses the demo secret; "
                    "set SEGS_JWT_SECRET to a long random value"
                )
            self._signing_key = self._verifying_key = secret
            return
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        try:
            public = settings.jwt_public_key_file
            if public is None:
                raise ConfigError("jwt_public_key_file: RS256 needs the PEM public key")
            self._verifying_key = serialization.load_pem_public_key(public.read_bytes())
            private = settings.jwt_private_key_file
            self._signing_key = (
                serialization.load_pem_private_key(private.read_bytes(), password=None)
                if private is not None
                else None
            )
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"jwt key files: cannot load the RS256 keys: {exc}") from exc

    @property
    def ttl_s(self) -> int:
        """Lifetime of the access tokens issued, seconds."""
        return self._ttl_s

    def issue(
        self,
        *,
        user_id: str,
        username: str,
        email: str,
        role: str,
        region: str | None,
        meter_id: str | None,
    ) -> str:
        """A signed access token for these claims, valid for ``access_token_ttl_s``."""
        if self._signing_key is None:
            raise ConfigError(
                "jwt_private_key_file: this hub verifies tokens but cannot issue them"
            )
        now = int(self._clock().timestamp())
        claims = {
            "userId": user_id,
            "username": username,
            "email": email,
            "role": role.lower(),
            "region": region,
            "meterId": meter_id,
            "iat": now,
            "exp": now + self._ttl_s,
            "jti": str(uuid.uuid4()),
            "iss": self._issuer,
            "typ": ACCESS_TOKEN_TYPE,
        }
        return jwt.encode(claims, self._signing_key, algorithm=self._algorithm)

    def verify(self, token: str) -> AccessClaims:
        """The claims of a valid access token; :class:`InvalidTokenError` otherwise."""
        claims = self._verified(token)
        if claims.expires_at <= self._clock().timestamp():
            raise InvalidTokenError("expired")
        return claims

    def _verified(self, token: str) -> AccessClaims:
        # Signature and claim checks of a token are the same every time: a client
        # sends one token for many requests, so the result is remembered (expiry is
        # checked on every use, by verify()). Refused tokens are not remembered.
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        claims = self._decode(token)
        with self._cache_lock:
            if len(self._cache) >= _VERIFIED_CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)), None)
            self._cache[token] = claims
        return claims

    def _decode(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self._algorithm],
                issuer=self._issuer,
                options={
                    "require": ["exp", "iat", "jti", "iss", "typ", "userId", "role"],
                    # Expiry is checked against the hub's clock, not the wall clock.
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"{type(exc).__name__}: {exc}") from exc
        if claims.get("typ") != ACCESS_TOKEN_TYPE:
            raise InvalidTokenError(f"not an access token (typ {claims.get('typ')!r})")
        try:
            expires_at, issued_at = int(claims["exp"]), int(claims["iat"])
        except (TypeError, ValueError) as exc:
            raise InvalidTokenError("exp and iat must be numbers") from exc
        values = [claims.get(name) for name in ("userId", "username", "email", "role", "jti")]
        if not all(isinstance(value, str) for value in values):
            raise InvalidTokenError("malformed claims")
        region, meter_id = claims.get("region"), claims.get("meterId")
        return AccessClaims(
            user_id=claims["userId"],
            username=claims["username"],
            email=claims["email"],
            role=claims["role"],
            region=region if isinstance(region, str) else None,
            meter_id=meter_id if isinstance(meter_id, str) else None,
            issued_at=issued_at,
            expires_at=expires_at,
            token_id=claims["jti"],
        )


def hash_one_time_code(secret: str, *, user_id: str, purpose: str, code: str) -> str:
    """HMAC-SHA256 of a one-time code, bound to its user and purpose."""
    message = f"{user_id}:{purpose}:{code}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
