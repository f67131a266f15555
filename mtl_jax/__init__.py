"""mtl_jax: multi-task learning in JAX/Flax.

Subpackages: `optim` (multi-task optimisation as optax transforms), `models` (sharing architectures
and encoders), `data` (tfds + grain pipelines), `train` (the resumable, sharded training loop).
"""

__version__ = '0.1.0'
