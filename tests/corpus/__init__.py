"""Real third-party models from PyPI wheels, converted and checked against plain TensorFlow."""
