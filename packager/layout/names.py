"""The names users give: model names (a URL and path component) and Docker image references."""

from __future__ import annotations

import re

from packager.errors import UsageError

# The Docker reference grammar (distribution/reference): [host[:port]/]path[:tag][@digest].
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = re.compile(
    rf"^(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_model_name(name: str, flag: str = "--name") -> str:
    """Return ``name`` if it can be a model name and a path component, else raise UsageError.

    TF Serving uses the model name in URLs (/v1/models/NAME) and as a directory name, so only a
    plain name is accepted: letters, digits, '.', '_' and '-', not starting with a separator.

    Args:
        name: the proposed model name.
        flag: the flag or field the name came from, for the message.

    Raises:
        UsageError: ``name`` is not such a plain name.
    """
    if not _PLAIN_NAME.match(name) or name in {".", ".."}:
        raise UsageError(
            f"{flag} {name!r} is not a plain model name: use letters, digits, '.', '_' or '-' "
            "(at most 63 characters, starting with a letter or digit)"
        )
    return name


def check_image_reference(reference: str, flag: str) -> str:
    """Return ``reference`` if it is a Docker image reference, else raise UsageError naming ``flag``.

    Args:
        reference: the proposed image reference.
        flag: the flag the reference came from, for the message.

    Raises:
        UsageError: ``reference`` does not follow Docker's reference grammar.
    """
    if not _IMAGE_REFERENCE.match(reference):
        raise UsageError(
            f"{flag} {reference!r} is not an image reference: use REGISTRY/NAME:TAG or "
            "REGISTRY/NAME@sha256:DIGEST (lowercase name)"
        )
    return reference
