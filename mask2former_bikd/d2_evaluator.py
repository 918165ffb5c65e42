"""Panoptic and instance segmentation scored by detectron2's own evaluators, for every member
and for their ensemble where one is defined.

Each member gets its own detectron2 evaluators, as Mask2Former's ``train_net.py`` builds them
for the dataset: ``COCOPanopticEvaluator`` (PQ, SQ, RQ over all classes, things and stuff),
``COCOEvaluator`` (mask AP; for ADE20K's panoptic layout on its instance annotations, as
Mask2Former's ``InstanceSegEvaluator`` does) and ``SemSegEvaluator`` (mIoU, fwIoU, mACC, pACC), fed with the
model's own results (``panoptic_seg``, ``instances``, ``sem_seg``). The ensemble (the mean of
the members' per-pixel class distributions) is scored by ``SemSegEvaluator`` alone: a panoptic
or an instance result is a set of segments with identities, and two models' segments do not
correspond, so they have no mean.
"""
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import torch
from mmengine.dist import broadcast_object_list, get_world_size, is_main_process

from bikd.metrics import MemberwiseMetric, dense
from bikd.registry import METRICS

from .d2_data import load_dicts, register
from bikd.errors import UserError

#: the evaluators' result sections -> the scalar keys kept from each
KEPT = {'panoptic_seg': ('PQ', 'SQ', 'RQ', 'PQ_th', 'SQ_th', 'RQ_th', 'PQ_st', 'SQ_st', 'RQ_st'),
        'segm': ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'),
        'sem_seg': ('mIoU', 'fwIoU', 'mACC', 'pACC')}
TASKS = ('panoptic', 'instance', 'semantic')
#: each task's key in a detectron2 model's results
RESULT = {'panoptic': 'panoptic_seg', 'instance': 'instances', 'semantic': 'sem_seg'}


@METRICS.register_module()
class Detectron2Metric(MemberwiseMetric):
    """detectron2's evaluators for every member, and the ensemble's mIoU (see the module's
    description). Metric keys are ``<model>/<key>``: ``PQ``, ``SQ``, ``RQ`` and their ``_th`` /
    ``_st`` parts, ``AP`` ... ``APl`` (mask AP), ``mIoU``, ``fwIoU``, ``mACC``, ``pACC``.

    Args:
        dataset, datasets_root: the evaluated dataset, as the validation
            :class:`~mask2former_bikd.d2_data.Detectron2Dataset` names it.
        tasks: what to score: ``panoptic``, ``instance``, ``semantic`` (default: all that the
            dataset's annotations allow: panoptic datasets all three, instance datasets
            ``instance``).
        primary_metric: the key of the summary table and of each member's best checkpoint
            (default ``PQ`` for panoptic datasets, ``AP`` for instance datasets).
    """

    def __init__(self, dataset: str, datasets_root: str = 'datasets',
                 tasks: Optional[Sequence[str]] = None, primary_metric: Optional[str] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.dataset_name = register(dataset, datasets_root)
        from detectron2.data import MetadataCatalog
        meta = MetadataCatalog.get(self.dataset_name)
        self.evaluator_type = getattr(meta, 'evaluator_type', '')
        panoptic = 'panoptic' in self.evaluator_type
        self.tasks = tuple(tasks) if tasks else (TASKS if panoptic else ('instance', ))
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise UserError(f'tasks must be among {TASKS}, got {unknown}')
        self.primary_metric = primary_metric or ('PQ' if 'panoptic' in self.tasks else
                                                 'AP' if 'instance' in self.tasks else 'mIoU')
        # ADE20K's panoptic layout numbers its things among all 150 classes; its instance
        # annotations (ade20k_instance_*.json, which the panoptic registration names) number
        # the 100 things alone: mask AP is scored there, each predicted class mapped over, as
        # Mask2Former's InstanceSegEvaluator does (whose call no longer fits detectron2's)
        self.instance_dataset, self.class_map = self.dataset_name, None
        if self.evaluator_type == 'ade20k_panoptic_seg' and 'instance' in self.tasks:
            base = dataset.split('@')[0].replace('ade20k_panoptic', 'ade20k_instance')
            self.instance_dataset = register(base, datasets_root)
            things = MetadataCatalog.get(self.instance_dataset)
            load_dicts(self.instance_dataset)  # sets the instance metadata's id mapping
            self.class_map = {meta.thing_dataset_id_to_contiguous_id[ade_id]: contiguous
                              for ade_id, contiguous in
                              things.thing_dataset_id_to_contiguous_id.items()}
        self._evaluators: Dict[str, List[Any]] = {}
        self._output_dirs: List[tempfile.TemporaryDirectory] = []

    def _make(self, model: str, outputs: Optional[Sequence[dict]] = None) -> List[Any]:
        """A model's evaluators (reset), made once per evaluation: for the tasks whose results
        the model gives (``outputs``, a batch of its results: a member whose config turns an
        inference off, ``MODEL.MASK_FORMER.TEST.SEMANTIC_ON False``, is not scored on it, as
        Mask2Former's ``train_net.py`` builds its evaluators after those flags)."""
        if model not in self._evaluators:
            from detectron2.evaluation import (COCOEvaluator, COCOPanopticEvaluator,
                                               SemSegEvaluator)
            distributed = get_world_size() > 1
            tasks = ('semantic', ) if model == 'ensemble' else self.tasks
            if outputs:
                tasks = tuple(t for t in tasks if RESULT[t] in outputs[0])
            made = []
            if 'panoptic' in tasks:
                out = tempfile.TemporaryDirectory(prefix='bikd-pq-')
                self._output_dirs.append(out)
                made.append(COCOPanopticEvaluator(self.dataset_name, output_dir=out.name))
            if 'instance' in tasks:
                made.append(COCOEvaluator(self.instance_dataset, tasks=('segm', ),
                                          distributed=distributed, output_dir=None))
            if 'semantic' in tasks:
                made.append(SemSegEvaluator(self.dataset_name, distributed=distributed))
            for e in made:
                e.reset()
            self._evaluators[model] = made
        return self._evaluators[model]

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        inputs = data_batch['inputs']
        for out in data_samples:
            self.model_names = list(out['names'])
            for name, pred in out['preds']:
                if name == 'ensemble' or not hasattr(pred, 'extra'):
                    probs = dense(pred)
                    outputs = [dict(sem_seg=p[:, :int(x['height']), :int(x['width'])])
                               for p, x in zip(probs, inputs)]
                else:
                    outputs = pred.extra
                for evaluator in self._make(name, outputs):
                    if type(evaluator).__name__ == 'COCOEvaluator' and self.class_map:
                        evaluator.process(inputs, [self._things(o) for o in outputs])
                    else:
                        evaluator.process(inputs, outputs)
                del pred
        # one entry per sample, so that mmengine counts the samples (the scores are the
        # evaluators')
        self.results.extend([None] * len(inputs))

    def _things(self, output: dict) -> dict:
        """A panoptic model's instances with their classes numbered as the instance
        annotations number them (things only)."""
        inst = output['instances']
        keep = [int(c) in self.class_map for c in inst.pred_classes]
        inst = inst[torch.tensor(keep, dtype=torch.bool)]
        inst.pred_classes = torch.tensor([self.class_map[int(c)] for c in inst.pred_classes],
                                         dtype=torch.long)
        return dict(instances=inst)

    def evaluate(self, size: int) -> Dict[str, float]:
        """Every model's evaluators score the whole set (all processes take part, as
        detectron2's evaluators gather across them); the main process's scores are given to
        every process."""
        metrics = {}
        for name in self.model_names:
            for evaluator in self._make(name):
                result = evaluator.evaluate() or {}
                for section, values in result.items():
                    for key in KEPT.get(section, ()):
                        if key in values:
                            metrics[f'{name}/{key}'] = float(values[key])
        self._evaluators.clear()
        for out in self._output_dirs:
            out.cleanup()
        self._output_dirs.clear()
        self.results.clear()
        holder = [metrics if is_main_process() else None]
        broadcast_object_list(holder)
        return holder[0]

    def compute_metrics(self, results: list) -> Dict[str, float]:  # evaluate() does it all
        raise NotImplementedError
