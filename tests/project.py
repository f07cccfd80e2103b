"""The repository as the tests reach it: its root, the paper configs the tests shrink, the tools (run in this
process or as a new one) and their helper modules (tools/ and benchmarks/ go on ``sys.path``, as they are when a
tool runs as ``python tools/NAME.py``), and what a training run leaves in its work dir."""
import importlib.util
import json
import os
import os.path as osp
import socket
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(ROOT, 'tests')
TOOLS = osp.join(ROOT, 'tools')
BENCHMARKS = osp.join(ROOT, 'benchmarks')
for _folder in (TOOLS, BENCHMARKS):  # after the installed packages: tools/test.py is no stdlib 'test'
    if _folder not in sys.path:
        sys.path.append(_folder)
CASCADE_T = osp.join(ROOT, 'configs', 'cascade', 'convnext_t_3x.py')
MASK_RCNN_T = osp.join(ROOT, 'configs', 'mask_rcnn', 'convnext_t_3x.py')
UPERNET_T = osp.join(ROOT, 'configs', 'upernet', 'convnext_t_512_160k_ade20k.py')


def config_path(name):
    """``configs/NAME``."""
    return osp.join(ROOT, 'configs', name)


def load_tool(name):
    """tools/NAME.py as a module, to run its main() in this process (no interpreter start-up per test)."""
    spec = importlib.util.spec_from_file_location(f'tools_{name}', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_file(library, *path):
    """A file that the installed mmdet or mmseg package ships under .mim/ (its tools/ and configs/)."""
    return osp.join(osp.dirname(importlib.util.find_spec(library).origin), '.mim', *path)


def host_tool(library, name):
    """mmdet's or mmseg's own tools/NAME.py."""
    return host_file(library, 'tools', f'{name}.py')


def run_script(args, **env):
    """Run a command from the repository root with this interpreter's environment first on PATH."""
    environment = dict(os.environ, PATH=osp.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
    environment.update(env)
    return subprocess.run(args, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def scalars(work_dir):
    """The training log records (mmengine's vis_data/scalars.json) under a work dir."""
    records = []
    for directory, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            with open(osp.join(directory, 'scalars.json')) as f:
                records += [json.loads(line) for line in f if line.strip()]
    return records
