"""GradNorm's toy problem: T regression tasks that share a function up to a task-specific
perturbation, at output scales that differ by orders of magnitude.

Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
Networks", ICML 2018, §4. Task i regresses

    f_i(x) = sigma_i tanh((B + eps_i) x),    x in R^250,  f_i(x) in R^100,

with B in R^{100 x 250} shared by every task (elements i.i.d. N(0, 10)), eps_i in R^{100 x 250} the
task's own (i.i.d. N(0, 3.5)), and sigma_i the task's scale. The paper's point: with squared
losses, a task of scale 100 has 10^4 times the loss and dominates equal weighting; a method that
balances gradient magnitudes (GradNorm, IMTL, Nash-MTL, ...) should recover the small task.

Constants: the paper writes N(0; 10) and N(0; 3.5); we read standard deviations, as the public
reproductions do. It does not state the input distribution; we draw x ~ N(0, 0.01^2) per element
(also as public reproductions do): then (B + eps_i) x has a standard deviation of about
sqrt(250) * sqrt(10^2 + 3.5^2) * 0.01 ~ 1.7, where tanh is neither linear nor saturated.
No noise is added (the paper adds none). Splits: 8,000 train, 1,000 validation, 1,000 test
examples of one i.i.d. stream (train first).

Configs (datasets `gradnorm_toy_<config>`): `t2` (sigma = 1, 100: the paper's two-task figure) and `t10`
(sigma_i = i for i = 1..10). `register(sigmas, data_seed)` registers any other. Tasks `t0`,
`t1`, ...: regression with 100 outputs; targets are stored unscaled (RMSE in the task's units).
Randomness: one data seed fixes B, every eps_i and every x, from `SeedSequence([SEED_SALT,
data_seed])`; sigma only scales, so configs of one seed share B, eps and x.
"""

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from mtl_jax.data import pipeline
from mtl_jax.data import registry
from mtl_jax.errors import UserError
from mtl_jax.tasks import Task

INPUT_DIM = 250
OUTPUT_DIM = 100
B_STD = 10.0
EPS_STD = 3.5
X_STD = 0.01
SPLIT_SIZES = {'train': 8_000, 'validation': 1_000, 'test': 1_000}
SEED_SALT = 20180710  # ICML 2018's first day.
CONFIGS = {'t2': (1.0, 100.0), 't10': tuple(float(i) for i in range(1, 11))}


def tasks(num_tasks: int) -> tuple[Task, ...]:
  return tuple(Task(f't{i}', 'regression', OUTPUT_DIM) for i in range(num_tasks))


def _check(sigmas, data_seed) -> tuple[tuple[float, ...], int]:
  sigmas = tuple(float(s) for s in sigmas)
  if not sigmas or not all(np.isfinite(s) and s > 0 for s in sigmas):
    raise UserError(f'gradnorm_toy: sigmas must be positive numbers, one per task; got {sigmas}')
  if isinstance(data_seed, bool) or not isinstance(data_seed, (int, np.integer)) or data_seed < 0:
    raise UserError(f'gradnorm_toy: data_seed must be an integer >= 0, got {data_seed!r}')
  return sigmas, int(data_seed)


def generate(sigmas, num_examples: int, data_seed: int = 0) -> dict[str, np.ndarray]:
  """{'x' [N, 250], 't0' [N, 100], ...} in float64, deterministic in its arguments. Task i's
  eps_i is the i-th draw of its stream, so adding tasks keeps the first ones' data."""
  sigmas, data_seed = _check(sigmas, data_seed)
  b_rng, eps_rng, x_rng = (np.random.default_rng(s) for s in
                           np.random.SeedSequence([SEED_SALT, data_seed]).spawn(3))
  b = b_rng.normal(0.0, B_STD, (OUTPUT_DIM, INPUT_DIM))
  x = x_rng.normal(0.0, X_STD, (num_examples, INPUT_DIM))
  out = {'x': x}
  for i, sigma in enumerate(sigmas):
    eps = eps_rng.normal(0.0, EPS_STD, (OUTPUT_DIM, INPUT_DIM))
    out[f't{i}'] = sigma * np.tanh(x @ (b + eps).T)
  return out


@dataclasses.dataclass(eq=False)
class GradnormToyConfig(tfds.core.BuilderConfig):
  sigmas: tuple = (1.0, 100.0)
  data_seed: int = 0


def config_name(sigmas, data_seed: int = 0) -> str:
  sigmas, data_seed = _check(sigmas, data_seed)
  named = {v: k for k, v in CONFIGS.items()}.get(sigmas)
  base = named or 's' + '_'.join(repr(s).replace('.', 'p') for s in sigmas)
  return base + (f'_d{data_seed}' if data_seed else '')


def _make_config(sigmas, data_seed: int = 0) -> GradnormToyConfig:
  sigmas, data_seed = _check(sigmas, data_seed)
  return GradnormToyConfig(name=config_name(sigmas, data_seed), sigmas=sigmas,
                           data_seed=data_seed,
                           description=f'sigma = {sigmas}, data seed {data_seed}')


class GradnormToy(pipeline.LocalBuilder):
  """GradNorm's toy regression tasks; see the module docstring."""

  name = 'gradnorm_toy'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: 250 -> 100, 8k/1k/1k examples.'}
  BUILDER_CONFIGS = [_make_config(s) for s in CONFIGS.values()]

  def _info(self) -> tfds.core.DatasetInfo:
    num_tasks = len(self.builder_config.sigmas)
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'x': tfds.features.Tensor(shape=(INPUT_DIM,), dtype=np.float32),
            **{f't{i}': tfds.features.Tensor(shape=(OUTPUT_DIM,), dtype=np.float32)
               for i in range(num_tasks)}}),
        citation='Chen et al., GradNorm: Gradient Normalization for Adaptive Loss Balancing in '
                 'Deep Multitask Networks, ICML 2018, section 4.',
        disable_shuffling=True,  # i.i.d. already; keep the generated order.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated, nothing to download.
    config = self.builder_config
    columns = generate(config.sigmas, sum(SPLIT_SIZES.values()), config.data_seed)
    self.info.metadata.update({'sigmas': list(config.sigmas), 'data_seed': config.data_seed,
                               'split_sizes': dict(SPLIT_SIZES)})
    bounds = np.cumsum([0] + list(SPLIT_SIZES.values()))
    return {name: self._generate_examples(columns, start, stop)
            for name, start, stop in zip(SPLIT_SIZES, bounds[:-1], bounds[1:])}

  def _generate_examples(self, columns, start, stop):
    for i in range(start, stop):
      yield i, {key: value[i].astype(np.float32) for key, value in columns.items()}


def builder_class(sigmas, data_seed: int = 0) -> type:
  """A `GradnormToy` subclass whose only config is (sigmas, data_seed); same data folder name."""
  return _builder_class(*_check(sigmas, data_seed))


@functools.cache
def _builder_class(sigmas: tuple, data_seed: int) -> type:
  return pipeline.with_config(GradnormToy, _make_config(sigmas, data_seed))


def dense_batch(rows: dict, spec: 'registry.DatasetSpec', tasks_=None) -> dict:
  batch = pipeline.to_batch(rows, spec, tasks_)
  batch['inputs'] = batch['inputs']['x']
  return batch


def register(sigmas, data_seed: int = 0) -> str:
  """Registers the trainer dataset `gradnorm_toy_<config>` unless it is; returns its name."""
  sigmas, data_seed = _check(sigmas, data_seed)
  name = f'{GradnormToy.name}_{config_name(sigmas, data_seed)}'
  if name not in registry.DATASETS:
    registry.DATASETS.register(name, registry.DatasetSpec(
        name=name, builder_cls=builder_class(sigmas, data_seed), tasks=tasks(len(sigmas)),
        input_kind='dense', input_keys=('x',), batch_fn=dense_batch))
  return name


for _sigmas in CONFIGS.values():
  register(_sigmas)
