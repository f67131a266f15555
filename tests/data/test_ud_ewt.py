"""UD English-EWT: the CoNLL-U parser, the encoding, the builder on a slice of the treebank,
per-token tasks (batches, loss, accuracy), and a smoke run of the training loop."""

import gzip
import os
import time

import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import data
from mtl_jax.data import registry
from mtl_jax.data import ud_ewt
from mtl_jax.errors import UserError
from mtl_jax.tasks import Task

# Two sentences: a multiword token (2-3), an empty node (3.1), a relation subtype, comments, a
# sentence without the final blank line, and CRLF line ends in the second sentence.
CONLLU = (
    '# sent_id = a-1\n'
    '# text = I don\'t know.\n'
    '1\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t4:nsubj\t_\n'
    '2-3\tdon\'t\t_\t_\t_\t_\t_\t_\t_\t_\n'
    '2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t4:aux\t_\n'
    '3\tn\'t\tnot\tPART\tRB\t_\t4\tadvmod\t4:advmod\t_\n'
    '3.1\tknow\tknow\tVERB\tVB\t_\t_\t_\t4:conj\t_\n'
    '4\tKnow\tknow\tVERB\tVB\t_\t0\troot\t0:root\tSpaceAfter=No\n'
    '5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t4:punct\t_\n'
    '\n'
    '# sent_id = a-2\r\n'
    '1\tJohn\tJohn\tPROPN\tNNP\t_\t2\tnsubj:pass\t2:nsubj:pass\t_\r\n'
    '2\tleft\tleave\tVERB\tVBD\t_\t0\troot\t0:root\t_\r\n'
)


def write_gz(path, text):
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    f.write(text)
  return str(path)


# ---------------------------------------------------------------------------------------------
# Parsing.


def test_parse_skips_comments_ranges_and_empty_nodes():
  sentences = ud_ewt.parse_conllu(CONLLU, 'x.conllu')
  assert [[w.form for w in s] for s in sentences] == [['I', 'do', "n't", 'Know', '.'],
                                                     ['John', 'left']]
  assert [w.upos for w in sentences[0]] == ['PRON', 'AUX', 'PART', 'VERB', 'PUNCT']
  assert [w.xpos for w in sentences[0]] == ['PRP', 'VBP', 'RB', 'VB', '.']
  assert [w.deprel for w in sentences[0]] == ['nsubj', 'aux', 'advmod', 'root', 'punct']
  # Subtypes are removed; CRLF does not leak into the last field.
  assert [w.deprel for w in sentences[1]] == ['nsubj', 'root']
  assert sentences[0][0].line == 3 and sentences[1][1].line == 13


@pytest.mark.parametrize('line, message', [
    ('1\tI\tI\tPRON\tPRP\t_\t0\troot\t_\n', 'line 2: expected 10 tab-separated'),
    ('2\tI\tI\tPRON\tPRP\t_\t0\troot\t_\t_\n', "line 2: word ID '2' where word 1"),
    ('x\tI\tI\tPRON\tPRP\t_\t0\troot\t_\t_\n', "line 2: word ID 'x'"),
])
def test_parse_errors_name_the_file_and_line(line, message):
  with pytest.raises(UserError, match=f'bad.conllu, {message}'):
    ud_ewt.parse_conllu('# c\n' + line, 'bad.conllu')


def test_read_errors_name_the_file(tmp_path):
  missing = str(tmp_path / 'missing.conllu.gz')
  with pytest.raises(UserError, match=f'{missing} is missing'):
    ud_ewt.read_conllu(missing)
  corrupt = tmp_path / 'corrupt.conllu.gz'
  corrupt.write_bytes(b'\x1f\x8b\x08\x00 this is not deflate data')
  with pytest.raises(UserError, match=f'{corrupt} is corrupt'):
    ud_ewt.read_conllu(str(corrupt))
  not_gzip = tmp_path / 'plain.conllu.gz'
  not_gzip.write_text(CONLLU)
  with pytest.raises(UserError, match=f'{not_gzip} is corrupt'):
    ud_ewt.read_conllu(str(not_gzip))
  empty = write_gz(tmp_path / 'empty.conllu.gz', '# only a comment\n\n')
  with pytest.raises(UserError, match=f'{empty} holds no sentences'):
    ud_ewt.read_conllu(empty)
  latin1 = tmp_path / 'latin1.conllu.gz'
  with gzip.open(latin1, 'wb') as f:
    f.write(CONLLU.replace('John', 'Jos\xe9').encode('latin-1'))
  with pytest.raises(UserError, match=f'{latin1} is corrupt'):
    ud_ewt.read_conllu(str(latin1))
  truncated = tmp_path / 'truncated.conllu.gz'
  truncated.write_bytes(gzip.compress(CONLLU.encode())[:-12])
  with pytest.raises(UserError, match=f'{truncated} is corrupt'):
    ud_ewt.read_conllu(str(truncated))


# ---------------------------------------------------------------------------------------------
# Encoding.


def word(form, upos='NOUN', xpos='NN', deprel='obj'):
  return ud_ewt.Word(form, upos, xpos, deprel, 0)


def test_vocabularies_come_from_train_with_min_count():
  train = [[word('The'), word('cat')], [word('the'), word('dog'), word('the')]]
  words, chars = ud_ewt.build_vocabularies(train, min_word_count=2, min_char_count=2)
  assert words == ['the']  # 'The'/'the' pooled by lower-casing; 'cat' and 'dog' seen once.
  # Characters keep their case; 'T' (once), 'c', 'a', 'd', 'o', 'g' (once each) are out.
  assert chars == ['e', 'h', 't']
  words, _ = ud_ewt.build_vocabularies(train, min_word_count=1, min_char_count=1)
  assert words == ['the', 'cat', 'dog']  # Most frequent first, ties alphabetically.


def test_encode_pads_masks_labels_and_counts_truncation():
  train = ud_ewt.parse_conllu(CONLLU, 'x')
  words, chars = ['know', 'i'], ['I', 'K', 'n', 'o', 'w']
  columns, stats = ud_ewt.encode(train, words, chars, max_len=4, max_word_len=3)
  # Sentence 1 has 5 words: truncated to 4.
  assert stats['truncated_sentences'] == 1 and stats['truncated_words'] == 1
  assert stats['num_words'] == 4 + 2
  np.testing.assert_array_equal(columns['length'], [4, 2])
  np.testing.assert_array_equal(columns['mask'], [[1, 1, 1, 1], [1, 1, 0, 0]])
  # Word ids: 'i' -> 3, 'know' (from 'Know', lower-cased) -> 2, others OOV (1); padding 0.
  np.testing.assert_array_equal(columns['tokens'], [[3, 1, 1, 2], [1, 1, 0, 0]])
  assert stats['oov_words'] == 4
  upos = ud_ewt.UPOS_TAGS
  np.testing.assert_array_equal(
      columns['upos'], [[upos.index(t) for t in ('PRON', 'AUX', 'PART', 'VERB')],
                        [upos.index('PROPN'), upos.index('VERB'), -1, -1]])
  deprel = ud_ewt.DEPRELS
  np.testing.assert_array_equal(columns['deprel'][1], [deprel.index('nsubj'), deprel.index('root'),
                                                      -1, -1])
  assert columns['xpos'][0, 1] == ud_ewt.XPOS_TAGS.index('VBP')
  # Characters: 'Know' is longer than 3: its first 1 and last 2 characters; 'd' of 'do' is
  # unknown (1); padding 0.
  char = {c: i + 2 for i, c in enumerate(chars)}
  np.testing.assert_array_equal(columns['chars'][0, 3], [char['K'], char['o'], char['w']])
  np.testing.assert_array_equal(columns['chars'][0, 0], [char['I'], 0, 0])
  np.testing.assert_array_equal(columns['chars'][0, 1], [1, char['o'], 0])
  assert not columns['chars'][1, 2:].any() and not columns['tokens'][1, 2:].any()
  assert stats['unseen_labels'] == {'upos': 0, 'xpos': 0, 'deprel': 0}


def test_unseen_labels_are_missing_and_counted():
  sentence = [word('a'), word('b', upos='NEWTAG'), word('c', deprel='brand_new')]
  columns, stats = ud_ewt.encode([sentence], ['a'], ['a'], max_len=4)
  np.testing.assert_array_equal(columns['upos'][0, :3] == -1, [False, True, False])
  np.testing.assert_array_equal(columns['deprel'][0, :3] == -1, [False, False, True])
  assert stats['unseen_labels'] == {'upos': 1, 'xpos': 0, 'deprel': 1}


def test_a_train_label_outside_the_declared_lists_names_file_and_line():
  train = ud_ewt.parse_conllu(CONLLU.replace('\tAUX\t', '\tAUXX\t'), 'train.conllu')
  with pytest.raises(UserError, match=r"train.conllu, line 5: upos label 'AUXX'"):
    ud_ewt.check_train_labels(train, 'train.conllu')


def test_clip_word_keeps_both_ends():
  assert ud_ewt.clip_word('short', 16) == 'short'
  assert ud_ewt.clip_word('internationalization', 8) == 'inte' + 'tion'
  assert ud_ewt.clip_word('abcdefg', 5) == 'ab' + 'efg'


# ---------------------------------------------------------------------------------------------
# The real treebank (parsing only: fast) and the builder on a slice of it.


@pytest.fixture(scope='module')
def treebank():
  return {split: ud_ewt.read_conllu(os.path.join(ud_ewt.RAW_DIR, name))
          for split, name in ud_ewt.FILES.items()}


def test_the_vendored_treebank(treebank):
  assert {s: len(v) for s, v in treebank.items()} == {
      'train': 12544, 'validation': 2001, 'test': 2077}
  assert sum(len(s) for s in treebank['train']) == 204_577
  # The declared label lists are exactly the train label sets.
  for task, labels in ud_ewt.LABELS.items():
    assert {getattr(w, task) for s in treebank['train'] for w in s} == set(labels), task
  assert len(ud_ewt.UPOS_TAGS) == 17 and len(ud_ewt.XPOS_TAGS) == 49 and len(ud_ewt.DEPRELS) == 36
  for split in ('validation', 'test'):
    for task, labels in ud_ewt.LABELS.items():
      assert {getattr(w, task) for s in treebank[split] for w in s} <= set(labels), (split, task)
  # MAX_LEN covers at least 99.9% of all sentences and every dev and test sentence.
  lengths = np.array([len(s) for v in treebank.values() for s in v])
  assert (lengths <= ud_ewt.MAX_LEN).mean() >= 0.999
  assert max(len(s) for split in ('validation', 'test') for s in treebank[split]) <= ud_ewt.MAX_LEN
  assert sum(len(s) > ud_ewt.MAX_LEN for s in treebank['train']) == 13


SLICE = {'train': 300, 'validation': 60, 'test': 60}


@pytest.fixture(scope='module')
def slice_sentences(treebank):
  """The first sentences of each file; of train and test, only those of at most 32 words, so
  that every training batch has one shape (one compile of the train step in the smoke test),
  while validation batches keep the treebank's mix of lengths."""
  out = {}
  for split, n in SLICE.items():
    keep = [s for s in treebank[split] if split == 'validation' or len(s) <= 32]
    out[split] = keep[:n]
  return out


@pytest.fixture(scope='module')
def slice_builder(tmp_path_factory, slice_sentences):
  """The builder prepared on the first sentences of each file, written back as CoNLL-U.

  The real builder class reads them (a subclass would be another tfds dataset name), so the
  training loop finds this build in the same data_dir.
  """
  raw = tmp_path_factory.mktemp('ud_raw')
  for split, sentences in slice_sentences.items():
    text = '\n'.join(''.join(f'{i}\t{w.form}\t_\t{w.upos}\t{w.xpos}\t_\t0\t{w.deprel}\t_\t_\n'
                             for i, w in enumerate(s, 1)) for s in sentences)
    write_gz(raw / ud_ewt.FILES[split], '# newdoc\n' + text)
  start = time.perf_counter()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(ud_ewt.UdEnglishEwt, 'RAW_DIR', str(raw))
    builder = data.prepare(ud_ewt.UdEnglishEwt, str(tmp_path_factory.mktemp('ud_tfds')))
  print(f'\nud_english_ewt slice prepared in {time.perf_counter() - start:.1f} s')
  return builder


def test_builder_on_a_slice(slice_builder, slice_sentences):
  metadata = slice_builder.info.metadata
  assert metadata['split_sizes'] == SLICE
  words, chars = ud_ewt.build_vocabularies(slice_sentences['train'])
  assert metadata['words'] == words and metadata['chars'] == chars
  assert metadata['vocab_size'] == len(words) + 2
  for split in SLICE:
    columns = data.load_columns(slice_builder, split)
    sentences = slice_sentences[split]
    assert columns['tokens'].shape == (SLICE[split], ud_ewt.MAX_LEN)
    assert columns['chars'].shape == (SLICE[split], ud_ewt.MAX_LEN, ud_ewt.MAX_WORD_LEN)
    np.testing.assert_array_equal(columns['sentence_index'], np.arange(SLICE[split]))
    np.testing.assert_array_equal(columns['mask'].sum(1), [len(s) for s in sentences])
    data.check_columns(columns, ud_ewt.TASKS, split)
    for i in (0, len(sentences) // 2, len(sentences) - 1):
      s = sentences[i]
      for task, labels in ud_ewt.LABELS.items():
        assert [labels[k] for k in columns[task][i, :len(s)]] == [getattr(w, task) for w in s]
        assert np.all(columns[task][i, len(s):] == -1)
      vocab = {w: k + 2 for k, w in enumerate(words)}
      assert list(columns['tokens'][i, :len(s)]) == [vocab.get(w.form.lower(), 1) for w in s]
  # Vocabulary from train only: a dev word not seen twice in train is out of vocabulary.
  train_forms = [w.form.lower() for s in slice_sentences['train'] for w in s]
  dev_only = {w.form.lower() for s in slice_sentences['validation'] for w in s} - set(train_forms)
  assert dev_only and not dev_only & set(metadata['words'])
  assert metadata['oov_words']['train'] == sum(train_forms.count(w) < 2 for w in train_forms)


def test_builder_names_a_missing_file(tmp_path):
  class Missing(ud_ewt.UdEnglishEwt):
    RAW_DIR = str(tmp_path / 'nowhere')
  with pytest.raises(UserError, match=r'nowhere/en_ewt-ud-train.conllu.gz is missing'):
    data.prepare(Missing, str(tmp_path / 'tfds'))


# ---------------------------------------------------------------------------------------------
# Per-token tasks.


def test_token_batch_masks_padding_and_missing_labels():
  spec = registry.get('ud_english_ewt')
  rows = {
      'tokens': np.array([[5, 6, 0], [7, 0, 0], [0, 0, 0]], np.int32),
      'chars': np.zeros((3, 3, 2), np.uint8),
      'mask': np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], bool),  # Row 2: eval padding.
      'upos': np.array([[3, 4, -1], [-1, -1, -1], [0, 0, 0]], np.int32),
      'xpos': np.array([[1, 2, -1], [5, -1, -1], [0, 0, 0]], np.int32),
      'deprel': np.array([[1, 2, -1], [5, -1, -1], [0, 0, 0]], np.int32),
  }
  batch = spec.to_batch(rows)
  assert list(batch['inputs']) == ['tokens', 'chars', 'mask']
  assert list(batch['labels']) == ['upos', 'xpos', 'deprel']
  np.testing.assert_array_equal(batch['label_mask']['upos'], [[1, 1, 0], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(batch['label_mask']['xpos'], [[1, 1, 0], [1, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(batch['labels']['upos'], [[3, 4, 0], [0, 0, 0], [0, 0, 0]])
  assert batch['labels']['upos'].dtype == np.int32


def test_token_batch_cuts_the_token_axis_to_a_bucket():
  spec = registry.get('ud_english_ewt')
  assert spec.time_buckets == ud_ewt.TIME_BUCKETS == (32, 48, 64)
  n, length = 4, ud_ewt.MAX_LEN
  rng = np.random.default_rng(0)
  for longest, expected in ((1, 32), (32, 32), (33, 48), (64, 64), (65, 88), (88, 88)):
    lengths = np.array([longest, 1, longest // 2, 0])
    mask = np.arange(length)[None] < lengths[:, None]
    rows = {'tokens': np.where(mask, rng.integers(1, 50, (n, length)), 0).astype(np.int32),
            'chars': np.where(mask[..., None], 3, 0).astype(np.uint8).repeat(16, -1),
            'mask': mask}
    for task in ('upos', 'xpos', 'deprel'):
      rows[task] = np.where(mask, rng.integers(0, 17, (n, length)), -1).astype(np.int32)
    batch = spec.to_batch(rows)
    assert batch['inputs']['tokens'].shape == (n, expected), longest
    assert batch['inputs']['chars'].shape == (n, expected, 16)
    for task in ('upos', 'xpos', 'deprel'):
      assert batch['labels'][task].shape == batch['label_mask'][task].shape == (n, expected)
      # Nothing real is cut.
      assert batch['label_mask'][task].sum() == lengths.sum()
      np.testing.assert_array_equal(batch['labels'][task][batch['label_mask'][task]],
                                    rows[task][mask])
  # The tasks a batch carries can be a subset (single-task runs).
  batch = spec.to_batch(rows, [spec.tasks[1]])
  assert list(batch['labels']) == ['xpos']


def test_token_loss_and_accuracy_count_only_real_tokens():
  task = Task('tag', 'multiclass', 3, per_token=True)
  probabilities = np.array([
      [[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
      [[0.25, 0.5, 0.25], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05]],
  ], np.float32)
  logits = np.log(probabilities)
  labels = np.array([[0, 1, 2], [2, 0, 7]], np.int32)  # 7: garbage under the mask.
  mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
  # Three real tokens, each weighing the same (not the mean of per-sentence means, which
  # would be (-(log .5 + log .8) / 2 - log .25) / 2).
  expected = -np.mean(np.log([0.5, 0.8, 0.25]))
  np.testing.assert_allclose(
      task.loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask)), expected,
      rtol=1e-5)
  # Argmax: [[0, 1, 2], [1, 0, 0]]; real tokens right, right, wrong.
  assert task.evaluate(logits, labels, mask)['accuracy'] == pytest.approx(2 / 3)
  labels[1, 0] = 1
  assert task.evaluate(logits, labels, mask)['accuracy'] == 1.0
  # Every token real: [1, 2] (label 7, argmax 0) is wrong; the others right.
  assert task.evaluate(logits, labels, np.ones_like(mask))['accuracy'] == pytest.approx(5 / 6)
  assert task.evaluate(logits, labels, None)['accuracy'] == pytest.approx(5 / 6)


def test_token_task_checks():
  task = Task('tag', 'multiclass', 3, per_token=True)
  labels = np.array([[0, 2, -1], [1, -1, -1]])
  task.check_labels(labels, np.array([True, True]), 'split x')  # -1 is padding, not an error.
  with pytest.raises(UserError, match=r"task 'tag': label 3 out of range in split 'val'"):
    task.check_labels(np.array([[0, 3, -1]]), None, "split 'val'")
  with pytest.raises(UserError, match='per-token'):
    task.check_labels(np.array([0, 1]), None, 'x')
  # A pooled encoder output for a per-token task: a clear error, not a broadcasting accident.
  with pytest.raises(UserError, match=r"task 'tag' is per-token.*outputs \[2, 3\]"):
    task.loss(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3), bool))
  with pytest.raises(UserError, match='per-token task must be one of'):
    Task('bad', 'regression', per_token=True)


# ---------------------------------------------------------------------------------------------
# The token input layer.


def test_token_input_layer_from_the_config():
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from mtl_jax.models import inputs  # pylint: disable=import-outside-toplevel

  class Builder:  # What `for_dataset` reads of a prepared builder.
    class info:  # pylint: disable=invalid-name
      metadata = {'vocab_size': 50, 'char_vocab_size': 20, 'max_len': 88, 'max_word_len': 16}

  spec = registry.get('ud_english_ewt')
  config = ml_collections.ConfigDict({
      'token_embedding': {'embed_dim': 6},
      'char_cnn': {'embed_dim': 3, 'filters': 5, 'width': 3, 'dropout': 0.5}})
  layer = inputs.for_dataset(spec, Builder, config)
  rng = np.random.default_rng(0)
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
  chars = rng.integers(1, 20, (2, 4, 16)).astype(np.uint8)
  chars[..., 5:] = 0  # Five-character words.
  x = {'tokens': rng.integers(0, 50, (2, 4)).astype(np.int32), 'chars': chars, 'mask': mask}
  variables = layer.init(jax.random.PRNGKey(0), x)
  out = layer.apply(variables, x)
  assert out['features'].shape == (2, 4, 6 + 5)
  np.testing.assert_array_equal(out['mask'], mask)
  assert not np.asarray(out['features'])[~mask].any()  # Zero at padding.
  # A word's character features depend on its characters only: the same word in another place
  # of another sentence gets the same features.
  x['chars'][1, 0] = x['chars'][0, 2]
  out = np.asarray(layer.apply(variables, x)['features'])
  np.testing.assert_allclose(out[1, 0, 6:], out[0, 2, 6:], rtol=1e-6)
  # Dropout on the character features in training only.
  train = layer.apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  assert (np.asarray(train['features'])[..., 6:][mask] == 0).mean() > 0.2
  config.char_cnn.filters = 0  # No character CNN: the word embedding alone.
  assert inputs.for_dataset(spec, Builder, config).apply(
      {'params': variables['params']['token_layer']}, x)['features'].shape == (2, 4, 6)
  config.char_cnn.kernel = 3
  config.char_cnn.filters = 5
  with pytest.raises(UserError, match=r'config.char_cnn has unknown option\(s\) kernel'):
    inputs.for_dataset(spec, Builder, config)
  with pytest.raises(UserError, match='config.token_embedding.vocab_size is set by the dataset'):
    inputs.for_dataset(spec, Builder, ml_collections.ConfigDict(
        {'token_embedding': {'vocab_size': 3}}))


# ---------------------------------------------------------------------------------------------
# End to end.


@pytest.mark.slow
def test_smoke_config_trains_and_evaluates(slice_builder, tmp_path):
  from experiments.configs import ud_ewt as ud_config  # pylint: disable=import-outside-toplevel
  from mtl_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = ud_config.get_config('smoke')
  config.data_dir = os.path.dirname(os.path.dirname(os.fspath(slice_builder.data_path)))
  start = time.perf_counter()
  final = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  print(f'\nsmoke run: {time.perf_counter() - start:.1f} s')
  for split in ('val', 'test'):
    for task in ('upos', 'xpos', 'deprel'):
      assert 0.0 <= final[f'{split}/{task}/accuracy'] <= 1.0
      assert np.isfinite(final[f'{split}/{task}/loss'])
  assert final['best_step'] in (3, 6) and final['skipped_steps'] == 0


def test_evaluation_does_not_depend_on_how_the_split_is_batched(slice_builder):
  """Eval batches of 16 sentences are cut to different lengths (32 or 48 positions here); the
  metrics must equal those of one batch of the whole split."""
  import jax  # pylint: disable=import-outside-toplevel
  from experiments.configs import ud_ewt as ud_config  # pylint: disable=import-outside-toplevel
  from mtl_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = ud_config.get_config('smoke')
  config.data_dir = os.path.dirname(os.path.dirname(os.fspath(slice_builder.data_path)))
  s = loop.setup(config)
  example = s.spec.to_batch(data.first_rows(s.columns['train'], 8))
  variables = s.model.init(jax.random.PRNGKey(1), example['inputs'])
  predict = jax.jit(lambda v, x: s.model.apply(v, x, train=False))
  lengths = {s.spec.to_batch(rows)['inputs']['tokens'].shape[1]
             for rows, _ in data.eval_batches(s.columns['validation'], 16)}
  assert len(lengths) > 1, lengths  # Else this test would not test the padding of outputs.
  results = {}
  for size in (16, 64):
    with config.unlocked():
      config.eval_batch_size = size
    results[size] = loop.evaluate(s, variables, 'validation', predict)
  assert results[16].keys() == results[64].keys()
  for key, value in results[16].items():
    np.testing.assert_allclose(value, results[64][key], rtol=1e-5, err_msg=key)
