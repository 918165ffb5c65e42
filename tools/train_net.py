#!/usr/bin/env python
"""Train or evaluate any Bi-KD experiment.

    python tools/train_net.py --config-file configs/digits/resnet_convnext_bikd.yaml
    python tools/train_net.py --config-file FILE --eval-only
    python tools/train_net.py --config-file FILE --resume
    python tools/train_net.py --config-file FILE --num-gpus 8 train_dataloader.batch_size=16
"""
from bikd.engine.cli import run_cli

if __name__ == '__main__':
    run_cli()
