"""The suite's command-line tools (run them as scripts: ``python tools/train_net.py ...``).

A regular package, so that ``tools.<module>`` means these even where detectron2's wheel has
installed a top-level ``tools`` package of its own into site-packages."""
