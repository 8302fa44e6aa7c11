"""Secret redaction for everything that leaves the process: results.jsonl, report.json, report.html.

What counts as a secret:

* the value of a key or flag whose name is secret-like (``api_key``, ``--admin-api-key``, ``hf_token``,
  ``HF_TOKEN``, ``GITHUB_TOKEN``, ``*_SECRET``, ``password``, ``authorization`` ...; see
  :func:`is_secret_name`), in mappings (string values only), in argv lists (``["--api-key", "x"]``,
  ``"--api-key=x"``) and inside text (``--api-key x``, ``api_key='x'``, ``HF_TOKEN=x``, ``?token=x``,
  ``"api_key": "x"``, ``Authorization: Bearer x``), also as the value of another option
  (``-e=HF_TOKEN=x``, ``--env="HF_TOKEN=x"``, ``--set-string=env.HF_TOKEN=x``), and in Kubernetes EnvVars
  (``{"name": "HF_TOKEN", "value": "x"}``);
* the password (or a lone token) in a URL's user-info: ``https://user:pass@host`` becomes
  ``https://user:***@host``;
* any literal secret value found anywhere inside a string (log tails, ids, commands): the values of the
  environment variables in :data:`ENV_SECRETS` and of every other environment variable with a secret-like
  name, plus ``extra_secrets``.

Numbers and booleans are never redacted by name (``bucket_time_to_first_token: 0.1`` is a setting, not a
secret).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

REDACTED = "***"
ENV_SECRETS: tuple[str, ...] = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "SGLANG_API_KEY")
MIN_LITERAL_LEN = 4
"""Shorter literal secrets are not searched for inside text (they would blank out ordinary words)."""

_EXACT = {
    "api_key", "apikey", "admin_api_key", "token", "hf_token", "hub_token", "access_token", "auth_token",
    "api_token", "bearer_token", "refresh_token", "id_token", "password", "passwd", "secret", "authorization",
    "proxy_authorization", "client_secret", "private_key", "access_key", "secret_key", "credentials",
}
_SUFFIXES = ("_api_key", "_apikey", "_secret", "_password", "_passwd", "_secret_key", "_access_key",
             "_private_key", "_auth_token", "_access_token")
# Upper-case (environment-variable style) names: any *_TOKEN, *_SECRET, *_KEY of an API, *_PASSWORD.
_ENV_NAME_RE = re.compile(
    r"^[A-Z][A-Z0-9_]*_(TOKEN|SECRET|API_KEY|APIKEY|PASSWORD|PASSWD|SECRET_KEY|ACCESS_KEY)$"
)


def is_secret_name(name: str) -> bool:
    """Whether a key, flag (``--api-key``) or environment variable name holds a secret.

    >>> [is_secret_name(n) for n in ("--api-key", "HF_TOKEN", "ssl_keyfile_password", "max_total_tokens")]
    [True, True, True, False]
    """
    bare = name.strip().lstrip("-")
    if _ENV_NAME_RE.match(bare.replace("-", "_")):
        return True
    norm = bare.lower().replace("-", "_")
    return norm in _EXACT or norm.endswith(_SUFFIXES)


def _literal_secrets(extra: Iterable[str]) -> list[str]:
    found = {os.environ.get(name, "") for name in ENV_SECRETS}
    found.update(v for k, v in os.environ.items() if _ENV_NAME_RE.match(k))
    found.update(str(s) for s in extra if s)
    # Longest first, so a secret that contains another is replaced whole.
    return sorted((s for s in found if len(s) >= MIN_LITERAL_LEN), key=lambda s: (-len(s), s))


_FLAG_RE = re.compile(
    r"(?P<flag>--[A-Za-z][\w-]*)(?P<sep>=|[ \t]+)(?!--)(?P<q>['\"])?(?P<val>(?(q)[^'\"\n]*|[^\s'\"]+))"
)
_ASSIGN_RE = re.compile(
    r"(?P<name>\b[A-Za-z][\w-]*)=(?:'(?P<sq>[^'\n]*)'|\"(?P<dq>[^\"\n]*)\"|(?P<bare>[^\s&'\",;)]+))"
)
_JSON_RE = re.compile(
    r"(?P<q>[\"'])(?P<name>[A-Za-z][\w-]*)(?P=q)(?P<sep>\s*:\s*)(?P<vq>[\"'])(?P<val>[^\"'\n]*)(?P=vq)"
)
_AUTH_RE = re.compile(
    r"(?i)\b(?P<head>(?:proxy-)?authorization\s*[:=]\s*)(?P<scheme>(?:bearer|basic|token)\s+)?"
    r"(?P<val>[^\s,;'\"]+)"
)
_BEARER_RE = re.compile(r"(?i)\b(?P<head>bearer\s+)(?P<val>[A-Za-z0-9._~+/=-]{8,})")
_URL_USERINFO_RE = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]+)(?::(?P<pw>[^/\s@]*))?@")
_EMPTY = {"", "none", "null", REDACTED}
# A reference to an upper-case variable (``$API_KEY``, ``${API_KEY}``, Kubernetes' ``$(API_KEY)``) names where a
# secret comes from when a command or manifest runs (exported command lines and manifests hold these instead of
# values). Lower-case is not accepted: ``$ecret`` may well be a password.
_REFERENCE_RE = re.compile(r"^\$(?:[A-Z_][A-Z0-9_]*|\{[A-Z_][A-Z0-9_]*\}|\([A-Z_][A-Z0-9_]*\))$")


def _kept(value: str) -> bool:
    """Whether a secret-named value stays as it is: empty, already redacted, or a variable reference."""
    return value.lower() in _EMPTY or bool(_REFERENCE_RE.match(value))


def _flag_sub(m: re.Match[str]) -> str:
    if not is_secret_name(m["flag"]) or _kept(m["val"]) or m["val"].startswith("--"):
        return m[0]
    return f"{m['flag']}{m['sep']}{m['q'] or ''}{REDACTED}"


def _assign_sub(m: re.Match[str]) -> str:
    if not is_secret_name(m["name"]):
        # the value may itself be an assignment: ``-e=HF_TOKEN=x``, ``--env="HF_TOKEN=x"``, ``--set=env.HF_TOKEN=x``
        head = len(m["name"]) + 1
        rest = m[0][head:]
        return m[0][:head] + _ASSIGN_RE.sub(_assign_sub, rest) if "=" in rest else m[0]
    if m["sq"] is not None:
        return f"{m['name']}='{REDACTED}'" if not _kept(m["sq"]) else m[0]
    if m["dq"] is not None:
        return f'{m["name"]}="{REDACTED}"' if not _kept(m["dq"]) else m[0]
    if _kept(m["bare"]) or m["bare"].startswith(REDACTED):  # already redacted (e.g. a config_id)
        return m[0]
    return f"{m['name']}={REDACTED}"


def _json_sub(m: re.Match[str]) -> str:
    if not is_secret_name(m["name"]) or _kept(m["val"]):
        return m[0]
    return f"{m['q']}{m['name']}{m['q']}{m['sep']}{m['vq']}{REDACTED}{m['vq']}"


def _url_sub(m: re.Match[str]) -> str:
    if m["pw"] is None:  # a lone user-info is often a token (https://<token>@github.com)
        return f"{m['scheme']}{REDACTED}@"
    return f"{m['scheme']}{m['user']}:{REDACTED}@"


def _redact_text(s: str, literals: list[str]) -> str:
    for lit in literals:
        if lit in s:
            s = s.replace(lit, REDACTED)
    if "://" in s and "@" in s:
        s = _URL_USERINFO_RE.sub(_url_sub, s)
    if "--" in s:
        s = _FLAG_RE.sub(_flag_sub, s)
    if "=" in s:
        s = _ASSIGN_RE.sub(_assign_sub, s)
    if ":" in s:
        s = _JSON_RE.sub(_json_sub, s)
    lowered = s.lower()
    if "authorization" in lowered:
        s = _AUTH_RE.sub(lambda m: f"{m['head']}{m['scheme'] or ''}{REDACTED}", s)
    if "bearer" in lowered:
        s = _BEARER_RE.sub(lambda m: f"{m['head']}{REDACTED}", s)
    return s


def redact_text(s: str, *, extra_secrets: Iterable[str] = ()) -> str:
    """Return ``s`` with every secret it contains replaced by ``***``."""
    return _redact_text(s, _literal_secrets(extra_secrets))


def _redact_argv(items: list[Any], literals: list[str]) -> list[Any]:
    out: list[Any] = []
    hide_next = False
    for item in items:
        if hide_next and isinstance(item, str) and not item.startswith("--"):
            out.append(item if _REFERENCE_RE.match(item) else REDACTED)
            hide_next = False
            continue
        hide_next = False
        if isinstance(item, str) and item.startswith("--"):
            flag, eq, value = item.partition("=")
            if is_secret_name(flag):
                if eq:
                    out.append(f"{flag}={REDACTED}" if value and not _REFERENCE_RE.match(value) else item)
                    continue
                hide_next = True
                out.append(item)
                continue
        out.append(_walk(item, literals))
    return out


def _is_secret_env_var(obj: Mapping[Any, Any]) -> bool:
    name, value = obj.get("name"), obj.get("value")
    return (isinstance(name, str) and isinstance(value, str) and bool(value) and not _REFERENCE_RE.match(value)
            and is_secret_name(name))


def _walk(obj: Any, literals: list[str]) -> Any:
    if isinstance(obj, str):
        return _redact_text(obj, literals)
    if isinstance(obj, Mapping):
        if _is_secret_env_var(obj):  # a Kubernetes EnvVar: {"name": "HF_TOKEN", "value": "..."}
            return {k: (REDACTED if k == "value" else _walk(v, literals)) for k, v in obj.items()}
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            if isinstance(k, str) and isinstance(v, str) and v and not _REFERENCE_RE.match(v) \
                    and is_secret_name(k):
                out[k] = REDACTED
            else:
                out[k] = _walk(v, literals)
        return out
    if isinstance(obj, list):
        return _redact_argv(obj, literals)
    if isinstance(obj, tuple):
        return tuple(_redact_argv(list(obj), literals))
    return obj


def redact(obj: Any, *, extra_secrets: Iterable[str] = ()) -> Any:
    """A deep copy of plain data (dicts, lists, tuples, strings, numbers), every secret replaced by ``***``.

    Mappings come back as ``dict``; other objects are returned as they are.
    """
    return _walk(obj, _literal_secrets(extra_secrets))


@dataclass(frozen=True)
class SecretArg:
    """A secret flag value taken out of an argv: to be filled from the variable ``var`` when the line runs."""

    var: str      # the flag's name as an environment variable: --api-key → API_KEY
    prefix: str   # "--api-key=" when the value was joined to its flag, else ""


def secret_args(argv: Iterable[Any]) -> list[str | SecretArg]:
    """``argv`` (as strings) with the value of every secret flag (``--api-key x``, ``--api-key=x``) replaced by
    a ``SecretArg``, for exported command lines and manifests that must run without holding the secret."""
    out: list[str | SecretArg] = []
    pending: str | None = None
    for item in (str(a) for a in argv):
        if pending is not None:
            out.append(SecretArg(pending, ""))
            pending = None
            continue
        flag, eq, _ = item.partition("=")
        if item.startswith("--") and is_secret_name(flag):
            var = re.sub(r"[^A-Z0-9_]", "_", flag.lstrip("-").upper())
            if eq:
                out.append(SecretArg(var, flag + "="))
            else:
                out.append(item)
                pending = var
            continue
        out.append(item)
    return out


def shell_words(argv: Iterable[Any]) -> list[str]:
    """``argv`` as shell words ready to paste: quoted, and each secret flag value a ``"$VAR"`` for the shell to
    fill in when the line runs (``--api-key x`` → ``--api-key "$API_KEY"``)."""
    return [f'{a.prefix}"${a.var}"' if isinstance(a, SecretArg) else shlex.quote(a) for a in secret_args(argv)]
