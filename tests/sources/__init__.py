"""Tests of packager.sources: one loader per source format."""
