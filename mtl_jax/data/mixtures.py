"""Mixtures: tasks with separate datasets, sampled into one stream of batches with rates.

A mixture is a list of *members*; a member is a registered dataset (`data.DATASETS`), the tasks
whose labels it provides, and which split serves as its train / validation / test split (a tfds
split name, a tfds slice such as 'train[:90%]', or a seeded `Carved` part of another split). Each
example of a training batch is drawn from member k with probability `rate(i)[k]` (option
`per_batch`: each whole batch is), where `i` is the 0-based index of the global batch::

    from mtl_jax.data import mixtures
    mixtures.register('my_mix', [
        mixtures.Member('a', dataset='census_income', tasks=('income',)),
        mixtures.Member('b', dataset='ud_english_ewt', tasks=('upos',)),  # (inputs must match!)
    ], rate='temperature', rate_kwargs={'temperature': 2.0})
    # config.dataset = 'my_mix'  (mtl_jax.train.loop knows mixtures by name)

Rates (`RATES`, each `factory(sizes, num_steps, **kwargs) -> rate`, `rate(i) -> weights [K]`
summing to 1, in the style of seqio's mixing-rate functions), with N_k the number of training
examples of member k:

  * 'equal':        r_k = 1 / K
  * 'proportional': r_k ∝ N_k
  * 'temperature':  r_k ∝ min(N_k · scale, cap)^(1/T)   (Raffel et al. 2020, "Exploring the
                    Limits of Transfer Learning with a Unified Text-to-Text Transformer" (T5),
                    §3.5.2: examples-proportional mixing with an artificial limit and temperature;
                    T = 1 is proportional (below the cap), T -> inf is equal)
  * 'annealed':     r_k ∝ N_k^α(e),  α(e) = 1 - 0.8 (e - 1) / (E - 1) at epoch e = 1..E
                    (Stickland & Murray 2019, "BERT and PALs", §4). The `num_steps` batches are
                    cut into E equal epochs: batch i (0-based) is in epoch
                    e = min(floor(i · E / num_steps), E - 1) + 1; E = 1 keeps α = 1.

The mixed batch has the format of `pipeline.to_batch` with a label slot for every task of every
member: `label_mask[task]` is True only on the examples drawn from a member that labels that task
(and whose label is not missing). The inputs of all members must have the same structure, dtypes
and trailing shapes (`check_inputs`, run before training).

Determinism and resuming. Member k is read as its own endless stream: epoch q of member k is the
permutation of its N_k rows drawn from `(seed, k, q)`, and the epochs follow each other without
dropping a remainder (so each example is seen once per member-epoch). Global batch i draws its
member assignment from `(seed, i)` alone, and takes, for member k, the next n_k(i) examples of
k's stream, where the stream position is the number of k-examples drawn by batches 0..i-1.
Everything is therefore a function of (seed, i): the grain iterator's state is just `i`, so
`get_state`/`set_state` and grain's orbax handler resume exactly, and the annealed rate, being a
function of i, resumes with it. Jumping to batch i replays the (cheap) assignments of the batches
before it, with cached running counts every `_COUNT_BLOCK` batches.

Multi-process: every process computes the same global batch and takes its contiguous
`batch_size // process_count` rows (the rule of `pipeline.ShuffledIndexBatches`), so the
processes' local batches concatenated in process order are the single-process batch.

Splits (`Carved`): a dataset that lacks a validation or test split can carve one from another
split. tfds slices ('train[:90%]', 'train[90%:]') are deterministic but follow the stored order,
which is a shuffle only if the builder shuffled at preparation. `Carved(source, fractions, part,
seed)` instead permutes the source split's rows (in stored order) with
`numpy.random.default_rng(seed)` and cuts the permutation at `round(N · cumulative fraction)`:
the parts are disjoint, deterministic given (stored order, N, fractions, seed), and each part's
rows are kept in stored order.
"""

import dataclasses
import functools
import threading
from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import numpy as np

from mtl_jax.data import pipeline
from mtl_jax.data import registry as data_registry
from mtl_jax.errors import UnknownNameError, UserError
from mtl_jax.registry import Registry
from mtl_jax.tasks import Task

Rate = Callable[[int], np.ndarray]

SPLITS = ('train', 'validation', 'test')

# Tags that keep the member-order and batch-assignment random streams apart.
_ASSIGN_TAG, _ORDER_TAG = 0x6D6978, 0x6F7264
_COUNT_BLOCK = 1024


# ---------------------------------------------------------------------------------------------
# Rates.

RATES: Registry[Callable[..., Rate]] = Registry('mixture rate')


def _normalise(weights: np.ndarray) -> np.ndarray:
  weights = np.asarray(weights, np.float64)
  return weights / weights.sum()


@RATES.register('equal')
def equal(sizes: Sequence[int], num_steps: int | None = None) -> Rate:
  """r_k = 1 / K."""
  del num_steps
  weights = np.full(len(sizes), 1.0 / len(sizes))
  return lambda step: weights


@RATES.register('proportional')
def proportional(sizes: Sequence[int], num_steps: int | None = None) -> Rate:
  """r_k ∝ N_k (examples-proportional mixing)."""
  del num_steps
  weights = _normalise(sizes)
  return lambda step: weights


@RATES.register('temperature')
def temperature(sizes: Sequence[int], num_steps: int | None = None, *, temperature: float = 1.0,
                scale: float = 1.0, cap: float | None = None) -> Rate:
  """r_k ∝ min(N_k · scale, cap)^(1/T) (T5's examples-proportional mixing with temperature)."""
  del num_steps
  if not temperature > 0:
    raise UserError(f"mixture rate 'temperature' needs temperature > 0, got {temperature!r}")
  if not scale > 0:
    raise UserError(f"mixture rate 'temperature' needs scale > 0, got {scale!r}")
  if cap is not None and not cap > 0:
    raise UserError(f"mixture rate 'temperature' needs cap > 0 (or None), got {cap!r}")
  limited = np.asarray(sizes, np.float64) * scale
  if cap is not None:
    limited = np.minimum(limited, cap)
  # In logs, so that a large T and large N_k cannot overflow or underflow.
  logs = np.log(limited) / temperature
  weights = _normalise(np.exp(logs - logs.max()))
  return lambda step: weights


def anneal_alpha(step: int, num_steps: int, num_epochs: int) -> float:
  """α of BERT and PALs at 0-based batch `step` of `num_steps` cut into `num_epochs` epochs."""
  if num_epochs == 1:
    return 1.0
  epoch = min(step * num_epochs // num_steps, num_epochs - 1) + 1
  return 1.0 - 0.8 * (epoch - 1) / (num_epochs - 1)


@RATES.register('annealed')
def annealed(sizes: Sequence[int], num_steps: int | None = None, *,
             num_epochs: int | None = None) -> Rate:
  """r_k ∝ N_k^α(e), α = 1 - 0.8 (e - 1)/(E - 1) (Stickland & Murray 2019) over E epochs."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
    raise UserError(f"mixture rate 'annealed' needs num_steps (the number of training batches, "
                    f"config.num_train_steps) >= 1, got {num_steps!r}")
  if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
    raise UserError(f"mixture rate 'annealed' needs rate_kwargs num_epochs (E, an integer >= 1), "
                    f"got {num_epochs!r}")
  log_sizes = np.log(np.asarray(sizes, np.float64))

  def rate(step: int) -> np.ndarray:
    logs = anneal_alpha(int(step), num_steps, num_epochs) * log_sizes
    return _normalise(np.exp(logs - logs.max()))

  return rate


def make_rate(name: str, sizes: Sequence[int], num_steps: int | None = None,
              **kwargs) -> Rate:
  """The registered rate `name` for members of `sizes`; UserError for bad names or options."""
  factory = RATES.get(name)
  sizes = list(sizes)
  if not sizes or any(int(n) < 1 for n in sizes):
    raise UserError(f'mixture rate {name!r}: every member needs at least one training example, '
                    f'got sizes {sizes}')
  try:
    return factory(sizes, num_steps, **kwargs)
  except TypeError as e:
    import inspect  # pylint: disable=import-outside-toplevel
    options = [p for p in inspect.signature(factory).parameters
               if p not in ('sizes', 'num_steps')]
    raise UserError(f'mixture rate {name!r}: bad options {sorted(kwargs)} ({e}); its options '
                    f'are: {", ".join(options) or "none"}') from None


# ---------------------------------------------------------------------------------------------
# Splits.


@dataclasses.dataclass(frozen=True)
class Carved:
  """Part `part` of split `source` permuted with `seed` and cut by `fractions`.

  `fractions`: ((name, fraction), ...) in cutting order, each > 0, summing to at most 1. Part j
  is rows `perm[round(N · c_{j-1}) : round(N · c_j)]` of the permutation (c_j the cumulative
  fraction), sorted back into stored order.
  """

  source: str
  fractions: tuple[tuple[str, float], ...]
  part: str
  seed: int


def carve_indices(num_rows: int, fractions: Sequence[tuple[str, float]] | Mapping[str, float],
                  seed: int) -> dict[str, np.ndarray]:
  """{part: sorted row indices}: a seeded permutation of `num_rows` cut by `fractions`."""
  items = list(fractions.items() if isinstance(fractions, Mapping) else fractions)
  names = [name for name, _ in items]
  values = np.asarray([f for _, f in items], np.float64)
  if not items or len(set(names)) != len(names) or np.any(~(values > 0)):
    raise UserError(f'carve fractions must be distinct names with positive fractions, got {items}')
  cumulative = np.cumsum(values)
  if cumulative[-1] > 1 + 1e-9:
    raise UserError(f'carve fractions sum to {cumulative[-1]:.6g} > 1: {items}')
  perm = np.random.default_rng(seed).permutation(num_rows)
  bounds = [0] + [int(round(num_rows * min(c, 1.0))) for c in cumulative]
  return {name: np.sort(perm[bounds[j]:bounds[j + 1]]) for j, name in enumerate(names)}


def carve(columns: pipeline.Columns, fractions, seed: int) -> dict[str, pipeline.Columns]:
  """{part: columns}: the rows of `columns` cut as `carve_indices` says."""
  return {name: pipeline.gather(columns, rows) for name, rows in
          carve_indices(pipeline.num_rows(columns), fractions, seed).items()}


# ---------------------------------------------------------------------------------------------
# Mixture specifications.


@dataclasses.dataclass(frozen=True)
class Member:
  """One member of a mixture: `tasks` of `dataset`, read from `splits` (role -> split)."""

  name: str
  dataset: str
  tasks: tuple[str, ...]
  splits: Mapping[str, str | Carved] = dataclasses.field(
      default_factory=lambda: {split: split for split in SPLITS})

  @property
  def spec(self) -> data_registry.DatasetSpec:
    return data_registry.get(self.dataset)

  def task_objects(self) -> tuple[Task, ...]:
    spec = self.spec
    by_name = {task.name: task for task in spec.tasks}
    for name in self.tasks:
      if name not in by_name:
        raise UnknownNameError(f'mixture member {self.name!r}: dataset {self.dataset!r} has no '
                               f'task {name!r}; valid tasks: {", ".join(by_name)}')
    return tuple(by_name[name] for name in self.tasks)


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
  """A registered mixture: its members, default rate (a `RATES` name) and its options."""

  name: str
  members: tuple[Member, ...]
  rate: str = 'equal'
  rate_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  per_batch: bool = False

  def tasks(self) -> tuple[Task, ...]:
    """Every member's tasks, in member order, once each; UserError if two members disagree on
    what a task of the same name is."""
    seen: dict[str, Task] = {}
    for member in self.members:
      for task in member.task_objects():
        if task.name in seen and seen[task.name] != task:
          raise UserError(f'mixture {self.name!r}: task {task.name!r} of member {member.name!r} '
                          f'is {task}, another member has {seen[task.name]}')
        seen.setdefault(task.name, task)
    return tuple(seen.values())


MIXTURES: Registry[MixtureSpec] = Registry('mixture')


def register(name: str, members: Sequence[Member], rate: str = 'equal',
             rate_kwargs: Mapping[str, Any] | None = None, per_batch: bool = False
             ) -> MixtureSpec:
  """Registers a mixture (so `config.dataset = name` trains on it); checks names, not data."""
  members = tuple(members)
  if not members:
    raise UserError(f'mixture {name!r} has no members')
  if len({m.name for m in members}) != len(members):
    raise UserError(f'mixture {name!r}: member names repeat: {[m.name for m in members]}')
  if name in data_registry.DATASETS:
    raise UserError(f'mixture {name!r}: a dataset already has that name')
  RATES.get(rate)
  for member in members:
    member.task_objects()
    missing = [s for s in SPLITS if s not in member.splits]
    if missing:
      raise UserError(f'mixture {name!r}: member {member.name!r} has no {missing[0]!r} split; '
                      f'give one (a Carved part of another split if the dataset lacks it)')
    if member.spec.time_buckets:
      raise UserError(f'mixture {name!r}: member {member.name!r} uses dataset '
                      f'{member.dataset!r}, whose batches cut their token axis per batch '
                      f'(time_buckets); mixtures need batches of a fixed shape')
  spec = MixtureSpec(name, members, rate, dict(rate_kwargs or {}), bool(per_batch))
  spec.tasks()
  return MIXTURES.register(name, spec)


def get(name: str) -> MixtureSpec:
  return MIXTURES.get(name)


# ---------------------------------------------------------------------------------------------
# Loading members.


@dataclasses.dataclass
class LoadedMember:
  """A member's split in memory: its spec, the tasks it labels, and the columns."""

  name: str
  spec: data_registry.DatasetSpec
  tasks: tuple[Task, ...]
  columns: pipeline.Columns
  # (dataset, split): members that read the same split of the same dataset share it.
  source: tuple[str, str] = ('', '')

  def to_batch(self, rows: pipeline.Columns) -> dict:
    return self.spec.to_batch(rows, self.tasks)


def default_loader(data_dir: str | None) -> Callable[[str, str], tuple[Any, pipeline.Columns]]:
  """(dataset, split) -> (builder, columns), preparing the dataset in `data_dir` if needed."""

  def load(dataset: str, split: str):
    builder = pipeline.prepare(data_registry.get(dataset).builder_cls, data_dir or None)
    return builder, pipeline.load_columns(builder, split)

  return load


def load_member(member: Member, role: str, loader: Callable[[str, str], tuple[Any, Any]]
                ) -> tuple[Any, LoadedMember]:
  """(builder, LoadedMember) for the member's split `role` ('train', 'validation', 'test')."""
  split = member.splits[role]
  if isinstance(split, Carved):
    builder, source = loader(member.dataset, split.source)
    parts = dict(split.fractions)
    if split.part not in parts:
      raise UserError(f'member {member.name!r}: carved part {split.part!r} is not one of '
                      f'{", ".join(parts)}')
    rows = carve_indices(pipeline.num_rows(source), split.fractions, split.seed)[split.part]
    columns = pipeline.gather(source, rows)
  else:
    builder, columns = loader(member.dataset, split)
  return builder, LoadedMember(member.name, member.spec, member.task_objects(), columns,
                               (member.dataset, repr(split)))


def _describe(tree: Any) -> dict[str, tuple[str, tuple[int, ...]]]:
  """{feature path: (dtype, trailing shape)} of a batch's inputs."""
  return {name: (str(np.asarray(a).dtype), tuple(np.shape(a)[1:]))
          for name, a in pipeline._leaves(tree)}  # pylint: disable=protected-access


def check_inputs(members: Sequence[LoadedMember], input_infos: Sequence[dict] | None = None
                 ) -> None:
  """UserError naming the member and feature unless all members' inputs match the first's."""
  reference = members[0]
  want = _describe(reference.to_batch(pipeline.first_rows(reference.columns, 1))['inputs'])
  for i, member in enumerate(members[1:], 1):
    got = _describe(member.to_batch(pipeline.first_rows(member.columns, 1))['inputs'])
    for feature in sorted(set(want) | set(got)):
      if feature not in got:
        raise UserError(f'mixture member {member.name!r} has no input feature {feature!r}, which '
                        f'member {reference.name!r} has; all members need the same inputs')
      if feature not in want:
        raise UserError(f'mixture member {member.name!r} has an input feature {feature!r} that '
                        f'member {reference.name!r} lacks; all members need the same inputs')
      if got[feature] != want[feature]:
        raise UserError(
            f'mixture member {member.name!r}: input feature {feature!r} is {got[feature][0]} '
            f'with per-example shape {list(got[feature][1])}, member {reference.name!r} has '
            f'{want[feature][0]} {list(want[feature][1])}; all members need the same inputs')
    if input_infos is not None and input_infos[i] != input_infos[0]:
      raise UserError(f'mixture member {member.name!r}: its input facts {input_infos[i]} differ '
                      f'from member {reference.name!r}\'s {input_infos[0]} (e.g. vocabulary '
                      f'sizes); one model cannot read both')


# ---------------------------------------------------------------------------------------------
# The training stream.


class MixtureIndexBatches(grain.MapDataset):
  """Element i: this process's slice of global batch i, as {'member': int32 [L], 'row': int64 [L]}
  (which member each example comes from, and its row in that member's columns).

  See the module docstring for the sampling and the stream of each member.
  """

  def __init__(self, sizes: Sequence[int], batch_size: int, rate: Rate, seed: int,
               process_index: int = 0, process_count: int = 1, per_batch: bool = False):
    super().__init__()
    pipeline.check_stream(batch_size, seed, process_index, process_count)
    self._sizes = np.asarray(sizes, np.int64)
    self._batch_size, self._rate, self._seed = batch_size, rate, int(seed)
    self._per_batch = per_batch
    self._local = batch_size // process_count
    self._offset = process_index * self._local
    # Running counts before batch b * _COUNT_BLOCK, and before the last batch asked for.
    self._blocks = [np.zeros(len(self._sizes), np.int64)]
    self._last = (0, self._blocks[0])
    self._permutations: dict[tuple[int, int], np.ndarray] = {}
    self._lock = threading.Lock()  # the caches above, if grain reads with several threads

  def __len__(self) -> int:
    return 2**62

  def __str__(self) -> str:
    return (f'MixtureIndexBatches(sizes={self._sizes.tolist()}, batch_size={self._batch_size}, '
            f'seed={self._seed}, per_batch={self._per_batch})')

  def assignment(self, index: int) -> np.ndarray:
    """int32 [batch_size]: the member of each example of global batch `index`."""
    rate = np.asarray(self._rate(index), np.float64)
    rng = np.random.default_rng([self._seed, _ASSIGN_TAG, index])
    # Inverse CDF of uniforms: member k where cdf[k-1] <= u < cdf[k].
    uniforms = rng.random(1 if self._per_batch else self._batch_size)
    members = np.searchsorted(np.cumsum(rate), uniforms * rate.sum(), side='right')
    members = np.minimum(members, len(rate) - 1).astype(np.int32)  # u·sum rounding at the top
    return np.broadcast_to(members, (self._batch_size,)).copy() if self._per_batch else members

  def _counts(self, assignment: np.ndarray) -> np.ndarray:
    return np.bincount(assignment, minlength=len(self._sizes)).astype(np.int64)

  def counts_before(self, index: int) -> np.ndarray:
    """int64 [K]: examples of each member in global batches 0..index-1."""
    start, counts = self._last
    if start > index:
      block = min(index // _COUNT_BLOCK, len(self._blocks) - 1)
      start, counts = block * _COUNT_BLOCK, self._blocks[block]
    counts = counts.copy()
    for i in range(start, index):
      if i % _COUNT_BLOCK == 0 and i // _COUNT_BLOCK == len(self._blocks):
        self._blocks.append(counts.copy())
      counts += self._counts(self.assignment(i))
    if index % _COUNT_BLOCK == 0 and index // _COUNT_BLOCK == len(self._blocks):
      self._blocks.append(counts.copy())
    self._last = (index, counts)
    return counts

  def _permutation(self, member: int, epoch: int) -> np.ndarray:
    key = (member, epoch)
    if key not in self._permutations:
      if len(self._permutations) > 4 * len(self._sizes):
        self._permutations.clear()
      rng = np.random.default_rng([self._seed, _ORDER_TAG, member, epoch])
      self._permutations[key] = rng.permutation(self._sizes[member])
    return self._permutations[key]

  def stream(self, member: int, start: int, count: int) -> np.ndarray:
    """Rows at positions start..start+count-1 of member's endless epoch-reshuffled stream."""
    size = int(self._sizes[member])
    out, position = [], start
    while position < start + count:
      epoch, offset = divmod(position, size)
      take = min(size - offset, start + count - position)
      out.append(self._permutation(member, epoch)[offset:offset + take])
      position += take
    return np.concatenate(out) if out else np.zeros(0, np.int64)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    index = int(index)
    with self._lock:
      counts = self.counts_before(index)
      assignment = self.assignment(index)
      rows = np.zeros(self._batch_size, np.int64)
      for k in np.unique(assignment):
        where = assignment == k
        rows[where] = self.stream(int(k), int(counts[k]), int(where.sum()))
      self._last = (index + 1, counts + self._counts(assignment))
    stop = self._offset + self._local
    return {'member': assignment[self._offset:stop], 'row': rows[self._offset:stop]}


class Assembler:
  """{'member', 'row'} -> a mixed trainer batch with every task's label slot."""

  def __init__(self, members: Sequence[LoadedMember], tasks: Sequence[Task]):
    self.members = list(members)
    self.tasks = tuple(tasks)
    wanted = {t.name for t in self.tasks}
    self.member_tasks = [tuple(t for t in m.tasks if t.name in wanted) for m in self.members]
    # Per-example templates (dtype, trailing shape) of every input and label.
    self.templates = {'inputs': None, 'labels': {}, 'label_mask': {}}
    for member, tasks_k in zip(self.members, self.member_tasks):
      example = member.spec.to_batch(pipeline.first_rows(member.columns, 1), tasks_k)
      if self.templates['inputs'] is None:
        self.templates['inputs'] = jax.tree.map(_template, example['inputs'])
      for key in ('labels', 'label_mask'):
        for name, value in example[key].items():
          self.templates[key].setdefault(name, _template(value))
    unlabelled = [t.name for t in self.tasks if t.name not in self.templates['labels']]
    if unlabelled:
      raise UserError(f'no mixture member labels task(s) {", ".join(unlabelled)}')

  def __call__(self, element: Mapping[str, np.ndarray]) -> dict:
    member, rows = np.asarray(element['member']), np.asarray(element['row'])
    size = len(member)
    batch = {
        'inputs': jax.tree.map(lambda t: np.zeros((size,) + t[1], t[0]),
                               self.templates['inputs'], is_leaf=_is_template),
        'labels': {t.name: _zeros(self.templates['labels'][t.name], size) for t in self.tasks},
        'label_mask': {t.name: _zeros(self.templates['label_mask'][t.name], size)
                       for t in self.tasks},
    }
    for k, loaded in enumerate(self.members):
      where = np.flatnonzero(member == k)
      if not len(where):
        continue
      part = loaded.spec.to_batch(pipeline.gather(loaded.columns, rows[where]),
                                  self.member_tasks[k])
      _place(batch['inputs'], part['inputs'], where)
      for key in ('labels', 'label_mask'):
        for name, value in part[key].items():
          batch[key][name][where] = value
    return batch


def _template(value) -> tuple:
  value = np.asarray(value)
  return (value.dtype, tuple(value.shape[1:]))


def _is_template(x) -> bool:
  return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], np.dtype)


def _zeros(template, size: int) -> np.ndarray:
  return np.zeros((size,) + template[1], template[0])


def _place(out: Any, part: Any, where: np.ndarray) -> None:
  if isinstance(out, Mapping):
    for key in out:
      _place(out[key], part[key], where)
  else:
    out[where] = part


def train_iterator(members: Sequence[LoadedMember], tasks: Sequence[Task], batch_size: int,
                   seed: int, rate: Rate, process_index: int = 0, process_count: int = 1, *,
                   per_batch: bool = False,
                   read_options: grain.ReadOptions | None = None) -> grain.DatasetIterator:
  """Endless mixed batches of this process's `batch_size // process_count` rows (see the module
  docstring); a grain iterator with `get_state`/`set_state`, savable with grain's orbax handler.

  Args:
    members: the members' training splits (`load_member(..., 'train', ...)`).
    tasks: the tasks whose label slots the batches carry (each labelled by some member).
    batch_size: global batch size; seed: in [0, 2**32).
    rate: `rate(i) -> weights [K]` over the members (`make_rate`).
    per_batch: draw one member per whole batch instead of one per example.
  """
  check_inputs(members)
  sizes = [pipeline.num_rows(m.columns) for m in members]
  ds = MixtureIndexBatches(sizes, batch_size, rate, seed, process_index, process_count,
                           per_batch)
  ds = ds.map(Assembler(members, tasks))
  read_options = read_options or grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  return iter(ds.to_iter_dataset(read_options))


# ---------------------------------------------------------------------------------------------
# Registered on import.

CENSUS_SPLIT_SEED = 20190516  # BERT and PALs' arXiv date; fixes the two halves of the train split.
_HALVES = (('income_half', 0.5), ('never_married_half', 0.5))

CENSUS_INCOME_SPLIT = register('census_income_split', [
    Member('income_half', 'census_income', ('income',),
           {'train': Carved('train', _HALVES, 'income_half', CENSUS_SPLIT_SEED),
            'validation': 'validation', 'test': 'test'}),
    Member('never_married_half', 'census_income', ('never_married',),
           {'train': Carved('train', _HALVES, 'never_married_half', CENSUS_SPLIT_SEED),
            'validation': 'validation', 'test': 'test'}),
], rate='proportional')
"""Census-Income's train split cut (seed `CENSUS_SPLIT_SEED`) into two disjoint halves, one
labelled only for `income`, the other only for `never_married`: two partially labelled tasks,
mixed in proportion to their sizes (equal halves, so ~B/2 examples of each per batch)."""
