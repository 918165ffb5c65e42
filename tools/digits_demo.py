#!/usr/bin/env python
"""The embedded default: Bi-KD and its Independent control on scikit-learn's digits.

    python tools/digits_demo.py [--force-pretrain] [--out work_dirs/digits]

1. writes the digits as PNG files in the ImageFolder layout (datasets/digits);
2. "pretrains" two members of different timm architectures from scratch on different recipes
   (configs/digits/pretrain_{resnet,convnext}.yaml) and exports them as ordinary timm checkpoints
   (checkpoints/digits/), once;
3. fine-tunes both with Bi-KD and with the Independent control on the identical schedule;
4. prints each run's table, the comparison, and writes a PNG of the deltas.

Every step is the command a user would type (tools/train_net.py, tools/export_members.py).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MEMBERS = ('resnet', 'convnext')


def run(cmd):
    print('\n$ ' + ' '.join(cmd), flush=True)
    subprocess.run([sys.executable] + cmd, cwd=ROOT, check=True)


def plot_deltas(summaries: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    methods = list(summaries)
    metric = summaries[methods[0]]['primary_metric']
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        deltas = [summaries[method]['members'][m]['delta'][metric] for m in MEMBERS]
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(MEMBERS))]
        bars = ax.bar(xs, deltas, width, label=method)
        ax.bar_label(bars, fmt='%+.2f', fontsize=8)
    ax.axhline(0, color='black', linewidth=0.8)
    ax.set_xticks(range(len(MEMBERS)), MEMBERS)
    ax.set_ylabel(f'{metric} after - before (points)')
    ax.set_title('digits: change of each member')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='work_dirs/digits', help='folder of the runs')
    parser.add_argument('--data', default='datasets/digits')
    parser.add_argument('--checkpoints', default='checkpoints/digits')
    parser.add_argument('--force-pretrain', action='store_true',
                        help='pretrain the members again even if their checkpoints exist')
    args = parser.parse_args(argv)
    start = time.time()

    from bikd.summary import format_table
    from tools.make_digits_dataset import make_digits

    info = make_digits(os.path.join(ROOT, args.data))
    print(f'digits: {info["train"]} train / {info["val"]} val images in {args.data}')
    data = [f'train_dataloader.dataset.data_root={args.data}',
            f'val_dataloader.dataset.data_root={args.data}']

    for m in MEMBERS:
        if os.path.isfile(os.path.join(ROOT, args.checkpoints, f'{m}.pth')) and not args.force_pretrain:
            print(f'member {m}: using {args.checkpoints}/{m}.pth (--force-pretrain to redo)')
            continue
        cfg = f'configs/digits/pretrain_{m}.yaml'
        work = f'{args.out}/pretrain_{m}'
        run(['tools/train_net.py', '--config-file', cfg, f'work_dir={work}', *data])
        run(['tools/export_members.py', '--config-file', cfg, '--output-dir', args.checkpoints,
             f'work_dir={work}'])

    ckpts = [f'model.members.{i}.checkpoint={args.checkpoints}/{m}.pth'
             for i, m in enumerate(MEMBERS)]
    summaries = {}
    for method in ('bikd', 'independent'):
        work = f'{args.out}/{method}'
        run(['tools/train_net.py', '--config-file', f'configs/digits/resnet_convnext_{method}.yaml',
             f'work_dir={work}', *data, *ckpts])
        with open(os.path.join(ROOT, work, 'summary.json')) as f:
            summaries[method] = json.load(f)

    print('\n' + '=' * 72)
    for method, summary in summaries.items():
        print(format_table(summary, f'{summary["method"]} ({args.out}/{method}/summary.json)'))
        print()
    metric = summaries['bikd']['primary_metric']
    print(f'Bi-KD vs Independent, change of {metric}:')
    for m in MEMBERS:
        b = summaries['bikd']['members'][m]['delta'][metric]
        i = summaries['independent']['members'][m]['delta'][metric]
        print(f'  {m:<8} Bi-KD {b:+.2f}   Independent {i:+.2f}   difference {b - i:+.2f}')
    png = os.path.join(ROOT, args.out, 'deltas.png')
    plot_deltas(summaries, png)
    print(f'plot: {os.path.relpath(png, ROOT)}')
    print(f'demo finished in {time.time() - start:.0f} s')


if __name__ == '__main__':
    sys.exit(main())
