"""Per-example losses by task kind, and the masked mean by which a missing label counts for nothing.

The binary and multiclass losses map over leading axes, so a per-token task's [B, T] labels
(logits [B, T] or [B, T, C]) give a [B, T] loss, and `masked_mean` with a [B, T] mask is the mean
over the real tokens.
"""

import jax
import jax.numpy as jnp
import optax


def binary(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Sigmoid cross-entropy; logits [B], labels [B] in {0, 1}."""
  return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))


def multiclass(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy; logits [B, C], integer labels [B]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))


def multilabel(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over the L labels of the sigmoid cross-entropy; logits and labels [B, L]."""
  return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)).mean(-1)


def regression(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Squared error, averaged over targets when there are several; [B] or [B, T]."""
  error = jnp.square(predictions - targets.astype(predictions.dtype))
  return error if error.ndim == 1 else error.mean(-1)


BY_KIND = {
    'binary': binary,
    'multiclass': multiclass,
    'multilabel': multilabel,
    'regression': regression,
}


def masked_mean(per_example: jax.Array, mask: jax.Array | None,
                weights: jax.Array | None = None) -> jax.Array:
  """Mean over the examples whose label exists; exactly 0 (with zero gradient) when none does.

  With `weights` (same shape as `per_example`, e.g. class weights of each example's label) the
  weighted mean sum(w l) / sum(w) over those examples.

  Masked-out entries are replaced before the sum, so a NaN or garbage label under the mask cannot
  leak into the loss or its gradient.
  """
  per_example = per_example.astype(jnp.float32)
  if weights is None:
    if mask is None:
      return per_example.mean()
    mask = mask.astype(bool)
    total = jnp.where(mask, per_example, 0.0).sum()
    return total / jnp.maximum(mask.sum(), 1).astype(jnp.float32)
  weights = jnp.broadcast_to(weights.astype(jnp.float32), per_example.shape)
  if mask is not None:
    weights = jnp.where(mask.astype(bool), weights, 0.0)
  total = jnp.where(weights > 0, weights * per_example, 0.0).sum()
  return total / jnp.maximum(weights.sum(), jnp.finfo(jnp.float32).tiny)
