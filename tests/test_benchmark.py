"""tools/benchmark.py runs on a tiny config and prints its rows (a benchmark is not a test:
no timing is asserted)."""
import re

from conftest import digits_overrides, run_tool


def test_benchmark_prints_every_variant_and_the_ratios(digits_root, tmp_path):
    proc = run_tool('benchmark.py', '--config-file', 'configs/digits/resnet_convnext_bikd.yaml',
                    '--iters', '2', '--warmup', '1', '--device', 'cpu',
                    *digits_overrides(digits_root, tmp_path))
    out = proc.stdout
    for row in ('resnet alone', 'convnext alone', 'Bi-KD (all members)',
                'KL+DP, student resnet', 'KL+DP, student convnext'):
        assert re.search(re.escape(row) + r'\s+\d+\.\d{4}\s+\d+\.\d\s+\d+', out), row
    assert re.search(r'Bi-KD / sum of the members alone: \d+\.\d{3}', out)
    assert re.search(r'KL\+DP for both members \(two runs\) / Bi-KD: \d+\.\d{3}', out)
    ks = re.findall(r'^\s+(\d)\s+\d+\.\d{3}\s+\d+\.\d{3}\s+\d+$', out, flags=re.M)
    assert ks == [str(k) for k in range(2, 9)]
    assert 'output (32, 10)' in out  # the members' real logits shape
