#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Install the build into a temporary directory and use it as a user would.

    test-install.py BUILD_DIR PREFIX LIBDIR BINDIR SANITIZE MESON... -- CC...

`meson install --destdir` into a temporary directory; pkg-config finds
vimg.pc there; use-vimg.c is compiled and linked with
`pkg-config --cflags --libs vimg` against the installed shared library and
run (it opens a raw and a qcow2 image and reads them).  The qcow2 image is
made by the installed vimg, which must load the installed libvimg.  The
library must export vimg_* symbols only.  Nothing here skips: a missing
tool fails the test.
"""
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    print(f'FAIL: {msg}')
    sys.exit(1)


def run(args, env=None, what=None):
    print('$', shlex.join(args))
    p = subprocess.run(args, capture_output=True, text=True, env=env,
                       timeout=300)
    sys.stdout.write(p.stdout)
    sys.stdout.write(p.stderr)
    if p.returncode != 0:
        fail(f'{what or args[0]} exited {p.returncode}')
    return p.stdout


def loaded_from(binary, env):
    """Where the dynamic linker finds libvimg.so for BINARY."""
    for line in run(['ldd', binary], env=env).splitlines():
        name, _, rest = line.strip().partition(' => ')
        if name.startswith('libvimg.so'):
            return os.path.realpath(rest.split(' (')[0])
    fail(f'{binary} does not link libvimg.so')


def main(argv):
    if '--' not in argv or len(argv) < 8:
        fail(__doc__)
    sep = argv.index('--')
    build, prefix, libdir, bindir, sanitize = argv[1:6]
    meson, cc = argv[6:sep], argv[sep + 1:]
    for tool in ('pkg-config', 'ldd', 'nm'):
        if not shutil.which(tool):
            fail(f'{tool} not found (Debian: pkg-config, libc-bin, '
                 f'binutils)')
    sanitize_flags = [] if sanitize == 'none' else [f'-fsanitize={sanitize}']

    with tempfile.TemporaryDirectory(prefix='vimg-install-') as tmp:
        dest = os.path.join(tmp, 'dest')
        run(meson + ['install', '-C', build, '--destdir', dest,
                     '--no-rebuild', '--quiet'], what='meson install')
        lib = os.path.join(dest + prefix, libdir)
        pc_dir = os.path.join(lib, 'pkgconfig')
        if not os.path.isfile(os.path.join(pc_dir, 'vimg.pc')):
            fail(f'no vimg.pc installed in {pc_dir}')

        # pkg-config sees only the installed tree
        env = dict(os.environ, PKG_CONFIG_LIBDIR=pc_dir, PKG_CONFIG_PATH='',
                   PKG_CONFIG_SYSROOT_DIR=dest)
        flags = shlex.split(run(['pkg-config', '--cflags', '--libs', 'vimg'],
                                env=env))
        if '-lvimg' not in flags or \
                f'-I{dest}{prefix}/include' not in flags:
            fail(f'pkg-config gave {flags}')

        exe = os.path.join(tmp, 'use-vimg')
        run(cc + sanitize_flags + ['-std=c11', '-Wall', '-Wextra', '-Werror',
                                   os.path.join(HERE, 'use-vimg.c'),
                                   '-o', exe] + flags, what='cc')

        run_env = dict(os.environ, LD_LIBRARY_PATH=lib)
        installed_lib = os.path.realpath(os.path.join(lib, 'libvimg.so.0'))
        vimg = os.path.join(dest + prefix, bindir, 'vimg')
        for binary in (exe, vimg):
            where = loaded_from(binary, run_env)
            if where != installed_lib:
                fail(f'{binary} loads {where}, not {installed_lib}')

        # a disk with data, a hole and an odd tail; the installed vimg
        # makes the qcow2 copy
        data = bytes(i * 13 % 253 for i in range(1 << 20)) + \
            bytes(1 << 20) + b'\x5a' * 4096
        raw = os.path.join(tmp, 'disk.raw')
        with open(raw, 'wb') as f:
            f.write(data)
        qcow2 = os.path.join(tmp, 'disk.qcow2')
        run([vimg, 'convert', '-O', 'qcow2', raw, qcow2], env=run_env,
            what='installed vimg')
        run([exe, raw, qcow2, raw], env=run_env, what='use-vimg')

        # the nbdkit plugin: installed into nbdkit's plugin directory,
        # loading the installed libvimg, serving the qcow2 copy
        plugins = [os.path.join(d, f) for d, _, fs in os.walk(dest)
                   for f in fs if f == 'nbdkit-vimg-plugin.so']
        if len(plugins) != 1 or '/nbdkit/plugins/' not in plugins[0]:
            fail(f'nbdkit plugin installed as {plugins}')
        where = loaded_from(plugins[0], run_env)
        if where != installed_lib:
            fail(f'{plugins[0]} loads {where}, not {installed_lib}')
        if sanitize == 'none':  # nbdkit itself is not instrumented
            out = run(['nbdkit', '-U', '-', plugins[0], qcow2, '--run',
                       'nbdinfo --size "$uri"'], env=run_env,
                      what='nbdkit with the installed plugin')
            if out.split()[-1] != str(len(data)):
                fail(f'the plugin serves {out!r}, not {len(data)} bytes')

        # the export map: the public API and nothing else
        names = [line.split()[-1] for line in
                 run(['nm', '-D', '--defined-only',
                      installed_lib]).splitlines() if line.strip()]
        stray = [n for n in names if not n.startswith('vimg_')]
        if stray or 'vimg_open' not in names or 'vimg_error' in names:
            fail(f'libvimg exports {names}')
    print('install: pkg-config, the shared library, the CLI and the nbdkit '
          'plugin work')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
