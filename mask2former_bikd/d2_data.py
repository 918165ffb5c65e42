"""Datasets as detectron2 registers them, batched as detectron2 models take them: panoptic and
instance segmentation (ADE20K, COCO) read through detectron2's ``DatasetCatalog`` /
``MetadataCatalog`` and mapped by Mask2Former's own dataset mappers, so that every member of a
run sees the same augmented images, with the targets Mask2Former trains on (``instances`` with
``gt_classes`` / ``gt_masks``, and ``sem_seg`` where the layout has it).

The on-disk layouts are the ones Mask2Former's and detectron2's registrations read under a
datasets root (``DETECTRON2_DATASETS``):

- ``ade20k_panoptic_{train,val}``: ``ADEChallengeData2016/images/{training,validation}/*.jpg``,
  ``ade20k_panoptic_{train,val}/*.png`` + ``ade20k_panoptic_{train,val}.json`` (COCO panoptic
  format, ADE20K's 150 category ids), ``annotations_detectron2/{training,validation}/*.png``
  (semantic labels 0..149, 255 ignored) and ``ade20k_instance_{train,val}.json`` (COCO
  instances of the 100 thing classes, for mask AP), as Mask2Former's
  ``prepare_ade20k_{sem_seg,pan_seg,ins_seg}.py`` write them;
- ``ade20k_instance_{train,val}``: the same images and ``ade20k_instance_*.json``;
- ``coco_2017_{train,val}_panoptic``: ``coco/{train,val}2017``, ``coco/panoptic_{train,val}2017``
  + ``coco/annotations/panoptic_{train,val}2017.json``, ``coco/panoptic_semseg_{train,val}2017``
  and ``coco/annotations/instances_{train,val}2017.json``;
- ``coco_2017_{train,val}``: ``coco/{train,val}2017`` + ``coco/annotations/instances_*.json``.

Each is registered with the library's own loaders under ``<name>@<root>`` (so runs with
different roots coexist in one process). Bad annotations are errors that name the file: a
segment of a panoptic PNG missing from its JSON, a category outside the dataset's metadata.
"""
import copy
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from bikd.registry import DATASETS, FUNCTIONS

from . import d2
from bikd.errors import UserError

#: standard split name -> (layout, the split's folder names)
SPLITS = {
    'ade20k_panoptic_train': ('ade20k_panoptic', 'training', 'train'),
    'ade20k_panoptic_val': ('ade20k_panoptic', 'validation', 'val'),
    'ade20k_instance_train': ('ade20k_instance', 'training', 'train'),
    'ade20k_instance_val': ('ade20k_instance', 'validation', 'val'),
    'coco_2017_train_panoptic': ('coco_panoptic', 'train2017', 'train2017'),
    'coco_2017_val_panoptic': ('coco_panoptic', 'val2017', 'val2017'),
    'coco_2017_train': ('coco_instance', 'train2017', 'train2017'),
    'coco_2017_val': ('coco_instance', 'val2017', 'val2017'),
}
MAPPERS = ('panoptic', 'instance', 'semantic', 'test')


def _ade_instance_metadata() -> dict:
    from mask2former.data.datasets.register_ade20k_instance import ADE_CATEGORIES
    ids = [c['id'] for c in ADE_CATEGORIES]
    return dict(thing_dataset_id_to_contiguous_id={k: i for i, k in enumerate(ids)},
                thing_classes=[c['name'] for c in ADE_CATEGORIES])


def _paths(layout: str, root: str, folder: str, short: str) -> Dict[str, str]:
    ade = os.path.join(root, 'ADEChallengeData2016')
    coco = os.path.join(root, 'coco')
    if layout.startswith('ade20k'):
        return dict(image_root=os.path.join(ade, 'images', folder),
                    panoptic_root=os.path.join(ade, f'ade20k_panoptic_{short}'),
                    panoptic_json=os.path.join(ade, f'ade20k_panoptic_{short}.json'),
                    semantic_root=os.path.join(ade, 'annotations_detectron2', folder),
                    instances_json=os.path.join(ade, f'ade20k_instance_{short}.json'))
    return dict(image_root=os.path.join(coco, folder),
                panoptic_root=os.path.join(coco, f'panoptic_{short}'),
                panoptic_json=os.path.join(coco, 'annotations', f'panoptic_{short}.json'),
                semantic_root=os.path.join(coco, f'panoptic_semseg_{short}'),
                instances_json=os.path.join(coco, 'annotations', f'instances_{short}.json'))


def register(dataset: str, root: str) -> str:
    """Register the standard split ``dataset`` (:data:`SPLITS`) of the layout under ``root``
    with detectron2's catalogs, through Mask2Former's and detectron2's own loaders; returns the
    name it is registered under (``<dataset>@<root>``). A name already registered (a split
    of detectron2's own, or one registered before) is returned as it is."""
    d2.import_mask2former()
    from detectron2.data import DatasetCatalog, MetadataCatalog
    if dataset not in SPLITS:
        if dataset in DatasetCatalog.list():
            return dataset
        raise UserError(f'dataset {dataset!r} is neither registered in detectron2\'s '
                        f'DatasetCatalog nor one of the layouts this suite registers '
                        f'({", ".join(sorted(SPLITS))})')
    root = os.path.abspath(root)
    name = f'{dataset}@{root}'
    if name in DatasetCatalog.list():
        return name
    layout, folder, short = SPLITS[dataset]
    p = _paths(layout, root, folder, short)
    needed = [p['image_root']] + ([p['panoptic_root'], p['panoptic_json']]
                                  if layout.endswith('panoptic') else [p['instances_json']])
    missing = [x for x in needed if not os.path.exists(x)]
    if missing:
        raise FileNotFoundError(f'dataset {dataset} under {root}: {", ".join(missing)} not '
                                f'found (the layout detectron2 and Mask2Former read: see '
                                'mask2former_bikd/d2_data.py)')
    if layout == 'ade20k_panoptic':
        from mask2former.data.datasets.register_ade20k_panoptic import (
            get_metadata, register_ade20k_panoptic)
        register_ade20k_panoptic(name, get_metadata(), p['image_root'], p['panoptic_root'],
                                 p['semantic_root'], p['panoptic_json'], p['instances_json'])
    elif layout == 'coco_panoptic':
        from mask2former.data.datasets.register_coco_panoptic_annos_semseg import (
            get_metadata, load_coco_panoptic_json)
        meta = get_metadata()
        DatasetCatalog.register(name, lambda: load_coco_panoptic_json(
            p['panoptic_json'], p['image_root'], p['panoptic_root'], p['semantic_root'], meta))
        MetadataCatalog.get(name).set(
            sem_seg_root=p['semantic_root'], panoptic_root=p['panoptic_root'],
            image_root=p['image_root'], panoptic_json=p['panoptic_json'],
            json_file=p['instances_json'], evaluator_type='coco_panoptic_seg',
            ignore_label=255, label_divisor=1000, **meta)
    else:
        from detectron2.data.datasets import register_coco_instances
        meta = _ade_instance_metadata() if layout == 'ade20k_instance' else {}
        register_coco_instances(name, meta, p['instances_json'], p['image_root'])
    return name


def load_dicts(name: str) -> List[dict]:
    """The dataset dicts of a registered dataset; a category that its metadata does not know
    is an error that names the annotation file."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    meta = MetadataCatalog.get(name)
    source = getattr(meta, 'panoptic_json', None) or getattr(meta, 'json_file', None) or name
    try:
        return DatasetCatalog.get(name)
    except KeyError as e:
        raise UserError(f'{source}: category id {e} is not among the categories of the '
                        f'dataset\'s metadata ({name}); is it an annotation of another '
                        'dataset?') from e


def check_panoptic_png(record: dict, json_file: str) -> None:
    """Every segment of a panoptic PNG is listed in its JSON record, else an error naming
    both files."""
    from PIL import Image
    png = record['pan_seg_file_name']
    rgb = np.asarray(Image.open(png).convert('RGB'), dtype=np.int64)
    ids = set(np.unique(rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]).tolist())
    listed = {s['id'] for s in record['segments_info']}
    unlisted = sorted(ids - listed - {0})
    if unlisted:
        raise UserError(f'panoptic annotation {png} has segment id(s) {unlisted[:8]} that its '
                        f'record in {json_file} does not list (segments_info)')


def training_dicts(dicts: List[dict], filter_empty: bool) -> List[dict]:
    """The images a training set keeps, as detectron2's ``build_detection_train_loader``
    (``get_detection_dataset_dicts(filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)``),
    which Mask2Former's ``train_net.py`` uses for every mapper: datasets of instance
    annotations (``annotations``: COCO, ADE20K instance) lose the images with none that is not
    crowd; panoptic and semantic datasets (``segments_info``, ``sem_seg_file_name``) keep every
    image, also one without segments (its targets are empty)."""
    if filter_empty and dicts and 'annotations' in dicts[0]:
        from detectron2.data.build import filter_images_with_only_crowd_annotations
        return filter_images_with_only_crowd_annotations(dicts)
    return list(dicts)


@DATASETS.register_module()
class Detectron2Dataset(Dataset):
    """A dataset as detectron2 registers it, each sample mapped by Mask2Former's dataset mapper.

    Yields ``dict(inputs=<the mapper's dict>, data_samples=None)``: ``image`` (``uint8
    [3, H, W]`` in the config's ``INPUT.FORMAT``), ``instances`` (``gt_classes``,
    ``gt_masks``), ``sem_seg`` where the layout has semantic labels, ``height`` / ``width``,
    ``file_name`` and ``image_id``: what detectron2 models and evaluators take. Batch it with
    ``collate_fn: {type: bikd.detectron2_collate}``.

    Args:
        dataset: a split of :data:`SPLITS` (registered under ``datasets_root``) or a name
            already registered in detectron2's ``DatasetCatalog``.
        datasets_root: the folder holding the layouts (detectron2's ``DETECTRON2_DATASETS``).
        config: a Mask2Former config whose ``INPUT`` settings (augmentation, crop, format) the
            mapper applies, with ``opts``: a path or its name in the Mask2Former repository.
        mapper: ``panoptic``, ``instance`` or ``semantic`` (Mask2Former's training mappers),
            or ``test`` (detectron2's ``DatasetMapper`` in evaluation: resize only).
        check_annotations: check every panoptic PNG against its JSON record as it is read.

    A training set (any mapper but ``test``) keeps the images detectron2's training loader
    keeps (:func:`training_dicts`, after the config's ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``):
    instance datasets drop the images whose annotations are all crowd (or absent); panoptic
    ones keep every image.
    """

    #: where its data is, for the run's fingerprint (:func:`bikd.data.dataset_fingerprint`)
    source_arguments = ('dataset', 'datasets_root')

    def __init__(self, dataset: str, datasets_root: str = 'datasets', config: str = '',
                 opts: Optional[Sequence[Any]] = None, mapper: str = 'test',
                 check_annotations: bool = True):
        if mapper not in MAPPERS:
            raise UserError(f'mapper must be one of {MAPPERS}, got {mapper!r}')
        if not config:
            raise UserError('Detectron2Dataset needs config=... (a Mask2Former config: its '
                            'INPUT settings drive the mapper)')
        self.name = register(dataset, datasets_root)
        self.mapper_kind = mapper
        self.check = bool(check_annotations)
        from detectron2.data import MetadataCatalog
        self.meta = MetadataCatalog.get(self.name)
        cfg = d2.load_d2_config(config, opts)
        dicts = load_dicts(self.name)
        if mapper != 'test':
            dicts = training_dicts(dicts, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        if not dicts:
            raise UserError(f'dataset {self.name} has no image to '
                            f'{"evaluate" if mapper == "test" else "train"} on')
        self.dicts = dicts
        self.mapper = self._mapper(cfg, mapper)

    @staticmethod
    def _mapper(cfg, kind: str):
        import mask2former
        from detectron2.data import DatasetMapper
        if kind == 'test':
            return DatasetMapper(cfg, is_train=False)
        return {'panoptic': mask2former.MaskFormerPanopticDatasetMapper,
                'instance': mask2former.MaskFormerInstanceDatasetMapper,
                'semantic': mask2former.MaskFormerSemanticDatasetMapper}[kind](cfg, True)

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, index: int) -> dict:
        record = copy.deepcopy(self.dicts[index])
        try:
            if self.check and 'pan_seg_file_name' in record:
                check_panoptic_png(record, getattr(self.meta, 'panoptic_json', self.name))
            inputs = self.mapper(record)
        except OSError as e:  # PIL's messages do not always name the file (a truncated one)
            files = [record[k] for k in ('file_name', 'pan_seg_file_name', 'sem_seg_file_name')
                     if record.get(k)]
            raise OSError(f'cannot read image file {files[0]} or its annotation '
                          f'({", ".join(files[1:]) or "none"}): {e}') from e
        return dict(inputs=inputs, data_samples=None)

    @property
    def metainfo(self) -> dict:
        """The class names the members must predict: every class of a panoptic dataset
        (things and stuff), the thing classes of an instance dataset."""
        classes = getattr(self.meta, 'stuff_classes', None) \
            if 'panoptic' in getattr(self.meta, 'evaluator_type', '') else None
        if classes is None:
            classes = getattr(self.meta, 'thing_classes', None)
        return dict(classes=tuple(classes or ()), dataset=self.name)


@FUNCTIONS.register_module()
def detectron2_collate(batch: List[dict]) -> dict:
    """A batch of :class:`Detectron2Dataset` samples: ``inputs`` the list of detectron2 dicts
    (as detectron2's trivial batch collator gives them), no ``data_samples``."""
    return dict(inputs=[item['inputs'] for item in batch], data_samples=None)
