#!/usr/bin/python3
"""Differential-test oracle: libsepol computes what the kernel would decide.

Reads lines on stdin, answers one line per line on stdout (flushed):

  B<TAB>name=0|1[,name=0|1...]   set booleans (others at the policy default); answers "ok"
  Q<TAB>SCON<TAB>TCON<TAB>CLASS<TAB>PERM[,PERM...]
      answers one token per permission, comma separated:
        A  allowed            T  denied by type enforcement (no allow rule)
        C  denied by a constraint (UBAC, RBAC-constraint or MCS)
        R  denied by the RBAC role-transition check
        B  denied by type bounds
      followed by "/1" when a denial would be audited (an avc line), "/0" when a
      dontaudit rule silences it (nothing after A).
      Or "invalid<TAB>what" when libsepol rejects a context, class or permission.

Booleans are set on a private policydb with sepol_bool_set (which re-evaluates the
conditional rules), written to an image and loaded into libsepol's services with
sepol_set_policydb_from_file: the same code path as a fresh policy load.
Used by crates/policy/tests/differential.rs; needs only libsepol.so.2 and python3.
"""
import ctypes
import ctypes.util
import sys

POLICY = sys.argv[1] if len(sys.argv) > 1 else "/etc/selinux/default/policy/policy.33"

sepol = ctypes.CDLL("libsepol.so.2", use_errno=True)
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fmemopen.restype = ctypes.c_void_p
libc.fmemopen.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.free.argtypes = [ctypes.c_void_p]


class AvDecision(ctypes.Structure):
    _fields_ = [("allowed", ctypes.c_uint32), ("decided", ctypes.c_uint32),
                ("auditallow", ctypes.c_uint32), ("auditdeny", ctypes.c_uint32),
                ("seqno", ctypes.c_uint32)]


P = ctypes.c_void_p
sepol.sepol_handle_create.restype = P
sepol.sepol_policy_file_create.argtypes = [ctypes.POINTER(P)]
sepol.sepol_policy_file_set_fp.argtypes = [P, P]
sepol.sepol_policy_file_set_handle.argtypes = [P, P]
sepol.sepol_policy_file_free.argtypes = [P]
sepol.sepol_policydb_create.argtypes = [ctypes.POINTER(P)]
sepol.sepol_policydb_read.argtypes = [P, P]
sepol.sepol_policydb_free.argtypes = [P]
sepol.sepol_policydb_to_image.argtypes = [P, P, ctypes.POINTER(P), ctypes.POINTER(ctypes.c_size_t)]
sepol.sepol_bool_key_create.argtypes = [P, ctypes.c_char_p, ctypes.POINTER(P)]
sepol.sepol_bool_key_free.argtypes = [P]
sepol.sepol_bool_create.argtypes = [P, ctypes.POINTER(P)]
sepol.sepol_bool_set_name.argtypes = [P, P, ctypes.c_char_p]
sepol.sepol_bool_set_value.argtypes = [P, ctypes.c_int]
sepol.sepol_bool_free.argtypes = [P]
sepol.sepol_bool_set.argtypes = [P, P, P, P]
sepol.sepol_set_policydb_from_file.argtypes = [P]
sepol.sepol_context_to_sid.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint32)]
sepol.sepol_string_to_security_class.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint16)]
sepol.sepol_string_to_av_perm.argtypes = [ctypes.c_uint16, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint32)]
sepol.sepol_compute_av_reason_buffer.argtypes = [
    ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint16, ctypes.c_uint32,
    ctypes.POINTER(AvDecision), ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(P), ctypes.c_uint]

REASON_TE, REASON_CONS, REASON_RBAC, REASON_BOUNDS = 1, 2, 4, 8
HANDLE = sepol.sepol_handle_create()


def die(msg):
    sys.stderr.write(f"sepol_oracle: {msg}\n")
    sys.exit(2)


def load(bools):
    fp = libc.fopen(POLICY.encode(), b"r")
    if not fp:
        die(f"cannot open {POLICY}")
    pf, db = P(), P()
    if sepol.sepol_policy_file_create(ctypes.byref(pf)) or sepol.sepol_policydb_create(ctypes.byref(db)):
        die("out of memory")
    sepol.sepol_policy_file_set_fp(pf, fp)
    sepol.sepol_policy_file_set_handle(pf, HANDLE)
    if sepol.sepol_policydb_read(db, pf):
        die(f"cannot read {POLICY}")
    libc.fclose(fp)
    sepol.sepol_policy_file_free(pf)
    for name, value in bools:
        key, rec = P(), P()
        if sepol.sepol_bool_key_create(HANDLE, name.encode(), ctypes.byref(key)) < 0:
            die(f"bool key {name}")
        sepol.sepol_bool_create(HANDLE, ctypes.byref(rec))
        sepol.sepol_bool_set_name(HANDLE, rec, name.encode())
        sepol.sepol_bool_set_value(rec, 1 if value else 0)
        if sepol.sepol_bool_set(HANDLE, db, key, rec) < 0:
            die(f"cannot set boolean {name}")
        sepol.sepol_bool_free(rec)
        sepol.sepol_bool_key_free(key)
    data, size = P(), ctypes.c_size_t()
    if sepol.sepol_policydb_to_image(HANDLE, db, ctypes.byref(data), ctypes.byref(size)) < 0:
        die("cannot write policy image")
    sepol.sepol_policydb_free(db)
    mf = libc.fmemopen(data, size.value, b"r")
    if not mf or sepol.sepol_set_policydb_from_file(mf):
        die("cannot load policy image")
    libc.fclose(mf)
    libc.free(data)


def sid(con):
    s = ctypes.c_uint32()
    b = con.encode()
    if sepol.sepol_context_to_sid(b, len(b), ctypes.byref(s)):
        return None
    return s.value


def query(scon, tcon, cls, perms):
    ssid, tsid = sid(scon), sid(tcon)
    if ssid is None:
        return f"invalid\tscontext {scon}"
    if tsid is None:
        return f"invalid\ttcontext {tcon}"
    c = ctypes.c_uint16()
    if sepol.sepol_string_to_security_class(cls.encode(), ctypes.byref(c)):
        return f"invalid\tclass {cls}"
    out = []
    for perm in perms:
        av = ctypes.c_uint32()
        if sepol.sepol_string_to_av_perm(c.value, perm.encode(), ctypes.byref(av)) or not av.value:
            return f"invalid\tpermission {cls}:{perm}"
        avd, reason, buf = AvDecision(), ctypes.c_uint(), P()
        if sepol.sepol_compute_av_reason_buffer(ssid, tsid, c.value, av.value, ctypes.byref(avd),
                                                ctypes.byref(reason), ctypes.byref(buf), 0):
            return f"invalid\tcompute_av {scon} {tcon} {cls} {perm}"
        if buf.value:
            libc.free(buf)
        if avd.allowed & av.value:
            out.append("A")
            continue
        r = reason.value
        code = ("T" if r & REASON_TE else "C" if r & REASON_CONS else "R" if r & REASON_RBAC
                else "B" if r & REASON_BOUNDS else "?")
        out.append(code + ("/1" if avd.auditdeny & av.value else "/0"))
    return ",".join(out)


def main():
    load([])
    for line in sys.stdin:
        f = line.rstrip("\n").split("\t")
        if f[0] == "B":
            bools = []
            if len(f) > 1 and f[1]:
                for kv in f[1].split(","):
                    k, v = kv.split("=")
                    bools.append((k, v in ("1", "on", "true")))
            load(bools)
            ans = "ok"
        elif f[0] == "Q" and len(f) == 5:
            ans = query(f[1], f[2], f[3], f[4].split(","))
        else:
            ans = f"invalid\tline {line.strip()!r}"
        sys.stdout.write(ans + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
