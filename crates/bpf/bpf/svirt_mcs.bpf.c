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
 * object whose type the policy does not give it.
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

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct svirt_subject);
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
 * This is the path of every open by a guest. */
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

static __always_inline int check_file(__u32 hook, struct svirt_subject *s, struct file *file,
				      __u32 want)
{
	struct svirt_inode_key key = {};
	struct svirt_object *o = lookup_file(file, &key);

	if (o && svirt_may(&s->level, o, want))
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
		if (!peer || svirt_dominates(&s->level, &peer->level))
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
	if (t && (sig == 0 || svirt_dominates(&s->level, &t->level)))
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
		__builtin_memcpy(&l->level, &s->level, sizeof(l->level));
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
		if (o && svirt_may(&s->level, o, SVIRT_MAY_WRITE))
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
	__builtin_memcpy(&n->level, &s->level, sizeof(n->level));
	return 0;
}

/* The decision alone, for the tests (BPF_PROG_TEST_RUN, no LSM needed): the same
 * svirt_may() the hooks call, compiled and verified as they are. */
struct svirt_decide_args {
	struct svirt_level subject;
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
