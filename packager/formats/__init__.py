"""Exports of a verified version dir to other formats, each proved in that format's own runtime.

:func:`export_version` writes a frozen GraphDef (proved in a plain TF1 session), a TFLite
flatbuffer (proved in the LiteRT interpreter) or a TensorFlow.js graph model (proved in Node.js
with @tensorflow/tfjs) from a version dir ``tfpack convert`` wrote, and returns an
:class:`ExportReport`. One module per format (:mod:`.frozen_pb`, :mod:`.tflite`, :mod:`.tfjs`); the
proof against the version dir's goldens and the atomic write live in :mod:`.export`.
"""

from packager.formats.export import EXPORT_FORMATS, export_version
from packager.formats.report import ExportReport
from packager.formats.tflite import QUANTIZE_MODES

__all__ = ["EXPORT_FORMATS", "QUANTIZE_MODES", "ExportReport", "export_version"]
