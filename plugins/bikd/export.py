"""Write every member of a trained meta-architecture back in its native format."""
import os
from typing import Dict, List, Sequence

from .fileio import save_json
from .weights import load_into, load_weights_file


def load_trained(config: str, checkpoint: str, overrides: Sequence[str] = ()):
    """The meta-architecture of ``config`` with the weights of a runner ``checkpoint`` (the
    members are built without their original weights first)."""
    from mmengine.registry import MODELS, init_default_scope

    from .engine import load_config, setup_engine

    cfg = load_config(config, overrides)
    init_default_scope(cfg.get('default_scope', 'bikd'))
    model_cfg = dict(cfg.model)
    model_cfg['random_init'] = True
    model = MODELS.build(model_cfg)
    setup_engine()
    load_into(model, load_weights_file(checkpoint), checkpoint)
    return model.eval()


def export_members(model, out_dir: str, source: str = '') -> List[Dict]:
    """Call each member's ``export`` into ``out_dir`` (files named after the member) and
    write ``out_dir/members.json`` listing them. Returns the members' descriptions."""
    os.makedirs(out_dir, exist_ok=True)
    infos = []
    for member in model.members:
        info = member.export(out_dir, member.name)
        info.setdefault('member', member.name)
        infos.append(info)
    save_json(dict(source=source, members=infos), os.path.join(out_dir, 'members.json'))
    return infos
