"""Volumes on file: targets (the block chunk store of docs/format.md on image files): both
replicas hold the same bytes (fsck compares them), a byte flipped in an image behind braidfs'
back never reaches the application and fsck finds it, a mounted image is held exclusively,
and format refuses images that hold something. The POSIX suite (test_posix.py) and the quick
crash tests (test_crash.py) also run on file: targets."""

import os
import random
import re
import struct

from conftest import braidfs, fsck_replicas, read_file, sha256_file, write_file

MiB = 1 << 20
BS = 4096


def _data_start(img):
    """The first block of the data region, from the newer valid superblock copy (layout in
    docs/format.md: data start is the u64 at offset 176; the generation the u64 at 16)."""
    best = None
    with open(img, "rb") as f:
        for copy in (0, 1):
            f.seek(copy * BS)
            b = f.read(BS)
            if b[:8] != b"BRAIDSB\0":
                continue
            gen, = struct.unpack_from("<Q", b, 16)
            start, = struct.unpack_from("<Q", b, 176)
            if best is None or gen > best[0]:
                best = (gen, start)
    assert best, f"{img} has no superblock"
    return best[1]


def _nonzero_data_blocks(img, limit=64):
    """Block numbers of the first non-zero blocks of the data region."""
    start = _data_start(img)
    out = []
    with open(img, "rb") as f:
        f.seek(start * BS)
        blk = start
        while len(out) < limit:
            b = f.read(BS)
            if len(b) < BS:
                break
            if any(b):
                out.append(blk)
            blk += 1
            if blk - start > 200000 and not out:
                break
    return out


def _fsck_counts(out):
    """(differing, missing, stray) of fsck's replica summary."""
    n = fsck_replicas(out)
    return n["differing"], n["missing"], n["stray"]


def test_file_targets_replicas_identical(make_volume):
    v = make_volume(targets=("file", "file"))
    rng = random.Random(7)
    want = {}
    for i in range(6):
        p = v.path(f"f{i}")
        data = bytearray(rng.randbytes(rng.randrange(1, 9 * MiB)))
        write_file(p, bytes(data))
        # overwrite pieces in place: copy-on-write, partial blocks merged
        with open(p, "r+b") as f:
            for _ in range(20):
                off = rng.randrange(0, len(data))
                piece = rng.randbytes(rng.randrange(1, 70000))
                f.seek(off)
                f.write(piece)
                data[off:off + len(piece)] = piece
            if i % 2:
                f.truncate(len(data) // 3)
                del data[len(data) // 3:]
        want[p] = bytes(data)
    os.unlink(v.path("f0"))
    del want[v.path("f0")]
    v.umount()
    r = v.fsck()
    assert r.returncode == 0, f"fsck: {r.stdout}\n{r.stderr}"
    assert _fsck_counts(r.stdout) == (0, 0, 0), r.stdout
    assert re.search(r"[1-9]\d* chunk\(s\)", r.stdout), r.stdout
    v.mount()
    for p, data in want.items():
        assert read_file(p) == data, p


def test_file_target_flipped_byte(make_volume):
    v = make_volume(targets=("file", "file"))
    p = v.path("f")
    data = random.Random(3).randbytes(MiB)  # whole blocks, written once: no stale copies
    write_file(p, data)
    digest = sha256_file(p)
    v.umount()
    img = v.images[0]
    blocks = _nonzero_data_blocks(img)
    assert blocks, "no data block found in the image"
    with open(img, "r+b") as f:
        f.seek(blocks[0] * BS + 123)
        b = f.read(1)
        f.seek(blocks[0] * BS + 123)
        f.write(bytes([b[0] ^ 0x40]))
    # fsck (unmounted; nothing has read the bad copy yet, which would repair it: DS-4)
    r = v.fsck()
    assert r.returncode == 1, f"fsck did not notice the flipped byte:\n{r.stdout}"
    assert re.search(r"[1-9]\d* checksum error|mismatch|unreadable|offline", r.stdout), r.stdout
    r = v.fsck(repair=True)
    r = v.fsck()
    assert r.returncode == 0, f"after repair: {r.stdout}\n{r.stderr}"
    v.mount()
    assert sha256_file(p) == digest


def test_file_target_exclusive_and_status(make_volume):
    v = make_volume(targets=("file", "file"))
    write_file(v.path("x"), b"x" * 10000)
    r = v.status()
    assert r.returncode == 0, r.stdout + r.stderr
    # the mount holds the images: status shows the mount's own figures (control socket)
    assert "in the mount, since it opened them" in r.stdout or "held by the mount" in r.stdout, \
        r.stdout
    # the image is the mount's: another volume cannot take it
    other = os.path.join(v.dir, "other.db")
    r = braidfs("format", "--force", "sqlite://" + other, "v2", v.targets[0])
    assert r.returncode == 1
    assert "in use by another process" in r.stderr, r.stderr
    v.umount()
    # unmounted, it still holds this volume: refused without --force, and says whose
    vol_uuid = re.search(r"uuid (\S+)", v.status().stdout)
    r = braidfs("format", "sqlite://" + other, "v2", v.targets[0])
    assert r.returncode == 1
    assert "holds a braidfs target of volume" in r.stderr, r.stderr
    if vol_uuid:
        assert vol_uuid.group(1).strip(",)") in r.stderr
    r = v.status()
    assert r.returncode == 0 and "held by" not in r.stdout, r.stdout


def test_file_target_format_refusals(test_dir):
    db = "sqlite://" + os.path.join(test_dir, "m.db")
    data_img = os.path.join(test_dir, "data.img")
    with open(data_img, "wb") as f:
        f.truncate(100 * MiB)
        f.seek(5000)
        f.write(b"a file system was here")
    r = braidfs("format", db, "v", f"file:{data_img}")
    assert r.returncode == 1
    assert "holds data: its first bytes are not zero" in r.stderr, r.stderr
    small = os.path.join(test_dir, "small.img")
    with open(small, "wb") as f:
        f.truncate(16 * MiB)
    r = braidfs("format", db, "v", f"file:{small}")
    assert r.returncode == 1
    assert "too small for a braidfs target" in r.stderr, r.stderr
    r = braidfs("format", db, "v", f"file:{test_dir}/missing.img")
    assert r.returncode == 1 and "does not exist" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(test_dir, "m.db")), "a refused format left a db"
    # --force takes the image with data
    r = braidfs("format", "--force", db, "v", f"file:{data_img}")
    assert r.returncode == 0, r.stderr
