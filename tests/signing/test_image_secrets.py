"""Signing secrets never reach an image: `docker save` of a built image holds no private key material.

The signing key sits where a release engineer might keep it, beside the version dirs in the model
base path and in the directory above it (one plain, one encrypted). Every layer of the saved image
is scanned, file by file, for the key's PEM bytes, its base64 body, its DER encoding and its raw
private scalar; the layers tfpack's build writes on top of its serving base (its code, /etc/tfpack,
the models) must hold no PEM private key block at all. (The base's own layers legitimately contain
such header strings in library code, e.g. cryptography's ssh.py and libgnutls, so the header check
is limited to tfpack's layers.)
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from factories.pki import private_key_pem, public_key_pem
from factories.sources import write_frozen_classifier

from packager.image import build_image
from packager.signing import sign

PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
PASSWORD = b"image-test-password"


class _ChunkReader(io.RawIOBase):
    """A file object over the byte chunks `Image.save()` yields, for streaming tarfile reads."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:  # type: ignore[no-untyped-def]
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, key: ec.EllipticCurvePrivateKey) -> Path:
    """models/classifier/1, signed, with the private key lying beside it (plain and encrypted)."""
    from packager.convert import ConvertOptions, convert

    root = tmp_path_factory.mktemp("image-secrets")
    source = write_frozen_classifier(root / "classifier.pb")
    version_dir = convert(source, ConvertOptions(name="classifier", output_dir=root / "models")).version_dir
    model = version_dir.parent
    (model / "signing_key.pem").write_bytes(private_key_pem(key))
    (model.parent / "signing_key.encrypted.pem").write_bytes(private_key_pem(key, PASSWORD))
    (root / "public.pem").write_bytes(public_key_pem(key.public_key()))
    sign(version_dir, model / "signing_key.pem")
    return model


def _needles(key: ec.EllipticCurvePrivateKey, model_dir: Path) -> dict[str, bytes]:
    """Byte strings that would betray the private key, by the form they would take."""
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    needles = {
        "plain PEM file": (model_dir / "signing_key.pem").read_bytes(),
        "encrypted PEM file": (model_dir.parent / "signing_key.encrypted.pem").read_bytes(),
        "DER": der,
        "private scalar": key.private_numbers().private_value.to_bytes(32, "big"),
    }
    for label in ("plain PEM file", "encrypted PEM file"):
        body_lines = needles[label].splitlines()[1:-1]
        needles[f"{label} base64 line"] = max(body_lines, key=len)
    return needles


@dataclass
class SavedImageScan:
    """What scanning a `docker save` stream found."""

    findings: list[str] = field(default_factory=list)  # "layer:file: needle label"
    header_hits: dict[str, list[str]] = field(default_factory=dict)  # layer -> files with a PEM key header
    layers_seen: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # the image's layers in order, from manifest.json


def scan_saved_image(client: docker.DockerClient, tag: str, needles: dict[str, bytes]) -> SavedImageScan:
    """Stream `docker save TAG` and look for ``needles`` in every file of every layer."""
    scan = SavedImageScan()
    with tarfile.open(
        fileobj=io.BufferedReader(_ChunkReader(client.images.get(tag).save(chunk_size=1 << 20)), 1 << 20),
        mode="r|",
    ) as saved:
        for member in saved:
            if not member.isfile():
                continue
            handle = saved.extractfile(member)
            assert handle is not None
            if member.name == "manifest.json":
                scan.layers = json.loads(handle.read())[0]["Layers"]
                continue
            try:
                layer = tarfile.open(fileobj=handle, mode="r|")  # noqa: SIM115 (closed with the outer stream)
            except tarfile.ReadError:
                data = handle.read()  # image config and other metadata: scanned whole
                scan.findings += [f"{member.name}: {label}" for label, needle in needles.items() if needle in data]
                continue
            scan.layers_seen.append(member.name)
            for entry in layer:
                if not entry.isfile():
                    continue
                entry_handle = layer.extractfile(entry)
                assert entry_handle is not None
                data = entry_handle.read()
                scan.findings += [
                    f"{member.name}:{entry.name}: {label}" for label, needle in needles.items() if needle in data
                ]
                if PEM_PRIVATE_KEY.search(data):
                    scan.header_hits.setdefault(member.name, []).append(entry.name)
    assert scan.layers, "docker save wrote no manifest.json"
    assert set(scan.layers) <= set(scan.layers_seen), "some layers were not scanned"
    return scan


@pytest.mark.docker
def test_scan_finds_a_key_that_is_in_an_image(
    docker_client: docker.DockerClient, model_dir: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    """The control: an image whose one layer holds the encrypted key is caught by every check."""
    tag = f"tfpack-test/leaky:{uuid.uuid4().hex[:10]}"
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as archive:
        archive.add(model_dir.parent / "signing_key.encrypted.pem", arcname="etc/leaked.pem")
    try:
        repository, version = tag.split(":")
        docker_client.api.import_image_from_data(layer.getvalue(), repository=repository, tag=version)
        scan = scan_saved_image(docker_client, tag, _needles(key, model_dir))
        assert any("etc/leaked.pem: encrypted PEM file" in f for f in scan.findings), scan.findings
        assert [hits for hits in scan.header_hits.values()] == [["etc/leaked.pem"]]
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)


@pytest.mark.docker
def test_docker_save_holds_no_private_key_material(
    docker_client: docker.DockerClient, model_dir: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    tag = f"tfpack-test/secrets:{uuid.uuid4().hex[:10]}"
    try:
        result = build_image(model_dir, tag, public_key=model_dir.parent.parent / "public.pem")
        base_layers = len(docker_client.images.get(result.serving_base).attrs["RootFS"]["Layers"])
        scan = scan_saved_image(docker_client, tag, _needles(key, model_dir))
        # tfpack's code, /etc/tfpack, then one layer per model (here one).
        assert len(scan.layers) == base_layers + 3, "the build did not write its three layers on its base"
        assert scan.findings == []
        added = scan.layers[base_layers:]
        assert {layer: hits for layer, hits in scan.header_hits.items() if layer in added} == {}
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)
