"""experiments/notebooks/quickstart.ipynb runs: every code cell, in order, in one fresh Python
process started in the notebook's folder (as a Jupyter kernel would be), with few steps."""

import json
import os
import subprocess
import sys

import pytest

from tests.train.test_loop import REPO

NOTEBOOK = os.path.join(REPO, 'experiments', 'notebooks', 'quickstart.ipynb')


def code_cells(path):
  notebook = json.load(open(path))
  assert notebook['nbformat'] == 4
  cells = [''.join(c['source']) for c in notebook['cells'] if c['cell_type'] == 'code']
  # Saved without outputs, so the file only changes when its code does.
  assert all(not c['outputs'] and c['execution_count'] is None
             for c in notebook['cells'] if c['cell_type'] == 'code')
  return cells


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, census_builder, census_dir):
  cells = code_cells(NOTEBOOK)
  assert len(cells) >= 5
  script = tmp_path / 'quickstart.py'
  # A marker after each cell, so that a failure names the cell.
  script.write_text('\n'.join(f'{cell}\nprint("<<cell {i} done>>", flush=True)'
                              for i, cell in enumerate(cells)))
  env = dict(os.environ, QUICKSTART_STEPS='30', MPLBACKEND='Agg', TFDS_DATA_DIR=census_dir)
  env.pop('PYTHONPATH', None)  # The notebook must find the repository by itself.
  result = subprocess.run([sys.executable, str(script)], cwd=os.path.dirname(NOTEBOOK), env=env,
                          capture_output=True, text=True, timeout=900)
  done = result.stdout.count('<<cell ')
  assert result.returncode == 0, (f'cell {done} failed:\n{cells[done] if done < len(cells) else ""}'
                                  f'\n{result.stderr[-3000:]}')
  assert done == len(cells)
  assert 'test/income/auc' in result.stdout
  assert 'MGDA direction' in result.stdout
