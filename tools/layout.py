#!/usr/bin/env python
"""Print the suite's structure as its imports draw it: the core's layers, each package and
module with the modules of the suite it imports, and the figures of the structure.

    python tools/layout.py                 # every package of the suite
    python tools/layout.py plugins/bikd    # one folder

The rules it shows (and ``tests/test_layout.py`` checks):

- the core (``plugins/bikd``, import name ``bikd``) imports no task package, and no task
  package imports another;
- the core is in layers, lowest first (:data:`LAYERS`): a module imports modules of its own
  layer or of lower ones, never of a higher one; the package's ``__init__`` (what ``import
  bikd`` gives) stands above them all;
- no import circle, not even one hidden by an import inside a function;
- no import of a module of the suite that does not exist;
- no function of a tool (``tools/*.py``) is longer than :data:`TOOL_FUNCTION_LINES` lines:
  what a tool does beyond its command line lives in the packages, where it is tested directly.
"""
import argparse
import ast
import os
import sys
import textwrap
from typing import Dict, List, Optional, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the suite's packages: import name -> folder
PACKAGES = {'bikd': 'plugins/bikd', 'classification_bikd': 'classification_bikd',
            'mask2former_bikd': 'mask2former_bikd', 'saliency_bikd': 'saliency_bikd'}
#: the core's layers, lowest first: (name, the modules' prefix, what it holds). The first
#: holds the modules at the top of plugins/bikd (the public contract's among them).
LAYERS = [
    ('base', 'bikd.', 'errors, registries, file writing and digests, checkpoint files, '
                      'dataset wrappers, the private APIs of other libraries (compat), and the '
                      'method\'s maths: partition, losses, metrics, summaries, the training '
                      'step\'s record, what a method declares about its runs'),
    ('members', 'bikd.members.', 'the member base class, the step that gives a model\'s '
                                 'members their weights, and the Hugging Face adapter (its '
                                 'weights, its image processors); the other zoos\' adapters '
                                 'are in the task packages'),
    ('method', 'bikd.method.', 'the meta-architectures: Bi-KD and its baselines'),
    ('engine', 'bikd.engine.', 'the run: runner, run state, hooks, checkpoints, command line'),
    ('experiments', 'bikd.experiments.', 'plans, jobs, reports, grids, partners, benchmark'),
]
#: the longest a function of a tool may be (lines, its decorators and docstring included)
TOOL_FUNCTION_LINES = 60


def module_name(package: str, folder: str, path: str) -> str:
    rel = os.path.relpath(path, os.path.join(ROOT, folder))[:-len('.py')].replace(os.sep, '.')
    return package if rel == '__init__' else f'{package}.{rel.removesuffix(".__init__")}'


def imported(tree: ast.AST, module: str, is_package: bool,
             modules: Set[str] = frozenset()) -> Set[str]:
    """The modules a module's code imports, at its top or inside a function (relative imports
    resolved; ``from P import x`` imports the module ``P.x`` where ``modules`` has it, else
    ``P``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split('.')
                base = '.'.join(base[:len(base) - node.level + (1 if is_package else 0)])
                source = f'{base}.{node.module}' if node.module else base
            else:
                source = node.module or ''
            for alias in node.names:
                sub = f'{source}.{alias.name}'
                out.add(sub if sub in modules else source)
    return out


def _sources() -> Dict[str, Tuple[str, bool]]:
    """Module of the suite -> (its file, whether it is a package's ``__init__``)."""
    out = {}
    for package, folder in PACKAGES.items():
        for d, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in sorted(files):
                if f.endswith('.py'):
                    path = os.path.join(d, f)
                    out[module_name(package, folder, path)] = (path, f == '__init__.py')
    return out


def import_graph() -> Dict[str, Set[str]]:
    """Module of the suite -> the modules of the suite it imports."""
    sources = _sources()
    graph: Dict[str, Set[str]] = {}
    for name, (path, is_package) in sources.items():
        with open(path) as src:
            tree = ast.parse(src.read(), path)
        graph[name] = {m for m in imported(tree, name, is_package, set(sources))
                       if m in sources and m != name}
    return graph


def unresolved_imports() -> List[str]:
    """Imports of a module of the suite that does not exist (one that moved, and an import
    inside a function that no test reached)."""
    sources = _sources()
    out = []
    for name, (path, is_package) in sorted(sources.items()):
        with open(path) as src:
            tree = ast.parse(src.read(), path)
        for target in sorted(imported(tree, name, is_package, set(sources))):
            if package_of(target) in PACKAGES and target not in sources:
                out.append(f'{name} imports {target}, which does not exist')
    return out


def package_of(module: str) -> str:
    return module.split('.')[0]


def layer_of(module: str) -> Optional[int]:
    """The index of a core module's layer in :data:`LAYERS` (``None``: not in a layer, e.g.
    ``bikd`` itself, or a task package's module)."""
    if package_of(module) != 'bikd' or module == 'bikd':
        return None
    for i in range(len(LAYERS) - 1, -1, -1):
        prefix = LAYERS[i][1]
        if module.startswith(prefix) and (i > 0 or module.count('.') == 1):
            return i
        if module + '.' == prefix:  # the layer's package itself
            return i
    return None


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The import circles (strongly connected sets of more than one module), a package's
    ``__init__`` importing its own modules left out: it is the package's front."""
    edges = {m: {t for t in ts if not (t.startswith(m + '.') and _is_package(m, graph))}
             for m, ts in graph.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _is_package(module: str, graph: Dict[str, Set[str]]) -> bool:
    return any(m.startswith(module + '.') for m in graph)


def violations(graph: Dict[str, Set[str]]) -> List[str]:
    """What breaks the layout: the core importing a task package, a task package importing
    another, a core module importing a higher layer, an import circle."""
    out = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if package_of(target) not in (package_of(module), 'bikd'):
                out.append(f'{module} imports {target} (another package)')
            mine, theirs = layer_of(module), layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                out.append(f'{module} ({LAYERS[mine][0]}) imports {target} '
                           f'({LAYERS[theirs][0]}): a lower layer imports a higher one')
    out += [f'import circle: {" -> ".join(c)}' for c in circles(graph)]
    return out


def functions(path: str) -> List[Tuple[str, int]]:
    """(name, lines) of every function of a file, methods and nested ones included."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    return [(node.name, node.end_lineno - min([node.lineno] + [d.lineno for d in
                                                                node.decorator_list]) + 1)
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def long_tool_functions() -> List[str]:
    tools = os.path.join(ROOT, 'tools')
    return [f'tools/{f}: {name} is {n} lines (at most {TOOL_FUNCTION_LINES}: move the work '
            'into the packages)'
            for f in sorted(os.listdir(tools)) if f.endswith('.py')
            for name, n in functions(os.path.join(tools, f)) if n > TOOL_FUNCTION_LINES]


def figures(graph: Dict[str, Set[str]], package: str = 'bikd') -> Dict[str, object]:
    """The structure's figures for a package: files, folders, import arrows between its
    modules, its largest file and function."""
    sources = _sources()
    mine = [m for m in sources if package_of(m) == package]
    folders = {os.path.dirname(sources[m][0]) for m in mine}
    sizes = {}
    for m in mine:
        with open(sources[m][0]) as f:
            sizes[m] = sum(1 for _ in f)
    largest = max(sizes, key=sizes.get)
    longest = max(((f'{m}.{name}', n) for m in mine for name, n in functions(sources[m][0])),
                  key=lambda x: x[1])
    return dict(files=len(mine), folders=len(folders),
                arrows=sum(1 for m in mine for t in graph[m] if package_of(t) == package),
                largest_file=(sources[largest][0][len(ROOT) + 1:], sizes[largest]),
                longest_function=longest)


def print_layers(graph: Dict[str, Set[str]]) -> None:
    print('the core\'s layers, lowest first (a module imports its own layer and lower ones):')
    for i, (name, prefix, what) in enumerate(LAYERS):
        modules = sorted(m for m in graph if layer_of(m) == i)
        head = f'  {i + 1}. {name} ({prefix.rstrip(".") if i else "plugins/bikd/*.py"}): '
        print(textwrap.fill(head + what, 100, subsequent_indent=' ' * 5))
        print(textwrap.fill('modules: ' + ', '.join(m[len('bikd.'):] for m in modules), 100,
                            initial_indent=' ' * 5, subsequent_indent=' ' * 5))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folder', nargs='?', help='only the modules of this folder')
    args = parser.parse_args(argv)
    graph = import_graph()
    only = None
    if args.folder:
        wanted = os.path.normpath(args.folder)
        only = [p for p, f in PACKAGES.items() if os.path.normpath(f) == wanted]
        if not only:
            parser.error(f'{args.folder} is not a package of the suite: '
                         f'{", ".join(PACKAGES.values())}')
    print_layers(graph)
    for package in only or PACKAGES:
        print(f'\n{package} ({PACKAGES[package]})')
        for module in sorted(m for m in graph if package_of(m) == package):
            inside = sorted(t for t in graph[module] if package_of(t) == package)
            outside = sorted(t for t in graph[module] if package_of(t) != package)
            line = f'  {module}'
            if inside:
                line += f'  <- {", ".join(t[len(package) + 1:] or package for t in inside)}'
            if outside:
                line += f'  [{", ".join(outside)}]'
            print(line)
    f = figures(graph)
    print(f'\nbikd: {f["files"]} files in {f["folders"]} folders, {f["arrows"]} import arrows; '
          f'largest file {f["largest_file"][0]} ({f["largest_file"][1]} lines), longest '
          f'function {f["longest_function"][0]} ({f["longest_function"][1]} lines)')
    broken = violations(graph) + unresolved_imports() + long_tool_functions()
    print('\n' + ('layout kept: the core imports no task package, no task package another; '
                  'no layer imports a higher one; no import circle; no tool function over '
                  f'{TOOL_FUNCTION_LINES} lines'
                  if not broken else 'layout broken:\n  ' + '\n  '.join(broken)))
    return 1 if broken else 0


if __name__ == '__main__':
    sys.exit(main())
