"""Tests of packager.layout, the leaf packager/ and serving/ share."""
