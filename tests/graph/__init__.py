"""Tests of packager.graph: analysis and surgery on the in-memory graph form."""
