"""Writing a version dir's ``model.sig``: hash every file, sign the manifest, and put the bundle
in place atomically; reading it back goes through :func:`packager.layout.read_bundle`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from packager.errors import UsageError, first_line
from packager.layout import SIGNATURE_FILE, Bundle, hashing_config, read_bundle
from packager.layout import _model_signing_compat as compat

if TYPE_CHECKING:
    from model_signing._signing.signing import Signer


def write_signature(signer: Signer, version_dir: Path) -> Bundle:
    """Sign every file of ``version_dir`` with ``signer`` into ``version_dir/model.sig``.

    The bundle is written beside the dir and renamed into place, so a reader never sees a
    half-written signature and a failure leaves any previous model.sig untouched.

    Returns:
        The bundle written, as read back.

    Raises:
        UsageError: model-signing cannot hash or sign the dir, or the bundle cannot be written.
    """
    signature_path = version_dir / SIGNATURE_FILE
    temporary = version_dir.parent / f".{version_dir.name}.{SIGNATURE_FILE}.tmp"
    try:
        compat.sign_files(signer, hashing_config(), version_dir, temporary)
        temporary.replace(signature_path)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"signing {version_dir} failed: {first_line(exc)}") from None
    except OSError as exc:
        raise UsageError(f"cannot write {signature_path} (via {temporary.name} beside it): {exc.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return read_bundle(signature_path)
