"""The private parts of dependencies the suite relies on: all fenced in bikd.compat, each present
in the installed versions, each failing with a message that names it when its library drops it,
and none used anywhere else in the tree (a grep of the source, checked against the list)."""
import ast
import os
import re

import pytest

from bikd import compat
from conftest import ROOT

SOURCE_DIRS = ('plugins/bikd', 'classification_bikd', 'mask2former_bikd', 'saliency_bikd', 'tools')
COMPAT = os.path.join(ROOT, 'plugins/bikd/compat.py')
DEPENDENCIES = ('torch', 'numpy', 'mmengine', 'mmcv', 'mmseg', 'mmdet', 'detectron2', 'mask2former',
                'timm', 'torchvision', 'transformers', 'scipy', 'PIL', 'cv2')
#: a dotted path into a dependency with a private part: numpy._core, detectron2._C, ...
PRIVATE_PATH = re.compile(r'\b(?:%s)(?:\.\w+)*\._[A-Za-z]\w*' % '|'.join(DEPENDENCIES))


def source_files():
    for folder in SOURCE_DIRS:
        for d, _, files in os.walk(os.path.join(ROOT, folder)):
            yield from (os.path.join(d, f) for f in files if f.endswith('.py'))


#: a private name spelled as a string, as ``getattr(x, '_y')`` reaches it
PRIVATE_NAME = re.compile(r'_[A-Za-z]\w*[A-Za-z0-9]')
BY_NAME = ('getattr', 'hasattr', 'setattr', 'delattr')


def private_uses(tree):
    """(kind, name) of every private name a module reaches: attributes ``x._y``, imports of
    private modules or names, dotted private paths of dependencies in strings, and private
    names reached by name (``getattr(x, '_y')``, ``hasattr``, ``setattr``, ``delattr``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith('_') and \
                not node.attr.startswith('__'):
            yield 'attribute', node.attr
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if PRIVATE_PATH.search(node.module):
                yield 'module', node.module
            for alias in node.names:
                if alias.name.startswith('_') and not alias.name.startswith('__'):
                    yield 'name', f'{node.module}.{alias.name}'
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if PRIVATE_PATH.search(alias.name):
                    yield 'module', alias.name
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for match in PRIVATE_PATH.findall(node.value):
                yield 'string', match
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in BY_NAME and len(node.args) > 1 and \
                isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) \
                and PRIVATE_NAME.fullmatch(node.args[1].value):
            yield 'attribute', node.args[1].value  # (the suite's own private names are allowed)


def own_names(trees):
    """Names the suite defines itself (functions, classes, attributes it assigns, arguments)."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def test_no_private_part_of_a_dependency_is_used_outside_compat():
    trees = {path: ast.parse(open(path).read()) for path in source_files()}
    ours = own_names(tree for path, tree in trees.items() if path != COMPAT)
    foreign = {}
    for path, tree in trees.items():
        for kind, name in private_uses(tree):
            if kind == 'attribute' and name in ours:
                continue  # the suite's own private attribute
            foreign.setdefault(path, set()).add(name)
    outside = {os.path.relpath(p, ROOT): sorted(n) for p, n in foreign.items() if p != COMPAT}
    assert not outside, f'private parts of dependencies used outside bikd/compat.py: {outside}'
    # every private name compat.py reaches is on its list, and every listed one is reached
    listed = ' '.join(api.symbol for api in compat.PRIVATE_APIS)
    used = foreign.get(COMPAT, set())
    unlisted = sorted(n for n in used if n.split('.')[-1] not in listed)
    assert not unlisted, f'bikd/compat.py uses {unlisted}, which PRIVATE_APIS does not list'
    source = open(COMPAT).read()
    for api in compat.PRIVATE_APIS:
        for token in re.findall(r'[\w.]*\._\w+|\b_\w+|backend_instances|__getstate__',
                                api.symbol):
            assert token.split('.')[-1] in source, (api.symbol, token)


def test_the_private_parts_exist_in_the_installed_versions():
    assert compat.check_private_apis() == {}


BREAKERS = {
    '_metadata': lambda mp: mp.setattr('torch.nn.Module.state_dict', lambda self: {}),
    'numpy._core.multiarray._reconstruct / scalar':
        lambda mp: mp.setattr(compat, 'NUMPY_CORE', ('numpy._gone', )),
    'HistoryBuffer.__getstate__ / _statistics_methods':
        lambda mp: mp.delattr('mmengine.logging.history_buffer.HistoryBuffer._statistics_methods'),
    'mmengine.fileio.io.backend_instances':
        lambda mp: mp.delattr('mmengine.fileio.io.backend_instances'),
    '_inner_count': lambda mp: mp.setattr('mmengine.optim.OptimWrapper.__init__',
                                          lambda self, optimizer: None),
    '_scale_update_param': lambda mp: mp.setattr('mmengine.optim.AmpOptimWrapper.step',
                                                 lambda self: None),
    'TorchvisionBackend._preprocess / _preprocess_image_like_inputs / '
    '_fuse_mean_std_and_rescale_factor / _standardize_kwargs': lambda mp: mp.delattr(
        'transformers.image_processing_backends.TorchvisionBackend.'
        '_fuse_mean_std_and_rescale_factor'),
    'detectron2._C': lambda mp: mp.setattr(compat, 'detectron2_ops_built', lambda: False),
}


@pytest.mark.parametrize('symbol', [api.symbol for api in compat.PRIVATE_APIS])
def test_a_dependency_that_drops_a_private_part_is_named(symbol, monkeypatch):
    api = next(a for a in compat.PRIVATE_APIS if a.symbol == symbol)
    if api.library == 'detectron2':
        pytest.importorskip('detectron2', reason='detectron2 is not installed (make d2)')
    BREAKERS[symbol](monkeypatch)
    with pytest.raises(compat.CompatibilityError) as e:
        api.check()
    message = str(e.value)
    assert message.startswith(f'{api.library} ') and 'bikd uses' in message, message
    assert any(t in message for t in re.findall(r'\w+', symbol) if t.startswith('_')) or \
        symbol in message, message


def test_a_private_name_reached_by_string_is_caught():
    tree = ast.parse("getattr(cls, '_fuse_mean_std_and_rescale_factor', None)\n"
                     "hasattr(x, '_preprocess')\ngetattr(x, 'public')\n")
    assert sorted(private_uses(tree)) == [('attribute', '_fuse_mean_std_and_rescale_factor'),
                                          ('attribute', '_preprocess')]
