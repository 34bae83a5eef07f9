"""``/api/v1/auth``: the whole account flow, token attacks, throttling, and the error shape."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apikit import PASSWORD, Api, MakeApi

from segs.cli import main
from segs.hub.api import create_app
from segs.hub.db import RefreshToken, Role, User
from segs.hub.exceptions import ConfigError
from segs.hub.settings import HubSettings

AUTH = "/api/v1/auth"


def _post(api: Api, action: str, headers: dict[str, str] | None = None, **body: Any) -> Any:
    """POST ``body`` as JSON to ``/api/v1/auth/{action}``."""
    return api.client.post(f"{AUTH}/{action}", json=body, headers=headers)


def _error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert body["error"]["status"] == status
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def test_register_verify_login_refresh_logout(
    api: Api, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    email = "asha@example.com"
    response = _post(api, "register", email="Asha@Example.com", username="asha", password=PASSWORD)
    assert response.status_code == 202, response.text
    _error(_post(api, "login", email=email, password=PASSWORD), 403, "email_not_verified")

    # The code comes from the outbox, as `segs hub outbox` prints it.
    monkeypatch.setenv("SEGS_DATABASE_URL", database_url)
    assert main(["hub", "outbox", "--to", email, "--json"]) == 0
    mail = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert mail["to"] == email
    code = api.code(email)
    assert code in mail["body"]

    _error(
        _post(api, "verify-otp", email=email, otp="000000" if code != "000000" else "111111"),
        400,
        "invalid_code",
    )
    response = _post(api, "verify-otp", email=email, otp=code)
    assert response.status_code == 200, response.text
    # A code works once.
    _error(_post(api, "verify-otp", email=email, otp=code), 400)

    tokens = api.login(email)
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == api.settings.access_token_ttl_s
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert {"userId", "username", "email", "role", "region", "meterId", "exp", "iat", "jti"} <= set(
        claims
    )
    assert claims["role"] == "user"
    assert claims["email"] == email
    me = api.client.get(f"{AUTH}/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200
    assert me.json()["username"] == "asha"
    assert me.json()["status"] == "active"

    refreshed = _post(api, "refresh", refresh_token=tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert new["access_token"] != tokens["access_token"]

    assert _post(api, "logout", refresh_token=new["refresh_token"]).status_code == 204
    _error(_post(api, "refresh", refresh_token=new["refresh_token"]), 401, "invalid_refresh_token")
    # Logout is idempotent.
    assert _post(api, "logout", refresh_token=new["refresh_token"]).status_code == 204


def test_registering_a_known_email_looks_the_same_and_warns_the_owner(api: Api) -> None:
    api.user("ravi@example.com")
    first = _post(api, "register", email="ravi@example.com", username="ravi2", password=PASSWORD)
    fresh = _post(api, "register", email="meera@example.com", username="meera", password=PASSWORD)
    assert first.status_code == fresh.status_code == 202
    assert first.json() == fresh.json()
    (mail,) = api.mails("ravi@example.com")
    assert "already exists" in mail.body
    # The existing account is untouched.
    api.login("ravi@example.com")


def test_password_policy_explains_itself(api: Api) -> None:
    error = _error(
        _post(api, "register", email="kiran@example.com", username="kiran", password="kiran12"),
        422,
        "weak_password",
    )
    assert any("at least 10 characters" in line for line in error["details"])
    assert any("username" in line for line in error["details"])
    error = _error(
        _post(api, "register", email="kiran@example.com", username="kiran", password="password123"),
        422,
    )
    assert any("too common" in line for line in error["details"])
    assert api.mails("kiran@example.com") == []


def test_wrong_password_and_unknown_email_answer_alike(api: Api) -> None:
    api.user("dev@example.com")
    wrong = _post(api, "login", email="dev@example.com", password="x" * 12)
    unknown = _post(api, "login", email="nobody@example.com", password="x" * 12)
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_repeated_failures_lock_the_account_and_unknown_emails_alike(make_api: MakeApi) -> None:
    api = make_api(login_max_failures=3, login_lockout_s=600)
    api.user("lata@example.com")
    for _ in range(3):
        _error(_post(api, "login", email="lata@example.com", password="wrong-password-x"), 401)
    locked = _error(_post(api, "login", email="lata@example.com", password=PASSWORD), 429)
    for _ in range(3):
        _error(_post(api, "login", email="ghost@example.com", password="wrong-password-x"), 401)
    ghost = _error(_post(api, "login", email="ghost@example.com", password=PASSWORD), 429)
    assert locked == ghost
    with Session(api.engine) as session:
        user = session.exec(select(User).where(User.email == "lata@example.com")).one()
        assert user.locked_until is not None


def test_sign_in_attempts_are_limited_per_client_address(make_api: MakeApi) -> None:
    api = make_api(login_rate_per_address="4/minute")
    api.user("omkar@example.com")
    for index in range(4):
        response = api.client.post(
            f"{AUTH}/login", json={"email": f"u{index}@example.com", "password": "wrong-password"}
        )
        assert response.status_code == 401
    response = _post(api, "login", email="omkar@example.com", password=PASSWORD)
    _error(response, 429, "too_many_attempts")
    assert response.headers["Retry-After"]


# -- token attacks ---------------------------------------------------------------------------


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _me(api: Api, token: str) -> Any:
    return api.client.get(f"{AUTH}/me", headers={"Authorization": f"Bearer {token}"})


def test_token_attacks_are_refused(api: Api) -> None:
    api.user("tara@example.com")
    tokens = api.login("tara@example.com")
    access = tokens["access_token"]
    assert _me(api, access).status_code == 200
    claims = jwt.decode(access, options={"verify_signature": False})

    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    _error(_me(api, unsigned), 401, "invalid_token")

    header, payload, signature = access.split(".")
    tampered = _b64({**claims, "role": "admin"})
    _error(_me(api, f"{header}.{tampered}.{signature}"), 401, "invalid_token")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    _error(_me(api, f"{header}.{payload}.{flipped}"), 401, "invalid_token")

    wrong_key = jwt.encode(
        claims, "another-secret-that-is-long-enough-for-hs256", algorithm="HS256"
    )
    _error(_me(api, wrong_key), 401, "invalid_token")

    secret = api.settings.jwt_secret.get_secret_value()
    as_refresh = jwt.encode({**claims, "typ": "refresh"}, secret, algorithm="HS256")
    _error(_me(api, as_refresh), 401, "invalid_token")
    _error(_me(api, tokens["refresh_token"]), 401, "invalid_token")

    api.clock.advance(api.settings.access_token_ttl_s + 1)
    _error(_me(api, access), 401, "invalid_token")
    _error(api.client.get(f"{AUTH}/me"), 401, "unauthorized")


def test_a_reused_refresh_token_revokes_its_family(api: Api) -> None:
    api.user("neel@example.com")
    first = api.login("neel@example.com")
    other_session = api.login("neel@example.com")
    second = _post(api, "refresh", refresh_token=first["refresh_token"]).json()
    # The spent token comes back (stolen and replayed): refused, and the family revoked.
    _error(
        _post(api, "refresh", refresh_token=first["refresh_token"]), 401, "invalid_refresh_token"
    )
    _error(_post(api, "refresh", refresh_token=second["refresh_token"]), 401)
    with Session(api.engine) as session:
        rows = session.exec(select(RefreshToken)).all()
        family = {row.family_id for row in rows if row.revoked_at is not None}
        assert len(family) == 1
    # Another session of the same user is not touched.
    again = _post(api, "refresh", refresh_token=other_session["refresh_token"])
    assert again.status_code == 200


def test_otp_as_a_second_factor(api: Api) -> None:
    api.user("isha@example.com")
    headers = api.headers("isha@example.com")
    response = api.client.put("/api/v1/users/me", json={"otp_login": True}, headers=headers)
    assert response.status_code == 200
    assert response.json()["otp_login"] is True
    _error(_post(api, "login", email="isha@example.com", password=PASSWORD), 401, "otp_required")
    code = api.code("isha@example.com")
    wrong = "123456" if code != "123456" else "654321"
    _error(_post(api, "login", email="isha@example.com", password=PASSWORD, otp=wrong), 401)
    tokens = api.login("isha@example.com", otp=code)
    assert tokens["access_token"]


def test_forgot_and_reset_password_sign_out_everywhere(api: Api) -> None:
    api.user("ajay@example.com")
    old = api.login("ajay@example.com")
    assert _post(api, "forgot-password", email="ajay@example.com").status_code == 202
    assert _post(api, "forgot-password", email="nobody@example.com").status_code == 202
    assert api.mails("nobody@example.com") == []
    code = api.code("ajay@example.com")
    new_password = "a-brand-new-pass-phrase"
    api.clock.advance(1)
    response = _post(
        api, "reset-password", email="ajay@example.com", otp=code, new_password=new_password
    )
    assert response.status_code == 200, response.text
    _error(
        _post(api, "login", email="ajay@example.com", password=PASSWORD),
        401,
    )
    api.login("ajay@example.com", new_password)
    _error(_me(api, old["access_token"]), 401, "invalid_token")
    _error(_post(api, "refresh", refresh_token=old["refresh_token"]), 401)


def test_change_password(api: Api) -> None:
    api.user("zoya@example.com")
    tokens = api.login("zoya@example.com")
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    _error(
        _post(
            api,
            "change-password",
            headers,
            current_password="not-the-password",
            new_password="zz-new-pass-phrase",
        ),
        400,
        "wrong_password",
    )
    _error(
        _post(api, "change-password", headers, current_password=PASSWORD, new_password="short"),
        422,
        "weak_password",
    )
    api.clock.advance(1)
    response = _post(
        api,
        "change-password",
        headers,
        current_password=PASSWORD,
        new_password="zz-new-pass-phrase",
    )
    assert response.status_code == 200, response.text
    _error(_post(api, "refresh", refresh_token=tokens["refresh_token"]), 401)
    api.login("zoya@example.com", "zz-new-pass-phrase")


def test_production_mode_refuses_the_demo_secret(database_url: str) -> None:
    settings = HubSettings(database_url=database_url, mode="production")
    with pytest.raises(ConfigError, match="jwt_secret"):
        create_app(settings)
    ok = HubSettings(database_url=database_url, mode="production", jwt_secret="s" * 40)
    assert create_app(ok).title


def test_rs256_tokens_and_algorithm_confusion(make_api: MakeApi, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = tmp_path / "jwt.key"
    public = tmp_path / "jwt.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public.write_bytes(public_pem)
    api = make_api(jwt_algorithm="RS256", jwt_private_key_file=private, jwt_public_key_file=public)
    api.user("rsadmin@example.com", role=Role.ADMIN)
    access = api.login("rsadmin@example.com")["access_token"]
    assert jwt.get_unverified_header(access)["alg"] == "RS256"
    assert _me(api, access).status_code == 200
    # HS256 signed with the public key as the secret: the classic confusion attack.
    claims = jwt.decode(access, options={"verify_signature": False})
    import hashlib  # noqa: PLC0415
    import hmac as _hmac  # noqa: PLC0415

    header = _b64({"alg": "HS256", "typ": "JWT"})
    body = _b64(claims)
    signature = (
        base64.urlsafe_b64encode(
            _hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
        )
        .rstrip(b"=")
        .decode()
    )
    _error(_me(api, f"{header}.{body}.{signature}"), 401, "invalid_token")


def test_errors_share_one_shape_and_leak_nothing(api: Api) -> None:
    _error(api.client.get("/api/v1/nothing-here"), 404, "not_found")
    _error(api.client.delete(f"{AUTH}/me"), 405)
    error = _error(_post(api, "login", email="not-an-email"), 422, "validation_error")
    assert {tuple(detail["loc"]) for detail in error["details"]} >= {
        ("body", "email"),
        ("body", "password"),
    }
    error = _error(
        api.client.post(
            f"{AUTH}/login", content=b"{not json", headers={"Content-Type": "application/json"}
        ),
        422,
    )
    assert "Traceback" not in json.dumps(error)
