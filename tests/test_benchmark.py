"""tools/benchmark.py runs on tiny configs and prints its rows (a benchmark is not a test:
no timing is asserted). Its memory figures count bytes of tensors (bikd.memory), which follow
from shapes alone, so the ratios asserted here hold on every machine."""
import os
import re

import pytest

from conftest import digits_overrides, run_tool

VARIANT_ROW = r'\s+\d+\.\d{4}\s+\d+\.\d\s+\d+\.\d\s+\d+\.\d$'
K_ROW = r'^\s+(\d)\s+\d+\.\d{3}\s+\d+\.\d{3}\s+\d+\.\d{2}\s+(\d+\.\d{2})$'


def check_common_rows(out, names):
    for name in names:
        assert re.search(re.escape(f'{name} alone') + VARIANT_ROW, out, flags=re.M), name
        assert re.search(re.escape(f'KL+DP, student {name}') + VARIANT_ROW, out,
                         flags=re.M), name
    assert re.search(r'Bi-KD \(all members\)' + VARIANT_ROW, out, flags=re.M)
    assert re.search(r'Bi-KD lean \(member by member\)' + VARIANT_ROW, out, flags=re.M)
    # the ordinary step holds every member's activations until its one backward: their sum,
    # plus the little the partition and the KL save (within 10%)
    summed = float(re.search(r'ordinary Bi-KD: saved activations / the members alone\'s '
                             r'summed: (\d+\.\d{3})', out).group(1))
    assert 1.0 <= summed <= 1.10
    # lean mode holds one member's activations at a time: about the largest member's own
    lean, ordinary = map(float, re.search(
        r'lean Bi-KD: saved activations / the largest member alone\'s \(\w+\): (\d+\.\d{3})  '
        r'\(target <= 1.15; ordinary Bi-KD: (\d+\.\d{3})\)', out).groups())
    assert 1.0 <= lean <= 1.15 < ordinary
    assert re.search(r'lean Bi-KD / ordinary Bi-KD: \d+\.\d{3}', out)
    assert re.search(r'Bi-KD / sum of the members alone: \d+\.\d{3}', out)
    assert re.search(r'kldp for every member \(2 runs\) / Bi-KD: \d+\.\d{3}', out)
    assert re.search(r'at the physical limit .* Bi-KD would cost \d\.\d\dx kldp', out)
    assert re.search(r'data loader alone \(\d+ workers, \d+ batches\): \d+\.\d samples/s = '
                     r'\d+\.\dx what a Bi-KD step consumes', out)
    rows = re.findall(K_ROW, out, flags=re.M)
    assert [k for k, _ in rows] == [str(k) for k in range(2, 9)]
    # what the term saves for its backward, in units of one member's output: each member's
    # log-softmax and the teachers' distribution (K + 1) and a few masks, never K^2
    per_output = [float(x) for _, x in rows]
    assert all(k + 1 <= x <= k + 1.5 for x, k in zip(per_output, range(2, 9))), per_output
    assert re.search(r'its share of a Bi-KD step at K = 2: \d+\.\d% of the time, \d+\.\d% of '
                     r'the saved activations', out)


def test_benchmark_on_digits_prints_every_variant_ratio_and_profile(digits_root, tmp_path):
    proc = run_tool('benchmark.py', '--config-file', 'configs/digits/resnet_convnext_bikd.yaml',
                    '--iters', '2', '--warmup', '1', '--device', 'cpu', '--profile',
                    *digits_overrides(digits_root, tmp_path))
    out = proc.stdout
    check_common_rows(out, ['resnet', 'convnext'])
    assert 'output (32, 10)' in out  # the members' real logits shape
    for part in ('bikd.forward.resnet', 'bikd.forward.convnext', 'bikd.distillation',
                 'backward (autograd)', 'Optimizer.step'):
        assert re.search(re.escape(part) + r'.*\d+\.\d\d ms\s+\d+\.\d%', out), part


def test_benchmark_on_the_segmentation_toy_distils_150_classes_at_quarter_resolution(tmp_path):
    from tools.make_ade20k_toy import make_ade20k_toy
    make_ade20k_toy(str(tmp_path / 'toy'), n_train=6, n_val=2, size=64)
    root = os.path.join(tmp_path, 'toy', 'ADEChallengeData2016')
    proc = run_tool('benchmark.py', '--config-file', 'configs/ade20k_toy/m2f_upernet_bikd.yaml',
                    '--iters', '1', '--warmup', '1', '--device', 'cpu', '--eval-k', '3,5',
                    f'train_dataloader.dataset.data_root={root}',
                    f'val_dataloader.dataset.data_root={root}',
                    'train_dataloader.num_workers=0', 'train_dataloader.batch_size=2',
                    'val_dataloader.batch_size=2')
    check_common_rows(proc.stdout, ['mask2former', 'upernet'])
    # evaluation member by member: flat in K (from K = 3, where every kind of member has run
    # beside the running ensemble sum); all outputs held: one prediction more per member (K = 3
    # and 5 end on the same kind of member, whose own peak sits on top of the held outputs)
    rows = [tuple(map(float, r)) for r in re.findall(
        r'^\s+(\d)\s+(\d+\.\d)\s+(\d+\.\d)\s+(\d+\.\d)\s+(\d+\.\d)$', proc.stdout,
        flags=re.M)]
    assert [r[0] for r in rows] == [3, 5]
    assert rows[1][1] <= rows[0][1] * 1.02
    assert rows[1][4] - rows[0][4] == pytest.approx(2.0, abs=0.3)
    # 150 classes at 1/4 of the crop (at most 128x128; smaller where the random scale
    # made the image smaller)
    h, w = map(int, re.search(r'output \(2, 150, (\d+), (\d+)\)', proc.stdout).groups())
    assert 16 <= h <= 32 and 16 <= w <= 32


def test_benchmark_memory_cap_trains_lean_where_the_ordinary_step_runs_out(digits_root, tmp_path):
    """Fresh processes under an address-space cap halfway between what two ordinary and two
    lean steps need: the ordinary step runs out of memory, the lean one trains."""
    proc = run_tool('benchmark.py', '--config-file', 'configs/digits/resnet_convnext_bikd.yaml',
                    '--iters', '1', '--warmup', '1', '--rounds', '1', '--methods', '',
                    '--memory-cap', *digits_overrides(digits_root, tmp_path),
                    'train_dataloader.batch_size=256')
    out = proc.stdout
    assert re.search(r'needs: ordinary \d+ MiB, lean \d+ MiB', out), out[-2000:]
    assert 'ordinary Bi-KD under the cap: out of memory' in out
    assert re.search(r'lean Bi-KD under the cap: trained \(loss \d+\.\d+\)', out)
