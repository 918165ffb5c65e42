"""The layout the README describes (``tools/layout.py`` prints it; here its rules are checked):
the core imports no task package and no task package another; the core is in layers and no
module imports a higher layer; no import circle, not even through an import inside a
function; no tool function is longer than the limit."""
import ast

from tools.layout import (LAYERS, TOOL_FUNCTION_LINES, circles, functions, import_graph,
                          imported, layer_of, long_tool_functions, main, unresolved_imports,
                          violations)


def test_the_suite_keeps_its_layout():
    graph = import_graph()
    assert {'bikd.engine.runner', 'classification_bikd.member', 'saliency_bikd.member',
            'mask2former_bikd.d2_plugin', 'bikd.experiments.run_grid', 'bikd.method.meta_arch',
            'bikd.members.hf.processors'} <= set(graph)
    assert 'bikd.engine.build' in graph['bikd.engine.runner']  # relative imports resolved
    assert violations(graph) == []
    assert unresolved_imports() == []  # (an import inside a function of a moved module)
    assert long_tool_functions() == []


def test_every_module_of_the_core_is_in_a_layer_and_the_model_imports_no_planner():
    graph = import_graph()
    core = [m for m in graph if m.startswith('bikd.')]
    assert all(layer_of(m) is not None for m in core), \
        [m for m in core if layer_of(m) is None]
    names = [name for name, _, _ in LAYERS]
    assert [names[layer_of(m)] for m in ('bikd.partition', 'bikd.members.base',
                                         'bikd.members.hf.weights', 'bikd.method.meta_arch',
                                         'bikd.engine.runner', 'bikd.experiments.plan')] == \
        ['base', 'members', 'members', 'method', 'engine', 'experiments']
    # what the meta-architectures need of an experiment is the base's small leaf
    assert 'bikd.experiment_runs' in graph['bikd.method.meta_arch']
    assert not any(t.startswith('bikd.experiments') for t in graph['bikd.method.meta_arch'])


def test_a_task_package_importing_another_or_the_core_importing_a_task_is_named():
    graph = {'bikd.method.meta_arch': {'classification_bikd.member'},
             'saliency_bikd.member': {'bikd.members', 'mask2former_bikd.d2'}}
    assert violations(graph) == [
        'bikd.method.meta_arch imports classification_bikd.member (another package)',
        'saliency_bikd.member imports mask2former_bikd.d2 (another package)']


def test_an_upward_import_is_named_with_both_layers():
    graph = {'bikd.method.meta_arch': {'bikd.experiments.plan', 'bikd.losses'},
             'bikd.experiments.plan': {'bikd.method.meta_arch'}, 'bikd.losses': set(),
             'bikd.data': {'bikd.members.base'}, 'bikd.members.base': set()}
    broken = violations(graph)
    assert ('bikd.method.meta_arch (method) imports bikd.experiments.plan (experiments): a '
            'lower layer imports a higher one') in broken
    assert ('bikd.data (base) imports bikd.members.base (members): a lower layer imports a '
            'higher one') in broken
    assert 'import circle: bikd.experiments.plan -> bikd.method.meta_arch' in broken
    assert not any('bikd.losses' in line for line in broken)  # a lower layer: allowed


def test_a_circle_through_an_import_inside_a_function_is_found():
    source = ('from .run_state import RunState\n'
              'def hook():\n'
              '    from .random_state import get_random_state\n')
    found = imported(ast.parse(source), 'bikd.engine.hooks', False,
                     {'bikd.engine.run_state', 'bikd.engine.random_state'})
    assert found == {'bikd.engine.run_state', 'bikd.engine.random_state'}
    graph = {'bikd.engine.hooks': found, 'bikd.engine.run_state': set(),
             'bikd.engine.random_state': {'bikd.engine.hooks'}}
    assert circles(graph) == [['bikd.engine.hooks', 'bikd.engine.random_state']]
    # a package's front importing its own modules is no circle
    assert circles({'bikd.engine': {'bikd.engine.hooks'},
                    'bikd.engine.hooks': {'bikd.engine'}}) == []


def test_a_long_tool_function_is_measured_with_its_decorators(tmp_path):
    body = '\n'.join(f'    x = {i}' for i in range(TOOL_FUNCTION_LINES))
    path = tmp_path / 'tool.py'
    path.write_text(f'@staticmethod\ndef long():\n{body}\n\ndef short():\n    return 1\n')
    assert dict(functions(str(path))) == {'long': TOOL_FUNCTION_LINES + 2, 'short': 2}


def test_the_tool_prints_the_layers_every_package_and_the_figures(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for text in ('bikd (plugins/bikd)', 'classification_bikd', 'mask2former_bikd',
                 'saliency_bikd', '1. base (plugins/bikd/*.py)', '5. experiments',
                 'import arrows; largest file', 'layout kept'):
        assert text in out, text
