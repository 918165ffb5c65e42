"""A training run started by another tool (``run_experiment``, the demo), followed in a few
lines: everything it prints goes to a log file, the terminal gets its progress.

A run of mmengine prints a line every few iterations, and the tools that start several runs
would fill screens with them. :func:`follow_run` keeps the run's whole output in a file and
prints, for a person watching:

- after each evaluation, one line: the epoch (or iteration), the first metric of every model
  (each member's primary one, and the ensemble's), the loss and the ETA mmengine estimates;
- between evaluations at most one progress line per ``every`` seconds;
- each warning the run gives, once (not those of installed libraries' own code, nor
  mmengine's notes about its API: they stay in the file);
- when the run fails, the end of its output (its one-line error, or a bug's traceback) and
  where the whole of it is.

Ctrl-C reaches the run as well, which stops with a checkpoint (:mod:`bikd.engine.signals`):
the follower waits for it and shows its last lines.
"""
import os
import re
import subprocess
import sys
import time
from typing import Callable, List, Optional

#: mmengine's training and evaluation lines: ``Epoch(train) [7][20/20]``, ``Iter(val) [3/3]``
_PROGRESS = re.compile(r'(Epoch|Iter)\((train|val)\)\s*((?:\[\s*\d+\])?\[\s*\d+/\s*\d+\])(.*)')
_VALUE = re.compile(r'([\w./-]+): (-?[\d.]+(?:e[-+]?\d+)?|nan|inf)')
_SKIPPED = ('time', 'data_time', 'lr', 'eta', 'memory')
#: mmengine's notes about its own API, in every run, and warnings raised in the code of
#: installed libraries (their own deprecations and hints): nothing a person watching can act on
_ENGINE_NOTES = ('will be deprecated', 'is the alias of', '`save_param_scheduler` is True',
                 '/site-packages/', '/.venv/src/')


def _position(kind: str, where: str) -> str:
    numbers = [int(n) for n in re.findall(r'\d+', where)]
    if kind == 'Epoch':
        return f'epoch {numbers[0]}' + (f' [{numbers[1]}/{numbers[2]}]'
                                         if numbers[1] != numbers[2] else '')
    return f'iteration {numbers[0]}/{numbers[1]}'


def summarise_line(line: str, state: dict) -> Optional[str]:
    """The terminal's line for one line of a run's output, or ``None``. ``state`` keeps the
    last training line's loss and ETA for the evaluation line that follows."""
    found = _PROGRESS.search(line)
    if found is None:
        return None
    kind, phase, where, rest = found.groups()
    values = dict(_VALUE.findall(rest))
    eta = re.search(r'eta: (\S+)', rest)
    if phase == 'train':
        state.update(loss=values.get('loss'), eta=eta.group(1) if eta else None,
                     where=_position(kind, where))
        return None
    first = {}
    for key, value in values.items():  # the first metric of each model
        model, _, metric = key.partition('/')
        if metric and model not in first and key not in _SKIPPED:
            first[model] = f'{key} {float(value):.2f}'
    if kind == 'Epoch':  # Epoch(val) [E][i/n]: after epoch E (0: before training)
        epoch = int(re.findall(r'\d+', where)[0])
        done = f'epoch {epoch}' if epoch else 'before training'
    else:  # Iter(val) [i/n] names no training iteration: the last one logged
        done = state.get('where', '').split(' [')[0] or 'before training'
    extra = [f'loss {float(state["loss"]):.4f}'] if state.get('loss') else []
    extra += [f'eta {state["eta"]}'] if state.get('eta') else []
    if not first:  # an evaluation's progress line, not its result
        return None
    state['printed'] = time.time()
    return f'{done}: ' + '  '.join(first.values()) + (f'  ({", ".join(extra)})' if extra else '')


def follow_run(command: List[str], log_file: str, echo: Callable[[str], None] = print,
               every: float = 30.0, cwd: Optional[str] = None, tail: int = 25) -> int:
    """Run ``command`` (a training run), its output into ``log_file`` and its progress to
    ``echo`` (see the module's description); returns its exit status."""
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    state, warned, last = {'printed': time.time()}, set(), []
    with open(log_file, 'w') as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, cwd=cwd,
                                env={**os.environ, 'PYTHONUNBUFFERED': '1'})
        lines = iter(proc.stdout)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                break
            except KeyboardInterrupt:  # the run has the Ctrl-C too: it stops with a checkpoint
                echo('  Ctrl-C: the run stops after its current iteration, with a checkpoint')
                continue
            log.write(line)
            last = (last + [line.rstrip('\n')])[-tail:]
            shown = summarise_line(line, state)
            if shown is None and ('Warning:' in line or ' - WARNING - ' in line) and \
                    line.strip() not in warned and \
                    not any(note in line for note in _ENGINE_NOTES):
                warned.add(line.strip())
                shown = line.strip()
            if shown is None and 'where' in state and time.time() - state['printed'] > every:
                state['printed'] = time.time()
                shown = f'{state["where"]}' + (f'  (loss {float(state["loss"]):.4f}'
                                                f', eta {state["eta"]})' if state.get('loss')
                                                and state.get('eta') else '')
            if shown:
                echo(f'  {shown}')
        code = proc.wait()
    if code:
        echo('\n'.join(f'  | {text}' for text in last))
        echo(f'  (the whole output: {log_file})')
    return code


def run_command(command: List[str], log_file: str, label: str,
                cwd: Optional[str] = None) -> int:
    """``command`` followed by :func:`follow_run`, with a line before and after."""
    start = time.time()
    print(label, flush=True)
    code = follow_run(command, log_file, echo=lambda text: print(text, flush=True), cwd=cwd)
    print(f'  {"finished" if code == 0 else f"stopped (exit status {code})"} in '
          f'{time.time() - start:.0f} s; output in {log_file}', flush=True)
    return code


def run_python(args: List[str], log_file: str, label: str, cwd: Optional[str] = None) -> int:
    """``python ARGS`` followed by :func:`follow_run`, with a line before and after."""
    return run_command([sys.executable, *args], log_file, label, cwd)
