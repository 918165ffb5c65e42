#!/usr/bin/env python
"""Which model should teach mine? Rank candidate partners of a target member before spending a
training run on any of them.

    python tools/find_partners.py --config-file FILE --target NAME
                                  [--pool POOL.yaml] [--timm NAME[=CHECKPOINT] ...]
                                  [--hf ID_OR_FOLDER[=CHECKPOINT] ...]
                                  [--k K] [--split val|test] [--output-dir DIR] [key=value ...]

FILE is a Bi-KD config: its data, evaluator and members. The target is the member named NAME;
the candidates are the config's other members, the member configs listed in POOL.yaml (a YAML
list of member configs, as in a config's ``model.members``), and, for classification, timm
models by name with an optional local checkpoint (``--timm resnet18.a1_in1k=ckpt.pth``; the
target's ``num_classes`` and ``input_size`` apply), and Hugging Face transformers models by hub id
or ``save_pretrained`` folder (``--hf facebook/convnext-base-224``; a classifier or a segmenter,
as the target is; the target's ``num_classes`` applies). Every model is evaluated once on the split
(``val``, or ``test`` for the config's test_dataloader), batched, with the config's evaluator.

Per candidate, against the target:

- its own metric, and that of the ensemble of target and candidate; the gap between that
  ensemble and the target is what Eq. 14 divides by (the most Bi-KD can recover);
- the share of samples on which it would teach the target (the partition training would use:
  Eq. 3 / 6, the candidate second in the pair, so ties go to it);
- complementarity: for classification, the share of samples the candidate gets right and the
  target wrong, and the reverse (Roth et al.'s complementary knowledge); for dense tasks, the
  share of samples where the candidate's loss is lower, and by how much on them.

Candidates are ranked by what they could add to the target: the share it gets wrong that they
get right (dense: the share where their loss is lower), then the ensemble gap. ``--k K`` also
chooses K - 1 partners greedily, each time the candidate that adds most to the set (right where
every chosen model is wrong; dense: a lower loss than every chosen model's).

Writes ``partners.md``, ``partners.csv``, ``partners.png``, ``per_sample.npz`` (every model's
per-sample loss and, for classification, correctness: the numbers the table is computed from)
and a ready Bi-KD config for the best pair (``bikd_<target>_<partner>.yaml``; with --k, also
``bikd_kway.yaml``) to ``work_dirs/partners/<config>/<target>`` or --output-dir.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bikd.engine.cli import add_debug_flag, config_parser, run_tool  # noqa: E402


def main(argv=None):
    parser = config_parser(__doc__)
    parser.add_argument('--target', required=True, help='the member to find partners for')
    parser.add_argument('--pool', help='YAML list of candidate member configs')
    parser.add_argument('--timm', action='append', default=[], metavar='NAME[=CHECKPOINT]',
                        help='a timm candidate (classification), repeatable')
    parser.add_argument('--hf', action='append', default=[], metavar='ID_OR_FOLDER[=CHECKPOINT]',
                        help='a Hugging Face transformers candidate (a hub id or a '
                             'save_pretrained folder; classifier or segmenter, as the target), '
                             'repeatable')
    parser.add_argument('--k', type=int, default=2, help='members of the set to choose '
                                                         '(target included)')
    parser.add_argument('--split', choices=['val', 'test'], default='val')
    parser.add_argument('--output-dir')
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    run_tool(lambda: find_partners(args), args.config_file, args.debug)
    return 0


def find_partners(args) -> None:
    """The tool's work, for :func:`main` (which reports input errors in one line)."""
    from bikd.experiments.partners import find_partners as rank
    stem = os.path.splitext(os.path.basename(args.config_file))[0]
    out = os.path.abspath(args.output_dir or os.path.join('work_dirs', 'partners', stem,
                                                          args.target))
    text = rank(args.config_file, args.target, out, args.opts, args.pool, args.timm, args.hf,
                args.k, args.split)
    print('\n' + text)
    print(f'written to {out}: partners.md, partners.csv, partners.png, per_sample.npz')


if __name__ == '__main__':
    sys.exit(main())
