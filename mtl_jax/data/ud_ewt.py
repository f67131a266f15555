"""Universal Dependencies English-EWT as a TFDS builder: per-token UPOS, XPOS and DEPREL tagging.

The treebank is vendored in the package (`raw/ud_english_ewt/en_ewt-ud-{train,dev,test}.conllu.gz`,
UD English-EWT v2.15, CC BY-SA 4.0; see `raw/ud_english_ewt/ATTRIBUTION.md`). No download happens:
`_split_generators` reads those files. The treebank's own train/dev/test become the splits
'train'/'validation'/'test' (12,544 / 2,001 / 2,077 sentences).

CoNLL-U parsing (`parse_conllu`): comment lines (`#`) are skipped, and so are multiword-token
ranges (`1-2`, the surface token "don't" over the words "do" "n't") and empty nodes (`8.1`, used
only by enhanced dependencies): an example is the sentence's sequence of syntactic words, the units
that carry UPOS, XPOS and DEPREL. A malformed line raises a UserError naming the file and line.

Examples (one per sentence), padded or truncated to `MAX_LEN` = 88 words, which covers 99.92% of
the treebank's sentences (every dev and test sentence; 13 of the 12,544 train sentences are longer
and are truncated, which is counted in the metadata and logged):
  * `tokens` int32 [T]: the lower-cased word form's index in the word vocabulary: the train
    split's forms seen at least `MIN_WORD_COUNT` = 2 times, most frequent first, from index 2;
    index 1 (`OOV`) is every other form, index 0 padding. Lower-casing keeps the vocabulary small;
    the case is still in `chars`.
  * `chars` uint8 [T, `MAX_WORD_LEN` = 16]: the form's characters (original case) as indices into
    the character vocabulary (train characters seen at least `MIN_CHAR_COUNT` = 2 times, sorted;
    index 1 any other character, 0 padding). A form longer than 16 characters (0.16% of train
    words) keeps its first 8 and last 8, so prefixes and suffixes both survive.
  * `mask` bool [T]: True on the sentence's words, False on padding.
  * `upos`, `xpos`, `deprel` int32 [T]: class indices into `UPOS_TAGS` (the 17 universal POS tags),
    `XPOS_TAGS` (the 49 Penn-Treebank-style tags of EWT) and `DEPRELS` (the 36 universal
    relations used in EWT, subtypes removed: `nmod:poss` counts as `nmod`, as in the CoNLL 2018
    shared task's LAS; with subtypes EWT has 51 labels); -1 on padding.
  * `length` int32: the number of words kept; `sentence_index` int64: the sentence's 0-based
    position in its file (not inputs: for tracing an example back to its source).

Label vocabularies: the class lists are module constants so that the tasks' sizes are known
before any data is read; they are exactly the label sets of the v2.15 train split. When building,
every train label must be in them (a train label outside them means the treebank changed: a
UserError naming the file and line). A dev or test label outside them (none in v2.15) cannot be
predicted by any model trained on train; it becomes -1 (missing: not in the loss, not scored), is
counted in the metadata (`unseen_labels`) and is logged.

Metadata (`builder.info.metadata`): `vocab_size` and `char_vocab_size` (counting padding and the
OOV index), `words`, `chars`, `upos_tags`, `xpos_tags`, `deprels`, `max_len`, `max_word_len`,
`min_word_count`, `min_char_count`, `split_sizes`, `num_words` (words kept per split), `oov_words`
(per split), `truncated_sentences` and `truncated_words` (per split), `unseen_labels`
({split: {task: count}}).
"""

import collections
import gzip
import os
import re
import zlib
from typing import NamedTuple, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from mtl_jax.data import pipeline
from mtl_jax.errors import UserError
from mtl_jax.tasks import Task

RAW_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'raw', 'ud_english_ewt')
FILES = {
    'train': 'en_ewt-ud-train.conllu.gz',
    'validation': 'en_ewt-ud-dev.conllu.gz',
    'test': 'en_ewt-ud-test.conllu.gz',
}

MAX_LEN = 88
# Batches are cut to the first of these lengths that holds their longest sentence (see
# `registry.token_batch`): a random batch of 32 EWT sentences needs 32 positions 4% of the time,
# 48 47%, 64 32%, all 88 17%, which makes a BiLSTM step 1.5x faster on average.
TIME_BUCKETS = (32, 48, 64)
MAX_WORD_LEN = 16
MIN_WORD_COUNT = 2
MIN_CHAR_COUNT = 2
PAD = 0
OOV = 1

# The 17 universal POS tags (https://universaldependencies.org/u/pos/), sorted.
UPOS_TAGS = ('ADJ', 'ADP', 'ADV', 'AUX', 'CCONJ', 'DET', 'INTJ', 'NOUN', 'NUM', 'PART', 'PRON',
             'PROPN', 'PUNCT', 'SCONJ', 'SYM', 'VERB', 'X')
# EWT's language-specific tags (Penn Treebank plus ADD, AFX, GW, HYPH, NFP), sorted.
XPOS_TAGS = ('$', "''", ',', '-LRB-', '-RRB-', '.', ':', 'ADD', 'AFX', 'CC', 'CD', 'DT', 'EX', 'FW',
             'GW', 'HYPH', 'IN', 'JJ', 'JJR', 'JJS', 'LS', 'MD', 'NFP', 'NN', 'NNP', 'NNPS', 'NNS',
             'PDT', 'POS', 'PRP', 'PRP$', 'RB', 'RBR', 'RBS', 'RP', 'SYM', 'TO', 'UH', 'VB', 'VBD',
             'VBG', 'VBN', 'VBP', 'VBZ', 'WDT', 'WP', 'WP$', 'WRB', '``')
# The universal relations EWT uses (all of UD's 37 but `clf`), without subtypes, sorted.
DEPRELS = ('acl', 'advcl', 'advmod', 'amod', 'appos', 'aux', 'case', 'cc', 'ccomp', 'compound',
           'conj', 'cop', 'csubj', 'dep', 'det', 'discourse', 'dislocated', 'expl', 'fixed',
           'flat', 'goeswith', 'iobj', 'list', 'mark', 'nmod', 'nsubj', 'nummod', 'obj', 'obl',
           'orphan', 'parataxis', 'punct', 'reparandum', 'root', 'vocative', 'xcomp')

LABELS = {'upos': UPOS_TAGS, 'xpos': XPOS_TAGS, 'deprel': DEPRELS}

TASKS = (
    Task('upos', 'multiclass', len(UPOS_TAGS), metrics=('accuracy', 'f1'), per_token=True),
    Task('xpos', 'multiclass', len(XPOS_TAGS), metrics=('accuracy', 'f1'), per_token=True),
    Task('deprel', 'multiclass', len(DEPRELS), metrics=('accuracy', 'f1'), per_token=True),
)

_FIX = ('restore it from the repository (git checkout -- mtl_jax/data/raw/ud_english_ewt) or '
        'reinstall mtl_jax')
_WORD_ID = re.compile(r'[1-9][0-9]*')
_RANGE_ID = re.compile(r'[1-9][0-9]*-[1-9][0-9]*')
_EMPTY_ID = re.compile(r'[0-9]+\.[1-9][0-9]*')


class Word(NamedTuple):
  """One syntactic word of a CoNLL-U sentence (the columns this dataset uses)."""

  form: str
  upos: str
  xpos: str
  deprel: str  # Without its subtype.
  line: int  # 1-based line in the file, for error messages.


def parse_conllu(text: str, path: str) -> list[list[Word]]:
  """The sentences of a CoNLL-U document, each a list of its syntactic words.

  Comment lines, multiword-token ranges and empty nodes are skipped. Raises a UserError naming
  `path` and the line when a word line does not have 10 tab-separated fields or its ID is not
  the next word's number.
  """
  sentences, words = [], []
  for number, line in enumerate(text.split('\n'), 1):
    line = line.rstrip('\r')
    if not line.strip():
      if words:
        sentences.append(words)
        words = []
      continue
    if line.startswith('#'):
      continue
    fields = line.split('\t')
    if len(fields) != 10:
      raise UserError(f'{path}, line {number}: expected 10 tab-separated CoNLL-U fields, found '
                      f'{len(fields)}: {line[:80]!r}')
    word_id = fields[0]
    if _RANGE_ID.fullmatch(word_id) or _EMPTY_ID.fullmatch(word_id):
      continue
    if not _WORD_ID.fullmatch(word_id) or int(word_id) != len(words) + 1:
      raise UserError(f'{path}, line {number}: word ID {word_id!r} where word {len(words) + 1} '
                      f'of the sentence was expected')
    deprel = fields[7].split(':', 1)[0]
    words.append(Word(fields[1], fields[3], fields[4], deprel, number))
  if words:  # A file may end without the final blank line.
    sentences.append(words)
  return sentences


def read_conllu(path: str) -> list[list[Word]]:
  """The sentences of a gzip-compressed CoNLL-U file; a UserError naming `path` if it is missing,
  corrupt, not UTF-8, malformed or empty."""
  if not os.path.isfile(path):
    raise UserError(f'ud_english_ewt: raw data file {path} is missing; {_FIX}')
  try:
    with gzip.open(path, 'rt', encoding='utf-8') as f:
      text = f.read()
  except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
    raise UserError(f'ud_english_ewt: raw data file {path} is corrupt ({e}); {_FIX}') from None
  sentences = parse_conllu(text, path)
  if not sentences:
    raise UserError(f'ud_english_ewt: raw data file {path} holds no sentences; {_FIX}')
  return sentences


def normalize(form: str) -> str:
  """The key of a form in the word vocabulary."""
  return form.lower()


def clip_word(form: str, max_word_len: int = MAX_WORD_LEN) -> str:
  """The characters stored for a form: all of them, or the first and last halves if too long."""
  if len(form) <= max_word_len:
    return form
  half = max_word_len // 2
  return form[:half] + form[len(form) - (max_word_len - half):]


def build_vocabularies(train: Sequence[Sequence[Word]], min_word_count: int = MIN_WORD_COUNT,
                       min_char_count: int = MIN_CHAR_COUNT) -> tuple[list[str], list[str]]:
  """(words, chars) from the train sentences only; word i has index i + 2, char i index i + 2.

  Words are lower-cased forms seen at least `min_word_count` times, most frequent first (ties
  alphabetically); chars are characters of the forms seen at least `min_char_count` times, sorted.
  """
  word_counts = collections.Counter(normalize(w.form) for s in train for w in s)
  char_counts = collections.Counter(c for s in train for w in s for c in clip_word(w.form))
  words = sorted((w for w, n in word_counts.items() if n >= min_word_count),
                 key=lambda w: (-word_counts[w], w))
  chars = sorted(c for c, n in char_counts.items() if n >= min_char_count)
  if len(chars) + 2 > 256:  # `chars` is stored as uint8.
    raise UserError(f'ud_english_ewt: {len(chars)} characters seen {min_char_count}+ times in '
                    f'train do not fit a uint8 index; raise min_char_count')
  return words, chars


def check_train_labels(train: Sequence[Sequence[Word]], path: str) -> None:
  """UserError naming `path` and the line of the first train label outside `LABELS`."""
  for sentence in train:
    for word in sentence:
      for task, labels in LABELS.items():
        value = getattr(word, task)
        if value not in labels:
          raise UserError(
              f'{path}, line {word.line}: {task} label {value!r} is not one of the {len(labels)} '
              f'labels mtl_jax.data.ud_ewt declares for this treebank version; a new treebank '
              f'version needs a new LABELS list (and builder VERSION)')


def encode(sentences: Sequence[Sequence[Word]], words: Sequence[str], chars: Sequence[str],
           max_len: int = MAX_LEN, max_word_len: int = MAX_WORD_LEN) -> tuple[dict, dict]:
  """One split's sentences as padded columns, and counts for the metadata.

  Returns (columns, stats): columns as described in the module docstring; stats has
  `truncated_sentences`, `truncated_words`, `num_words`, `oov_words` and `unseen_labels`
  ({task: count} of labels outside `LABELS`, stored as -1).
  """
  n = len(sentences)
  word_index = {w: i + 2 for i, w in enumerate(words)}
  char_index = {c: i + 2 for i, c in enumerate(chars)}
  label_index = {task: {label: i for i, label in enumerate(labels)}
                 for task, labels in LABELS.items()}
  columns = {
      'tokens': np.full((n, max_len), PAD, np.int32),
      'chars': np.full((n, max_len, max_word_len), PAD, np.uint8),
      'mask': np.zeros((n, max_len), bool),
      'upos': np.full((n, max_len), -1, np.int32),
      'xpos': np.full((n, max_len), -1, np.int32),
      'deprel': np.full((n, max_len), -1, np.int32),
      'length': np.zeros(n, np.int32),
      'sentence_index': np.arange(n, dtype=np.int64),
  }
  stats = {'truncated_sentences': 0, 'truncated_words': 0, 'num_words': 0, 'oov_words': 0,
           'unseen_labels': {task: 0 for task in LABELS}}
  for i, sentence in enumerate(sentences):
    if len(sentence) > max_len:
      stats['truncated_sentences'] += 1
      stats['truncated_words'] += len(sentence) - max_len
    kept = sentence[:max_len]
    columns['length'][i] = len(kept)
    columns['mask'][i, :len(kept)] = True
    for t, word in enumerate(kept):
      token = word_index.get(normalize(word.form), OOV)
      stats['oov_words'] += token == OOV
      columns['tokens'][i, t] = token
      form = clip_word(word.form, max_word_len)
      columns['chars'][i, t, :len(form)] = [char_index.get(c, OOV) for c in form]
      for task, index in label_index.items():
        label = index.get(getattr(word, task), -1)
        stats['unseen_labels'][task] += label == -1
        columns[task][i, t] = label
    stats['num_words'] += len(kept)
  stats['oov_words'] = int(stats['oov_words'])
  stats['unseen_labels'] = {task: int(c) for task, c in stats['unseen_labels'].items()}
  return columns, stats


class UdEnglishEwt(pipeline.LocalBuilder):
  """UD English-EWT, per-token UPOS/XPOS/DEPREL tagging; see the module docstring."""

  name = 'ud_english_ewt'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'UD English-EWT v2.15; max 88 words, 16 characters per word.'}
  # Class attribute so that tests can point it elsewhere (e.g. at a few sentences of each file).
  RAW_DIR = RAW_DIR

  def _info(self) -> tfds.core.DatasetInfo:
    # `self.dataset_info_from_configs` looks for files inside the tfds package; build it directly.
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'tokens': tfds.features.Tensor(shape=(MAX_LEN,), dtype=np.int32),
            'chars': tfds.features.Tensor(shape=(MAX_LEN, MAX_WORD_LEN), dtype=np.uint8),
            'mask': tfds.features.Tensor(shape=(MAX_LEN,), dtype=np.bool_),
            'upos': tfds.features.Tensor(shape=(MAX_LEN,), dtype=np.int32),
            'xpos': tfds.features.Tensor(shape=(MAX_LEN,), dtype=np.int32),
            'deprel': tfds.features.Tensor(shape=(MAX_LEN,), dtype=np.int32),
            'length': tfds.features.Scalar(dtype=np.int32),
            'sentence_index': tfds.features.Scalar(dtype=np.int64),
        }),
        homepage='https://universaldependencies.org/treebanks/en_ewt/',
        citation=('Silveira et al., "A Gold Standard Dependency Corpus for English", LREC 2014; '
                  'Universal Dependencies English-EWT v2.15, CC BY-SA 4.0.'),
        license='CC BY-SA 4.0',
        disable_shuffling=True,  # Keep the treebank's sentence order.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The raw files are vendored; nothing is downloaded.
    paths = {split: os.path.join(self.RAW_DIR, name) for split, name in FILES.items()}
    sentences = {split: read_conllu(path) for split, path in paths.items()}
    check_train_labels(sentences['train'], paths['train'])
    words, chars = build_vocabularies(sentences['train'])
    columns, stats = {}, {}
    for split, split_sentences in sentences.items():
      columns[split], stats[split] = encode(split_sentences, words, chars)
      if stats[split]['truncated_sentences']:
        logging.warning('ud_english_ewt: %d %s sentences are longer than %d words and were '
                        'truncated (%d words dropped)', stats[split]['truncated_sentences'],
                        split, MAX_LEN, stats[split]['truncated_words'])
      for task, count in stats[split]['unseen_labels'].items():
        if count:
          logging.warning('ud_english_ewt: %d %s words have a %s label unseen in train; they '
                          'are stored as missing (-1) and not scored', count, split, task)
    self.info.metadata.update({
        'vocab_size': len(words) + 2,
        'char_vocab_size': len(chars) + 2,
        'words': words,
        'chars': chars,
        'upos_tags': list(UPOS_TAGS),
        'xpos_tags': list(XPOS_TAGS),
        'deprels': list(DEPRELS),
        'max_len': MAX_LEN,
        'max_word_len': MAX_WORD_LEN,
        'min_word_count': MIN_WORD_COUNT,
        'min_char_count': MIN_CHAR_COUNT,
        'split_sizes': {split: len(s) for split, s in sentences.items()},
        **{key: {split: stats[split][key] for split in stats}
           for key in ('num_words', 'oov_words', 'truncated_sentences', 'truncated_words',
                       'unseen_labels')},
    })
    return {split: self._generate_examples(columns[split]) for split in FILES}

  def _generate_examples(self, columns):
    for i in range(len(columns['length'])):
      yield i, {key: value[i] for key, value in columns.items()}
