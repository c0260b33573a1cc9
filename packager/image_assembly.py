"""Image assembly without a builder: layer tars, the image config and a ``docker load`` archive.

``docker build`` stamps every step with the time it ran, so two builds of the same inputs never
share an image ID. An image is only its config (whose sha256 is the image ID) over a list of
layer tars (each named in the config by the sha256 of its bytes, its diff_id), so this module
writes both itself, byte for byte the same for the same inputs:

- a layer's entries are sorted (parents first), owned by uid/gid 0 with no user or group names,
  directories 0755 and files 0644 (0755 when executable), every mtime the layer's fixed time;
- the config is JSON with sorted keys and no whitespace, its times the image's fixed time.

The archive ``docker load`` reads holds the config, a manifest naming every layer, and the data
of only the layers the engine does not hold yet: the engine skips a layer whose chain (the layer
and all below it) it already has, without opening its file, so the base and every unchanged layer
below the first changed one cost nothing.

Layer data is streamed twice, never held whole: once to learn each layer's diff_id and size
(which the config and the archive's headers need first), once into the engine. A file that
changes between the two passes is refused rather than loaded under the wrong digest.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from packager.errors import ToolError

DIR_MODE = 0o755
FILE_MODE = 0o644
EXECUTABLE_MODE = 0o755
_BLOCK = 512
_READ_CHUNK = 1 << 20
# The Docker image JSON's durations are Go time.Duration values: nanoseconds.
_NANOSECONDS = 1_000_000_000
# A base's history entry that adds no layer (docker history's CREATED BY for it): the builder's
# metadata instructions. COPY and ADD are written the same way but do add a layer.
_NOP = "#(nop) "
_LAYER_NOPS = ("COPY ", "ADD ")


@dataclass(frozen=True)
class LayerFile:
    """One regular file of a layer: ``data`` given here, or read from ``source`` when streamed."""

    path: str  # inside the image, "/"-separated, no leading slash: etc/tfpack/serving.json
    size: int
    mode: int = FILE_MODE
    data: bytes | None = None
    source: Path | None = None

    @classmethod
    def from_bytes(cls, path: str, data: bytes, mode: int = FILE_MODE) -> LayerFile:
        return cls(path=path, size=len(data), mode=mode, data=data)

    @classmethod
    def from_disk(cls, path: str, source: Path, mode: int = FILE_MODE) -> LayerFile:
        """``source`` (symlinks followed), read only when the layer is streamed."""
        return cls(path=path, size=source.stat().st_size, mode=mode, source=source)


@dataclass(frozen=True)
class Layer:
    """A layer to assemble: its files, any empty directories, and its fixed time.

    A file's parent directories are implied: each is an entry of its own, so the layer sets their
    owner and mode too rather than leaving them to the engine.
    """

    description: str  # the image history's "created_by" for it
    files: tuple[LayerFile, ...]
    mtime: int
    directories: tuple[str, ...] = ()  # directories the layer holds even when empty

    def entries(self) -> list[tuple[str, LayerFile | None]]:
        """(path, file) in tar order, sorted by path components so a directory precedes its
        contents; a directory's file is None.

        Raises:
            ToolError: two files with one path.
        """
        by_path: dict[str, LayerFile | None] = {}
        for path in (*self.directories, *(file.path for file in self.files)):
            parts = path.split("/")
            by_path.update({"/".join(parts[:depth]): None for depth in range(1, len(parts))})
        by_path.update({directory: None for directory in self.directories})
        for file in self.files:
            if by_path.get(file.path) is not None:
                raise ToolError(f"the image layer {self.description!r} names {file.path} twice")
            by_path[file.path] = file
        return sorted(by_path.items(), key=lambda item: item[0].split("/"))

    def chunks(self) -> Iterator[bytes]:
        """The layer's uncompressed tar, in pieces of at most a MiB or so.

        Raises:
            ToolError: a file read from disk changed size while it was streamed.
        """
        for path, file in self.entries():
            if file is None:
                yield _tar_header(path, directory=True, size=0, mode=DIR_MODE, mtime=self.mtime)
                continue
            yield _tar_header(path, directory=False, size=file.size, mode=file.mode, mtime=self.mtime)
            yield from _file_chunks(file)
            if file.size % _BLOCK:
                yield b"\0" * (_BLOCK - file.size % _BLOCK)
        yield b"\0" * (2 * _BLOCK)  # the end-of-archive marker


@dataclass(frozen=True)
class LayerDigest:
    """What the config and the archive say about a layer: the sha256 of its tar, and its size."""

    diff_id: str  # sha256:HEX
    size: int


def measure(layer: Layer) -> LayerDigest:
    """Stream ``layer`` once and return its diff_id and size.

    Raises:
        ToolError: a file changed size while it was read.
    """
    digest, size = hashlib.sha256(), 0
    for chunk in layer.chunks():
        digest.update(chunk)
        size += len(chunk)
    return LayerDigest(diff_id=f"sha256:{digest.hexdigest()}", size=size)


def _tar_header(path: str, *, directory: bool, size: int, mode: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(path)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # PAX only where ustar cannot say it (a name over 100 bytes, non-ASCII): same bytes every time.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _file_chunks(file: LayerFile) -> Iterator[bytes]:
    if file.data is not None:
        yield file.data
        return
    assert file.source is not None  # from_bytes or from_disk
    remaining = file.size
    changed = ToolError(f"{file.source} changed while the image was being assembled: build again")
    try:
        with file.source.open("rb") as handle:
            while remaining:
                chunk = handle.read(min(_READ_CHUNK, remaining))
                if not chunk:
                    raise changed
                remaining -= len(chunk)
                yield chunk
            if handle.read(1):
                raise changed
    except OSError as exc:
        raise ToolError(f"reading {file.source} for the image failed: {exc.strerror or exc}") from None


# --- the image config ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseImage:
    """What the assembled image takes from the image it is assembled on."""

    reference: str
    image_id: str  # sha256:HEX
    diff_ids: tuple[str, ...]
    architecture: str
    os: str
    variant: str | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    stop_signal: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    history: tuple[Mapping[str, object], ...] = ()  # image-config history entries, oldest first


@dataclass(frozen=True)
class Healthcheck:
    """A HEALTHCHECK: ``test`` is the exec form, ``["CMD", program, args...]``."""

    test: tuple[str, ...]
    interval_s: int
    timeout_s: int
    start_period_s: int
    retries: int


@dataclass(frozen=True)
class RunConfig:
    """How the assembled image runs; everything not named here is the base's (Env, WorkingDir)."""

    entrypoint: tuple[str, ...]
    user: str
    exposed_ports: tuple[int, ...]
    env: Mapping[str, str]  # set over the base's Env, in place where the base sets the name
    labels: Mapping[str, str]  # set over the base's labels
    healthcheck: Healthcheck | None = None
    cmd: tuple[str, ...] = ()


def rfc3339(epoch: int) -> str:
    """``epoch`` as the config's UTC time string, e.g. 2024-01-01T00:00:00Z."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_config(
    base: BaseImage, run: RunConfig, layers: Sequence[tuple[Layer, LayerDigest]], *, created: int
) -> bytes:
    """The image config JSON (Docker's image format, which OCI's image config extends) as bytes.

    Its sha256 is the image ID: sorted keys, no whitespace, no time but ``created``.
    """
    env = list(base.env)
    for name, value in run.env.items():
        setting = f"{name}={value}"
        index = next((i for i, item in enumerate(env) if item.split("=", 1)[0] == name), None)
        if index is None:
            env.append(setting)
        else:
            env[index] = setting
    container_config: dict[str, object] = {
        "Entrypoint": list(run.entrypoint),
        "Cmd": list(run.cmd),
        "Env": env,
        "User": run.user,
        "ExposedPorts": {f"{port}/tcp": {} for port in run.exposed_ports},
        "Labels": {**base.labels, **run.labels},
    }
    if base.working_dir:
        container_config["WorkingDir"] = base.working_dir
    if base.stop_signal:
        container_config["StopSignal"] = base.stop_signal
    if run.healthcheck is not None:
        check = run.healthcheck
        container_config["Healthcheck"] = {
            "Test": list(check.test),
            "Interval": check.interval_s * _NANOSECONDS,
            "Timeout": check.timeout_s * _NANOSECONDS,
            "StartPeriod": check.start_period_s * _NANOSECONDS,
            "Retries": check.retries,
        }
    time = rfc3339(created)
    config: dict[str, object] = {
        "architecture": base.architecture,
        "os": base.os,
        "created": time,
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [*base.diff_ids, *(digest.diff_id for _, digest in layers)]},
        "history": [
            *base.history,
            *({"created": time, "created_by": layer.description, "comment": "tfpack build"} for layer, _ in layers),
        ],
    }
    if base.variant:
        config["variant"] = base.variant
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def image_id(config: bytes) -> str:
    """The ID the engine gives the image with this config."""
    return f"sha256:{hashlib.sha256(config).hexdigest()}"


def base_history(entries: Sequence[Mapping[str, object]], layer_count: int) -> tuple[dict[str, object], ...]:
    """The base's history as image-config entries, oldest first, from the engine's history of it.

    The engine's history (``docker history``, newest first) does not say which entries added a
    layer; the builder's metadata instructions (``#(nop) ENV ...``) did not, everything else did.
    When that count disagrees with the base's layers, one plain entry per layer is returned
    instead, so that ``docker history`` still pairs each layer of the image with its own entry.
    """
    history: list[dict[str, object]] = []
    adds_layer = 0
    for entry in reversed(entries):
        created_by = str(entry.get("CreatedBy") or "")
        empty = _NOP in created_by and not created_by.split(_NOP, 1)[1].lstrip().startswith(_LAYER_NOPS)
        item: dict[str, object] = {"created": rfc3339(int(str(entry.get("Created") or 0))), "created_by": created_by}
        if entry.get("Comment"):
            item["comment"] = str(entry["Comment"])
        if empty:
            item["empty_layer"] = True
        else:
            adds_layer += 1
        history.append(item)
    if adds_layer == layer_count:
        return tuple(history)
    return tuple({"created": rfc3339(0), "created_by": f"base layer {n + 1}"} for n in range(layer_count))


# --- the archive docker load reads ---------------------------------------------------------------


def layers_present(candidates: Iterable[Sequence[str]], diff_ids: Sequence[str]) -> int:
    """How many of ``diff_ids`` (bottom first) the engine holds as a chain, given the layer
    lists of images it has (each bottom first): the longest common prefix."""
    best = 0
    for layers in candidates:
        common = 0
        for mine, theirs in zip(diff_ids, layers, strict=False):
            if mine != theirs:
                break
            common += 1
        best = max(best, common)
    return best


def load_archive(
    config: bytes,
    repo_tag: str,
    diff_ids: Sequence[str],
    layers: Sequence[tuple[Layer, LayerDigest]],
    *,
    skip: int,
) -> Iterator[bytes]:
    """The tar stream ``docker load`` reads: manifest.json, the config, and the layer tars.

    Args:
        config: The image config (see :func:`image_config`).
        repo_tag: ``NAME:TAG`` to tag the loaded image with (load needs an explicit tag).
        diff_ids: Every layer of the image, bottom first (the config's rootfs.diff_ids).
        layers: The assembled layers with their digests: the top ``len(layers)`` of ``diff_ids``.
        skip: How many of ``layers`` the engine already holds as a chain over the base; their
            data is left out (the manifest still names them).
    """
    hexes = [diff_id.removeprefix("sha256:") for diff_id in diff_ids]
    config_name = f"{image_id(config).removeprefix('sha256:')}.json"
    manifest = [{"Config": config_name, "RepoTags": [repo_tag], "Layers": [f"{h}/layer.tar" for h in hexes]}]
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    yield _tar_header("manifest.json", directory=False, size=len(manifest_bytes), mode=FILE_MODE, mtime=0)
    yield manifest_bytes + _padding(len(manifest_bytes))
    yield _tar_header(config_name, directory=False, size=len(config), mode=FILE_MODE, mtime=0)
    yield config + _padding(len(config))
    for layer, digest in layers[skip:]:
        name = f"{digest.diff_id.removeprefix('sha256:')}/layer.tar"
        yield _tar_header(name, directory=False, size=digest.size, mode=FILE_MODE, mtime=0)
        # measure() saw these bytes; a layer that streams differently now fails the size check
        # here, or the engine's own diff_id check.
        streamed = 0
        for chunk in layer.chunks():
            streamed += len(chunk)
            if streamed > digest.size:
                break
            yield chunk
        if streamed != digest.size:
            raise ToolError(f"the image layer {layer.description!r} changed while it was loaded: build again")
        yield _padding(digest.size)
    yield b"\0" * (2 * _BLOCK)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)
