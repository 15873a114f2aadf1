#!/usr/bin/env python3
"""png_cases.py OUTDIR: writes PNG test cases for test.c (run by `make test`) made with python's zlib (not with png.c's encoder).
NAME.png + NAME.ppm: the PNG must decode to exactly the PPM's pixels (alpha dropped).
NAME.png + NAME.err: the PNG must be refused with a message containing the .err text."""
import os, random, struct, sys, zlib

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = random.Random(1)


def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def filter_rows(rows, bpp, filters):
    """PNG filtering of raw byte rows; filters[y] is the filter type of row y."""
    outb, prev = bytearray(), bytes(len(rows[0]))
    for y, row in enumerate(rows):
        t = filters[y]
        outb.append(t)
        for i, v in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, paeth(a, b, c)][t]
            outb.append((v - pred) & 255)
        prev = row
    return bytes(outb)


def pack(samples, depth):
    """Packs a row of samples of `depth` bits, high bits first."""
    if depth == 8:
        return bytes(samples)
    outb, acc, n = bytearray(), 0, 0
    for s in samples:
        acc, n = acc << depth | s, n + depth
        if n == 8:
            outb.append(acc); acc, n = 0, 0
    if n:
        outb.append(acc << (8 - n))
    return bytes(outb)


def image(w, h, channels, maxv):
    """Smooth gradients with noise and flat runs, so that LZ77 finds matches and filters matter."""
    px = []
    for y in range(h):
        row = []
        for x in range(w):
            for c in range(channels):
                if (x // 5 + y // 3) % 4 == 0:
                    v = (x * 7 + y * 3 + c * 50) % (maxv + 1)
                elif (x + y) % 7 == 0:
                    v = rng.randrange(maxv + 1)
                else:
                    v = (x * 2 + y + c * 30) * (maxv + 1) // (2 * w + h + 90 + 1) % (maxv + 1)
                row.append(v)
        px.append(row)
    return px


def write_case(name, w, h, color, depth, filters=None, compress=lambda d: zlib.compress(d, 6),
               split=None, extra_before=b'', palette_size=None, interlace=0, edit=None):
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    maxv = (1 << depth) - 1
    npal = palette_size or (1 << depth)
    px = image(w, h, channels, min(maxv, npal - 1) if color == 3 else maxv)
    palette = [(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(npal)]
    rows = [pack(r, depth) for r in px]
    bpp = max(1, channels * depth // 8)
    filters = filters or [y % 5 for y in range(h)]
    z = compress(filter_rows(rows, bpp, filters))
    if edit:
        z = edit(z)
    png = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, depth, color, 0, 0, interlace))
    png += extra_before
    if color == 3:
        png += chunk(b'PLTE', bytes(v for p in palette for v in p))
        png += chunk(b'tRNS', bytes(rng.randrange(256) for _ in range(npal)))
    pieces = [z] if not split else [z[i:i + split] for i in range(0, len(z), split)]
    png += b''.join(chunk(b'IDAT', p) for p in pieces) + chunk(b'IDAT', b'')   # an empty IDAT is legal
    png += chunk(b'tEXt', b'Comment\0after the data') + chunk(b'IEND', b'')
    open(os.path.join(out, name + '.png'), 'wb').write(png)
    rgb = bytearray()
    for r in px:
        for x in range(w):
            s = r[x * channels:(x + 1) * channels]
            if color == 3:
                rgb += bytes(palette[s[0]])
            elif color in (0, 4):
                rgb += bytes([s[0] * 255 // maxv] * 3)
            else:
                rgb += bytes(s[:3])
    open(os.path.join(out, name + '.ppm'), 'wb').write(b'P6\n# made by png_gen.py\n%d %d\n255\n' % (w, h) + rgb)
    return png


def deflate(level=6, strategy=zlib.Z_DEFAULT_STRATEGY, wbits=15, mem=8):
    def f(data):
        c = zlib.compressobj(level, zlib.DEFLATED, wbits, mem, strategy)
        return c.compress(data) + c.flush()
    return f


n = 0
for color, depths in ((0, (1, 2, 4, 8)), (2, (8,)), (3, (1, 2, 4, 8)), (4, (8,)), (6, (8,))):
    for depth in depths:
        for w, h in ((1, 1), (3, 7), (13, 5), (61, 33)):
            write_case('type%d_depth%d_%dx%d' % (color, depth, w, h), w, h, color, depth); n += 1
for f in range(5):   # every filter on every row of an image
    write_case('filter%d' % f, 37, 19, 2, 8, filters=[f] * 19); n += 1
    write_case('filter%d_gray4' % f, 37, 19, 0, 4, filters=[f] * 19); n += 1
for level in range(10):
    write_case('level%d' % level, 97, 61, 6, 8, compress=deflate(level)); n += 1
for name, strategy in (('filtered', zlib.Z_FILTERED), ('huffman_only', zlib.Z_HUFFMAN_ONLY),
                       ('rle', zlib.Z_RLE), ('fixed', zlib.Z_FIXED)):
    write_case('strategy_' + name, 97, 61, 2, 8, compress=deflate(9, strategy)); n += 1
write_case('window9_mem1', 120, 90, 2, 8, compress=deflate(9, wbits=9, mem=1)); n += 1
write_case('split_1byte', 23, 11, 2, 8, split=1); n += 1
write_case('split_7bytes', 23, 11, 4, 8, split=7); n += 1
write_case('palette_short', 19, 9, 3, 8, palette_size=5); n += 1
write_case('ancillary', 8, 8, 2, 8, extra_before=chunk(b'gAMA', struct.pack('>I', 45455)) + chunk(b'prVt', b'xyz')); n += 1
big = write_case('big_dynamic', 300, 200, 2, 8, compress=deflate(9)); n += 1


def bad(name, png, needle):
    open(os.path.join(out, 'bad_' + name + '.png'), 'wb').write(png)
    open(os.path.join(out, 'bad_' + name + '.err'), 'w').write(needle)
    for ext in ('.ppm',):
        p = os.path.join(out, 'bad_' + name + ext)
        if os.path.exists(p):
            os.remove(p)


def replace_chunk(png, kind, data):
    p = 8
    while p < len(png):
        ln = struct.unpack('>I', png[p:p + 4])[0]
        if png[p + 4:p + 8] == kind:
            return png[:p] + chunk(kind, data) + png[p + 12 + ln:]
        p += 12 + ln
    raise KeyError(kind)


def first_idat(png):
    p = 8
    while png[p + 4:p + 8] != b'IDAT':
        p += 12 + struct.unpack('>I', png[p:p + 4])[0]
    return png[p + 8:p + 8 + struct.unpack('>I', png[p:p + 4])[0]]


ok = write_case('bad_base', 9, 4, 2, 8)
ihdr = lambda w, h, d, c, i=0: struct.pack('>IIBBBBB', w, h, d, c, 0, 0, i)
raw = filter_rows([bytes(27)] * 4, 3, [0] * 4)
bad('16bit', replace_chunk(ok, b'IHDR', ihdr(9, 4, 16, 2)), '16-bit')
bad('interlaced', replace_chunk(ok, b'IHDR', ihdr(9, 4, 8, 2, 1)), 'interlaced')
bad('depth', replace_chunk(ok, b'IHDR', ihdr(9, 4, 4, 2)), 'invalid IHDR')
bad('huge', replace_chunk(ok, b'IHDR', ihdr(100000, 100000, 8, 2)), 'too large')
bad('crc', ok[:-1] + bytes([ok[-1] ^ 1]), 'CRC')
bad('no_iend', ok[:-12], 'truncated')
bad('filter5', replace_chunk(ok, b'IDAT', zlib.compress(b'\5' + raw[1:])), 'filter type')
bad('short', replace_chunk(ok, b'IDAT', zlib.compress(raw[:-1])), 'less image data')
bad('long', replace_chunk(ok, b'IDAT', zlib.compress(raw + b'\0')), 'more image data')
z = zlib.compress(raw)
bad('adler', replace_chunk(ok, b'IDAT', z[:-1] + bytes([z[-1] ^ 1])), 'Adler-32')
bad('zlib_header', replace_chunk(ok, b'IDAT', b'\x78\x9d' + z[2:]), 'zlib header')
bad('dictionary', replace_chunk(ok, b'IDAT', b'\x78\xbb' + z[2:]), 'dictionary')
bad('critical', ok[:33] + chunk(b'ABCD', b'') + ok[33:], 'critical')
bad('no_plte', replace_chunk(ok, b'IHDR', ihdr(9, 4, 8, 3)), 'PLTE')
bad('no_idat', ok[:33] + chunk(b'IEND', b''), 'IDAT')
bad('btype3', replace_chunk(ok, b'IDAT', b'\x78\x9c\x07' + z[3:]), 'block type')
pal = write_case('bad_palette_base', 6, 2, 3, 8, palette_size=4)
bad('palette_index', replace_chunk(pal, b'IDAT', zlib.compress(bytes([0, 0, 1, 2, 3, 4, 0] * 2))), 'palette index')
for f in os.listdir(out):
    if f.startswith('bad_') and f.endswith('base.png'):
        os.remove(os.path.join(out, f)); os.remove(os.path.join(out, f[:-4] + '.ppm'))
print('%d good cases, %d bad cases in %s' % (n, len([f for f in os.listdir(out) if f.endswith('.err')]), out))
