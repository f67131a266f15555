"""Entire Space Multi-Task Model (ESMM): pCTCVR = pCTR · pCVR, both trained over all impressions.

Ma et al., "Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click
Conversion Rate", SIGIR 2018. With click y and conversion z of an impression x:

    p(y = 1, z = 1 | x) = p(y = 1 | x) · p(z = 1 | y = 1, x)
          pCTCVR        =     pCTR     ×        pCVR
    L(θ_ctr, θ_cvr) = Σ_i ℓ(y_i, pCTR(x_i)) + Σ_i ℓ(y_i z_i, pCTR(x_i) · pCVR(x_i))

over every impression: pCVR is never fitted on clicked impressions alone (the sample selection
bias the paper removes), it is learnt through pCTCVR. The CTR and CVR towers (each the configured
encoder, then a one-logit head) share the embeddings, i.e. the input layer.

Two binary tasks: the click task (labels y) and the CTCVR task (labels y AND z, over all
impressions), named by `ctr_task` and `ctcvr_task` (default: the tasks in order). Outputs are
logits, since the binary loss is the sigmoid cross-entropy of logits: the click task's output is
the CTR tower's logit a, the CTCVR task's is logit(σ(a) σ(b)) with b the CVR tower's logit,
computed without cancellation or overflow as

    log p     = log σ(a) + log σ(b)
    log(1−p)  = log(σ(−a) + σ(a) σ(−b)) = logaddexp(log σ(−a), log σ(a) + log σ(−b))
    logit(p)  = log p − log(1−p)

(1 − σ(a)σ(b) = σ(−a) + σ(a)σ(−b) has no subtraction, so a, b = ±30 or ±100 stay exact and
their gradients finite). pCVR itself is `sigmoid(model.cvr(variables, inputs))`.

Parameters: {'shared': {'input': embeddings},
             'tasks': {ctr_task: {'tower', 'head'} (θ_ctr), ctcvr_task: {'tower', 'head'} (θ_cvr)}}.
Task isolation holds one way only, by the paper's construction: the click loss never reaches
θ_cvr, but the CTCVR loss reaches θ_ctr (pCTCVR is a product with pCTR), so θ_ctr is trained by
both losses. With the task-parameter weights c of the train step, θ_ctr receives
c_ctr ∇L_ctr + c_ctcvr ∇L_ctcvr (the paper's plain sum for c = 1). The representation for the
"rep" mode is the input layer's output. With an input layer that has no parameters
(`inputs.Identity`), the towers share nothing: the model then has no shared parameters and only
loss-weighting methods apply.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.models import base
from mtl_jax.models import heads as heads_lib
from mtl_jax.models import inputs as inputs_lib


def ctcvr_logit(ctr_logit: jax.Array, cvr_logit: jax.Array) -> jax.Array:
  """logit(σ(a) σ(b)), stable for any finite a, b (module docstring)."""
  log_p = jax.nn.log_sigmoid(ctr_logit) + jax.nn.log_sigmoid(cvr_logit)
  log_not_p = jnp.logaddexp(jax.nn.log_sigmoid(-ctr_logit),
                            jax.nn.log_sigmoid(ctr_logit) + jax.nn.log_sigmoid(-cvr_logit))
  return log_p - log_not_p


@dataclasses.dataclass(frozen=True)
class ESMM(base.MultiTaskModel):
  """A CTR tower and a CVR tower over shared embeddings; outputs pCTR and pCTCVR (as logits)."""

  input_layer: nn.Module = None
  tower: nn.Module = None
  head: nn.Module = None
  ctr_task: str = ''
  ctcvr_task: str = ''
  has_shared_representation: bool = True

  def init(self, rng, inputs):
    input_key, *keys = jax.random.split(rng, 5)
    input_vars = self.input_layer.init(input_key, inputs, train=False)
    x = self.input_layer.apply(input_vars, inputs, train=False)
    parts = {('shared', 'input'): input_vars}
    for name, (tower_key, head_key) in ((self.ctr_task, keys[:2]), (self.ctcvr_task, keys[2:])):
      tower_vars = self.tower.init(tower_key, x, train=False)
      parts[('tasks', name, 'tower')] = tower_vars
      parts[('tasks', name, 'head')] = self.head.init(
          head_key, self.tower.apply(tower_vars, x, train=False), train=False)
    variables = base.nest(parts)
    variables['params'].setdefault('shared', {})  # no embeddings: nothing shared, but the key
    return variables

  def encode(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    x, updates = base.call(self.input_layer, base.subtree(variables, 'shared', 'input'), inputs,
                           train=train, rngs=base.component_rngs(rngs, 0), mutable=mutable)
    return (x, base.nest({('shared', 'input'): updates})) if mutable else x

  def _logit(self, variables, x, name, index, *, train, rngs, mutable):
    """One tower and its head: the logit, and {path: updates}."""
    features, tower_updates = base.call(
        self.tower, base.subtree(variables, 'tasks', name, 'tower'), x, train=train,
        rngs=base.component_rngs(rngs, index), mutable=mutable)
    logit, head_updates = base.call(
        self.head, base.subtree(variables, 'tasks', name, 'head'), features, train=train,
        rngs=base.component_rngs(rngs, index + 1), mutable=mutable)
    return logit, {('tasks', name, 'tower'): tower_updates, ('tasks', name, 'head'): head_updates}

  def decode(self, variables, features, *, train=False, rngs=None, mutable=False,
             task_names=None):
    wanted = set(self.task_names if task_names is None else task_names)
    outputs, parts = {}, {}
    kwargs = dict(train=train, rngs=rngs, mutable=mutable)
    if wanted & {self.ctr_task, self.ctcvr_task}:  # pCTCVR needs pCTR too
      ctr, updates = self._logit(variables, features, self.ctr_task, 1, **kwargs)
      parts.update(updates)
      if self.ctr_task in wanted:
        outputs[self.ctr_task] = ctr
      if self.ctcvr_task in wanted:
        cvr, updates = self._logit(variables, features, self.ctcvr_task, 3, **kwargs)
        parts.update(updates)
        outputs[self.ctcvr_task] = ctcvr_logit(ctr, cvr)
    return (outputs, base.nest(parts)) if mutable else outputs

  def apply(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    if not mutable:
      return self.decode(variables, self.encode(variables, inputs, train=train, rngs=rngs),
                         train=train, rngs=rngs)
    x, shared_updates = self.encode(variables, inputs, train=train, rngs=rngs, mutable=True)
    outputs, task_updates = self.decode(variables, x, train=train, rngs=rngs, mutable=True)
    return outputs, base.merge(shared_updates, task_updates)

  def cvr(self, variables, inputs, *, train=False, rngs=None) -> jax.Array:
    """The CVR tower's logit b [B]: pCVR = p(conversion | click, x) = sigmoid(b)."""
    x = self.encode(variables, inputs, train=train, rngs=rngs)
    return self._logit(variables, x, self.ctcvr_task, 3, train=train, rngs=rngs,
                       mutable=False)[0]


@base.ARCHS.register('esmm')
def build(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=(), *,
          ctr_task=None, ctcvr_task=None) -> ESMM:
  """`ctr_task`: the click task's name; `ctcvr_task`: the click-and-convert task's (its labels
  are click AND conversion over all impressions). Default: the two tasks in order."""
  names = [t.name for t in tasks]
  if len(tasks) != 2 or any(t.kind != 'binary' for t in tasks):
    kinds = ', '.join(f'{t.name} ({t.kind})' for t in tasks)
    raise UserError(f'arch \'esmm\' needs exactly two binary tasks, a click task and a '
                    f'click-and-convert task; got {kinds or "none"}')
  ctr_task = names[0] if ctr_task is None else ctr_task
  ctcvr_task = names[1] if ctcvr_task is None else ctcvr_task
  for option, value in (('ctr_task', ctr_task), ('ctcvr_task', ctcvr_task)):
    if value not in names:
      raise UserError(f'arch \'esmm\': {option}={value!r} is not one of the tasks '
                      f'{", ".join(names)}; e.g. --config.arch_kwargs.{option}={names[0]}')
  if ctr_task == ctcvr_task:
    raise UserError(f'arch \'esmm\': ctr_task and ctcvr_task are both {ctr_task!r}; name one '
                    'task each')
  return ESMM(task_names=tuple(names), input_layer=input_layer,
              tower=base.make_encoder(encoder, encoder_kwargs),
              head=heads_lib.Head(1, tuple(head_hidden_sizes)), ctr_task=ctr_task,
              ctcvr_task=ctcvr_task,
              has_shared_parameters=not isinstance(input_layer, inputs_lib.Identity))
