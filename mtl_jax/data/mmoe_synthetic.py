"""The MMoE paper's synthetic data: two regression tasks whose relatedness is controlled by p.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
KDD 2018, §4.2 ("Synthetic Data Generation"). The procedure, as the paper states it:

  1. Given the input dimension d, draw two orthogonal unit vectors u1, u2 in R^d.
  2. Given a scale constant c and a correlation score -1 <= p <= 1, set
         w1 = c u1,    w2 = c (p u1 + sqrt(1 - p^2) u2),
     so that cos(w1, w2) = p exactly.
  3. Draw an input x in R^d with every element from N(0, 1).
  4. Two regression labels
         y_k = w_k^T x + sum_{i=1..m} sin(alpha_i w_k^T x + beta_i) + eps_k,   k = 1, 2,
     where alpha_i, beta_i (i = 1..m) are shared by both tasks and shape the sinusoids, and
     eps_1, eps_2 ~ N(0, 0.01) independently.
  5. Repeat 3-4 until there are enough examples.

The paper controls p (the cosine of the weight vectors) rather than the label correlation, which
the non-linearity makes hard to set directly; it notes that the labels' Pearson correlation falls
as p falls (`tests/data/test_mmoe_synthetic.py` checks this numerically). In the linear case
(no sinusoids) the label correlation is p up to the noise.

Constants (what the paper gives, and what it leaves to us):
  * D = 100: the input dimension of the paper's synthetic experiments.
  * M = 10 sinusoids; alpha_i, beta_i ~ N(0, 0.01) (paper). We read N(mu, sigma^2): a VARIANCE of
    0.01, standard deviation 0.1, for alpha, beta and the noise alike.
  * NOISE_VARIANCE = 0.01: eps_k ~ N(0, 0.01) (paper), same reading.
  * C = 1.0: the scale constant c. We do not remember the paper's value; with c = 1 and
    x ~ N(0, I), w_k^T x ~ N(0, 1), so the labels have unit scale plus the sinusoids.
  * Split sizes (ours; we do not remember the paper's): 10,000 train, 2,000 validation,
    10,000 test (a large test split, so that small differences between models are measurable).

A consequence of alpha ~ N(0, 0.01): alpha_i w^T x is small (std about 0.1), so each sinusoid is
close to its tangent sin(beta_i) + alpha_i cos(beta_i) w^T x; the labels are nearly linear in
w_k^T x and the noise (variance 0.01) sets the floor of the test MSE.

Regimes. The constants above are the regime `paper` (the default, and the datasets' original
meaning). The regime `nonlinear` changes three things and keeps the rest (d = 100, m = 10, the
noise, the procedure):
  * alpha_i, beta_i ~ N(0, 1) (standard deviation 1, as public reproductions of the paper draw
    them; the paper only says "given parameters"). alpha_i w^T x then has standard deviation
    |alpha_i|, the sinusoids are far from their tangents, and the labels are clearly non-linear:
    over data seeds 0-2, the sinusoids' sum has 0.5-6.7 times the variance of the linear part
    and least squares leaves 9-78% of a label's variance unexplained (`paper`: 0.6-2%, which is
    the noise).
  * c = 1 still: with alpha of standard deviation 1 the sinusoids are not small at c = 1, and a
    larger c (3 was tried) raises the linear part's variance as much as the sinusoids', so it
    makes the labels no more non-linear (least squares' unexplained fraction 6-62% at c = 3).
  * Splits of 200,000 train, 10,000 validation and 20,000 test examples: enough that networks of
    ~15k parameters do not overfit within the experiment's step budget (10,000 steps of 128
    examples, 6.4 epochs). Building one (p, data_seed) takes about 25-60 s on a loaded 2-core
    CPU (tfds' per-example writer) and 110 MB of disk.
The parameters are drawn from the same streams as `paper`'s (alpha and beta are the same
standard normal draws scaled by 10), and x and the noise are the same too: only the scale of
alpha, beta and the number of examples differ between the regimes of one data seed.

Randomness: one `data_seed` fixes u1, u2, alpha, beta, every x and every eps, each from its own
stream of `numpy.random.SeedSequence([SEED_SALT, data_seed])`; p is applied afterwards. So the
datasets for different p at one data seed share everything except p (paired comparisons across
p), and the first n examples of a larger draw are the n examples of a smaller one.

Datasets: the tfds builder `mmoe_synthetic` has one BuilderConfig per (p, data_seed), named
`p05`, `p09`, `p10` for p = 0.5, 0.9, 1.0 at data seed 0, and `p05_d3` etc. for data seed 3 (the
tag is p's shortest repr without the point, a leading 'm' for negative p). The registered
trainer datasets are `mmoe_synthetic_<tag>` (`--config.dataset=mmoe_synthetic_p05`); the three of
data seed 0 are registered on import, any other (p, data_seed) by `register(p, data_seed)`.
The regime `nonlinear` adds `_nl` after the p tag: configs `p05_nl`, `p05_nl_d3`, datasets
`mmoe_synthetic_p05_nl` (registered on import for the three p of data seed 0) and
`register(p, data_seed, regime='nonlinear')` for others.
Features: `x` float32 [100] (the trainer's input, as one dense array), `y1`, `y2` float32. The
parameters (u1, u2, w1, w2, alpha, beta, p, c, data_seed) are in `builder.info.metadata`.
"""

import dataclasses
import functools
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

from mtl_jax.data import pipeline
from mtl_jax.data import registry
from mtl_jax.errors import UserError
from mtl_jax.tasks import Task

D = 100
M = 10
C = 1.0
ALPHA_BETA_VARIANCE = 0.01
NOISE_VARIANCE = 0.01
SPLIT_SIZES = {'train': 10_000, 'validation': 2_000, 'test': 10_000}
# Mixed into every data seed, so that these streams differ from other users of small seeds.
SEED_SALT = 20180819
# The correlations of the paper's MMoE vs shared-bottom comparison; registered on import.
PAPER_P = (0.5, 0.9, 1.0)

TASKS = (Task('y1', 'regression'), Task('y2', 'regression'))


@dataclasses.dataclass(frozen=True)
class Regime:
  """What a regime sets: the variance of alpha and beta, c, the split sizes, the name's tag."""

  name: str
  tag: str  # Appended to the p tag in config and dataset names ('' for the default regime).
  alpha_beta_variance: float
  c: float
  split_sizes: Mapping[str, int]


REGIMES = {
    # The paper's N(0, 0.01) read as a variance; labels nearly linear (see the docstring).
    'paper': Regime('paper', '', ALPHA_BETA_VARIANCE, C, SPLIT_SIZES),
    # alpha, beta of standard deviation 1: clearly non-linear labels, and enough data.
    'nonlinear': Regime('nonlinear', '_nl', 1.0, 1.0,
                        {'train': 200_000, 'validation': 10_000, 'test': 20_000}),
}
DEFAULT_REGIME = 'paper'


def get_regime(regime: 'str | Regime' = DEFAULT_REGIME) -> Regime:
  """The `Regime` of a name (a `Regime` passes through); a `UserError` naming the valid ones."""
  if isinstance(regime, Regime):
    return regime
  if regime not in REGIMES:
    raise UserError(f'mmoe_synthetic: unknown regime {regime!r}; valid regimes: '
                    f'{", ".join(REGIMES)} (e.g. regime=nonlinear)')
  return REGIMES[regime]


@dataclasses.dataclass(frozen=True)
class Parameters:
  """What one data seed fixes: u1 ⟂ u2 (unit, [d]) and the sinusoids' alpha, beta ([m])."""

  u1: np.ndarray
  u2: np.ndarray
  alpha: np.ndarray
  beta: np.ndarray


def _streams(data_seed: int) -> list[np.random.Generator]:
  """Independent generators for the parameters, the inputs and the noise."""
  if isinstance(data_seed, bool) or not isinstance(data_seed, (int, np.integer)) or data_seed < 0:
    raise UserError(f'mmoe_synthetic: data_seed must be an integer >= 0, got {data_seed!r}')
  sequence = np.random.SeedSequence([SEED_SALT, int(data_seed)])
  return [np.random.default_rng(s) for s in sequence.spawn(3)]


def _check_p(p: float) -> float:
  if not -1.0 <= p <= 1.0:
    raise UserError(f'mmoe_synthetic: the correlation score p must be in [-1, 1], got {p!r}')
  return float(p)


def draw_parameters(data_seed: int, d: int = D, m: int = M,
                    regime: 'str | Regime' = DEFAULT_REGIME) -> Parameters:
  """u1, u2: the Q factor of a [d, 2] standard normal matrix (uniformly random orthonormal
  pair); alpha, beta ~ N(0, the regime's alpha_beta_variance) (`paper`: ALPHA_BETA_VARIANCE)."""
  regime = get_regime(regime)
  rng = _streams(data_seed)[0]
  q, _ = np.linalg.qr(rng.standard_normal((d, 2)))
  scale = np.sqrt(regime.alpha_beta_variance)
  alpha = rng.normal(0.0, scale, m)
  beta = rng.normal(0.0, scale, m)
  return Parameters(u1=q[:, 0], u2=q[:, 1], alpha=alpha, beta=beta)


def weight_vectors(params: Parameters, p: float, c: float = C) -> tuple[np.ndarray, np.ndarray]:
  """w1 = c u1, w2 = c (p u1 + sqrt(1 - p^2) u2): cos(w1, w2) = p, |w1| = |w2| = c."""
  p = _check_p(p)
  return c * params.u1, c * (p * params.u1 + np.sqrt(1.0 - p * p) * params.u2)


def label(z: np.ndarray, params: Parameters) -> np.ndarray:
  """The noiseless label as a function of z = w^T x: z + sum_i sin(alpha_i z + beta_i)."""
  return z + np.sin(np.multiply.outer(z, params.alpha) + params.beta).sum(axis=-1)


def generate(p: float, num_examples: int, data_seed: int = 0, *, d: int = D, m: int = M,
             c: float | None = None,
             regime: 'str | Regime' = DEFAULT_REGIME) -> dict[str, np.ndarray]:
  """`num_examples` examples of correlation score p: {'x' [N, d], 'y1' [N], 'y2' [N]} (float64).

  Pure NumPy and deterministic in (p, num_examples, data_seed, d, m, c, regime); `c` None means
  the regime's. See the module docstring for the procedure, the constants and the regimes.
  """
  regime = get_regime(regime)
  if num_examples < 0:
    raise UserError(f'mmoe_synthetic: num_examples must be >= 0, got {num_examples}')
  _, x_rng, noise_rng = _streams(data_seed)
  params = draw_parameters(data_seed, d, m, regime)
  w1, w2 = weight_vectors(params, p, regime.c if c is None else c)
  x = x_rng.standard_normal((num_examples, d))
  noise = noise_rng.normal(0.0, np.sqrt(NOISE_VARIANCE), (num_examples, 2))
  return {'x': x,
          'y1': label(x @ w1, params) + noise[:, 0],
          'y2': label(x @ w2, params) + noise[:, 1]}


def p_tag(p: float) -> str:
  """0.5 -> '05', 0.9 -> '09', 1.0 -> '10', 0.25 -> '025', -0.5 -> 'm05' (unique for |p| <= 1)."""
  p = _check_p(p)
  return ('m' if p < 0 else '') + repr(abs(p)).replace('.', '')


def config_name(p: float, data_seed: int = 0, regime: 'str | Regime' = DEFAULT_REGIME) -> str:
  """The BuilderConfig name: 'p05' at data seed 0, 'p05_d3' at data seed 3; regime `nonlinear`:
  'p05_nl', 'p05_nl_d3'."""
  _streams(data_seed)  # Validates the seed.
  return f'p{p_tag(p)}{get_regime(regime).tag}' + (f'_d{data_seed}' if data_seed else '')


@dataclasses.dataclass(eq=False)
class MmoeSyntheticConfig(tfds.core.BuilderConfig):
  """One draw of the data: correlation score p, the seed of everything random, the regime."""

  p: float = 1.0
  data_seed: int = 0
  regime: str = DEFAULT_REGIME


def make_config(p: float, data_seed: int = 0,
                regime: 'str | Regime' = DEFAULT_REGIME) -> MmoeSyntheticConfig:
  regime = get_regime(regime)
  return MmoeSyntheticConfig(
      name=config_name(p, data_seed, regime), p=_check_p(p), data_seed=int(data_seed),
      regime=regime.name,
      description=f'cos(w1, w2) = p = {p}, data seed {data_seed}, regime {regime.name}')


class MmoeSynthetic(pipeline.LocalBuilder):
  """The MMoE paper's synthetic regression pair; see the module docstring."""

  name = 'mmoe_synthetic'
  VERSION = tfds.core.Version('1.0.0')
  # The regime `nonlinear` came as new configs; the `paper` configs' data did not change.
  RELEASE_NOTES = {'1.0.0': 'Initial release: d=100, m=10, c=1, 10k/2k/10k examples.'}
  BUILDER_CONFIGS = [make_config(p, 0, regime) for regime in REGIMES for p in PAPER_P]

  def _info(self) -> tfds.core.DatasetInfo:
    # `dataset_info_from_configs` looks for files inside the tfds package; build it directly.
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'x': tfds.features.Tensor(shape=(D,), dtype=np.float32),
            'y1': tfds.features.Scalar(dtype=np.float32),
            'y2': tfds.features.Scalar(dtype=np.float32),
        }),
        citation='Ma et al., Modeling Task Relationships in Multi-task Learning with Multi-gate '
                 'Mixture-of-Experts, KDD 2018, section 4.2.',
        disable_shuffling=True,  # The examples are i.i.d. already; keep the generated order.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated, nothing to download.
    config = self.builder_config
    regime = get_regime(config.regime)
    sizes = dict(regime.split_sizes)
    columns = generate(config.p, sum(sizes.values()), config.data_seed, regime=regime)
    params = draw_parameters(config.data_seed, regime=regime)
    w1, w2 = weight_vectors(params, config.p, regime.c)
    self.info.metadata.update({
        'p': config.p, 'data_seed': config.data_seed, 'regime': regime.name, 'd': D, 'm': M,
        'c': regime.c, 'alpha_beta_variance': regime.alpha_beta_variance,
        'noise_variance': NOISE_VARIANCE,
        'u1': params.u1.tolist(), 'u2': params.u2.tolist(), 'w1': w1.tolist(),
        'w2': w2.tolist(), 'alpha': params.alpha.tolist(), 'beta': params.beta.tolist(),
        'split_sizes': sizes,
    })
    # Consecutive blocks of one i.i.d. stream: train first, so it is the prefix of the draw.
    bounds = np.cumsum([0] + list(sizes.values()))
    return {name: self._generate_examples(columns, start, stop)
            for name, start, stop in zip(sizes, bounds[:-1], bounds[1:])}

  def _generate_examples(self, columns, start, stop):
    for i in range(start, stop):
      yield i, {'x': columns['x'][i].astype(np.float32),
                'y1': np.float32(columns['y1'][i]), 'y2': np.float32(columns['y2'][i])}


def builder_class(p: float, data_seed: int = 0, regime: str = DEFAULT_REGIME) -> type:
  """A subclass of `MmoeSynthetic` whose only (so default) config is (p, data_seed, regime)."""
  return _builder_class(_check_p(p), int(data_seed), get_regime(regime).name)


@functools.cache
def _builder_class(p: float, data_seed: int, regime: str) -> type:
  """`builder_class`, cached on the normalised arguments (one class per config; the data folder
  is the one of `tfds.data_source('mmoe_synthetic/p05')`)."""
  return pipeline.with_config(MmoeSynthetic, make_config(p, data_seed, regime))


def dense_batch(rows: dict, spec: 'registry.DatasetSpec', tasks=None) -> dict:
  """`pipeline.to_batch` with the inputs as the one float array `x` [B, d]: the 'dense' input
  kind's layer (`models.inputs.Identity`) takes an array, not a dict."""
  batch = pipeline.to_batch(rows, spec, tasks)
  batch['inputs'] = batch['inputs']['x']
  return batch


def dataset_name(p: float, data_seed: int = 0, regime: 'str | Regime' = DEFAULT_REGIME) -> str:
  return f'{MmoeSynthetic.name}_{config_name(p, data_seed, regime)}'


def register(p: float, data_seed: int = 0, regime: str = DEFAULT_REGIME) -> str:
  """Registers the trainer dataset for (p, data_seed, regime) unless it is; returns its name."""
  name = dataset_name(p, data_seed, regime)
  if name not in registry.DATASETS:
    registry.DATASETS.register(name, registry.DatasetSpec(
        name=name, builder_cls=builder_class(p, data_seed, regime), tasks=TASKS,
        input_kind='dense', input_keys=('x',), batch_fn=dense_batch))
  return name


for _regime in REGIMES:
  for _p in PAPER_P:
    register(_p, 0, _regime)
