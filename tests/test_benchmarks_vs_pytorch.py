"""benchmarks/vs_pytorch.py's JAX-to-PyTorch weight layouts, checked without torch.

The benchmark's same-step direction check and its "same initial weights" rest on `torch_layout`;
here the PyTorch-layout arrays, applied with PyTorch's conventions written in NumPy (weights
[out, in], conv kernels [out, in, kh, kw] on NCHW, flatten in (c, h, w) order), must reproduce the
mtl_jax model's trunk features.
"""

import importlib.util
import pathlib

import jax
import numpy as np

from mtl_jax.train import step as step_lib

_PATH = pathlib.Path(__file__).resolve().parents[1] / 'benchmarks' / 'vs_pytorch.py'
_spec = importlib.util.spec_from_file_location('vs_pytorch', _PATH)
vs_pytorch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vs_pytorch)


def _conv_nchw(x, weight, bias):
  """PyTorch's Conv2d(kernel 3, padding 1) in NumPy: x [B, C, H, W], weight [O, C, 3, 3]."""
  b, _, h, w = x.shape
  padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  out = np.zeros((b, weight.shape[0], h, w), np.float64)
  for i in range(3):
    for j in range(3):
      out += np.einsum('bchw,oc->bohw', padded[:, :, i:i + h, j:j + w], weight[:, :, i, j])
  return out + bias[None, :, None, None]


def _pool_nchw(x):
  b, c, h, w = x.shape
  return x.reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _torch_trunk(model_name, trunk, x):
  relu = lambda v: np.maximum(v, 0.0)  # pylint: disable=unnecessary-lambda-assignment
  if model_name == 'mlp':
    for weight, bias in zip(trunk[::2], trunk[1::2]):
      x = relu(x @ weight.T + bias)
    return x
  x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW, as the worker feeds torch
  convs = len(vs_pytorch.CNN_CHANNELS)
  for weight, bias in zip(trunk[:2 * convs:2], trunk[1:2 * convs:2]):
    x = _pool_nchw(relu(_conv_nchw(x, weight, bias)))
  x = x.reshape(x.shape[0], -1)  # nn.Flatten: (c, h, w) order
  for weight, bias in zip(trunk[2 * convs::2], trunk[2 * convs + 1::2]):
    x = relu(x @ weight.T + bias)
  return x


def test_torch_layout_reproduces_the_trunk_and_counts_every_parameter():
  for model_name in ('mlp', 'cnn'):
    tasks, model, batch = vs_pytorch.make_problem(model_name, 2)
    x = batch['inputs'][:2]
    params = model.init(jax.random.PRNGKey(1), x)['params']
    trunk, heads = vs_pytorch.torch_layout(model_name, params['shared']['encoder'],
                                           [params['tasks'][t.name] for t in tasks])
    expected = model.encode({'params': params}, x)
    np.testing.assert_allclose(_torch_trunk(model_name, trunk, x.astype(np.float64)),
                               np.asarray(expected), rtol=1e-4, atol=1e-4)
    for task, (weight, bias) in zip(tasks, heads):
      outputs = model.decode({'params': params}, expected, task_names=(task.name,))
      np.testing.assert_allclose(np.asarray(expected) @ weight.T[:, 0] + bias[0],
                                 np.asarray(outputs[task.name]), rtol=1e-4, atol=1e-4)
    num_jax = sum(v.size for v in jax.tree.leaves(params))
    num_torch = sum(a.size for a in trunk) + sum(a.size for h in heads for a in h)
    assert num_torch == num_jax
    shared = sum(v.size for v in jax.tree.leaves(step_lib.shared_params(model, params)))
    assert sum(a.size for a in trunk) == shared
