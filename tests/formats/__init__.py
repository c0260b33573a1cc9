"""Tests of packager.formats: exports to other formats, each proved in its own runtime."""
