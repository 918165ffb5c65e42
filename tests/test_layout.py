"""The layout the README describes: the core imports no task package and no task package
imports another (``tools/layout.py`` prints the structure; here its rule is checked)."""
from tools.layout import import_graph, main, violations


def test_the_core_imports_no_task_package_and_no_task_package_another():
    graph = import_graph()
    assert {'bikd.engine.runner', 'classification_bikd.member', 'saliency_bikd.member',
            'mask2former_bikd.d2_plugin'} <= set(graph)
    assert 'bikd.engine.build' in graph['bikd.engine.runner']  # relative imports resolved
    assert violations(graph) == []


def test_a_broken_layout_is_named():
    graph = {'bikd.meta_arch': {'classification_bikd.member'},
             'saliency_bikd.member': {'bikd.member', 'mask2former_bikd.d2'}}
    assert violations(graph) == ['bikd.meta_arch imports classification_bikd.member',
                                 'saliency_bikd.member imports mask2former_bikd.d2']


def test_the_tool_prints_every_package(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for package in ('bikd (plugins/bikd)', 'classification_bikd', 'mask2former_bikd',
                    'saliency_bikd'):
        assert package in out
    assert 'layout kept' in out
