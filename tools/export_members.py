#!/usr/bin/env python
"""Export every trained member in its native format (timm: a state dict for
``timm.create_model(name, checkpoint_path=...)``) plus a JSON describing it.

    python tools/export_members.py --config-file FILE [--which last|best] [--metric NAME]
                                   [--checkpoint CKPT] [--output-dir DIR] [key=value ...]

``--which last`` (default) exports the members of a runner checkpoint: --checkpoint, or the
last one of the config's work_dir. ``--which best`` exports each member's best weights of the
run (``<work_dir>/best/``, chosen at the evaluations on the validation split) for --metric
(default: the evaluator's primary metric, e.g. top1, mIoU, CC; saliency runs also keep the
best by validation ``loss``). Without --output-dir, files go to <work_dir>/export (the last
weights) or <work_dir>/export_best_<metric>; a folder that holds the other choice of the same
members' weights is refused, not overwritten.
"""
import os.path as osp
import sys

from bikd.checkpoint import find_last_checkpoint
from bikd.engine import load_config
from bikd.engine.cli import add_debug_flag, config_parser, run_tool
from bikd.engine.runner import default_work_dir
from bikd.engine.export import evaluation_data, export_members, load_trained


def export(args) -> None:
    cfg = load_config(args.config_file, args.opts)
    work_dir = cfg.get('work_dir') or default_work_dir(args.config_file)
    ckpt, note = (args.checkpoint, '') if args.checkpoint else find_last_checkpoint(work_dir)
    if ckpt is None:
        raise FileNotFoundError(f'no checkpoint given and none found in {work_dir} ({note}); '
                                'pass --checkpoint or work_dir=...')
    if note:
        print(note)
    model = load_trained(args.config_file, ckpt, args.opts)
    source, which = osp.abspath(ckpt), 'last'
    if args.which == 'best':
        from bikd.engine.best import load_best_members
        from mmengine.registry import METRICS
        metric = args.metric or METRICS.build(dict(cfg.val_evaluator)).primary_metric
        iterations = load_best_members(model, work_dir, metric)
        source = f'best {metric} of {osp.abspath(work_dir)}: ' + ', '.join(
            f'{name} iteration {it}' for name, it in iterations.items())
        which = f'best {metric}'
    # one folder per choice of weights: the last ones, and the best ones per metric
    out_dir = args.output_dir or osp.join(work_dir, 'export' if which == 'last' else
                                          f'export_best_{which.split()[1]}')
    for info in export_members(model, out_dir, source=source,
                               evaluated_with=evaluation_data(cfg), which=which):
        print(f'{info["member"]}: {osp.join(out_dir, info.get("checkpoint", ""))}')
    print(f'exported {len(model.members)} member(s) ({source}) to {out_dir}')


def main(argv=None):
    parser = config_parser(__doc__)
    parser.add_argument('--checkpoint', help='runner checkpoint (default: last in work_dir)')
    parser.add_argument('--output-dir', help='default: <work_dir>/export, or '
                                             '<work_dir>/export_best_<metric> with --which best')
    parser.add_argument('--which', choices=['last', 'best'], default='last',
                        help="the run's last weights, or each member's best")
    parser.add_argument('--metric', help='with --which best: the selection metric (default: '
                                         "the evaluator's primary metric)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    run_tool(lambda: export(args), args.config_file, args.debug)


if __name__ == '__main__':
    sys.exit(main())
