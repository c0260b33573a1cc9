"""Signing and verification throughput against `sha256sum` over the same files, in the same run.

Builds a ~500 MB version dir of random bytes (a few large variables shards and small files, shaped
like a SavedModel), then times, best of --repeats each:

    sha256sum   over every file (the baseline: one process reading and hashing everything)
    openssl dgst -sha256   the same, for reference: Debian's coreutils sha256sum does not use
                the CPU's SHA extensions, OpenSSL (and so Python's hashlib) does
    tfpack sign   packager.signing.sign with an EC P-256 key
    tfpack verify packager.signing.verify with its public key

and prints MB/s and the ratio to sha256sum (target: >= 0.8x). The page cache is warm for all
three (each reads the same files right after the others), so the figures compare hashing and
bookkeeping, not the disk. The temp dir is removed at the end.

    .venv/bin/python bench/sign.py [--size-mb 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from packager.signing import sign, verify

TARGET_RATIO = 0.8
SHARDS = 4
SMALL_FILES = {
    "saved_model.pb": 300_000,
    "variables/variables.index": 20_000,
    "assets.extra/tfpack_goldens.npz": 40_000,
    "assets.extra/tf_serving_warmup_requests": 30_000,
    "assets.extra/tfpack_provenance.json": 3_000,
    "assets/vocab.txt": 200_000,
}


def build_model_dir(root: Path, size_mb: int) -> list[Path]:
    """Write a SavedModel-shaped dir of random bytes totalling about ``size_mb`` MB."""
    files = []
    shard_bytes = size_mb * 1_000_000 // SHARDS
    for index in range(SHARDS):
        path = root / "variables" / f"variables.data-{index:05d}-of-{SHARDS:05d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            for _ in range(shard_bytes // (1 << 20)):
                handle.write(os.urandom(1 << 20))
            handle.write(os.urandom(shard_bytes % (1 << 20)))
        files.append(path)
    for name, size in SMALL_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        files.append(path)
    return files


def best_of(repeats: int, action: Callable[[], object]) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tfpack-bench-sign-"))
    try:
        model = workdir / "model" / "1"
        files = build_model_dir(model, args.size_mb)
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        key = ec.generate_private_key(ec.SECP256R1())
        private_key, public_key = workdir / "private.pem", workdir / "public.pem"
        private_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        public_key.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

        def sha256sum() -> None:
            subprocess.run(["sha256sum", *map(str, files)], check=True, stdout=subprocess.DEVNULL)

        def openssl_sha256() -> None:
            subprocess.run(["openssl", "dgst", "-sha256", *map(str, files)], check=True, stdout=subprocess.DEVNULL)

        sha256sum()  # warm the page cache for everyone
        baseline = best_of(args.repeats, sha256sum)
        rows = [("sha256sum", baseline)]
        if shutil.which("openssl"):
            rows.append(("openssl sha256", best_of(args.repeats, openssl_sha256)))
        signing = best_of(args.repeats, lambda: sign(model, private_key))
        verifying = best_of(args.repeats, lambda: verify(model, public_key))

        print(
            f"model dir: {len(files)} files, {total_mb:.0f} MB ({SHARDS} variables shards); "
            f"{os.cpu_count()} CPUs; best of {args.repeats}"
        )
        print(f"{'':16}{'seconds':>9}{'MB/s':>9}{'vs sha256sum':>15}")
        worst = None
        for label, seconds in (*rows, ("tfpack sign", signing), ("tfpack verify", verifying)):
            ratio = baseline / seconds
            print(f"{label:16}{seconds:9.2f}{total_mb / seconds:9.0f}{ratio:14.2f}x")
            if label.startswith("tfpack"):
                worst = ratio if worst is None else min(worst, ratio)
        verdict = "meets" if worst is not None and worst >= TARGET_RATIO else "MISSES"
        print(f"{verdict} the target of >= {TARGET_RATIO}x sha256sum throughput")
        return 0 if verdict == "meets" else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
