"""Write every member of a trained meta-architecture back in its native format."""
import os
from typing import Dict, List

from .fileio import save_json


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
