"""The database's login from AWS Secrets Manager (``DB_SECRET_ID``), through botocore.

Read on the first connect of a process and kept; read again once when the server refuses the kept
login (a rotation changed it), never more often.  Two shapes of secret: the JSON that RDS manages
(``username``, ``password``, ``host``, ``port``, ``dbname``; what it names replaces DATABASE_URL's part,
what it lacks comes from there), or a password alone (JSON with only ``password``, or the plain
string).  botocore is imported here, on the first read, never when no secret is set: a cold start
without one pays nothing.  No error and no log line holds the secret's value.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from typing import Any

from etl_core.config import DbSettings, SecretSettings
from etl_core.errors import SecretError, SecretUnavailable
from etl_core.logs import log_event

# the server's answers to a login it refuses: 28P01 a wrong password (also an unknown user, which
# PostgreSQL does not tell apart), 28000 one pg_hba.conf or the role's LOGIN refuses (after an
# alternating-users rotation the old user may be refused so)
AUTH_FAILED = ("28P01", "28000")
# Secrets Manager's answers an operator must act on (anything else of a 4xx status is one too)
_REFUSED = {
    "ResourceNotFoundException": "there is no such secret (or the role may not see it)",
    "AccessDeniedException": "the function's role may not read it (secretsmanager:GetSecretValue)",
    "DecryptionFailure": "its KMS key cannot be used to decrypt it (kms:Decrypt)",
    "InvalidRequestException": "it cannot be read now (scheduled for deletion?)",
    "InvalidParameterException": "the request was refused",
    "UnrecognizedClientException": "the credentials are not valid",
    "InvalidSignatureException": "the credentials are not valid",
    "ExpiredTokenException": "the credentials have expired",
}

_THROTTLED = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "RequestTimeout"}


@dataclasses.dataclass(frozen=True)
class Login:
    """What a secret says of the login: the password, and the parts it names (None: not named)."""

    password: str = dataclasses.field(repr=False)
    user: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None

    def applied(self, settings: DbSettings) -> DbSettings:
        return settings.with_login(password=self.password, user=self.user, host=self.host, port=self.port,
                                   database=self.database)


_kept: dict[SecretSettings, Login] = {}
_clients: dict[tuple[str | None, str | None, float, int], Any] = {}
_lock = threading.Lock()


def login(settings: DbSettings, *, refused: str | None = None) -> Login:
    """The secret's login: the kept one, or (first use, or the server ``refused`` the kept one with this
    SQLSTATE) one read now and kept."""
    secret = settings.secret
    assert secret is not None  # callers ask only when a secret is set
    with _lock:
        kept = _kept.get(secret)
    if kept is not None and refused is None:
        return kept
    found = parse(_read(secret, timeout=settings.connect_timeout, attempts=settings.connect_attempts),
                  secret.secret_id)
    with _lock:
        _kept[secret] = found
    log_event("db_secret_read", secret=secret.secret_id, changed=None if kept is None else found != kept,
              reason="first use" if refused is None else f"the server refused the kept login ({refused})")
    return found


def kept(settings: DbSettings) -> DbSettings:
    """The settings as the kept login changes them (none kept, or no secret: as they are); reads nothing."""
    with _lock:
        found = None if settings.secret is None else _kept.get(settings.secret)
    return settings if found is None else found.applied(settings)


def forget() -> None:
    """Drop every kept login and client (tests; a process would just end)."""
    with _lock:
        _kept.clear()
        _clients.clear()


def parse(text: str | None, name: str) -> Login:
    """A secret's string as a Login; SecretError names what is wrong, never the value."""
    if text is None:
        raise SecretError(f"the secret {name} holds binary data: store the password, or RDS's JSON, as its string",
                          secret=name)
    if not text.strip():
        raise SecretError(f"the secret {name} is empty", secret=name)
    if not text.lstrip().startswith("{"):
        return Login(password=text)
    try:
        fields = json.loads(text)
    except ValueError:
        raise SecretError(f"the secret {name} starts as a JSON object but is not valid JSON", secret=name) from None
    if not isinstance(fields, dict):
        raise SecretError(f"the secret {name} starts as a JSON object but is not one", secret=name)
    password = fields.get("password")
    if not isinstance(password, str) or not password:
        raise SecretError(f"the secret {name} is JSON without a password: a non-empty string under \"password\"",
                          secret=name)
    return Login(password=password, user=_text(fields, "username", name), host=_text(fields, "host", name),
                 port=_port(fields, name), database=_text(fields, "dbname", name))


def _text(fields: dict[str, Any], key: str, name: str) -> str | None:
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SecretError(f"the secret {name} has a \"{key}\" that is not a non-empty string", secret=name)
    return value


def _port(fields: dict[str, Any], name: str) -> int | None:
    value = fields.get("port")
    if value is None:
        return None
    try:
        port = int(value) if isinstance(value, int | str) and not isinstance(value, bool) else 0
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise SecretError(f"the secret {name} has a \"port\" that is not a port number (1-65535)", secret=name)
    return port


def _read(secret: SecretSettings, *, timeout: float, attempts: int) -> str | None:
    """GetSecretValue's SecretString (None: the secret holds SecretBinary); its failures as ours."""
    client = _client(secret, timeout=timeout, attempts=attempts)
    from botocore import exceptions  # imported by _client already
    name = secret.secret_id
    try:
        answer = client.get_secret_value(SecretId=name)
    except exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "")) or "unknown"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _REFUSED or (400 <= status < 500 and code not in _THROTTLED):
            why = _REFUSED.get(code, _REFUSED["AccessDeniedException"] if status == 403 else
                               "Secrets Manager refused the request")
            raise SecretError(f"cannot read the secret {name}: {why} ({code})", secret=name, aws_code=code) from None
        raise SecretUnavailable(f"Secrets Manager did not give the secret {name}: {code}", secret=name,
                                aws_code=code) from None
    except exceptions.NoCredentialsError:
        raise SecretError(f"cannot read the secret {name}: no AWS credentials (the function's role, or the AWS_* "
                          "variables)", secret=name) from None
    except (exceptions.ParamValidationError, exceptions.PartialCredentialsError) as exc:
        raise SecretError(f"cannot read the secret {name}: {type(exc).__name__}", secret=name) from None
    except exceptions.BotoCoreError as exc:  # endpoint unreachable, timeouts, a connection closed
        raise SecretUnavailable(f"cannot reach Secrets Manager for the secret {name}: {type(exc).__name__}",
                                secret=name) from None
    text = answer.get("SecretString")
    return text if isinstance(text, str) else None


def _client(secret: SecretSettings, *, timeout: float, attempts: int) -> Any:
    """One Secrets Manager client per region and endpoint in a process (making one reads botocore's
    model of the service, the larger part of the first read's cost)."""
    key = (secret.region, secret.endpoint, timeout, attempts)
    with _lock:
        if key in _clients:
            return _clients[key]
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError:
        raise SecretError("DB_SECRET_ID is set, but botocore is not installed (requirements.txt pins it)",
                          secret=secret.secret_id) from None

    # botocore's DEBUG lines carry the responses' bodies, the secret's value among them: they are never
    # written, whatever level the runtime gives the root logger (AWS_LAMBDA_LOG_LEVEL=DEBUG)
    logging.getLogger("botocore").setLevel(logging.INFO)
    client = botocore.session.get_session().create_client(
        "secretsmanager", region_name=secret.region, endpoint_url=secret.endpoint,
        config=Config(connect_timeout=timeout, read_timeout=timeout,
                      retries={"mode": "standard", "total_max_attempts": attempts}))
    with _lock:
        return _clients.setdefault(key, client)
