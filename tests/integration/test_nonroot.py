"""Permission checks as an unprivileged user on a root-made mount (allow_other +
default_permissions: the kernel checks, braidfs must store and report the right owners)."""

import errno
import os
import stat

import pytest

from conftest import read_file, write_file


@pytest.fixture
def shared(volume):
    """A 0777 directory on the mount."""
    os.chmod(volume.mnt, 0o755)
    d = volume.path("shared")
    os.mkdir(d)
    os.chmod(d, 0o777)
    return d


def test_user_can_reach_mount(volume, user):
    os.chmod(volume.mnt, 0o755)
    write_file(volume.path("pub"), b"public")
    r = user.py("import sys; print(open(sys.argv[1]).read())", volume.path("pub"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "public"


def test_create_in_0777_dir(shared, user):
    p = os.path.join(shared, "mine")
    assert user.try_op("fd = os.open(p, os.O_CREAT|os.O_WRONLY, 0o640); os.write(fd, b'u'); "
                       "os.close(fd); os.mkdir(d)", p=p, d=p + ".d") == "OK"
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (user.uid, user.gid)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert read_file(p) == b"u"
    st = os.stat(p + ".d")
    assert (st.st_uid, st.st_gid) == (user.uid, user.gid)
    # symlink and fifo owned by the user too
    assert user.try_op("os.symlink('mine', l); os.mkfifo(f)", l=p + ".l", f=p + ".f") == "OK"
    assert os.lstat(p + ".l").st_uid == user.uid
    assert os.stat(p + ".f").st_uid == user.uid
    # the user may chmod and utime its own file
    assert user.try_op("os.chmod(p, 0o600); os.utime(p, ns=(1, 2))", p=p) == "OK"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_cannot_write_root_0644_file(shared, user):
    p = os.path.join(shared, "rootfile")
    write_file(p, b"root data")
    os.chmod(p, 0o644)
    assert user.try_op("open(p).read()", p=p) == "OK"
    assert user.try_op("os.open(p, os.O_WRONLY)", p=p) == "EACCES"
    assert user.try_op("os.truncate(p, 0)", p=p) == "EACCES"
    assert user.try_op("os.setxattr(p, 'user.x', b'1')", p=p) in ("EACCES", "EPERM")
    assert read_file(p) == b"root data"


def test_cannot_read_0600_root_file(shared, user):
    p = os.path.join(shared, "secret")
    write_file(p, b"secret", mode=0o600)
    assert user.try_op("open(p).read()", p=p) == "EACCES"


def test_cannot_chmod_chown_other_users_file(shared, user):
    p = os.path.join(shared, "rootfile")
    write_file(p, b"x")
    os.chmod(p, 0o666)
    assert user.try_op("os.chmod(p, 0o777)", p=p) == "EPERM"
    assert user.try_op("os.chown(p, uid, -1)", p=p, uid=user.uid) == "EPERM"
    assert user.try_op("os.chown(p, -1, gid)", p=p, gid=user.gid) == "EPERM"
    assert user.try_op("os.utime(p, ns=(1, 1))", p=p) == "EPERM"
    # utime to "now" is allowed with write permission
    assert user.try_op("os.utime(p)", p=p) == "OK"
    st = os.stat(p)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o666)


def test_user_cannot_give_file_away(shared, user, user2):
    p = os.path.join(shared, "own")
    assert user.try_op("open(p, 'w').close()", p=p) == "OK"
    assert user.try_op("os.chown(p, uid, -1)", p=p, uid=user2.uid) == "EPERM"
    assert os.stat(p).st_uid == user.uid


def test_sticky_directory(volume, user, user2):
    os.chmod(volume.mnt, 0o755)
    d = volume.path("tmp")
    os.mkdir(d)
    os.chmod(d, 0o1777)
    rootf = os.path.join(d, "root-owned")
    write_file(rootf, b"r")
    os.chmod(rootf, 0o666)
    u2f = os.path.join(d, "u2-owned")
    assert user2.try_op("open(p, 'w').close(); os.chmod(p, 0o666)", p=u2f) == "OK"
    assert user.try_op("os.unlink(p)", p=rootf) in ("EPERM", "EACCES")
    assert user.try_op("os.unlink(p)", p=u2f) in ("EPERM", "EACCES")
    assert user.try_op("os.rename(p, q)", p=u2f, q=os.path.join(d, "stolen")) in ("EPERM",
                                                                                 "EACCES")
    assert os.path.exists(rootf) and os.path.exists(u2f)
    # own files can be removed; the owner of the other file can remove it
    mine = os.path.join(d, "mine")
    assert user.try_op("open(p, 'w').close(); os.unlink(p)", p=mine) == "OK"
    assert user2.try_op("os.unlink(p)", p=u2f) == "OK"


def test_setgid_directory_inheritance(volume, user):
    import grp
    gid = grp.getgrnam("nogroup").gr_gid if _has_group("nogroup") else 65534
    assert gid != user.gid
    os.chmod(volume.mnt, 0o755)
    d = volume.path("sgid")
    os.mkdir(d)
    os.chown(d, 0, gid)
    os.chmod(d, 0o2777)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o2777
    f = os.path.join(d, "f")
    sub = os.path.join(d, "sub")
    assert user.try_op("open(f, 'w').close(); os.mkdir(sub, 0o755)", f=f, sub=sub) == "OK"
    st = os.stat(f)
    assert st.st_uid == user.uid
    assert st.st_gid == gid, "a file created in a setgid dir must get the dir's group"
    st = os.stat(sub)
    assert st.st_gid == gid, "a subdir created in a setgid dir must get the dir's group"
    assert st.st_mode & stat.S_ISGID, "a subdir of a setgid dir must inherit S_ISGID"
    # root-made entries inherit too
    os.mkdir(os.path.join(d, "rootsub"))
    assert os.stat(os.path.join(d, "rootsub")).st_gid == gid
    volume.remount()
    assert os.stat(sub).st_gid == gid and os.stat(sub).st_mode & stat.S_ISGID


def _has_group(name):
    import grp
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_0700_dir_denied(volume, user):
    os.chmod(volume.mnt, 0o755)
    d = volume.path("private")
    os.mkdir(d, 0o700)
    os.chmod(d, 0o700)
    write_file(os.path.join(d, "f"), b"x")
    os.chmod(os.path.join(d, "f"), 0o666)
    assert user.try_op("os.listdir(d)", d=d) == "EACCES"
    assert user.try_op("os.stat(p)", p=os.path.join(d, "f")) == "EACCES"
    assert user.try_op("open(p).read()", p=os.path.join(d, "f")) == "EACCES"
    assert user.try_op("open(p, 'w')", p=os.path.join(d, "new")) == "EACCES"


def test_exec_only_dir_traversal(volume, user):
    os.chmod(volume.mnt, 0o755)
    d = volume.path("xonly")
    os.mkdir(d)
    write_file(os.path.join(d, "known"), b"reachable")
    os.chmod(os.path.join(d, "known"), 0o644)
    os.chmod(d, 0o711)
    assert user.try_op("os.listdir(d)", d=d) == "EACCES"
    assert user.try_op("open(p).read()", p=os.path.join(d, "known")) == "OK"
    assert user.try_op("open(p, 'w')", p=os.path.join(d, "new")) == "EACCES"
    os.chmod(d, 0o744)  # read but no search: names listable, entries unreachable
    assert user.try_op("os.listdir(d)", d=d) == "OK"
    assert user.try_op("open(p).read()", p=os.path.join(d, "known")) == "EACCES"


def test_group_permissions(volume, user):
    os.chmod(volume.mnt, 0o755)
    p = volume.path("grp")
    write_file(p, b"g")
    os.chown(p, 0, user.gid)
    os.chmod(p, 0o620)  # group may write, not read
    assert user.try_op("fd = os.open(p, os.O_WRONLY); os.write(fd, b'w'); os.close(fd)",
                       p=p) == "OK"
    assert user.try_op("open(p).read()", p=p) == "EACCES"


def test_write_clears_setuid(shared, user):
    p = os.path.join(shared, "suid")
    write_file(p, b"x")
    os.chmod(p, 0o4777)
    assert user.try_op("fd = os.open(p, os.O_WRONLY); os.write(fd, b'y'); os.close(fd)",
                       p=p) == "OK"
    assert not (os.stat(p).st_mode & stat.S_ISUID), "a write by another user must clear S_ISUID"


# A file capability (struct vfs_cap_data, revision 2): CAP_NET_RAW permitted.
CAPS = (0x02000000).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)


def test_write_clears_setgid_and_capability(shared, user):
    """Stripping privileges on write is the file system's job when the kernel runs with
    FUSE_HANDLE_KILLPRIV_V2 (fs/fs_io.c): S_ISGID with group-exec and security.capability go;
    without group-exec S_ISGID goes only for a writer outside the file's group, as on a local
    file system."""
    p = os.path.join(shared, "sgid")
    write_file(p, b"x")
    os.chmod(p, 0o2777)
    os.setxattr(p, "security.capability", CAPS)
    assert os.getxattr(p, "security.capability") == CAPS
    assert user.try_op("fd = os.open(p, os.O_WRONLY); os.write(fd, b'y'); os.close(fd)",
                       p=p) == "OK"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o777
    with pytest.raises(OSError) as e:
        os.getxattr(p, "security.capability")
    assert e.value.errno == errno.ENODATA
    q = os.path.join(shared, "sgid-noexec")
    write = "fd = os.open(p, os.O_WRONLY); os.write(fd, b'y'); os.close(fd)"
    write_file(q, b"x")
    os.chmod(q, 0o2766)
    assert user.try_op(write, p=q) == "OK"  # not in group 0
    assert stat.S_IMODE(os.stat(q).st_mode) == 0o766
    os.chown(q, 0, user.gid)
    os.chmod(q, 0o2766)
    assert user.try_op(write, p=q) == "OK"  # in the file's group
    assert stat.S_IMODE(os.stat(q).st_mode) == 0o2766
    assert read_file(q) == b"y"


def test_truncate_by_user_clears_setuid(shared, user):
    p = os.path.join(shared, "suid-trunc")
    write_file(p, b"xyz")
    os.chmod(p, 0o4777)
    assert user.try_op("os.truncate(p, 1)", p=p) == "OK"
    st = os.stat(p)
    assert st.st_size == 1 and stat.S_IMODE(st.st_mode) == 0o777
    # root keeps the bit (CAP_FSETID), on write and on truncate
    os.chmod(p, 0o4777)
    os.truncate(p, 0)
    write_file(p, b"root")
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o4777
