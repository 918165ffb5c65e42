"""The suite's own top-level config keys, declared once: the config check accepts them
(:data:`bikd.engine.config.TOP_LEVEL_KEYS`), the runner takes them out of the config before
mmengine sees it (:class:`bikd.engine.runner.BiKDRunner.from_cfg`), and the command line's
flags that are config keys set them (:func:`bikd.engine.cli.setup`).
"""

#: key -> what it does (mmengine's own ``resume`` is one of them: the suite reads it)
RUNNER_KEYS = {
    'resume': 'continue from the work_dir\'s last checkpoint: true (one must be there) or auto '
              '(--resume [auto])',
    'overwrite': 'a fresh start into a work_dir that holds a run moves that run aside '
                 '(--overwrite)',
    'load_partial': 'load_from may hold only part of the model\'s weights',
    'resume_changed': '--resume of a run whose config changed',
    'keep_training_on_save_error': 'a failed checkpoint save warns instead of stopping the run',
    'skip_bad_samples': 'up to N unreadable training samples are skipped',
    'global_batch_size': 'the batch of a step over all processes, kept whatever their number',
    'global_batch_policy': 'keep (global_batch_size divided among the processes) or scale_lr '
                           '(the per-process batch kept, the learning rate scaled)',
}
#: the keys the command line's flags of the same name set
FLAG_KEYS = ('resume', 'overwrite')
#: the keys the runner decides a run's start with (the others act where they are read)
START_KEYS = ('resume', 'overwrite', 'load_partial', 'resume_changed')
