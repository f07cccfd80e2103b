"""The docs against the repository: every tool, config and file README.md and docs/*.md name exists, every flag they
give a tool is in that tool's --help, every make target they run is in the Makefile, every link and anchor
resolves, and the slow-test list of conftest.py names tests that exist."""
import ast
import glob
import os
import os.path as osp
import re
import subprocess
import sys

from conftest import SLOW
from project import ROOT, host_tool

DOCS = ['README.md'] + sorted(osp.relpath(path, ROOT) for path in glob.glob(osp.join(ROOT, 'docs', '*.md')))
# A tool of this repository (not a host's .mim/tools/...), the host libraries' own tools, a config file.
OUR_TOOL = re.compile(r'(?<![\w./-])((?:tools|benchmarks)/[\w/-]+\.(?:py|sh))')
HOST_TOOL = re.compile(r'\b(mmdet|mmseg)/\.mim/tools/([\w/-]+)\.py')
CONFIG = re.compile(r'(?<![\w./-])(configs/[\w/.-]+\.py)')
FLAG = re.compile(r'(?<![\w-])(--[a-z][\w-]*)')
MAKE = re.compile(r'(?<![\w-])make ([a-z][\w-]*)')
# Flags of other programs that the docs name on their own (not as a tool's argument).
OTHER_PROGRAMS_FLAGS = {
    '--kill-on-bad-exit',  # Slurm's srun (tools/slurm_train.sh sets it)
    '--fp16', '--layerPrecisions',  # TensorRT's trtexec (docs/deployment.md)
    '--no-deps',  # pip (docs/gpu.md)
}
# The shell wrappers hand their extra arguments to a Python tool.
WRAPPED = {'tools/dist_train.sh': 'tools/train.py', 'tools/slurm_train.sh': 'tools/train.py',
           'tools/dist_test.sh': 'tools/test.py'}


def read(doc):
    with open(osp.join(ROOT, doc), encoding='utf-8') as f:
        return f.read()


def commands(text):
    """The commands a doc shows: the lines of its fenced code blocks (continued lines joined, comments cut) and its
    inline code spans (a paragraph's, across its line breaks)."""
    found, fenced, pending, prose = [], False, '', []
    for line in text.splitlines() + ['']:
        if fenced and not line.lstrip().startswith('```'):
            line = pending + line.strip()
            pending = line[:-1] + ' ' if line.endswith('\\') else ''
            if not pending:
                found.append(re.split(r'\s#\s|^#\s', line)[0])
        elif line.strip() and not line.lstrip().startswith('```'):
            prose.append(line.strip())
        else:  # a blank line or a fence ends a paragraph
            found += re.findall(r'`([^`]+)`', ' '.join(prose))
            prose = []
            fenced = fenced != line.lstrip().startswith('```')
    return found


def tool_calls(command):
    """(tool, flags) for each tool of this repository or a host library that ``command`` runs."""
    calls = []
    for part in re.split(r'&&|;|\|(?!\|)', command):
        tools = [(m.start(), m.group(1)) for m in OUR_TOOL.finditer(part)]
        tools += [(m.start(), f'{m.group(1)}:{m.group(2)}') for m in HOST_TOOL.finditer(part)]
        for start, tool in sorted(tools)[:1]:  # a part runs one tool; later paths are its arguments
            calls.append((tool, set(FLAG.findall(part[start:]))))
    return calls


def every(pattern_or_function):
    """(doc, what) for everything the docs show that the pattern finds, or that the function gives per command."""
    found = []
    for doc in DOCS:
        for command in commands(read(doc)):
            if callable(pattern_or_function):
                found += [(doc, item) for item in pattern_or_function(command)]
            else:
                found += [(doc, match) for match in pattern_or_function.findall(command)]
    return found


def test_the_docs_show_commands():
    """The parsing above finds what the README shows (else every test below would pass on nothing)."""
    tools = {tool for _, (tool, _) in every(tool_calls)}
    assert {'tools/train.py', 'tools/test.py', 'mmdet:train'} <= tools
    assert ('README.md', 'configs/cascade/convnext_t_3x.py') in every(CONFIG)
    assert {('README.md', 'demo'), ('README.md', 'test')} <= set(every(MAKE))


def test_every_tool_and_config_the_docs_name_exists():
    named = [(doc, tool) for doc, (tool, _) in every(tool_calls) if ':' not in tool] + every(CONFIG)
    missing = sorted({f'{doc}: {path}' for doc, path in named if not osp.isfile(osp.join(ROOT, path))})
    assert not missing, missing
    not_executable = sorted({path for _, path in named if path.endswith('.sh')
                             and not os.access(osp.join(ROOT, path), os.X_OK)})
    assert not not_executable, not_executable


def test_every_make_target_the_docs_run_is_in_the_makefile():
    targets = set(re.findall(r'^([\w-]+):', read('Makefile'), flags=re.MULTILINE))
    missing = sorted({f'{doc}: make {target}' for doc, target in every(MAKE) if target not in targets})
    assert not missing, missing


def loose_flags(command):
    """The flags of an inline span that starts with one (`--amp`, `--cfg-options data_root=PATH`): no tool named."""
    return FLAG.findall(command) if command.startswith('--') else []


def test_every_flag_the_docs_give_a_tool_is_in_its_help():
    """Each tool's --help, run as a user runs it (all at once: the start-ups overlap); a flag the docs name without
    a tool must be in one of them."""
    flags = {}
    for doc, (tool, used) in every(tool_calls):
        tool = WRAPPED.get(tool, tool)
        if tool.endswith('.py') or ':' in tool:
            for flag in used:
                flags.setdefault(tool, {}).setdefault(flag, set()).add(doc)
    scripts = {tool: host_tool(*tool.split(':')) if ':' in tool else osp.join(ROOT, tool) for tool in flags}
    runs = {tool: subprocess.Popen([sys.executable, script, '--help'], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True) for tool, script in scripts.items()}
    stale, offered_anywhere = [], set(OTHER_PROGRAMS_FLAGS)
    for tool, run in runs.items():
        output = run.communicate(timeout=300)[0]
        assert run.returncode == 0, f'{tool} --help failed:\n{output}'
        offered = set(FLAG.findall(output))
        offered_anywhere |= offered
        stale += [f'{tool} {flag} ({", ".join(sorted(docs))})' for flag, docs in flags[tool].items()
                  if flag not in offered]
    stale += [f'{flag} ({doc})' for doc, flag in every(loose_flags) if flag not in offered_anywhere]
    assert not stale, f'flags the docs give that the tools do not take: {sorted(set(stale))}'


def anchors(doc):
    """GitHub's anchors of a doc's headings."""
    headings = re.findall(r'^#+ (.+)$', re.sub(r'```.*?```', '', read(doc), flags=re.DOTALL), flags=re.MULTILINE)
    return {re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-') for heading in headings}


def test_every_link_between_the_docs_resolves():
    broken = []
    for doc in DOCS:
        for target in re.findall(r'\]\(([^)\s]+)\)', read(doc)):
            if re.match(r'https?://', target):
                continue
            path, _, anchor = target.partition('#')
            path = osp.normpath(osp.join(osp.dirname(doc), path)) if path else doc
            if not osp.exists(osp.join(ROOT, path)):
                broken.append(f'{doc}: {target}')
            elif anchor and path.endswith('.md') and anchor not in anchors(path):
                broken.append(f'{doc}: {target} (no such heading)')
    assert not broken, broken


def test_the_slow_list_names_tests_that_exist():
    """A slow test renamed would silently join the quick run, so the list is checked against the files."""
    stale = []
    for module, names in SLOW.items():
        path = osp.join(ROOT, 'tests', module)
        if not osp.isfile(path):
            stale.append(module)
            continue
        with open(path, encoding='utf-8') as f:
            defined = {node.name for node in ast.walk(ast.parse(f.read())) if isinstance(node, ast.FunctionDef)}
        stale += [f'{module}::{name}' for name in names or () if name not in defined]
    assert not stale, stale


def test_the_slow_marker_is_registered():
    with open(osp.join(ROOT, 'pytest.ini'), encoding='utf-8') as f:
        assert re.search(r'^\s+slow:', f.read(), flags=re.MULTILINE)

