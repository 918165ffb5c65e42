"""tools/run_experiment.py as a user runs it: every method on the same digits members, and a
report whose numbers agree with each run's summary.json."""
import csv
import json
import os
import re

import numpy as np
import pytest

from conftest import ROOT, digits_overrides, run_tool

CONFIG = os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml')


@pytest.fixture(scope='module')
def experiment(digits_root, tmp_path_factory):
    out = tmp_path_factory.mktemp('experiment')
    proc = run_tool('run_experiment.py', '--config-file', CONFIG, '--output-dir', out,
                    *digits_overrides(digits_root, out / 'ignored'), 'train_cfg.max_epochs=1',
                    'train_cfg.val_interval=1', 'train_dataloader.batch_size=128', *KLDP_RECIPE)
    return out, proc.stdout


#: a recipe of KL+DP's own, as the Table 2 configs give it (there: SGD as Roth et al.)
KLDP_RECIPE = ['method_recipes.kldp.optim_wrapper.optimizer.type=SGD',
               'method_recipes.kldp.optim_wrapper.optimizer.lr=0.01',
               'method_recipes.kldp.optim_wrapper.optimizer.momentum=0.9']


def test_every_method_runs_and_the_report_is_written(experiment):
    out, stdout = experiment
    runs = sorted(os.listdir(out / 'runs'))
    assert runs == sorted(['bikd', 'kldp_resnet', 'kldp_convnext', 'kd_from_resnet',
                           'kd_from_convnext', 'dml', 'independent'])
    for name in ('report.md', 'report.csv', 'report.json', 'deltas.png', 'teacher_share.png',
                 'task_losses.png'):
        assert (out / name).stat().st_size > 0, name
    assert '| model | before | bikd | kldp | kd | dml | independent |' in stdout
    assert not (out / 'ignored').exists()  # each run has its own work_dir
    # the terminal has each run's evaluations in a line each, and the report as text; every
    # run's whole output is in its log
    assert stdout.count('before training: resnet/top1 ') == len(runs)
    assert re.search(r'epoch 1: resnet/top1 \d+\.\d\d  convnext/top1', stdout)
    for noise in ('Hooks will be executed', 'Epoch(train)', 'System environment', '```'):
        assert noise not in stdout, noise
    for run in runs:
        assert 'Epoch(train)' in (out / 'logs' / f'{run}.log').read_text(), run
    assert len(stdout.splitlines()) < 200


def test_report_numbers_are_the_runs_numbers(experiment):
    out, _ = experiment
    with open(out / 'report.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 + 2 + 2  # bikd, dml, independent: both; kldp, kd: one per run
    table = (out / 'report.md').read_text()
    for r in rows:
        with open(out / 'runs' / r['run'] / 'summary.json') as f:
            member = json.load(f)['members'][r['member']]
        before, after, delta = (float(r[k]) for k in ('before', 'after', 'delta'))
        assert before == pytest.approx(member['before']['top1'])
        assert after == pytest.approx(member['after']['top1'])
        assert delta == pytest.approx(after - before)
        assert (float(r['positive_flips_vs_self']) - float(r['negative_flips_vs_self'])
                == pytest.approx(delta))
        assert f'{after:.2f} ({delta:+.2f})' in table
    # KL+DP trains one student per run: resnet learns in kldp_resnet only
    assert {r['run'] for r in rows if r['member'] == 'resnet' and r['method'] == 'kldp'} == {
        'kldp_resnet'}


def test_finished_runs_are_reused_only_with_the_same_config(experiment, digits_root):
    out, _ = experiment
    args = ['run_experiment.py', '--config-file', CONFIG, '--output-dir', out, '--methods',
            'dml', *digits_overrides(digits_root, out / 'ignored'),
            'train_dataloader.batch_size=128', 'train_cfg.max_epochs=1',
            'train_cfg.val_interval=1']
    assert 'dml: done before' in run_tool(*args).stdout
    # a changed schedule is not "done": the earlier run is kept aside, the new one runs
    proc = run_tool(*args[:-2], 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                    'optim_wrapper.optimizer.lr=0.0')
    assert 'dml: the config changed; the earlier run moved to' in proc.stdout
    stale = [d for d in os.listdir(out / 'runs') if d.startswith('dml.stale-')]
    assert len(stale) == 1 and (out / 'runs' / stale[0] / 'summary.json').is_file()
    assert 'lr=0.0' in (out / 'configs' / 'dml.py').read_text()
    assert (out / 'runs' / 'dml' / 'summary.json').stat().st_mtime > \
        (out / 'runs' / stale[0] / 'summary.json').stat().st_mtime


def test_frozen_members_evaluate_the_same_after_training(experiment):
    out, _ = experiment
    for run, frozen in (('kd_from_resnet', 'resnet'), ('kldp_convnext', 'resnet'),
                        ('kldp_resnet', 'convnext')):
        with open(out / 'runs' / run / 'summary.json') as f:
            m = json.load(f)['members'][frozen]
        assert m['after'] == m['before'], run


def test_kway_report_follows_members_as_they_are_added(digits_root, tmp_path):
    out = tmp_path / 'kway'
    three = os.path.join(ROOT, 'configs/digits/resnet_convnext_regnet_bikd.yaml')
    run_tool('run_experiment.py', '--config-file', CONFIG, '--config-file', three,
             '--methods', 'bikd', '--output-dir', out,
             *digits_overrides(digits_root, out / 'ignored'), 'train_cfg.max_epochs=1',
             'train_cfg.val_interval=1')
    for name in ('kway.md', 'kway.csv', 'kway.png', 'resnet_convnext_bikd/report.md',
                 'resnet_convnext_regnet_bikd/report.md'):
        assert (out / name).stat().st_size > 0, name
    with open(out / 'kway.csv') as f:
        rows = list(csv.DictReader(f))
    assert sorted((r['member'], int(r['members'])) for r in rows) == sorted(
        [('resnet', 2), ('convnext', 2), ('resnet', 3), ('convnext', 3), ('regnet', 3)])
    for r in rows:
        with open(out / r['config'] / 'runs' / 'bikd' / 'summary.json') as f:
            summary = json.load(f)
        assert float(r['delta']) == pytest.approx(summary['members'][r['member']]['delta']['top1'])
    table = (out / 'kway.md').read_text()
    assert '| model | K=2 (resnet_convnext_bikd) | K=3 (resnet_convnext_regnet_bikd) |' in table
    regnet = next(line for line in table.splitlines() if line.startswith('| regnet |'))
    assert regnet.split('|')[2].strip() == ''  # not in the pair


HALF_KL = """
from bikd import BiKDMetaArch
from bikd.registry import META_ARCH


@META_ARCH.register_module()
class HalfKLMetaArch(BiKDMetaArch):
    \"\"\"Bi-KD with half the distillation term: a new method is one registered class.\"\"\"
    method = 'halfkl'

    def loss_from_outputs(self, outputs, data_samples, decide_on=None):
        out = super().loss_from_outputs(outputs, data_samples, decide_on)
        out.distill_loss = out.distill_loss / 2
        return out
"""


def test_a_method_registered_by_the_user_runs_with_no_edit_of_the_tools(digits_root, tmp_path):
    (tmp_path / 'my_method.py').write_text(HALF_KL)
    out = tmp_path / 'exp'
    proc = run_tool('run_experiment.py', '--config-file', CONFIG, '--output-dir', out,
                    '--methods', 'halfkl,independent',
                    *digits_overrides(digits_root, out / 'ignored'), 'train_cfg.max_epochs=1',
                    'train_cfg.val_interval=1',
                    'custom_imports.imports=[classification_bikd,my_method]',
                    env={'PYTHONPATH': str(tmp_path)})
    assert sorted(os.listdir(out / 'runs')) == ['halfkl', 'independent']
    with open(out / 'runs' / 'halfkl' / 'summary.json') as f:
        summary = json.load(f)
    assert summary['method'] == 'HalfKLMetaArch' and summary['teacher_share']
    assert '| model | before | halfkl | independent |' in proc.stdout
    # the comparison with the method's control: the differences of the two deltas
    with open(out / 'report.json') as f:
        report = json.load(f)
    rows = {(r['member'], r['method']): r['delta'] for r in report['rows']}
    (title, *lines) = report['against_controls']
    assert title == ('halfkl vs independent, change of top1, one seed (a difference that '
                     'measures no noise; --seeds N gives its interval):')
    for line in lines:
        # the printed difference is that of the printed (rounded) deltas, so it may differ from
        # the exact difference by up to one unit of the last digit
        member, diff = line.split()[0], float(line.split()[-1])
        a, b = rows[member, 'halfkl'], rows[member, 'independent']
        assert diff == pytest.approx(round(a, 2) - round(b, 2), abs=1e-9)
        assert abs(diff - (a - b)) <= 0.01 + 1e-9
    # an unknown method is refused with the registered ones listed
    proc = run_tool('run_experiment.py', '--config-file', CONFIG, '--output-dir', out,
                    '--methods', 'nosuch', *digits_overrides(digits_root, out / 'ignored'),
                    expect_ok=False)
    assert proc.returncode != 0 and "unknown method(s) ['nosuch']; registered methods:" in \
        proc.stdout


def test_kldp_trains_with_its_own_recipe_unless_asked_for_the_same(experiment, digits_root):
    out, stdout = experiment
    for run in ('kldp_resnet', 'kldp_convnext'):
        text = (out / 'configs' / f'{run}.py').read_text()
        assert "type='SGD'" in text and 'momentum=0.9' in text, run
    assert "type='Adam'" in (out / 'configs' / 'bikd.py').read_text()
    assert 'kldp: its own (method_recipes.kldp)' in stdout and "bikd: the config's" in stdout
    proc = run_tool('run_experiment.py', '--config-file', CONFIG, '--output-dir', out,
                    '--methods', 'kldp', '--same-recipe',
                    *digits_overrides(digits_root, out / 'ignored'), 'train_cfg.max_epochs=1',
                    'train_cfg.val_interval=1', 'train_dataloader.batch_size=128', *KLDP_RECIPE)
    assert 'kldp_resnet: the config changed' in proc.stdout
    assert "type='Adam'" in (out / 'configs' / 'kldp_resnet.py').read_text()
    assert "kldp: the config's" in (out / 'report.md').read_text()


def test_seeds_give_a_paired_difference_with_its_t_interval(digits_root, tmp_path):
    """Two seeds of Bi-KD and the control: the report's paired difference is the mean of
    the per-seed differences, its interval Student's t at 95%, and the verdict follows from
    the interval."""
    from scipy import stats
    out = tmp_path / 'seeds'
    args = ['run_experiment.py', '--config-file', CONFIG, '--output-dir', out, '--methods',
            'bikd,independent', '--seeds', '2', *digits_overrides(digits_root, out / 'ignored'),
            'train_cfg.max_epochs=1', 'train_cfg.val_interval=1', 'train_dataloader.batch_size=128']
    proc = run_tool(*args)
    assert sorted(os.listdir(out / 'runs')) == sorted(
        f'{m}.seed{s}' for m in ('bikd', 'independent') for s in (0, 1))
    with open(out / 'report.csv') as f:
        rows = list(csv.DictReader(f))
    with open(out / 'report.json') as f:
        report = json.load(f)
    assert report['seeds'] == [0, 1]
    for record in report['paired']:
        m = record['member']
        delta = {(r['method'], int(r['seed'])): float(r['delta']) for r in rows
                 if r['member'] == m}
        diffs = [delta['bikd', s] - delta['independent', s] for s in (0, 1)]
        mean, sd = np.mean(diffs), np.std(diffs, ddof=1)
        half = stats.t.ppf(0.975, 1) * sd / np.sqrt(2)
        assert record['mean'] == pytest.approx(mean, abs=1e-6)
        assert (record['low'], record['high']) == pytest.approx((mean - half, mean + half),
                                                                 abs=1e-6)
        if max(diffs) - min(diffs) < 1e-6:
            # one image of the split is a step of the metric: equal differences on every seed
            # leave no spread, and the report says so instead of claiming an interval
            expected = 'the same on all 2 seeds: no spread to measure noise with'
            assert record['verdict'].startswith(expected)
        else:
            expected = ('better' if mean - half > 0 else 'worse' if mean + half < 0
                        else 'no measurable difference')
            assert record['verdict'] == expected
        assert f'[{mean - half:+.2f}, {mean + half:+.2f}]: {expected}' in proc.stdout
    # the seeds changed the data order: the two runs of a method differ
    bikd = [float(r['after']) for r in rows if r['method'] == 'bikd' and r['member'] == 'resnet']
    assert len(set(bikd)) > 1
    assert '± ' in (out / 'report.md').read_text() and (out / 'deltas.png').stat().st_size > 0
    # the result is what the terminal ends with: the paired comparison and its reading
    last = proc.stdout.rstrip().splitlines()
    start = len(last) - 1 - last[::-1].index('RESULT')
    assert last[-1] == last[start - 1] == '=' * 78 and 'How to read this' in '\n'.join(
        last[start:]) and all(f'[{r["low"]:+.2f}' in '\n'.join(last[start:])
                              for r in report['paired'])
    assert 'done before' in run_tool(*args).stdout  # finished seeds are reused


def test_input_errors_are_one_line_and_exit_status_2(digits_root, tmp_path):
    """A misspelt override, an unknown method, bad --seeds, and a run that stops on its
    input (a missing dataset folder, found by train_net): one line each and exit status 2."""
    out = tmp_path / 'e'
    base = ['--config-file', CONFIG, '--output-dir', out]
    data = digits_overrides(digits_root, out / 'ignored')
    for flags, overrides, message in (
            (['--methods', 'bikd'], ['train_cfg.max_epoch=1'],
             "train_cfg.max_epoch is not an argument of EpochBasedTrainLoop"),
            (['--methods', 'bikdd'], [], 'bikdd'),
            (['--seeds', 'three'], [], "--seeds 'three': give a number of seeds"),
            (['--methods', 'independent'], ['val_dataloader.dataset.data_root=/nowhere'],
             'run independent stopped on the error above')):
        proc = run_tool('run_experiment.py', *base, *flags, *data, *overrides, expect_ok=False)
        assert proc.returncode == 2, proc.stdout[-3000:]
        assert message in proc.stdout and 'Traceback' not in proc.stdout, proc.stdout[-3000:]


def test_plots_say_what_they_show_and_keep_every_label_readable(tmp_path, monkeypatch):
    """deltas.png: the table's precision on the bars, a title that names the experiment and
    the seeds inside the figure, the legend off the bars; task_losses.png: the distillation
    loss (a hundredth of the task losses here) on an axis of its own, the run named."""
    import matplotlib
    matplotlib.use('Agg')
    from bikd.experiments import report

    saved = {}
    monkeypatch.setattr(report, 'save_figure',
                        lambda fig, path: saved.__setitem__(os.path.basename(path), fig))
    rows = [dict(member=m, method=method, run=method, metric='top1', before=before,
                 after=before + d, delta=d, n=3, delta_sd=0.2)
            for m, before in (('resnet', 97.59), ('convnext', 92.95))
            for method, d in (('bikd', 0.9333), ('independent', 0.8042))]
    work = tmp_path / 'runs' / 'bikd.seed0'
    (work / '20260101_000000' / 'vis_data').mkdir(parents=True)
    (work / '20260101_000000' / 'vis_data' / 'scalars.json').write_text('\n'.join(
        json.dumps({'iter': i, 'loss': 14.2, 'task_loss/resnet': 14.0, 'task_loss/convnext': 12.0,
                    'distill_loss': 0.1, 'teacher_share/resnet': 0.6,
                    'teacher_share/convnext': 0.4}) for i in (5, 10, 15)))
    report.plots(rows, ['resnet', 'convnext'], ['bikd', 'independent'], str(work),
                 str(tmp_path), 'resnet_convnext_bikd')
    fig = saved['deltas.png']
    fig.canvas.draw()
    ax = fig.axes[0]
    title = ax.title.get_text()
    assert 'resnet_convnext_bikd' in title and '3 seeds' in title
    inside = fig.bbox
    box = ax.title.get_window_extent()
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1  # not cut off on either side
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ['+0.80', '+0.80', '+0.93', '+0.93']  # as the table prints them
    legend = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    assert legend.y1 <= ax.get_window_extent().y0  # under the bars, not over them
    # with the paired comparison: it comes first, each row's label with its interval and
    # verdict, the experiment and the seeds in the figure's title
    paired = [dict(member='resnet', method='bikd', control='independent', seeds=[0, 1, 2],
                   mean=0.13, low=-0.58, high=0.83, verdict='no measurable difference'),
              dict(member='convnext', method='bikd', control='independent', seeds=[0, 1, 2],
                   mean=1.2, low=0.4, high=2.0, verdict='better')]
    report.plots(rows, ['resnet', 'convnext'], ['bikd', 'independent'], '', str(tmp_path),
                 'resnet_convnext_bikd', paired)
    fig = saved['deltas.png']
    fig.canvas.draw()
    top = fig.axes[0]
    assert [t.get_text() for t in top.get_yticklabels()] == [  # in the report's order
        'resnet: bikd - independent\n+0.13 [-0.58, +0.83] no measurable difference',
        'convnext: bikd - independent\n+1.20 [+0.40, +2.00] better']
    assert 'resnet_convnext_bikd' in fig._suptitle.get_text() and \
        '95% interval over 3 seeds' in fig._suptitle.get_text().replace('\n', ' ')
    assert top.get_xlim()[0] < 0 < top.get_xlim()[1]  # zero, the line to read against, shown
    losses = saved['task_losses.png']
    task_ax, distill_ax = losses.axes
    assert [line.get_label() for line in task_ax.lines] == ['resnet', 'convnext']
    assert [line.get_label() for line in distill_ax.lines] == ['distill_loss']
    assert 'bikd.seed0' in task_ax.title.get_text()
