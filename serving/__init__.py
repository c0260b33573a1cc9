"""What runs inside the serving image: the verify-then-serve entrypoint and tfpack-model-server.

A regular package (not a namespace package), so that no other ``serving/`` directory on sys.path
(a test directory, a user's project) can ever merge into it.
"""
