#!/usr/bin/env python
"""Print the suite's structure as its imports draw it: each package and module, and the
modules of the suite it imports.

    python tools/layout.py                 # every package of the suite
    python tools/layout.py plugins/bikd    # one folder

The rule it shows (and ``tests/test_layout.py`` checks): the core (``plugins/bikd``, import
name ``bikd``) imports no task package, and no task package imports another.
"""
import argparse
import ast
import os
import sys
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the suite's packages: import name -> folder
PACKAGES = {'bikd': 'plugins/bikd', 'classification_bikd': 'classification_bikd',
            'mask2former_bikd': 'mask2former_bikd', 'saliency_bikd': 'saliency_bikd'}


def module_name(package: str, folder: str, path: str) -> str:
    rel = os.path.relpath(path, os.path.join(ROOT, folder))[:-len('.py')].replace(os.sep, '.')
    return package if rel == '__init__' else f'{package}.{rel.removesuffix(".__init__")}'


def imported(tree: ast.AST, module: str, is_package: bool) -> Set[str]:
    """The modules a module's code imports (relative imports resolved)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if not node.level:
                out.add(node.module or '')
                continue
            base = module.split('.')
            base = '.'.join(base[:len(base) - node.level + (1 if is_package else 0)])
            if node.module:
                out.add(f'{base}.{node.module}')
            else:  # from . import x: the modules x
                out.update(f'{base}.{alias.name}' for alias in node.names)
    return out


def import_graph() -> Dict[str, Set[str]]:
    """Module of the suite -> the modules of the suite it imports."""
    graph: Dict[str, Set[str]] = {}
    for package, folder in PACKAGES.items():
        for d, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in sorted(files):
                if not f.endswith('.py'):
                    continue
                path = os.path.join(d, f)
                name = module_name(package, folder, path)
                with open(path) as src:
                    tree = ast.parse(src.read(), path)
                graph[name] = {m for m in imported(tree, name, f == '__init__.py')
                               if m.split('.')[0] in PACKAGES and m != name}
    return graph


def package_of(module: str) -> str:
    return module.split('.')[0]


def violations(graph: Dict[str, Set[str]]) -> List[str]:
    """Imports that break the layout: the core importing a task package, a task package
    importing another."""
    out = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if package_of(target) not in (package_of(module), 'bikd'):
                out.append(f'{module} imports {target}')
    return out


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
    for package in only or PACKAGES:
        print(f'{package} ({PACKAGES[package]})')
        for module in sorted(m for m in graph if package_of(m) == package):
            inside = sorted(t for t in graph[module] if package_of(t) == package)
            outside = sorted(t for t in graph[module] if package_of(t) != package)
            line = f'  {module}'
            if inside:
                line += f'  <- {", ".join(t[len(package) + 1:] or package for t in inside)}'
            if outside:
                line += f'  [{", ".join(outside)}]'
            print(line)
    broken = violations(graph)
    print('\n' + ('layout kept: the core imports no task package, no task package another'
                  if not broken else 'layout broken:\n  ' + '\n  '.join(broken)))
    return 1 if broken else 0


if __name__ == '__main__':
    sys.exit(main())
