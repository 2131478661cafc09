# SPDX-License-Identifier: MIT
"""Serving images over NBD: the nbdkit plugin and `vimg serve`.

Every server runs on a Unix socket in the test's directory, started and
stopped by the test.  The oracles: qemu-img (convert -O raw, map, check),
qemu-io over NBD, nbdcopy and nbdinfo (libnbd-bin), and the python libnbd
bindings for requests a command-line client cannot make (fast zero, four
connections at once).  Nothing skips: nbdkit, the plugin and libnbd must
be there.
"""
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import nbd
import pytest

from conftest import BUILD_DIR, VIMG, qemu, run, vimg

PLUGIN = os.path.join(BUILD_DIR, 'plugins', 'nbdkit', 'nbdkit-vimg-plugin.so')
MiB = 1 << 20


@pytest.fixture(scope='module', autouse=True)
def serving_tools():
    for tool in ('nbdkit', 'nbdcopy', 'nbdinfo'):
        assert shutil.which(tool), f'{tool} not found (Makefile DEPS)'
    assert os.path.exists(PLUGIN), f'nbdkit plugin not built: {PLUGIN}'


def server_env():
    """A sanitizer build's plugin needs its runtime loaded first into the
    (uninstrumented) nbdkit; leaks of nbdkit itself are not ours."""
    env = dict(os.environ)
    libs = subprocess.run(['ldd', PLUGIN], capture_output=True,
                          text=True).stdout
    preload = []
    for lib in ('libasan.so', 'libubsan.so'):
        if lib in libs:
            path = subprocess.run(['gcc', f'-print-file-name={lib}'],
                                  capture_output=True, text=True).stdout
            preload.append(path.strip())
    if preload:
        env['LD_PRELOAD'] = ' '.join(preload)
        env['ASAN_OPTIONS'] = 'detect_leaks=0:abort_on_error=1'
    return env


def uri(sock, name=''):
    return f'nbd+unix:///{name}?socket={sock}'


def wait_for_socket(proc, sock, what):
    """nbdkit writes its --pid-file once it accepts connections."""
    for _ in range(300):
        if os.path.exists(sock + '.pid') and os.path.getsize(sock + '.pid'):
            return
        if proc.poll() is not None:
            out = proc.stderr.read().decode(errors='replace')
            pytest.fail(f'{what} exited {proc.returncode}: {out}')
        time.sleep(0.02)
    pytest.fail(f'{what}: no socket after 6 s')


@contextlib.contextmanager
def serve(tmp_path, image, *flags, persistent=True):
    """`vimg serve -k SOCK [-t] FLAGS IMAGE` in the foreground; yields the
    socket path; stops the server (SIGTERM) and checks it exited cleanly."""
    sock = str(tmp_path / f'nbd-{random.getrandbits(32):08x}.sock')
    args = [VIMG, 'serve', '-k', sock, '--pid-file', sock + '.pid',
            *(['-t'] if persistent else []),
            *flags, str(image)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=server_env())
    try:
        wait_for_socket(proc, sock, 'vimg serve')
        yield sock
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail('server did not stop on SIGTERM')
        err = proc.stderr.read().decode(errors='replace')
        assert 'Sanitizer' not in err and 'runtime error' not in err, err
        assert proc.returncode in (0, -signal.SIGTERM), \
            f'server exited {proc.returncode}: {err}'


def make_images(d):
    """Images of every format qemu-img makes and vimg serves: name ->
    (path, format)."""
    data = d / 'data.raw'
    with open('/usr/bin/qemu-img', 'rb') as f:
        blob = f.read(3 * MiB)
    with open(data, 'wb') as f:
        f.truncate(8 * MiB)
        f.seek(MiB)
        f.write(blob[:2 * MiB])
        f.seek(6 * MiB + 512)
        f.write(blob[2 * MiB:])
    imgs = {'raw': (data, 'raw')}
    for compat in ('0.10', '1.1'):
        p = d / f'v{compat}.qcow2'
        qemu('qemu-img', 'convert', '-q', '-O', 'qcow2', '-o',
             f'compat={compat}', data, p)
        imgs[f'qcow2-{compat}'] = (p, 'qcow2')
    for fmt, opts in (('vhdx', 'subformat=dynamic'), ('vhdx', 'subformat=fixed'),
                      ('qcow', None)):
        p = d / f'{fmt}-{opts or "v1"}.{fmt}'.replace('subformat=', '')
        qemu('qemu-img', 'convert', '-q', '-O', fmt,
             *(['-o', opts] if opts else []), data, p)
        imgs[p.name] = (p, fmt)
    z = d / 'zlib.qcow2'
    qemu('qemu-img', 'convert', '-q', '-c', '-O', 'qcow2', data, z)
    imgs['compressed'] = (z, 'qcow2')
    top = d / 'top.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', z, '-F', 'qcow2',
         top)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 1536k 96k',
         '-c', 'write -z 6M 1M', '-c', 'discard 2560k 64k', top)
    imgs['chain'] = (top, 'qcow2')
    return imgs


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp('serve-images'))


@pytest.mark.parametrize('name', ['raw', 'qcow2-0.10', 'qcow2-1.1',
                                  'compressed', 'chain', 'vhdx-dynamic.vhdx',
                                  'vhdx-fixed.vhdx', 'qcow-v1.qcow'])
def test_nbdcopy_matches_qemu_img(tmp_path, images, name):
    path, fmt = images[name]
    ref = tmp_path / 'ref.raw'
    qemu('qemu-img', 'convert', '-U', '-O', 'raw', path, ref)
    with serve(tmp_path, path, '-f', fmt, '-r', '-e', '4') as sock:
        out = tmp_path / 'out.raw'
        run(['nbdcopy', uri(sock), out], check=True)
        info = json.loads(run(['nbdinfo', '--json', uri(sock)],
                              check=True).stdout)
        mapped = nbd_map(sock)
    assert open(out, 'rb').read() == open(ref, 'rb').read()
    exp = info['exports'][0]
    assert exp['export-size'] == os.path.getsize(ref)
    assert exp['is_read_only'] is True and exp['can_multi_conn'] is True
    assert mapped == qemu_map(path), 'nbdinfo --map differs from qemu-img map'


def merge(extents):
    out = []
    for start, length, kind in extents:
        if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + length, kind)
        else:
            out.append((start, length, kind))
    return out


def nbd_map(sock):
    rows = json.loads(run(['nbdinfo', '--map', '--json', uri(sock)],
                          check=True).stdout)
    return merge([(r['offset'], r['length'], r['type']) for r in rows])


def qemu_map(path):
    """qemu-img map as NBD base:allocation flags (qemu-nbd's mapping:
    hole = no data, zero = reads as zeroes)."""
    rows = json.loads(run(['qemu-img', 'map', '-U', '--output=json', path],
                          check=True).stdout)
    return merge([(r['start'], r['length'],
                   (0 if r['data'] else 1) | (2 if r['zero'] else 0))
                  for r in rows])


def test_qemu_io_writes_over_nbd(tmp_path):
    img = tmp_path / 'w.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '4M')
    with serve(tmp_path, img, '-f', 'qcow2') as sock:
        p = run(['qemu-io', '-f', 'raw', uri(sock),
                 '-c', 'write -P 0xab 0 128k', '-c', 'write -P 0xcd 100000 5',
                 '-c', 'write -z 1M 64k', '-c', 'write -P 0x11 2M 128k',
                 '-c', 'discard 2M 64k', '-c', 'flush',
                 '-c', 'read -P 0xcd 100000 5'], check=True)
        assert 'Pattern verification failed' not in p.stdout
        # the export holds the image's write lock as qemu-nbd does
        p = run(['qemu-img', 'info', img])
        assert p.returncode == 1 and 'lock' in p.stderr
    p = run(['qemu-img', 'check', img])
    assert p.returncode == 0, p.stdout + p.stderr
    p = run(['qemu-io', '-f', 'qcow2', '-c', 'read -P 0xab 0 100000',
             '-c', 'read -P 0xcd 100000 5', '-c', 'read -P 0xab 100005 31067',
             '-c', 'read -P 0 1M 64k', '-c', 'read -P 0 2M 64k',
             '-c', 'read -P 0x11 2112k 64k', img], check=True)
    assert 'Pattern verification failed' not in p.stdout, p.stdout


def test_four_connections_match_model(tmp_path):
    """Random writes, zeroes and trims from four connections at once, each
    owning every fourth 4 KiB run (so the result is deterministic), against
    a model; then qemu-img reads the model back and check is clean."""
    size = 16 * MiB
    img = tmp_path / 'mc.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k',
         img, str(size))
    model = bytearray(size)
    lock = threading.Lock()
    errors = []

    def worker(sock, me, seed):
        rng = random.Random(seed)
        h = nbd.NBD()
        try:
            h.connect_uri(uri(sock))
            for _ in range(150):
                run_no = rng.randrange(size // 4096 // 4) * 4 + me
                off = run_no * 4096 + rng.randrange(4096)
                n = rng.randrange(1, 4096 * 2 + 1 - (off % 4096)) \
                    if rng.random() < 0.3 else 4096 - off % 4096
                n = min(n, 4096 - off % 4096)
                op = rng.random()
                if op < 0.75:
                    buf = rng.randbytes(n)
                    h.pwrite(buf, off)
                elif op < 0.9:
                    off, n = run_no * 4096, 4096
                    buf = bytes(n)
                    h.zero(n, off)
                else:
                    off, n = run_no * 4096, 4096
                    buf = bytes(n)
                    h.trim(n, off)
                with lock:
                    model[off:off + n] = buf
                if rng.random() < 0.05:
                    h.flush()
            h.flush()
            h.shutdown()
        except Exception as e:  # reported below, with the thread's id
            errors.append(f'connection {me}: {e!r}')

    with serve(tmp_path, img, '-f', 'qcow2', '-e', '4') as sock:
        threads = [threading.Thread(target=worker, args=(sock, i, 1000 + i))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    out = tmp_path / 'out.raw'
    qemu('qemu-img', 'convert', '-O', 'raw', img, out)
    assert open(out, 'rb').read() == bytes(model)
    p = run(['qemu-img', 'check', img])
    assert p.returncode == 0, p.stdout + p.stderr


def test_fast_zero_is_truthful(tmp_path):
    """A fast zero that would have to write zero data (not cluster aligned,
    or a qcow2 v2 image with a backing file) fails with ENOTSUP; an aligned
    one on v3 stores a zero cluster without data."""
    img = tmp_path / 'fz.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '4M')
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x77 0 4M', img)
    with serve(tmp_path, img, '-f', 'qcow2') as sock:
        h = nbd.NBD()
        h.connect_uri(uri(sock))
        assert h.can_fast_zero() and h.can_zero() and h.can_trim()
        with pytest.raises(nbd.Error) as e:
            h.zero(4096, 512, nbd.CMD_FLAG_FAST_ZERO)
        assert e.value.errnum == __import__('errno').ENOTSUP
        h.zero(MiB, MiB, nbd.CMD_FLAG_FAST_ZERO)
        h.flush()
        h.shutdown()
    rows = json.loads(run(['qemu-img', 'map', '--output=json', img],
                          check=True).stdout)
    assert any(r['start'] == MiB and r['zero'] and not r['data']
               for r in rows), rows
    p = run(['qemu-io', '-f', 'qcow2', '-c', 'read -P 0x77 0 1M',
             '-c', 'read -P 0 1M 1M', '-c', 'read -P 0x77 2M 2M', img],
            check=True)
    assert 'Pattern verification failed' not in p.stdout


def test_kill9_keeps_flushed_writes(tmp_path):
    """kill -9 of the server while a client writes: the image checks clean
    (leaks allowed) and every write flushed before stays intact."""
    img = tmp_path / 'k.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '32M')
    sock = str(tmp_path / 'k.sock')
    proc = subprocess.Popen([VIMG, 'serve', '-t', '-k', sock, '--pid-file',
                             sock + '.pid', '-f', 'qcow2', img], stderr=subprocess.PIPE, env=server_env())
    wait_for_socket(proc, sock, 'vimg serve')
    h = nbd.NBD()
    h.connect_uri(uri(sock))
    first = random.Random(7).randbytes(MiB)
    h.pwrite(first * 4, 0)
    h.flush()
    stop = threading.Event()

    def more_writes():
        rng = random.Random(8)
        try:
            while not stop.is_set():
                h.pwrite(bytes([rng.getrandbits(8)]) * 65536,
                         8 * MiB + rng.randrange(24 * MiB // 65536) * 65536)
        except nbd.Error:
            pass  # the server died under us: expected

    t = threading.Thread(target=more_writes)
    t.start()
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    stop.set()
    t.join()
    p = run(['qemu-img', 'check', img])
    assert p.returncode in (0, 3), p.stdout + p.stderr  # 3: leaks only
    p = run(['qemu-img', 'convert', '-O', 'raw', img, tmp_path / 'k.raw'],
            check=True)
    with open(tmp_path / 'k.raw', 'rb') as f:
        assert f.read(4 * MiB) == first * 4


def test_client_killed_mid_request(tmp_path):
    """A client that dies with requests in flight leaves a clean image and
    a server that serves the next client."""
    img = tmp_path / 'c.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '64M')
    with serve(tmp_path, img, '-f', 'qcow2') as sock:
        client = subprocess.Popen(
            ['nbdsh', '-u', uri(sock), '-c',
             'buf = b"\\x42" * (4 << 20)\n'
             'for i in range(1000):\n'
             '    h.aio_pwrite(buf, (i % 16) * (4 << 20))\n'
             '    h.poll(0)\n'])
        time.sleep(0.4)
        client.kill()
        client.wait()
        out = tmp_path / 'after.raw'
        run(['nbdcopy', uri(sock), out], check=True)
        assert os.path.getsize(out) == 64 * MiB
    p = run(['qemu-img', 'check', img])
    assert p.returncode == 0, p.stdout + p.stderr


def test_requests_past_the_end(tmp_path):
    img = tmp_path / 'e.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '1M')
    with serve(tmp_path, img, '-f', 'qcow2') as sock:
        h = nbd.NBD()
        h.set_strict_mode(0)  # send what a careless client sends
        h.connect_uri(uri(sock))
        for call in (lambda: h.pwrite(b'x' * 4096, MiB - 512),
                     lambda: h.pread(4096, MiB),
                     lambda: h.zero(4096, MiB)):
            with pytest.raises(nbd.Error):
                call()
        h.pwrite(b'y' * 512, MiB - 512)
        h.flush()
        h.shutdown()
    p = run(['qemu-img', 'check', img])
    assert p.returncode == 0, p.stdout + p.stderr


def test_serve_read_only_and_export_name(tmp_path, images):
    path, _ = images['qcow2-1.1']
    with serve(tmp_path, path, '-r', '-x', 'disk0') as sock:
        p = run(['qemu-io', '-f', 'raw', uri(sock, 'disk0'),
                 '-c', 'write 0 512'])
        assert 'Permission denied' in p.stdout + p.stderr or \
            'read-only' in (p.stdout + p.stderr).lower(), p.stdout + p.stderr
        info = json.loads(run(['nbdinfo', '--json', uri(sock, 'disk0')],
                              check=True).stdout)
        assert info['exports'][0]['export-name'] == 'disk0'
        # read-only: others may read the image meanwhile
        run(['qemu-img', 'info', path], check=True)


def test_snapshot_and_cow(tmp_path):
    """-l serves an internal snapshot (read-only); -s takes writes into a
    throw-away overlay and leaves the image unchanged."""
    img = tmp_path / 's.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '2M')
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x01 0 1M', img)
    qemu('qemu-img', 'snapshot', '-c', 'before', img)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x02 0 1M', img)
    for arg in ('before', '1'):
        with serve(tmp_path, img, '-l', arg) as sock:
            p = run(['qemu-io', '-r', '-f', 'raw', uri(sock),
                     '-c', 'read -P 0x01 0 1M'], check=True)
            assert 'Pattern verification failed' not in p.stdout
    digest = open(img, 'rb').read()
    with serve(tmp_path, img, '-s') as sock:
        p = run(['qemu-io', '-f', 'raw', uri(sock), '-c',
                 'write -P 0x03 0 64k', '-c', 'read -P 0x03 0 64k'],
                check=True)
        assert 'Pattern verification failed' not in p.stdout
    assert open(img, 'rb').read() == digest


def test_exits_after_last_client_and_forks(tmp_path, images):
    """Without -t the server exits when its client leaves (qemu-nbd);
    --fork returns once it listens, and --pid-file names the server."""
    path, _ = images['raw']
    sock = str(tmp_path / 'once.sock')
    pidfile = tmp_path / 'pid'
    p = run([VIMG, 'serve', '--fork', '--pid-file', pidfile, '-k', sock,
             '-r', path], env=server_env(), check=True)
    assert os.path.exists(sock)
    pid = int(open(pidfile).read())
    run(['nbdinfo', uri(sock)], check=True)
    for _ in range(250):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail('server still running after its only client left')


def test_serve_errors(tmp_path):
    p = vimg('serve', '-k', tmp_path / 'x.sock', tmp_path / 'missing.qcow2')
    assert p.returncode == 1
    assert "Could not open" in p.stderr and 'missing.qcow2' in p.stderr
    img = tmp_path / 'ok.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '1M')
    env = dict(os.environ, PATH=str(tmp_path / 'empty-path'))
    p = run([VIMG, 'serve', '-k', tmp_path / 'x.sock', img], env=env)
    assert p.returncode == 1 and 'nbdkit is not installed' in p.stderr
    p = vimg('serve', '-k', 's', '-p', '10809', img)
    assert p.returncode == 1 and '--socket' in p.stderr
    if 'LD_PRELOAD' not in server_env():
        # (not with a sanitizer build's plugin: nbdkit may then hang at
        # exit after an error, see test_full_disk)
        p = run([VIMG, 'serve', '--fork', '-k', tmp_path / 'no' / 'x.sock',
                 img])
        assert p.returncode == 1 and 'x.sock' in p.stderr  # nbdkit's reason
    p = vimg('serve', '-e', 'many', img)
    assert p.returncode == 1 and 'Invalid shared device number' in p.stderr


def test_full_disk(tmp_path):
    """A server whose image file cannot grow (RLIMIT_FSIZE: the disk is
    full for it) fails the writes that need new clusters with an error the
    client sees, keeps serving, and leaves an image qemu-img finds clean
    with every write that succeeded in it."""
    import resource
    img = tmp_path / 'full.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '64M')
    limit = os.path.getsize(img) + 2 * MiB

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    sock = str(tmp_path / 'f.sock')
    proc = subprocess.Popen([VIMG, 'serve', '-t', '-k', sock, '--pid-file',
                             sock + '.pid', '-f', 'qcow2', img],
                            stderr=subprocess.PIPE, env=server_env(),
                            preexec_fn=small_disk)
    wait_for_socket(proc, sock, 'vimg serve')
    h = nbd.NBD()
    h.connect_uri(uri(sock))
    written, failed = [], 0
    for i in range(8):
        try:
            h.pwrite(bytes([i + 1]) * MiB, i * 4 * MiB)
            written.append(i)
        except nbd.Error:
            failed += 1
    assert written and failed, (written, failed)
    h.flush()
    assert h.pread(4096, 0) == b'\x01' * 4096   # still serving
    h.shutdown()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        # Seen only with a sanitizer build's plugin: nbdkit, having logged
        # errors, hangs at exit in libp11-kit's destructor (glibc's locale
        # lock) under the preloaded ASan runtime.  The writes were flushed.
        assert 'LD_PRELOAD' in server_env(), 'server did not stop'
        proc.kill()
        proc.wait()
    p = run(['qemu-img', 'check', img])
    assert p.returncode in (0, 3), p.stdout + p.stderr   # leaks at most
    for i in written:
        p = run(['qemu-io', '-f', 'qcow2', '-c',
                 f'read -P {i + 1} {i * 4 * MiB} 1M', img], check=True)
        assert 'Pattern verification failed' not in p.stdout
