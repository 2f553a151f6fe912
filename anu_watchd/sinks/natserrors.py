"""How the nats sink types a failure: transient (retried) or permanent (FIRE_FAILED).

Pure: an exception from nats-py in, a ``WakeError`` out (docs/operations.md,
"Fleet", has the same table for operators)::

    JetStream API error, 5xx or 503       transient (10077 never gets here: it is "held")
    JetStream err_code 10158              transient: the same Nats-Msg-Id is in process
    JetStream API error, other 4xx        permanent (10060: not the expected stream, ...)
    refused credentials or TLS            permanent
    payload over max_payload, bad subject permanent
    a timeout, no connection, the rest    transient

Two answers are decided by the sink itself, with the broker's help: "no
responders" (which stream captures the subject?) and a timeout after the
server refused the publish for permissions (it answers only with -ERR).
"""

from __future__ import annotations

import ssl

from anu_watchd.errors import PermanentWakeError, TransientWakeError, WakeError

ERR_MAX_MSGS_PER_SUBJECT = 10077  # a per-key stream already holds this subject's message
ERR_MSG_ID_IN_PROCESS = 10158  # the same Nats-Msg-Id is being stored right now


def classify(exc: BaseException, described: str) -> WakeError:
    """A failed publish or connect as a transient or permanent wake error (pure)."""
    from nats import errors
    from nats.js.errors import APIError

    if isinstance(exc, APIError):
        code = exc.code or 0
        if exc.err_code == ERR_MSG_ID_IN_PROCESS or code >= 500 or code == 0:
            return TransientWakeError(f"JetStream: {described}")
        return PermanentWakeError(f"JetStream: {described}")
    if refused(exc) or isinstance(exc, errors.MaxPayloadError | errors.BadSubjectError):
        return PermanentWakeError(f"NATS: {described}")
    if isinstance(exc, TimeoutError):
        return TransientWakeError(f"NATS publish timed out: {described}")
    return TransientWakeError(f"NATS: {described}")


def refused(exc: BaseException) -> bool:
    """The server or the client refused our credentials or TLS: retrying cannot help."""
    from nats import errors

    refused = (
        errors.AuthorizationError,
        errors.InvalidUserCredentialsError,
        errors.SecureConnRequiredError,
        errors.SecureConnWantedError,
        ssl.SSLCertVerificationError,
    )
    if isinstance(exc, refused):
        return True
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text or "seed" in text
