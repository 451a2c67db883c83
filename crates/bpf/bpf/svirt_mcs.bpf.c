// SPDX-License-Identifier: GPL-2.0
/*
 * svirt's BPF-LSM enforcer: sVirt's MCS isolation without SELinux.
 *
 * A guest's VMM carries its guest's categories in task storage (`subjects`), set by the
 * prepared child before exec and inherited by every task it creates. Host tasks carry
 * nothing: every hook returns on that first map miss, so the host pays one lookup.
 * Objects carry labels in `objects`, keyed by inode identity and kept in step with the
 * ledger by svirtd; a directory labeled as a tree covers what lies beneath it. An object
 * no plan names has no label and is denied to every guest, as svirt_t would be denied an
 * object whose type the policy does not give it. A guest's task keeps the labels it last
 * found in a small cache beside its own label (struct svirt_task, below), looked at before
 * `objects`.
 *
 * Each denial is reported on `events` (rate-limited by the ring's size) for
 * `svirt denials`.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "mcs.h"

char LICENSE[] SEC("license") = "GPL";

#define EACCES 13
#define EPERM 1
#define PROT_EXEC 0x4
#define FMODE_READ 0x1
#define FMODE_WRITE 0x2
#define FMODE_EXEC 0x20

/* How far a lookup climbs from a file towards a labeled tree. */
#define SVIRT_TREE_DEPTH 32

/* Event hooks (crates/bpf/src/events.rs). */
#define SVIRT_HOOK_OPEN 1
#define SVIRT_HOOK_MMAP 2
#define SVIRT_HOOK_RECEIVE 3
#define SVIRT_HOOK_EXEC 4
#define SVIRT_HOOK_SIGNAL 5
#define SVIRT_HOOK_PTRACE 6
#define SVIRT_HOOK_CONNECT 7
#define SVIRT_HOOK_BPF 8

/* How many inodes' labels a guest's task keeps at hand (a power of two). */
#define SVIRT_CACHE_SLOTS 32
#define SVIRT_CACHE_SHIFT (64 - 5)

/* One inode's own label as a task last found it: see SVIRT_C_* below. */
struct svirt_cache_slot {
	__u64 dev;
	__u64 ino;
	__u64 word;
};

/* A guest's task: its label, then its cache of labels (user space writes zeros there). */
struct svirt_task {
	struct svirt_subject subject; /* first: a task's value is its subject */
	struct svirt_cache_slot cache[SVIRT_CACHE_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct svirt_task);
} subjects SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct svirt_subject);
} sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct svirt_inode_key);
	__type(value, struct svirt_object);
} objects SEC(".maps");

/*
 * Each guest task's cache of `objects` (struct svirt_task, in the task storage the hooks
 * look up anyway: no second lookup), direct-mapped by inode number: whether an inode has a
 * label of its own and, if so, what the decision needs of it, in one 64-bit word:
 *   bits 32..63  the epoch it was filled at (its low 32 bits)
 *   bit  31      filled (a fresh slot is 0: never valid)
 *   bit  28      the inode has a label of its own; then:
 *   bit  27      its SVIRT_OBJ_TREE
 *   bits 24..26  its allow (SVIRT_MAY_*)
 *   bits 0..23   its id (SVIRT_ID_*)
 * A slot is keyed by the inode's identity (dev, ino), the key of `objects` itself: what it
 * holds is what `objects` held for that key, so it decides as `objects` would. Looked up
 * before `objects`, filled from it on a miss; a negative slot (no label of its own) saves
 * the hash lookup of a file beneath a tree and of each directory the walk up to it passes.
 * Only an inode's own label is cached, never what a tree gives a file beneath it: that
 * depends on the path the file was opened by (hard links, renames), which the walk reads
 * afresh each time. Only the task itself reads and writes its cache (its hooks run in its
 * own context, one at a time): no slot is ever seen half written. A new task (task_alloc)
 * starts with an empty cache, as does a task svirtd labels.
 *
 * Invalidation: svirtd bumps `epoch` (atomically, through its mmap) after every change to
 * `objects`; a slot filled at another epoch is stale and refilled. A program reads the
 * epoch before it reads `objects` and stamps what it stores with the epoch it read, so a
 * slot stamped E holds what `objects` held at some moment after the epoch became E. When
 * svirtd changes a label and then bumps the epoch to E+1, every interleaving ends with the
 * new label: a fill that read E and then the old label stores it stamped E, stale once the
 * bump lands; a fill that read E and then the new label is only refilled once more; any
 * slot stamped E+1 was filled after the bump, so after the change. Accesses that start
 * after the bump see only the new label, as they would without the cache; an access
 * racing with the change may see the old label, as it could without the cache (it might
 * have looked `objects` up just before the change). Slots carry the epoch's low 32 bits: a
 * slot left untouched through exactly 2^32 label changes would pass for fresh.
 *
 * A decision the cached word cannot make from the ids alone (a denial, or an object whose
 * categories are a strict subset of the subject's) is made again from `objects`, by the
 * uncached lookup, which also gives the denial report the object's categories.
 */
#define SVIRT_C_ID 0xffffffull
#define SVIRT_C_ALLOW_SHIFT 24
#define SVIRT_C_TREE (1ull << 27)
#define SVIRT_C_LABELED (1ull << 28)
#define SVIRT_C_FILLED (1ull << 31)
#define SVIRT_C_STAMP 0xffffffff80000000ull

/* The labels' epoch (above): one __u64, svirtd's to bump. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} epoch SEC(".maps");

/* One denial, as `svirt denials` reads it. */
struct svirt_event {
	__u32 hook;
	__u32 want;
	__u32 pid;
	__u32 target_pid; /* signals, ptrace */
	__u64 dev;
	__u64 ino;
	__u32 labeled; /* whether the object had a label */
	__u32 pad;
	struct svirt_level subject;
	struct svirt_level object;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* The task whose subject s is (the value of `subjects` starts with it). */
static __always_inline struct svirt_task *task_of(struct svirt_subject *s)
{
	return (struct svirt_task *)s;
}

static __always_inline struct svirt_subject *current_subject(void)
{
	struct task_struct *task = bpf_get_current_task_btf();

	/* A task no program ever gave storage (every host task, as long as no other
	 * program keeps task storage) has none of ours either: the helper would return
	 * NULL too, after its locking. */
	if (!task->bpf_storage)
		return 0;
	return bpf_task_storage_get(&subjects, task, 0, 0);
}

static __always_inline void report(__u32 hook, __u32 want, const struct svirt_subject *s,
				   const struct svirt_level *obj, __u64 dev, __u64 ino,
				   __u32 target_pid)
{
	struct svirt_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e)
		return;
	e->hook = hook;
	e->want = want;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->target_pid = target_pid;
	e->dev = dev;
	e->ino = ino;
	e->labeled = obj != 0;
	e->pad = 0;
	__builtin_memcpy(&e->subject, &s->level, sizeof(e->subject));
	if (obj)
		__builtin_memcpy(&e->object, obj, sizeof(e->object));
	else
		__builtin_memset(&e->object, 0, sizeof(e->object));
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

/* The label of an inode reached through bpf_probe_read_kernel (a pointer the verifier
 * does not type: a unix socket's path). */
static __always_inline struct svirt_object *lookup_inode(struct inode *inode,
							 struct svirt_inode_key *key)
{
	key->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	key->ino = BPF_CORE_READ(inode, i_ino);
	return bpf_map_lookup_elem(&objects, key);
}

/* The same through a pointer the verifier types from BTF (a hook's argument and what it
 * points to): plain loads, CO-RE relocated like BPF_CORE_READ and, like it, reading 0
 * where a pointer is bad (the JIT's exception table), without a helper call per field.
 * The path of an open the cache does not allow (cached_decision()). */
static __always_inline struct svirt_object *lookup_inode_btf(struct inode *inode,
							     struct svirt_inode_key *key)
{
	key->dev = inode->i_sb->s_dev;
	key->ino = inode->i_ino;
	return bpf_map_lookup_elem(&objects, key);
}

/* The label of a file: its inode's own, or that of the nearest tree above it. */
static __always_inline struct svirt_object *lookup_file(struct file *file,
							struct svirt_inode_key *key)
{
	struct svirt_inode_key up;
	struct svirt_object *o;
	struct dentry *d, *parent;

	o = lookup_inode_btf(file->f_inode, key);
	if (o)
		return o;
	d = file->f_path.dentry;
	for (int i = 0; i < SVIRT_TREE_DEPTH; i++) {
		parent = d->d_parent;
		if (!parent || parent == d)
			break;
		d = parent;
		o = lookup_inode_btf(d->d_inode, &up);
		if (o)
			return (o->flags & SVIRT_OBJ_TREE) ? o : 0;
	}
	return 0;
}

/* The stamp of a cache entry filled now (SVIRT_C_STAMP bits). */
static __always_inline __u64 cache_stamp(void)
{
	__u32 zero = 0;
	__u64 *e = bpf_map_lookup_elem(&epoch, &zero);

	return ((e ? *(volatile __u64 *)e : 0) << 32) | SVIRT_C_FILLED;
}

/* The cached word of an inode's own label, filled from `objects` when stale. */
static __always_inline __u64 cached_own(struct svirt_task *t, struct inode *inode,
					__u64 stamp)
{
	struct svirt_inode_key key;
	struct svirt_cache_slot *c;
	struct svirt_object *o;
	__u64 w, id;

	key.dev = inode->i_sb->s_dev;
	key.ino = inode->i_ino;
	c = &t->cache[(key.ino * 0x9e3779b97f4a7c15ull) >> SVIRT_CACHE_SHIFT];
	w = c->word;
	if (c->ino == key.ino && c->dev == key.dev && (w & SVIRT_C_STAMP) == stamp)
		return w;
	o = bpf_map_lookup_elem(&objects, &key);
	w = stamp;
	if (o) {
		/* An id the word cannot hold stands for "ask the bitmaps". */
		id = o->id > SVIRT_ID_BITMAP ? SVIRT_ID_BITMAP : o->id;
		w |= SVIRT_C_LABELED | id | ((__u64)(o->allow & 7) << SVIRT_C_ALLOW_SHIFT) |
		     ((o->flags & SVIRT_OBJ_TREE) ? SVIRT_C_TREE : 0);
	}
	c->dev = key.dev;
	c->ino = key.ino;
	c->word = w;
	return w;
}

/* The decision through the cache, as lookup_file() and svirt_may() would make it: 1
 * allowed, 0 denied, -1 when the ids cannot tell. s is the current task's subject. */
static __always_inline int cached_decision(struct svirt_subject *s, struct file *file,
					   __u32 want)
{
	struct svirt_task *t = task_of(s);
	__u64 stamp = cache_stamp();
	__u64 w = cached_own(t, file->f_inode, stamp);
	struct dentry *d, *parent;

	if (!(w & SVIRT_C_LABELED)) {
		d = file->f_path.dentry;
		for (int i = 0; i < SVIRT_TREE_DEPTH; i++) {
			parent = d->d_parent;
			if (!parent || parent == d)
				return 0;
			d = parent;
			w = cached_own(t, d->d_inode, stamp);
			if (w & SVIRT_C_LABELED)
				break;
		}
		if (!(w & SVIRT_C_LABELED) || !(w & SVIRT_C_TREE))
			return 0;
	}
	return svirt_may_id(s->id, w & SVIRT_C_ID, (w >> SVIRT_C_ALLOW_SHIFT) & 7, want);
}

static __always_inline int check_file(__u32 hook, struct svirt_subject *s, struct file *file,
				      __u32 want)
{
	struct svirt_inode_key key = {};
	struct svirt_object *o;

	if (cached_decision(s, file, want) > 0)
		return 0;
	/* Denied, or undecided: from `objects` itself, with what a report needs. */
	o = lookup_file(file, &key);
	if (o && svirt_may(s, o, want))
		return 0;
	report(hook, want, s, o ? &o->level : 0, key.dev, key.ino, 0);
	return -EACCES;
}

static __always_inline __u32 want_of_mode(__u32 mode)
{
	__u32 want = 0;

	if (mode & FMODE_READ)
		want |= SVIRT_MAY_READ;
	if (mode & FMODE_WRITE)
		want |= SVIRT_MAY_WRITE;
	if (mode & FMODE_EXEC)
		want |= SVIRT_MAY_EXEC;
	return want;
}

SEC("lsm/file_open")
int BPF_PROG(svirt_file_open, struct file *file)
{
	struct svirt_subject *s = current_subject();

	if (!s)
		return 0;
	return check_file(SVIRT_HOOK_OPEN, s, file, want_of_mode(file->f_mode));
}

SEC("lsm/mmap_file")
int BPF_PROG(svirt_mmap_file, struct file *file, unsigned long reqprot, unsigned long prot,
	     unsigned long flags)
{
	struct svirt_subject *s;

	/* Anonymous memory (TCG's code buffer) and non-executable maps: the open decided. */
	if (!file || !(prot & PROT_EXEC))
		return 0;
	s = current_subject();
	if (!s)
		return 0;
	return check_file(SVIRT_HOOK_MMAP, s, file, SVIRT_MAY_EXEC);
}

SEC("lsm/file_receive")
int BPF_PROG(svirt_file_receive, struct file *file)
{
	struct svirt_subject *s = current_subject();
	struct svirt_subject *peer;
	struct socket *sock;
	struct sock *sk;
	umode_t mode;

	if (!s)
		return 0;
	mode = BPF_CORE_READ(file, f_inode, i_mode);
	/* A socket is judged by who made it: one of another guest's is refused; the
	 * manager's own (its listeners, QMP) carry no label and may be handed over. */
	if ((mode & 0170000) == 0140000) {
		/* The helper, not a read of private_data: storage lookups need the verifier to
		 * know the pointer is a socket. */
		sock = bpf_sock_from_file(file);
		if (!sock)
			return -EACCES;
		/* Newer verifiers (6.12) type sock->sk as maybe NULL: read once, checked,
		 * fail closed. */
		sk = sock->sk;
		if (!sk)
			return -EACCES;
		peer = bpf_sk_storage_get(&sockets, sk, 0, 0);
		if (!peer || svirt_subject_dominates(s, peer))
			return 0;
		report(SVIRT_HOOK_RECEIVE, SVIRT_MAY_READ | SVIRT_MAY_WRITE, s, &peer->level, 0, 0,
		       0);
		return -EACCES;
	}
	/* Pipes, eventfds and other anonymous objects have no host identity to protect. */
	if ((mode & 0170000) == 0010000 || (mode & 0170000) == 0)
		return 0;
	return check_file(SVIRT_HOOK_RECEIVE, s, file, want_of_mode(file->f_mode) & ~SVIRT_MAY_EXEC);
}

SEC("lsm/bprm_check_security")
int BPF_PROG(svirt_bprm_check, struct linux_binprm *bprm)
{
	struct svirt_subject *s = current_subject();

	if (!s)
		return 0;
	return check_file(SVIRT_HOOK_EXEC, s, bprm->file, SVIRT_MAY_EXEC);
}

/* Signals: a guest may signal only tasks whose level it dominates (its own); never a
 * host task. Signal 0 only asks whether a task exists: MCS does not constrain signull and
 * svirt_t may signull svirt_t (svirt explain), so another guest's task answers it; a
 * host task does not. The host's signals to guests are not this policy's to judge. */
SEC("lsm/task_kill")
int BPF_PROG(svirt_task_kill, struct task_struct *p, struct kernel_siginfo *info, int sig,
	     const struct cred *cred)
{
	struct svirt_subject *s = current_subject();
	struct svirt_subject *t;

	if (!s)
		return 0;
	t = bpf_task_storage_get(&subjects, p, 0, 0);
	if (t && (sig == 0 || svirt_subject_dominates(s, t)))
		return 0;
	report(SVIRT_HOOK_SIGNAL, 0, s, t ? &t->level : 0, 0, 0, BPF_CORE_READ(p, tgid));
	return -EACCES;
}

/* ptrace and /proc access to another process: never from a guest (the kernel does not
 * ask for a task's own thread group). */
SEC("lsm/ptrace_access_check")
int BPF_PROG(svirt_ptrace_access_check, struct task_struct *child, unsigned int mode)
{
	struct svirt_subject *s = current_subject();
	struct svirt_subject *t;

	if (!s)
		return 0;
	t = bpf_task_storage_get(&subjects, child, 0, 0);
	report(SVIRT_HOOK_PTRACE, mode, s, t ? &t->level : 0, 0, 0, BPF_CORE_READ(child, tgid));
	return -EACCES;
}

SEC("lsm/socket_post_create")
int BPF_PROG(svirt_socket_post_create, struct socket *sock, int family, int type,
	     int protocol, int kern)
{
	struct svirt_subject *s = current_subject();
	struct svirt_subject *l;
	struct sock *sk;

	if (!s || kern)
		return 0;
	/* A guest's socket without a sock could not carry its label: refused. */
	sk = sock->sk;
	if (!sk)
		return -EACCES;
	l = bpf_sk_storage_get(&sockets, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (l)
		__builtin_memcpy(l, s, sizeof(*l));
	return 0;
}

/* Whether a guest at s may reach the unix socket `other`: only one bound to a path the
 * plan gives the guest read-write (sock_file write). A socket a guest made is never
 * reachable from a guest, its own included: the policy has no svirt_t connectto svirt_t. */
static __always_inline int check_peer(struct svirt_subject *s, struct sock *other)
{
	struct svirt_inode_key key = {};
	struct svirt_subject *peer;
	struct svirt_object *o = 0;
	struct dentry *d;

	peer = bpf_sk_storage_get(&sockets, other, 0, 0);
	if (peer) {
		report(SVIRT_HOOK_CONNECT, SVIRT_MAY_WRITE, s, &peer->level, 0, 0, 0);
		return -EACCES;
	}
	d = BPF_CORE_READ((struct unix_sock *)other, path.dentry);
	if (d) {
		o = lookup_inode(BPF_CORE_READ(d, d_inode), &key);
		if (o && svirt_may(s, o, SVIRT_MAY_WRITE))
			return 0;
	}
	report(SVIRT_HOOK_CONNECT, SVIRT_MAY_WRITE, s, o ? &o->level : 0, key.dev, key.ino, 0);
	return -EACCES;
}

SEC("lsm/unix_stream_connect")
int BPF_PROG(svirt_unix_stream_connect, struct sock *sock, struct sock *other,
	     struct sock *newsk)
{
	struct svirt_subject *s = current_subject();

	if (!s)
		return 0;
	return check_peer(s, other);
}

SEC("lsm/unix_may_send")
int BPF_PROG(svirt_unix_may_send, struct socket *sock, struct socket *other)
{
	struct svirt_subject *s = current_subject();
	struct sock *sk;

	if (!s)
		return 0;
	sk = other->sk;
	if (!sk)
		return -EACCES;
	return check_peer(s, sk);
}

/* A guest never uses bpf(2): it could read or rewrite the labels. */
SEC("lsm/bpf")
int BPF_PROG(svirt_bpf, int cmd)
{
	struct svirt_subject *s = current_subject();

	if (!s)
		return 0;
	report(SVIRT_HOOK_BPF, (__u32)cmd, s, 0, 0, 0, 0);
	return -EPERM;
}

/* Every task a guest's task creates (threads included) carries its label. */
SEC("lsm/task_alloc")
int BPF_PROG(svirt_task_alloc, struct task_struct *task, unsigned long clone_flags)
{
	struct svirt_subject *s = current_subject();
	struct svirt_subject *n;

	if (!s)
		return 0;
	n = bpf_task_storage_get(&subjects, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!n)
		return -EPERM; /* fail closed: an unlabeled task of a guest would be free */
	__builtin_memcpy(n, s, sizeof(*n));
	return 0;
}

/* The decision alone, for the tests (BPF_PROG_TEST_RUN, no LSM needed): the same
 * svirt_may() the hooks call, compiled and verified as they are. */
struct svirt_decide_args {
	struct svirt_subject subject;
	struct svirt_object object;
	__u32 want;
	__u32 allowed;
};

SEC("syscall")
int svirt_decide(struct svirt_decide_args *a)
{
	a->allowed = svirt_may(&a->subject, &a->object, a->want);
	return 0;
}
