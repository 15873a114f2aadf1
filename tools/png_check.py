#!/usr/bin/env python3
"""png_check.py FILE.png...: checks PNGs with python's zlib, independently of example.c's writer: every chunk's
CRC, the zlib stream (zlib.decompress checks its Adler-32), the filters, and that the pixels
equal FILE.ppm's when there is one. Prints the text chunks. Exit status 1 on any problem."""
import struct, sys, zlib

bad = 0
for path in sys.argv[1:]:
    d = open(path, 'rb').read()
    assert d[:8] == b'\x89PNG\r\n\x1a\n', path
    p, idat, texts, kinds = 8, b'', [], []
    while p < len(d):
        n, = struct.unpack('>I', d[p:p + 4])
        kind, body, crc = d[p + 4:p + 8], d[p + 8:p + 8 + n], d[p + 8 + n:p + 12 + n]
        if struct.unpack('>I', crc)[0] != zlib.crc32(kind + body):
            print('%s: bad CRC in %s' % (path, kind)); bad += 1
        kinds.append(kind.decode())
        if kind == b'IHDR':
            w, h, depth, color, _, _, interlace = struct.unpack('>IIBBBBB', body)
            assert (depth, color, interlace) == (8, 2, 0), body
        elif kind == b'IDAT':
            idat += body
        elif kind == b'tEXt':
            k, v = body.split(b'\0', 1); texts.append(('tEXt', k.decode('latin-1'), v.decode('latin-1')))
        elif kind == b'iTXt':
            k, rest = body.split(b'\0', 1); assert rest[:2] == b'\0\0'
            lang, tk, v = rest[2:].split(b'\0', 2); texts.append(('iTXt', k.decode('latin-1'), v.decode('utf-8')))
        p += 12 + n
    raw = zlib.decompress(idat)
    stride = 3 * w
    assert len(raw) == h * (stride + 1), (len(raw), h, stride)
    rows, prev, used = [], bytearray(stride), set()
    for y in range(h):
        f, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        used.add(f)
        for i in range(stride):
            a = row[i - 3] if i >= 3 else 0
            b = prev[i]
            c = prev[i - 3] if i >= 3 else 0
            if f == 4:
                q = a + b - c; pa, pb, pc = abs(q - a), abs(q - b), abs(q - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            else:
                pred = [0, a, b, (a + b) // 2][f]
            row[i] = (row[i] + pred) & 255
        rows.append(bytes(row)); prev = row
    pixels = b''.join(rows)
    try:
        ppm = open(path[:-4] + '.ppm', 'rb').read()
        same = ppm.endswith(pixels) and ppm.startswith(b'P6\n%d %d\n255\n' % (w, h)) and len(ppm) == len(b'P6\n%d %d\n255\n' % (w, h)) + len(pixels)
    except FileNotFoundError:
        same = None
    if same is False:
        bad += 1
    blocks = (idat[2] >> 1) & 3
    print('%s: %dx%d, chunks %s, first block type %d, %d bytes for %d raw, filters %s, pixels %s, text %r' % (
        path, w, h, ' '.join(kinds), blocks, len(d), len(raw), sorted(used),
        {True: 'match the PPM', False: 'DIFFER from the PPM', None: '(no PPM)'}[same], texts))
sys.exit(1 if bad else 0)
