"""The experiments package called directly (no subprocess): a report and a grid table made
from recorded digits runs equal, byte for byte, what ``tools/run_experiment.py`` wrote from
the same runs before its library moved into :mod:`bikd.experiments` (the files in
``tests/data/experiment_golden``, written by the tool of commit acbe787); planning, seeds,
statuses, the launcher's command and the partner ranking against independent counts."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT

GOLDEN = os.path.join(ROOT, 'tests', 'data', 'experiment_golden')
CONFIG = os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml')
METHODS = ['bikd', 'kldp', 'independent']


def data_opts(digits_root):
    return [f'train_dataloader.dataset.data_root={digits_root}',
            f'val_dataloader.dataset.data_root={digits_root}']


def fill(plan):
    """The recorded runs' files (summary.json, per_sample_before.npz) into a plan's work_dirs,
    as if they had just finished."""
    for run in plan.runs:
        os.makedirs(plan.work(run), exist_ok=True)
        source = os.path.join(GOLDEN, 'runs', run)
        for name in os.listdir(source):
            shutil.copy(os.path.join(source, name), plan.work(run))


def test_a_report_from_recorded_runs_is_the_one_the_tool_wrote_before(digits_root, tmp_path):
    from bikd.experiments.plan import plan_config
    from bikd.experiments.report import report_config
    plan = plan_config(CONFIG, METHODS, str(tmp_path / 'exp'), data_opts(digits_root),
                       seeds=[0, 1])
    assert list(plan.runs) == ['bikd.seed0', 'kldp_resnet.seed0', 'kldp_convnext.seed0',
                               'independent.seed0', 'bikd.seed1', 'kldp_resnet.seed1',
                               'kldp_convnext.seed1', 'independent.seed1']
    assert not any(plan.done(run) for run in plan.runs)
    fill(plan)
    rows, names, order = report_config(plan, quiet=True)
    for name in ('report.md', 'report.csv'):
        assert (tmp_path / 'exp' / name).read_text() == \
            open(os.path.join(GOLDEN, name)).read(), name
    assert names == ['resnet', 'convnext'] and order == ['bikd', 'kldp_resnet', 'kldp_convnext',
                                                          'independent']
    # the means over seeds are the recorded summaries' own numbers, averaged here again
    for row in rows:
        deltas = []
        for seed in (0, 1):
            with open(plan.summary(f'{row["run"]}.seed{seed}')) as f:
                deltas.append(json.load(f)['members'][row['member']]['delta']['top1'])
        assert row['delta'] == pytest.approx(np.mean(deltas)) and row['n'] == 2
    for png in ('deltas.png', 'teacher_share.png', 'task_losses.png'):
        assert (tmp_path / 'exp' / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_grid_table_from_recorded_runs_is_the_one_the_tool_wrote_before(digits_root,
                                                                            tmp_path):
    from bikd.experiments.grid import load_grid
    from bikd.experiments.run_grid import collect_grid, grid_plans, grid_status
    from bikd.experiments.jobs import JobBook
    path = tmp_path / 'grid.yaml'
    path.write_text(f'''title: "a digits grid"
methods: [bikd, kldp, independent]
seeds: [0, 1]
overrides: {data_opts(digits_root)!r}
cells:
  - config: {CONFIG}
    paper: {{bikd: {{resnet: 1.5, convnext: 0.25}}, kldp: {{resnet: 0.5}}}}
''')
    grid = load_grid(str(path))
    out = tmp_path / 'grid'
    plans = grid_plans(grid, str(out), [], False)
    book = JobBook(str(out / 'jobs.json'))
    assert {state for *_, state, _ in grid_status(plans, book)} == {'not submitted'}
    for plan in plans.values():
        fill(plan)
    assert {state for *_, state, _ in grid_status(plans, book)} == {'done'}
    collect_grid(grid, plans, str(out))
    for name in ('table.md', 'table.csv'):
        assert (out / name).read_text() == open(os.path.join(GOLDEN, name)).read(), name
    cell = out / 'resnet_convnext_bikd'
    assert (cell / 'report.md').read_text() == open(os.path.join(GOLDEN, 'report.md')).read()


def test_the_one_launcher_runs_the_same_command_here_and_in_a_job(tmp_path):
    """TrainJob's command: train_net's module with --resume auto; on several GPUs through
    --num-gpus, on several machines through torchrun with a rendezvous on the first."""
    import sys

    from bikd.experiments.jobs import TrainJob
    one = TrainJob('run.py', str(tmp_path)).command()
    assert one == [sys.executable, '-m', 'bikd.engine.cli', '--config-file', 'run.py',
                   '--resume', 'auto']
    assert TrainJob('run.py', '.', 1, 4).command()[3:5] == ['--num-gpus', '4']
    many = TrainJob('run.py', '.', 2, 8).command('node0', '1234')
    assert many[:3] == [sys.executable, '-m', 'torch.distributed.run']
    assert many[-6:] == one[1:]
    assert many[many.index('--rdzv-endpoint') + 1] == 'node0:29734'
    # run here: the same command, its output in the log, its exit status back
    job = TrainJob(str(tmp_path / 'missing.py'), str(tmp_path))
    code = job.run_here(str(tmp_path / 'logs' / 'run.log'), 'a run')
    assert code == 2 and 'missing.py' in (tmp_path / 'logs' / 'run.log').read_text()


def test_seeds_parse_as_a_count_from_the_configs_seed_or_a_list():
    from bikd.errors import UserError
    from bikd.experiments.plan import parse_seeds
    assert parse_seeds('', CONFIG, []) is None
    assert parse_seeds('0,3,7', CONFIG, []) == [0, 3, 7]
    assert parse_seeds('3', CONFIG, ['randomness.seed=5']) == [5, 6, 7]
    with pytest.raises(UserError, match='--seeds'):
        parse_seeds('three', CONFIG, [])


def test_the_partner_ranking_and_the_greedy_set_follow_the_counts():
    """compare / greedy on hand-made outcomes: the candidate right where the target is wrong
    most often ranks first, and the greedy set adds what the chosen ones miss."""
    from bikd.experiments.partners import compare, greedy

    class Evaluator:
        primary_metric = 'top1'

        def summarize(self, stats, i):
            return dict(top1=100.0 * float(np.mean(stats[i])))

        def sample_outcome(self, stats, i):
            return np.asarray(stats[i], dtype=bool)

    target = [1, 1, 0, 0, 0, 0, 1, 1]
    a = [1, 1, 1, 1, 0, 0, 0, 0]  # right on 2 of the target's 4 wrong
    b = [1, 0, 1, 1, 1, 0, 1, 1]  # right on 3 of them
    c = [0, 0, 0, 0, 0, 1, 1, 1]  # right on the one nobody else gets
    pair = [[x | y for x, y in zip(target, o)] for o in (a, b, c)]  # the pairs' ensembles
    stats = [target, a, b, c, *pair]
    losses = np.stack([1.0 - np.asarray(o, float) for o in (target, a, b, c)])
    rows = compare(['t', 'a', 'b', 'c'], dict(stats=stats, losses=losses), Evaluator())
    assert [r['candidate'] for r in rows] == ['b', 'a', 'c']
    assert [r['adds'] for r in rows] == [3 / 8, 2 / 8, 1 / 8]
    assert rows[1]['takes'] == 2 / 8 and rows[0]['gap'] == pytest.approx(100 * 3 / 8)
    chosen = greedy(['t', 'a', 'b', 'c'], dict(stats=stats, losses=losses), Evaluator(), 3,
                    [r['candidate'] for r in rows])
    assert chosen == ['t', 'b', 'c']  # after b, a adds nothing and c adds its one sample


def test_the_benchmarks_interleaved_timing_gives_every_variant_its_steps():
    from bikd.experiments.benchmark import measure_interleaved

    def tiny():
        model = torch.nn.Linear(3, 1)

        class Step(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def train_step(self, batch, wrapper):
                loss = self.model(batch['inputs']).pow(2).mean()
                wrapper.update_params(loss)

        return Step()

    batches = [dict(inputs=torch.randn(4, 3)) for _ in range(2)]
    built = measure_interleaved(dict(a=tiny, b=tiny), dict(optimizer=dict(type='SGD', lr=0.1)),
                                batches, iters=7, warmup=1, rounds=3, device='cpu')
    assert [len(v.times) for v in built.values()] == [7, 7]
    result = built['a'].result()
    assert result['samples_per_s'] == pytest.approx(4 / result['seconds'])
    assert result['state_mib'] > 0


def test_tables_and_files_go_through_one_writer(tmp_path):
    from bikd.fileio import save_csv, save_figure
    from bikd.summary import markdown_table
    assert markdown_table(['model', 'a', 'b'], [['x', '1', '2']], text_columns=1) == [
        '| model | a | b |', '|---|---:|---:|', '| x | 1 | 2 |']
    save_csv([dict(a=1), dict(a=2, b=3)], str(tmp_path / 't.csv'))
    with open(tmp_path / 't.csv') as f:
        assert list(csv.DictReader(f)) == [dict(a='1', b=''), dict(a='2', b='3')]
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, _ = plt.subplots()
    save_figure(fig, str(tmp_path / 'f.png'))
    assert (tmp_path / 'f.png').read_bytes()[:4] == b'\x89PNG'
    assert sorted(os.listdir(tmp_path)) == ['f.png', 't.csv']  # no temporary left


def test_missing_inputs_names_each_missing_path_by_its_key_and_member(tmp_path):
    """The grid's check before it submits: data roots (through dataset wrappers), member
    weights (unless random_init), load_from; URLs and hub ids are left to the members."""
    import classification_bikd  # noqa: F401  (TimmMember, TransformersClassifierMember)
    from mmengine.config import Config

    from bikd.experiments.inputs import looks_local, missing_inputs
    assert [looks_local(v) for v in ('checkpoints/a.pth', '/abs/folder', './b', 'w/x/best',
                                     'facebook/convnext-tiny-224', 'https://x/y.pth', True,
                                     'resnet18')] == [True, True, True, True, False, False,
                                                      False, False]
    there = tmp_path / 'there'
    there.mkdir()
    (there / 'a.pth').write_bytes(b'')
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(type='Wrapper', dataset=dict(
            type='ImageFolderDataset', data_root=str(tmp_path / 'no_data')))),
        val_dataloader=dict(dataset=dict(type='ImageFolderDataset', data_root=str(there))),
        model=dict(type='BiKDMetaArch', members=[
            dict(type='TimmMember', name='a', checkpoint=str(there / 'a.pth')),
            dict(type='TimmMember', name='b', checkpoint=str(tmp_path / 'b.pth')),
            dict(type='TransformersClassifierMember', name='c',
                 model='facebook/convnext-tiny-224')]),
        load_from=str(tmp_path / 'run' / 'epoch_1.pth')))
    assert missing_inputs(cfg) == [
        f'train_dataloader.dataset.dataset.data_root: no folder {tmp_path}/no_data',
        f"model.members.1.checkpoint (member 'b'): no file or folder {tmp_path}/b.pth",
        f'load_from: no file {tmp_path}/run/epoch_1.pth']
    cfg.model.random_init = True  # nothing of the members' is read
    assert len(missing_inputs(cfg)) == 2


def test_the_headline_ends_with_a_reading_that_follows_from_the_verdicts():
    """The result a tool prints last: the comparison's lines, then a paragraph whose every
    sentence follows from the intervals (better / worse / no measurable difference / the same
    on every seed / one seed)."""
    from bikd.experiments.report import headline, reading
    from bikd.experiments.stats import paired_difference

    def record(member, diffs):
        return dict(member=member, method='bikd', control='independent',
                    seeds=list(range(len(diffs))), **paired_difference(diffs))
    paired = [record('a', [1.0, 1.2, 0.9]), record('b', [-1.0, -1.1, -0.8]),
              record('c', [0.5, -0.4, 0.1]), record('d', [0.25, 0.25, 0.25])]
    assert [r['verdict'].split(':')[0] for r in paired] == [
        'better', 'worse', 'no measurable difference', 'the same on all 3 seeds']
    text = reading(paired)
    assert 'Better than fine-tuning alone: a (bikd)' in text
    assert 'Worse than fine-tuning alone: b (bikd)' in text
    assert 'No measurable difference for c (bikd)' in text
    assert 'The same difference on every seed for d (bikd)' in text
    assert '(3 seeds)' in text
    assert 'no verdict' in reading([record('a', [1.0])])
    block = headline(['bikd vs independent ...'], paired).splitlines()
    assert block[0] == block[-1] == '=' * 78 and block[1:3] == ['RESULT',
                                                                 'bikd vs independent ...']
    assert headline([], []) == ''


def test_the_time_limit_requeues_are_the_users_to_set(tmp_path):
    """--timeout-requeues reaches submitit's executor (its own default is 3); a negative
    number is an input error."""
    from bikd.errors import UserError
    from bikd.experiments.jobs import make_executor
    assert make_executor('slurm', str(tmp_path), timeout_requeues=7).max_num_timeout == 7
    assert make_executor('slurm', str(tmp_path)).max_num_timeout == 3
    with pytest.raises(UserError, match='--timeout-requeues must be 0 or more'):
        make_executor('slurm', str(tmp_path), timeout_requeues=-1)


def test_paper_numbers_for_a_member_the_config_lacks_are_refused(digits_root, tmp_path):
    """A grid's paper number for a member its config does not have (a slip that would leave
    the paper column empty) is an input error naming the cell, the key and the members."""
    from bikd.errors import UserError
    from bikd.experiments.grid import load_grid
    from bikd.experiments.run_grid import check_paper, grid_plans
    path = tmp_path / 'grid.yaml'
    path.write_text(f'''title: "a digits grid"
methods: [bikd]
metric: [top1]
overrides: {data_opts(digits_root)!r}
cells:
  - config: {CONFIG}
    paper: {{bikd: {{resnet: 1.5, vit: 0.5, convnext: {{top5: 1.0}}}}}}
''')
    grid = load_grid(str(path))
    plans = grid_plans(grid, str(tmp_path / 'out'), [], False, write=False)
    with pytest.raises(UserError) as e:
        check_paper(grid, plans)
    lines = str(e.value).splitlines()[1:]
    assert [line.strip() for line in lines] == [
        "resnet_convnext_bikd: paper.bikd.vit: the config has no member 'vit' (its members: "
        'resnet, convnext)',
        'resnet_convnext_bikd: paper.bikd.convnext.top5: not a metric of the grid (top1)']
    assert not (tmp_path / 'out').exists()  # planned without writing
