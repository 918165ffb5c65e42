"""Write every member of a trained meta-architecture back in its native format."""
import json
import os
from typing import Dict, List, Optional, Sequence

from ..checkpoint import check_checkpoint_fits, load_into, load_weights_file
from ..errors import UserError
from ..fileio import failures_named, save_json
from ..members.loading import take_weights


def load_trained(config: str, checkpoint: str, overrides: Sequence[str] = ()):
    """The meta-architecture of ``config`` with the weights of a runner ``checkpoint`` (the
    members are built, and take their weights from the checkpoint alone)."""
    from .build import build_model
    from .config import load_config

    cfg = load_config(config, overrides)
    model = build_model(cfg)  # (it also lets runner checkpoints, with mmengine's objects, load)
    check_checkpoint_fits(model, checkpoint, given_as='--checkpoint',
                          hint=f'Is it a checkpoint of a run of {config}?')
    take_weights(model, checkpoint)
    load_into(model, load_weights_file(checkpoint), checkpoint)
    return model.eval()


def evaluation_data(cfg) -> Optional[dict]:
    """The validation dataset of a config, as its export records it: its type and the
    arguments that shape what a member is given (``transform``, ``pipeline``, sizes), or
    ``None`` when the config has none."""
    dataset = (cfg.get('val_dataloader') or {}).get('dataset')
    if not dataset:
        return None
    dataset = dataset.to_dict() if hasattr(dataset, 'to_dict') else dict(dataset)
    while 'dataset' in dataset and isinstance(dataset['dataset'], dict):  # a wrapper
        dataset = dict(dataset['dataset'])
    keep = ('type', 'transform', 'pipeline', 'frame_size', 'clip_len')
    return {k: dataset[k] for k in keep if k in dataset}


def export_members(model, out_dir: str, source: str = '',
                   evaluated_with: Optional[dict] = None, which: str = '') -> List[Dict]:
    """Call each member's ``export`` into ``out_dir`` (files named after the member) and
    list them in ``out_dir/members.json``, each with the checkpoint it came from (``source``)
    and, given ``which`` (``last``, ``best top1``), which of the run's weights they are.
    ``evaluated_with`` (the config's validation dataset and its transform: what the member
    was given before its own resizing and normalisation, so what its reported numbers came
    from) is added to each member's JSON. Members exported there before by other runs stay
    listed; a member exported again replaces its entry, unless it was another ``which`` of
    weights: that is refused before anything is written (one folder per choice of weights).
    Returns this export's descriptions."""
    listing = os.path.join(out_dir, 'members.json')
    earlier = _listed(listing)
    names = {member.name for member in model.members}
    clash = [e for e in earlier if e.get('member') in names and which and
             e.get('which', which) != which]
    if clash:
        raise UserError(f'{out_dir} holds the {clash[0]["which"]!r} weights of '
                        f'{", ".join(e["member"] for e in clash)} ({clash[0].get("source")}); '
                        f'exporting the {which!r} ones there would replace them: give another '
                        '--output-dir')
    with failures_named(os.path.abspath(out_dir)):
        os.makedirs(out_dir, exist_ok=True)
    infos = []
    for member in model.members:
        member.evaluated_with = evaluated_with
        info = member.export(out_dir, member.name)
        info.setdefault('member', member.name)
        info.setdefault('source', source)
        if which:
            info['which'] = which
        infos.append(info)
    kept = [e for e in earlier if e.get('member') not in names]
    save_json(dict(source=source, members=kept + infos), listing)
    return infos


def _listed(listing: str) -> List[dict]:
    """The entries of an export folder's ``members.json`` (none for a file that is not one of
    ours: it is written anew)."""
    if not os.path.isfile(listing):
        return []
    try:
        with open(listing) as f:
            entries = list(json.load(f).get('members', []))
    except (ValueError, AttributeError, TypeError):
        return []
    return [e for e in entries if isinstance(e, dict)]
