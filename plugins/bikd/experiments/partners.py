"""Which model should teach mine? Candidate partners of a target member ranked before any
training run (``tools/find_partners.py``): every model evaluated once on a split, then per
candidate its own metric, the ensemble with the target (the gap Eq. 14 divides by), the share
of samples it would teach (the partition training would use), and what it adds: the share of
samples it gets right and the target wrong (classification) or where its loss is lower
(dense). :func:`greedy` chooses K - 1 partners, each adding most to the chosen set.
"""
import os
import time
from typing import List, Optional, Sequence

import numpy as np
import torch
import yaml

from ..errors import UserError
from ..fileio import atomic_path, save_csv, save_figure, save_text
from ..members.loading import take_weights
from ..method.meta_arch import member_class
from ..partition import select_teachers
from ..registry import accepted_arguments
from ..summary import markdown_table, metric_digits


def zoo_member(target: dict, declaration: str, flag: str) -> str:
    """The registered member type the target's class declares for models of its task from
    another zoo (``timm_member``, ``transformers_member``), or an error naming the flag."""
    found = getattr(member_class(target), declaration, '')
    if not found:
        raise UserError(f'{flag}: the target is a {target["type"]}, whose task has no member '
                        f'type for {flag[2:]} models; give candidates with --pool')
    return found


def hf_candidate(spec: str, target: dict) -> dict:
    """A Hugging Face transformers candidate, ``ID_OR_FOLDER[=CHECKPOINT]``, for the target's
    task (a segmentation target gets a segmenter) and label space."""
    model, _, checkpoint = spec.partition('=')
    cand = dict(type=zoo_member(target, 'transformers_member', '--hf'), model=model,
                name=model.rstrip('/').split('/')[-1].replace('.', '_'))
    accepted = accepted_arguments(member_class(cand))
    cand.update({k: target[k] for k in ('num_classes', 'partition_loss')
                 if k in target and k in accepted})
    cand.update(dict(checkpoint=checkpoint) if checkpoint else {})
    return cand



def candidate_configs(cfg, target: str, pool: str, timm_names: List[str],
                      hf_names: List[str] = ()) -> List[dict]:
    """The target's config first, then every candidate's (names made unique)."""
    members = [m.to_dict() if hasattr(m, 'to_dict') else dict(m) for m in cfg.model.members]
    names = [m.get('name') for m in members]
    if target not in names:
        raise UserError(f'--target {target!r} is not a member of the config; its members: '
                        f'{names}')
    chosen = members[names.index(target)]
    others = [m for m in members if m.get('name') != target]
    if pool:
        with open(pool) as f:
            listed = yaml.safe_load(f) or []
        if not isinstance(listed, list) or not all(isinstance(m, dict) for m in listed):
            raise UserError(f'{pool}: expected a YAML list of member configs (each a mapping '
                            'with type: ...)')
        for m in listed:  # a pool lists models that may not all have been made yet
            checkpoint = m.get('checkpoint')
            if isinstance(checkpoint, str) and '://' not in checkpoint and \
                    not os.path.exists(checkpoint):
                print(f'left out {m.get("name") or m.get("type")} of {pool}: its checkpoint '
                      f'{checkpoint} does not exist here (the top of {pool} says what makes '
                      'it)', flush=True)
            else:
                others.append(m)
    for spec in timm_names:
        name, _, checkpoint = spec.partition('=')
        cand = dict(type=zoo_member(chosen, 'timm_member', '--timm'), model_name=name,
                    name=name.split('.')[0].replace('/', '_'))
        cand.update({k: chosen[k] for k in ('num_classes', 'input_size') if k in chosen})
        cand.update(dict(checkpoint=checkpoint, pretrained=False) if checkpoint else {})
        others.append(cand)
    others += [hf_candidate(spec, chosen) for spec in hf_names]
    if not others:
        raise UserError('no candidates: give --pool, --timm, --hf, or a config with other '
                        'members')
    seen = {target}
    for m in others:  # names must be unique: suffix repeats
        base = m.get('name') or m.get('model_name', m['type']).split('.')[0]
        name, i = base, 1
        while name in seen:
            i += 1
            name = f'{base}_{i}'
        m['name'] = name
        seen.add(name)
    return [chosen] + others



def evaluate(members, evaluator, loader, device) -> dict:
    """One pass over the split: every model's predictions, and the ensembles of the target
    (model 0) with each candidate, scored by the evaluator; every model's per-sample losses."""
    from mmengine.model import BaseDataPreprocessor
    stats, losses = [], []
    start, total = time.time(), len(loader)
    preprocess = BaseDataPreprocessor().to(device)  # to the device; members normalise
    for i, batch in enumerate(loader, start=1):
        data = preprocess(batch, False)
        with torch.no_grad():
            preds = [m.predict(data['inputs'], data['data_samples']).float() for m in members]
            pairs = [(preds[0] + p) / 2 for p in preds[1:]]
            stacked = torch.stack(preds + pairs)
            stats += evaluator.sample_stats(stacked, data)
            losses.append(evaluator.sample_losses(stacked[:len(members)], data).cpu())
        if i % 10 == 0 or i == total:
            eta = (time.time() - start) / i * (total - i)
            print(f'  batch {i}/{total}, eta {eta:.0f} s', flush=True)
    return dict(stats=stats, losses=torch.cat(losses, dim=1).numpy())



def compare(names: List[str], result: dict, evaluator) -> List[dict]:
    """Per candidate: the numbers of the table (see the module's description)."""
    stats, losses = result['stats'], result['losses']
    metric, k = evaluator.primary_metric, len(names)
    own = [evaluator.summarize(stats, i)[metric] for i in range(k)]
    outcomes = [evaluator.sample_outcome(stats, i) for i in range(k)]
    rows = []
    for j in range(1, k):
        teachers = select_teachers(torch.from_numpy(np.stack([losses[0], losses[j]])),
                                   higher_is_better=False)
        ensemble = evaluator.summarize(stats, k + j - 1)[metric]
        row = dict(candidate=names[j], metric=metric, own=own[j], target=own[0],
                   ensemble=ensemble, gap=ensemble - own[0],
                   teaches=float((teachers == 1).double().mean()))
        if outcomes[0] is not None:
            t, c = outcomes[0], outcomes[j]
            row.update(adds=float(np.mean(c & ~t)), takes=float(np.mean(t & ~c)))
        else:
            lower = losses[j] < losses[0]
            row.update(adds=float(lower.mean()),
                       margin=float((losses[0] - losses[j])[lower].mean()) if lower.any() else 0.0)
        rows.append(row)
    rows.sort(key=lambda r: (-r['adds'], -r['gap'], r['candidate']))
    for rank, r in enumerate(rows, start=1):
        r['rank'] = rank
        r['reason'] = reason(r, classification=outcomes[0] is not None)
    return rows



def reason(r: dict, classification: bool) -> str:
    if classification:
        what = (f'right on {100 * r["adds"]:.1f}% of the samples the target gets wrong, wrong on '
                f'{100 * r["takes"]:.1f}% it gets right')
    else:
        what = (f'lower loss on {100 * r["adds"]:.1f}% of the samples (by {r["margin"]:.3g} on '
                'them)')
    return (f'{what}; would teach {100 * r["teaches"]:.1f}%; the pair\'s ensemble is '
            f'{r["gap"]:+.2f} over the target')



def greedy(names: List[str], result: dict, evaluator, k: int, ranked: List[str]) -> List[str]:
    """K - 1 partners, each adding most to the chosen set (see the module's description);
    equal additions go to the better ranked candidate (``ranked``: best first)."""
    losses = result['losses']
    outcomes = [evaluator.sample_outcome(result['stats'], i) for i in range(len(names))]
    chosen, left = [0], list(range(1, len(names)))
    while len(chosen) < k and left:
        if outcomes[0] is not None:
            covered = np.any([outcomes[i] for i in chosen], axis=0)
            gains = {j: float(np.mean(outcomes[j] & ~covered)) for j in left}
        else:
            best = np.min([losses[i] for i in chosen], axis=0)
            gains = {j: float(np.mean(losses[j] < best)) for j in left}
        pick = max(left, key=lambda j: (gains[j], -ranked.index(names[j])))
        chosen.append(pick)
        left.remove(pick)
    return [names[i] for i in chosen]



def write_config(path: str, base: str, members: List[dict]) -> None:
    text = yaml.safe_dump(dict(_base_=os.path.relpath(base, os.path.dirname(path)),
                               model=dict(members=members)), sort_keys=False)
    save_text('# Bi-KD between the members tools/find_partners.py chose (see partners.md).\n'
              + text, path)



def plot(rows: List[dict], target: str, path: str) -> None:
    """``partners.png``: per candidate (best first, from the top) what it could teach the
    target (the samples it gets right where the target is wrong, in green) beside what it
    gets wrong where the target is right (grey: the target teaches those), and what their
    ensemble gains over the target alone; every bar carries its value, so that one
    candidate reads as well as twenty."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = [r['candidate'] for r in rows][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.55 * len(rows) + 2.4), sharey=True,
                             layout='constrained')
    y = np.arange(len(rows))
    adds = [100 * r['adds'] for r in rows][::-1]
    bars = axes[0].barh(y, adds, height=0.5, color='tab:green',
                        label=f'right where {target} is wrong: it can teach these')
    axes[0].bar_label(bars, fmt='+%.1f%%', fontsize=8, padding=2)
    if 'takes' in rows[0]:
        takes = [-100 * r['takes'] for r in rows][::-1]
        bars = axes[0].barh(y, takes, height=0.5, color='tab:gray',
                            label=f'wrong where {target} is right: {target} teaches these')
        axes[0].bar_label(bars, labels=[f'{-t:.1f}%' for t in takes], fontsize=8, padding=2)
        axes[0].set_xlabel('% of the split\'s samples')
        reach = max(max(adds), -min(takes), 1e-3) * 1.35
        axes[0].set_xlim(-reach, reach)
    else:
        axes[0].set_xlabel(f'% of samples with a lower loss than {target}')
        axes[0].set_xlim(0, max(max(adds), 1e-3) * 1.35)
    axes[0].axvline(0, color='black', lw=0.8)
    fig.legend(fontsize=8, loc='outside lower left', frameon=False)
    gaps = [r['gap'] for r in rows][::-1]
    bars = axes[1].barh(y, gaps, height=0.5,
                        color=['tab:green' if g > 0 else 'tab:red' for g in gaps])
    axes[1].bar_label(bars, fmt='%+.2f', fontsize=8, padding=2)
    reach = max(max(abs(g) for g in gaps), 1e-3) * 1.35
    axes[1].set_xlim(min(0.0, min(gaps) * 1.35), max(0.0, max(gaps)) + reach * 0.3 or reach)
    axes[1].axvline(0, color='black', lw=0.8)
    axes[1].set_xlabel(f'{rows[0]["metric"]} of the ensemble with {target} minus {target}\'s')
    axes[0].set_yticks(y, names)
    axes[0].set_ylim(-0.6, len(rows) - 0.4)
    fig.suptitle(f'partners for {target}, best first')
    save_figure(fig, path)


def table(rows: List[dict], target: str, split: str) -> List[str]:
    """The ranking as the lines of ``partners.md``: the table, then each candidate's reason."""
    metric = rows[0]['metric']
    digits = metric_digits(r['own'] for r in rows)
    dense = 'takes' not in rows[0]
    head = ['rank', 'candidate', metric, f'ensemble with {target}', 'gap',
            'teaches %', 'lower loss %' if dense else 'adds %', 'by' if dense else 'takes %']
    body = [[str(r['rank']), r['candidate'], f'{r["own"]:.{digits}f}',
             f'{r["ensemble"]:.{digits}f}', f'{r["gap"]:+.{digits}f}',
             f'{100 * r["teaches"]:.1f}', f'{100 * r["adds"]:.1f}',
             f'{r["margin"]:.3g}' if dense else f'{100 * r["takes"]:.1f}'] for r in rows]
    lines = [f'# Partners for {target} ({metric} {rows[0]["target"]:.{digits}f} on '
             f'{split})', ''] + markdown_table(head, body, text_columns=0)
    return lines + ['', 'Why, best first:', ''] + [
        f'{r["rank"]}. {r["candidate"]}: {r["reason"]}' for r in rows]


def evaluate_candidates(cfg, configs: List[dict], split: str, config_file: str):
    """Build the target and every candidate as members of one model (each takes its own
    weights) and evaluate them on ``split`` (:func:`evaluate`); returns (result, evaluator)."""
    from mmengine.registry import METRICS
    from mmengine.runner import Runner

    from ..engine.build import build_model
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    candidates = build_model(dict(type='IndependentMetaArch', members=configs),
                             cfg.get('default_scope'))
    take_weights(candidates)
    members = [m.to(device).eval() for m in candidates.members]
    loader_cfg = cfg.get(f'{split}_dataloader')
    evaluator_cfg = cfg.get(f'{split}_evaluator')
    if loader_cfg is None or evaluator_cfg is None:
        raise UserError(f'{config_file} has no {split}_dataloader / {split}_evaluator')
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    evaluator = METRICS.build(evaluator_cfg)
    evaluator.dataset_meta = getattr(loader.dataset, 'metainfo', None)
    print(f'evaluating {len(members)} models and {len(members) - 1} pair ensembles on '
          f'{len(loader.dataset)} samples ({split})', flush=True)
    return evaluate(members, evaluator, loader, device), evaluator


def find_partners(config_file: str, target: str, out: str, opts: Sequence[str] = (),
                  pool: Optional[str] = None, timm_names: Sequence[str] = (),
                  hf_names: Sequence[str] = (), k: int = 2, split: str = 'val') -> str:
    """Rank the candidates for ``target`` and write ``partners.md`` / ``.csv`` / ``.png``,
    ``per_sample.npz`` and the ready configs to ``out``; returns ``partners.md``'s text."""
    from ..engine import load_config
    cfg = load_config(config_file, list(opts))
    configs = candidate_configs(cfg, target, pool, list(timm_names), list(hf_names))
    names = [c['name'] for c in configs]
    print(f'target {target}; candidates: {", ".join(names[1:])}', flush=True)
    result, evaluator = evaluate_candidates(cfg, configs, split, config_file)
    rows = compare(names, result, evaluator)
    os.makedirs(out, exist_ok=True)
    outcomes = {n: evaluator.sample_outcome(result['stats'], i) for i, n in enumerate(names)}
    with atomic_path(os.path.join(out, 'per_sample.npz')) as tmp, open(tmp, 'wb') as f:
        np.savez_compressed(f, **{f'loss/{n}': result['losses'][i] for i, n in enumerate(names)},
                            **{f'correct/{n}': o for n, o in outcomes.items() if o is not None})
    lines = table(rows, target, split)
    best = rows[0]['candidate']
    pair = os.path.join(out, f'bikd_{target}_{best}.yaml')
    write_config(pair, config_file, [configs[0], configs[names.index(best)]])
    lines += ['', f'Ready config for the best pair: {pair}']
    if k > 2:
        chosen = greedy(names, result, evaluator, k, [r['candidate'] for r in rows])
        write_config(os.path.join(out, 'bikd_kway.yaml'), config_file,
                     [configs[names.index(n)] for n in chosen])
        lines += [f'K = {len(chosen)}, chosen greedily: {", ".join(chosen)} '
                  f'({os.path.join(out, "bikd_kway.yaml")})']
    text = '\n'.join(lines) + '\n'
    save_text(text, os.path.join(out, 'partners.md'))
    save_csv(rows, os.path.join(out, 'partners.csv'))
    plot(rows, target, os.path.join(out, 'partners.png'))
    return text
