"""One volume, one replica on each kind of block address space: a file: image, an iSCSI LUN
(tgtd on loopback) and an NBD export (nbdkit on loopback), 3 replicas. (The POSIX suite runs on
the same kind of volume: test_posix.py's [mixed] cases.)

- data identity: after writes, overwrites, truncates and fsync, `braidfs fsck` finds the three
  replicas identical, and a remount reads the same bytes;
- corruption behind braidfs's back on two of the devices (bytes flipped in the image file and
  in the LUN's backing file while mounted): every read still returns the right bytes, reads
  that met a bad copy repaired it, `braidfs status` counts checksum errors, `braidfs scrub`
  finds every remaining bad copy and repairs it, and a second scrub and fsck are clean."""
import os
import random
import re

from conftest import MIXED, _NET, read_file, sha256_file, write_file
from test_block_targets import BS, _fsck_counts, _nonzero_data_blocks
from test_scrub import summary

MiB = 1 << 20


def _mixed(make_volume):
    return make_volume(targets=MIXED, replicas=3, extra_format=("--pool", "mixed"))


def _fill(v, n=8, seed=11):
    rng = random.Random(seed)
    want = {}
    for i in range(n):
        p = v.path(f"f{i}")
        data = bytearray(rng.randbytes(rng.randrange(1, 6 * MiB)))
        write_file(p, bytes(data))
        with open(p, "r+b") as f:
            for _ in range(10):
                off = rng.randrange(0, len(data))
                piece = rng.randbytes(rng.randrange(1, 40000))
                f.seek(off)
                f.write(piece)
                data[off:off + len(piece)] = piece
            if i % 3 == 2:
                f.truncate(len(data) // 2)
                del data[len(data) // 2:]
            f.flush()
            os.fsync(f.fileno())
        want[p] = bytes(data)
    return want


def test_mixed_replicas_identical(make_volume):
    v = _mixed(make_volume)
    assert v.targets[1].startswith("iscsi://") and v.targets[2].startswith("nbd://")
    want = _fill(v)
    v.umount()
    r = v.fsck()
    assert r.returncode == 0, r.stdout + r.stderr
    assert _fsck_counts(r.stdout) == (0, 0, 0), r.stdout
    v.mount()
    for p, data in want.items():
        assert read_file(p) == data, p


def _flip(path, blocks, rng, count):
    """Flip one byte in each of `count` data blocks of a chunk-store device image."""
    hit = rng.sample(blocks, min(count, len(blocks)))
    with open(path, "r+b") as f:
        for blk in hit:
            off = blk * BS + rng.randrange(BS)
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0x5A]))
        f.flush()
        os.fsync(f.fileno())
    return len(hit)


def test_mixed_corruption_behind_its_back(make_volume):
    v = _mixed(make_volume)
    want = _fill(v, n=6, seed=5)
    digests = {p: sha256_file(p) for p in want}
    rng = random.Random(99)
    # the file: replica (its image) and the iSCSI replica (the LUN's backing file in tgtd)
    img = v.images[0]
    lun = os.path.join(_NET["dir"], "iscsi.img")
    assert os.path.exists(lun), f"no LUN backing file at {lun}"
    flipped = 0
    for dev in (img, lun):
        blocks = _nonzero_data_blocks(dev, limit=400)
        assert blocks, f"no data block found on {dev}"
        flipped += _flip(dev, blocks, rng, 6)
    # reads: always the right bytes (a bad primary copy is repaired from a good replica)
    for p, d in digests.items():
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        assert sha256_file(p) == d, p
    st = v.status()
    assert re.search(r"CSUM-ERRORS", st.stdout), st.stdout
    # scrub finds what the reads did not meet, and repairs it
    r = v_scrub(v)
    csum, differing, missing, unreadable, unrecoverable, repaired = summary(r)
    assert unrecoverable == 0 and missing == 0, r.stdout
    assert repaired == csum + differing + unreadable, r.stdout
    counted = _csum_total(v.status().stdout)
    assert counted >= 1, v.status().stdout
    assert counted <= flipped or csum <= flipped, (counted, csum, flipped)
    r2 = v_scrub(v)
    assert summary(r2) == (0, 0, 0, 0, 0, 0), r2.stdout
    for p, d in digests.items():
        assert sha256_file(p) == d, p
    v.umount()
    r = v.fsck()
    assert r.returncode == 0, r.stdout + r.stderr


def v_scrub(v):
    from conftest import braidfs
    r = braidfs("scrub", "--rate", "0", "--quiet", v.meta_url, timeout=600)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return r


def _csum_total(status_out):
    """Sum of the CSUM-ERRORS column of status's target counters table."""
    total = 0
    sec = status_out.split("target counters", 1)
    if len(sec) < 2:
        return 0
    for line in sec[1].splitlines()[2:]:
        parts = line.split()
        if len(parts) < 2 or not parts[0].isdigit():
            break
        if parts[1].isdigit():
            total += int(parts[1])
    return total
