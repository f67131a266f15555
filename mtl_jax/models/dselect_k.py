"""DSelect-k: MMoE whose gates select at most k of n experts, differentiably, by binary encoding.

Hazimeh et al., "DSelect-k: Differentiable Selection in the Mixture of Experts with Applications
to Multi-Task Learning", NeurIPS 2021. With n experts, m = ⌈log₂ n⌉ and the smooth-step

    S(t) = 0                              t ≤ −γ/2
         = −2t³/γ³ + 3t/(2γ) + 1/2         −γ/2 < t < γ/2          (C¹, S(0) = 1/2)
         = 1                              t ≥ γ/2

a single-expert selector z ∈ R^m puts on expert l (binary code b(l) ∈ {0,1}^m, MSB first)

    r(z)_l = Π_{t=1..m} [ S(z_t) if b(l)_t = 1 else 1 − S(z_t) ],

which sums to 1 over the 2^m codes and is one-hot once every S(z_t) ∈ {0, 1} (|z_t| ≥ γ/2).
Task j's gate mixes k such selectors, Z_j = (z_j^{(1)}, ..., z_j^{(k)}) ∈ R^{k×m}, α_j ∈ R^k:

    q_j = Σ_{i=1..k} softmax(α_j)_i r(z_j^{(i)}),      y_j = h_j( Σ_l q_{j,l} f_l(x) ),

so at most k experts carry weight once the selectors are binary. `gating='static'` (the paper's
task-only gating; the default) makes α_j and Z_j parameters of task j (`gate/w`, `gate/z`);
`gating='per_example'` makes them affine in the input features x (`gate/z` and `gate/w` are
then dense layers). Initialisation as in the authors' code: Z ~ U(−γ/100, γ/100) (selectors start
near 1/2), α ~ U(−0.05, 0.05).

Regulariser (`penalty`, static gating): the paper adds λ Σ_i h(r(z^{(i)})), h the entropy, to push
the selectors to binary states sooner (`entropy_reg` λ, default 0 as in the authors' layer). When n
is not a power of 2, some codes name no expert and the mass r puts on them is lost; the authors'
code adds Σ_i 1 / Σ_l r(z^{(i)})_l (over the n real experts), which keeps selectors off those codes
and is 1 per selector once it is binary on a real expert. Both are functions of the gates'
parameters under static gating, and `penalty(params)` returns their sum over tasks. Under
per-example gating they depend on the inputs, which `penalty(params)` does not see: per-example
gating therefore takes `entropy_reg=0` and n a power of 2 (every code is an expert), and refuses
anything else rather than dropping the term silently.

Everything else is MMoE's (mmoe.py): experts stacked and vmapped, parameters
{'shared': {'input', 'experts'}, 'tasks': {j: {'gate': {'z', 'w'}, 'head'}}}, and the "rep"
representation {'input': x, 'experts': [B, n, D]}.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.errors import UserError
from mtl_jax.models import base
from mtl_jax.models import mmoe

GATINGS = ('static', 'per_example')
# Inside the log of the entropy, as in the authors' code: r log r has an infinite slope at r = 0.
_ENTROPY_EPSILON = 1e-6


def smooth_step(t: jax.Array, gamma: float) -> jax.Array:
  """The paper's smooth-step S(t) (module docstring): cubic on (−γ/2, γ/2), 0 below, 1 above."""
  cubic = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
  return jnp.where(t <= -gamma / 2, jnp.zeros_like(t),
                   jnp.where(t >= gamma / 2, jnp.ones_like(t), cubic))


def num_binary(num_experts: int) -> int:
  """m = ⌈log₂ n⌉ binary variables encode n experts."""
  return max(1, math.ceil(math.log2(num_experts)))


def binary_codes(num_experts: int) -> np.ndarray:
  """[n, m] bool: row l is expert l's binary code, most significant bit first."""
  m = num_binary(num_experts)
  return np.array([[bit == '1' for bit in np.binary_repr(l, width=m)]
                   for l in range(num_experts)], dtype=bool)


def selector_outputs(z: jax.Array, gamma: float, num_experts: int) -> jax.Array:
  """r(z) over the n experts: z [..., m] -> [..., n]."""
  s = smooth_step(z, gamma)[..., None, :]  # [..., 1, m]
  return jnp.prod(jnp.where(binary_codes(num_experts), s, 1.0 - s), axis=-1)


def expert_weights(z: jax.Array, w: jax.Array, gamma: float, num_experts: int) -> jax.Array:
  """q = Σ_i softmax(w)_i r(z^{(i)}): z [..., k, m], w [..., k] -> [..., n]."""
  r = selector_outputs(z, gamma, num_experts)
  return jnp.einsum('...i,...il->...l', jax.nn.softmax(w, axis=-1), r)


def selector_penalty(z: jax.Array, gamma: float, num_experts: int,
                     entropy_reg: float) -> jax.Array:
  """λ Σ_i h(r(z^{(i)})) plus, when n is not a power of 2, Σ_i 1 / Σ_l r(z^{(i)})_l."""
  r = selector_outputs(z, gamma, num_experts)
  total = jnp.zeros((), jnp.float32)
  if entropy_reg:
    total += entropy_reg * -jnp.sum(r * jnp.log(r + _ENTROPY_EPSILON))
  if num_experts != 2 ** num_binary(num_experts):
    total += jnp.sum(1.0 / jnp.sum(r, axis=-1))
  return total


def _uniform(low: float, high: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, low, high)
  return init


class DSelectKGate(nn.Module):
  """Task k's gate: q_k [B, n] from k single-expert selectors (static or per-example)."""

  num_experts: int
  k: int
  gamma: float = 1.0
  per_example: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    m, batch = num_binary(self.num_experts), x.shape[0]
    z_init, w_init = _uniform(-self.gamma / 100, self.gamma / 100), _uniform(-0.05, 0.05)
    if self.per_example:
      flat = x.reshape(batch, -1)
      z = nn.Dense(self.k * m, kernel_init=z_init, bias_init=z_init, name='z')(flat)
      w = nn.Dense(self.k, kernel_init=w_init, bias_init=w_init, name='w')(flat)
      return expert_weights(z.reshape(batch, self.k, m), w, self.gamma, self.num_experts)
    z = self.param('z', z_init, (self.k, m))
    w = self.param('w', w_init, (self.k,))
    q = expert_weights(z, w, self.gamma, self.num_experts)
    return jnp.broadcast_to(q, (batch, self.num_experts))


@dataclasses.dataclass(frozen=True)
class DSelectK(mmoe.MMoE):
  """MMoE with DSelect-k gates; `penalty` is the selectors' regulariser (static gating)."""

  k: int = 2
  gamma: float = 1.0
  gating: str = 'static'
  entropy_reg: float = 0.0

  def gate(self) -> nn.Module:
    return DSelectKGate(self.num_experts, self.k, self.gamma, self.gating == 'per_example')

  def penalty(self, params) -> jax.Array:
    total = jnp.zeros((), jnp.float32)
    if self.gating != 'static':
      return total  # per-example gating was built with nothing input-free to add
    for name in self.task_names:
      total += selector_penalty(params['tasks'][name]['gate']['z'], self.gamma,
                                self.num_experts, self.entropy_reg)
    return total


@base.ARCHS.register('dselect_k')
def build(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=(), *,
          num_experts=8, k=2, gamma=1.0, gating='static', entropy_reg=0.0) -> DSelectK:
  """`num_experts` n >= 2 (default 8), `k` selectors per task, 1 <= k <= n (default 2),
  `gamma` > 0 the smooth-step's width (default 1, the authors' code), `gating` 'static' (task-only,
  default) or 'per_example', `entropy_reg` λ >= 0 (default 0; static gating only)."""
  num_experts = mmoe.check_count('dselect_k', 'num_experts', num_experts, 1)
  if num_experts == 1:
    raise UserError('arch \'dselect_k\': num_experts=1 leaves nothing to select; use '
                    '--config.arch_kwargs.num_experts=8 (or arch hard for one shared trunk)')
  k = mmoe.check_count('dselect_k', 'k', k, 1)
  if k > num_experts:
    raise UserError(f'arch \'dselect_k\': k={k} selectors for num_experts={num_experts}; '
                    f'k selects at most k experts, so set k <= {num_experts}')
  if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < math.inf:
    raise UserError(f'arch \'dselect_k\': gamma must be a positive number (the smooth-step\'s '
                    f'width), got {gamma!r}; e.g. --config.arch_kwargs.gamma=1.0')
  if gating not in GATINGS:
    raise UserError(f'arch \'dselect_k\': unknown gating {gating!r}; valid: {", ".join(GATINGS)}')
  if (isinstance(entropy_reg, bool) or not isinstance(entropy_reg, (int, float))
      or not 0 <= entropy_reg < math.inf):
    raise UserError(f'arch \'dselect_k\': entropy_reg must be a number >= 0, got '
                    f'{entropy_reg!r}; e.g. --config.arch_kwargs.entropy_reg=1e-6')
  if gating == 'per_example':
    # Both terms of the selectors' regulariser would depend on the inputs under per-example
    # gating; the model's penalty sees only the parameters.
    if entropy_reg:
      raise UserError('arch \'dselect_k\': entropy_reg needs gating=\'static\' (per-example, the '
                      'entropy depends on the inputs, which the penalty hook does not see); '
                      'set --config.arch_kwargs.entropy_reg=0 or gating=static')
    if num_experts != 2 ** num_binary(num_experts):
      raise UserError(f'arch \'dselect_k\': per_example gating needs num_experts a power of 2 '
                      f'(got {num_experts}: codes naming no expert would need a regulariser of '
                      f'the inputs); use num_experts={2 ** num_binary(num_experts)} or '
                      f'{2 ** (num_binary(num_experts) - 1)}, or gating=static')
  return DSelectK(task_names=tuple(t.name for t in tasks), input_layer=input_layer,
                  expert=base.make_encoder(encoder, encoder_kwargs),
                  heads=base.make_heads(tasks, head_hidden_sizes), num_experts=num_experts,
                  k=k, gamma=float(gamma), gating=gating, entropy_reg=float(entropy_reg))
