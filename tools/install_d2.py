#!/usr/bin/env python
"""Install detectron2 (built from source against the installed torch), the official Mask2Former
and COCO's panopticapi (for detectron2's COCOPanopticEvaluator) into this Python environment:
the ``d2`` part of the set-up (``make d2``).

    python tools/install_d2.py [--vendor DIR] [--optional] [--force]

Sources, at the commits the suite is tested with:

- from ``--vendor DIR`` (default: ``$BIKD_VENDOR``, else ``../shared/vendor`` or
  ``shared/vendor`` beside the repository) when it holds ``detectron2-02b5c4e.tar.gz``,
  ``Mask2Former-9b0651c.tar.gz`` and ``panopticapi-7bb4655.tar.gz`` (unmodified snapshots of
  the upstream repositories, for machines without internet: CI);
- else from the upstream repositories on GitHub (what a user with internet gets).

detectron2 is built once per (commit, torch version) into a wheel kept in pip's cache folder
(``<pip cache dir>/bikd-wheels/``), so later set-ups install it in seconds. Mask2Former has no
``setup.py`` (upstream users put the checkout on ``PYTHONPATH``): its checkout goes to
``<venv>/src/Mask2Former-<commit>`` and a ``.pth`` file puts it on this environment's path, so
``import mask2former`` works. Its CUDA op (multi-scale deformable attention) is not built here;
the suite runs Mask2Former's own PyTorch fallback without it.

``--optional``: when no source can be had (no vendor folder, no network), say so and exit 0,
so the rest of the suite is still set up; a build that fails is an error either way.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D2_COMMIT = '02b5c4e295e990042a714712c21dc79b731e8833'
M2F_COMMIT = '9b0651c6c1d5b3af2e6da0589b719c514ec0d69a'
D2_TARBALL = f'detectron2-{D2_COMMIT[:7]}.tar.gz'
M2F_TARBALL = f'Mask2Former-{M2F_COMMIT[:7]}.tar.gz'
PANOPTICAPI_COMMIT = '7bb4655548f98f3fedc07bf37e9040a992b054b0'
PANOPTICAPI_TARBALL = f'panopticapi-{PANOPTICAPI_COMMIT[:7]}.tar.gz'
PANOPTICAPI_UPSTREAM = f'git+https://github.com/cocodataset/panopticapi.git@{PANOPTICAPI_COMMIT}'
D2_UPSTREAM = f'git+https://github.com/facebookresearch/detectron2.git@{D2_COMMIT}'
M2F_UPSTREAM = f'https://github.com/facebookresearch/Mask2Former/archive/{M2F_COMMIT}.tar.gz'
PTH_FILE = 'bikd-mask2former.pth'


def pip(*args: str) -> None:
    subprocess.run([sys.executable, '-m', 'pip', *args], check=True)


def vendor_dir(given: str) -> str:
    candidates = [given, os.environ.get('BIKD_VENDOR', ''),
                  os.path.join(ROOT, '..', 'shared', 'vendor'),
                  os.path.join(ROOT, 'shared', 'vendor')]
    return next((os.path.abspath(c) for c in candidates
                 if c and os.path.isfile(os.path.join(c, D2_TARBALL))), '')


def installed_d2_commit() -> str:
    """The commit of the detectron2 installed here (its C++ ops included), or ''."""
    code = ('import detectron2, os; from bikd.compat import detectron2_ops_built; '
            'assert detectron2_ops_built(); '
            'p = os.path.join(os.path.dirname(detectron2.__file__), "BIKD_SOURCE"); '
            'print(open(p).read().strip() if os.path.isfile(p) else "unknown")')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ''


def wheel_cache() -> str:
    import torch
    proc = subprocess.run([sys.executable, '-m', 'pip', 'cache', 'dir'], capture_output=True,
                          text=True)
    base = proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else \
        os.path.expanduser('~/.cache/pip')
    tag = f'detectron2-{D2_COMMIT[:7]}-torch{torch.__version__}-py{sys.version_info[0]}' \
          f'{sys.version_info[1]}'
    return os.path.join(base, 'bikd-wheels', tag)


def install_detectron2(source: str, force: bool) -> None:
    if not force and installed_d2_commit() == D2_COMMIT:
        print(f'detectron2 {D2_COMMIT[:7]} is installed')
        return
    cache = wheel_cache()
    wheels = glob.glob(os.path.join(cache, 'detectron2-*.whl'))
    if not wheels or force:
        print(f'building detectron2 {D2_COMMIT[:7]} from {source} against the installed torch '
              '(a few minutes) ...', flush=True)
        shutil.rmtree(cache, ignore_errors=True)
        build = tempfile.mkdtemp(prefix='d2-wheel-')
        pip('wheel', '--no-build-isolation', '--no-deps', '-w', build, source)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        os.replace(build, cache)  # the cache holds a complete wheel or none
        wheels = glob.glob(os.path.join(cache, 'detectron2-*.whl'))
    else:
        print(f'detectron2 {D2_COMMIT[:7]}: the wheel built before ({wheels[0]})')
    pip('install', '-q', '--force-reinstall', '--no-deps', wheels[0])
    pip('install', '-q', wheels[0])  # its dependencies (fvcore, iopath, pycocotools, ...)
    import importlib.util
    package = os.path.dirname(importlib.util.find_spec('detectron2').origin)
    with open(os.path.join(package, 'BIKD_SOURCE'), 'w') as f:
        f.write(D2_COMMIT + '\n')


def install_mask2former(source: str, force: bool) -> None:
    site = sysconfig.get_paths()['purelib']
    target = os.path.join(sys.prefix, 'src', f'Mask2Former-{M2F_COMMIT[:7]}')
    pth = os.path.join(site, PTH_FILE)
    if not force and os.path.isfile(os.path.join(target, 'mask2former', '__init__.py')) and \
            os.path.isfile(pth):
        print(f'Mask2Former {M2F_COMMIT[:7]} is on the path ({target})')
        return
    with tempfile.TemporaryDirectory() as tmp:
        archive = source
        if source.startswith('https://'):
            archive = os.path.join(tmp, 'm2f.tar.gz')
            urllib.request.urlretrieve(source, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter='data')
        (top, ) = [d for d in os.listdir(tmp) if os.path.isdir(os.path.join(tmp, d))]
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(os.path.join(tmp, top), target)
    with open(pth, 'w') as f:
        f.write(target + '\n')
    print(f'Mask2Former {M2F_COMMIT[:7]} in {target}, on the path through {pth}')


def install_panopticapi(source: str, force: bool) -> None:
    """COCO's panopticapi (detectron2's COCOPanopticEvaluator imports it): pure Python, not
    on the package registries."""
    import importlib.util
    if not force and importlib.util.find_spec('panopticapi') is not None:
        print('panopticapi is installed')
        return
    pip('install', '-q', '--no-build-isolation', '--no-deps', source)
    print(f'panopticapi {PANOPTICAPI_COMMIT[:7]} installed from {source}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--vendor', default='', help='folder with the source snapshots')
    parser.add_argument('--optional', action='store_true',
                        help='exit 0 with a warning when no source can be had')
    parser.add_argument('--force', action='store_true', help='build and install again')
    args = parser.parse_args(argv)
    vendor = vendor_dir(args.vendor)
    if vendor:
        d2_source = os.path.join(vendor, D2_TARBALL)
        m2f_source = os.path.join(vendor, M2F_TARBALL)
        pq_source = os.path.join(vendor, PANOPTICAPI_TARBALL)
    else:
        d2_source, m2f_source, pq_source = D2_UPSTREAM, M2F_UPSTREAM, PANOPTICAPI_UPSTREAM
        try:
            urllib.request.urlopen('https://github.com', timeout=10)
        except OSError as e:
            message = (f'detectron2 and Mask2Former: no source snapshots ({D2_TARBALL}, '
                       f'{M2F_TARBALL}) in --vendor, $BIKD_VENDOR or ../shared/vendor, and '
                       f'GitHub is not reachable ({e}); the official Mask2Former members and '
                       'the detectron2 plug-in are not installed')
            if args.optional:
                print('WARNING: ' + message, flush=True)
                return 0
            raise SystemExit(message)
    install_detectron2(d2_source, args.force)
    install_mask2former(m2f_source, args.force)
    install_panopticapi(pq_source, args.force)
    return 0


if __name__ == '__main__':
    sys.exit(main())
