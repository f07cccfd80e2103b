"""The paper's figures and the official recipes as docs/results.md states them (the one place they are written):
its tables read as rows of cells, by the config a row links or by the model it names."""
import os.path as osp
import re

from project import ROOT

RESULTS = osp.join(ROOT, 'docs', 'results.md')
CONFIG_LINK = re.compile(r'\]\(\.\./configs/([^)]+)\)')


def tables(path=RESULTS):
    """Every table of the file, in order: a list of rows, each a dict from the header's cells to the row's."""
    found, rows, header = [], None, None
    with open(path, encoding='utf-8') as f:
        for line in f:
            if not line.startswith('|'):
                header = None
                continue
            cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
            if header is None:
                header, rows = cells, []
                found.append(rows)
            elif set(''.join(cells)) != {'-'}:  # not the |---| line under the header
                assert len(cells) == len(header), f'{path}: a row of {len(cells)} cells under {header}'
                rows.append(dict(zip(header, cells)))
    return found


def by_config():
    """configs/NAME -> the cells of every row whose first cell links configs/NAME, the rows of all tables merged."""
    rows = {}
    for row in (row for table in tables() for row in table):
        link = CONFIG_LINK.search(next(iter(row.values())))
        if link:
            merged = rows.setdefault(link.group(1), {})
            clash = {key for key in merged.keys() & row.keys() if merged[key] != row[key]}
            assert not clash, f'docs/results.md gives configs/{link.group(1)} two values of {sorted(clash)}'
            merged.update(row)
    return rows


def number(cell):
    """'48M' -> 48.0, '4.3G' -> 4.3, '1e-4' -> 0.0001."""
    return float(cell.rstrip('MG'))


def isotropic_classifiers():
    """The isotropic table: 'small' / 'base' / 'large' -> (depth, width, parameters in M, GFLOPs at 224)."""
    (table, ) = [table for table in tables() if table and 'blocks x width' in table[0]]
    sizes = {'S': 'small', 'B': 'base', 'L': 'large'}
    classifiers = {}
    for row in table:
        size = re.fullmatch(r'ConvNeXt-(\w) \(iso\.\)', row['model']).group(1)
        depth, width = (int(n) for n in row['blocks x width'].split(' x '))
        classifiers[sizes[size]] = (depth, width, number(row['params']), number(row['FLOPs']))
    return classifiers
