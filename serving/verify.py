"""The image's verifier without the server: ``python -I -m serving.verify``, a Kubernetes initContainer.

Without arguments it runs exactly the entrypoint's checks and verification
(:func:`serving.entrypoint.verify_image`: the baked files, the environment, the mounts, the
models volume of an image built with ``--models-from-volume``, the deployment's ConfigMap, every
version dir under /models, each served one against the digest the build recorded) and then exits
instead of starting a server, so a pod whose volume holds a tampered model never starts its
serving container.

``--stage-from /tfpack-claim`` (an image built with ``--models-from-volume`` only) is what
``tfpack k8s`` runs: it copies each served version dir from the models claim, mounted read-only
at /tfpack-claim, into the empty writable /models (an emptyDir), refusing any symlink, FIFO,
socket or device in them, and verifies the copy as the entrypoint does
(:func:`serving.entrypoint.stage_image`). The server's container then mounts that copy
read-only at /models and verifies it again: it never reads the claim.

Exit 0 with one line (``tfpack-verify: verified N version dirs: ...; not serving``, or ``staged
and verified N version dirs from /tfpack-claim: ...; not serving``); otherwise one line and the
entrypoint's codes: 2 for a refused argument, variable or mount (or unusable baked files), 3 for
a failed verification, 1 for a bug in it. It needs only what the verifier venv of either base has
(no TensorFlow, no gRPC).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from packager.errors import TfpackError, first_line
from packager.layout import CLAIM_DIR
from serving.entrypoint import ImageLayout, stage_image, verify_image

_PREFIX = "tfpack-verify:"
EXIT_USAGE = 2
STAGE_FROM = "--stage-from"


def _stage_source(arguments: list[str]) -> tuple[Path | None, str | None]:
    """(the --stage-from dir or None, why the arguments are refused or None)."""
    if not arguments:
        return None, None
    if len(arguments) == 2 and arguments[0] == STAGE_FROM:
        return Path(arguments[1]), None
    if len(arguments) == 1 and arguments[0].startswith(f"{STAGE_FROM}="):
        return Path(arguments[0].partition("=")[2]), None
    return None, (
        f"{' '.join(arguments)}: serving.verify takes no arguments but {STAGE_FROM} {CLAIM_DIR} "
        "(what it checks is baked into the image)"
    )


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, layout: ImageLayout | None = None
) -> int:
    """Verify the image as its entrypoint would (or stage and verify), print one line, return the exit code.

    Args:
        argv: the arguments (default: the command line's): none, or ``--stage-from /tfpack-claim``.
        environ: the environment (default: the process's), checked as the entrypoint checks it.
        layout: where the baked files, the models and the claim are (default: the image's own paths).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    environment = dict(os.environ if environ is None else environ)
    source, refused = _stage_source(arguments)
    if refused is not None:
        _say(f"refusing to verify: {refused}")
        return EXIT_USAGE
    image_layout = layout or ImageLayout()
    try:
        if source is None:
            image = verify_image([], environment, image_layout)
        else:
            image = stage_image(source, environment, image_layout)
    except TfpackError as exc:
        _say(f"refusing to serve: {exc}")
        return exc.exit_code
    except Exception as exc:  # a bug must still fail the pod, in one line
        _say(f"refusing to serve: verification failed unexpectedly: {type(exc).__name__}: {first_line(exc)}")
        return 1
    checked = [*image.verified, *image.unsigned]
    dirs = f"{len(checked)} version dir{'' if len(checked) == 1 else 's'}"
    done = f"verified {dirs}" if source is None else f"staged and verified {dirs} from {source}"
    unsigned = (
        f" ({', '.join(map(str, image.unsigned))} unsigned, allowed by the build's --allow-unsigned)"
        if image.unsigned
        else ""
    )
    _say(f"{done}: {', '.join(map(str, sorted(checked)))}{unsigned}; not serving")
    return 0


def _say(line: str) -> None:
    print(f"{_PREFIX} {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
