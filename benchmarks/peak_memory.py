"""What the benchmarks share: a step run in a fresh process, its peak memory on the CPU, and the line that says
where they ran."""
import multiprocessing

import torch


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a new interpreter (multiprocessing's spawn) with this one's number of threads: a peak
    measured there counts nothing that this process built, reached or keeps in its allocator. ``fn`` is a function
    of a module (or of the script run); returns its result."""
    with multiprocessing.get_context('spawn').Pool(1) as pool:
        return pool.apply(_with_threads, (torch.get_num_threads(), fn, args))


def _with_threads(threads, fn, args):
    torch.set_num_threads(threads)
    return fn(*args)


def peak_rss_growth_of(fn):
    """Growth of this process's peak resident set while ``fn`` runs, in bytes (Linux): the peak is reset to the
    current resident set first, so peaks reached before (building the models) do not count."""

    def status_kib(field):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
        raise RuntimeError(f'no {field} in /proc/self/status')

    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # Linux >= 4.0: VmHWM := VmRSS
    before = status_kib('VmRSS')
    fn()
    return (status_kib('VmHWM') - before) * 1024


def machine_line(device):
    with open('/proc/loadavg') as f:
        load = ' '.join(f.read().split()[:3])
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    return f'torch {torch.__version__}, {where}, load average {load} (1, 5, 15 min)'
