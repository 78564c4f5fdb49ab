"""Passwords in database and tracking URLs: masked everywhere they could be written, revealed where used.

The sweeper masks every URL with a password it is given (`postgresql://user:pw@host/db` ->
`postgresql://user:***@host/db`, the form SQLAlchemy itself prints) in the overrides it passes on, in
Hydra's override lists (so no job folder's `.hydra/` files hold it), in its console lines and in
what it logs to MLflow. It keeps the real URLs in an environment variable of its own process
(`SWEEPER_SECRETS`, a JSON map masked -> real), which launched jobs inherit (basic, joblib and pool
launchers; SLURM exports the submitting environment). A job that needs the real URL calls `reveal`.
"""
import json
import os
import re

ENV = "SWEEPER_SECRETS"
# scheme://user:password@host, the user part possibly empty (redis://:pw@host) -- a URL's password has no
# raw '/' or '@' (they are %-encoded)
_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)(?P<password>[^@/\s'\"]+)"
                       r"(?P<tail>@[^/\s'\"?#]*)")
MASK = "***"


def mask_url(text):
    """Replace the password of every URL in `text` by ***."""
    if not isinstance(text, str):
        return text
    return _PASSWORD.sub(lambda m: m["head"] + MASK + m["tail"] if m["password"] != MASK else m[0], text)


def has_password(text):
    return isinstance(text, str) and any(m["password"] != MASK for m in _PASSWORD.finditer(text))


def remember(*texts):
    """Record the real form of every URL with a password in `texts`, for this process and its children."""
    known = _known()
    for text in texts:
        for match in _PASSWORD.finditer(text if isinstance(text, str) else ""):
            if match["password"] != MASK:
                known[mask_url(match[0])] = match[0]
    if known:
        os.environ[ENV] = json.dumps(known)


def reveal(text):
    """The real URL for a masked one (from the sweeper's environment); anything else unchanged."""
    if not isinstance(text, str) or MASK not in text:
        return text
    for masked, real in _known().items():
        text = text.replace(masked, real)
    return text


def _known():
    try:
        return dict(json.loads(os.environ.get(ENV, "{}")))
    except ValueError:
        return {}
