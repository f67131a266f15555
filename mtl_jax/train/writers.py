"""Metrics to TensorBoard event files (tensorboardX: no TensorFlow needed) and JSON lines."""

import json
import math
import os
import sys
import time

import jax
from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes scalars from process 0 only; other processes get a no-op writer."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(logdir=os.path.join(workdir, 'tensorboard'))
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled or not scalars:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    for key, value in clean.items():
      self._tb.add_scalar(key, value, global_step=step)
    record = {'step': int(step), 'time': time.time(),
              **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()

  def flush(self):
    if self.enabled:
      self._tb.flush()

  def close(self):
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


class Progress:
  """A console line with step, steps/s, ETA and the latest losses."""

  def __init__(self, total_steps: int, start_step: int, prefix: str = ''):
    self.total, self.prefix = total_steps, prefix
    self.last_step, self.last_time = start_step, time.perf_counter()
    self.enabled = jax.process_index() == 0

  def update(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    eta = (self.total - step) / rate if rate > 0 else float('inf')
    eta_text = time.strftime('%H:%M:%S', time.gmtime(eta)) if math.isfinite(eta) else '?'
    shown = '  '.join(f'{k}={v:.4g}' for k, v in scalars.items())
    print(f'{self.prefix}step {step}/{self.total}  {rate:.1f} steps/s  ETA {eta_text}  {shown}',
          file=sys.stdout, flush=True)
