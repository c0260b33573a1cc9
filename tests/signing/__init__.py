"""Tests of packager.signing and the trust check of packager.layout."""
