"""The Python blocks of the docs marked `<!-- run -->` run as written."""

import os
import re

import pytest

from tests.train.test_loop import REPO

DOCS = os.path.join(REPO, 'docs')
BLOCK = re.compile(r'<!-- run -->\s*```python\n(.*?)```', re.DOTALL)


def runnable_blocks():
  for name in sorted(os.listdir(DOCS)):
    if name.endswith('.md'):
      text = open(os.path.join(DOCS, name)).read()
      for i, block in enumerate(BLOCK.findall(text)):
        yield pytest.param(block, id=f'{name}-{i}')


@pytest.mark.parametrize('block', list(runnable_blocks()))
def test_doc_block_runs(block):
  exec(compile(block, '<doc>', 'exec'), {'__name__': '__doc_block__'})


def test_guide_has_a_runnable_block():
  assert any('GUIDE.md' in p.id for p in runnable_blocks())
