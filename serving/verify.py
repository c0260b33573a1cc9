"""The image's verifier without the server: ``python -I -m serving.verify``, a Kubernetes initContainer.

It runs exactly the entrypoint's checks and verification (:func:`serving.entrypoint.verify_image`:
the baked files, the environment, the mounts, the models volume of an image built with
``--models-from-volume``, the deployment's ConfigMap, every version dir under /models) and then
exits instead of starting a server, so a pod whose volume holds a tampered model never starts its
serving container. It takes no arguments: what it checks is baked into the image.

Exit 0 with one line ``tfpack-verify: verified N version dirs: ...; not serving``; otherwise one
line and the entrypoint's codes: 2 for a refused argument, variable or mount (or unusable baked
files), 3 for a failed verification, 1 for a bug in it. It needs only what the verifier venv of
either base has (no TensorFlow, no gRPC).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from packager.errors import TfpackError, first_line
from serving.entrypoint import ImageLayout, verify_image

_PREFIX = "tfpack-verify:"
EXIT_USAGE = 2


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, layout: ImageLayout | None = None
) -> int:
    """Verify the image as its entrypoint would, print one line, and return the exit code.

    Args:
        argv: the arguments (default: the command line's); any is refused.
        environ: the environment (default: the process's), checked as the entrypoint checks it.
        layout: where the baked files and models are (default: the image's own paths).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    environment = dict(os.environ if environ is None else environ)
    if arguments:
        _say(
            f"refusing to verify: {' '.join(arguments)}: serving.verify takes no arguments "
            "(what it checks is baked into the image)"
        )
        return EXIT_USAGE
    try:
        image = verify_image([], environment, layout or ImageLayout())
    except TfpackError as exc:
        _say(f"refusing to serve: {exc}")
        return exc.exit_code
    except Exception as exc:  # a bug must still fail the pod, in one line
        _say(f"refusing to serve: verification failed unexpectedly: {type(exc).__name__}: {first_line(exc)}")
        return 1
    checked = [*image.verified, *image.unsigned]
    unsigned = (
        f" ({', '.join(map(str, image.unsigned))} unsigned, allowed by the build's --allow-unsigned)"
        if image.unsigned
        else ""
    )
    dirs = "version dir" if len(checked) == 1 else "version dirs"
    _say(f"verified {len(checked)} {dirs}: {', '.join(map(str, sorted(checked)))}{unsigned}; not serving")
    return 0


def _say(line: str) -> None:
    print(f"{_PREFIX} {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
