#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Check that every #include goes down the layers (docs/HACKING.md).

    check-layers.py [SOURCE_ROOT]    check the tree (default: this checkout)
    check-layers.py --self-test      check fake trees with known violations

Each file of lib/, include/, tools/, server/ and tests/formats/ belongs to
one layer (LAYERS, first match wins); it may include headers of the layers
its rule names, and of its own folder.  A header is found as the compiler
finds it: next to the including file, then in include/ and lib/.  Headers
found nowhere in the tree (system headers) are not checked.

Prints FILE:LINE: what is wrong, and exits 1 on any violation that is not
in ALLOWED (today's known exceptions, each with the reason it is there).
"""
import fnmatch
import os
import re
import sys
import tempfile

# The roots whose files must belong to a layer.
CHECKED_ROOTS = ('include/', 'lib/', 'tools/', 'server/', 'tests/formats/')
# Where `#include "x"` looks after the including file's folder, and
# `#include <x>` looks first (meson: include_directories('include', 'lib')).
INCLUDE_DIRS = ('include', 'lib')

# The layers, bottom to top: (name, path patterns, layers it may include).
# A pattern ending in '/' is a folder; '*' is one path component.  A layer
# whose pattern has a '*' folder is one layer per folder ("each format its
# own"): such a file may include its own folder, never a sibling's.
# Every layer may include its own files and the public header: vimg.h's
# types (struct vimg_info, vimg_create_opts...) are the vocabulary of
# every layer; what tools/ gets is the rest: vimg.h alone.
LAYERS = [
    ('public', ['include/'], []),
    ('util', ['lib/util/', 'lib/vimg-endian.h', 'lib/error.c'], []),
    ('io', ['lib/io/'], ['util']),
    ('codec', ['lib/codec/'], ['util']),
    ('crypto', ['lib/crypto/'], ['util']),
    # The driver interface (format.h), the registry and probing.  format.h
    # hands drivers struct vimg_image, so it includes vimg-internal.h.
    ('format-core', ['lib/formats/*.c', 'lib/formats/*.h'],
     ['util', 'io', 'codec', 'crypto', 'image']),
    # One folder per format; tests/formats/ holds test-only drivers.
    ('format', ['lib/formats/*/', 'tests/formats/*/'],
     ['util', 'io', 'codec', 'crypto', 'format-core']),
    # The few image-layer services lib/ops needs beyond the public API:
    # one narrow header, implemented by the image layer.
    ('image-services', ['lib/image-services.h'], ['util']),
    # The image layer: lib/image.c, vimg-internal.h and the rest of lib/'s
    # top level (public entry points).
    ('image', ['lib/*.c', 'lib/*.h'],
     ['util', 'io', 'codec', 'crypto', 'format-core', 'image-services']),
    # Whole-image algorithms, over the public API plus image-services.h.
    ('ops', ['lib/ops/'], ['util', 'image-services']),
    # Front ends: one folder per program, public API only.
    ('tools', ['tools/*/'], []),
    ('server', ['server/'], []),
]

# Known exceptions: (file, included header, why).  Each is a debt with an
# owner; remove the line when it is paid.  A line that no longer matches
# anything is reported (not an error) so that it can be deleted.
ALLOWED = [
    # Drivers get struct vimg_image through format.h (qcow2.h); these
    # three name vimg-internal.h again (issue 10, item 5: the qcow2 split).
    ('lib/formats/qcow2/qcow2-amend.c', 'lib/vimg-internal.h',
     'redundant: qcow2.h includes format.h'),
    ('lib/formats/qcow2/qcow2-backing.c', 'lib/vimg-internal.h',
     'redundant: qcow2.h includes format.h'),
    ('lib/formats/qcow2/qcow2-snapshot-write.c', 'lib/vimg-internal.h',
     'redundant: qcow2.h includes format.h'),
    # The fault-injection hook, compiled only into the test CLI vimg-faulty
    # (#ifdef VIMG_FAULT_HOOK), which links the internal static library;
    # the installed vimg sees include/ alone and links the shared libvimg.
    ('tools/vimg/cli.c', 'lib/vimg-internal.h', 'vimg-faulty only'),
]

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]')
SOURCE_EXTS = ('.c', '.h')


def pattern_matches(pattern, path):
    """Does PATTERN (see LAYERS) match PATH?  Returns the instance (the
    folder a '*/' pattern matched, or '') or None."""
    if pattern.endswith('/'):
        parts = pattern.rstrip('/').split('/')
        path_parts = path.split('/')
        if len(path_parts) <= len(parts):
            return None
        head = '/'.join(path_parts[:len(parts)])
        if not fnmatch.fnmatchcase(head, '/'.join(parts)):
            return None
        return head if '*' in pattern else ''
    if path.count('/') == pattern.count('/') and \
            fnmatch.fnmatchcase(path, pattern):
        return ''
    return None


def layer_of(path):
    """(layer name, instance) of PATH, or (None, None)."""
    for name, patterns, _ in LAYERS:
        for pattern in patterns:
            instance = pattern_matches(pattern, path)
            if instance is not None:
                return name, instance
    return None, None


def may_include(layer):
    for name, _, allowed in LAYERS:
        if name == layer:
            return set(allowed) | {'public'}
    raise KeyError(layer)


def resolve(root, including, quote, name):
    """The tree path (relative to ROOT) #include NAME finds, or None."""
    dirs = [os.path.dirname(including)] if quote == '"' else []
    dirs += INCLUDE_DIRS
    for d in dirs:
        candidate = os.path.normpath(os.path.join(d, name))
        if candidate.startswith('..'):
            continue
        if os.path.isfile(os.path.join(root, candidate)):
            return candidate.replace(os.sep, '/')
    return None


def source_files(root):
    for top in CHECKED_ROOTS:
        base = os.path.join(root, top)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for f in sorted(filenames):
                if f.endswith(SOURCE_EXTS):
                    path = os.path.join(dirpath, f)
                    yield os.path.relpath(path, root).replace(os.sep, '/')


def check(root, allowed=ALLOWED):
    """Returns (errors, notes): lists of 'FILE:LINE: message'."""
    errors = []
    used = set()
    allow = {(f, h): why for f, h, why in allowed}
    for path in source_files(root):
        layer, instance = layer_of(path)
        if layer is None:
            errors.append(f'{path}:1: in no layer: add its folder to '
                          f'LAYERS in {sys.argv[0]}')
            continue
        ok = may_include(layer)
        with open(os.path.join(root, path), encoding='utf-8',
                  errors='replace') as f:
            lines = f.readlines()
        for lineno, line in enumerate(lines, 1):
            m = INCLUDE_RE.match(line)
            if not m:
                continue
            header = resolve(root, path, m.group(1), m.group(2))
            if header is None:
                continue
            hlayer, hinstance = layer_of(header)
            if hlayer == layer and hinstance == instance:
                continue
            if hlayer == layer:
                rule = (f'a {layer} file includes another {layer} '
                        f'folder ({hinstance}/)')
            elif hlayer in ok:
                continue
            elif hlayer is None:
                rule = f'{header} is in no layer'
            else:
                rule = (f'layer {layer} may include '
                        f'{", ".join(sorted(ok))}, not {hlayer}')
            if (path, header) in allow:
                used.add((path, header))
                continue
            errors.append(f'{path}:{lineno}: includes {header}: {rule}')
    notes = [f'{f}: allowed exception no longer needed (includes {h}): '
             f'delete it from ALLOWED'
             for f, h, _ in allowed if (f, h) not in used]
    return errors, notes


def write_tree(root, files):
    for path, text in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, 'w', encoding='utf-8') as f:
            f.write(text)


# A small tree that follows the rules, and violations to add to it, each
# with the error it must give.
CLEAN_TREE = {
    'include/vimg.h': '#include <stdint.h>\n',
    'lib/util/vimg-util.h': '#include "vimg.h"\n',
    'lib/io/io.h': '#include "util/vimg-util.h"\n',
    'lib/vimg-internal.h': '#include "vimg.h"\n#include "io/io.h"\n',
    'lib/image.c': '#include "formats/format.h"\n',
    'lib/formats/format.h': '#include "vimg-internal.h"\n',
    'lib/formats/registry.c': '#include "formats/format.h"\n',
    'lib/formats/aaa/aaa.h': '#include "formats/format.h"\n',
    'lib/formats/aaa/aaa.c': '#include "aaa.h"\n#include "io/io.h"\n',
    'lib/formats/bbb/bbb.c': '#include "formats/format.h"\n',
    'lib/ops/ops.h': '#include "vimg.h"\n',
    'lib/ops/convert.c': '#include "ops/ops.h"\n',
    'tools/vimg/cli.h': '#include "vimg.h"\n',
    'tools/vimg/main.c': '#include <stdio.h>\n#include "cli.h"\n',
    'tests/formats/ccc/ccc.c': '#include "formats/format.h"\n',
}
VIOLATIONS = [
    ({'lib/io/io-file.c':
      '#include "io/io.h"\n\n#include "formats/format.h"\n'},
     'lib/io/io-file.c:3: includes lib/formats/format.h: layer io'),
    ({'lib/formats/bbb/bbb.c': '#include "../aaa/aaa.h"\n'},
     'lib/formats/bbb/bbb.c:1: includes lib/formats/aaa/aaa.h: a format '
     'file includes another format folder (lib/formats/aaa/)'),
    ({'tests/formats/ccc/ccc.c': '#include "formats/aaa/aaa.h"\n'},
     'tests/formats/ccc/ccc.c:1: includes lib/formats/aaa/aaa.h'),
    ({'tools/vimg/main.c': '#include "cli.h"\n # include <vimg-internal.h>\n'},
     'tools/vimg/main.c:2: includes lib/vimg-internal.h: layer tools'),
    ({'lib/ops/convert.c': '#include "vimg-internal.h"\n'},
     'lib/ops/convert.c:1: includes lib/vimg-internal.h: layer ops'),
    ({'lib/formats/aaa/aaa.c': '#include "image.c"\n'},
     'lib/formats/aaa/aaa.c:1: includes lib/image.c: layer format'),
    ({'lib/util/pool.c': '#include "ops/ops.h"\n'},
     'lib/util/pool.c:1: includes lib/ops/ops.h: layer util'),
    ({'lib/newdir/x.c': '\n'},
     'lib/newdir/x.c:1: in no layer'),
]


def self_test():
    failures = 0
    total = 2
    with tempfile.TemporaryDirectory() as tmp:
        clean = os.path.join(tmp, 'clean')
        write_tree(clean, CLEAN_TREE)
        errors, _ = check(clean, allowed=[])
        if errors:
            print('FAIL: the clean tree gave errors:', *errors, sep='\n  ')
            failures += 1
        for i, (extra, expected) in enumerate(VIOLATIONS):
            tree = os.path.join(tmp, f'bad{i}')
            write_tree(tree, {**CLEAN_TREE, **extra})
            errors, _ = check(tree, allowed=[])
            total += 1
            if len(errors) != 1 or not errors[0].startswith(expected):
                print(f'FAIL: expected one error starting {expected!r}, '
                      f'got:', *errors, sep='\n  ')
                failures += 1
            # an allowed exception silences exactly that include
            path = next(iter(extra))
            m = re.search(r'includes ([^\s:]+)', expected)
            if m:
                header = m.group(1)
                total += 1
                errors, notes = check(tree, allowed=[(path, header, 'test')])
                if errors or notes:
                    print(f'FAIL: allowing {path} -> {header} left:',
                          *errors, *notes, sep='\n  ')
                    failures += 1
        # a stale allowed exception is a note, not an error
        errors, notes = check(clean, allowed=[('lib/image.c', 'x.h', 't')])
        if errors or len(notes) != 1:
            print('FAIL: a stale exception gave', errors, notes)
            failures += 1
    print(f'self-test: {total - failures} of {total} checks passed')
    return 1 if failures else 0


def main(argv):
    if argv[1:] == ['--self-test']:
        return self_test()
    root = argv[1] if len(argv) > 1 else \
        os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
    errors, notes = check(root)
    for n in notes:
        print(f'note: {n}')
    for e in errors:
        print(e)
    if errors:
        print(f'{len(errors)} include(s) break the layers (docs/HACKING.md); '
              f'the rules are LAYERS in {argv[0]}')
        return 1
    print('layers: every include goes down the layers')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
