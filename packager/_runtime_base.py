"""The embedded runtime base image: Debian bookworm, a Python venv and the serving stack, slimmed.

No image registry is reachable where tfpack is usually built, so the base is made from nothing:

1. ``debootstrap --variant=minbase`` writes a bookworm root filesystem, cached as a tarball.
2. The tarball is imported as the image ``tfpack-rootfs:KEY``, without what no server reads
   (documentation, manuals, translations, apt and debconf leftovers: :data:`ROOTFS_PRUNE`).
   Pruning at import rather than in a later layer is what makes it count: a file a later layer
   deletes still takes its space in the layer below.
3. A wheelhouse for CPython 3.11 / manylinux x86_64 is downloaded on the host (which trusts the
   PyPI proxy's CA; a fresh rootfs does not), also cached.
4. A container of the rootfs image, with the wheelhouse mounted read-only and no network,
   creates ``/opt/tfpack/venv``, installs the wheelhouse with ``pip install --no-index``, removes
   what serving never loads (the :data:`UNINSTALLED` distributions, keras and the installers among
   them; then :func:`_prune_venv`: test suites, C/C++ headers, static libraries, byte code, and
   the symbol tables of shared objects, a quarter of libtensorflow_cc.so.2), adds the serving user
   and the ``tfpack.pth`` that puts a serving image's tfpack code on ``sys.path``, proves the
   serving stack still works (:func:`_check_serving_stack`) and is committed as
   ``tfpack-runtime:KEY``. Committing instead of ``COPY``-ing the wheelhouse
   keeps half a gigabyte of wheels out of the image's layers, and files the install removes again
   never reach a layer at all.

KEY is a hash of everything that decides the result (suite, packages, Python version,
requirement pins, what is pruned, the install script), so the base is built once per machine and
rebuilt only when one of those changes. tfpack itself is not part of the base, nor of KEY: each
model image adds tfpack's code from the running tfpack, from a checkout or a pip install alike, so
neither a code change nor a different install of tfpack forces a base rebuild.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import inspect
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import requests

from packager.errors import ToolError, UsageError
from packager.progress import SILENT, Progress
from packager.signing import MODEL_SIGNING_VERSION

SUITE = "bookworm"
PYTHON_VERSION = "3.11"  # bookworm's python3; the wheelhouse is downloaded for exactly this ABI
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
VENV = "/opt/tfpack/venv"
SITE_PACKAGES = f"{VENV}/lib/python{PYTHON_VERSION}/site-packages"
# A serving image puts tfpack's packages (packager/, serving/) here, as plain files in a layer of
# their own; the venv's tfpack.pth puts the directory on sys.path, -I (isolated mode) included.
CODE_DIR = "/opt/tfpack/lib"
CODE_PTH = f"{SITE_PACKAGES}/tfpack.pth"
# The unprivileged user every serving image runs as (its home does not exist, it has no shell).
SERVING_USER = "tfpack"
SERVING_UID = 10001
RUNTIME_REPOSITORY = "tfpack-runtime"
ROOTFS_REPOSITORY = "tfpack-rootfs"
BASE_KEY_LABEL = "dev.tfpack.runtime-base.key"
# Bumped when how the base is made changes in a way its inputs do not show (2: no VOLUME left
# behind by the wheelhouse mount; 3: slimmed rootfs and venv, serving user, tfpack.pth), so that a
# cached base of the old recipe is not reused.
_RECIPE_REVISION = 3

# The serving stack, pinned to the versions tfpack is tested with on the host. tensorflow-cpu
# instead of tensorflow keeps CUDA out of the image; tensorflow-serving-api would pull the full
# tensorflow back in, so it is installed without its dependencies (it needs only protobuf and
# grpcio, pinned here anyway). model-signing imports pyOpenSSL and certifi without declaring them.
REQUIREMENTS = (
    "tensorflow-cpu==2.21.0",
    "grpcio==1.85.1",
    "grpcio-health-checking==1.85.1",
    "numpy==2.4.6",
    "protobuf==7.36.2",
    f"model-signing=={MODEL_SIGNING_VERSION}",
    "pyopenssl==26.4.0",
    "certifi==2026.10.18",
)
NO_DEPS_REQUIREMENTS = ("tensorflow-serving-api==2.21.0",)

# Every manylinux tag bookworm's glibc (2.36) can load: pip does not infer the older ones.
_WHEEL_PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)

# Left out of the imported root filesystem (fnmatch patterns over its paths; directories stay):
# what debian:bookworm-slim leaves out with dpkg path-excludes (documentation but its licences,
# manuals, translations), apt's and debconf's leftovers, the bootstrap's logs, and the byte code
# python3's postinst compiled (the serving user could not write a cache; none is kept anywhere).
ROOTFS_PRUNE = (
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/groff/*",
    "usr/share/lintian/*",
    "usr/share/linda/*",
    "var/cache/apt/*",
    "var/cache/debconf/*-old",
    "var/lib/apt/lists/*",
    "var/log/*",
    "*/__pycache__/*",
)
ROOTFS_KEEP = ("usr/share/doc/*/copyright", "usr/share/locale/locale.alias")

# Uninstalled (with pip, so each goes whole: package, libraries, metadata, scripts) once the
# wheelhouse is in, pip last. Keras and what only Keras uses (h5py, optree, namex): tensorflow
# requires keras but imports it only for tf.keras, which serving never touches (it loads
# SavedModels with tf.compat.v1's loader); tensorflow's own legacy keras guards its h5py import.
# libclang: required by tensorflow for building TensorFlow code, never imported. The installers:
# a serving image adds tfpack as files under CODE_DIR, so nothing runs pip again (wheel is
# astunparse's declared, never imported, requirement; setuptools brings the distutils hack every
# interpreter would otherwise load at start).
UNINSTALLED = ("keras", "h5py", "optree", "namex", "libclang", "wheel", "setuptools", "pip")
# Removed from site-packages after the install. Directories by name, anywhere: test suites and
# their data, byte code (no writable cache at run time either: PYTHONDONTWRITEBYTECODE).
VENV_PRUNE_DIRS = ("tests", "kernel_tests", "test_data", "__pycache__")
# Paths under site-packages: StableHLO's Python bindings are imported by no module but their own,
# and the XLA AOT runtime is C++ source for saved_model_cli's ahead-of-time compiler.
# tensorflow/include (C/C++ headers for building custom ops) goes with every other ``include``
# directory that is not a Python package.
VENV_PRUNE_PATHS = ("tensorflow/compiler/mlir/stablehlo", "tensorflow/xla_aot_runtime_src")
# Files by name, anywhere: static libraries, type stubs, byte code and test modules.
VENV_PRUNE_FILES = ("*.a", "*.pyi", "*.pyc", "*_test.py")

# Everything serving/ and packager/layout import from the venv, imported by the recipe's check
# after the prune (the embedded server's, the entrypoint's and the verifier's imports).
SERVING_IMPORTS = (
    "tensorflow",
    "tensorflow.core.example.example_pb2",
    "tensorflow.core.protobuf.saved_model_pb2",
    "tensorflow.lite.python.schema_py_generated",
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.apis.prediction_log_pb2",
    "tensorflow_serving.config.model_server_config_pb2",
    "flatbuffers.flexbuffers",
    "grpc",
    "grpc_health.v1.health",
    "numpy",
    "model_signing.hashing",
    "model_signing.verifying",
    "model_signing._signing.sign_certificate",
    "model_signing._signing.signing",
    "cryptography.x509",
    "OpenSSL.crypto",
    "certifi",
)


def _strip_symbol_tables(path: str) -> int:
    """Drop an ELF shared object's ``.symtab`` and its string table in place; return bytes saved.

    Runs inside the install container (shipped as source: standard library only). The dynamic
    loader reads only program headers and the dynamic symbol table (``.dynsym``), never
    ``.symtab``, which only debuggers and profilers read; in libtensorflow_cc.so.2 it is a quarter
    of the file. A file is rewritten only when its symbol tables lie after every byte its segments
    load (the layout linkers write), so no loaded byte moves; anything else (not ELF64, no symbol
    table, a layout patchelf rearranged) is left as it is and 0 returned.
    """
    import os
    import shutil
    import struct

    elf_header = struct.Struct("<16sHHIQQQIHHHHHH")
    program_header = struct.Struct("<IIQQQQQQ")
    section_header = struct.Struct("<IIQQQQIIQQ")  # name type flags addr offset size link info align entsize
    sht_symtab, sht_rela, sht_nobits, sht_rel = 2, 4, 8, 9
    shf_alloc, shf_info_link, et_dyn = 0x2, 0x40, 3
    with open(path, "rb") as elf:
        raw_header = elf.read(elf_header.size)
        if len(raw_header) < elf_header.size or raw_header[:6] != b"\x7fELF\x02\x01":
            return 0  # not a little-endian ELF64 file
        header = list(elf_header.unpack(raw_header))
        e_type, e_phoff, e_shoff = header[1], header[5], header[6]
        e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx = header[9:14]
        if e_type != et_dyn or e_phentsize != program_header.size or e_shentsize != section_header.size:
            return 0
        if e_shoff == 0 or not 0 < e_shnum < 0xFF00 or e_shstrndx >= e_shnum:
            return 0  # no section table, or extended section numbering
        elf.seek(e_phoff)
        segments = [program_header.unpack(elf.read(program_header.size)) for _ in range(e_phnum)]
        elf.seek(e_shoff)
        sections = [list(section_header.unpack(elf.read(section_header.size))) for _ in range(e_shnum)]
    loaded_end = max(
        [
            e_phoff + e_phnum * e_phentsize,
            *(segment[2] + segment[5] for segment in segments),
            *(s[4] + s[5] for s in sections if s[2] & shf_alloc and s[1] != sht_nobits),
        ]
    )
    symtabs = {index for index, section in enumerate(sections) if section[1] == sht_symtab}
    dropped = symtabs | {sections[index][6] for index in symtabs}
    if not symtabs or 0 in dropped or e_shstrndx in dropped or e_shoff < loaded_end:
        return 0

    def links_to_dropped(section: list[int]) -> bool:
        info_is_index = section[1] in (sht_rel, sht_rela) or section[2] & shf_info_link
        return section[6] in dropped or bool(info_is_index and section[7] in dropped)

    for index, section in enumerate(sections):
        if index in dropped and (section[2] & shf_alloc or section[4] < loaded_end):
            return 0
        if index not in dropped and links_to_dropped(section):
            return 0
    kept = [index for index in range(e_shnum) if index not in dropped]
    renumbered = {old: new for new, old in enumerate(kept)}
    # The unloaded sections after the loaded part (.comment, .shstrtab, ...) are packed behind it.
    tail = sorted(
        (i for i in kept if sections[i][1] != sht_nobits and sections[i][5] and sections[i][4] >= loaded_end),
        key=lambda i: sections[i][4],
    )
    partial = path + ".tfpack-strip"
    with open(path, "rb") as source, open(partial, "wb") as target:
        remaining = loaded_end
        while remaining:
            chunk = source.read(min(remaining, 1 << 24))
            if not chunk:
                raise ValueError(f"{path} ends inside its loaded part")
            target.write(chunk)
            remaining -= len(chunk)
        position = loaded_end
        for index in tail:
            padding = -position % max(sections[index][8], 1)
            target.write(b"\0" * padding)
            source.seek(sections[index][4])
            sections[index][4] = position + padding
            target.write(source.read(sections[index][5]))
            position += padding + sections[index][5]
        padding = -position % 8
        target.write(b"\0" * padding)
        header[6] = position + padding  # e_shoff
        for index in kept:
            section = sections[index]
            section[6] = renumbered.get(section[6], section[6])
            if section[1] in (sht_rel, sht_rela) or section[2] & shf_info_link:
                section[7] = renumbered.get(section[7], section[7])
            target.write(section_header.pack(*section))
        header[12], header[13] = len(kept), renumbered[e_shstrndx]
        target.seek(0)
        target.write(elf_header.pack(*header))
    saved = os.path.getsize(path) - os.path.getsize(partial)
    shutil.copymode(path, partial)
    os.replace(partial, path)
    return saved


def _prune_venv(
    site_packages: str,
    paths: tuple[str, ...],
    dir_names: tuple[str, ...],
    file_patterns: tuple[str, ...],
) -> None:
    """Remove from ``site_packages`` what serving never loads, and strip its shared objects.

    Runs inside the install container (shipped as source with :func:`_strip_symbol_tables`:
    standard library only). ``paths`` are glob patterns under ``site_packages``; ``dir_names``
    and ``file_patterns`` match names anywhere below it, as does every ``include`` directory that
    is not a Python package (C/C++ headers). Prints what it removed and saved, for the build log.
    The stripped files no longer match the hashes in their dist-info RECORD: only pip reads those,
    and pip is uninstalled first.
    """
    import fnmatch
    import glob
    import os
    import re
    import shutil

    removed = 0
    for pattern in paths:
        for path in glob.glob(os.path.join(site_packages, pattern)):
            shutil.rmtree(path)
            removed += 1
    stripped = 0
    shared_object = re.compile(r"\.so(\.\d+)*$")
    for root, dirs, files in os.walk(site_packages):
        for name in list(dirs):
            path = os.path.join(root, name)
            is_headers = name == "include" and not os.path.exists(os.path.join(path, "__init__.py"))
            if name in dir_names or is_headers:
                shutil.rmtree(path)
                dirs.remove(name)
                removed += 1
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            if any(fnmatch.fnmatch(name, pattern) for pattern in file_patterns):
                os.remove(path)
                removed += 1
            elif shared_object.search(name):
                stripped += _strip_symbol_tables(path)
    print(f"pruned {removed} paths from {site_packages}; symbol tables stripped: {stripped >> 20} MiB")


def _check_serving_stack(modules: tuple[str, ...], scratch: str) -> None:
    """Import what serving imports, then load and run a SavedModel and a TFLite model as it does.

    Runs inside the install container after the prune (shipped as source: standard library and
    the venv only): a pruned file that serving needs fails the base build here, not a serving
    image later. The SavedModel is loaded with the loader the embedded server uses
    (``tf.compat.v1.saved_model.loader`` in a session), the TFLite model with ``tf.lite.Interpreter``;
    the converter that makes the TFLite model is the only thing used that serving itself is not.
    """
    import importlib
    import shutil

    for module in modules:
        importlib.import_module(module)
    import numpy as np
    import tensorflow as tf

    half_plus_two = tf.Module()
    half_plus_two.serve = tf.function(
        lambda x: {"y": 0.5 * x + 2.0}, input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")]
    )
    tf.saved_model.save(half_plus_two, scratch, signatures={"serving_default": half_plus_two.serve})
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], scratch)
        signature = meta_graph.signature_def["serving_default"]
        y = session.run(signature.outputs["y"].name, {signature.inputs["x"].name: [[2.0]]})
    interpreter = tf.lite.Interpreter(model_content=tf.lite.TFLiteConverter.from_saved_model(scratch).convert())
    interpreter.allocate_tensors()
    y_lite = interpreter.get_signature_runner("serving_default")(x=np.array([[2.0]], np.float32))["y"]
    shutil.rmtree(scratch)
    if y.tolist() != [[3.0]] or y_lite.tolist() != [[3.0]]:
        raise SystemExit(f"half_plus_two served {y.tolist()} (SavedModel) and {y_lite.tolist()} (TFLite), not [[3.0]]")
    print(f"serving stack checked: {len(modules)} imports, a SavedModel and a TFLite model")


def _python_step(functions: tuple[Callable[..., object], ...], *arguments: object) -> str:
    """A shell step running the last of ``functions`` with ``arguments`` in the venv's Python.

    The functions travel as their source in a here-document, so the base key (a hash of the
    install script) changes whenever what runs inside the container does.
    """
    source = "\n\n".join(inspect.getsource(function) for function in functions)
    call = f"{functions[-1].__name__}({', '.join(repr(argument) for argument in arguments)})"
    return f"{VENV}/bin/python -I -B - <<'PYTHON'\n{source}\n\n{call}\nPYTHON\n"


_INSTALL_SCRIPT = f"""set -eu
test "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "{PYTHON_VERSION}"
python3 -m venv {VENV}
{VENV}/bin/pip install --no-index --no-cache-dir --find-links /wheelhouse -r /wheelhouse/requirements.txt
{VENV}/bin/pip install --no-index --no-cache-dir --no-deps --find-links /wheelhouse -r /wheelhouse/no-deps-requirements.txt
{VENV}/bin/python -m pip uninstall --yes --quiet {" ".join(UNINSTALLED)}
{_python_step((_strip_symbol_tables, _prune_venv), SITE_PACKAGES, VENV_PRUNE_PATHS, VENV_PRUNE_DIRS, VENV_PRUNE_FILES)}
echo {CODE_DIR} > {CODE_PTH}
groupadd --gid {SERVING_UID} {SERVING_USER}
useradd --uid {SERVING_UID} --gid {SERVING_UID} --no-create-home --no-log-init --home-dir /nonexistent --shell /usr/sbin/nologin {SERVING_USER}
{_python_step((_check_serving_stack,), SERVING_IMPORTS, "/tmp/tfpack-check")}
rm -rf /root/.keras /root/.cache /tmp/tfpack-check
# pip and the venv's creation ran the system Python too: its byte code goes as well.
find {VENV} /usr/lib/python{PYTHON_VERSION} -name __pycache__ -prune -exec rm -rf {{}} +
"""

_INSTALL_TIMEOUT_S = 900


def cache_dir() -> Path:
    """Where rootfs tarballs and wheelhouses are kept: $TFPACK_CACHE_DIR or ~/.cache/tfpack."""
    configured = os.environ.get("TFPACK_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "tfpack"


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def rootfs_key() -> str:
    """Hash of what decides the bootstrapped root filesystem (the cached tarball)."""
    return _digest(SUITE, "minbase", DEBIAN_PACKAGES)


def rootfs_image_key() -> str:
    """Hash of what decides the imported root filesystem image: the tarball, less what is pruned."""
    return _digest(rootfs_key(), ROOTFS_PRUNE, ROOTFS_KEEP)


def wheelhouse_key() -> str:
    """Hash of what decides the wheelhouse."""
    return _digest(PYTHON_VERSION, _WHEEL_PLATFORMS, REQUIREMENTS, NO_DEPS_REQUIREMENTS)


def base_key() -> str:
    """Hash of everything that decides the runtime base image."""
    return _digest(rootfs_image_key(), wheelhouse_key(), VENV, _INSTALL_SCRIPT, _RECIPE_REVISION)


def runtime_base_tag() -> str:
    """The tag the embedded base for the current requirements has (or will have)."""
    return f"{RUNTIME_REPOSITORY}:{base_key()}"


def runtime_base_size(client: docker.DockerClient) -> int:
    """Return the size in bytes of the embedded base for the current recipe, every layer counted.

    Raises:
        UsageError: that base is not built yet (``tfpack build --base embedded`` builds it).
    """
    try:
        image = client.images.get(runtime_base_tag())
    except docker.errors.ImageNotFound:
        raise UsageError(
            f"the embedded base {runtime_base_tag()} is not built yet: 'tfpack build --base embedded' builds it"
        ) from None
    return int(image.attrs["Size"])


def debian_mirror(sources_dir: Path = Path("/etc/apt/sources.list.d")) -> str:
    """Return the Debian mirror apt already uses (debootstrap must use one this host reaches)."""
    for sources in sorted(sources_dir.glob("*.sources")):
        stanzas = sources.read_text().split("\n\n")
        for stanza in stanzas:
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.lstrip().startswith("#")
            )
            uris = fields.get("URIs", "").split()
            suites = fields.get("Suites", "").split()
            if uris and SUITE in suites:
                return uris[0]
    for sources in [sources_dir.parent / "sources.list", *sorted(sources_dir.glob("*.list"))]:
        if not sources.is_file():
            continue
        for line in sources.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return next(word for word in words[1:] if not word.startswith("["))
    return "http://deb.debian.org/debian"


def ensure_runtime_base(client: docker.DockerClient, progress: Progress = SILENT) -> str:
    """Return the tag of the embedded runtime base, building whatever is not cached yet.

    Raises:
        UsageError: debootstrap is missing or tfpack does not run as root (debootstrap needs it).
        ToolError: debootstrap, the wheel download or the venv install failed.
    """
    tag = runtime_base_tag()
    if _image_exists(client, tag):
        return tag
    with _build_lock(progress):
        # Another process may have built it while this one waited for the lock.
        if _image_exists(client, tag):
            return tag
        return _build_runtime_base(client, tag, progress)


@contextlib.contextmanager
def _build_lock(progress: Progress) -> Iterator[None]:
    """Serialise base builds on this machine: parallel test runs or CI jobs build it once."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".build.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.step("waiting for another tfpack process building the embedded base")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_runtime_base(client: docker.DockerClient, tag: str, progress: Progress) -> str:
    """Install the wheelhouse into a no-network container of the rootfs and commit it as ``tag``."""
    rootfs_image = ensure_rootfs_image(client, progress)
    wheelhouse = _ensure_wheelhouse(progress)
    progress.step(f"installing the serving stack into {VENV} (no network)")
    container = client.containers.create(
        rootfs_image,
        command=["/bin/sh", "-c", _INSTALL_SCRIPT],
        # A bind mount in the host config only: ``volumes=`` would also declare /wheelhouse a
        # VOLUME in the container's config, which the commit would carry into every serving
        # image (an anonymous volume the entrypoint rightly refuses as a run-time mount).
        mounts=[docker.types.Mount("/wheelhouse", str(wheelhouse), type="bind", read_only=True)],
        network_disabled=True,
    )
    try:
        container.start()
        try:
            status = container.wait(timeout=_INSTALL_TIMEOUT_S)
        except requests.exceptions.ConnectionError:
            raise ToolError(
                f"installing the serving stack into the runtime base took over "
                f"{_INSTALL_TIMEOUT_S} s; see 'docker logs {container.short_id}' before rerunning"
            ) from None
        if status.get("StatusCode") != 0:
            tail = container.logs(tail=5).decode(errors="replace").strip().splitlines()
            raise ToolError(
                f"installing the serving stack into the runtime base failed: "
                f"{tail[-1] if tail else 'no output'} (wheelhouse {wheelhouse})"
            )
        repository, _, key = tag.partition(":")
        container.commit(
            repository=repository,
            tag=key,
            changes=[
                f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
                f"LABEL {BASE_KEY_LABEL}={key}",
                'CMD ["python3"]',
            ],
        )
    finally:
        container.remove(force=True)
    return tag


def _image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_rootfs_image(client: docker.DockerClient, progress: Progress) -> str:
    """Return the tag of the root filesystem image, bootstrapping and importing what is missing."""
    key = rootfs_image_key()
    tag = f"{ROOTFS_REPOSITORY}:{key}"
    if _image_exists(client, tag):
        return tag
    tarball = cache_dir() / f"rootfs-{SUITE}-{rootfs_key()}.tar"
    if not tarball.is_file():
        _bootstrap_rootfs(tarball, progress)
    progress.step(f"importing {tarball.name}, without documentation and caches, as {tag}")
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=tarball.parent) as work:
        slim = Path(work) / "rootfs.tar"
        write_slim_rootfs(tarball, slim)
        client.api.import_image_from_file(str(slim), repository=ROOTFS_REPOSITORY, tag=key)
    return tag


def write_slim_rootfs(tarball: Path, slim: Path) -> None:
    """Copy the root filesystem ``tarball`` to ``slim`` without the files :data:`ROOTFS_PRUNE` names.

    Directories all stay (a kept file's parents, and mount points such as /var/log); a pruned file
    that a kept hard link names stays too, so the copy never holds a link to nothing.
    """
    with tarfile.open(tarball) as tree, tarfile.open(slim, "w", format=tarfile.GNU_FORMAT) as copy:
        members = tree.getmembers()
        pruned = {member.name for member in members if not member.isdir() and _pruned_from_rootfs(member.name)}
        pruned -= {member.linkname for member in members if member.islnk() and member.name not in pruned}
        for member in members:
            if member.name not in pruned:
                copy.addfile(member, tree.extractfile(member) if member.isreg() else None)


def _pruned_from_rootfs(name: str) -> bool:
    path = name.removeprefix("./")
    matches = fnmatch.fnmatchcase
    return any(matches(path, pattern) for pattern in ROOTFS_PRUNE) and not any(
        matches(path, pattern) for pattern in ROOTFS_KEEP
    )


def _bootstrap_rootfs(tarball: Path, progress: Progress) -> None:
    if shutil.which("debootstrap") is None:
        raise UsageError(
            "building the embedded base needs debootstrap: apt-get install -y debootstrap "
            "(or build with --base tensorflow/serving:2.21.0 where that image can be pulled)"
        )
    if os.geteuid() != 0:
        raise UsageError(
            "building the embedded base runs debootstrap, which needs root: rerun as root once "
            "(the base is cached and reused afterwards)"
        )
    tarball.parent.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=tarball.parent) as work:
        rootfs = Path(work) / "rootfs"
        progress.step(f"bootstrapping Debian {SUITE} (minbase + python3) from {mirror}")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            what="debootstrap",
            log=tarball.with_suffix(".debootstrap.log"),
        )
        # apt's package lists are stale the moment the image exists; they only add weight.
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        progress.step(f"packing the root filesystem into {tarball}")
        partial = tarball.with_suffix(".tar.partial")
        _run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
            what="tar",
            log=tarball.with_suffix(".tar.log"),
        )
        partial.rename(tarball)


def _ensure_wheelhouse(progress: Progress) -> Path:
    wheelhouse = cache_dir() / f"wheelhouse-cp311-{wheelhouse_key()}"
    complete = wheelhouse / ".complete"
    if complete.is_file():
        return wheelhouse
    wheelhouse.mkdir(parents=True, exist_ok=True)
    (wheelhouse / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    (wheelhouse / "no-deps-requirements.txt").write_text("\n".join(NO_DEPS_REQUIREMENTS) + "\n")
    target = [
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        "--abi",
        "cp" + PYTHON_VERSION.replace(".", ""),
        *(option for platform in _WHEEL_PLATFORMS for option in ("--platform", platform)),
    ]
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheelhouse)]
    progress.step(f"downloading the serving stack's wheels for CPython {PYTHON_VERSION}")
    _run([*download, *target, *REQUIREMENTS], what="pip download", log=wheelhouse / "download.log")
    _run(
        [*download, *target, "--no-deps", *NO_DEPS_REQUIREMENTS],
        what="pip download",
        log=wheelhouse / "download-no-deps.log",
    )
    complete.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
    return wheelhouse


def _run(command: list[str], *, what: str, log: Path) -> None:
    """Run ``command``, keep its output in ``log``, raise ToolError naming the log on failure."""
    with log.open("wb") as sink:
        result = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        raise ToolError(
            f"{what} failed (exit {result.returncode}): {lines[-1] if lines else 'no output'} (full log: {log})"
        )
